"""The durable state: SQLite through aiosqlite, WAL, migrations from the `migrations` package.

A prompt is written the moment it is accepted and moves only forward through
`pending -> batched -> sent -> done | failed` (`advance` rejects anything else), so a
crash at any point leaves enough behind for the party to resume. The store owns its
connection: every transaction runs under one lock, and accepted prompts are written
by one group-commit writer so that a burst costs one commit, not one per prompt.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import importlib.resources
import json
import logging
import os
import re
import sqlite3
import tempfile
from collections.abc import AsyncIterator, Sequence
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Self

import aiosqlite

from bot import ConcordiaError
from bot.agent import Usage
from bot.model import (
    Accepted,
    ApprovalOutcome,
    Author,
    Batch,
    BatchState,
    CostShare,
    Decider,
    Image,
    MergeGroup,
    Prompt,
    PromptState,
    QuestionKind,
    QuestionOutcome,
    Role,
    ShellOutcome,
    SourcePrompt,
    TurnStatus,
)
from bot.ports import OutboxEntry

__all__ = [
    "BackupFile",
    "OpenBatch",
    "Participant",
    "Pruned",
    "ShellRun",
    "StaleSources",
    "Store",
    "StoreError",
    "back_up",
    "hash_token",
]

log = logging.getLogger(__name__)

_SQL_VARIABLES = 900  # per IN (...) list, well under SQLite's limit
_MIGRATION_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")

# The only legal moves of a prompt; `advance` refuses the rest.
_TRANSITIONS: dict[PromptState, frozenset[PromptState]] = {
    PromptState.PENDING: frozenset({PromptState.BATCHED, PromptState.FAILED}),
    PromptState.BATCHED: frozenset({PromptState.SENT, PromptState.FAILED}),
    PromptState.SENT: frozenset({PromptState.SENT, PromptState.DONE, PromptState.FAILED}),
    PromptState.DONE: frozenset(),
    PromptState.FAILED: frozenset(),
}
# A batch in one of these was merged or sent but never finished: recovery runs it again.
_OPEN_BATCH = (BatchState.BATCHED.value, BatchState.SENT.value)
# Rows deleted per pruning transaction: the store's lock is never held long, so intake waits
# for at most one small chunk.
_PRUNE_ROWS = 500
# SQLite's primary result codes for a damaged file (extended codes keep them in the low byte).
_DAMAGE_CODES = frozenset({sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB})


class StoreError(ConcordiaError):
    """The store refused an operation (an illegal state change, a newer schema)."""


class StaleSources(StoreError):
    """A batch was merged from prompts that are no longer all pending."""


@dataclass(frozen=True, slots=True)
class Participant:
    platform: str
    user_id: str
    name: str
    role: Role


@dataclass(frozen=True, slots=True)
class ShellRun:
    """One recorded `/concordia shell` run; ``outcome`` is None while it runs."""

    run_id: int
    name: str
    command: str
    started_at: str
    outcome: ShellOutcome | None
    exit_code: int | None
    duration_s: float | None


@dataclass(frozen=True, slots=True)
class Pruned:
    """What one `Store.prune` deleted, per kind of row."""

    prompts: int = 0
    images: int = 0
    batches: int = 0
    outbox: int = 0
    turn_costs: int = 0
    cost_shares: int = 0
    approvals: int = 0
    shell_runs: int = 0
    questions: int = 0

    @property
    def total(self) -> int:
        return sum(int(getattr(self, f.name)) for f in fields(self))


@dataclass(frozen=True, slots=True)
class BackupFile:
    """A copy of the database that `back_up` wrote and checked."""

    path: Path
    size_bytes: int
    schema_version: int


@dataclass(frozen=True, slots=True)
class OpenBatch:
    """A batch that was merged or sent but never finished: what recovery resumes."""

    batch: Batch
    was_sent: bool


def hash_token(token: str) -> str:
    """Tokens are 256-bit random strings, so a plain SHA-256 is enough to store them."""
    return hashlib.sha256(token.encode()).hexdigest()


def _now() -> str:
    return _stamp(datetime.now(UTC))


def _stamp(moment: datetime) -> str:
    """A stored timestamp: UTC ISO-8601 text, so that text order is time order."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds")


def _is_damage(exc: sqlite3.DatabaseError) -> bool:
    """Whether SQLite refused because the file is damaged or not a database at all."""
    code = getattr(exc, "sqlite_errorcode", None)
    return code is not None and code & 0xFF in _DAMAGE_CODES


def _damaged(path: Path, detail: str) -> StoreError:
    name = path.name
    return StoreError(
        f"{path} is damaged ({detail}); concordia will not start on it. Stop every concordia "
        f"using it, move {name} (with any {name}-wal and {name}-shm beside it) aside, then copy "
        f"a backup made with `concordia backup FILE` to {path} (mode 0600) and start again; "
        "with no backup, moving it aside starts an empty store with new invite tokens, and "
        f"`sqlite3 {name} .recover` may salvage rows from the moved file"
    )


def _by_party(group: Sequence[_PendingInsert]) -> dict[str, list[str]]:
    parties: dict[str, list[str]] = {}
    for item in group:
        parties.setdefault(item.party, []).append(item.prompt.source_id)
    return parties


_SOURCE_COLUMNS = "id, author, text, thread, platform, user_id, plan"


def _source(row: Sequence[object]) -> SourcePrompt:
    i, a, t, th, p, u, plan = row
    return SourcePrompt(int(str(i)), str(a), str(t), str(th), str(p), str(u), bool(plan))


@dataclass(slots=True, eq=False)
class _PendingInsert:
    party: str
    prompt: Prompt
    text: str
    plan: bool
    done: asyncio.Future[Accepted]


class Store:
    """Async access to the SQLite file. Use as ``async with Store(path) as store``."""

    def __init__(self, path: Path):
        self._path = path
        self._db: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()
        self._inserts: asyncio.Queue[_PendingInsert] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None
        # Pending prompts per party, kept in step by every write that changes it.
        self._pending: dict[str, int] = {}

    async def __aenter__(self) -> Self:
        self._path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        # The file holds prompts and hashed tokens: readable by the host only.
        with contextlib.suppress(FileExistsError):
            os.close(os.open(self._path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        self._db = await aiosqlite.connect(self._path, isolation_level=None)
        try:
            try:
                await self._db.execute("PRAGMA journal_mode=WAL")
                # NORMAL in WAL mode survives a killed process (not a power cut) at a fraction
                # of FULL's cost; a crash of the bot is the failure we recover from.
                await self._db.execute("PRAGMA synchronous=NORMAL")
                await self._db.execute("PRAGMA foreign_keys=ON")
                await self._db.execute("PRAGMA busy_timeout=5000")
                await self._check_intact()
                await self._migrate()
            except sqlite3.DatabaseError as exc:
                if not _is_damage(exc):
                    raise
                raise _damaged(self._path, str(exc)) from exc
        except BaseException:
            # aiosqlite's worker thread is not a daemon: left open, it keeps the process alive.
            await self.close()
            raise
        self._writer = asyncio.create_task(self._write_inserts(), name="store-writer")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the connection; idempotent."""
        if self._writer is not None:
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer
            self._writer = None
        if self._db is not None:
            await self._db.close()
            self._db = None

    @property
    def db(self) -> aiosqlite.Connection:
        if self._db is None:
            raise RuntimeError("the store is not open: use `async with Store(path)`")
        return self._db

    async def ping(self) -> None:
        """Raise if the database cannot answer a query (for readiness)."""
        async with self.db.execute("SELECT 1") as cur:
            await cur.fetchone()

    def pending_count(self, party: str) -> int:
        """The party's pending prompts as last counted (for metrics; no query)."""
        return self._pending.get(party, 0)

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """One transaction under the store's lock; safe to cancel at any point.

        A statement handed to aiosqlite runs on its thread even if the awaiting task is
        cancelled, so BEGIN and COMMIT are awaited to completion: a cancelled BEGIN must
        not leave a transaction open behind the released lock.
        """
        async with self._lock:
            begin = asyncio.ensure_future(self.db.execute("BEGIN IMMEDIATE"))
            try:
                await asyncio.shield(begin)
            except asyncio.CancelledError:
                with contextlib.suppress(Exception):
                    await begin
                    await self._rollback()
                raise
            try:
                yield self.db
            except BaseException:
                await self._rollback()
                raise
            commit = asyncio.ensure_future(self.db.execute("COMMIT"))
            try:
                await asyncio.shield(commit)
            except asyncio.CancelledError:
                await commit  # it runs anyway; the transaction is over either way
                raise

    async def _rollback(self) -> None:
        rollback = asyncio.ensure_future(self.db.execute("ROLLBACK"))
        try:
            await asyncio.shield(rollback)
        except asyncio.CancelledError:
            await rollback
            raise
        finally:
            self._pending.clear()  # recounted from the table on next use

    async def _check_intact(self) -> None:
        """Refuse a damaged file at open (`PRAGMA quick_check`: the b-trees and pages, not the
        indexes' agreement with their tables; linear in the file's size)."""
        async with self.db.execute("PRAGMA quick_check(5)") as cur:
            found = [str(r[0]) for r in await cur.fetchall()]
        if found != ["ok"]:
            raise _damaged(self._path, f"PRAGMA quick_check: {'; '.join(found)}")

    async def _migrate(self) -> None:
        files = sorted(
            (
                f
                for f in importlib.resources.files("migrations").iterdir()
                if _MIGRATION_NAME.match(f.name)
            ),
            key=lambda f: f.name,
        )
        async with self.db.execute("PRAGMA user_version") as cur:
            row = await cur.fetchone()
        current = int(row[0]) if row else 0
        latest = int(files[-1].name[:4]) if files else 0
        if current > latest:
            raise StoreError(
                f"{self._path} has schema version {current}, newer than this concordia knows "
                f"({latest}): upgrade concordia"
            )
        for file in files:
            version = int(file.name[:4])
            if version <= current:
                continue
            log.info("applying migration %s", file.name)
            # executescript commits on its own; user_version is set in the same script so
            # that a crash cannot leave the schema applied but the version behind.
            script = file.read_text(encoding="utf-8")
            await self.db.executescript(
                f"BEGIN;\n{script}\nPRAGMA user_version={version};\nCOMMIT;"
            )

    # -- parties and sessions ---------------------------------------------------------

    async def ensure_party(self, party: str) -> None:
        async with self._transaction() as db:
            await db.execute(
                "INSERT INTO parties (name, created_at) VALUES (?, ?) ON CONFLICT DO NOTHING",
                (party, _now()),
            )

    async def session_id(self, party: str) -> str | None:
        async with self.db.execute(
            "SELECT session_id FROM parties WHERE name = ?", (party,)
        ) as cur:
            row = await cur.fetchone()
        return str(row[0]) if row and row[0] else None

    async def set_session_id(self, party: str, session_id: str | None) -> None:
        async with self._transaction() as db:
            await db.execute(
                "UPDATE parties SET session_id = ? WHERE name = ?", (session_id, party)
            )

    # -- invites and participants -----------------------------------------------------

    async def replace_invite(self, party: str, role: Role, token: str) -> None:
        """Make ``token`` the standing invite of ``role``; the one before stops working at
        once (tokens minted with `add_invite` are not touched)."""
        async with self._transaction() as db:
            await db.execute(
                "UPDATE invites SET revoked_at = ?"
                " WHERE party = ? AND role = ? AND standing = 1 AND revoked_at IS NULL",
                (_now(), party, role.value),
            )
            await db.execute(
                "INSERT INTO invites (party, token_hash, role, created_at, standing)"
                " VALUES (?, ?, ?, ?, 1)",
                (party, hash_token(token), role.value, _now()),
            )

    async def add_invite(
        self,
        party: str,
        role: Role,
        token: str,
        *,
        expires_at: datetime | None = None,
        uses: int | None = None,
    ) -> None:
        """Add an extra invite of ``role``: until ``expires_at`` (None: never), for ``uses``
        joins (None: any number)."""
        expires = (
            expires_at.astimezone(UTC).isoformat(timespec="milliseconds") if expires_at else None
        )
        async with self._transaction() as db:
            await db.execute(
                "INSERT INTO invites (party, token_hash, role, created_at, expires_at, uses_left,"
                " standing) VALUES (?, ?, ?, ?, ?, ?, 0)",
                (party, hash_token(token), role.value, _now(), expires, uses),
            )

    async def revoke_invite(self, party: str, token: str) -> bool:
        """Stop ``token`` from working; False if it was not a live invite of the party."""
        async with self._transaction() as db:
            cur = await db.execute(
                "UPDATE invites SET revoked_at = ?"
                " WHERE party = ? AND token_hash = ? AND revoked_at IS NULL",
                (_now(), party, hash_token(token)),
            )
            return cur.rowcount > 0

    async def has_invite(self, party: str, role: Role) -> bool:
        async with self.db.execute(
            "SELECT 1 FROM invites"
            " WHERE party = ? AND role = ? AND standing = 1 AND revoked_at IS NULL",
            (party, role.value),
        ) as cur:
            return await cur.fetchone() is not None

    async def check_invite(self, party: str, token: str) -> Role | None:
        """The role the token grants, or None; a single-use token is used up by this call.

        Every live hash is compared in constant time; expired and used-up ones are not live.
        """
        digest = hash_token(token)
        async with self._transaction() as db:
            async with db.execute(
                "SELECT id, token_hash, role, uses_left FROM invites"
                " WHERE party = ? AND revoked_at IS NULL"
                " AND (expires_at IS NULL OR expires_at > ?)"
                " AND (uses_left IS NULL OR uses_left > 0)",
                (party, _now()),
            ) as cur:
                rows = await cur.fetchall()
            granted: tuple[int, Role, int | None] | None = None
            for invite_id, stored, role, uses_left in rows:
                if hmac.compare_digest(str(stored), digest):
                    granted = (int(invite_id), Role(role), uses_left)
            if granted is None:
                return None
            invite_id, role, uses_left = granted
            if uses_left is not None:
                await db.execute(
                    "UPDATE invites SET uses_left = uses_left - 1 WHERE id = ?", (invite_id,)
                )
        return role

    async def join(self, party: str, participant: Participant) -> None:
        async with self._transaction() as db:
            await db.execute(
                "INSERT INTO participants (party, platform, user_id, name, role, joined_at)"
                " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (party, platform, user_id) DO UPDATE"
                " SET name = excluded.name, role = excluded.role, joined_at = excluded.joined_at,"
                " left_at = NULL",
                (
                    party,
                    participant.platform,
                    participant.user_id,
                    participant.name,
                    participant.role.value,
                    _now(),
                ),
            )

    async def leave(self, party: str, platform: str, user_id: str) -> None:
        async with self._transaction() as db:
            await db.execute(
                "UPDATE participants SET left_at = ?"
                " WHERE party = ? AND platform = ? AND user_id = ?",
                (_now(), party, platform, user_id),
            )

    async def participants(self, party: str) -> list[Participant]:
        async with self.db.execute(
            "SELECT platform, user_id, name, role FROM participants"
            " WHERE party = ? AND left_at IS NULL",
            (party,),
        ) as cur:
            rows = await cur.fetchall()
        return [Participant(str(p), str(u), str(n), Role(r)) for p, u, n, r in rows]

    # -- prompts ------------------------------------------------------------------------

    async def add_prompt(
        self, party: str, prompt: Prompt, text: str, *, plan: bool = False
    ) -> Accepted:
        """Durably record an accepted prompt (``text`` as it goes to Claude, ``plan`` when it
        asked for a plan first) with its images: its id, queue position, whether it was known.

        Returns once the row is committed. A prompt whose ``source_id`` is already known
        is not written again: the earlier id comes back with ``is_duplicate`` True and
        position 0.
        """
        done: asyncio.Future[Accepted] = asyncio.get_running_loop().create_future()
        self._inserts.put_nowait(_PendingInsert(party, prompt, text, plan, done))
        return await done

    async def _write_inserts(self) -> None:
        """Group commit: everything queued while the last commit ran goes in the next one."""
        while True:
            group = [await self._inserts.get()]
            while not self._inserts.empty():
                group.append(self._inserts.get_nowait())
            try:
                results = await self._insert_group(group)
            except Exception as exc:
                log.exception("writing %d accepted prompts failed", len(group))
                for item in group:
                    if not item.done.done():
                        item.done.set_exception(StoreError(f"could not store the prompt: {exc}"))
                continue
            for item, result in zip(group, results, strict=True):
                if not item.done.done():
                    item.done.set_result(result)

    async def _insert_group(self, group: list[_PendingInsert]) -> list[Accepted]:
        """Write a group in a handful of calls whatever its size: a thread hop per prompt
        would cap intake at a few thousand prompts a second."""
        now = _now()
        async with self._transaction() as db:
            known: dict[tuple[str, str], int] = {}
            for party, source_ids in _by_party(group).items():
                known.update(await self._ids_of(db, party, source_ids))
            fresh: list[_PendingInsert] = []
            for item in group:
                key = (item.party, item.prompt.source_id)
                if key not in known:
                    known[key] = 0  # a repeat later in this same group is a duplicate
                    fresh.append(item)
            existed = {key for key, prompt_id in known.items() if prompt_id}
            positions = {party: await self._pending_count(db, party) for party in _by_party(fresh)}
            await db.executemany(
                "INSERT INTO prompts (party, source_id, platform, user_id, author, text,"
                " thread, plan, state, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'pending', ?)",
                [
                    (
                        item.party,
                        item.prompt.source_id,
                        item.prompt.author.platform,
                        item.prompt.author.user_id,
                        item.prompt.author.name,
                        item.text,
                        item.prompt.thread,
                        item.plan,
                        now,
                    )
                    for item in fresh
                ],
            )
            for party, source_ids in _by_party(fresh).items():
                known.update(await self._ids_of(db, party, source_ids))
            await db.executemany(
                "INSERT INTO prompt_images (prompt_id, name, media_type, data) VALUES (?, ?, ?, ?)",
                [
                    (known[(item.party, item.prompt.source_id)], i.name, i.media_type, i.data)
                    for item in fresh
                    for i in item.prompt.images
                ],
            )
        results = []
        for item in group:
            key = (item.party, item.prompt.source_id)
            if key in existed or item not in fresh:
                results.append(Accepted(known[key], 0, is_duplicate=True))
                continue
            positions[item.party] += 1
            results.append(Accepted(known[key], positions[item.party]))
        for party, count in positions.items():
            self._pending[party] = count
        return results

    async def _ids_of(
        self, db: aiosqlite.Connection, party: str, source_ids: Sequence[str]
    ) -> dict[tuple[str, str], int]:
        found: dict[tuple[str, str], int] = {}
        for start in range(0, len(source_ids), _SQL_VARIABLES):
            chunk = source_ids[start : start + _SQL_VARIABLES]
            async with db.execute(
                f"SELECT source_id, id FROM prompts WHERE party = ?"
                f" AND source_id IN ({','.join('?' * len(chunk))})",
                (party, *chunk),
            ) as cur:
                found.update({(party, str(s)): int(i) for s, i in await cur.fetchall()})
        return found

    async def _pending_count(self, db: aiosqlite.Connection, party: str) -> int:
        """Pending prompts of ``party`` before the current write: counted once, then kept
        up to date in memory (COUNT(*) over a long queue costs milliseconds per group)."""
        if party not in self._pending:
            async with db.execute(
                "SELECT COUNT(*) FROM prompts WHERE party = ? AND state = 'pending'", (party,)
            ) as cur:
                row = await cur.fetchone()
            self._pending[party] = int(row[0]) if row else 0
        return self._pending[party]

    async def pending_prompts(self, party: str) -> list[SourcePrompt]:
        async with self.db.execute(
            f"SELECT {_SOURCE_COLUMNS} FROM prompts WHERE party = ? AND state = 'pending'"
            " ORDER BY id",
            (party,),
        ) as cur:
            return [_source(row) for row in await cur.fetchall()]

    async def batch_images(self, batch_id: int) -> list[tuple[str, Image]]:
        """The images of a batch's prompts, with each one's author, in the prompts' order."""
        async with self.db.execute(
            "SELECT p.author, i.name, i.media_type, i.data FROM prompt_images i"
            " JOIN prompts p ON p.id = i.prompt_id WHERE p.batch_id = ? ORDER BY p.id, i.id",
            (batch_id,),
        ) as cur:
            rows = await cur.fetchall()
        return [(str(a), Image(str(n), str(m), bytes(d))) for a, n, m, d in rows]

    async def prompt_state(self, prompt_id: int) -> PromptState:
        async with self.db.execute("SELECT state FROM prompts WHERE id = ?", (prompt_id,)) as cur:
            row = await cur.fetchone()
        if row is None:
            raise StoreError(f"no prompt {prompt_id}")
        return PromptState(row[0])

    async def withdraw_latest(self, party: str, platform: str, user_id: str) -> int | None:
        """Withdraw this author's newest pending prompt; return its id, or None."""
        async with self._transaction() as db:
            async with db.execute(
                "SELECT MAX(id) FROM prompts"
                " WHERE party = ? AND platform = ? AND user_id = ? AND state = 'pending'",
                (party, platform, user_id),
            ) as cur:
                row = await cur.fetchone()
            if row is None or row[0] is None:
                return None
            await self._advance(db, [int(row[0])], PromptState.FAILED)
        return int(row[0])

    # -- batches --------------------------------------------------------------------------

    async def create_batch(
        self, party: str, prompt: str, groups: Sequence[MergeGroup], sources: Sequence[SourcePrompt]
    ) -> Batch:
        """Record a merged batch and move its sources `pending -> batched` in one transaction.

        Raises `StaleSources` (nothing written) when a source stopped being pending while
        it was merged (withdrawn): the merged text would still carry it, so merge again.
        """
        if not sources:
            raise StoreError("a batch needs at least one source prompt")
        ids = [s.prompt_id for s in sources]
        async with self._transaction() as db:
            marks = ",".join("?" * len(ids))
            async with db.execute(
                f"SELECT id FROM prompts WHERE id IN ({marks}) AND state != 'pending'", tuple(ids)
            ) as cur:
                gone = [int(r[0]) for r in await cur.fetchall()]
            if gone:
                raise StaleSources(f"prompts {gone} are no longer pending; merge again")
            await self._advance(db, ids, PromptState.BATCHED)
            async with db.execute(
                "INSERT INTO batches (party, prompt, groups_json, state, created_at)"
                " VALUES (?, ?, ?, ?, ?) RETURNING id",
                (party, prompt, _groups_json(groups), BatchState.BATCHED.value, _now()),
            ) as cur:
                row = await cur.fetchone()
            assert row is not None
            batch_id = int(row[0])
            await db.execute(
                f"UPDATE prompts SET batch_id = ? WHERE id IN ({','.join('?' * len(ids))})",
                (batch_id, *ids),
            )
        return Batch(batch_id, prompt, tuple(sources), tuple(groups), attempt=1)

    async def mark_sent(self, batch: Batch) -> Batch:
        """Record that the batch is about to reach Claude; returns it with its attempt number."""
        async with self._transaction() as db:
            async with db.execute(
                "UPDATE batches SET state = ?, attempts = attempts + 1 WHERE id = ?"
                " AND state IN (?, ?) RETURNING attempts",
                (BatchState.SENT.value, batch.batch_id, *_OPEN_BATCH),
            ) as cur:
                row = await cur.fetchone()
            if row is None:
                raise StoreError(f"batch {batch.batch_id} is already finished")
            await self._advance(db, [s.prompt_id for s in batch.sources], PromptState.SENT)
        return Batch(batch.batch_id, batch.prompt, batch.sources, batch.groups, attempt=int(row[0]))

    # -- tool approvals -------------------------------------------------------------------

    async def open_approval(
        self, party: str, batch_id: int | None, tool: str, input_json: str, rule: str, needed: int
    ) -> int:
        """Record that Claude asks to use ``tool``; returns the approval's id."""
        async with (
            self._transaction() as db,
            db.execute(
                "INSERT INTO approvals (party, batch_id, tool, input_json, rule, needed,"
                " requested_at) VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING id",
                (party, batch_id, tool, input_json, rule, needed, _now()),
            ) as cur,
        ):
            row = await cur.fetchone()
        assert row is not None
        return int(row[0])

    async def close_approval(
        self, approval_id: int, outcome: ApprovalOutcome, deciders: Sequence[Decider]
    ) -> None:
        """Record how an approval ended and who decided (the audit trail).

        ``deciders`` are stored as JSON objects with the fields of `Decider`."""
        async with self._transaction() as db:
            await db.execute(
                "UPDATE approvals SET outcome = ?, deciders = ?, decided_at = ? WHERE id = ?",
                (str(outcome), json.dumps(list(deciders), default=asdict), _now(), approval_id),
            )

    # -- questions ----------------------------------------------------------------------------

    async def open_question(
        self, party: str, batch_id: int, kind: QuestionKind, text: str, options: Sequence[str]
    ) -> int:
        """Record a question Claude puts to the group; returns its id."""
        async with (
            self._transaction() as db,
            db.execute(
                "INSERT INTO questions (party, batch_id, kind, text, options_json, asked_at)"
                " VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
                (party, batch_id, kind.value, text, json.dumps(list(options)), _now()),
            ) as cur,
        ):
            row = await cur.fetchone()
        assert row is not None
        return int(row[0])

    async def close_question(
        self,
        question_id: int,
        outcome: QuestionOutcome,
        answer: str | None = None,
        by: Author | None = None,
    ) -> None:
        answered_by = None if by is None else json.dumps(asdict(by))
        async with self._transaction() as db:
            await db.execute(
                "UPDATE questions SET outcome = ?, answer = ?, answered_by = ?, closed_at = ?"
                " WHERE id = ?",
                (outcome.value, answer, answered_by, _now(), question_id),
            )

    async def abandon_open_questions(self, party: str) -> list[int]:
        """Close the questions a bot that died left waiting; their ids (the batch re-runs,
        so Claude asks again)."""
        async with (
            self._transaction() as db,
            db.execute(
                "UPDATE questions SET outcome = ?, closed_at = ?"
                " WHERE party = ? AND outcome IS NULL RETURNING id",
                (QuestionOutcome.ABANDONED.value, _now(), party),
            ) as cur,
        ):
            rows = await cur.fetchall()
        return sorted(int(r[0]) for r in rows)

    async def question_outcome(self, question_id: int) -> tuple[QuestionOutcome | None, str | None]:
        """(outcome, answer) of a question; (None, None) while it waits."""
        async with self.db.execute(
            "SELECT outcome, answer FROM questions WHERE id = ?", (question_id,)
        ) as cur:
            row = await cur.fetchone()
        if row is None or row[0] is None:
            return None, None
        return QuestionOutcome(row[0]), None if row[1] is None else str(row[1])

    async def abandon_open_approvals(self, party: str) -> int:
        """Close approvals left open by a bot that died while they waited."""
        async with self._transaction() as db:
            cur = await db.execute(
                "UPDATE approvals SET outcome = ?, decided_at = ?"
                " WHERE party = ? AND outcome IS NULL",
                (ApprovalOutcome.ABANDONED.value, _now(), party),
            )
            return cur.rowcount

    async def approval_outcomes(
        self, party: str
    ) -> list[tuple[int, str, ApprovalOutcome | None, str]]:
        """(id, tool, outcome, deciders JSON) of every approval of the party, oldest first."""
        async with self.db.execute(
            "SELECT id, tool, outcome, COALESCE(deciders, '[]') FROM approvals"
            " WHERE party = ? ORDER BY id",
            (party,),
        ) as cur:
            rows = await cur.fetchall()
        return [
            (int(i), str(t), None if o is None else ApprovalOutcome(o), str(d))
            for i, t, o, d in rows
        ]

    async def approval_rules(self, party: str) -> list[str]:
        async with self.db.execute(
            "SELECT rule FROM approval_rules WHERE party = ? ORDER BY created_at", (party,)
        ) as cur:
            return [str(r[0]) for r in await cur.fetchall()]

    async def add_approval_rule(self, party: str, rule: str, created_by: str) -> None:
        async with self._transaction() as db:
            await db.execute(
                "INSERT INTO approval_rules (party, rule, created_by, created_at)"
                " VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
                (party, rule, created_by, _now()),
            )

    async def clear_approval_rules(self, party: str) -> int:
        async with self._transaction() as db:
            cur = await db.execute("DELETE FROM approval_rules WHERE party = ?", (party,))
            return cur.rowcount

    async def start_shell_run(self, party: str, author: Author, command: str) -> int:
        """Record that ``author`` is about to run ``command``; returns the run's id.

        Written before the command starts, so a run the bot dies during is still on record."""
        async with (
            self._transaction() as db,
            db.execute(
                "INSERT INTO shell_runs (party, platform, user_id, name, command, started_at)"
                " VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
                (party, author.platform, author.user_id, author.name, command, _now()),
            ) as cur,
        ):
            row = await cur.fetchone()
        assert row is not None
        return int(row[0])

    async def finish_shell_run(
        self, run_id: int, outcome: ShellOutcome, exit_code: int | None, duration_s: float
    ) -> None:
        """Record how run ``run_id`` ended."""
        async with self._transaction() as db:
            await db.execute(
                "UPDATE shell_runs SET outcome = ?, exit_code = ?, duration_s = ? WHERE id = ?",
                (str(outcome), exit_code, duration_s, run_id),
            )

    async def recent_shell_runs(self, party: str, limit: int) -> list[ShellRun]:
        """The party's last ``limit`` shell runs, newest first."""
        async with self.db.execute(
            "SELECT id, name, command, started_at, outcome, exit_code, duration_s"
            " FROM shell_runs WHERE party = ? ORDER BY id DESC LIMIT ?",
            (party, limit),
        ) as cur:
            rows = await cur.fetchall()
        return [
            ShellRun(
                run_id=int(r[0]),
                name=str(r[1]),
                command=str(r[2]),
                started_at=str(r[3]),
                outcome=None if r[4] is None else ShellOutcome(r[4]),
                exit_code=None if r[5] is None else int(r[5]),
                duration_s=None if r[6] is None else float(r[6]),
            )
            for r in rows
        ]

    async def record_cost(
        self, party: str, batch: Batch, usage: Usage, shares: Sequence[CostShare]
    ) -> None:
        """Keep what one turn of ``batch`` cost and each author's share, in one transaction."""
        now = _now()
        async with (
            self._transaction() as db,
            db.execute(
                "INSERT INTO turn_costs (party, batch_id, attempt, at, cost_usd, input_tokens,"
                " output_tokens) VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING id",
                (
                    party,
                    batch.batch_id,
                    batch.attempt,
                    now,
                    usage.cost_usd or 0.0,
                    usage.input_tokens,
                    usage.output_tokens,
                ),
            ) as cur,
        ):
            row = await cur.fetchone()
            assert row is not None
            await db.executemany(
                "INSERT INTO cost_shares (turn_id, party, platform, user_id, name, at, cost_usd)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(row[0], party, s.platform, s.user_id, s.name, now, s.cost_usd) for s in shares],
            )

    async def spend_since(self, party: str, since: datetime) -> list[CostShare]:
        """Each member's spend in ``party`` since ``since``, most first (a turn nobody is
        charged for counts only in `party_spend_since`)."""
        async with self.db.execute(
            "SELECT platform, user_id, MAX(name), SUM(cost_usd) FROM cost_shares"
            " WHERE party = ? AND at >= ? GROUP BY platform, user_id ORDER BY 4 DESC",
            (party, since.astimezone(UTC).isoformat(timespec="milliseconds")),
        ) as cur:
            rows = await cur.fetchall()
        return [CostShare(str(r[0]), str(r[1]), str(r[2]), float(r[3])) for r in rows]

    async def party_spend_since(self, party: str, since: datetime) -> float:
        """What ``party``'s turns cost since ``since``."""
        async with self.db.execute(
            "SELECT COALESCE(SUM(cost_usd), 0) FROM turn_costs WHERE party = ? AND at >= ?",
            (party, since.astimezone(UTC).isoformat(timespec="milliseconds")),
        ) as cur:
            row = await cur.fetchone()
        return float(row[0]) if row else 0.0

    async def finish_batch(self, batch_id: int, status: TurnStatus, detail: str = "") -> None:
        """Close the batch: its prompts become done (success, interrupted) or failed (error)."""
        is_error = status is TurnStatus.ERROR
        final = PromptState.FAILED if is_error else PromptState.DONE
        async with self._transaction() as db:
            await db.execute(
                "UPDATE batches SET state = ?, status = ?, detail = ?, finished_at = ?"
                " WHERE id = ?",
                (
                    (BatchState.FAILED if is_error else BatchState.DONE).value,
                    status.value,
                    detail,
                    _now(),
                    batch_id,
                ),
            )
            async with db.execute("SELECT id FROM prompts WHERE batch_id = ?", (batch_id,)) as cur:
                ids = [int(r[0]) for r in await cur.fetchall()]
            await self._advance(db, ids, final)

    async def open_batches(self, party: str) -> list[OpenBatch]:
        """Batches merged or sent but never finished, oldest first (for recovery)."""
        async with self.db.execute(
            "SELECT id, prompt, groups_json, state, attempts FROM batches"
            " WHERE party = ? AND state IN (?, ?) ORDER BY id",
            (party, *_OPEN_BATCH),
        ) as cur:
            rows = await cur.fetchall()
        found = []
        for batch_id, prompt, groups_json, state, attempts in rows:
            async with self.db.execute(
                f"SELECT {_SOURCE_COLUMNS} FROM prompts WHERE batch_id = ? ORDER BY id",
                (batch_id,),
            ) as cur:
                sources = tuple(_source(row) for row in await cur.fetchall())
            batch = Batch(
                int(batch_id),
                str(prompt),
                sources,
                _groups_from_json(str(groups_json)),
                int(attempts),
            )
            found.append(OpenBatch(batch, was_sent=BatchState(state) is BatchState.SENT))
        return found

    async def last_finished_at(self, party: str) -> str | None:
        async with self.db.execute(
            "SELECT MAX(finished_at) FROM batches WHERE party = ?", (party,)
        ) as cur:
            row = await cur.fetchone()
        return str(row[0]) if row and row[0] else None

    async def _advance(self, db: aiosqlite.Connection, ids: Sequence[int], to: PromptState) -> None:
        """The one place a prompt changes state; refuses moves `_TRANSITIONS` does not allow."""
        if not ids:
            return
        marks = ",".join("?" * len(ids))
        async with db.execute(
            f"SELECT id, state, party FROM prompts WHERE id IN ({marks})", tuple(ids)
        ) as cur:
            rows = await cur.fetchall()
        for prompt_id, state, _ in rows:
            if to not in _TRANSITIONS[PromptState(state)]:
                raise StoreError(f"prompt {prompt_id} cannot go from {state} to {to.value}")
        await db.execute(f"UPDATE prompts SET state = ? WHERE id IN ({marks})", (to.value, *ids))
        for _, state, party in rows:
            if state == PromptState.PENDING and party in self._pending:
                self._pending[party] -= 1

    # -- outbox (bot.ports.Outbox) --------------------------------------------------------

    async def outbox_write(
        self, platform: str, thread: str, batch_id: int, seq: int, text: str
    ) -> int:
        async with (
            self._transaction() as db,
            db.execute(
                "INSERT INTO outbox (platform, thread, batch_id, seq, text) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT (platform, thread, batch_id, seq) DO UPDATE SET text = excluded.text"
                " RETURNING id",
                (platform, thread, batch_id, seq, text),
            ) as cur,
        ):
            row = await cur.fetchone()
        assert row is not None
        return int(row[0])

    async def outbox_confirm(self, entry_id: int, ref: str, text: str) -> None:
        async with self._transaction() as db:
            await db.execute(
                "UPDATE outbox SET ref = ?, shown = ? WHERE id = ?", (ref, text, entry_id)
            )

    async def outbox_unsynced(self, platform: str) -> list[OutboxEntry]:
        async with self.db.execute(
            "SELECT id, platform, thread, batch_id, seq, text, ref FROM outbox"
            " WHERE platform = ? AND (ref IS NULL OR shown IS NOT text) ORDER BY batch_id, seq",
            (platform,),
        ) as cur:
            rows = await cur.fetchall()
        return [
            OutboxEntry(
                int(i), str(p), str(th), int(b), int(s), str(t), None if r is None else str(r)
            )
            for i, p, th, b, s, t, r in rows
        ]

    # -- retention ------------------------------------------------------------------------

    async def prune(
        self,
        *,
        finished_before: datetime | None,
        costs_before: datetime | None = None,
        audit_before: datetime | None = None,
    ) -> Pruned:
        """Delete history older than the given moments (None keeps that kind); what went.

        - ``finished_before``: outbox rows already shown, then finished prompts with their
          images, then finished batches. A batch's age is when it finished, a withdrawn
          prompt's when it came. Never a pending, batched or sent prompt, an open batch, an
          outbox row not yet shown, nor a batch that still has one.
        - ``costs_before``: turn costs with their shares.
        - ``audit_before``: settled approvals, finished shell runs and closed questions; never
          one still open.

        The newest row of each table stays whatever its age: without AUTOINCREMENT SQLite
        hands out MAX(id)+1, so pruning the newest id would hand it out again (to a batch, an
        approval whose buttons are still in chat). Rows go in transactions of at most
        `_PRUNE_ROWS`, each under the store's lock, so writers wait for one small chunk at a
        time. Safe to cancel: what was committed stays pruned, and a later call goes on.
        """
        pruned: dict[str, int] = {}
        finished = tuple(s.value for s in (BatchState.DONE, BatchState.FAILED))
        if finished_before is not None:
            before = _stamp(finished_before)
            (pruned["outbox"],) = await self._prune_rows(
                "SELECT o.id FROM outbox o LEFT JOIN batches b ON b.id = o.batch_id"
                " WHERE o.ref IS NOT NULL AND o.shown IS o.text"
                " AND o.id < (SELECT MAX(id) FROM outbox)"
                # a row whose batch is gone was written late for an already pruned batch
                " AND (b.id IS NULL OR (b.state IN (?, ?) AND b.finished_at < ?)) LIMIT ?",
                (*finished, before),
                ["DELETE FROM outbox WHERE id IN ({ids})"],
            )
            pruned["images"], pruned["prompts"] = await self._prune_rows(
                "SELECT p.id FROM prompts p LEFT JOIN batches b ON b.id = p.batch_id"
                " WHERE p.state IN (?, ?) AND p.id < (SELECT MAX(id) FROM prompts)"
                " AND ((p.batch_id IS NULL AND p.created_at < ?)"
                " OR (b.state IN (?, ?) AND b.finished_at < ?)) LIMIT ?",
                (*finished, before, *finished, before),
                [
                    "DELETE FROM prompt_images WHERE prompt_id IN ({ids})",
                    "DELETE FROM prompts WHERE id IN ({ids})",
                ],
            )
            (pruned["batches"],) = await self._prune_rows(
                "SELECT b.id FROM batches b"
                " WHERE b.state IN (?, ?) AND b.finished_at < ?"
                " AND b.id < (SELECT MAX(id) FROM batches)"
                " AND NOT EXISTS (SELECT 1 FROM prompts p WHERE p.batch_id = b.id)"
                " AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.batch_id = b.id) LIMIT ?",
                (*finished, before),
                ["DELETE FROM batches WHERE id IN ({ids})"],
            )
        if costs_before is not None:
            pruned["cost_shares"], pruned["turn_costs"] = await self._prune_rows(
                "SELECT id FROM turn_costs WHERE at < ?"
                " AND id < (SELECT MAX(id) FROM turn_costs) LIMIT ?",
                (_stamp(costs_before),),
                [
                    "DELETE FROM cost_shares WHERE turn_id IN ({ids})",
                    "DELETE FROM turn_costs WHERE id IN ({ids})",
                ],
            )
        if audit_before is not None:
            before = _stamp(audit_before)
            for table, when in (
                ("approvals", "COALESCE(decided_at, requested_at)"),
                ("shell_runs", "started_at"),
                ("questions", "COALESCE(closed_at, asked_at)"),
            ):
                (pruned[table],) = await self._prune_rows(
                    f"SELECT id FROM {table} WHERE outcome IS NOT NULL AND {when} < ?"
                    f" AND id < (SELECT MAX(id) FROM {table}) LIMIT ?",
                    (before,),
                    [f"DELETE FROM {table} WHERE id IN ({{ids}})"],
                )
        return Pruned(**pruned)

    async def _prune_rows(
        self, select: str, args: Sequence[object], deletes: Sequence[str]
    ) -> list[int]:
        """Find ids with ``select`` (its last parameter is the LIMIT) and run ``deletes``
        (``{ids}`` marks the list) on them, one transaction per chunk, until a chunk comes
        back short; the rows each of ``deletes`` removed."""
        removed = [0] * len(deletes)
        while True:
            async with self._transaction() as db:
                async with db.execute(select, (*args, _PRUNE_ROWS)) as cur:
                    ids = [int(r[0]) for r in await cur.fetchall()]
                marks = ",".join("?" * len(ids))
                for i, delete in enumerate(deletes if ids else ()):
                    cur = await db.execute(delete.format(ids=marks), ids)
                    removed[i] += cur.rowcount
            if len(ids) < _PRUNE_ROWS:
                return removed


async def back_up(source: Path, target: Path, *, overwrite: bool = False) -> BackupFile:
    """Copy the database at ``source`` to ``target`` (mode 0600) with SQLite's online backup
    API, safe while a bot writes to it; the copy is one self-contained file, checked.

    The copy is written beside ``target`` and renamed onto it once checked, so a failed or
    cancelled backup leaves no half-written file. Raises StoreError when there is no database
    at ``source``, when ``target`` exists and ``overwrite`` is False, when the source or the
    copy is damaged, or when SQLite fails otherwise (the file stays locked past its timeout).
    """
    uri, part, reserved = _start_backup(source, target, overwrite=overwrite)
    try:
        version = await _copy_checked(uri, part, name=source)
        size = _finish_backup(part, target)
    except BaseException as exc:
        _abandon_backup(part, target if reserved else None)
        if isinstance(exc, sqlite3.DatabaseError) and _is_damage(exc):
            raise _damaged(source, str(exc)) from exc
        if isinstance(exc, sqlite3.Error):
            raise StoreError(f"could not back up {source}: {exc}") from exc
        raise
    return BackupFile(target, size, version)


def _start_backup(source: Path, target: Path, *, overwrite: bool) -> tuple[str, Path, bool]:
    """The source's URI, the empty 0600 file to copy into, and whether ``target`` was
    reserved for the copy."""
    if not source.is_file():
        raise StoreError(f"there is no database at {source}: nothing to back up (store.path)")
    if target.is_dir():
        raise StoreError(f"{target} is a folder: name the backup file to write")
    reserved = False
    if not overwrite:
        # Reserve the name at once (0600, never an existing file's), so that a file created
        # meanwhile, or another backup's, is not overwritten by the rename.
        try:
            os.close(os.open(target, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        except FileExistsError:
            raise StoreError(f"{target} exists: choose another name, or pass --force") from None
        reserved = True
    # mkstemp creates the file 0600, beside the target so that the rename stays on one disk.
    handle, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    os.close(handle)
    # mode=rw: a file gone meanwhile is an error rather than a new empty database.
    return f"{source.absolute().as_uri()}?mode=rw", Path(name), reserved


def _finish_backup(part: Path, target: Path) -> int:
    os.replace(part, target)
    return target.stat().st_size


def _abandon_backup(part: Path, reserved: Path | None) -> None:
    part.unlink(missing_ok=True)
    if reserved is not None:
        reserved.unlink(missing_ok=True)


async def _copy_checked(uri: str, part: Path, *, name: Path) -> int:
    """Back the database at ``uri`` (``name``) up into the empty file ``part``; the copy's
    schema version."""
    async with aiosqlite.connect(uri, uri=True) as db:
        await db.execute("PRAGMA busy_timeout=5000")
        # The backup runs on the source's thread and uses the copy's connection there.
        async with aiosqlite.connect(part, check_same_thread=False) as copy:
            # One step (pages=-1): a write to the source between steps would restart it.
            await db.backup(copy, pages=-1)
            # The copy keeps the source's WAL mode in its header; a backup is one file.
            await copy.execute("PRAGMA journal_mode=DELETE")
            async with copy.execute("PRAGMA quick_check(5)") as cur:
                found = [str(r[0]) for r in await cur.fetchall()]
            if found != ["ok"]:
                raise StoreError(
                    f"the copy of {name} fails its check ({'; '.join(found)}): the database "
                    "itself is damaged; stop the bot and copy the file and its -wal file instead"
                )
            async with copy.execute("PRAGMA user_version") as cur:
                row = await cur.fetchone()
    return int(row[0]) if row else 0


def _groups_json(groups: Sequence[MergeGroup]) -> str:
    return json.dumps(
        [
            {
                "prompt_ids": list(g.prompt_ids),
                "authors": list(g.authors),
                "instruction": g.instruction,
            }
            for g in groups
        ]
    )


def _groups_from_json(text: str) -> tuple[MergeGroup, ...]:
    return tuple(
        MergeGroup(tuple(g["prompt_ids"]), tuple(g["authors"]), str(g["instruction"]))
        for g in json.loads(text)
    )
