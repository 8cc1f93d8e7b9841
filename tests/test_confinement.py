"""What the agent can reach (issue #12): its environment, its deny rules, the sandbox settings."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from bot import app
from bot.config import ConfigError, load_settings
from bot.confinement import Confinement, SandboxSupport, agent_environment, sandbox_support
from tests.conftest import _to_toml

BOT_SECRETS = {
    "DISCORD_BOT_TOKEN": "discord-secret-token-value",
    "SLACK_BOT_TOKEN": "xoxb-slack-secret-value",
    "SLACK_APP_TOKEN": "xapp-slack-secret-value",
    "GEMINI_API_KEY": "gemini-secret-key-value",
}


def _environ() -> dict[str, str]:
    return {
        **BOT_SECRETS,
        "PATH": "/usr/bin",
        "HOME": "/home/host",
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "ANTHROPIC_API_KEY": "sk-ant-claude-needs-this",
        "CLAUDE_CODE_USE_BEDROCK": "0",
        "CONCORDIA_GEMINI_BASE_URL": "http://127.0.0.1:9",
        "CONCORDIA_CONFIG": "/etc/concordia.toml",
        "AWS_SECRET_ACCESS_KEY": "aws-secret-of-the-host",
        "NGROK_AUTHTOKEN": "ngrok-tunnel-token-value",
        "GOOGLE_API_KEY": BOT_SECRETS["GEMINI_API_KEY"],  # Gemini's key under its other name
        "GITHUB_TOKEN": "ghp-host-token",
    }


def test_the_agent_environment_is_an_allow_list() -> None:
    env = agent_environment(_environ(), {}, bot_secret_names=BOT_SECRETS)

    assert env == {
        "PATH": "/usr/bin",
        "HOME": "/home/host",
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "ANTHROPIC_API_KEY": "sk-ant-claude-needs-this",
        "CLAUDE_CODE_USE_BEDROCK": "0",
    }


def test_claude_env_is_added_but_never_the_bots_own_secrets() -> None:
    extra = {
        "GITHUB_TOKEN": "chosen-by-the-host",  # the host's choice: passed
        "DISCORD_BOT_TOKEN": "copied-in-by-mistake",  # a bot secret's name: dropped
        "MY_COPY": BOT_SECRETS["SLACK_BOT_TOKEN"],  # a bot secret's value: dropped
        "CONCORDIA_STORE_PATH": "/x",  # a Concordia setting: dropped
    }
    env = agent_environment(_environ(), extra, bot_secret_names=BOT_SECRETS)

    assert env["GITHUB_TOKEN"] == "chosen-by-the-host"
    for name in ("DISCORD_BOT_TOKEN", "MY_COPY", "CONCORDIA_STORE_PATH"):
        assert name not in env
    for secret in BOT_SECRETS.values():
        assert secret not in env.values()


def test_the_bots_claude_env_reads_the_configured_variable_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`concordia run` names the variables from the settings, not from a fixed list."""
    (tmp_path / "repo").mkdir()
    config = tmp_path / "config.toml"
    config.write_text(
        _to_toml(
            {
                "store": {"path": str(tmp_path / "state" / "c.db")},
                "discord": {"token_env": "MY_DISCORD"},
                "gemini": {"api_key_env": "MY_GEMINI"},
                "claude": {"workdir": str(tmp_path / "repo")},
            }
        )
    )
    settings = load_settings(config, environ={})
    monkeypatch.setenv("MY_DISCORD", "discord-under-another-name")
    monkeypatch.setenv("MY_GEMINI", "gemini-under-another-name")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-key")

    env = app.agent_env(settings, os.environ)

    assert "MY_DISCORD" not in env
    assert "MY_GEMINI" not in env
    assert env["ANTHROPIC_API_KEY"] == "sk-ant-key"


def test_deny_rules_cover_the_file_tools_for_each_path_and_what_is_under_it(
    tmp_path: Path,
) -> None:
    state = tmp_path / "state"
    rules = Confinement(denied=(state,), is_sandboxed=False).deny_rules()

    absolute = "/" + state.as_posix()  # Claude Code's "//" marks an absolute path
    assert rules == [
        f"Read({absolute})",
        f"Read({absolute}/**)",
        f"Edit({absolute})",
        f"Edit({absolute}/**)",
    ]


def test_a_symlinked_path_is_denied_as_given_and_as_resolved(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "link"
    link.symlink_to(real)

    rules = Confinement(denied=(link,), is_sandboxed=False).deny_rules()

    assert f"Read(/{link.as_posix()}/**)" in rules
    assert f"Read(/{real.as_posix()}/**)" in rules


def test_cli_settings_turn_the_sandbox_on_with_approvals_kept(tmp_path: Path) -> None:
    state = tmp_path / "state"
    sandboxed = json.loads(Confinement(denied=(state,), is_sandboxed=True).cli_settings())
    plain = json.loads(Confinement(denied=(state,), is_sandboxed=False).cli_settings())

    assert sandboxed["sandbox"] == {
        "enabled": True,
        "autoAllowBashIfSandboxed": False,
        "failIfUnavailable": False,
        "filesystem": {"denyRead": [state.as_posix()]},
    }
    assert sandboxed["permissions"] == plain["permissions"]
    assert "sandbox" not in plain


def test_run_denies_its_state_config_credentials_and_own_proc_entry(tmp_path: Path) -> None:
    (tmp_path / "repo").mkdir()
    config = tmp_path / "config.toml"
    config.write_text(_to_toml({"claude": {"workdir": str(tmp_path / "repo")}}))
    settings = load_settings(config, environ={"HOME": str(tmp_path / "home")})

    confinement = app.confinement_for(settings, config, SandboxSupport(True, "bubblewrap"))

    denied = set(confinement.denied)
    assert settings.state_dir in denied
    assert settings.claude.credentials_file in denied
    assert config.resolve() in denied
    assert any(p.parts[:2] == ("/", "proc") for p in denied)
    assert confinement.is_sandboxed


@pytest.mark.parametrize(
    ("mode", "available", "sandboxed"),
    [("auto", True, True), ("auto", False, False), ("off", True, False)],
)
def test_the_sandbox_is_on_where_the_machine_has_it_unless_turned_off(
    tmp_path: Path, mode: str, available: bool, sandboxed: bool
) -> None:
    (tmp_path / "repo").mkdir()
    config = tmp_path / "config.toml"
    config.write_text(_to_toml({"claude": {"workdir": str(tmp_path / "repo"), "sandbox": mode}}))
    settings = load_settings(config, environ={"HOME": str(tmp_path / "home")})
    support = SandboxSupport(available, "bubblewrap", "" if available else "install bubblewrap")

    assert app.confinement_for(settings, None, support).is_sandboxed is sandboxed


def test_claude_args_may_not_replace_the_settings(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(_to_toml({"claude": {"args": ["--settings", "{}"]}}))
    with pytest.raises(ConfigError, match="may not hold --settings"):
        load_settings(config, environ={}, base=tmp_path)


@pytest.mark.skipif(not sandbox_support().is_available, reason="needs bubblewrap (.ci/run has it)")
def test_a_wrapped_agent_sees_none_of_the_bots_files_nor_its_process(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "tokens.json").write_text('{"host": "host-invite-secret"}')
    credentials = tmp_path / "credentials.json"
    credentials.write_text('{"api_key": "sk-ant-secret"}')
    work = tmp_path / "work"
    work.mkdir()
    confinement = Confinement(
        denied=(state, credentials, Path(f"/proc/{os.getpid()}")), is_sandboxed=True
    )
    probe = (
        "import os, pathlib, sys\n"
        "state, creds, work, bot = sys.argv[1:]\n"
        "print('state:', sorted(os.listdir(state)))\n"
        "try:\n"
        "    print('credentials:', repr(pathlib.Path(creds).read_text()))\n"
        "except PermissionError:\n"
        "    print('credentials: denied')\n"
        "print('bot process:', os.path.exists('/proc/' + bot))\n"
        "pathlib.Path(work, 'made').write_text('ok')\n"
    )
    argv = [sys.executable, "-c", probe, str(state), str(credentials), str(work), str(os.getpid())]
    out = subprocess.run(
        confinement.wrap(argv), capture_output=True, text=True, timeout=30, check=True
    ).stdout
    assert out.splitlines() == ["state: []", "credentials: denied", "bot process: False"]
    assert (work / "made").read_text() == "ok", "the working tree stays the agent's to change"
    assert (state / "tokens.json").exists(), "the bot's own files are untouched"


def test_without_the_sandbox_the_command_is_unchanged() -> None:
    confinement = Confinement(denied=(Path("/tmp/state"),), is_sandboxed=False)
    assert confinement.wrap(["codex", "app-server"]) == ["codex", "app-server"]


@pytest.mark.skipif(not sandbox_support().is_available, reason="needs bubblewrap (.ci/run has it)")
def test_an_interrupt_reaches_the_wrapped_agent_and_not_the_bubblewrap(tmp_path: Path) -> None:
    """Ctrl-C on a pty (SIGINT to the process group) is the agent's to handle: bubblewrap,
    dying of it, would kill the agent (a TUI's conversation lost at each cancel)."""
    confinement = Confinement(denied=(tmp_path / "state",), is_sandboxed=True)
    probe = (
        "import time\n"
        "try:\n"
        "    print('ready', flush=True)\n"
        "    time.sleep(30)\n"
        "except KeyboardInterrupt:\n"
        "    print('interrupted, cleaning up', flush=True)\n"
        "    time.sleep(0.5)\n"
        "    print('clean', flush=True)\n"
    )
    proc = subprocess.Popen(
        confinement.wrap([sys.executable, "-c", probe]),
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert proc.stdout is not None
    try:
        assert proc.stdout.readline() == "ready\n"
        os.killpg(proc.pid, signal.SIGINT)
        out, _ = proc.communicate(timeout=10)
    finally:
        proc.kill()
    assert out == "interrupted, cleaning up\nclean\n", "the agent finished its cleanup"
    assert proc.returncode == 0
