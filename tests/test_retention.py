"""bot.retention and `Store.prune`: finished history older than store.keep_days goes, a little
at a time; what is open or recent stays; the audit trail stays unless keep_audit_days is set
(issue #16)."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import AsyncIterator, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

import bot.retention
import bot.store
from bot.agent import Usage
from bot.config import StoreSettings
from bot.model import (
    ApprovalOutcome,
    Author,
    Batch,
    CostShare,
    Image,
    MergeGroup,
    Prompt,
    QuestionKind,
    QuestionOutcome,
    ShellOutcome,
    TurnStatus,
)
from bot.retention import COST_KEEP_DAYS, Retention
from bot.store import Pruned, Store
from tests.conftest import make_settings
from tests.rigs import open_rig
from tests.waits import until

PARTY = "p1"
ALICE = Author("ws", "u-alice", "alice")
PNG = Image("shot.png", "image/png", b"\x89PNG\r\n\x1a\n-bytes")


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "concordia.db"


@pytest.fixture
async def store(db_path: Path) -> AsyncIterator[Store]:
    async with Store(db_path) as store:
        await store.ensure_party(PARTY)
        yield store


def _keep(days: float = 30.0, audit_days: float = 0.0) -> StoreSettings:
    return StoreSettings(keep_days=days, keep_audit_days=audit_days)


def _ago(days: float) -> str:
    return (datetime.now(UTC) - timedelta(days=days)).isoformat(timespec="milliseconds")


def _age(path: Path, table: str, ids: Sequence[int], days: float, *columns: str) -> None:
    """Move ``columns`` of rows ``ids`` back ``days``, as if they were written then."""
    conn = sqlite3.connect(path)
    try:
        sets = ", ".join(f"{c} = ?" for c in columns)
        marks = ",".join("?" * len(ids))
        with conn:
            conn.execute(
                f"UPDATE {table} SET {sets} WHERE id IN ({marks})",
                (*[_ago(days)] * len(columns), *ids),
            )
    finally:
        conn.close()


def _ids(path: Path, table: str) -> list[int]:
    conn = sqlite3.connect(path)
    try:
        return [int(r[0]) for r in conn.execute(f"SELECT rowid FROM {table} ORDER BY rowid")]
    finally:
        conn.close()


def _count(path: Path, table: str) -> int:
    return len(_ids(path, table))


async def _prompts(
    store: Store, *source_ids: str, images: tuple[Image, ...] = (), party: str = PARTY
) -> list[int]:
    ids = []
    for source_id in source_ids:
        prompt = Prompt(source_id, ALICE, f"text {source_id}", "t1", images)
        ids.append((await store.add_prompt(party, prompt, prompt.text)).prompt_id)
    return ids


async def _batch(
    store: Store, *source_ids: str, images: tuple[Image, ...] = (), party: str = PARTY
) -> Batch:
    """A batch of new prompts, sent to the agent (not finished)."""
    ids = await _prompts(store, *source_ids, images=images, party=party)
    sources = [s for s in await store.pending_prompts(party) if s.prompt_id in ids]
    groups = [MergeGroup((s.prompt_id,), (s.author,), s.text) for s in sources]
    batch = await store.create_batch(party, "merged", groups, sources)
    return await store.mark_sent(batch)


async def _finished(
    store: Store,
    *source_ids: str,
    status: TurnStatus = TurnStatus.SUCCESS,
    images: tuple[Image, ...] = (),
    party: str = PARTY,
) -> Batch:
    batch = await _batch(store, *source_ids, images=images, party=party)
    await store.finish_batch(batch.batch_id, status)
    return batch


async def _shown(store: Store, batch: Batch, seq: int, *, synced: bool = True) -> int:
    entry = await store.outbox_write("ws", "t1", batch.batch_id, seq, f"text {seq}")
    if synced:
        await store.outbox_confirm(entry, f"msg-{batch.batch_id}-{seq}", f"text {seq}")
    return entry


def _age_batch(path: Path, batch: Batch, days: float) -> None:
    _age(path, "batches", [batch.batch_id], days, "created_at", "finished_at")
    _age(path, "prompts", [s.prompt_id for s in batch.sources], days, "created_at")


# --------------------------------------------------------------------------- finished history


async def test_old_finished_history_goes_and_what_is_open_or_recent_stays(
    store: Store, db_path: Path
) -> None:
    old_done = await _finished(store, "a1", "a2", images=(PNG,))
    done_outbox = [await _shown(store, old_done, seq) for seq in range(3)]
    old_failed = await _finished(store, "b1", status=TurnStatus.ERROR)
    failed_shown = await _shown(store, old_failed, 0)
    failed_unsynced = await _shown(store, old_failed, 1, synced=False)
    old_open = await _batch(store, "c1", images=(PNG,))  # sent, never finished (a crash)
    (old_withdrawn,) = await _prompts(store, "d1")
    assert await store.withdraw_latest(PARTY, "ws", "u-alice") == old_withdrawn
    (old_pending,) = await _prompts(store, "e1")
    recent = await _finished(store, "f1")
    recent_shown = await _shown(store, recent, 0)
    for batch in (old_done, old_failed, old_open):
        _age_batch(db_path, batch, 40)
    _age(db_path, "prompts", [old_withdrawn, old_pending], 40, "created_at")

    pruned = await Retention(store, _keep(30)).prune()

    old_done_ids = [s.prompt_id for s in old_done.sources]
    assert pruned == Pruned(prompts=4, images=2, batches=1, outbox=4)
    assert _ids(db_path, "prompts") == [
        old_open.sources[0].prompt_id,
        old_pending,
        recent.sources[0].prompt_id,
    ]
    assert _count(db_path, "prompt_images") == 1, "the open batch's image stays"
    # The failed batch keeps its row while an outbox row of it is not shown yet.
    assert _ids(db_path, "batches") == [old_failed.batch_id, old_open.batch_id, recent.batch_id]
    assert _ids(db_path, "outbox") == [failed_unsynced, recent_shown]
    assert failed_shown not in _ids(db_path, "outbox")
    assert not set(done_outbox) & set(_ids(db_path, "outbox"))
    assert not set(old_done_ids) & set(_ids(db_path, "prompts"))

    # What the bot reads after a restart is all still there.
    (resumed,) = await store.open_batches(PARTY)
    assert resumed.batch.batch_id == old_open.batch_id
    assert [name for name, _ in await store.batch_images(old_open.batch_id)] == ["alice"]
    assert [s.prompt_id for s in await store.pending_prompts(PARTY)] == [old_pending]
    (unsynced,) = await store.outbox_unsynced("ws")
    assert unsynced.entry_id == failed_unsynced

    # Once it is shown, the failed batch's last row and the batch itself go too.
    await store.outbox_confirm(failed_unsynced, "msg-late", "text 1")
    assert await Retention(store, _keep(30)).prune() == Pruned(batches=1, outbox=1)
    assert _ids(db_path, "batches") == [old_open.batch_id, recent.batch_id]


async def test_nothing_younger_than_keep_days_goes(store: Store, db_path: Path) -> None:
    batches = [await _finished(store, f"m{i}") for i in range(3)]
    for batch in batches:
        await _shown(store, batch, 0)
        _age_batch(db_path, batch, 29)

    assert await Retention(store, _keep(30)).prune() == Pruned()
    assert len(_ids(db_path, "batches")) == 3
    assert await Retention(store, _keep(28)).prune() == Pruned(prompts=2, batches=2, outbox=2)


async def test_keep_days_zero_keeps_everything(store: Store, db_path: Path) -> None:
    for i in range(3):
        _age_batch(db_path, await _finished(store, f"m{i}"), 4000)
    retention = Retention(store, _keep(0))

    assert not retention.is_enabled
    assert await retention.prune() == Pruned()
    assert len(_ids(db_path, "prompts")) == 3


async def test_the_newest_row_of_each_table_stays_so_no_id_is_handed_out_twice(
    store: Store, db_path: Path
) -> None:
    """SQLite gives a new row MAX(id)+1: were the newest batch pruned, the next batch would get
    its id again, and its chat thread and cost rows with it."""
    batches = [await _finished(store, f"m{i}") for i in range(3)]
    for batch in batches:
        if batch is not batches[-1]:
            await _shown(store, batch, 0)
        _age_batch(db_path, batch, 40)
    (waiting,) = await _prompts(store, "later")  # the newest prompt is in no batch yet

    await Retention(store, _keep(30)).prune()

    # The newest batch has neither prompts nor outbox rows left: only its id keeps it. The one
    # before keeps its row while the newest outbox row (its own) stays.
    assert _ids(db_path, "batches") == [batches[1].batch_id, batches[2].batch_id]
    assert _ids(db_path, "prompts") == [waiting]
    assert len(_ids(db_path, "outbox")) == 1
    following = await _batch(store, "next")
    assert following.batch_id > batches[-1].batch_id


async def test_many_rows_go_in_small_transactions(
    store: Store, db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bot.store, "_PRUNE_ROWS", 4)
    batches = [await _finished(store, f"m{i}a", f"m{i}b") for i in range(7)]
    for batch in batches:
        await _shown(store, batch, 0)
        await _shown(store, batch, 1)
        _age_batch(db_path, batch, 40)
    chunks: list[int] = []
    transaction = store._transaction

    def counted() -> object:
        chunks.append(1)
        return transaction()

    monkeypatch.setattr(store, "_transaction", counted)

    pruned = await Retention(store, _keep(30)).prune()

    # The newest prompt and outbox row stay, and so does the newest batch.
    assert pruned == Pruned(prompts=13, batches=6, outbox=13)
    assert len(chunks) >= 4 + 4 + 2, "at most 4 rows per transaction"


# --------------------------------------------------------------------------- costs and audit


async def test_cost_rows_stay_for_a_month_after_their_batch_is_gone(
    store: Store, db_path: Path
) -> None:
    """The cost report covers this month: cost rows outlive a short keep_days."""
    old = await _finished(store, "a1")
    month_old = await _finished(store, "b1")
    newest = await _finished(store, "c1")
    share = [CostShare("ws", "u-alice", "alice", 0.5)]
    for batch in (old, month_old, newest):
        await store.record_cost(PARTY, batch, Usage(10, 5, cost_usd=0.5), share)
    _age_batch(db_path, old, 40)
    _age_batch(db_path, month_old, 20)
    turns = _ids(db_path, "turn_costs")
    _age(db_path, "turn_costs", turns[:1], COST_KEEP_DAYS + 1, "at")
    _age(db_path, "turn_costs", turns[1:2], 20, "at")
    conn = sqlite3.connect(db_path)
    with conn:
        conn.execute("UPDATE cost_shares SET at = (SELECT at FROM turn_costs WHERE id = turn_id)")
    conn.close()

    pruned = await Retention(store, _keep(1)).prune()

    assert pruned == Pruned(prompts=2, batches=2, turn_costs=1, cost_shares=1)
    assert _ids(db_path, "batches") == [newest.batch_id]
    assert _ids(db_path, "turn_costs") == turns[1:]
    since = datetime.now(UTC) - timedelta(days=COST_KEEP_DAYS)
    assert await store.party_spend_since(PARTY, since) == pytest.approx(1.0)
    assert [s.cost_usd for s in await store.spend_since(PARTY, since)] == [pytest.approx(1.0)]


async def _audit_rows(store: Store, db_path: Path) -> dict[str, list[int]]:
    """In each audit table: a settled old row, an open old row, a settled new row."""
    batch = await _finished(store, "a1")
    approvals = [
        await store.open_approval(PARTY, batch.batch_id, "Bash", "{}", "Bash(ls)", 1)
        for _ in range(3)
    ]
    await store.close_approval(approvals[0], ApprovalOutcome.ALLOWED, [])
    await store.close_approval(approvals[2], ApprovalOutcome.DENIED, [])
    runs = [await store.start_shell_run(PARTY, ALICE, "make test") for _ in range(3)]
    await store.finish_shell_run(runs[0], ShellOutcome.EXITED, 0, 1.0)
    await store.finish_shell_run(runs[2], ShellOutcome.EXITED, 0, 1.0)
    questions = [
        await store.open_question(PARTY, batch.batch_id, QuestionKind.CHOICE, "Which?", ["a"])
        for _ in range(3)
    ]
    await store.close_question(questions[0], QuestionOutcome.ANSWERED, "a", ALICE)
    await store.close_question(questions[2], QuestionOutcome.TIMED_OUT)
    _age(db_path, "approvals", approvals[:2], 40, "requested_at", "decided_at")
    _age(db_path, "shell_runs", runs[:2], 40, "started_at")
    _age(db_path, "questions", questions[:2], 40, "asked_at", "closed_at")
    return {"approvals": approvals, "shell_runs": runs, "questions": questions}


async def test_the_audit_trail_is_kept_unless_keep_audit_days_is_set(
    store: Store, db_path: Path
) -> None:
    made = await _audit_rows(store, db_path)

    kept = await Retention(store, _keep(30)).prune()

    assert (kept.approvals, kept.shell_runs, kept.questions) == (0, 0, 0)
    for table, ids in made.items():
        assert _ids(db_path, table) == ids


async def test_keep_audit_days_prunes_settled_audit_rows_but_never_open_ones(
    store: Store, db_path: Path
) -> None:
    made = await _audit_rows(store, db_path)
    retention = Retention(store, _keep(0, audit_days=30))
    assert retention.is_enabled

    pruned = await retention.prune()

    assert pruned == Pruned(approvals=1, shell_runs=1, questions=1)
    for table, ids in made.items():
        assert _ids(db_path, table) == ids[1:], f"{table}: the open and the new rows stay"
    assert _count(db_path, "batches") == 1, "keep_days 0: finished history is kept"
    outcomes = await store.approval_outcomes(PARTY)
    assert [outcome for _, _, outcome, _ in outcomes] == [None, ApprovalOutcome.DENIED]


# --------------------------------------------------------------------------- the owner task


@pytest.mark.parametrize(
    ("days", "audit_days", "interval_s"),
    [
        (30, 0, 3600.0),  # capped at an hour
        (0.01, 0, 86.4),  # a tenth of the period
        (0.00001, 0, 5.0),  # never a busy loop
        (0, 0.02, 172.8),  # the audit period alone
        (30, 0.01, 86.4),  # the shorter of the two
    ],
)
def test_passes_come_every_tenth_of_the_shortest_keep_period(
    days: float, audit_days: float, interval_s: float
) -> None:
    retention = Retention(None, _keep(days, audit_days))  # type: ignore[arg-type]
    assert retention.interval_s == pytest.approx(interval_s)


class _Queued(logging.Handler):
    """Log records of one logger as an asyncio queue, for `until` to wake on."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: asyncio.Queue[logging.LogRecord] = asyncio.Queue()

    def emit(self, record: logging.LogRecord) -> None:
        self.records.put_nowait(record)


@pytest.fixture
def retention_log(caplog: pytest.LogCaptureFixture) -> Iterator[_Queued]:
    caplog.set_level(logging.DEBUG, logger="bot.retention")
    handler = _Queued()
    logging.getLogger("bot.retention").addHandler(handler)
    yield handler
    logging.getLogger("bot.retention").removeHandler(handler)


async def test_the_app_prunes_at_start_in_its_task_group(
    tmp_path: Path, retention_log: _Queued, caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings(tmp_path, None, store={"keep_days": 1.0})
    name = settings.party.name
    async with Store(settings.store_path) as store:
        await store.ensure_party(name)
        old = [await _finished(store, f"old{i}", party=name) for i in range(2)]
    for batch in old:
        _age_batch(settings.store_path, batch, 2)

    async with open_rig(settings) as rig:
        await until(
            lambda: _ids(settings.store_path, "batches") == [old[-1].batch_id],
            retention_log.records,
            what="the first pass of the store's retention",
        )
        # The bot goes on as before.
        assert await rig.chat.join("alice", rig.invites.prompter)
        await rig.chat.push_prompt("alice", "hello")
        assert (await rig.events.done()).status is TurnStatus.SUCCESS
    assert "pruned the store: 1 prompts (0 images), 1 batches, 0 outbox rows" in caplog.text


class _FlakyStore:
    """A store whose first prune fails, then counts the passes."""

    def __init__(self) -> None:
        self.passes: asyncio.Queue[int] = asyncio.Queue()
        self._calls = 0

    async def prune(self, **_: object) -> Pruned:
        self._calls += 1
        if self._calls == 1:
            raise sqlite3.OperationalError("database is locked")
        self.passes.put_nowait(self._calls)
        return Pruned()


async def test_a_failed_pass_is_logged_and_tried_again(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(bot.retention, "_MIN_INTERVAL_S", 0.01)
    flaky = _FlakyStore()
    retention = Retention(flaky, _keep(0.0000001))  # type: ignore[arg-type]
    served = asyncio.create_task(retention.serve())
    try:
        assert await asyncio.wait_for(flaky.passes.get(), 10) == 2
    finally:
        served.cancel()
        with pytest.raises(asyncio.CancelledError):
            await served
    (failed,) = [r for r in caplog.records if r.name == "bot.retention"]
    assert failed.levelno == logging.ERROR
    assert "database is locked" in caplog.text
