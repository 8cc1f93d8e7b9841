"""Keeping the database: `concordia backup FILE` (SQLite's online backup, while the bot
writes) and the check at start that stops on a damaged file, naming the way back (issue #16)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import stat
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot import cli
from bot.model import Author, Prompt
from bot.store import Store, StoreError, back_up
from tests.conftest import make_settings

PARTY = "p1"
ALICE = Author("ws", "u-alice", "alice")


def _count(path: Path, table: str) -> int:
    conn = sqlite3.connect(path)
    try:
        row = conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()
        return int(row[0])
    finally:
        conn.close()


def _pragma(path: Path, pragma: str) -> str:
    conn = sqlite3.connect(path)
    try:
        return str(conn.execute(f"PRAGMA {pragma}").fetchone()[0])
    finally:
        conn.close()


@contextlib.asynccontextmanager
async def _writing(store: Store) -> AsyncIterator[asyncio.Queue[int]]:
    """Prompts added one after another for as long as the block runs; each id once committed."""
    committed: asyncio.Queue[int] = asyncio.Queue()

    async def write() -> None:
        for n in range(100_000):
            accepted = await store.add_prompt(PARTY, Prompt(f"m{n}", ALICE, "x" * 500, "t1"), "x")
            committed.put_nowait(accepted.prompt_id)

    writer = asyncio.create_task(write())
    try:
        yield committed
    finally:
        writer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await writer


async def test_a_backup_taken_while_the_store_writes_is_a_whole_database(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = make_settings(tmp_path, None)
    target = tmp_path / "backups" / "concordia-1.db"
    target.parent.mkdir()
    async with Store(settings.store_path) as store:
        await store.ensure_party(PARTY)
        async with _writing(store) as committed:
            for _ in range(50):
                await committed.get()
            # The real command, on its own loop, while this one goes on writing.
            args = ["backup", str(target), "--config", str(tmp_path / "config.toml")]
            code = await asyncio.to_thread(cli.main, args)
            await committed.get()  # the store still writes after the backup
        written = _count(settings.store_path, "prompts")

    out, err = capsys.readouterr()
    assert code == 0, err
    assert f"backed up {settings.store_path} to {target}" in out
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert _pragma(target, "quick_check") == "ok"
    assert _pragma(target, "journal_mode") == "delete", "one self-contained file"
    assert sorted(p.name for p in target.parent.iterdir()) == [target.name], "no -wal, no .part"
    copied = _count(target, "prompts")
    assert 50 <= copied < written
    async with Store(target) as restored:  # what a restore would start from
        pending = await restored.pending_prompts(PARTY)
    assert [p.prompt_id for p in pending] == list(range(1, copied + 1))


async def test_a_backup_never_overwrites_a_file_unless_forced(tmp_path: Path) -> None:
    source = tmp_path / "concordia.db"
    async with Store(source) as store:
        await store.ensure_party(PARTY)
    target = tmp_path / "copy.db"
    target.write_text("an older backup")

    with pytest.raises(StoreError, match="exists: choose another name, or pass --force"):
        await back_up(source, target)
    assert target.read_text() == "an older backup"

    copy = await back_up(source, target, overwrite=True)
    assert copy.path == target
    assert copy.size_bytes == target.stat().st_size
    assert _count(target, "parties") == 1
    assert stat.S_IMODE(target.stat().st_mode) == 0o600


def test_concordia_backup_says_why_it_refuses(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = make_settings(tmp_path, None)
    config = str(tmp_path / "config.toml")
    target = tmp_path / "copy.db"

    assert cli.main(["backup", str(target), "--config", config]) == 1
    assert f"there is no database at {settings.store_path}" in capsys.readouterr().err
    assert not target.exists()

    asyncio.run(_make_store(settings.store_path))
    target.write_text("keep me")
    assert cli.main(["backup", str(target), "--config", config]) == 1
    assert "pass --force" in capsys.readouterr().err
    assert target.read_text() == "keep me"

    assert cli.main(["backup", str(target), "--config", config, "--force"]) == 0
    assert "schema version" in capsys.readouterr().out
    assert _count(target, "parties") == 1


async def _make_store(path: Path) -> None:
    async with Store(path) as store:
        await store.ensure_party(PARTY)


async def test_a_failed_backup_leaves_no_file_behind(tmp_path: Path) -> None:
    source = tmp_path / "concordia.db"
    source.write_bytes(b"this is no database" * 100)
    target = tmp_path / "out" / "copy.db"
    target.parent.mkdir()

    with pytest.raises(StoreError, match="is damaged"):
        await back_up(source, target)
    assert list(target.parent.iterdir()) == []


# --------------------------------------------------------------------------- a damaged file


def _damage(path: Path) -> None:
    """A real store file with one page in the middle overwritten."""
    asyncio.run(_fill(path))
    assert not Path(f"{path}-wal").exists(), "closed cleanly: everything is in the main file"
    with path.open("r+b") as f:
        f.seek(4096 * 3)
        f.write(b"\xff" * 4096)


async def _fill(path: Path) -> None:
    async with Store(path) as store:
        await store.ensure_party(PARTY)
        for n in range(200):
            await store.add_prompt(PARTY, Prompt(f"m{n}", ALICE, "y" * 300, "t1"), "y" * 300)


@pytest.mark.parametrize("kind", ["not a database", "a damaged page"])
async def test_a_damaged_file_stops_the_store_naming_the_backup_command(
    tmp_path: Path, kind: str
) -> None:
    path = tmp_path / "concordia.db"
    if kind == "not a database":
        path.write_bytes(b"\x00garbage" * 1000)
    else:
        await asyncio.to_thread(_damage, path)
    before = path.read_bytes()

    with pytest.raises(StoreError) as refused:
        async with Store(path):
            pass

    said = str(refused.value)
    assert f"{path} is damaged" in said
    assert "concordia backup FILE" in said
    assert "aside" in said
    assert path.read_bytes() == before, "the damaged file is left as it was"


async def test_a_sound_file_passes_the_check(tmp_path: Path) -> None:
    """The negative case: the check does not refuse a store that is fine."""
    path = tmp_path / "concordia.db"
    await _fill(path)
    async with Store(path) as store:
        assert len(await store.pending_prompts(PARTY)) == 200


async def test_concordia_run_on_a_damaged_file_stops_with_the_message(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, None)
    settings.store_path.parent.mkdir(parents=True, exist_ok=True)
    await asyncio.to_thread(_damage, settings.store_path)
    env = {**os.environ, "ANTHROPIC_API_KEY": "sk-ant-test", "HOME": str(tmp_path / "home")}

    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot.cli",
        "run",
        "--config",
        str(tmp_path / "config.toml"),
        cwd=tmp_path,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)

    said = err.decode()
    assert proc.returncode == 1, said
    assert f"concordia: {settings.store_path} is damaged" in said
    assert "`concordia backup FILE`" in said
    assert "Traceback" not in said
    assert b"invite:" not in out, "the bot did not start"
