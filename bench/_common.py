"""What the benchmarks share: a scratch directory, the bot's config, and printing figures.

Every benchmark runs against a FakeAnthropic in its own process and binds only
127.0.0.1 port 0; files live in a temporary directory removed on exit.
"""

from __future__ import annotations

import contextlib
import math
import shlex
import sqlite3
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import psutil

from tests.conftest import make_settings
from tests.e2e.harness import BotProcess, Client
from tests.fakes.anthropic_api import FakeAnthropic

__all__ = [
    "bot_config",
    "claude_child",
    "command_line",
    "db_rows",
    "joined",
    "percentile",
    "print_table",
    "scratch",
]

_WELCOME_TIMEOUT_S = 30.0


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
            if "claude" in " ".join(child.cmdline()):
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
