"""The agent cannot reach Concordia's secrets (issue #12), checked with the real `claude` CLI.

`FakeAnthropic`'s ``TOOL_BASH <command>`` / ``TOOL_READ <path>`` make the model call a tool and
then repeat what the tool returned, so every request body the fake received is exactly what
reached the model's context. The checks are on those bodies, not only on what was posted.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from bot import app
from bot.agent import ToolRequest, TurnEnd
from bot.config import Settings
from bot.confinement import Confinement, sandbox_support
from bot.session import ClaudeSession
from bot.store import Store
from tests.conftest import _to_toml, make_settings
from tests.e2e.harness import BotProcess, Client
from tests.fakes.anthropic_api import FakeAnthropic, claude_command, claude_env

pytestmark = [pytest.mark.claude, pytest.mark.timeout(180)]

TOKEN = "tok_1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b1c2"
CONFIG_SECRET = "cfg_9f8e7d6c5b4a39281706f5e4d3c2b1a0"
CREDENTIAL = "sk-ant-stored-0f1e2d3c4b5a69788796a5b4c3d2e1f0"


@dataclass(frozen=True, slots=True)
class Layout:
    workdir: Path
    state: Path
    config: Path
    credentials: Path


def _layout(tmp_path: Path) -> Layout:
    """A state folder with a tokens file, a config file in the repository (where hosts keep
    it), and a credentials file, each holding a secret the model must never see."""
    layout = Layout(
        workdir=tmp_path / "work",
        state=tmp_path / "state",
        config=tmp_path / "work" / "concordia.toml",
        credentials=tmp_path / "creds" / "credentials.json",
    )
    for folder in (layout.workdir, layout.state, layout.credentials.parent):
        folder.mkdir(parents=True, exist_ok=True)
    (layout.state / "tokens.json").write_text(json.dumps({"default": {"host": TOKEN}}))
    layout.config.write_text(f'# a secret a careless host pasted: "{CONFIG_SECRET}"\n')
    layout.credentials.write_text(json.dumps({"anthropic_api_key": CREDENTIAL}))
    (layout.workdir / "notes.txt").write_text("ordinary project file\n")
    return layout


ATTACKS = [
    "TOOL_BASH cat {state}/tokens.json",
    "TOOL_BASH head -c 300 {state}/tokens.json",
    "TOOL_BASH grep -r host {state}",
    "TOOL_BASH find {state} -name tokens.json -exec cat {{}} ;",
    "TOOL_BASH base64 {state}/tokens.json",
    "TOOL_BASH cd {state} && cat tokens.json",
    "TOOL_READ {state}/tokens.json",
    "TOOL_BASH cat {config}",
    "TOOL_READ {config}",
    "TOOL_BASH cat {credentials}",
    "TOOL_READ {credentials}",
    "TOOL_BASH cat /proc/{pid}/environ",
]


async def _turn(session: ClaudeSession, prompt: str) -> tuple[str, str]:
    """Run one turn, denying whatever Claude asks; return (how it went, the turn's text)."""
    asked = False
    text = ""
    async for event in session.run(prompt):
        match event:
            case ToolRequest():
                asked = True
                await session.answer_tool(event, allow=False, message="denied by the test")
            case TurnEnd():
                text = event.result
    if asked:
        return "asked", text
    return ("refused" if text.startswith("TOOL ERROR") else "ran"), text


def _confinement(settings: Settings, layout: Layout, *, is_sandboxed: bool) -> Confinement:
    built = app.confinement_for(settings, layout.config, sandbox_support())
    return Confinement(denied=built.denied, is_sandboxed=is_sandboxed)


@pytest.mark.parametrize("layer", ["rules", "sandbox"])
async def test_reading_concordias_files_is_refused_or_asked_never_silently_allowed(
    fake_api: FakeAnthropic, tmp_path: Path, layer: str
) -> None:
    """Default permissions: each attack is refused by the CLI or goes to the approvers. The
    rules alone (``rules``) already hold; the sandbox (``sandbox``) must not loosen them."""
    support = sandbox_support()
    if layer == "sandbox":
        assert support.is_available, f"the test set-up installs the sandbox: {support.missing}"
    layout = _layout(tmp_path)
    settings = make_settings(
        tmp_path,
        fake_api,
        store={"path": str(layout.state / "concordia.db")},
        claude={"credentials_file": str(layout.credentials)},
    )
    confinement = _confinement(settings, layout, is_sandboxed=layer == "sandbox")
    env = dict(settings.claude.env)
    outcomes: dict[str, tuple[str, str]] = {}
    async with ClaudeSession(
        settings.claude, session_id=None, env=env, confinement=confinement
    ) as session:
        ordinary = await _turn(session, "TOOL_BASH cat notes.txt")
        for attack in ATTACKS:
            prompt = attack.format(
                state=layout.state,
                config=layout.config,
                credentials=layout.credentials,
                pid=os.getpid(),
            )
            outcomes[prompt] = await _turn(session, prompt)

    assert ordinary == ("ran", "TOOL RESULT: ordinary project file"), "rules too wide"
    silently = {p: o for p, o in outcomes.items() if o[0] == "ran"}
    assert not silently, f"ran without approval: {silently}"
    bodies = [json.dumps(t.body) for t in fake_api.turns]
    for secret in (TOKEN, CONFIG_SECRET, CREDENTIAL):
        assert not any(secret in body for body in bodies), f"{secret} reached the model"


async def test_an_approved_command_still_cannot_read_the_state_folder(
    fake_api: FakeAnthropic, tmp_path: Path
) -> None:
    """What the rules cannot see (a script opening the file) the sandbox hides."""
    assert sandbox_support().is_available, "the test set-up installs the sandbox"
    layout = _layout(tmp_path)
    settings = make_settings(
        tmp_path,
        fake_api,
        store={"path": str(layout.state / "concordia.db")},
        claude={"credentials_file": str(layout.credentials), "allowed_tools": ["Bash"]},
    )
    confinement = _confinement(settings, layout, is_sandboxed=True)
    scripts = [
        f"TOOL_BASH python3 -c \"print(open('{layout.state}/tokens.json').read())\"",
        f"TOOL_BASH sh -c 'cat {layout.state.parent}/st*/tok*'",
        "TOOL_BASH grep -r host .",
        f"TOOL_BASH sh -c 'cat {layout.workdir}/*.toml'",
    ]
    async with ClaudeSession(
        settings.claude, session_id=None, env=dict(settings.claude.env), confinement=confinement
    ) as session:
        ran = [await _turn(session, script) for script in scripts]

    assert [how for how, _ in ran] == ["refused"] * len(scripts), ran
    bodies = [json.dumps(t.body) for t in fake_api.turns]
    for secret in (TOKEN, CONFIG_SECRET):
        assert not any(secret in body for body in bodies), f"{secret} reached the model"


# -- concordia run ------------------------------------------------------------------------


def _git(workdir: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=workdir, capture_output=True, text=True, check=True
    ).stdout


def _run_config(tmp_path: Path, api: FakeAnthropic, workdir: Path, **store: object) -> Path:
    """Settings as a host writes them: no store.path unless given (the default state folder)."""
    home = tmp_path / "claude-home"
    home.mkdir(exist_ok=True)
    raw: dict[str, dict[str, object]] = {
        "party": {"collect_window_s": 0.05},
        "claude": {
            "command": claude_command(),
            "env": claude_env(home, api.base_url),
            "workdir": str(workdir),
            "restart_backoff_s": 0.2,
        },
        "websocket": {"host": "127.0.0.1", "port": 0},
    }
    if store:
        raw["store"] = dict(store)
    config = tmp_path / "config.toml"
    config.write_text(_to_toml(raw), encoding="utf-8")
    return config


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    workdir = tmp_path / "repo"
    workdir.mkdir()
    _git(workdir, "init", "-q")
    (workdir / "README.md").write_text("the host's project\n")
    _git(workdir, "add", "README.md")
    _git(workdir, "-c", "user.name=h", "-c", "user.email=h@x", "commit", "-q", "-m", "init")
    return workdir


async def _one_turn(bot: BotProcess, text: str) -> None:
    async with Client(bot.port, bot.host_token, "host") as host:
        await host.expect("welcome")
        await host.prompt(f"p-{len(text)}-{text[:8]}", text)  # client ids are unique per party
        await host.expect("done")


async def test_git_status_shows_nothing_of_concordias_after_a_run(
    fake_api: FakeAnthropic, tmp_path: Path, repo: Path
) -> None:
    config = _run_config(tmp_path, fake_api, repo)
    env = {"HOME": str(tmp_path / "home"), "XDG_STATE_HOME": ""}
    async with BotProcess(config, repo, env) as bot:
        await _one_turn(bot, "TOOL_BASH echo hello")

    assert _git(repo, "status", "--porcelain", "--untracked-files=all") == ""
    state = tmp_path / "home" / ".local" / "state" / "concordia"
    (folder,) = state.iterdir()
    assert (folder / "concordia.db").exists()
    assert (folder / "tokens.json").stat().st_mode & 0o777 == 0o600
    assert folder.stat().st_mode & 0o777 == 0o700


async def test_a_store_path_inside_the_workdir_refuses_to_start(
    fake_api: FakeAnthropic, tmp_path: Path, repo: Path
) -> None:
    config = _run_config(tmp_path, fake_api, repo, path=str(repo / ".concordia" / "c.db"))
    bot = BotProcess(config, repo)
    with pytest.raises(RuntimeError, match="concordia run exited: 2") as exc:
        await bot.start()
    assert "store.path" in str(exc.value)
    assert "is inside claude.workdir" in str(exc.value)
    assert not (repo / ".concordia").exists()
    assert fake_api.turns == []


async def test_an_old_state_folder_is_moved_with_history_approvals_and_session(
    fake_api: FakeAnthropic, tmp_path: Path, repo: Path
) -> None:
    """The layout of earlier versions (`.concordia/` in the repository), then an upgrade."""
    legacy = repo / ".concordia"
    old = _run_config(tmp_path, fake_api, repo, path=str(legacy / "concordia.db"))
    old_text = old.read_text().replace("[store]\n", "[store]\nallow_inside_workdir = true\n")
    old.write_text(old_text)
    async with BotProcess(old, repo) as bot:
        await _one_turn(bot, "remember the first turn")
        host_token = bot.host_token
    first = fake_api.turns[-1]
    async with Store(legacy / "concordia.db") as store:
        session_id = await store.session_id("default")
        approval = await store.open_approval("default", None, "Bash", "{}", "Bash(ls)", 1)
        await store.close_approval(approval, "allowed", [{"name": "host"}])
        await store.add_approval_rule("default", "Bash(make test)", "host")
    assert session_id

    config = _run_config(tmp_path, fake_api, repo)
    env = {"HOME": str(tmp_path / "home"), "XDG_STATE_HOME": ""}
    async with BotProcess(config, repo, env) as bot:
        assert bot.host_token == host_token, "teammates' links keep working"
        await _one_turn(bot, "the second turn")
        log = "".join(bot.log)

    assert "moved the state folder" in log
    assert not legacy.exists()
    assert _git(repo, "status", "--porcelain", "--untracked-files=all") == ""
    second = fake_api.turns[-1]
    assert second.session_id == first.session_id == session_id, "the conversation resumed"
    assert second.message_count > first.message_count
    (folder,) = (tmp_path / "home" / ".local" / "state" / "concordia").iterdir()
    async with Store(folder / "concordia.db") as store:
        assert await store.approval_rules("default") == ["Bash(make test)"]
        outcomes = await store.approval_outcomes("default")
        assert [o for _, _, o, _ in outcomes] == ["allowed"]
        history = await store.db.execute_fetchall("SELECT text FROM prompts ORDER BY id")
    assert [str(t) for (t,) in history] == ["remember the first turn", "the second turn"]
