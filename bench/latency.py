"""How long people wait before Claude starts: a lone prompt, and bursts sent together.

`concordia run` with its default [party] timing (or the flags), the real `claude` CLI and
the fake Anthropic API, WebSocket clients:

- lone: one client sends a prompt, waits for its batch to end, N times. Measured from the
  `queued` ack to the fake API receiving Claude's request (the CLI's own start of a turn is
  in it; the agent is warm: started before the first prompt).
- cold: the same, but each prompt finds the agent stopped (`agent.idle_stop_s` short, and
  the claude process gone before each prompt): its start is in the figure.
- bursts: K clients (3-5) each send one prompt within 200 ms, M times; printed is the share
  of bursts that became one batch (the goal: all).
- footprint: 10 configured parties (the terminals' and nine Slack channels', on the fake
  Slack), one of them used: the claude processes running and the RSS of the bot plus all
  its children (the goal: one agent process).

    python -m bench.latency [--lone 20] [--cold 10] [--bursts 10] [--collect-window-s 1.5]
        [--quiet-gap-s 0.25]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time

import psutil

from bench._common import (
    bot_config,
    claude_child,
    command_line,
    joined,
    percentile,
    print_table,
    scratch,
)
from tests.e2e.harness import BotProcess, Client
from tests.fakes.anthropic_api import FakeAnthropic
from tests.fakes.slack_api import APP_TOKEN, BOT_TOKEN, FakeSlack

_TURN_TIMEOUT_S = 60.0
_BURST_SPREAD_S = 0.2
_COLD_IDLE_STOP_S = 0.5
_PARTIES = 10


async def _lone(
    bot: BotProcess, api: FakeAnthropic, count: int, *, cold: bool = False
) -> list[float]:
    """Ack → Claude's request for ``count`` lone prompts; ``cold``: each sent once the idle
    agent has stopped."""
    kind = "cold" if cold else "lone"
    client = await joined(bot.port, bot.invite, kind)
    waits = []
    try:
        for i in range(count):
            while not api.requests.empty():  # what earlier runs left: not this prompt's
                api.requests.get_nowait()
            if cold and (agent := claude_child(bot)) is not None:  # the idle stop ends it
                await asyncio.to_thread(agent.wait, _TURN_TIMEOUT_S)
            await client.prompt(f"{kind}-{i}", f"{kind} prompt {i}")
            await client.expect("queued", _TURN_TIMEOUT_S, id=f"{kind}-{i}")
            acked = time.monotonic()
            await asyncio.wait_for(api.requests.get(), _TURN_TIMEOUT_S)
            waits.append(time.monotonic() - acked)
            await client.expect("done", _TURN_TIMEOUT_S)
    finally:
        await client.__aexit__(None, None, None)
    return waits


def _footprint(bot: BotProcess) -> tuple[int, float]:
    """(claude processes, RSS in MiB of the bot and every process under it)."""
    assert bot.proc is not None
    root = psutil.Process(bot.proc.pid)
    processes = [root, *root.children(recursive=True)]
    # The CLI's own helpers (the sandbox's socat proxy) name claude too: count the CLI alone.
    agents = sum(1 for p in processes[1:] if p.cmdline()[:1] and p.cmdline()[0].endswith("claude"))
    return agents, sum(p.memory_info().rss for p in processes) / 2**20


async def _bursts(bot: BotProcess, api: FakeAnthropic, count: int) -> tuple[int, int]:
    """(bursts that became one batch, bursts sent)."""
    clients: list[Client] = [await joined(bot.port, bot.invite, f"member{i}") for i in range(5)]
    observer = await joined(bot.port, bot.invite, "observer")
    rng = random.Random(14)
    whole = 0
    try:
        for n in range(count):
            size = rng.randint(3, 5)
            offsets = sorted(rng.uniform(0, _BURST_SPREAD_S) for _ in range(size))
            start = time.monotonic()
            for i, offset in enumerate(offsets):
                await asyncio.sleep(max(0.0, start + offset - time.monotonic()))  # pacing
                await clients[i].prompt(f"b{n}-{i}", f"burst {n} ask {i}")
            asked = set()
            for i in range(size):
                asked.add((await clients[i].expect("queued", _TURN_TIMEOUT_S))["prompt_id"])
            batches: list[int] = []
            while asked:
                frame = await observer.expect("batch", _TURN_TIMEOUT_S)
                batches.append(frame["batch_id"])
                asked -= {source["prompt_id"] for source in frame["sources"]}
            whole += len(batches) == 1
            await observer.expect("done", _TURN_TIMEOUT_S, batch_id=batches[-1])
    finally:
        for client in [*clients, observer]:
            await client.__aexit__(None, None, None)
    return whole, count


async def _bench(lone: int, cold: int, bursts: int, window_s: float, gap_s: float) -> None:
    party = {"collect_window_s": window_s, "quiet_gap_s": gap_s}
    channels = {f"C{i}": f"team{i}" for i in range(_PARTIES - 1)}  # + the default party
    async with FakeAnthropic() as api, FakeSlack() as slack_api:
        with scratch("concordia-bench-latency-") as root:
            slack = {"channels": list(channels), "parties": channels, "api_url": slack_api.api_url}
            config = bot_config(root, api, party=party, slack=slack)
            env = {"SLACK_BOT_TOKEN": BOT_TOKEN, "SLACK_APP_TOKEN": APP_TOKEN}
            async with BotProcess(config, root, env=env) as bot:
                waits = await _lone(bot, api, lone)
                agents, rss_mib = _footprint(bot)
                whole, sent = await _bursts(bot, api, bursts)
        with scratch("concordia-bench-latency-cold-") as root:
            agent: dict[str, object] = {"idle_stop_s": _COLD_IDLE_STOP_S}
            config = bot_config(root, api, party=party, agent=agent)
            async with BotProcess(config, root) as bot:
                cold_waits = await _lone(bot, api, cold, cold=True)
    print_table(
        ["measure", "value"],
        [
            [
                "lone prompt, agent warm: ack → Claude's request, p50 (s)",
                f"{percentile(waits, 50):.3f}",
            ],
            [
                "lone prompt, agent warm: ack → Claude's request, p99 (s)",
                f"{percentile(waits, 99):.3f}",
            ],
            [
                "lone prompt, agent cold: ack → Claude's request, p50 (s)",
                f"{percentile(cold_waits, 50):.3f}",
            ],
            [
                "lone prompt, agent cold: ack → Claude's request, p99 (s)",
                f"{percentile(cold_waits, 99):.3f}",
            ],
            ["bursts of 3-5 within 200 ms merged into one batch", f"{whole}/{sent}"],
            [f"{_PARTIES} parties, 1 used: claude processes running", agents],
            [
                f"{_PARTIES} parties, 1 used: RSS of the bot and its children (MiB)",
                f"{rss_mib:.1f}",
            ],
        ],
    )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.latency", description=__doc__)
    parser.add_argument("--lone", type=int, default=20)
    parser.add_argument("--cold", type=int, default=10)
    parser.add_argument("--bursts", type=int, default=10)
    parser.add_argument("--collect-window-s", type=float, default=1.5)
    parser.add_argument("--quiet-gap-s", type=float, default=0.25)
    args = parser.parse_args()
    flags = {
        "lone": args.lone,
        "cold": args.cold,
        "bursts": args.bursts,
        "collect-window-s": args.collect_window_s,
        "quiet-gap-s": args.quiet_gap_s,
    }
    print(command_line("bench.latency", flags))
    print()
    asyncio.run(_bench(args.lone, args.cold, args.bursts, args.collect_window_s, args.quiet_gap_s))


if __name__ == "__main__":
    main()
