"""Memory of `concordia run` with one party: idle after start, then after N prompts answered.

The figure is the RSS of the bot's own Python process; the `claude` child it drives is
reported apart, for information. C clients send N prompts between them (pipelined),
wait until every one is queued, and then until every batch holding them is `done`,
as seen by one more client that only watches. Collect window 0.05 s, so they batch.

    python -m bench.memory [--prompts 1000] [--clients 4]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from dataclasses import dataclass
from typing import Any

import psutil

from bench._common import (
    bot_config,
    claude_child,
    command_line,
    db_rows,
    joined,
    print_table,
    scratch,
)
from tests.e2e.harness import BotProcess, Client
from tests.fakes.anthropic_api import FakeAnthropic

_COLLECT_WINDOW_S = 0.05
_QUEUED_TIMEOUT_S = 60.0
_ANSWERED_TIMEOUT_S = 110.0
_MB = 1024 * 1024
_GOAL_MB = 60


@dataclass(frozen=True, slots=True)
class _Sample:
    rss: int
    uss: int
    peak_rss: int  # VmHWM: the most this process has ever had resident
    claude_rss: int | None


def _sample(bot: BotProcess) -> _Sample:
    assert bot.proc is not None
    process = psutil.Process(bot.proc.pid)
    full = process.memory_full_info()
    claude = claude_child(bot)
    return _Sample(
        rss=full.rss,
        uss=full.uss,
        peak_rss=_peak_rss(bot.proc.pid),
        claude_rss=claude.memory_info().rss if claude is not None else None,
    )


def _peak_rss(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


async def _send(client: Client, count: int) -> list[int]:
    """Send ``count`` prompts, then wait for all their `queued` frames; return prompt ids."""
    for n in range(count):
        await client.prompt(str(n), f"memory bench: {client.name} asks for item {n}")
    ids = []
    for _ in range(count):
        frame = await client.expect("queued", _QUEUED_TIMEOUT_S)
        ids.append(int(frame["prompt_id"]))
    return ids


def _answered(prompt_ids: set[int]) -> Any:
    """A predicate over a client's frames: every prompt is in a batch that has ended."""

    def check(frames: list[dict[str, Any]]) -> bool:
        done = {f["batch_id"] for f in frames if f["type"] == "done"}
        covered = {
            s["prompt_id"]
            for f in frames
            if f["type"] == "batch" and f["batch_id"] in done
            for s in f["sources"]
        }
        return prompt_ids <= covered

    return check


async def _main(prompt_count: int, client_count: int) -> None:
    async with FakeAnthropic() as api:
        with scratch("concordia-bench-memory-") as root:
            config = bot_config(
                root,
                api,
                party={"collect_window_s": _COLLECT_WINDOW_S, "quiet_gap_s": _COLLECT_WINDOW_S},
            )
            async with BotProcess(config, root) as bot:
                idle = _sample(bot)
                watcher = await joined(bot.port, bot.invite, "watcher")
                senders = [await joined(bot.port, bot.invite, f"c{i}") for i in range(client_count)]
                try:
                    shares = [
                        len(range(i, prompt_count, client_count)) for i in range(client_count)
                    ]
                    started = time.monotonic()
                    sent = await asyncio.gather(
                        *(_send(c, n) for c, n in zip(senders, shares, strict=True))
                    )
                    queued_s = time.monotonic() - started
                    ids = {p for batch in sent for p in batch}
                    await watcher.until(_answered(ids), _ANSWERED_TIMEOUT_S)
                    answered_s = time.monotonic() - started
                    after = _sample(bot)
                    sizes = [len(f["sources"]) for f in watcher.all if f["type"] == "batch"]
                    failed = sum(
                        1 for f in watcher.all if f["type"] == "done" and f["status"] != "success"
                    )
                finally:
                    for client in [watcher, *senders]:
                        await client.__aexit__(None, None, None)
                rows = db_rows(root / "state" / "concordia.db", "prompts")
                turns = len(api.turns)

    print(
        f"one party; {prompt_count:,} prompts from {client_count} clients (+1 watching),"
        f" collect window {_COLLECT_WINDOW_S:g} s"
    )
    print(
        f"all queued after {queued_s:.2f} s, all answered after {answered_s:.2f} s:"
        f" {len(sizes)} batches ({failed} not successful), {turns} turns reached the fake API,"
        f" {rows:,} prompt rows in the db"
    )
    shown = ", ".join(map(str, sizes[:8])) + (", ..." if len(sizes) > 8 else "")
    print(f"prompts per batch, in order: {shown} (largest {max(sizes)})")
    print()
    print_table(
        ["when", "bot RSS MB", "bot USS MB", "bot peak RSS MB", "claude RSS MB (info)"],
        [_row("idle after start", idle), _row(f"after {prompt_count:,} answered", after)],
    )
    print()
    print(
        f"goal: bot RSS <= {_GOAL_MB} MB. RSS counts shared libraries too; USS is what only"
        " this process holds. The claude child is not part of the figure; when idle it may"
        " still be starting up."
    )


def _row(name: str, sample: _Sample) -> list[str]:
    claude = "-" if sample.claude_rss is None else f"{sample.claude_rss / _MB:.1f}"
    return [
        name,
        f"{sample.rss / _MB:.1f}",
        f"{sample.uss / _MB:.1f}",
        f"{sample.peak_rss / _MB:.1f}",
        claude,
    ]


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.memory", description=__doc__)
    parser.add_argument("--prompts", type=int, default=1000, help="prompts to get answered")
    parser.add_argument("--clients", type=int, default=4, help="clients sending them")
    args = parser.parse_args()
    if args.prompts < 1 or args.clients < 1:
        parser.error("--prompts and --clients must be >= 1")
    print(command_line("bench.memory", {"prompts": args.prompts, "clients": args.clients}))
    print()
    asyncio.run(_main(args.prompts, args.clients))


if __name__ == "__main__":
    main()
