"""What the benchmarks share: a scratch directory, the bot's config, printing figures, and
the driving of a long reply streamed into a chat (`discord_stream`, `slack_stream`).

Every benchmark runs against a FakeAnthropic in its own process and binds only
127.0.0.1 port 0; files live in a temporary directory removed on exit.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import math
import shlex
import sqlite3
import sys
import tempfile
from collections.abc import Callable, Coroutine, Iterator, Sequence
from pathlib import Path

import psutil

from tests.conftest import make_settings
from tests.e2e.drivers import squash
from tests.e2e.harness import BotProcess, Client
from tests.fakes.anthropic_api import LONG_REPLY, FakeAnthropic

__all__ = [
    "STREAM_TIMEOUT_S",
    "bot_config",
    "busiest_window",
    "claude_child",
    "command_line",
    "db_rows",
    "joined",
    "long_reply",
    "percentile",
    "print_table",
    "run_stream_bench",
    "scratch",
    "whole_reply_shown",
]

_WELCOME_TIMEOUT_S = 30.0
STREAM_TIMEOUT_S = 600.0
"""How long a stream benchmark waits for the whole reply (and its bot's claude.turn_timeout_s:
a paced 50k reply takes minutes, and the tests' 60 s limit would cut it)."""
# The first characters of the status line a batch gets when it fails or is interrupted.
_STATUS_MARKS = ("⚠", "⏹")


@contextlib.contextmanager
def scratch(prefix: str) -> Iterator[Path]:
    """A temporary directory for config, database and claude's HOME; removed afterwards."""
    with tempfile.TemporaryDirectory(prefix=prefix, ignore_cleanup_errors=True) as name:
        yield Path(name)


def bot_config(root: Path, api: FakeAnthropic, **overrides: dict[str, object]) -> Path:
    """Write ``root/config.toml`` (make_settings: the real CLI pointed at ``api``).

    The per-member pace is lifted: benchmarks send far faster than any person types."""
    party = {"member_burst": 1_000_000, "member_prompts_per_minute": 1e9}
    make_settings(root, api, **{**overrides, "party": {**party, **overrides.get("party", {})}})
    return root / "config.toml"


async def joined(port: int, token: str, name: str) -> Client:
    """A connected client that has received its welcome; the caller must ``__aexit__`` it."""
    client = Client(port, token, name)
    await client.__aenter__()
    try:
        await client.expect("welcome", _WELCOME_TIMEOUT_S)
    except BaseException:
        await client.__aexit__(None, None, None)
        raise
    return client


def claude_child(bot: BotProcess) -> psutil.Process | None:
    """The claude process that ``concordia run`` spawned, if it is up."""
    assert bot.proc is not None
    for child in psutil.Process(bot.proc.pid).children(recursive=True):
        with contextlib.suppress(psutil.Error):
            command = child.cmdline()
            # The CLI itself, not its helpers (the sandbox's socat proxy names claude too).
            if command and command[0].endswith("claude"):
                return child
    return None


def db_rows(path: Path, table: str) -> int:
    """How many rows ``table`` of the SQLite file holds (read with a separate connection)."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        (count,) = db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()
    return int(count)


def command_line(module: str, flags: dict[str, object]) -> str:
    """The exact command that reproduces this run, flags spelled out with their values."""
    args = [_shown_python(), "-m", module]
    for name, value in flags.items():
        option = "--" + name.replace("_", "-")
        if isinstance(value, list | tuple):
            args += [option, *map(str, value)]
        else:
            args += [option, str(value)]
    return shlex.join(args)


def _shown_python() -> str:
    python = Path(sys.executable)
    with contextlib.suppress(ValueError):
        return str(python.relative_to(Path.cwd()))
    return str(python)


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) by nearest rank; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(q / 100 * len(ordered))))
    return ordered[rank - 1]


def print_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """A plain-text table: the first column left-aligned, the others right-aligned."""
    cells = [[str(h) for h in headers], *([str(c) for c in row] for row in rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        first = row[0].ljust(widths[0])
        rest = (cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True))
        return "  ".join([first, *rest])

    print(line(cells[0]))
    print("  ".join("-" * w for w in widths))
    for row in cells[1:]:
        print(line(row))


# -- a long reply streamed into a chat ------------------------------------------------------


def long_reply(chars: int) -> str:
    """Copies of LONG_REPLY (markdown with fenced Python) joined until ``chars`` is reached."""
    copies = max(1, math.ceil(chars / (len(LONG_REPLY) + 2)))
    return "\n\n".join([LONG_REPLY] * copies)


def whole_reply_shown(texts: Sequence[str], reply: str) -> bool:
    """Whether the output messages ``texts`` show all of ``reply``, in order (a split may add
    fence lines and whitespace). RuntimeError once a status line says the batch ended early."""
    ended = [t for t in texts if t.startswith(_STATUS_MARKS)]
    if ended:
        raise RuntimeError(f"the batch ended early: {ended[0]}")
    return squash("".join(texts)) == squash(reply)


def busiest_window(times_s: Sequence[float], window_s: float) -> int:
    """The most of ``times_s`` (sorted) that fall in any window of ``window_s`` seconds."""
    return max(
        (bisect.bisect_right(times_s, t + window_s) - i for i, t in enumerate(times_s)),
        default=0,
    )


def run_stream_bench(
    module: str,
    description: str | None,
    setting: str,
    default_edit_interval_s: float,
    bench: Callable[[int, float, float], Coroutine[None, None, None]],
) -> None:
    """Parse a stream benchmark's flags, print the command that reproduces the run, then run
    ``bench(reply_chars, chars_per_s, edit_interval_s)``. ``setting`` is the chat's
    edit_interval_s key (``discord.edit_interval_s``), which ``--edit-interval-s`` sets."""
    parser = argparse.ArgumentParser(prog=f"python -m {module}", description=description)
    parser.add_argument("--reply-chars", type=int, default=50_000, help="length of the reply")
    parser.add_argument(
        "--chars-per-s",
        type=float,
        default=0.0,
        help="stream the reply at this rate, as a model would (0: as fast as possible)",
    )
    parser.add_argument(
        "--edit-interval-s",
        type=float,
        default=default_edit_interval_s,
        help=f"{setting} for the bot (its default is {default_edit_interval_s:g})",
    )
    args = parser.parse_args()
    if args.reply_chars < 1:
        parser.error("--reply-chars must be >= 1")
    if args.chars_per_s < 0:
        parser.error("--chars-per-s must be >= 0")
    if args.edit_interval_s <= 0:
        parser.error("--edit-interval-s must be > 0")
    flags = {
        "reply-chars": args.reply_chars,
        "chars-per-s": args.chars_per_s,
        "edit-interval-s": args.edit_interval_s,
    }
    print(command_line(module, flags))
    print()
    asyncio.run(bench(args.reply_chars, args.chars_per_s, args.edit_interval_s))
