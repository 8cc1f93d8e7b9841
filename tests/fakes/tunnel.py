"""A stand-in for a tunnel provider's cloud (cloudflared, bore, localhost.run), which cannot be
reached from here: a local TCP forwarder that prints its URL as those commands print theirs.

Run as ``python -m tests.fakes.tunnel --to PORT [--forwarded-for ADDR] [--delay-url S]``. It
listens on 127.0.0.1 at a free port and pipes each connection to 127.0.0.1:PORT, both ways,
each direction's end passed on as a half-close. With ``--forwarded-for`` it adds the header a
real tunnel adds (``X-Forwarded-For: ADDR``) to the first request head of each connection and
pipes the rest raw, so WebSocket upgrades pass. Once listening (after ``--delay-url`` seconds)
it prints exactly one line, ``stand-in tunnel ready at http://127.0.0.1:<port>``, and then
runs until SIGTERM or SIGINT, which end it with status 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import Callable

__all__ = ["main"]

_READY_PREFIX = "stand-in tunnel ready at "

_MAX_HEAD_BYTES = 64 * 1024
_HEAD_END = b"\r\n\r\n"
_CHUNK_BYTES = 64 * 1024


async def _pipe(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, hang_up: Callable[[], None]
) -> None:
    """Copy until ``reader`` ends, then half-close ``writer`` so the far side sees the end.
    A broken side hangs up both (so the other direction ends too), as a tunnel does."""
    try:
        while chunk := await reader.read(_CHUNK_BYTES):
            writer.write(chunk)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except OSError:
        hang_up()


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()


def _with_forwarded_for(head: bytes, address: str) -> bytes:
    """``head`` (ending in a blank line) with the header a tunnel adds for its client."""
    body_start = head[: -len(_HEAD_END)]
    return body_start + b"\r\nX-Forwarded-For: " + address.encode("latin-1") + _HEAD_END


async def _forward(
    client_reader: asyncio.StreamReader,
    client_writer: asyncio.StreamWriter,
    *,
    target_port: int,
    forwarded_for: str | None,
) -> None:
    try:
        upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", target_port)
    except OSError:
        await _close(client_writer)  # as a tunnel does when the local service is down
        return
    try:
        if forwarded_for is not None:
            try:
                head = await client_reader.readuntil(_HEAD_END)
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
                return  # not an HTTP request head this fake can rewrite: drop the connection
            upstream_writer.write(_with_forwarded_for(head, forwarded_for))

        def hang_up() -> None:
            upstream_writer.close()
            client_writer.close()

        async with asyncio.TaskGroup() as group:
            group.create_task(_pipe(client_reader, upstream_writer, hang_up))
            group.create_task(_pipe(upstream_reader, client_writer, hang_up))
    finally:
        await _close(upstream_writer)
        await _close(client_writer)


async def _serve(target_port: int, forwarded_for: str | None, delay_url_s: float) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _forward(reader, writer, target_port=target_port, forwarded_for=forwarded_for)

    server = await asyncio.start_server(handle, "127.0.0.1", 0, limit=_MAX_HEAD_BYTES)
    async with server:
        port = server.sockets[0].getsockname()[1]
        if delay_url_s > 0:
            # Deliberate pacing: a provider that takes a while to hand out its URL.
            await asyncio.sleep(delay_url_s)
        sys.stdout.write(f"{_READY_PREFIX}http://127.0.0.1:{port}\n")
        sys.stdout.flush()
        await stop.wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.fakes.tunnel", description=__doc__)
    parser.add_argument("--to", type=int, required=True, help="the local port to forward to")
    parser.add_argument("--forwarded-for", help="add X-Forwarded-For: ADDR to request heads")
    parser.add_argument("--delay-url", type=float, default=0.0, help="seconds before the URL")
    args = parser.parse_args(argv)
    asyncio.run(_serve(args.to, args.forwarded_for, args.delay_url))


if __name__ == "__main__":
    main()
