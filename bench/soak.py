"""A long run: does `concordia run` stay flat? One party, 3 WebSocket clients, the real CLI
against the fake API, N prompts spread over M minutes, with `store.keep_days` tiny so that
retention prunes while it runs.

Printed: the bot's RSS (and its claude child's) and the database's size (with its WAL) at
the start, the middle and the end (goal: flat after warm-up); then a scrape of /metrics
checked against what the benchmark itself counted (prompts sent and refused, batches ended).

    python -m bench.soak [--prompts 2000] [--minutes 10] [--keep-days 0.0007]
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import time
import urllib.request
from pathlib import Path
from typing import Any

import psutil

from bench._common import bot_config, claude_child, command_line, joined, print_table, scratch
from tests.e2e.harness import BotProcess, Client
from tests.fakes.anthropic_api import FakeAnthropic

_CLIENTS = 3
_QUEUED_TIMEOUT_S = 60.0
_DRAIN_TIMEOUT_S = 300.0
_MB = 1024 * 1024


def _free_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        return int(probe.getsockname()[1])


def _db_bytes(state: Path) -> int:
    return sum(p.stat().st_size for p in state.glob("concordia.db*") if p.is_file())


def _sample(bot: BotProcess, state: Path) -> tuple[float, float, float]:
    """(bot RSS MiB, claude RSS MiB, database MiB) now."""
    assert bot.proc is not None
    claude = claude_child(bot)
    claude_rss = claude.memory_info().rss if claude is not None else 0
    bot_rss = psutil.Process(bot.proc.pid).memory_info().rss
    return bot_rss / _MB, claude_rss / _MB, _db_bytes(state) / _MB


async def _send(client: Client, count: int, interval_s: float, offset_s: float) -> int:
    """Send ``count`` prompts, one every ``interval_s``; how many were queued."""
    await asyncio.sleep(offset_s)  # pacing: spread the clients apart
    queued = 0
    start = time.monotonic()
    for n in range(count):
        await asyncio.sleep(max(0.0, start + n * interval_s - time.monotonic()))  # pacing
        await client.prompt(f"{client.name}-{n}", f"soak: {client.name} asks for item {n}")
        queued += await _answer(client, f"{client.name}-{n}") == "queued"
    return queued


async def _answer(client: Client, prompt_id: str) -> str:
    """How the bot answered one prompt: queued or rejected."""
    async with asyncio.timeout(_QUEUED_TIMEOUT_S):
        while True:
            frame = await client.frames.get()
            if frame.get("type") in ("queued", "rejected") and frame.get("id") == prompt_id:
                return str(frame["type"])


def _done(frames: list[dict[str, Any]]) -> dict[int, str]:
    return {f["batch_id"]: f["status"] for f in frames if f["type"] == "done"}


def _scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


async def _main(prompts: int, minutes: float, keep_days: float) -> None:
    port = _free_port()
    per_client = prompts // _CLIENTS
    interval_s = minutes * 60 / per_client
    async with FakeAnthropic() as api:
        with scratch("concordia-bench-soak-") as root:
            config = bot_config(
                root,
                api,
                store={"keep_days": keep_days},
                metrics={"enabled": True, "listen": f"127.0.0.1:{port}"},
            )
            state = root / "state"
            async with BotProcess(config, root) as bot:
                watcher = await joined(bot.port, bot.invite, "watcher")
                clients = [await joined(bot.port, bot.invite, f"c{i}") for i in range(_CLIENTS)]
                samples: list[tuple[str, tuple[float, float, float]]] = []
                try:
                    sending = asyncio.gather(
                        *(
                            _send(c, per_client, interval_s, i * interval_s / _CLIENTS)
                            for i, c in enumerate(clients)
                        )
                    )
                    await asyncio.sleep(min(30.0, minutes * 60 * 0.05))  # pacing: warm-up
                    samples.append(("after warm-up", _sample(bot, state)))
                    await asyncio.sleep(minutes * 60 / 2 - min(30.0, minutes * 60 * 0.05))
                    samples.append(("middle", _sample(bot, state)))
                    queued = sum(await sending)

                    def drained(frames: list[dict[str, Any]]) -> bool:
                        batches = {f["batch_id"] for f in frames if f["type"] == "batch"}
                        return bool(batches) and batches <= set(_done(frames))

                    await watcher.until(drained, _DRAIN_TIMEOUT_S)
                    samples.append(("end", _sample(bot, state)))
                    scraped = await asyncio.to_thread(_scrape, port)
                finally:
                    for client in [watcher, *clients]:
                        await client.__aexit__(None, None, None)
                done = _done(watcher.all)

    sent = per_client * _CLIENTS
    print(
        f"one party, {_CLIENTS} clients, {sent:,} prompts over {minutes:g} min "
        f"(store.keep_days {keep_days:g}); {len(done):,} batches, {len(api.turns):,} API turns"
    )
    print()
    print_table(
        ["when", "bot RSS (MiB)", "claude RSS (MiB)", "database + WAL (MiB)"],
        [[when, f"{b:.1f}", f"{c:.1f}", f"{d:.2f}"] for when, (b, c, d) in samples],
    )
    print()
    successes = sum(1 for status in done.values() if status == "success")
    rows = [
        [
            "prompts received",
            sent,
            scraped.get('concordia_prompts_received_total{party="default",platform="websocket"}'),
        ],
        ["prompts queued", queued, None],
        [
            "batches ended: success",
            successes,
            scraped.get('concordia_batches_total{outcome="success",party="default"}'),
        ],
    ]
    print_table(
        ["count", "the bench saw", "/metrics says"],
        [[name, seen, "—" if said is None else f"{said:g}"] for name, seen, said in rows],
    )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__)
    parser.add_argument("--prompts", type=int, default=2000)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--keep-days", type=float, default=0.0007)
    args = parser.parse_args()
    flags = {"prompts": args.prompts, "minutes": args.minutes, "keep-days": args.keep_days}
    print(command_line("bench.soak", flags))
    print()
    asyncio.run(_main(args.prompts, args.minutes, args.keep_days))


if __name__ == "__main__":
    main()
