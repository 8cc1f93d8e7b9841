"""Per-turn overhead of the bot over driving the same agent CLI directly, for each driver.

N sequential prompts through `concordia run` with ``agent.kind = KIND`` (one WebSocket
client; each prompt its own batch and turn, collect window 0), and the same prompts given
to the same CLI without the bot:

- claude: one `claude -p` stream-json process fed user lines, each awaited to `result`;
- codex: one `codex app-server`, each turn a `turn/start` awaited to `turn/completed`;
- gemini: one `gemini --output-format stream-json` process a turn (the prompt on stdin,
  `--resume` of the first turn's session), awaited to its `result` line;
- repl: Claude Code's TUI on a pty, read through pyte: the prompt typed, Enter, and the
  turn over the moment the whole answer and the prompt marker are on the screen. The
  driver also waits for quiet (``agent.idle_s``) to be sure: its completion detection's
  delay, from the program done to the turn's end, is printed from the bot's debug log;

Both sides talk to the same in-process fake API and get one unmeasured warm-up turn. Both
stay up for the whole run and their turns alternate (bot, direct, direct, bot, ...), so
drift (the conversation growing, the machine's other load) falls on both sides alike. The
difference includes the WebSocket hop, the store's writes (accept, batch, sent, done), the
merge and, except for claude, the bubblewrap the bot runs the agent in.

    python -m bench.overhead [--agent claude|codex|gemini|repl] [--prompts 20] [--stream-s 0]
"""

from __future__ import annotations

import argparse
import asyncio
import codecs
import contextlib
import json
import os
import re
import statistics
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pexpect
import pyte

from bench._common import command_line, percentile, print_table, scratch
from tests.conftest import make_settings
from tests.e2e.harness import BotProcess, Client
from tests.far_ends import FACTORIES, FarEnd

_TURN_TIMEOUT_S = 60.0
_EXIT_TIMEOUT_S = 10.0
# stream-json's first line lists every tool and can be far longer than asyncio's 64 KiB.
_LINE_LIMIT_BYTES = 16 * 1024 * 1024
_CLAUDE_FLAGS = (
    "-p",
    "--input-format",
    "stream-json",
    "--output-format",
    "stream-json",
    "--verbose",
    "--include-partial-messages",
)
_PACE = {"member_burst": 1_000_000, "member_prompts_per_minute": 1e9}
_DONE_AFTER = re.compile(r"turn over (\d+\.\d+) s after the program was done")


@dataclass(frozen=True, slots=True)
class _BotTurn:
    """Seconds from the client's send to each frame, as the client saw them."""

    queued_s: float
    batch_s: float
    first_output_s: float
    done_s: float


@dataclass(frozen=True, slots=True)
class _DirectTurn:
    """Seconds from handing the CLI the prompt to its first text and to the turn's end."""

    first_output_s: float
    result_s: float


class _Direct(Protocol):
    """The CLI driven without the bot: one turn at a time."""

    async def turn(self, text: str) -> _DirectTurn: ...


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
async def _bot_client(end: FarEnd, root: Path) -> AsyncIterator[tuple[BotProcess, Client]]:
    """`concordia run` on ``end``'s agent (collect window 0, debug log: the repl driver says
    its completion delay there) and one joined client, warmed up by one turn."""
    make_settings(
        root,
        None,
        **end.sections,
        party={"collect_window_s": 0.0, **_PACE},
        log={"level": "DEBUG"},
    )
    config = root / "config.toml"
    async with BotProcess(config, root) as bot, Client(bot.port, bot.invite, "bench") as client:
        await client.expect("welcome", _TURN_TIMEOUT_S)
        await _bot_turn(client, "warm-up", "bench warm-up")
        yield bot, client


@contextlib.asynccontextmanager
async def _process(
    end: FarEnd, root: Path, *argv: str
) -> AsyncIterator[asyncio.subprocess.Process]:
    """``argv`` with the environment and working directory the bot would give the agent."""
    claude = make_settings(root, None, **end.sections).claude
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        cwd=claude.workdir,
        env=claude.env,
        limit=_LINE_LIMIT_BYTES,
    )
    try:
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


async def _lines(proc: asyncio.subprocess.Process) -> AsyncIterator[dict[str, Any]]:
    """The JSON objects the process writes a line each (anything else skipped)."""
    assert proc.stdout is not None
    while True:
        raw = await proc.stdout.readline()
        if not raw:
            raise RuntimeError(f"the CLI exited mid-turn with status {await proc.wait()}")
        with contextlib.suppress(ValueError):
            message = json.loads(raw)
            if isinstance(message, dict):
                yield message


def _send(proc: asyncio.subprocess.Process, message: dict[str, Any]) -> None:
    assert proc.stdin is not None
    proc.stdin.write((json.dumps(message, ensure_ascii=False) + "\n").encode())


class _ClaudeDirect:
    """One `claude -p` stream-json process: a user line, then its `result` line."""

    def __init__(self, proc: asyncio.subprocess.Process):
        self._proc = proc

    async def turn(self, text: str) -> _DirectTurn:
        started = time.monotonic()
        first_output_s = float("nan")
        _send(self._proc, {"type": "user", "message": {"role": "user", "content": text}})
        async with asyncio.timeout(_TURN_TIMEOUT_S):
            async for message in _lines(self._proc):
                kind = message.get("type")
                if kind == "stream_event" and first_output_s != first_output_s:
                    delta = (message.get("event") or {}).get("delta") or {}
                    if delta.get("type") == "text_delta":
                        first_output_s = time.monotonic() - started
                if kind == "result":
                    if message.get("subtype") != "success" or message.get("is_error"):
                        raise RuntimeError(f"claude's turn failed: {str(message)[:300]}")
                    return _DirectTurn(first_output_s, time.monotonic() - started)
        raise AssertionError("unreachable")


class _CodexDirect:
    """One `codex app-server`: `turn/start` on one thread, then its `turn/completed`, with
    the thread settings the bot's driver uses."""

    def __init__(self, proc: asyncio.subprocess.Process):
        self._proc = proc
        self._ids = iter(range(1, 1_000_000))
        self._thread = ""

    async def _call(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        rpc_id = next(self._ids)
        _send(self._proc, {"id": rpc_id, "method": method, "params": params})
        async with asyncio.timeout(_TURN_TIMEOUT_S):
            async for message in _lines(self._proc):
                if message.get("id") == rpc_id and "method" not in message:
                    if "error" in message:
                        raise RuntimeError(f"codex refused {method}: {message['error']}")
                    result: dict[str, Any] = message["result"]
                    return result
        raise AssertionError("unreachable")

    async def open(self, cwd: str) -> None:
        info = {"name": "bench", "title": "bench", "version": "0"}
        await self._call("initialize", {"clientInfo": info, "capabilities": None})
        _send(self._proc, {"method": "initialized"})
        thread = await self._call(
            "thread/start",
            {
                "cwd": cwd,
                "approvalPolicy": "untrusted",
                "sandbox": "workspace-write",
                "approvalsReviewer": "user",
            },
        )
        self._thread = thread["thread"]["id"]

    async def turn(self, text: str) -> _DirectTurn:
        started = time.monotonic()
        first_output_s = float("nan")
        text_input = {"type": "text", "text": text, "text_elements": []}
        await self._call("turn/start", {"threadId": self._thread, "input": [text_input]})
        async with asyncio.timeout(_TURN_TIMEOUT_S):
            async for message in _lines(self._proc):
                method = message.get("method")
                if method == "item/agentMessage/delta" and first_output_s != first_output_s:
                    first_output_s = time.monotonic() - started
                if method == "turn/completed":
                    status = message["params"]["turn"]["status"]
                    if status != "completed":
                        raise RuntimeError(f"codex's turn ended {status}: {str(message)[:300]}")
                    return _DirectTurn(first_output_s, time.monotonic() - started)
        raise AssertionError("unreachable")


class _GeminiDirect:
    """The Gemini CLI as the bot's driver runs it: one headless stream-json process a turn,
    the prompt on stdin, resuming the conversation the first turn began."""

    def __init__(self, end: FarEnd, root: Path):
        self._end = end
        self._root = root
        self._session = ""

    async def turn(self, text: str) -> _DirectTurn:
        (cli,) = self._end.sections["agent"]["command"]  # type: ignore[misc]
        argv = [str(cli), "--skip-trust", "--output-format", "stream-json"]
        if self._session:
            argv += ["--resume", self._session]
        started = time.monotonic()
        first_output_s = float("nan")
        async with _process(self._end, self._root, *argv) as proc:
            assert proc.stdin is not None
            proc.stdin.write(text.encode())
            proc.stdin.close()
            async with asyncio.timeout(_TURN_TIMEOUT_S):
                async for message in _lines(proc):
                    kind = message.get("type")
                    if kind == "init":
                        self._session = str(message["session_id"])
                    is_answer = kind == "message" and message.get("role") == "assistant"
                    if is_answer and first_output_s != first_output_s:
                        first_output_s = time.monotonic() - started
                    if kind == "result":
                        if message.get("status") != "success":
                            raise RuntimeError(f"gemini's turn failed: {str(message)[:300]}")
                        return _DirectTurn(first_output_s, time.monotonic() - started)
        raise AssertionError("unreachable")


class _ReplDirect:
    """The program the repl driver runs (Claude Code's TUI, here) on a pty of our own, read
    through pyte as the driver reads it: the startup keys until the marker shows, then per
    turn the prompt typed, Enter, and the turn over the moment the whole answer is on the
    screen with the marker: no wait for quiet, which is the driver's completion detection."""

    def __init__(self, end: FarEnd, root: Path):
        agent = make_settings(root, None, **end.sections).agent
        claude = make_settings(root, None, **end.sections).claude
        self._agent = agent
        self._marker = re.compile(agent.prompt_marker)
        self._screen = pyte.Screen(agent.columns, agent.rows)
        self._stream = pyte.Stream(self._screen)
        self._proc = pexpect.spawn(
            agent.command[0],
            list(agent.command[1:]),
            cwd=str(claude.workdir),
            env={"TERM": "xterm-256color", **claude.env},
            dimensions=(agent.rows, agent.columns),
        )
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    async def _read(self, within_s: float) -> bool:
        """Feed what the program wrote within ``within_s`` to the screen; False if nothing."""
        loop = asyncio.get_running_loop()
        readable = asyncio.Event()
        loop.add_reader(self._proc.child_fd, readable.set)
        try:
            async with asyncio.timeout(within_s):
                await readable.wait()
        except TimeoutError:
            return False
        finally:
            loop.remove_reader(self._proc.child_fd)
        self._stream.feed(self._decoder.decode(os.read(self._proc.child_fd, 65536)))
        return True

    def _is_marked(self) -> bool:
        screen = self._screen
        rows = [screen.display[screen.cursor.y], *reversed(screen.display)]
        last = next((r for r in rows[1:] if r.strip()), "")
        return any(self._marker.search(r.rstrip()) for r in (rows[0], last))

    async def start(self) -> None:
        keys = list(self._agent.startup)
        async with asyncio.timeout(_TURN_TIMEOUT_S):
            while True:
                if await self._read(self._agent.idle_s):
                    continue
                if self._is_marked():
                    return
                if keys:
                    self._proc.send(keys.pop(0))

    def stop(self) -> None:
        self._proc.terminate(force=True)

    async def turn(self, text: str) -> _DirectTurn:
        # Claude Code echoes "ECHO: " and the prompt (SLOW adds dots): all of it on screen.
        wanted = re.sub(r"\s", "", f"ECHO: {text}")
        started = time.monotonic()
        first_output_s = float("nan")
        self._proc.send(text)
        while await self._read(self._agent.idle_s):
            pass  # the echo of what was typed, before Enter (as the driver waits for it)
        self._proc.send("\r")
        async with asyncio.timeout(_TURN_TIMEOUT_S):
            while True:
                await self._read(_TURN_TIMEOUT_S)
                shown = re.sub(r"\s", "", "".join(self._screen.display))
                if "ECHO:" in shown and first_output_s != first_output_s:
                    first_output_s = time.monotonic() - started
                if wanted in shown and self._is_marked():
                    return _DirectTurn(first_output_s, time.monotonic() - started)


@contextlib.asynccontextmanager
async def _direct(kind: str, end: FarEnd, root: Path) -> AsyncIterator[_Direct]:
    """``kind``'s CLI without the bot, warmed up by one turn."""
    direct: _Direct
    match kind:
        case "claude":
            command = str(end.sections["claude"]["command"])
            async with _process(end, root, command, *_CLAUDE_FLAGS) as proc:
                direct = _ClaudeDirect(proc)
                await direct.turn("bench warm-up")
                yield direct
        case "codex":
            (cli,) = end.sections["agent"]["command"]  # type: ignore[misc]
            async with _process(end, root, str(cli), "app-server") as proc:
                codex = _CodexDirect(proc)
                await codex.open(_workdir(end, root))
                await codex.turn("bench warm-up")
                yield codex
        case "gemini":
            direct = _GeminiDirect(end, root)
            await direct.turn("bench warm-up")
            yield direct
        case "repl":
            tui = _ReplDirect(end, root)
            try:
                await tui.start()
                await tui.turn("bench warm-up")
                yield tui
            finally:
                tui.stop()
        case _:
            raise ValueError(f"no direct driver for {kind!r}")


def _workdir(end: FarEnd, root: Path) -> str:
    """The agent's working directory, absolute (codex wants its thread's so)."""
    return str(make_settings(root, None, **end.sections).claude.workdir.resolve())


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


async def _main(kind: str, prompt_count: int, stream_s: float) -> None:
    # With --stream-s the fake streams each reply over that long (the SLOW trigger), as a
    # real model does; without it a turn is the bare CLI + fake API round trip.
    slow = "SLOW " if stream_s else ""
    prompts = [f"{slow}bench prompt {i}" for i in range(prompt_count)]
    bot: list[_BotTurn] = []
    direct: list[_DirectTurn] = []
    steps = 10
    far_end = FACTORIES[kind]
    with scratch("concordia-bench-bot-") as bot_root, scratch("concordia-bench-cli-") as root:
        async with (
            far_end(bot_root, slow_interval_s=stream_s / steps or 0.5, slow_steps=steps) as end,
            _bot_client(end, bot_root) as (bot_process, client),
            _direct(kind, end, root) as cli,
        ):
            for i, text in enumerate(prompts):
                # ABBA order: neither side always runs right after the other.
                if i % 2 == 0:
                    bot.append(await _bot_turn(client, f"p{i}", text))
                    direct.append(await cli.turn(text))
                else:
                    direct.append(await cli.turn(text))
                    bot.append(await _bot_turn(client, f"p{i}", text))

        delays_s = [float(m) for m in _DONE_AFTER.findall("".join(bot_process.log))]

    bot_s = sum(t.done_s for t in bot)
    direct_s = sum(t.result_s for t in direct)
    print(f"agent {kind}: {prompt_count} sequential prompts, one turn each, sides alternating")
    print("(each side had one unmeasured warm-up turn)")
    print()
    print_table(
        ["path", "total s", "mean ms", "p50 ms", "p90 ms", "min ms", "max ms"],
        [
            _row("bot (client send -> done)", [t.done_s for t in bot]),
            _row(f"{kind} direct (prompt -> turn end)", [t.result_s for t in direct]),
        ],
    )
    print()
    print(f"ratio bot/direct:  {bot_s / direct_s:.4f}")
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
                "batch -> first output (agent + API to first text)",
                _mean_ms([t.first_output_s - t.batch_s for t in bot]),
                _mean_ms([t.first_output_s for t in direct]),
            ],
            [
                "first output -> done / turn end",
                _mean_ms([t.done_s - t.first_output_s for t in bot]),
                _mean_ms([t.result_s - t.first_output_s for t in direct]),
            ],
        ],
    )
    _print_completion_delay(delays_s)


def _print_completion_delay(delays_s: list[float]) -> None:
    """The repl driver's completion detection: from the program done (its last output, the
    prompt marker showing) to the turn's end, as the driver logged it."""
    if not delays_s:
        return
    ms = [d * 1000 for d in delays_s]
    print()
    print(
        f"repl completion detection, program done -> turn end ({len(ms)} turns): "
        f"mean {statistics.mean(ms):.0f} ms, p50 {statistics.median(ms):.0f} ms, "
        f"max {max(ms):.0f} ms (agent.idle_s is the floor)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.overhead", description=__doc__)
    parser.add_argument("--agent", choices=sorted(FACTORIES), default="claude")
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
    shown = {"agent": args.agent, "prompts": args.prompts, "stream-s": args.stream_s}
    print(command_line("bench.overhead", shown))
    print()
    asyncio.run(_main(args.agent, args.prompts, args.stream_s))


if __name__ == "__main__":
    main()
