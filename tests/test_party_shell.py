"""`shell` through a party served by `bot.app.App` on the `FakeAgent`: who may run it, when
it runs, what is posted and recorded."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from bot.model import BatchDone, Notice
from tests.conftest import make_settings
from tests.rigs import Rig, open_rig

pytestmark = [pytest.mark.timeout(60)]

SECRET = "sk-ant-test-secret-0123456789"


@contextlib.asynccontextmanager
async def shell_rig(tmp_path: Path, **shell: Any) -> AsyncIterator[Rig]:
    """The party with the prompters alice and bob joined, ``shell`` its shell settings."""
    overrides = {"shell": shell} if shell else {}
    async with open_rig(make_settings(tmp_path, None, **overrides), secrets=[SECRET]) as rig:
        assert await rig.chat.join("alice", rig.invites.prompter)
        assert await rig.chat.join("bob", rig.invites.prompter)
        yield rig


ALLOWED = {"enabled": True, "allowed_users": ["memory:alice"], "timeout_s": 10.0}


async def test_shell_is_off_by_default(tmp_path: Path) -> None:
    async with shell_rig(tmp_path) as rig:
        result = await rig.chat.command("alice", "shell", "touch made-by-shell")
        assert not result.ok
        assert "off" in result.text
        assert not (rig.workdir / "made-by-shell").exists()
        status = await rig.chat.command("alice", "status")
        assert "shell: off" in status.text


async def test_only_allowed_users_run_and_each_run_is_recorded(tmp_path: Path) -> None:
    async with shell_rig(tmp_path, **ALLOWED) as rig:
        refused = await rig.chat.command("bob", "shell", "touch made-by-bob")
        assert not refused.ok
        assert refused.text == "you may not run shell commands here"
        assert not (rig.workdir / "made-by-bob").exists()

        result = await rig.chat.command("alice", "shell", "pwd; echo done >&2; exit 3")
        assert not result.ok
        assert result.public
        assert result.text.startswith("```\n$ pwd; echo done >&2; exit 3\n")
        assert str(rig.workdir.resolve()) in result.text
        assert "done" in result.text
        assert result.text.endswith("```\nexit 3 in " + result.text.rsplit(" in ", 1)[1])
        notice = await rig.events.until(lambda e: isinstance(e, Notice) and "ran" in e.message)
        assert isinstance(notice, Notice)
        assert notice.message.startswith(
            "alice ran `pwd; echo done >&2; exit 3` on the host: exit 3"
        )

        (run,) = await rig.store.recent_shell_runs(rig.party.name, 5)
        assert (run.name, run.command, run.outcome, run.exit_code) == (
            "alice",
            "pwd; echo done >&2; exit 3",
            "exited",
            3,
        )
        status = await rig.chat.command("bob", "status")
        assert "last shell commands:" in status.text
        assert "alice: `pwd; echo done >&2; exit 3` exit 3 in" in status.text


async def test_output_is_redacted_unpinging_and_fenced(tmp_path: Path) -> None:
    async with shell_rig(tmp_path, **ALLOWED) as rig:
        result = await rig.chat.command(
            "alice", "shell", f"echo {SECRET}; echo @everyone; printf '```\\nout\\n'"
        )
        assert result.ok
        assert SECRET not in result.text
        assert "@everyone" not in result.text
        assert result.text.count("```") == 2, "a fence in the output cannot end ours"


async def test_a_command_waits_for_the_running_turn(tmp_path: Path) -> None:
    async with shell_rig(tmp_path, **ALLOWED) as rig:
        await rig.chat.push_prompt("bob", "SLOW occupy Claude")
        await asyncio.wait_for(rig.api.first_delta.wait(), 30)
        shell = asyncio.create_task(rig.chat.command("alice", "shell", "echo after"))
        await rig.events.until(lambda e: isinstance(e, Notice) and "waits for batch" in e.message)
        assert not shell.done()
        result = await shell
        assert "after" in result.text
        kinds = [type(e) for e in rig.events.seen]
        ran = next(
            i for i, e in enumerate(rig.events.seen) if isinstance(e, Notice) and "ran" in e.message
        )
        assert BatchDone in kinds[:ran], "the turn ended before the command ran"


async def test_cancel_kills_a_running_command_and_its_children(tmp_path: Path) -> None:
    async with shell_rig(tmp_path, **ALLOWED) as rig:
        ready = rig.workdir / "ready"
        os.mkfifo(ready)  # the command's write blocks until we read: a cross-process event
        shell = asyncio.create_task(
            rig.chat.command("alice", "shell", f"sleep 300 & echo $! > {ready}; wait")
        )
        pid = await asyncio.wait_for(asyncio.to_thread(ready.read_text), 10)
        (running,) = await rig.store.recent_shell_runs(rig.party.name, 1)
        assert running.outcome is None
        child = psutil.Process(int(pid))
        cancelled = await rig.chat.command("bob", "cancel")
        assert cancelled.text == "stopping alice's shell command"
        result = await shell
        assert "cancelled after" in result.text
        psutil.wait_procs([child], timeout=10)
        assert not child.is_running() or child.status() == psutil.STATUS_ZOMBIE
        (run,) = await rig.store.recent_shell_runs(rig.party.name, 1)
        assert run.outcome == "cancelled"


async def test_allow_patterns_refuse_shell_syntax(tmp_path: Path) -> None:
    async with shell_rig(tmp_path, **ALLOWED, allow=["echo *", "ls*"]) as rig:
        for hostile in ("ls; touch pwned", "echo $(touch pwned)", "echo `touch pwned`", "cat x"):
            result = await rig.chat.command("alice", "shell", hostile)
            assert not result.ok, hostile
            assert result.text.startswith("refused: "), result.text
        assert not (rig.workdir / "pwned").exists()
        assert await rig.store.recent_shell_runs(rig.party.name, 5) == []
        ok = await rig.chat.command("alice", "shell", "echo hello world")
        assert ok.ok
        assert "hello world" in ok.text
