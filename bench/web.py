"""Fan-out through the web transport: C clients joined over the HTTP server while a long reply
streams, and the bot's memory with them.

`concordia run` serves the page and WebSocket v1 on one aiohttp port; C protocol-v1 clients
(what the page speaks; plain WebSocket clients sending the page's Origin) join it. One of
them asks for a ``LONG`` reply of ``--reply-chars`` characters, which the fake API streams in
200-character deltas at ``--chars-per-s`` (a model's pace; 0: as fast as the socket takes
them) to the real `claude` CLI. Every client timestamps each `output` frame as it arrives.

Latency is per client and per frame: from the fake API writing the delta that completes the
frame's last character to the client receiving that frame (both clocks are this machine's
monotonic clock). It includes the CLI's own parsing, so a run with one client is the
baseline and the difference is the bot's fan-out. Printed for 1 and C clients: p50, p99 and
max latency, frames received, and the bot's RSS before the clients join, with them joined
and after the stream.

    python -m bench.web [--clients 50] [--reply-chars 50000] [--chars-per-s 5000]
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import json
import time
from dataclasses import dataclass, field

import psutil
from websockets.asyncio.client import ClientConnection, connect

from bench._common import (
    STREAM_TIMEOUT_S,
    bot_config,
    command_line,
    long_reply,
    percentile,
    print_table,
    scratch,
)
from tests.e2e.harness import BotProcess
from tests.fakes.anthropic_api import FakeAnthropic

_DELTA_CHARS = 200
_JOIN_TIMEOUT_S = 30.0


@dataclass
class _Seat:
    """One client: what arrived for the batch, and when."""

    ws: ClientConnection
    name: str
    received: list[tuple[int, float]] = field(default_factory=list)  # (chars so far, at)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    chars: int = 0

    async def read(self) -> None:
        async for raw in self.ws:
            frame = json.loads(raw)
            if frame["type"] == "output":
                self.chars += len(frame["text"])
                self.received.append((self.chars, time.monotonic()))
            elif frame["type"] == "done":
                self.done.set()
                return


async def _join(port: int, token: str, name: str) -> _Seat:
    origin = f"http://127.0.0.1:{port}"
    ws = await connect(f"ws://127.0.0.1:{port}/", additional_headers={"Origin": origin})
    await ws.send(json.dumps({"type": "join", "token": token, "name": name}))
    welcome = json.loads(await asyncio.wait_for(ws.recv(), _JOIN_TIMEOUT_S))
    if welcome["type"] != "welcome":
        raise RuntimeError(f"{name} was not welcomed: {welcome}")
    return _Seat(ws, name)


def _latencies_ms(seat: _Seat, sent: list[tuple[int, float]], reply_chars: int) -> list[float]:
    """Each frame's arrival minus the moment the API wrote the delta completing it."""
    ends = [chars for chars, _ in sent]
    found = []
    for chars, at in seat.received:
        # The output carries the reply only; chars beyond it would be the bot's own text.
        index = bisect.bisect_left(ends, min(chars, reply_chars))
        if index < len(sent):
            found.append((at - sent[index][1]) * 1000)
    return found


def _rss_mib(bot: BotProcess) -> float:
    assert bot.proc is not None
    return psutil.Process(bot.proc.pid).memory_info().rss / 2**20


async def _run(clients: int, reply_chars: int, chars_per_s: float) -> list[object]:
    reply = long_reply(reply_chars)
    interval_s = _DELTA_CHARS / chars_per_s if chars_per_s else 0.0
    async with FakeAnthropic(long_reply=reply, long_interval_s=interval_s) as api:
        with scratch("concordia-bench-web-") as root:
            config = bot_config(root, api, claude={"turn_timeout_s": STREAM_TIMEOUT_S})
            async with BotProcess(config, root) as bot:
                idle_rss = _rss_mib(bot)
                seats = [
                    await _join(bot.port, bot.invite, f"client{i:02d}") for i in range(clients)
                ]
                joined_rss = _rss_mib(bot)
                readers = [asyncio.create_task(seat.read()) for seat in seats]
                await seats[0].ws.send(
                    json.dumps({"type": "prompt", "id": "long", "text": "LONG please"})
                )
                async with asyncio.timeout(STREAM_TIMEOUT_S):
                    await asyncio.gather(*readers)
                streamed_rss = _rss_mib(bot)
                for seat in seats:
                    await seat.ws.close()
    short = [s.name for s in seats if s.chars < len(reply)]
    if short:
        raise RuntimeError(f"{len(short)} client(s) missed output: {short[:3]}")
    latencies = [ms for seat in seats for ms in _latencies_ms(seat, api.text_sent, len(reply))]
    frames = sum(len(seat.received) for seat in seats)
    return [
        clients,
        f"{percentile(latencies, 50):.1f}",
        f"{percentile(latencies, 99):.1f}",
        f"{max(latencies):.1f}",
        frames,
        f"{idle_rss:.1f}",
        f"{joined_rss:.1f}",
        f"{streamed_rss:.1f}",
    ]


async def _bench(clients: int, reply_chars: int, chars_per_s: float) -> None:
    rows = [await _run(count, reply_chars, chars_per_s) for count in sorted({1, clients})]
    print_table(
        [
            "clients",
            "p50 ms",
            "p99 ms",
            "max ms",
            "frames",
            "RSS idle MiB",
            "RSS joined MiB",
            "RSS after MiB",
        ],
        rows,
    )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.web", description=__doc__)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--reply-chars", type=int, default=50_000)
    parser.add_argument("--chars-per-s", type=float, default=5_000.0)
    args = parser.parse_args()
    if args.clients < 1 or args.reply_chars < 1 or args.chars_per_s < 0:
        parser.error("--clients and --reply-chars must be >= 1, --chars-per-s >= 0")
    flags = {
        "clients": args.clients,
        "reply-chars": args.reply_chars,
        "chars-per-s": args.chars_per_s,
    }
    print(command_line("bench.web", flags))
    print()
    asyncio.run(_bench(args.clients, args.reply_chars, args.chars_per_s))


if __name__ == "__main__":
    main()
