"""Tool approvals through a party served by `bot.app.App`: who may decide, how many must
agree, what is kept.

The flow (roles, quorum, rules, timeouts, cancel) runs on the `FakeAgent`, whose
``TOOL_BASH <command>`` asks for Bash and runs the command once allowed. The tests about the
real `claude` CLI (marked `claude`) use `FakeAnthropic`, which answers ``TOOL_BASH <command>``
with a Bash tool_use and ``TOOL_EDIT <path>`` with a Read then an Edit; the CLI asks
permission (``can_use_tool``) for what its own rules do not allow, and the party decides
from chat.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from bot.model import (
    ApprovalRequested,
    ApprovalResolved,
    Decision,
    Role,
    TurnStatus,
)
from tests.conftest import make_settings
from tests.fakes.anthropic_api import FakeAnthropic
from tests.rigs import Rig, open_rig

pytestmark = [pytest.mark.timeout(90)]


@contextlib.asynccontextmanager
async def approval_rig(
    tmp_path: Path, api: FakeAnthropic | None = None, **approvals: Any
) -> AsyncIterator[Rig]:
    """The party with alice (prompter), host, and the approvers ann and abe joined; on the
    real CLI with ``api``, else on the fake agent."""
    overrides = {"approvals": approvals} if approvals else {}
    settings = make_settings(tmp_path, api, **overrides)
    async with open_rig(settings, api) as rig:
        assert await rig.chat.join("alice", rig.invites.prompter)
        assert await rig.chat.join("host", rig.invites.host)
        for name in ("ann", "abe"):
            assert await rig.chat.join(name, await rig.book.mint_extra(Role.APPROVER))
        yield rig


@pytest.mark.claude
async def test_allow_runs_the_tool_and_the_thread_shows_the_request(
    fake_api: FakeAnthropic, tmp_path: Path
) -> None:
    async with approval_rig(tmp_path, fake_api) as rig:
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


@pytest.mark.claude
async def test_deny_keeps_the_tool_from_running_and_tells_claude(
    fake_api: FakeAnthropic, tmp_path: Path
) -> None:
    async with approval_rig(tmp_path, fake_api) as rig:
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


async def test_always_is_not_asked_again_even_after_a_restart(tmp_path: Path) -> None:
    async with approval_rig(tmp_path) as rig:
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
    async with approval_rig(tmp_path) as rig:
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


async def test_no_decision_in_time_denies(tmp_path: Path) -> None:
    async with approval_rig(tmp_path, timeout_s=0.5) as rig:
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


async def test_quorum_needs_two_distinct_approvers(tmp_path: Path) -> None:
    async with approval_rig(tmp_path, quorum=2, quorum_tools=["Bash(rm *)"]) as rig:
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


@pytest.mark.claude
async def test_edit_is_described_with_its_diff(fake_api: FakeAnthropic, tmp_path: Path) -> None:
    async with approval_rig(tmp_path, fake_api) as rig:
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


async def test_cancel_while_waiting_denies_and_ends_the_turn(tmp_path: Path) -> None:
    async with approval_rig(tmp_path) as rig:
        await rig.chat.push_prompt("alice", "TOOL_BASH touch never.txt")
        await rig.events.approval()
        cancelled = await rig.chat.command("alice", "cancel")
        assert cancelled.ok
        done = await rig.events.done()
        assert done.status in (TurnStatus.INTERRUPTED, TurnStatus.SUCCESS)
        assert not (rig.workdir / "never.txt").exists()
        (row,) = await rig.store.approval_outcomes(rig.party.name)
        assert row[2] == "cancelled"
