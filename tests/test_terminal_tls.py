"""`concordia join` over TLS: a real wss:// host with a certificate from a test CA (trustme)."""

from __future__ import annotations

import asyncio
import io
import json
import socket
import ssl
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trustme
from rich.console import Console
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from adapters import wire
from adapters.terminal import EXIT_NOT_JOINED, EXIT_OK, run_join

TOKEN = "s3cret-token"
JOIN = json.loads(wire.format_frame(wire.Join(token=TOKEN, name="ada")))
"""The join frame the client sends, as `adapters.wire` writes it (every field)."""


@dataclass(frozen=True, slots=True)
class TlsHost:
    """A host that welcomes any join; ``joins`` holds every join frame it received."""

    port: int
    ca_pem: Path
    joins: list[dict[str, Any]]


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def ca_pem(ca: trustme.CA, tmp_path: Path) -> Path:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path


def _server_context(ca: trustme.CA, *names: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*names).configure_cert(context)
    return context


async def _welcome_every_join(ws: ServerConnection, joins: list[dict[str, Any]]) -> None:
    try:
        join = json.loads(await ws.recv())
        joins.append(join)
        welcome = wire.Welcome(
            protocol=wire.PROTOCOL_VERSION, party="p-tls", name=join["name"], role="prompter"
        )
        await ws.send(wire.format_frame(welcome))
        await ws.wait_closed()
    except ConnectionClosed:
        pass


@pytest.fixture
async def tls_host(ca: trustme.CA, ca_pem: Path) -> AsyncIterator[TlsHost]:
    joins: list[dict[str, Any]] = []
    context = _server_context(ca, "127.0.0.1", "localhost")

    async def handler(ws: ServerConnection) -> None:
        await _welcome_every_join(ws, joins)

    async with serve(handler, "127.0.0.1", 0, ssl=context) as server:
        yield TlsHost(server.sockets[0].getsockname()[1], ca_pem, joins)


@pytest.fixture
def unused_port() -> Iterator[int]:
    """Bound but not listening: anything that tries to connect is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


def _console() -> Console:
    return Console(file=io.StringIO(), force_terminal=False, width=400)


def _printed(console: Console) -> str:
    assert isinstance(console.file, io.StringIO)
    return console.file.getvalue()


async def _no_lines() -> AsyncIterator[str]:
    """Piped input that is empty: join, then leave at once."""
    return
    yield  # makes this an async generator


async def _join(url: str, console: Console, cafile: Path | None = None) -> int:
    return await run_join(
        url, "ada", lines=_no_lines(), console=console, interactive=False, cafile=cafile
    )


# --- joining over TLS -------------------------------------------------------------------------


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    "link",
    [
        "https://127.0.0.1:{port}/#{token}",
        "https://localhost:{port}#{token}",
        "wss://127.0.0.1:{port}/#{token}",
        "concordias://localhost:{port}/{token}",
    ],
)
async def test_a_tls_link_joins_when_the_ca_is_given(tls_host: TlsHost, link: str) -> None:
    console = _console()

    code = await _join(link.format(port=tls_host.port, token=TOKEN), console, tls_host.ca_pem)

    assert code == EXIT_OK
    assert "joined party p-tls as ada" in _printed(console)
    assert tls_host.joins == [JOIN]


@pytest.mark.timeout(30)
async def test_without_the_ca_the_certificate_is_refused_in_one_line(tls_host: TlsHost) -> None:
    console = _console()

    code = await _join(f"https://127.0.0.1:{tls_host.port}/#{TOKEN}", console)

    assert code == EXIT_NOT_JOINED
    out = _printed(console)
    assert out == (
        f"cannot connect to wss://127.0.0.1:{tls_host.port}/: the host's certificate was "
        "refused (certificate verify failed: unable to get local issuer certificate); "
        "if the host uses its own CA, pass --cafile CA.pem\n"
    )
    assert tls_host.joins == []  # the token never left


@pytest.mark.timeout(30)
async def test_another_ca_is_refused_naming_the_cafile(tls_host: TlsHost, tmp_path: Path) -> None:
    other = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other))
    console = _console()

    code = await _join(f"https://127.0.0.1:{tls_host.port}/#{TOKEN}", console, other)

    assert code == EXIT_NOT_JOINED
    out = _printed(console)
    assert "the host's certificate was refused (certificate verify failed" in out
    assert f"check that {other} is the CA that issued the host's certificate" in out
    assert out.count("\n") == 1
    assert tls_host.joins == []


@pytest.mark.timeout(30)
async def test_a_certificate_for_another_name_is_refused(ca: trustme.CA, ca_pem: Path) -> None:
    joins: list[dict[str, Any]] = []

    async def handler(ws: ServerConnection) -> None:
        await _welcome_every_join(ws, joins)

    context = _server_context(ca, "concordia.example.org")
    async with serve(handler, "127.0.0.1", 0, ssl=context) as server:
        port = server.sockets[0].getsockname()[1]
        console = _console()

        code = await _join(f"https://127.0.0.1:{port}/#{TOKEN}", console, ca_pem)

    assert code == EXIT_NOT_JOINED
    out = _printed(console)
    assert "certificate verify failed: IP address mismatch" in out
    assert "the link must name a host the certificate was issued for" in out
    assert TOKEN not in out
    assert joins == []


# --- the wrong --cafile -------------------------------------------------------------------------


@pytest.mark.timeout(30)
async def test_a_missing_cafile_exits_2_before_connecting(unused_port: int, tmp_path: Path) -> None:
    console = _console()
    missing = tmp_path / "nowhere.pem"

    code = await _join(f"https://127.0.0.1:{unused_port}/#{TOKEN}", console, missing)

    assert code == EXIT_NOT_JOINED
    assert _printed(console) == f"cannot read --cafile {missing}: No such file or directory\n"


@pytest.mark.timeout(30)
async def test_a_cafile_that_is_not_pem_exits_2(unused_port: int, tmp_path: Path) -> None:
    console = _console()
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")

    code = await _join(f"https://127.0.0.1:{unused_port}/#{TOKEN}", console, junk)

    assert code == EXIT_NOT_JOINED
    out = _printed(console)
    assert f"--cafile {junk} is not a PEM file of CA certificates" in out
    assert out.count("\n") == 1


@pytest.mark.timeout(30)
async def test_a_cafile_with_a_link_without_tls_exits_2(unused_port: int, ca_pem: Path) -> None:
    console = _console()

    code = await _join(f"http://127.0.0.1:{unused_port}/#{TOKEN}", console, ca_pem)

    assert code == EXIT_NOT_JOINED
    assert _printed(console) == (
        "--cafile is for a link with TLS (https://, wss:// or concordias://); "
        f"this one connects to ws://127.0.0.1:{unused_port}/ without TLS\n"
    )


# --- TLS on one side only -----------------------------------------------------------------------


@pytest.mark.timeout(30)
async def test_a_plain_link_to_a_tls_host_says_to_use_https(tls_host: TlsHost) -> None:
    console = _console()

    code = await _join(f"http://127.0.0.1:{tls_host.port}/#{TOKEN}", console)

    assert code == EXIT_NOT_JOINED
    out = _printed(console)
    assert out.startswith(f"cannot connect to ws://127.0.0.1:{tls_host.port}/: ")
    assert "(if the host serves TLS, its link starts with https://)" in out
    assert out.count("\n") == 1
    assert tls_host.joins == []


async def _answer_in_plain_http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
    await writer.drain()
    await reader.read(65536)  # the client hangs up once it has read that
    writer.close()


@pytest.mark.timeout(30)
async def test_a_tls_link_to_a_plain_websocket_host_says_it_is_not_tls(ca_pem: Path) -> None:
    joins: list[dict[str, Any]] = []

    async def handler(ws: ServerConnection) -> None:
        await _welcome_every_join(ws, joins)

    async with serve(handler, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        console = _console()

        code = await _join(f"https://127.0.0.1:{port}/#{TOKEN}", console, ca_pem)

    assert code == EXIT_NOT_JOINED
    out = _printed(console)
    assert out.startswith(f"cannot connect to wss://127.0.0.1:{port}/: the TLS handshake failed (")
    assert "is the host serving TLS? without TLS its link starts with http://" in out
    assert out.count("\n") == 1
    assert joins == []


@pytest.mark.timeout(30)
async def test_a_tls_link_to_a_plain_http_server_says_it_is_not_tls() -> None:
    server = await asyncio.start_server(_answer_in_plain_http, "127.0.0.1", 0)
    async with server:
        port = server.sockets[0].getsockname()[1]
        console = _console()

        code = await _join(f"https://127.0.0.1:{port}/#{TOKEN}", console)

    assert code == EXIT_NOT_JOINED
    assert _printed(console) == (
        f"cannot connect to wss://127.0.0.1:{port}/: the TLS handshake failed "
        "(wrong version number); is the host serving TLS? without TLS its link starts with "
        "http://\n"
    )
