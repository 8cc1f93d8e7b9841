"""Tool approvals through a party, with the real `claude` CLI asking over its control channel.

FakeAnthropic answers ``TOOL_BASH <command>`` with a Bash tool_use and ``TOOL_EDIT <path>``
with a Read then an Edit; the CLI asks permission (``can_use_tool``) for what its own rules
do not allow, and the party decides from chat.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from adapters.memory import MemoryAdapter, MemoryPlatform
from bot.invite import InviteBook
from bot.merge_local import LocalMerger
from bot.model import (
    ApprovalRequested,
    ApprovalResolved,
    BatchDone,
    Decision,
    PartyEvent,
    Role,
    TurnStatus,
)
from bot.party import Party
from bot.safety import Redactor
from bot.session import ClaudeSession
from bot.store import Store
from tests.conftest import NO_CONFINEMENT, make_settings
from tests.fakes.anthropic_api import FakeAnthropic

pytestmark = [pytest.mark.claude, pytest.mark.timeout(90)]


@dataclass(eq=False)
class Events:
    seen: list[PartyEvent] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    def deliver(self, event: PartyEvent) -> None:
        self.seen.append(event)
        self.arrived.set()

    async def until(self, predicate: Callable[[PartyEvent], bool], after: int = 0) -> PartyEvent:
        async with asyncio.timeout(60):
            while True:
                for event in self.seen[after:]:
                    if predicate(event):
                        return event
                self.arrived.clear()
                await self.arrived.wait()

    async def approval(self, after: int = 0) -> ApprovalRequested:
        event = await self.until(lambda e: isinstance(e, ApprovalRequested), after)
        assert isinstance(event, ApprovalRequested)
        return event

    async def done(self, after: int = 0) -> BatchDone:
        event = await self.until(lambda e: isinstance(e, BatchDone), after)
        assert isinstance(event, BatchDone)
        return event


@dataclass
class Rig:
    party: Party
    chat: MemoryAdapter
    store: Store
    api: FakeAnthropic
    events: Events
    workdir: Path
    book: InviteBook


@contextlib.asynccontextmanager
async def approval_rig(api: FakeAnthropic, tmp_path: Path, **approvals: Any) -> AsyncIterator[Rig]:
    overrides = {"approvals": approvals} if approvals else {}
    settings = make_settings(tmp_path, api, **overrides)
    async with Store(settings.store.path) as store:
        await store.ensure_party(settings.party.name)
        book = InviteBook(store, settings.party.name, tmp_path / "state" / "tokens.json")
        invites = await book.ensure()
        env = dict(settings.claude.env)
        session_id = await store.session_id(settings.party.name)
        async with ClaudeSession(
            settings.claude, session_id=session_id, env=env, confinement=NO_CONFINEMENT
        ) as session:
            party = Party(
                settings,
                name=settings.party.name,
                store=store,
                session=session,
                merger=LocalMerger(),
                invites=book,
                redactor=Redactor([]),
            )
            await party.load()
            events = Events()
            party.subscribe(events)
            platform = MemoryPlatform(max_message_chars=2000, edit_interval_s=0.01)
            async with MemoryAdapter(party, platform, store) as chat:
                runner = asyncio.create_task(party.run())
                try:
                    assert await chat.join("alice", invites.prompter)
                    assert await chat.join("host", invites.host)
                    for name in ("ann", "abe"):
                        assert await chat.join(name, await book.mint_extra(Role.APPROVER))
                    yield Rig(party, chat, store, api, events, settings.claude.workdir, book)
                finally:
                    runner.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await runner


async def test_allow_runs_the_tool_and_the_thread_shows_the_request(
    fake_api: FakeAnthropic, tmp_path: Path
) -> None:
    async with approval_rig(fake_api, tmp_path) as rig:
        await rig.chat.push_prompt("alice", "TOOL_BASH touch allowed.txt")
        approval = await rig.events.approval()
        assert approval.tool == "Bash"
        assert approval.summary == "run `touch allowed.txt`"
        assert approval.detail == "touch allowed.txt"
        assert approval.needed == 1
        assert [a.name for a in approval.requesters] == ["alice"]
        assert not (rig.workdir / "allowed.txt").exists()

        refused = await rig.party.decide(
            approval.approval_id, rig.chat.author("alice"), Decision.ALLOW
        )
        assert not refused.ok
        assert "prompter" in refused.text
        allowed = await rig.chat.command("ann", "approve", f"{approval.approval_id} allow")
        assert allowed.ok, allowed.text

        done = await rig.events.done()
        assert done.status is TurnStatus.SUCCESS
        assert (rig.workdir / "allowed.txt").exists()
        resolved = await rig.events.until(lambda e: isinstance(e, ApprovalResolved))
        assert isinstance(resolved, ApprovalResolved)
        assert resolved.allowed
        assert resolved.text == "allowed by ann"
        texts = [m.text for m in rig.chat.platform.messages.values()]
        shown = [t for t in texts if "Approval" in t]
        assert len(shown) == 1
        assert f"/concordia approve {approval.approval_id} allow" not in shown[0]  # closed
        assert shown[0].endswith("✅ allowed by ann")
        (row,) = await rig.store.approval_outcomes(rig.party.name)
        assert row[2] == "allowed"
        assert json.loads(row[3]) == [
            {"platform": "memory", "user_id": "ann", "name": "ann", "decision": "allow"}
        ]


async def test_deny_keeps_the_tool_from_running_and_tells_claude(
    fake_api: FakeAnthropic, tmp_path: Path
) -> None:
    async with approval_rig(fake_api, tmp_path) as rig:
        await rig.chat.push_prompt("alice", "TOOL_BASH touch denied.txt")
        approval = await rig.events.approval()
        result = await rig.chat.command("host", "approve", f"{approval.approval_id} deny")
        assert result.ok
        await rig.events.done()
        assert not (rig.workdir / "denied.txt").exists()
        said = fake_api.turns[-1].body["messages"][-1]["content"]
        assert "did not allow this from chat (denied by host)" in json.dumps(said)
        (row,) = await rig.store.approval_outcomes(rig.party.name)
        assert row[2] == "denied"


async def test_always_is_not_asked_again_even_after_a_restart(
    fake_api: FakeAnthropic, tmp_path: Path
) -> None:
    async with approval_rig(fake_api, tmp_path) as rig:
        await rig.chat.push_prompt("alice", "TOOL_BASH touch once.txt")
        approval = await rig.events.approval()
        await rig.chat.command("ann", "approve", f"{approval.approval_id} always")
        await rig.events.done()
        (rig.workdir / "once.txt").unlink()
        after = len(rig.events.seen)
        await rig.chat.push_prompt("alice", "TOOL_BASH touch once.txt")
        await rig.events.done(after)
        assert (rig.workdir / "once.txt").exists()
        assert not any(isinstance(e, ApprovalRequested) for e in rig.events.seen[after:])
        status = await rig.chat.command("alice", "status")
        assert "always allowed: Bash(touch once.txt)" in status.text
    # A new bot over the same store remembers the rule.
    async with approval_rig(fake_api, tmp_path) as rig:
        (rig.workdir / "once.txt").unlink()
        # Source ids count from 1 again in a new adapter: name them, or they are resends.
        await rig.chat.push_prompt("alice", "TOOL_BASH touch once.txt", source_id="r1")
        await rig.events.done()
        assert (rig.workdir / "once.txt").exists()
        assert not any(isinstance(e, ApprovalRequested) for e in rig.events.seen)
        # A different command is still asked; the host can forget the rules.
        await rig.chat.push_prompt("alice", "TOOL_BASH touch other.txt", source_id="r2")
        other = await rig.events.approval()
        assert other.summary == "run `touch other.txt`"
        await rig.chat.command("host", "approve", f"{other.approval_id} deny")
        await rig.events.until(lambda e: isinstance(e, ApprovalResolved))
        refused = await rig.chat.command("alice", "approvals", "reset")
        assert not refused.ok
        reset = await rig.chat.command("host", "approvals", "reset")
        assert reset.text == "forgot 1 always-allow rule(s)"
        outcomes = [o for _, _, o, _ in await rig.store.approval_outcomes(rig.party.name)]
        assert outcomes == ["allowed", "always_rule", "always_rule", "denied"]


async def test_no_decision_in_time_denies(fake_api: FakeAnthropic, tmp_path: Path) -> None:
    async with approval_rig(fake_api, tmp_path, timeout_s=0.5) as rig:
        await rig.chat.push_prompt("alice", "TOOL_BASH touch late.txt")
        approval = await rig.events.approval()
        resolved = await rig.events.until(lambda e: isinstance(e, ApprovalResolved))
        assert isinstance(resolved, ApprovalResolved)
        assert not resolved.allowed
        assert resolved.text == "no decision in 0.5 s: denied"
        await rig.events.done()
        assert not (rig.workdir / "late.txt").exists()
        late = await rig.chat.command("ann", "approve", f"{approval.approval_id} allow")
        assert not late.ok
        assert "not waiting" in late.text
        (row,) = await rig.store.approval_outcomes(rig.party.name)
        assert row[2] == "timed_out"


async def test_quorum_needs_two_distinct_approvers(fake_api: FakeAnthropic, tmp_path: Path) -> None:
    async with approval_rig(fake_api, tmp_path, quorum=2, quorum_tools=["Bash(rm *)"]) as rig:
        (rig.workdir / "victim.txt").write_text("x")
        await rig.chat.push_prompt("alice", "TOOL_BASH rm victim.txt")
        approval = await rig.events.approval()
        assert approval.needed == 2
        first = await rig.chat.command("ann", "approve", f"{approval.approval_id} allow")
        assert first.text == f"counted: 1 of 2 approvals for approval {approval.approval_id}"
        again = await rig.chat.command("ann", "approve", f"{approval.approval_id} always")
        assert not again.ok
        assert "another approver" in again.text
        assert (rig.workdir / "victim.txt").exists()
        second = await rig.chat.command("abe", "approve", f"{approval.approval_id} allow")
        assert second.text == f"allowed approval {approval.approval_id}"
        await rig.events.done()
        assert not (rig.workdir / "victim.txt").exists()
        # A call that does not match quorum_tools needs one approver.
        after = len(rig.events.seen)
        await rig.chat.push_prompt("alice", "TOOL_BASH touch single.txt")
        single = await rig.events.approval(after)
        assert single.needed == 1


async def test_edit_is_described_with_its_diff(fake_api: FakeAnthropic, tmp_path: Path) -> None:
    async with approval_rig(fake_api, tmp_path) as rig:
        target = rig.workdir / "notes.txt"
        target.write_text("keep\nold\n")
        await rig.chat.push_prompt("alice", f"TOOL_EDIT {target.resolve()}")
        approval = await rig.events.approval()
        assert approval.tool == "Edit"
        assert approval.summary == f"edit {target.resolve()}: 1 line(s) → 1 line(s)"
        assert "-old\n+new" in approval.detail
        await rig.chat.command("ann", "approve", f"{approval.approval_id} allow")
        await rig.events.done()
        assert target.read_text() == "keep\nnew\n"


async def test_cancel_while_waiting_denies_and_ends_the_turn(
    fake_api: FakeAnthropic, tmp_path: Path
) -> None:
    async with approval_rig(fake_api, tmp_path) as rig:
        await rig.chat.push_prompt("alice", "TOOL_BASH touch never.txt")
        await rig.events.approval()
        cancelled = await rig.chat.command("alice", "cancel")
        assert cancelled.ok
        done = await rig.events.done()
        assert done.status in (TurnStatus.INTERRUPTED, TurnStatus.SUCCESS)
        assert not (rig.workdir / "never.txt").exists()
        (row,) = await rig.store.approval_outcomes(rig.party.name)
        assert row[2] == "cancelled"
