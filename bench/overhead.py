"""Per-turn overhead of the bot: N sequential prompts through `concordia run` vs `claude` alone.

(a) the bot: one WebSocket client sends a prompt and waits for its batch's `done` before
sending the next, so each prompt is its own batch and turn (collect window 0).
(b) direct: one `claude -p` stream-json process fed the same user lines one at a time,
each waiting for its `result` line.

Both talk to the same in-process FakeAnthropic and each gets one unmeasured warm-up
turn. Both stay up for the whole run and their turns alternate (bot, direct, direct,
bot, ...), so drift (the conversation growing, the machine's other load) falls on both
sides alike. The difference includes the WebSocket hop, the store's writes (accept,
batch, sent, done) and the merge.

    python -m bench.overhead [--prompts 20]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from bench._common import bot_config, command_line, percentile, print_table, scratch
from tests.conftest import make_settings
from tests.e2e.harness import BotProcess, Client
from tests.fakes.anthropic_api import FakeAnthropic

_TURN_TIMEOUT_S = 60.0
_EXIT_TIMEOUT_S = 10.0
# stream-json's first line lists every tool and can be far longer than asyncio's 64 KiB.
_LINE_LIMIT_BYTES = 16 * 1024 * 1024
_DIRECT_FLAGS = (
    "-p",
    "--input-format",
    "stream-json",
    "--output-format",
    "stream-json",
    "--verbose",
    "--include-partial-messages",
)


@dataclass(frozen=True, slots=True)
class _BotTurn:
    """Seconds from the client's send to each frame, as the client saw them."""

    queued_s: float
    batch_s: float
    first_output_s: float
    done_s: float


@dataclass(frozen=True, slots=True)
class _DirectTurn:
    """Seconds from writing the user line to the first text delta and to `result`."""

    first_output_s: float
    result_s: float


async def _bot_turn(client: Client, client_id: str, text: str) -> _BotTurn:
    started = time.monotonic()
    await client.prompt(client_id, text)
    queued = await client.expect("queued", _TURN_TIMEOUT_S, id=client_id)
    queued_at = time.monotonic()
    batch = await client.expect("batch", _TURN_TIMEOUT_S)
    batch_at = time.monotonic()
    sources = [s["prompt_id"] for s in batch["sources"]]
    if sources != [queued["prompt_id"]]:
        raise RuntimeError(f"expected a batch of prompt {queued['prompt_id']} alone, got {sources}")
    await client.expect("output", _TURN_TIMEOUT_S, batch_id=batch["batch_id"])
    output_at = time.monotonic()
    done = await client.expect("done", _TURN_TIMEOUT_S, batch_id=batch["batch_id"])
    done_at = time.monotonic()
    if done["status"] != "success":
        raise RuntimeError(f"batch {batch['batch_id']} ended {done['status']}: {done['detail']}")
    return _BotTurn(queued_at - started, batch_at - started, output_at - started, done_at - started)


@contextlib.asynccontextmanager
async def _bot_client(api: FakeAnthropic, root: Path) -> AsyncIterator[Client]:
    """`concordia run` (collect window 0) and one joined client, warmed up by one turn."""
    config = bot_config(root, api, party={"collect_window_s": 0.0})
    async with BotProcess(config, root) as bot, Client(bot.port, bot.invite, "bench") as client:
        await client.expect("welcome", _TURN_TIMEOUT_S)
        await _bot_turn(client, "warm-up", "bench warm-up")
        yield client


async def _direct_turn(proc: asyncio.subprocess.Process, text: str) -> _DirectTurn:
    assert proc.stdin is not None
    assert proc.stdout is not None
    started = time.monotonic()
    first_output_s = float("nan")
    line = {"type": "user", "message": {"role": "user", "content": text}}
    proc.stdin.write((json.dumps(line, ensure_ascii=False) + "\n").encode())
    await proc.stdin.drain()
    async with asyncio.timeout(_TURN_TIMEOUT_S):
        while True:
            raw = await proc.stdout.readline()
            if not raw:
                raise RuntimeError(f"claude exited mid-turn with status {await proc.wait()}")
            try:
                message = json.loads(raw)
            except ValueError:
                continue  # a warning on stderr (merged into stdout)
            if not isinstance(message, dict):
                continue
            kind = message.get("type")
            if kind == "stream_event" and first_output_s != first_output_s:
                delta = (message.get("event") or {}).get("delta") or {}
                if delta.get("type") == "text_delta":
                    first_output_s = time.monotonic() - started
            if kind == "result":
                if message.get("subtype") != "success" or message.get("is_error"):
                    raise RuntimeError(f"claude's turn failed: {raw.decode()[:300]}")
                return _DirectTurn(first_output_s, time.monotonic() - started)


@contextlib.asynccontextmanager
async def _direct_claude(
    api: FakeAnthropic, root: Path
) -> AsyncIterator[asyncio.subprocess.Process]:
    """One `claude -p` stream-json process with the bot's claude environment, warmed up."""
    claude = make_settings(root, api).claude
    proc = await asyncio.create_subprocess_exec(
        claude.command,
        *_DIRECT_FLAGS,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        cwd=claude.workdir,
        env=claude.env,
        limit=_LINE_LIMIT_BYTES,
    )
    try:
        await _direct_turn(proc, "bench warm-up")
        yield proc
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), _EXIT_TIMEOUT_S)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()


def _row(name: str, turns_s: list[float]) -> list[str]:
    ms = [t * 1000 for t in turns_s]
    return [
        name,
        f"{sum(turns_s):.3f}",
        f"{statistics.mean(ms):.1f}",
        f"{statistics.median(ms):.1f}",
        f"{percentile(ms, 90):.1f}",
        f"{min(ms):.1f}",
        f"{max(ms):.1f}",
    ]


def _mean_ms(values_s: list[float]) -> str:
    return f"{statistics.mean(values_s) * 1000:.2f}"


async def _main(prompt_count: int, stream_s: float) -> None:
    # With --stream-s the fake streams each reply over that long (the SLOW trigger), as a
    # real model does; without it a turn is the bare CLI + fake API round trip (~20 ms).
    slow = "SLOW " if stream_s else ""
    prompts = [f"{slow}bench prompt {i}" for i in range(prompt_count)]
    bot: list[_BotTurn] = []
    direct: list[_DirectTurn] = []
    steps = 10
    async with FakeAnthropic(slow_interval_s=stream_s / steps or 0.5, slow_steps=steps) as api:
        with scratch("concordia-bench-bot-") as bot_root, scratch("concordia-bench-cli-") as root:
            async with _bot_client(api, bot_root) as client, _direct_claude(api, root) as proc:
                for i, text in enumerate(prompts):
                    # ABBA order: neither side always runs right after the other.
                    if i % 2 == 0:
                        bot.append(await _bot_turn(client, f"p{i}", text))
                        direct.append(await _direct_turn(proc, text))
                    else:
                        direct.append(await _direct_turn(proc, text))
                        bot.append(await _bot_turn(client, f"p{i}", text))

    bot_s = sum(t.done_s for t in bot)
    direct_s = sum(t.result_s for t in direct)
    print(f"{prompt_count} sequential prompts, one turn each, the two sides alternating")
    print("(each side had one unmeasured warm-up turn)")
    print()
    print_table(
        ["path", "total s", "mean ms", "p50 ms", "p90 ms", "min ms", "max ms"],
        [
            _row("bot (client send -> done)", [t.done_s for t in bot]),
            _row("claude direct (line -> result)", [t.result_s for t in direct]),
        ],
    )
    print()
    print(f"ratio bot/direct:  {bot_s / direct_s:.4f}   (goal <= 1.02)")
    print(
        f"per-turn overhead: {(bot_s - direct_s) / prompt_count * 1000:.2f} ms"
        "   ((bot - direct) / N; includes the WebSocket hop and the store's writes)"
    )
    print()
    print("where a turn's time goes (mean ms; bot phases as the client saw its frames)")
    print_table(
        ["phase", "bot", "direct"],
        [
            ["send -> queued (accepted, stored)", _mean_ms([t.queued_s for t in bot]), "-"],
            [
                "queued -> batch (runner merged, batch stored)",
                _mean_ms([t.batch_s - t.queued_s for t in bot]),
                "-",
            ],
            [
                "batch -> first output (claude + API to first delta)",
                _mean_ms([t.first_output_s - t.batch_s for t in bot]),
                _mean_ms([t.first_output_s for t in direct]),
            ],
            [
                "first output -> done / result",
                _mean_ms([t.done_s - t.first_output_s for t in bot]),
                _mean_ms([t.result_s - t.first_output_s for t in direct]),
            ],
        ],
    )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.overhead", description=__doc__)
    parser.add_argument("--prompts", type=int, default=20, help="measured turns per side")
    parser.add_argument(
        "--stream-s",
        type=float,
        default=0.0,
        help="make the fake API stream each reply over this many seconds (0: answer at once)",
    )
    args = parser.parse_args()
    if args.prompts < 1:
        parser.error("--prompts must be >= 1")
    if args.stream_s < 0:
        parser.error("--stream-s must be >= 0")
    print(command_line("bench.overhead", {"prompts": args.prompts, "stream-s": args.stream_s}))
    print()
    asyncio.run(_main(args.prompts, args.stream_s))


if __name__ == "__main__":
    main()
