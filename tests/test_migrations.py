"""migrations/: a database filled at every older schema version opens with `Store`, which
upgrades it to the newest, with every row intact and readable through the store (issue #16).

Each database is built by applying exactly the migrations up to its version, as the bot of
that time did, then filled with rows of every table that version has.
"""

from __future__ import annotations

import importlib.resources
import json
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from bot.model import (
    ApprovalOutcome,
    Author,
    BatchState,
    Prompt,
    PromptState,
    QuestionOutcome,
    Role,
    ShellOutcome,
    TurnStatus,
)
from bot.store import Participant, Store, hash_token

PARTY = "p1"
T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
TOKENS = {"prompter": "tok-prompter", "host": "tok-host", "revoked": "tok-revoked"}
APPROVER_TOKEN = "tok-approver"


def _migrations() -> dict[int, str]:
    files = importlib.resources.files("migrations").iterdir()
    return {int(f.name[:4]): f.read_text(encoding="utf-8") for f in files if f.name[:4].isdigit()}


LATEST = max(_migrations())
OLDER = list(range(1, LATEST))


def _at(minutes: float) -> str:
    return (T0 + timedelta(minutes=minutes)).isoformat(timespec="milliseconds")


def _build(path: Path, version: int) -> None:
    """A database at exactly ``version``: its migrations applied as `Store` applies them."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA foreign_keys=ON")
        for number, script in sorted(_migrations().items()):
            if number <= version:
                conn.executescript(f"BEGIN;\n{script}\nPRAGMA user_version={number};\nCOMMIT;")
        _fill(conn, version)
    finally:
        conn.close()


def _fill(conn: sqlite3.Connection, version: int) -> None:
    """Representative rows of every table that exists at ``version``."""
    run = conn.execute
    run(
        "INSERT INTO parties (name, session_id, created_at) VALUES (?, ?, ?)",
        (PARTY, "s-1", _at(0)),
    )
    for i, (kind, token) in enumerate(TOKENS.items(), start=1):
        run(
            "INSERT INTO invites (id, party, token_hash, role, created_at, revoked_at)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (
                i,
                PARTY,
                hash_token(token),
                "host" if kind == "host" else "prompter",
                _at(i),
                _at(5) if kind == "revoked" else None,
            ),
        )
    for user, role, left in (("alice", "prompter", None), ("bob", "host", _at(30))):
        run(
            "INSERT INTO participants (party, platform, user_id, name, role, joined_at, left_at)"
            " VALUES (?, 'ws', ?, ?, ?, ?, ?)",
            (PARTY, f"u-{user}", user, role, _at(2), left),
        )
    groups = json.dumps([{"prompt_ids": [1], "authors": ["alice"], "instruction": "do one"}])
    for batch_id, state, status, finished in (
        (1, "done", "success", _at(12)),
        (2, "sent", None, None),
        (3, "failed", "error", _at(14)),
    ):
        run(
            "INSERT INTO batches (id, party, prompt, groups_json, state, attempts, status,"
            " detail, created_at, finished_at) VALUES (?, ?, ?, ?, ?, 1, ?, '', ?, ?)",
            (batch_id, PARTY, f"merged {batch_id}", groups, state, status, _at(10), finished),
        )
    for prompt_id, state, batch_id in (
        (1, "done", 1),
        (2, "sent", 2),
        (3, "pending", None),
        (4, "failed", None),  # withdrawn
        (5, "failed", 3),
    ):
        run(
            "INSERT INTO prompts (id, party, source_id, platform, user_id, author, text, thread,"
            " state, batch_id, created_at) VALUES (?, ?, ?, 'ws', 'u-alice', 'alice', ?, 't1',"
            " ?, ?, ?)",
            (prompt_id, PARTY, f"m-{prompt_id}", f"prompt {prompt_id}", state, batch_id, _at(9)),
        )
    run(
        "INSERT INTO outbox (platform, thread, batch_id, seq, text, ref, shown)"
        " VALUES ('ws', 't1', 1, 0, 'shown', 'msg-1', 'shown')"
    )
    run(
        "INSERT INTO outbox (platform, thread, batch_id, seq, text, ref, shown)"
        " VALUES ('ws', 't1', 2, 0, 'half shown', 'msg-2', 'half')"
    )
    if version >= 2:
        run(
            "INSERT INTO shell_runs (party, platform, user_id, name, command, started_at,"
            " exit_code, outcome, duration_s) VALUES (?, 'ws', 'u-bob', 'bob', 'make test', ?,"
            " 0, 'exited', 1.5)",
            (PARTY, _at(20)),
        )
        run(
            "INSERT INTO shell_runs (party, platform, user_id, name, command, started_at)"
            " VALUES (?, 'ws', 'u-bob', 'bob', 'sleep 99', ?)",
            (PARTY, _at(21)),
        )
    if version >= 3:
        run(
            "INSERT INTO invites (party, token_hash, role, created_at, expires_at, uses_left,"
            " standing) VALUES (?, ?, 'approver', ?, ?, 1, 0)",
            (PARTY, hash_token(APPROVER_TOKEN), _at(3), "2999-01-01T00:00:00.000+00:00"),
        )
        run(
            "INSERT INTO participants (party, platform, user_id, name, role, joined_at)"
            " VALUES (?, 'ws', 'u-carol', 'carol', 'approver', ?)",
            (PARTY, _at(4)),
        )
        deciders = json.dumps(
            [{"platform": "ws", "user_id": "u-carol", "name": "carol", "decision": "allow"}]
        )
        run(
            "INSERT INTO approvals (party, batch_id, tool, input_json, rule, needed,"
            " requested_at, decided_at, outcome, deciders) VALUES (?, 1, 'Bash', '{}',"
            " 'Bash(ls)', 1, ?, ?, 'allowed', ?)",
            (PARTY, _at(11), _at(11.5), deciders),
        )
        run(
            "INSERT INTO approvals (party, batch_id, tool, input_json, rule, needed,"
            " requested_at) VALUES (?, 2, 'Edit', '{}', 'Edit', 1, ?)",
            (PARTY, _at(15)),
        )
        run(
            "INSERT INTO approval_rules (party, rule, created_by, created_at)"
            " VALUES (?, 'Bash(make test)', 'carol', ?)",
            (PARTY, _at(16)),
        )
    if version >= 4:
        run(
            "INSERT INTO turn_costs (party, batch_id, attempt, at, cost_usd, input_tokens,"
            " output_tokens) VALUES (?, 1, 1, ?, 0.30, 1000, 200)",
            (PARTY, _at(12)),
        )
        for user, name, share in (("u-alice", "alice", 0.20), ("u-bob", "bob", 0.10)):
            run(
                "INSERT INTO cost_shares (turn_id, party, platform, user_id, name, at, cost_usd)"
                " VALUES (1, ?, 'ws', ?, ?, ?, ?)",
                (PARTY, user, name, _at(12), share),
            )
    if version >= 5:
        run("UPDATE prompts SET plan = 1 WHERE id = 3")
        run(
            "INSERT INTO prompt_images (prompt_id, name, media_type, data)"
            " VALUES (2, 'shot.png', 'image/png', ?)",
            (b"\x89PNG\r\n\x1a\n-bytes",),
        )
        run(
            "INSERT INTO questions (party, batch_id, kind, text, options_json, asked_at,"
            " outcome, answer, answered_by, closed_at) VALUES (?, 1, 'choice', 'Which?',"
            " '[\"a\", \"b\"]', ?, 'answered', 'b', ?, ?)",
            (PARTY, _at(11), json.dumps({"platform": "ws", "user_id": "u-alice"}), _at(11.2)),
        )
        run(
            "INSERT INTO questions (party, batch_id, kind, text, options_json, asked_at)"
            " VALUES (?, 2, 'plan', 'The plan', '[]', ?)",
            (PARTY, _at(15)),
        )


def _tables(conn: sqlite3.Connection) -> list[str]:
    rows = conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
    )
    return sorted(str(r[0]) for r in rows)


def _snapshot(path: Path) -> dict[str, tuple[list[str], list[tuple[object, ...]]]]:
    """Every table's columns and rows, in row order."""
    conn = sqlite3.connect(path)
    try:
        found = {}
        for table in _tables(conn):
            columns = [str(r[1]) for r in conn.execute(f"PRAGMA table_info({table})")]
            rows = conn.execute(f"SELECT {', '.join(columns)} FROM {table} ORDER BY rowid")
            found[table] = (columns, rows.fetchall())
        return found
    finally:
        conn.close()


def _rows(path: Path, table: str, columns: list[str]) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(f"SELECT {', '.join(columns)} FROM {table} ORDER BY rowid").fetchall()
    finally:
        conn.close()


def _pragma(path: Path, pragma: str) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(f"PRAGMA {pragma}").fetchall()
    finally:
        conn.close()


def test_every_migration_is_covered() -> None:
    assert sorted(_migrations()) == list(range(1, LATEST + 1)), "migrations are numbered 1..N"
    assert OLDER, "there is an older version to upgrade from"


@pytest.mark.parametrize("version", OLDER, ids=lambda v: f"from-{v:04d}")
async def test_a_database_at_an_older_version_upgrades_with_its_data_intact(
    tmp_path: Path, version: int
) -> None:
    path = tmp_path / "concordia.db"
    _build(path, version)
    before = _snapshot(path)
    assert _pragma(path, "user_version") == [(version,)]

    async with Store(path) as store:
        # Every row of every table is still there, column for column.
        for table, (columns, rows) in before.items():
            assert _rows(path, table, columns) == rows, f"{table} changed in the upgrade"
        assert _pragma(path, "user_version") == [(LATEST,)]
        assert _pragma(path, "foreign_key_check") == []

        # ... and reads back through the store as the bot of today uses it.
        assert await store.session_id(PARTY) == "s-1"
        assert await store.check_invite(PARTY, TOKENS["prompter"]) is Role.PROMPTER
        assert await store.check_invite(PARTY, TOKENS["host"]) is Role.HOST
        assert await store.check_invite(PARTY, TOKENS["revoked"]) is None
        assert await store.has_invite(PARTY, Role.PROMPTER)
        members = await store.participants(PARTY)
        assert Participant("ws", "u-alice", "alice", Role.PROMPTER) in members
        assert all(m.user_id != "u-bob" for m in members), "bob left"

        (resumed,) = await store.open_batches(PARTY)
        assert resumed.was_sent
        assert resumed.batch.batch_id == 2
        assert resumed.batch.prompt == "merged 2"
        assert [s.prompt_id for s in resumed.batch.sources] == [2]
        assert resumed.batch.groups[0].instruction == "do one"
        (pending,) = await store.pending_prompts(PARTY)
        assert (pending.prompt_id, pending.text) == (3, "prompt 3")
        assert pending.plan is (version >= 5)
        assert await store.prompt_state(1) is PromptState.DONE
        assert await store.prompt_state(4) is PromptState.FAILED
        assert await store.last_finished_at(PARTY) == _at(14)
        (unsynced,) = await store.outbox_unsynced("ws")
        assert (unsynced.batch_id, unsynced.text, unsynced.ref) == (2, "half shown", "msg-2")

        if version >= 2:
            runs = await store.recent_shell_runs(PARTY, 5)
            assert [(r.command, r.outcome) for r in runs] == [
                ("sleep 99", None),
                ("make test", ShellOutcome.EXITED),
            ]
        if version >= 3:
            outcomes = await store.approval_outcomes(PARTY)
            assert [(tool, outcome) for _, tool, outcome, _ in outcomes] == [
                ("Bash", ApprovalOutcome.ALLOWED),
                ("Edit", None),
            ]
            assert json.loads(outcomes[0][3])[0]["name"] == "carol"
            assert await store.approval_rules(PARTY) == ["Bash(make test)"]
            assert await store.check_invite(PARTY, APPROVER_TOKEN) is Role.APPROVER
            assert await store.check_invite(PARTY, APPROVER_TOKEN) is None, "single use"
        if version >= 4:
            assert await store.party_spend_since(PARTY, T0) == pytest.approx(0.30)
            shares = await store.spend_since(PARTY, T0)
            assert [(s.name, s.cost_usd) for s in shares] == [
                ("alice", pytest.approx(0.20)),
                ("bob", pytest.approx(0.10)),
            ]
        if version >= 5:
            ((author, image),) = await store.batch_images(2)
            assert (author, image.name, image.data) == (
                "alice",
                "shot.png",
                b"\x89PNG\r\n\x1a\n-bytes",
            )
            assert await store.question_outcome(1) == (QuestionOutcome.ANSWERED, "b")
            assert await store.question_outcome(2) == (None, None)

        # The upgraded store goes on working: the open batch finishes, a new prompt comes.
        await store.finish_batch(2, TurnStatus.SUCCESS)
        assert await store.prompt_state(2) is PromptState.DONE
        accepted = await store.add_prompt(
            PARTY, Prompt("m-new", Author("ws", "u-alice", "alice"), "next", "t1"), "next"
        )
        assert accepted.prompt_id > 5
        assert not accepted.is_duplicate
    assert _rows(path, "batches", ["state"])[1] == (BatchState.DONE.value,)
