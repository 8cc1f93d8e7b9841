"""The `concordia` command as users run it: join with piped stdin, setup, invite, bad config."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import sys
from pathlib import Path

import pexpect
import pytest

from tests.conftest import make_settings
from tests.e2e.harness import BotProcess, Client
from tests.fakes.anthropic_api import FakeAnthropic

pytestmark = [pytest.mark.claude, pytest.mark.timeout(90)]


async def _concordia(*args: str, stdin: bytes = b"", cwd: Path) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot.cli",
        *args,
        cwd=cwd,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(stdin), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_piped_join_sends_prompts_and_exits_when_answered(
    fake_api: FakeAnthropic, tmp_path: Path
) -> None:
    make_settings(tmp_path, fake_api)
    async with BotProcess(tmp_path / "config.toml", tmp_path) as bot:
        url = f"http://127.0.0.1:{bot.port}/#{bot.invite}"  # the link `run` prints
        code, out, _ = await _concordia(
            "join", url, "--name", "ci", stdin=b"fix the test\nadd a docstring\n", cwd=tmp_path
        )
    assert code == 0, out
    assert "ECHO:" in out
    assert "fix the test" in out
    asked = "\n".join(t.user_text for t in fake_api.turns)
    assert "fix the test" in asked
    assert "add a docstring" in asked


async def test_piped_join_with_a_bad_token_exits_2(fake_api: FakeAnthropic, tmp_path: Path) -> None:
    make_settings(tmp_path, fake_api)
    async with BotProcess(tmp_path / "config.toml", tmp_path) as bot:
        url = f"concordia://127.0.0.1:{bot.port}/wrong-token"
        code, out, err = await _concordia("join", url, "--name", "eve", stdin=b"hi\n", cwd=tmp_path)
    assert code == 2
    assert "refused" in (out + err)
    assert fake_api.turns == []


async def test_invite_rotate_refuses_the_old_token_at_once(
    fake_api: FakeAnthropic, tmp_path: Path
) -> None:
    config = tmp_path / "config.toml"
    make_settings(tmp_path, fake_api)
    async with (
        BotProcess(config, tmp_path) as bot,
        Client(bot.port, bot.invite, "alice") as alice,
    ):
        await alice.expect("welcome")
        code, out, _ = await _concordia("invite", "--rotate", "--config", str(config), cwd=tmp_path)
        assert code == 0
        new_token = out.split("invite: ")[1].split()[0].split("#")[-1]
        assert new_token != bot.invite
        async with Client(bot.port, bot.invite, "late") as late:
            assert (await late.expect("error"))["code"] == "bad_token"
        async with Client(bot.port, new_token, "bob") as bob:
            await bob.expect("welcome")
        # alice joined before the rotation and stays in.
        await alice.prompt("p", "still here")
        await alice.expect("queued", id="p")
    tokens = tmp_path / "state" / "tokens.json"
    assert stat.S_IMODE(tokens.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "state" / "concordia.db").stat().st_mode) == 0o600


async def test_bad_config_names_the_key_and_the_fix(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[party]\ncolect_window_s = 1\n[websocket]\nport = "eighty"\n')
    code, _, err = await _concordia("run", "--config", str(config), cwd=tmp_path)
    assert code == 2
    assert "party.colect_window_s is not a setting; did you mean 'collect_window_s'?" in err
    assert "websocket.port" in err


async def test_run_without_credentials_and_no_tty_says_to_run_setup(tmp_path: Path) -> None:
    env_home = tmp_path / "home"
    env_home.mkdir()
    repo = tmp_path / "repo"  # the working tree; HOME (with the state folder) is elsewhere
    repo.mkdir()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot.cli",
        "run",
        cwd=repo,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={"PATH": os.environ["PATH"], "HOME": str(env_home)},
    )
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 2
    assert b"concordia setup" in err


async def test_setup_reprompts_on_a_rejected_key_and_stores_it_0600(
    fake_api: FakeAnthropic, tmp_path: Path
) -> None:
    """Driven through a pty, as a person types it; the fake API refuses keys with "bad"."""
    credentials = tmp_path / "creds" / "credentials.json"
    config = tmp_path / "config.toml"
    (tmp_path / "repo").mkdir()
    config.write_text(
        f'[claude]\ncredentials_file = "{credentials}"\nworkdir = "{tmp_path / "repo"}"\n'
        f'env = {{ ANTHROPIC_BASE_URL = "{fake_api.base_url}" }}\n'
    )
    child = pexpect.spawn(
        sys.executable,
        ["-m", "bot.cli", "setup", "--config", str(config)],
        cwd=str(tmp_path),
        env={"PATH": os.environ["PATH"], "HOME": str(tmp_path)},
        encoding="utf-8",
        timeout=20,
    )
    try:
        await child.expect("API key", async_=True)
        child.sendline("sk-ant-bad-key")
        await child.expect("rejected", async_=True)
        await child.expect("API key", async_=True)
        child.sendline("sk-ant-good-key")
        await child.expect("stored the key", async_=True)
        await child.expect(pexpect.EOF, async_=True)
    finally:
        child.close()
    assert child.exitstatus == 0
    assert json.loads(credentials.read_text()) == {"anthropic_api_key": "sk-ant-good-key"}
    assert stat.S_IMODE(credentials.stat().st_mode) == 0o600
