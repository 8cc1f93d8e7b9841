"""agents.program: which program each agent kind runs, `doctor` checking it is installed,
and `status` naming the agent with its version."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

from agents.program import agent_program, program_version
from bot.agent import SessionError
from bot.config import AgentKind, AgentSettings, ClaudeSettings
from tests.conftest import make_settings

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.timeout(60)


def _program(kind: str, command: list[str] | None = None) -> AgentSettings:
    return AgentSettings.model_validate({"kind": kind, "command": command or []})


@pytest.mark.parametrize(("kind", "package"), [("codex", "@openai/codex"), ("gemini", "gemini")])
def test_a_missing_cli_says_how_to_install_it(kind: str, package: str) -> None:
    program = agent_program(_program(kind, [f"/nowhere/{kind}"]), ClaudeSettings())
    assert program.path is None
    with pytest.raises(SessionError, match=f"make {kind}.*{package}"):
        program.require()


def test_a_missing_repl_program_names_the_setting() -> None:
    program = agent_program(_program("repl", ["no-such-program-here", "-i"]), ClaudeSettings())
    with pytest.raises(SessionError, match=r"agent\.command 'no-such-program-here' was not found"):
        program.require()


@pytest.mark.parametrize(
    ("kind", "version"),
    [
        pytest.param("codex", "0.171.0", marks=pytest.mark.codex),
        pytest.param("gemini", "0.61.0", marks=pytest.mark.gemini),
    ],
)
async def test_the_project_local_cli_is_found_with_its_version(
    kind: str, version: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(ROOT)
    program = agent_program(_program(kind), ClaudeSettings())
    assert program.path == str(ROOT / ".tools" / kind / "node_modules" / ".bin" / kind)
    assert await program_version(program, {"PATH": os.environ["PATH"]}) == version


async def test_a_repl_program_is_not_asked_its_version() -> None:
    # `python3 -i --version` would be fine, but an arbitrary program may start its REPL.
    program = agent_program(_program("repl", [sys.executable, "-i"]), ClaudeSettings())
    assert program.kind is AgentKind.REPL
    assert program.path is not None
    assert await program_version(program, {"PATH": os.environ["PATH"]}) is None


async def _doctor(config: Path, env: dict[str, str]) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot.cli",
        "doctor",
        "--config",
        str(config),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=env,
        cwd=ROOT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def test_doctor_says_the_configured_agent_is_missing(tmp_path: Path) -> None:
    make_settings(tmp_path, None, agent={"kind": "codex", "command": ["/nowhere/codex"]})
    code, out = await _doctor(tmp_path / "config.toml", {"PATH": "/usr/bin:/bin"})
    assert code == 1
    assert "✗ agent.command '/nowhere/codex' was not found: run `make codex`" in out


@pytest.mark.codex
async def test_doctor_names_the_installed_agent_and_its_version(tmp_path: Path) -> None:
    make_settings(tmp_path, None, agent={"kind": "codex"})
    _, out = await _doctor(tmp_path / "config.toml", {"PATH": "/usr/bin:/bin"})
    assert f"✓ Codex 0.171.0: {ROOT}/.tools/codex/node_modules/.bin/codex" in out


async def test_doctor_says_the_gemini_cli_would_not_get_the_mergers_key(tmp_path: Path) -> None:
    make_settings(tmp_path, None, agent={"kind": "gemini"})
    code, out = await _doctor(tmp_path / "config.toml", {"PATH": "/usr/bin:/bin"})
    assert code == 1
    assert "the Gemini CLI reads $GEMINI_API_KEY, which is also the merger's key" in out
    make_settings(
        tmp_path, None, agent={"kind": "gemini"}, gemini={"api_key_env": "MERGER_GEMINI_API_KEY"}
    )
    _, out = await _doctor(tmp_path / "config.toml", {"PATH": "/usr/bin:/bin"})
    assert "merger's key" not in out
