"""bot.store: migrations, file safety, the prompt writer, prompt states, invites and outbox."""

from __future__ import annotations

import asyncio
import importlib.resources
import os
import sqlite3
import stat
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from bot.model import (
    Accepted,
    ApprovalOutcome,
    Author,
    Batch,
    Decider,
    Decision,
    MergeGroup,
    Prompt,
    PromptState,
    Role,
    ShellOutcome,
    SourcePrompt,
    TurnStatus,
)
from bot.store import Participant, StaleSources, Store, StoreError, hash_token

PARTY = "p1"
ALICE = Author("ws", "u-alice", "alice")
BOB = Author("ws", "u-bob", "bob")


def _latest_migration() -> int:
    names = [f.name for f in importlib.resources.files("migrations").iterdir()]
    return max(int(n[:4]) for n in names if n.endswith(".sql"))


def _prompt(source_id: str, author: Author = ALICE, text: str = "do the thing") -> Prompt:
    return Prompt(source_id=source_id, author=author, text=text, thread="t1")


def _groups(sources: list[SourcePrompt]) -> list[MergeGroup]:
    return [MergeGroup((s.prompt_id,), (s.author,), s.text) for s in sources]


def _query(path: Path, sql: str, *args: object) -> list[tuple[object, ...]]:
    """Read the file through a second connection: what another process would see."""
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "x.db"


@pytest.fixture
async def store(db_path: Path) -> AsyncIterator[Store]:
    async with Store(db_path) as store:
        await store.ensure_party(PARTY)
        yield store


async def _batch_all(store: Store, prompt: str = "merged") -> tuple[list[SourcePrompt], Batch]:
    sources = await store.pending_prompts(PARTY)
    batch = await store.create_batch(PARTY, prompt, _groups(sources), sources)
    return sources, batch


# --------------------------------------------------------------------------- schema and file


async def test_migrations_apply_and_set_user_version(db_path: Path) -> None:
    async with Store(db_path) as store:
        async with store.db.execute("PRAGMA user_version") as cur:
            row = await cur.fetchone()
        assert row is not None
        assert row[0] == _latest_migration()

    tables = {r[0] for r in _query(db_path, "SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"parties", "invites", "participants", "batches", "prompts", "outbox"} <= tables
    assert _query(db_path, "PRAGMA user_version") == [(_latest_migration(),)]


async def test_reopening_does_not_reapply_migrations(db_path: Path) -> None:
    async with Store(db_path) as store:
        await store.ensure_party(PARTY)
        await store.add_prompt(PARTY, _prompt("m1"), "kept across restarts")

    # A re-applied 0001 would fail on CREATE TABLE or wipe the row.
    async with Store(db_path) as store:
        pending = await store.pending_prompts(PARTY)
        assert [p.text for p in pending] == ["kept across restarts"]
    assert _query(db_path, "PRAGMA user_version") == [(_latest_migration(),)]


async def test_newer_schema_is_refused(db_path: Path) -> None:
    db_path.parent.mkdir(parents=True)
    conn = sqlite3.connect(db_path)
    conn.execute(f"PRAGMA user_version = {_latest_migration() + 1}")
    conn.close()
    threads_before = set(threading.enumerate())
    store = Store(db_path)
    try:
        with pytest.raises(StoreError, match="newer than this concordia knows"):
            async with store:
                pass
        # A failed open must not keep its connection: aiosqlite's worker thread is not a
        # daemon, so a leaked one keeps `concordia run` from exiting after the error.
        with pytest.raises(RuntimeError, match="not open"):
            _ = store.db
        leftover = set(threading.enumerate()) - threads_before
        for thread in leftover:
            await asyncio.to_thread(thread.join, 5)
        assert not [t.name for t in leftover if t.is_alive()]
    finally:
        await store.close()  # so that this test process can still exit if the store leaked
    # Nothing was applied to the newer file.
    assert _query(db_path, "SELECT name FROM sqlite_master WHERE type='table'") == []


async def test_file_is_private_and_in_wal_mode(store: Store, db_path: Path) -> None:
    assert stat.S_IMODE(os.stat(db_path).st_mode) == 0o600
    async with store.db.execute("PRAGMA journal_mode") as cur:
        row = await cur.fetchone()
    assert row is not None
    assert row[0] == "wal"
    await store.add_prompt(PARTY, _prompt("m1"), "x")
    wal = db_path.with_name(db_path.name + "-wal")
    assert wal.exists()
    assert stat.S_IMODE(os.stat(wal).st_mode) == 0o600


async def test_existing_file_keeps_working(tmp_path: Path) -> None:
    path = tmp_path / "x.db"
    async with Store(path) as store:
        await store.ensure_party(PARTY)
    async with Store(path) as store:
        await store.ensure_party(PARTY)  # idempotent
        assert await store.session_id(PARTY) is None
        await store.set_session_id(PARTY, "sess-1")
        assert await store.session_id(PARTY) == "sess-1"


async def test_store_is_unusable_when_not_open(db_path: Path) -> None:
    store = Store(db_path)
    with pytest.raises(RuntimeError, match="not open"):
        await store.pending_prompts(PARTY)
    await store.close()  # idempotent even before opening


# --------------------------------------------------------------------------- accepted prompts


async def test_add_prompt_returns_id_position_and_duplicate_flag(
    store: Store, db_path: Path
) -> None:
    first = await store.add_prompt(PARTY, _prompt("m1"), "one")
    second = await store.add_prompt(PARTY, _prompt("m2", BOB), "two")
    again = await store.add_prompt(PARTY, _prompt("m1"), "one, redelivered")

    assert (first.position, first.is_duplicate) == (1, False)
    assert (second.position, second.is_duplicate) == (2, False)
    assert second.prompt_id != first.prompt_id
    assert again == Accepted(first.prompt_id, 0, True)
    rows = _query(db_path, "SELECT id, text FROM prompts WHERE source_id = 'm1'")
    assert rows == [(first.prompt_id, "one")]
    assert _query(db_path, "SELECT COUNT(*) FROM prompts") == [(2,)]


async def test_same_source_id_in_one_group_is_written_once(store: Store, db_path: Path) -> None:
    results = await asyncio.gather(
        store.add_prompt(PARTY, _prompt("same"), "a"),
        store.add_prompt(PARTY, _prompt("same"), "a"),
    )
    assert results[0].prompt_id == results[1].prompt_id
    assert sorted(r.is_duplicate for r in results) == [False, True]
    assert _query(db_path, "SELECT COUNT(*) FROM prompts") == [(1,)]


async def test_source_ids_are_per_party(store: Store) -> None:
    await store.ensure_party("p2")
    a = await store.add_prompt(PARTY, _prompt("m1"), "x")
    b = await store.add_prompt("p2", _prompt("m1"), "x")
    assert a.prompt_id != b.prompt_id
    assert ((a.position, a.is_duplicate), (b.position, b.is_duplicate)) == ((1, False), (1, False))


async def test_burst_of_prompts_is_group_committed(
    store: Store, db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    group_sizes: list[int] = []
    insert_group = Store._insert_group

    async def recording(self: Store, group: list[Any]) -> list[Accepted]:
        group_sizes.append(len(group))
        return await insert_group(self, group)

    monkeypatch.setattr(Store, "_insert_group", recording)
    await store.add_prompt(PARTY, _prompt("before-1"), "x")
    await store.add_prompt(PARTY, _prompt("before-2"), "x")

    results = await asyncio.gather(
        *(
            store.add_prompt(PARTY, _prompt(f"m{i}", BOB if i % 2 else ALICE), f"p{i}")
            for i in range(500)
        )
    )

    ids = [r.prompt_id for r in results]
    assert len(set(ids)) == 500
    assert sorted(r.position for r in results) == list(range(3, 503))
    assert not any(r.is_duplicate for r in results)
    # Within a commit the positions follow the order the prompts were accepted in.
    assert [r.position for r in results] == sorted(r.position for r in results)
    assert _query(db_path, "SELECT COUNT(*) FROM prompts") == [(502,)]
    assert group_sizes[:2] == [1, 1]
    assert len(group_sizes) < 502, "the burst was written one commit per prompt"
    assert max(group_sizes) > 1


async def test_redelivered_burst_comes_back_as_duplicates(store: Store, db_path: Path) -> None:
    prompts = [_prompt(f"m{i}") for i in range(1200)]
    first = await asyncio.gather(*(store.add_prompt(PARTY, p, "x") for p in prompts))
    again = await asyncio.gather(*(store.add_prompt(PARTY, p, "x") for p in prompts))

    assert sorted(r.position for r in first) == list(range(1, 1201))
    assert again == [Accepted(r.prompt_id, 0, True) for r in first]
    assert _query(db_path, "SELECT COUNT(*) FROM prompts") == [(1200,)]


async def test_position_counts_only_pending_prompts(store: Store) -> None:
    await store.add_prompt(PARTY, _prompt("m1"), "x")
    await store.add_prompt(PARTY, _prompt("m2"), "x")
    await _batch_all(store)

    position = (await store.add_prompt(PARTY, _prompt("m3"), "x")).position
    assert position == 1


async def test_prompt_for_an_unknown_party_fails(store: Store) -> None:
    with pytest.raises(StoreError, match="could not store the prompt"):
        await store.add_prompt("no-such-party", _prompt("m1"), "x")
    # The writer survives and takes the next prompt.
    accepted = await store.add_prompt(PARTY, _prompt("m2"), "x")
    assert (accepted.position, accepted.is_duplicate) == (1, False)


# --------------------------------------------------------------------------- prompt states


async def test_batch_lifecycle_success(store: Store, db_path: Path) -> None:
    pid1 = (await store.add_prompt(PARTY, _prompt("m1"), "one")).prompt_id
    pid2 = (await store.add_prompt(PARTY, _prompt("m2", BOB), "two")).prompt_id

    sources, batch = await _batch_all(store)
    assert batch.attempt == 1
    assert [s.prompt_id for s in batch.sources] == [pid1, pid2]
    assert await store.prompt_state(pid1) is PromptState.BATCHED
    assert await store.pending_prompts(PARTY) == []
    [open_batch] = await store.open_batches(PARTY)
    assert open_batch.was_sent is False
    assert open_batch.batch.batch_id == batch.batch_id
    assert open_batch.batch.prompt == "merged"
    assert open_batch.batch.groups == tuple(_groups(sources))
    assert open_batch.batch.sources == tuple(sources)

    sent = await store.mark_sent(batch)
    assert sent.attempt == 1
    assert await store.prompt_state(pid2) is PromptState.SENT
    [open_batch] = await store.open_batches(PARTY)
    assert open_batch.was_sent is True
    assert open_batch.batch.attempt == 1

    resent = await store.mark_sent(sent)  # a re-run after Claude died mid-turn
    assert resent.attempt == 2
    assert resent.is_rerun

    await store.finish_batch(batch.batch_id, TurnStatus.SUCCESS, "")
    assert await store.prompt_state(pid1) is PromptState.DONE
    assert await store.prompt_state(pid2) is PromptState.DONE
    assert await store.open_batches(PARTY) == []
    assert _query(db_path, "SELECT state, status, attempts FROM batches") == [
        ("done", "success", 2)
    ]
    assert await store.last_finished_at(PARTY) is not None


@pytest.mark.parametrize(
    ("status", "prompt_state", "batch_state"),
    [
        (TurnStatus.INTERRUPTED, PromptState.DONE, "done"),
        (TurnStatus.ERROR, PromptState.FAILED, "failed"),
    ],
)
async def test_finish_batch_outcomes(
    store: Store,
    db_path: Path,
    status: TurnStatus,
    prompt_state: PromptState,
    batch_state: str,
) -> None:
    pid = (await store.add_prompt(PARTY, _prompt("m1"), "x")).prompt_id
    _, batch = await _batch_all(store)
    await store.mark_sent(batch)

    await store.finish_batch(batch.batch_id, status, "why it ended")

    assert await store.prompt_state(pid) is prompt_state
    assert _query(db_path, "SELECT state, status, detail FROM batches") == [
        (batch_state, status.value, "why it ended")
    ]
    assert await store.open_batches(PARTY) == []


async def test_mark_sent_after_finish_is_refused(store: Store) -> None:
    pid = (await store.add_prompt(PARTY, _prompt("m1"), "x")).prompt_id
    _, batch = await _batch_all(store)
    batch = await store.mark_sent(batch)
    await store.finish_batch(batch.batch_id, TurnStatus.SUCCESS)

    with pytest.raises(StoreError, match="already finished"):
        await store.mark_sent(batch)
    assert await store.prompt_state(pid) is PromptState.DONE


async def test_finishing_twice_is_refused_and_changes_nothing(store: Store, db_path: Path) -> None:
    pid = (await store.add_prompt(PARTY, _prompt("m1"), "x")).prompt_id
    _, batch = await _batch_all(store)
    await store.mark_sent(batch)
    await store.finish_batch(batch.batch_id, TurnStatus.SUCCESS, "first")

    with pytest.raises(StoreError, match="cannot go from done to failed"):
        await store.finish_batch(batch.batch_id, TurnStatus.ERROR, "second")
    # The whole transaction rolled back: the batch row still shows the first ending.
    assert _query(db_path, "SELECT state, status, detail FROM batches") == [
        ("done", "success", "first")
    ]
    assert await store.prompt_state(pid) is PromptState.DONE


async def test_batching_an_already_batched_prompt_is_refused(store: Store, db_path: Path) -> None:
    pid = (await store.add_prompt(PARTY, _prompt("m1"), "x")).prompt_id
    sources, _ = await _batch_all(store)

    with pytest.raises(StaleSources, match="no longer pending"):
        await store.create_batch(PARTY, "again", _groups(sources), sources)
    assert _query(db_path, "SELECT COUNT(*) FROM batches") == [(1,)]
    assert await store.prompt_state(pid) is PromptState.BATCHED


async def test_create_batch_refuses_sources_withdrawn_while_merging(
    store: Store, db_path: Path
) -> None:
    # The merged text would still carry the withdrawn prompt: nothing is written and the
    # caller merges again from what is still pending.
    kept = (await store.add_prompt(PARTY, _prompt("m1"), "keep me")).prompt_id
    gone = (await store.add_prompt(PARTY, _prompt("m2", BOB), "withdraw me")).prompt_id
    sources = await store.pending_prompts(PARTY)
    assert await store.withdraw_latest(PARTY, BOB.platform, BOB.user_id) == gone

    with pytest.raises(StaleSources):
        await store.create_batch(PARTY, "merged", _groups(sources), sources)

    assert _query(db_path, "SELECT COUNT(*) FROM batches") == [(0,)]
    assert await store.prompt_state(kept) is PromptState.PENDING
    assert await store.prompt_state(gone) is PromptState.FAILED
    again = await store.pending_prompts(PARTY)
    batch = await store.create_batch(PARTY, "merged", _groups(again), again)
    assert [s.prompt_id for s in batch.sources] == [kept]


async def test_create_batch_with_every_source_withdrawn_is_refused(
    store: Store, db_path: Path
) -> None:
    gone = (await store.add_prompt(PARTY, _prompt("m1"), "x")).prompt_id
    sources = await store.pending_prompts(PARTY)
    assert await store.withdraw_latest(PARTY, ALICE.platform, ALICE.user_id) == gone

    with pytest.raises(StoreError):
        await store.create_batch(PARTY, "merged", _groups(sources), sources)
    assert _query(db_path, "SELECT COUNT(*) FROM batches") == [(0,)]
    assert await store.prompt_state(gone) is PromptState.FAILED


async def test_create_batch_with_no_sources_is_refused(store: Store, db_path: Path) -> None:
    with pytest.raises(StoreError):
        await store.create_batch(PARTY, "merged", [], [])
    assert _query(db_path, "SELECT COUNT(*) FROM batches") == [(0,)]


async def test_batch_states_are_stored_as_their_text(store: Store, db_path: Path) -> None:
    await store.add_prompt(PARTY, _prompt("m1"), "x")
    _, batch = await _batch_all(store)
    assert _query(db_path, "SELECT state FROM batches") == [("batched",)]
    await store.mark_sent(batch)
    assert _query(db_path, "SELECT state FROM batches") == [("sent",)]


async def test_a_batch_left_sent_by_an_older_bot_is_recovered(db_path: Path) -> None:
    async with Store(db_path) as store:
        await store.ensure_party(PARTY)
        pid = (await store.add_prompt(PARTY, _prompt("m1"), "x")).prompt_id
    # What a bot that died mid-turn left behind, written as plain SQL text.
    conn = sqlite3.connect(db_path)
    with conn:
        conn.execute(
            "INSERT INTO batches (id, party, prompt, groups_json, state, attempts, created_at)"
            " VALUES (7, ?, 'merged', '[]', 'sent', 1, '2026-01-01T00:00:00+00:00')",
            (PARTY,),
        )
        conn.execute("UPDATE prompts SET state = 'sent', batch_id = 7 WHERE id = ?", (pid,))
    conn.close()
    async with Store(db_path) as store:
        [open_batch] = await store.open_batches(PARTY)
        assert (open_batch.batch.batch_id, open_batch.was_sent) == (7, True)
        again = await store.mark_sent(open_batch.batch)
        assert again.attempt == 2
        await store.finish_batch(7, TurnStatus.ERROR, "gave up")
    assert _query(db_path, "SELECT state FROM batches") == [("failed",)]


async def test_unknown_prompt_state(store: Store) -> None:
    with pytest.raises(StoreError, match="no prompt 999"):
        await store.prompt_state(999)


# --------------------------------------------------------------------------- withdrawing


async def test_withdraw_latest_only_touches_the_authors_pending_prompts(store: Store) -> None:
    a1 = (await store.add_prompt(PARTY, _prompt("m1", ALICE), "a1")).prompt_id
    a2 = (await store.add_prompt(PARTY, _prompt("m2", ALICE), "a2")).prompt_id
    b1 = (await store.add_prompt(PARTY, _prompt("m3", BOB), "b1")).prompt_id

    assert await store.withdraw_latest(PARTY, "other-platform", ALICE.user_id) is None
    assert await store.withdraw_latest("p2", ALICE.platform, ALICE.user_id) is None
    assert [p.prompt_id for p in await store.pending_prompts(PARTY)] == [a1, a2, b1]

    assert await store.withdraw_latest(PARTY, ALICE.platform, ALICE.user_id) == a2
    assert await store.withdraw_latest(PARTY, ALICE.platform, ALICE.user_id) == a1
    assert await store.withdraw_latest(PARTY, ALICE.platform, ALICE.user_id) is None
    assert await store.prompt_state(a2) is PromptState.FAILED
    assert await store.prompt_state(b1) is PromptState.PENDING
    assert [p.prompt_id for p in await store.pending_prompts(PARTY)] == [b1]


async def test_withdraw_latest_does_not_touch_a_batched_prompt(store: Store) -> None:
    pid = (await store.add_prompt(PARTY, _prompt("m1"), "a")).prompt_id
    await _batch_all(store)
    assert await store.withdraw_latest(PARTY, ALICE.platform, ALICE.user_id) is None
    assert await store.prompt_state(pid) is PromptState.BATCHED


async def test_positions_stay_right_after_withdraws_batches_and_rollbacks(store: Store) -> None:
    # Positions come from a pending count the store keeps in memory between writes.
    for i in range(3):
        await store.add_prompt(PARTY, _prompt(f"a{i}"), "x")
    await store.withdraw_latest(PARTY, ALICE.platform, ALICE.user_id)
    assert (await store.add_prompt(PARTY, _prompt("b0", BOB), "x")).position == 3

    sources, _ = await _batch_all(store)
    assert (await store.add_prompt(PARTY, _prompt("b1", BOB), "x")).position == 1

    with pytest.raises(StoreError):  # rolled back: nothing moved
        await store.create_batch(PARTY, "again", _groups(sources), sources)
    assert (await store.add_prompt(PARTY, _prompt("b2", BOB), "x")).position == 2
    assert len(await store.pending_prompts(PARTY)) == 2


# --------------------------------------------------------------------------- invites


async def test_invite_check_and_rotation(store: Store) -> None:
    await store.replace_invite(PARTY, Role.PROMPTER, "prompter-token-1")
    await store.replace_invite(PARTY, Role.HOST, "host-token-1")
    assert await store.has_invite(PARTY, Role.PROMPTER)

    assert await store.check_invite(PARTY, "prompter-token-1") is Role.PROMPTER
    assert await store.check_invite(PARTY, "host-token-1") is Role.HOST
    assert await store.check_invite(PARTY, "wrong") is None
    assert await store.check_invite("p2", "prompter-token-1") is None

    await store.replace_invite(PARTY, Role.PROMPTER, "prompter-token-2")

    assert await store.check_invite(PARTY, "prompter-token-1") is None
    assert await store.check_invite(PARTY, "prompter-token-2") is Role.PROMPTER
    assert await store.check_invite(PARTY, "host-token-1") is Role.HOST


async def test_no_invite_before_one_is_made(store: Store) -> None:
    assert not await store.has_invite(PARTY, Role.HOST)
    assert await store.check_invite(PARTY, "") is None


async def test_token_clear_text_never_reaches_the_file(store: Store, db_path: Path) -> None:
    token = "tok-" + "Zq9" * 20
    await store.replace_invite(PARTY, Role.PROMPTER, token)

    def file_bytes() -> bytes:
        files = [db_path, db_path.with_name(db_path.name + "-wal")]
        return b"".join(f.read_bytes() for f in files if f.exists())

    live = file_bytes()
    assert hash_token(token).encode() in live  # we are reading the bytes that hold the invite
    assert token.encode() not in live
    await store.close()
    closed = file_bytes()
    assert hash_token(token).encode() in closed
    assert token.encode() not in closed


# --------------------------------------------------------------------------- participants


async def test_join_and_leave(store: Store) -> None:
    alice = Participant(ALICE.platform, ALICE.user_id, "alice", Role.HOST)
    await store.join(PARTY, alice)
    await store.join(PARTY, Participant(BOB.platform, BOB.user_id, "bob", Role.PROMPTER))
    await store.join(PARTY, Participant(ALICE.platform, ALICE.user_id, "alice2", Role.HOST))
    assert sorted(p.name for p in await store.participants(PARTY)) == ["alice2", "bob"]

    await store.leave(PARTY, BOB.platform, BOB.user_id)
    assert [p.name for p in await store.participants(PARTY)] == ["alice2"]


# --------------------------------------------------------------------------- approvals and shell


async def test_an_approval_keeps_its_outcome_and_deciders_as_text(
    store: Store, db_path: Path
) -> None:
    approval = await store.open_approval(PARTY, None, "Bash", '{"command":"ls"}', "Bash(ls)", 2)
    deciders = [
        Decider("ws", "u-alice", "alice", Decision.ALLOW),
        Decider("ws", "u-bob", "bob", Decision.DENY),
    ]
    await store.close_approval(approval, ApprovalOutcome.DENIED, deciders)

    [(outcome, stored)] = _query(db_path, "SELECT outcome, deciders FROM approvals")
    assert outcome == "denied"
    assert stored == (
        '[{"platform": "ws", "user_id": "u-alice", "name": "alice", "decision": "allow"}, '
        '{"platform": "ws", "user_id": "u-bob", "name": "bob", "decision": "deny"}]'
    )
    [(_, tool, read, _)] = await store.approval_outcomes(PARTY)
    assert (tool, read) == ("Bash", ApprovalOutcome.DENIED)
    assert read is ApprovalOutcome.DENIED


async def test_approvals_left_waiting_are_abandoned(store: Store) -> None:
    waiting = await store.open_approval(PARTY, None, "Write", "{}", "Write", 1)
    done = await store.open_approval(PARTY, None, "Bash", "{}", "Bash", 1)
    await store.close_approval(done, ApprovalOutcome.ALWAYS_RULE, [])

    assert await store.abandon_open_approvals(PARTY) == 1
    outcomes = {i: o for i, _, o, _ in await store.approval_outcomes(PARTY)}
    assert outcomes == {waiting: "abandoned", done: "always_rule"}


async def test_shell_runs_are_recorded_with_their_outcome(store: Store, db_path: Path) -> None:
    first = await store.start_shell_run(PARTY, ALICE, "sleep 100")
    await store.finish_shell_run(first, ShellOutcome.TIMED_OUT, -15, 60.0)
    second = await store.start_shell_run(PARTY, BOB, "make test")

    newest, oldest = await store.recent_shell_runs(PARTY, 5)
    assert (newest.run_id, newest.outcome, newest.exit_code) == (second, None, None)
    assert (oldest.run_id, oldest.outcome, oldest.exit_code) == (first, "timed_out", -15)
    assert oldest.outcome is ShellOutcome.TIMED_OUT
    assert _query(db_path, "SELECT outcome FROM shell_runs ORDER BY id") == [
        ("timed_out",),
        (None,),
    ]


# --------------------------------------------------------------------------- outbox


async def test_outbox_upserts_by_key(store: Store, db_path: Path) -> None:
    first = await store.outbox_write("ws", "t1", 7, 0, "Hel")
    again = await store.outbox_write("ws", "t1", 7, 0, "Hello")
    other = await store.outbox_write("ws", "t1", 7, 1, "second message")

    assert again == first
    assert other != first
    assert _query(db_path, "SELECT COUNT(*) FROM outbox") == [(2,)]
    unsynced = await store.outbox_unsynced("ws")
    assert [(e.entry_id, e.seq, e.text, e.ref) for e in unsynced] == [
        (first, 0, "Hello", None),
        (other, 1, "second message", None),
    ]


async def test_outbox_synced_only_when_the_latest_text_is_confirmed(store: Store) -> None:
    entry = await store.outbox_write("ws", "t1", 7, 0, "Hel")
    await store.outbox_confirm(entry, "msg-1", "Hel")
    assert await store.outbox_unsynced("ws") == []

    await store.outbox_write("ws", "t1", 7, 0, "Hello")
    [stale] = await store.outbox_unsynced("ws")
    assert (stale.entry_id, stale.text, stale.ref) == (entry, "Hello", "msg-1")

    # A confirmation of an older text (an edit that raced a newer write) is not enough.
    await store.outbox_confirm(entry, "msg-1", "Hel")
    assert [e.entry_id for e in await store.outbox_unsynced("ws")] == [entry]

    await store.outbox_confirm(entry, "msg-1", "Hello")
    assert await store.outbox_unsynced("ws") == []


async def test_outbox_unsynced_is_per_platform_and_ordered(store: Store) -> None:
    await store.outbox_write("ws", "t1", 9, 0, "b9")
    await store.outbox_write("discord", "c1", 1, 0, "other platform")
    await store.outbox_write("ws", "t1", 3, 1, "b3s1")
    await store.outbox_write("ws", "t1", 3, 0, "b3s0")

    unsynced = await store.outbox_unsynced("ws")

    assert [(e.batch_id, e.seq, e.text) for e in unsynced] == [
        (3, 0, "b3s0"),
        (3, 1, "b3s1"),
        (9, 0, "b9"),
    ]
    assert {e.platform for e in unsynced} == {"ws"}
    assert [e.text for e in await store.outbox_unsynced("discord")] == ["other platform"]


async def test_a_write_cancelled_during_begin_leaves_the_store_usable(store: Store) -> None:
    """aiosqlite runs a statement even when its awaiter is cancelled: a cancelled BEGIN used
    to leave a transaction open behind the released lock, and every later write failed with
    "cannot start a transaction within a transaction"."""
    db = store.db
    real_execute = db.execute
    began = asyncio.Event()

    def spying_execute(sql: str, *args: object) -> object:
        if sql.startswith("BEGIN"):
            began.set()
        return real_execute(sql, *args)

    db.execute = spying_execute  # type: ignore[method-assign]
    try:
        write = asyncio.create_task(store.set_session_id(PARTY, "cancelled"))
        await asyncio.wait_for(began.wait(), 5)
        write.cancel()
        with pytest.raises(asyncio.CancelledError):
            await write
    finally:
        db.execute = real_execute  # type: ignore[method-assign]
    await store.set_session_id(PARTY, "after")
    assert await store.session_id(PARTY) == "after"
    prompt_id = (await store.add_prompt(PARTY, _prompt("after-cancel"), "still works")).prompt_id
    assert await store.prompt_state(prompt_id) is PromptState.PENDING
