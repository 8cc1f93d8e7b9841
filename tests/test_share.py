"""adapters.web.share: tunnels driven for real: the stand-in tunnel command
(`tests.fakes.tunnel`) as a child process, and the real ngrok SDK, which cannot reach ngrok
from here and must say so in one line without the token."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from adapters.web.share import CommandTunnel, NgrokTunnel, Tunnel, _sdk_message
from bot.pace import Backoff
from tests.fakes._server import serve_on_loopback

_REPO = Path(__file__).resolve().parents[1]
_STAND_IN = f"{sys.executable} -m tests.fakes.tunnel --to {{port}}"
_STAND_IN_URL = r"http://127\.0\.0\.1:\d+"
_FAKE_TOKEN = "2fAkE0nLy4tEsTs_9xQzT0kEnNoTr3aL1234567"


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(_REPO)}


@dataclass
class Said:
    """What a tunnel announced and complained, in order, as a test awaits it."""

    urls: asyncio.Queue[str] = field(default_factory=asyncio.Queue)
    complaints: asyncio.Queue[tuple[float, str]] = field(default_factory=asyncio.Queue)
    everything: list[str] = field(default_factory=list)

    def announce(self, url: str) -> None:
        self.everything.append(url)
        self.urls.put_nowait(url)

    def complain(self, line: str) -> None:
        self.everything.append(line)
        self.complaints.put_nowait((time.monotonic(), line))

    async def url(self, within_s: float = 10.0) -> str:
        return await asyncio.wait_for(self.urls.get(), within_s)

    async def complaint(self, within_s: float = 10.0) -> str:
        return (await self.complaint_at(within_s))[1]

    async def complaint_at(self, within_s: float = 10.0) -> tuple[float, str]:
        return await asyncio.wait_for(self.complaints.get(), within_s)


@asynccontextmanager
async def running(tunnel: Tunnel, port: int) -> AsyncIterator[tuple[Said, asyncio.Task[None]]]:
    """Run ``tunnel`` for ``port`` in a task that is cancelled (and awaited) on the way out."""
    said = Said()
    task = asyncio.create_task(tunnel.run(port, said.announce, said.complain))
    try:
        yield said, task
    finally:
        task.cancel()
        await asyncio.wait_for(asyncio.gather(task, return_exceptions=True), 15)


async def assert_still_waiting(task: asyncio.Task[None], said: Said) -> None:
    """The run neither ended nor said more. Given a moment through a wait that must expire:
    the only way to observe "nothing more happens" is a bounded wait for it."""
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(said.complaints.get(), 0.5)
    assert not task.done()


async def assert_group_gone(pgid: int) -> None:
    with pytest.raises(ProcessLookupError):
        os.killpg(pgid, 0)


@asynccontextmanager
async def echo_server() -> AsyncIterator[int]:
    """A TCP echo server playing the bot's port."""

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(4096):
            writer.write(data)
            await writer.drain()
        writer.close()
        await writer.wait_closed()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    async with server:
        yield server.sockets[0].getsockname()[1]


async def echo_through(url: str, payload: bytes) -> bytes:
    match = re.fullmatch(r"http://127\.0\.0\.1:(\d+)", url)
    assert match, url
    reader, writer = await asyncio.open_connection("127.0.0.1", int(match.group(1)))
    try:
        writer.write(payload)
        await writer.drain()
        return await asyncio.wait_for(reader.readexactly(len(payload)), 5)
    finally:
        writer.close()
        await writer.wait_closed()


@contextmanager
def no_leftover_group(tunnel: CommandTunnel) -> Iterator[list[int]]:
    """Collects the pgids a test saw, and checks on the way out that none is left."""
    seen: list[int] = []
    yield seen
    for pgid in seen:
        with pytest.raises(ProcessLookupError):
            os.killpg(pgid, 0)
    assert tunnel.pid is None


# --------------------------------------------------------------------------- CommandTunnel


@pytest.mark.timeout(30)
async def test_stand_in_forwards_restarts_after_a_kill_and_stops_its_group() -> None:
    tunnel = CommandTunnel(_STAND_IN, _STAND_IN_URL, _env())
    assert tunnel.describe == f"the share command `{sys.executable} …`"
    assert tunnel.pid is None
    async with echo_server() as port, running(tunnel, port) as (said, task):
        first = await said.url()
        assert await echo_through(first, b"hello through the tunnel") == b"hello through the tunnel"
        first_pid = tunnel.pid
        assert first_pid is not None
        assert os.getpgid(first_pid) == first_pid  # its own group

        os.killpg(first_pid, signal.SIGKILL)
        complaint = await said.complaint()
        assert complaint == "the share command exited (code -9); restarting in 1 s"
        second = await said.url()
        assert await echo_through(second, b"after the restart") == b"after the restart"
        second_pid = tunnel.pid
        assert second_pid is not None
        assert second_pid != first_pid
        await assert_group_gone(first_pid)

        task.cancel()
        await asyncio.wait_for(asyncio.gather(task, return_exceptions=True), 10)
        assert task.cancelled()
        await assert_group_gone(second_pid)
        assert tunnel.pid is None
        assert said.complaints.empty()


@pytest.mark.timeout(30)
async def test_forwarded_for_header_reaches_the_app_and_websockets_pass() -> None:
    async def whoami(request: web.Request) -> web.Response:
        return web.Response(text=request.headers.get("X-Forwarded-For", "-"))

    async def ws_echo(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        forwarded = request.headers.get("X-Forwarded-For", "-")
        async for message in ws:
            await ws.send_str(f"{forwarded} {message.data}")
        return ws

    app = web.Application()
    app.router.add_get("/whoami", whoami)
    app.router.add_get("/ws", ws_echo)
    runner = await serve_on_loopback(app, shutdown_timeout_s=1.0)
    try:
        port = runner.addresses[0][1]
        tunnel = CommandTunnel(f"{_STAND_IN} --forwarded-for 203.0.113.7", _STAND_IN_URL, _env())
        # One request per connection: the stand-in rewrites only a connection's first head.
        connector = aiohttp.TCPConnector(force_close=True)
        async with (
            running(tunnel, port) as (said, _task),
            aiohttp.ClientSession(connector=connector) as client,
        ):
            url = await said.url()
            async with client.get(f"{url}/whoami") as response:
                assert await response.text() == "203.0.113.7"
            async with client.ws_connect(f"{url}/ws") as ws:
                await ws.send_str("ping")
                reply = await asyncio.wait_for(ws.receive_str(), 5)
                assert reply == "203.0.113.7 ping"
    finally:
        await runner.cleanup()


@pytest.mark.timeout(30)
async def test_url_pattern_group_named_url_and_trailing_punctuation() -> None:
    # A pattern with a `url` group announces the group, and a URL printed at the end of a
    # parenthesised sentence loses the ")." after it.
    tunnel = CommandTunnel(
        f"{sys.executable} -c \"print('your link: http://example.test/x-{{port}}).', flush=True);"
        ' import time; time.sleep(60)"',
        r"link: (?P<url>\S+)",
        _env(),
    )
    async with running(tunnel, 4242) as (said, _task):
        assert await said.url() == "http://example.test/x-4242"


@pytest.mark.timeout(30)
async def test_stand_in_url_after_a_delay_is_announced() -> None:
    tunnel = CommandTunnel(f"{_STAND_IN} --delay-url 0.3", _STAND_IN_URL, _env())
    async with echo_server() as port, running(tunnel, port) as (said, _task):
        url = await said.url()
        assert await echo_through(url, b"late") == b"late"
        assert said.complaints.empty()


@pytest.mark.timeout(30)
async def test_a_url_later_than_the_deadline_is_said_late_then_announced() -> None:
    tunnel = CommandTunnel(f"{_STAND_IN} --delay-url 1", _STAND_IN_URL, _env(), url_timeout_s=0.2)
    async with echo_server() as port, running(tunnel, port) as (said, _task):
        assert "printed no URL" in await said.complaint()
        url = await said.url()
        assert await echo_through(url, b"late") == b"late"


@pytest.mark.timeout(30)
async def test_an_overlong_output_line_is_dropped_and_reading_goes_on() -> None:
    tunnel = CommandTunnel(
        f"{sys.executable} -c \"print('x' * 200_000); print('http://127.0.0.1:{{port}}');"
        ' import sys, time; sys.stdout.flush(); time.sleep(60)"',
        _STAND_IN_URL,
        _env(),
    )
    async with running(tunnel, 7777) as (said, _task):
        assert await said.url() == "http://127.0.0.1:7777"
        assert said.complaints.empty()


@pytest.mark.timeout(15)
async def test_missing_program_is_said_once_and_not_retried() -> None:
    tunnel = CommandTunnel(
        "concordia-no-such-tunnel-cli --port {port}",
        _STAND_IN_URL,
        _env(),
        backoff=Backoff(0.01, 0.02),
    )
    async with running(tunnel, 8080) as (said, task):
        line = await said.complaint()
        assert "`concordia-no-such-tunnel-cli`" in line
        assert "not found" in line
        assert "share.command" in line
        await assert_still_waiting(task, said)
        assert said.urls.empty()
        assert tunnel.pid is None
    assert task.cancelled()


@pytest.mark.timeout(15)
async def test_a_program_that_cannot_be_run_is_said_once(tmp_path: Path) -> None:
    script = tmp_path / "tunnel.sh"
    script.write_text("#!/bin/sh\necho http://127.0.0.1:1\n")
    script.chmod(0o644)  # not executable
    tunnel = CommandTunnel(f"{script} {{port}}", _STAND_IN_URL, _env(), backoff=Backoff(0.01, 0.02))
    async with running(tunnel, 8080) as (said, task):
        line = await said.complaint()
        assert "permission denied" in line
        assert str(script) in line
        await assert_still_waiting(task, said)


@pytest.mark.timeout(15)
async def test_no_url_is_said_once_and_the_child_keeps_running() -> None:
    tunnel = CommandTunnel(
        f'{sys.executable} -c "import time; time.sleep(60)"',
        _STAND_IN_URL,
        _env(),
        url_timeout_s=0.5,
    )
    with no_leftover_group(tunnel) as seen:
        async with running(tunnel, 8080) as (said, task):
            line = await said.complaint()
            assert "printed no URL matching share.url_pattern within 0.5 s" in line
            pid = tunnel.pid
            assert pid is not None
            seen.append(pid)
            os.killpg(pid, 0)  # still there
            await assert_still_waiting(task, said)
            assert tunnel.pid == pid


@pytest.mark.timeout(20)
async def test_a_command_that_exits_at_once_backs_off_without_a_busy_loop() -> None:
    tunnel = CommandTunnel(
        f'{sys.executable} -c "raise SystemExit(3)"',
        _STAND_IN_URL,
        _env(),
        backoff=Backoff(0.05, 0.2),
    )
    async with running(tunnel, 8080) as (said, _task):
        seen = [await said.complaint_at() for _ in range(5)]
    delays = []
    for _at, line in seen:
        match = re.fullmatch(r"the share command exited \(code 3\); restarting in ([\d.]+) s", line)
        assert match, line
        delays.append(float(match.group(1)))
    assert delays == [0.05, 0.1, 0.2, 0.2, 0.2]
    # Each restart waited at least the delay it announced: no tight restart loop.
    for (before, _), (after, _), delay in zip(seen, seen[1:], delays, strict=False):
        assert after - before >= delay


@pytest.mark.timeout(20)
async def test_a_child_that_ignores_sigterm_is_killed_after_the_grace() -> None:
    tunnel = CommandTunnel(
        f'{sys.executable} -c "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN);'
        " print('http://127.0.0.1:{port}', flush=True); time.sleep(60)\"",
        _STAND_IN_URL,
        _env(),
        stop_grace_s=0.3,
    )
    with no_leftover_group(tunnel) as seen:
        async with running(tunnel, 5555) as (said, _task):
            assert await said.url() == "http://127.0.0.1:5555"
            pid = tunnel.pid
            assert pid is not None
            seen.append(pid)


@pytest.mark.timeout(15)
async def test_a_second_concurrent_run_is_refused() -> None:
    tunnel = CommandTunnel(_STAND_IN, _STAND_IN_URL, _env())
    async with echo_server() as port, running(tunnel, port) as (said, _task):
        await said.url()
        with pytest.raises(RuntimeError, match="already running"):
            await tunnel.run(port, said.announce, said.complain)


@pytest.mark.timeout(15)
async def test_the_stand_in_ends_cleanly_on_sigterm() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.fakes.tunnel",
        "--to",
        "9",
        stdout=asyncio.subprocess.PIPE,
        env=_env(),
    )
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 10)
    assert re.fullmatch(rb"stand-in tunnel ready at http://127\.0\.0\.1:\d+\n", line)
    proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(proc.wait(), 10) == 0
    assert await proc.stdout.read() == b""


@pytest.mark.parametrize(
    ("command", "pattern", "key"),
    [
        ("", _STAND_IN_URL, "share.command"),
        ("bore 'unclosed", _STAND_IN_URL, "share.command"),
        ("bore local {port}", "(unclosed", "share.url_pattern"),
    ],
)
def test_bad_settings_are_refused_at_construction(command: str, pattern: str, key: str) -> None:
    with pytest.raises(ValueError, match=re.escape(key)):
        CommandTunnel(command, pattern, {})


# --------------------------------------------------------------------------- NgrokTunnel


@pytest.mark.timeout(15)
@pytest.mark.parametrize("token", [None, ""])
async def test_ngrok_without_an_authtoken_says_where_to_get_one(token: str | None) -> None:
    tunnel = NgrokTunnel(token)
    assert tunnel.describe == "ngrok"
    async with running(tunnel, 8080) as (said, task):
        line = await said.complaint()
        assert line == (
            "sharing with ngrok needs NGROK_AUTHTOKEN: copy yours from the ngrok dashboard "
            "(Getting Started → Your Authtoken), export it and restart; serving locally only"
        )
        await assert_still_waiting(task, said)
        assert said.urls.empty()


@pytest.mark.timeout(30)
async def test_ngrok_offline_says_so_once_without_the_token(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    tunnel = NgrokTunnel(_FAKE_TOKEN)
    async with running(tunnel, 8080) as (said, task):
        line = await said.complaint(within_s=25)
        assert line.startswith("ngrok could not open the tunnel (")
        assert "check NGROK_AUTHTOKEN and the network; serving locally only" in line
        assert "\n" not in line
        await assert_still_waiting(task, said)
    assert said.urls.empty()
    assert all(_FAKE_TOKEN not in text for text in said.everything)
    assert all(_FAKE_TOKEN not in record.getMessage() for record in caplog.records)


@pytest.mark.timeout(30)
async def test_ngrok_with_a_domain_names_the_setting_too() -> None:
    tunnel = NgrokTunnel(_FAKE_TOKEN, domain="concordia-test.ngrok.app")
    async with running(tunnel, 8080) as (said, _task):
        line = await said.complaint(within_s=25)
        assert "check NGROK_AUTHTOKEN and share.ngrok_domain and the network" in line
    assert all(_FAKE_TOKEN not in text for text in said.everything)


@pytest.mark.timeout(15)
async def test_ngrok_without_the_package_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "ngrok", None)  # what `import ngrok` sees when absent
    async with running(NgrokTunnel(_FAKE_TOKEN), 8080) as (said, task):
        line = await said.complaint()
        assert line == (
            "sharing with ngrok needs the ngrok package: pip install 'concordia[share]'"
        )
        await assert_still_waiting(task, said)


def test_an_sdk_message_that_quotes_the_token_loses_it() -> None:
    # ngrok's refusal of a token (ERR_NGROK_105) quotes it back, over several lines.
    exc = ValueError(
        "failed to connect session",
        f"authentication failed: The authtoken you specified does not look like a proper "
        f"ngrok authtoken.\nYour authtoken: {_FAKE_TOKEN}\n\nERR_NGROK_105",
    )
    message = _sdk_message(exc, _FAKE_TOKEN)
    assert _FAKE_TOKEN not in message
    assert "\n" not in message
    assert message.startswith("failed to connect session: authentication failed:")
    assert "ERR_NGROK_105" in message


@pytest.mark.timeout(15)
async def test_ngrok_announces_its_url_and_closes_the_listener_on_stop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The one stand-in of this suite: ngrok's cloud cannot be reached here, so the SDK's
    `ngrok.forward` is replaced by one that answers as it does online (a task resolving to a
    listener with `url()` and an awaitable `close()`). The rest is the real `NgrokTunnel`."""
    import ngrok

    calls: list[tuple[str, dict[str, object]]] = []
    closed = asyncio.Event()

    class Listener:
        def url(self) -> str:
            return "https://concordia-test.ngrok.app"

        async def close(self) -> None:
            closed.set()

    def forward(addr: str, **options: object) -> asyncio.Task[Listener]:
        calls.append((addr, options))

        async def opened() -> Listener:
            return Listener()

        return asyncio.ensure_future(opened())

    monkeypatch.setattr(ngrok, "forward", forward)
    tunnel = NgrokTunnel(_FAKE_TOKEN, domain="concordia-test.ngrok.app")
    async with running(tunnel, 8080) as (said, _task):
        assert await said.url() == "https://concordia-test.ngrok.app"
        assert not closed.is_set()
    assert closed.is_set()  # stopping the bot closes the tunnel
    assert calls == [
        ("127.0.0.1:8080", {"authtoken": _FAKE_TOKEN, "domain": "concordia-test.ngrok.app"})
    ]
