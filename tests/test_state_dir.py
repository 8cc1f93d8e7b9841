"""The state folder (issue #12): outside the working tree, 0700, an old in-tree one moved out."""

from __future__ import annotations

import asyncio
import json
import stat
from pathlib import Path

import pytest

from bot import cli
from bot.config import ConfigError, load_settings
from bot.invite import InviteBook
from bot.model import Author, Prompt, Role, TurnStatus
from bot.state_dir import default_state_dir, move_legacy_state
from bot.store import Store
from tests.conftest import _to_toml

PARTY = "default"


def _config(tmp_path: Path, **sections: dict[str, object]) -> Path:
    config = tmp_path / "config.toml"
    config.write_text(_to_toml(sections), encoding="utf-8")
    return config


def test_the_default_lives_under_xdg_state_home_keyed_by_the_workdir(tmp_path: Path) -> None:
    repo = tmp_path / "my repo"
    other = tmp_path / "other" / "my repo"
    repo.mkdir()
    other.mkdir(parents=True)
    environ = {"XDG_STATE_HOME": str(tmp_path / "xdg"), "HOME": str(tmp_path / "home")}

    here = default_state_dir(repo, environ)
    there = default_state_dir(other, environ)

    assert here.parent == tmp_path / "xdg" / "concordia"
    assert here.name.startswith("my-repo-")
    assert here != there, "two checkouts of the same name share no database"
    assert default_state_dir(repo, environ) == here, "the same folder every start"


def test_without_xdg_state_home_it_is_under_home(tmp_path: Path) -> None:
    home = tmp_path / "home"
    assert default_state_dir(tmp_path, {"HOME": str(home)}).parent == (
        home / ".local" / "state" / "concordia"
    )
    relative = {"HOME": str(home), "XDG_STATE_HOME": "relative/state"}  # ignored, as XDG says
    assert default_state_dir(tmp_path, relative).is_relative_to(home)


def test_a_store_path_inside_the_workdir_is_refused(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    config = _config(
        tmp_path, store={"path": str(repo / ".concordia" / "c.db")}, claude={"workdir": str(repo)}
    )

    with pytest.raises(ConfigError) as exc:
        load_settings(config, environ={})

    (problem,) = exc.value.problems
    assert "is inside claude.workdir" in problem
    assert "store.allow_inside_workdir = true" in problem


def test_a_store_path_inside_the_workdir_is_allowed_knowingly(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    config = _config(
        tmp_path,
        store={"path": str(repo / "c.db"), "allow_inside_workdir": True},
        claude={"workdir": str(repo)},
    )
    assert load_settings(config, environ={}).store.path == repo / "c.db"


def test_a_credentials_file_inside_the_workdir_is_refused(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    config = _config(
        tmp_path,
        store={"path": str(tmp_path / "state" / "c.db")},
        claude={"workdir": str(repo), "credentials_file": str(repo / "creds.json")},
    )
    with pytest.raises(ConfigError, match=r"credentials_file .* is inside claude.workdir"):
        load_settings(config, environ={})


async def _legacy_state(folder: Path) -> dict[str, object]:
    """An old in-tree state folder with a history, an approval, a rule and a session id."""
    async with Store(folder / "concordia.db") as store:
        await store.ensure_party(PARTY)
        invites = await InviteBook(store, PARTY, folder / "tokens.json").ensure()
        alice = Author("websocket", "alice", "alice", is_verified=False)
        await store.add_prompt(PARTY, Prompt("c1", alice, "fix the login test"), "fix it")
        batch = await store.create_batch(PARTY, "fix it", [], await store.pending_prompts(PARTY))
        await store.mark_sent(batch)
        approval = await store.open_approval(
            PARTY, batch.batch_id, "Bash", '{"command":"ls"}', "", 1
        )
        await store.close_approval(approval, "allowed", [{"name": "alice"}])
        await store.finish_batch(batch.batch_id, TurnStatus.SUCCESS)
        await store.add_approval_rule(PARTY, "Bash(make test)", "alice")
        await store.set_session_id(PARTY, "3f1c-session")
    return {"prompter": invites.prompter, "host": invites.host, "batch": batch.batch_id}


async def test_an_old_state_folder_is_moved_out_with_everything_in_it(tmp_path: Path) -> None:
    legacy = tmp_path / "repo" / ".concordia"
    legacy.mkdir(parents=True)
    before = await _legacy_state(legacy)
    state = tmp_path / "home" / "state" / "repo-1234"

    said = move_legacy_state([legacy], state)

    assert said == [
        f"moved the state folder {legacy} to {state}: inside the working directory Claude "
        "could read its tokens"
    ]
    assert not legacy.exists()
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    for name in ("concordia.db", "tokens.json"):
        assert stat.S_IMODE((state / name).stat().st_mode) == 0o600
    tokens = json.loads((state / "tokens.json").read_text())
    assert tokens[PARTY] == {"prompter": before["prompter"], "host": before["host"]}
    async with Store(state / "concordia.db") as store:
        assert await store.check_invite(PARTY, str(before["host"])) is Role.HOST
        assert await store.session_id(PARTY) == "3f1c-session"
        assert await store.approval_rules(PARTY) == ["Bash(make test)"]
        outcomes = await store.approval_outcomes(PARTY)
        assert [(tool, outcome) for _, tool, outcome, _ in outcomes] == [("Bash", "allowed")]
        assert await store.last_finished_at(PARTY) is not None


async def test_a_state_folder_that_exists_is_never_overwritten(tmp_path: Path) -> None:
    legacy = tmp_path / "repo" / ".concordia"
    legacy.mkdir(parents=True)
    await _legacy_state(legacy)
    state = tmp_path / "state"
    state.mkdir()
    (state / "tokens.json").write_text("{}")

    (said,) = move_legacy_state([legacy], state)

    assert "already has one" in said
    assert (legacy / "concordia.db").exists(), "the old folder is left for the host"
    assert (state / "tokens.json").read_text() == "{}"


def test_invite_moves_the_old_folder_before_it_opens_the_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`concordia invite` after an upgrade shows the tokens teammates already hold."""
    repo = tmp_path / "repo"
    (repo / ".concordia").mkdir(parents=True)
    before = asyncio.run(_legacy_state(repo / ".concordia"))
    monkeypatch.chdir(repo)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_STATE_HOME", raising=False)

    assert cli.main(["invite"]) == 0

    out, err = capsys.readouterr()
    assert f"/#{before['prompter']}" in out
    assert "moved the state folder" in err
    assert not (repo / ".concordia").exists()
    assert (default_state_dir(repo, {"HOME": str(tmp_path / "home")}) / "tokens.json").exists()
