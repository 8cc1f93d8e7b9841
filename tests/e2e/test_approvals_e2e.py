"""Approvals end to end over WebSocket: invite roles from the CLI, the approval frames, and a
bot killed while an approval waits."""

from __future__ import annotations

import asyncio
import sqlite3
import sys
from pathlib import Path

import pytest

from tests.conftest import make_settings
from tests.e2e.harness import BotProcess, Client
from tests.fakes.anthropic_api import FakeAnthropic

pytestmark = [pytest.mark.claude, pytest.mark.timeout(120)]


async def _concordia(*args: str, cwd: Path) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot.cli",
        *args,
        cwd=cwd,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def _token(out: str) -> str:
    return out.split("http://")[1].split()[0].split("#")[-1]


async def test_roles_from_the_cli_and_an_approval_over_websocket(
    fake_api: FakeAnthropic, tmp_path: Path
) -> None:
    config = tmp_path / "config.toml"
    make_settings(tmp_path, fake_api)
    args = ("--config", str(config))
    code, out, _ = await _concordia("invite", "--role", "approver", *args, cwd=tmp_path)
    assert code == 0
    assert "approver token (until revoked), shown only now:" in out
    approver = _token(out)
    code, out, _ = await _concordia(
        "invite", "--role", "approver", "--single-use", *args, cwd=tmp_path
    )
    once = _token(out)
    code, out, _ = await _concordia(
        "invite", "--role", "approver", "--ttl", "1h", *args, cwd=tmp_path
    )
    assert "expires in 3600 s" in out
    revoked = _token(out)
    code, out, _ = await _concordia("invite", "--revoke", revoked, *args, cwd=tmp_path)
    assert (code, out.strip()) == (0, "revoked; it no longer lets anyone join")
    code, _, err = await _concordia("invite", "--ttl", "x", *args, cwd=tmp_path)
    assert code == 2
    assert "not a duration" in err

    async with (
        BotProcess(config, tmp_path) as bot,
        Client(bot.port, bot.invite, "alice") as alice,
        Client(bot.port, approver, "ann") as ann,
        Client(bot.port, once, "otto") as otto,
    ):
        assert (await alice.expect("welcome"))["role"] == "prompter"
        assert (await ann.expect("welcome"))["role"] == "approver"
        assert (await otto.expect("welcome"))["role"] == "approver"
        async with Client(bot.port, once, "again") as again:
            assert (await again.expect("error"))["code"] == "bad_token"
        async with Client(bot.port, revoked, "gone") as gone:
            assert (await gone.expect("error"))["code"] == "bad_token"

        await alice.prompt("p1", "TOOL_BASH touch from-ws.txt")
        approval = await ann.expect("approval", within_s=60)
        assert approval["tool"] == "Bash"
        assert approval["input"] == "touch from-ws.txt"
        seen_by_alice = await alice.expect("approval")
        assert seen_by_alice["approval_id"] == approval["approval_id"]

        await alice.send(
            {"type": "approve", "approval_id": approval["approval_id"], "decision": "allow"}
        )
        refused = await alice.expect("command_result", name="approve")
        assert not refused["ok"]
        assert "prompter" in refused["text"]
        await ann.send({"type": "approve", "approval_id": "1", "decision": "maybe"})
        assert (await ann.expect("error"))["code"] == "malformed"

        await ann.send(
            {"type": "approve", "approval_id": approval["approval_id"], "decision": "allow"}
        )
        assert (await ann.expect("command_result", name="approve"))["ok"]
        done = await alice.expect("approval_done", approval_id=approval["approval_id"])
        assert done["allowed"]
        assert done["text"] == "allowed by ann"
        assert (await alice.expect("done", within_s=60))["status"] == "success"
    assert (tmp_path / "work" / "from-ws.txt").exists()


async def test_a_bot_killed_while_an_approval_waits_reruns_the_batch(
    fake_api: FakeAnthropic, tmp_path: Path
) -> None:
    config = tmp_path / "config.toml"
    make_settings(tmp_path, fake_api)
    async with BotProcess(config, tmp_path) as bot:
        async with Client(bot.port, bot.host_token, "host") as host:
            await host.expect("welcome")
            await host.prompt("p1", "TOOL_BASH touch after-restart.txt")
            first = await host.expect("approval", within_s=60)
        bot.kill()
        await bot.wait_exit()
    async with (
        BotProcess(config, tmp_path) as bot,
        Client(bot.port, bot.host_token, "host") as host,
    ):
        await host.expect("welcome")
        second = await host.expect("approval", within_s=60)
        assert second["approval_id"] != first["approval_id"]
        await host.send(
            {"type": "approve", "approval_id": second["approval_id"], "decision": "allow"}
        )
        assert (await host.expect("done", within_s=60))["status"] == "success"
        reruns = [f for f in host.all if f["type"] == "batch"]
        assert [b["attempt"] for b in reruns] in ([2], [])
    assert (tmp_path / "work" / "after-restart.txt").exists()
    with sqlite3.connect(tmp_path / "state" / "concordia.db") as db:
        outcomes = [o for (o,) in db.execute("SELECT outcome FROM approvals ORDER BY id")]
    assert outcomes == ["abandoned", "allowed"]
