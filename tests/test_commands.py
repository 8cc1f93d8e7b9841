"""bot.commands: the command table against a fake party, and the shell queue with a real shell
and store (no Claude)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from bot.commands import COMMANDS, HOST_ONLY, Overview, ShellQueue, dispatch
from bot.model import (
    Author,
    Batch,
    Command,
    CommandResult,
    Decision,
    Notice,
    PartyEvent,
    Role,
    ShellOutcome,
    SourcePrompt,
)
from bot.shell import ShellRunner
from bot.spend import PERIODS, SpendReport
from bot.store import ShellRun, Store

PARTY = "p1"
ALICE = Author("ws", "u-alice", "alice")
HOST = Author("ws", "u-host", "host")
MALLORY = Author("ws", "u-mallory", "mallory")
ROLES = {ALICE: Role.PROMPTER, HOST: Role.HOST}


def _batch(batch_id: int = 4) -> Batch:
    sources = (SourcePrompt(1, "alice", "a"), SourcePrompt(2, "bob", "b"))
    return Batch(batch_id, "merged", sources, ())


class FakeShells:
    """The part of `ShellQueue` the table uses, for tests that do not run anything."""

    def __init__(self, allowed_users: tuple[str, ...] = (), runs: tuple[ShellRun, ...] = ()):
        self.allowed_users = allowed_users
        self.runs = runs
        self.running_for: str | None = None
        self.is_stopped = False

    def stop(self) -> str | None:
        self.is_stopped = self.running_for is not None
        return self.running_for

    async def recent(self, limit: int) -> tuple[ShellRun, ...]:
        return self.runs[:limit]


class FakeSpend:
    """A party that has spent nothing yet (the spend itself is tested in test_spend.py)."""

    async def today(self) -> float:
        return 0.0

    async def report(self, member: Author, *, everyone: bool) -> SpendReport:
        nothing = dict.fromkeys(PERIODS, 0.0)
        return SpendReport(nothing, dict.fromkeys(PERIODS, ()) if everyone else {}, nothing)


@dataclass(eq=False)
class FakeParty:
    """A `CommandTarget` that records what the commands asked of it."""

    name: str = PARTY
    agent_name: str = "Claude"
    shells: ShellQueue | FakeShells | None = None
    running: Batch | None = None
    is_ready: bool = True
    restarts: int = 0
    pending: tuple[SourcePrompt, ...] = ()
    rules: list[str] = field(default_factory=list)
    queued: dict[Author, list[int]] = field(default_factory=dict)
    asked: list[str] = field(default_factory=list)
    link: str = ""
    members: dict[Author, Role] = field(default_factory=lambda: dict(ROLES))

    def role_of(self, author: Author) -> Role | None:
        return self.members.get(author)

    def chat_safe(self, text: str) -> str:
        return text.replace("SECRET", "[redacted]")

    @property
    def spend(self) -> FakeSpend:
        return FakeSpend()

    async def overview(self) -> Overview:
        return Overview(
            running=self.running,
            is_ready=self.is_ready,
            restarts=self.restarts,
            pending=self.pending,
            last_turn_age_s=None,
            merger="local",
            participants=len(self.members),
            metrics=("prompts: 0 accepted",),
        )

    def approval_rules(self) -> list[str]:
        return sorted(self.rules)

    async def forget_approval_rules(self) -> int:
        cleared, self.rules = len(self.rules), []
        return cleared

    async def decide(self, approval_id: int, author: Author, decision: Decision) -> CommandResult:
        self.asked.append(f"decide {approval_id} {author.name} {decision}")
        return CommandResult("approve", True, f"{decision} approval {approval_id}")

    def interrupt_turn(self) -> int | None:
        if self.running is None:
            return None
        self.asked.append("interrupt")
        return self.running.batch_id

    async def withdraw_latest(self, author: Author) -> int | None:
        mine = self.queued.get(author, [])
        return mine.pop() if mine else None

    def restart(self, *, fresh: bool) -> bool:
        self.asked.append(f"restart fresh={fresh}")
        return self.running is not None

    async def invite_token(self, *, rotate: bool) -> str:
        self.asked.append(f"invite rotate={rotate}")
        return "T-new" if rotate else "T-old"

    async def join_link(self) -> str:
        return self.link

    async def leave(self, author: Author) -> None:
        self.members.pop(author)


async def run(party: FakeParty, author: Author, name: str, args: str = "") -> CommandResult:
    return await dispatch(party, Command(name, args, author))


# --------------------------------------------------------------------------- the table


async def test_only_members_may_use_commands() -> None:
    party = FakeParty()
    for name in COMMANDS:
        result = await run(party, MALLORY, name)
        assert (result.ok, result.text) == (False, "you have not joined this party")
    assert party.asked == []


@pytest.mark.parametrize("name", sorted(HOST_ONLY))
async def test_host_only_commands_refuse_others(name: str) -> None:
    party = FakeParty()
    result = await run(party, ALICE, name)
    assert (result.ok, result.text) == (False, f"`{name}` is for the host only")
    assert party.asked == []


async def test_an_unknown_command_lists_the_known_ones_in_order() -> None:
    result = await run(FakeParty(), ALICE, "frobnicate")
    assert not result.ok
    assert result.text == (
        "unknown command `frobnicate`; try one of: status, queue, cost, budget, cancel, shell, "
        "approve, answer, approvals, leave, invite, restart, new"
    )


# --------------------------------------------------------------------------- status and queue


@pytest.mark.parametrize(
    ("running", "is_ready", "restarts", "state"),
    [
        (None, True, 0, "idle"),
        (_batch(4), True, 0, "running batch 4"),
        (None, False, 0, "starting"),
        (_batch(4), False, 2, "restarting"),
    ],
)
async def test_status_says_what_claude_is_doing(
    running: Batch | None, is_ready: bool, restarts: int, state: str
) -> None:
    party = FakeParty(running=running, is_ready=is_ready, restarts=restarts, rules=["Read"])
    result = await run(party, ALICE, "status")
    assert result.ok
    assert result.text.splitlines() == [
        f"party p1: Claude is {state}; 0 prompt(s) queued; no turn yet",
        f"restarts: {restarts}; merger: local; participants: 2; spent today: $0.00",
        "prompts: 0 accepted",
        "shell: off",
        "always allowed: Read",
    ]


async def test_status_lists_the_last_shell_runs_safely() -> None:
    def ran(outcome: ShellOutcome | None, code: int | None, command: str = "make") -> ShellRun:
        return ShellRun(1, "alice", command, "2026-12-01T10:00:00.123+00:00", outcome, code, 1.25)

    runs = (
        ran(None, None),
        ran(ShellOutcome.FAILED, None),
        ran(ShellOutcome.EXITED, 2, "echo SECRET " + "x" * 100),
        ran(ShellOutcome.TIMED_OUT, -9),
        ran(ShellOutcome.CANCELLED, -15),
    )
    party = FakeParty(shells=FakeShells(runs=runs))
    lines = (await run(party, ALICE, "status")).text.splitlines()
    shell = lines[lines.index("last shell commands:") + 1 :]
    assert shell == [
        "  2026-12-01T10:00:00 alice: `make` never finished",
        "  2026-12-01T10:00:00 alice: `make` could not start",
        f"  2026-12-01T10:00:00 alice: `echo [redacted] {'x' * 64}` exit 2 in 1.2 s",
        "always allowed: nothing",
    ], "only the last three runs are listed"
    party = FakeParty(shells=FakeShells(runs=runs[3:]))
    text = (await run(party, ALICE, "status")).text
    assert "`make` timed out -9 in 1.2 s" in text
    assert "`make` cancelled -15 in 1.2 s" in text
    party = FakeParty(shells=FakeShells())
    assert "shell: on; no command run yet" in (await run(party, ALICE, "status")).text


async def test_queue_shows_the_running_batch_and_who_waits() -> None:
    long = "word " * 40
    pending = (SourcePrompt(7, "alice", "fix\n  the   tests"), SourcePrompt(8, "bob", long))
    party = FakeParty(running=_batch(3), pending=pending)
    result = await run(party, HOST, "queue")
    assert result.ok
    assert result.text.splitlines() == [
        "running: batch 3 for alice, bob",
        "#7 alice: fix the tests",
        f"#8 bob: {' '.join(['word'] * 40)[:79]}…",
    ]
    assert (await run(FakeParty(), HOST, "queue")).text == "nobody is waiting"


# --------------------------------------------------------------------------- cancel


async def test_cancel_interrupts_the_running_turn_first() -> None:
    shells = FakeShells()
    shells.running_for = "bob"
    party = FakeParty(running=_batch(5), shells=shells, queued={ALICE: [9]})
    result = await run(party, ALICE, "cancel")
    assert (result.ok, result.text) == (True, "interrupting batch 5")
    assert party.asked == ["interrupt"]
    assert not shells.is_stopped
    assert party.queued[ALICE] == [9]


async def test_cancel_stops_a_running_shell_command_when_claude_is_idle() -> None:
    shells = FakeShells()
    shells.running_for = "bob"
    party = FakeParty(shells=shells, queued={ALICE: [9]})
    result = await run(party, ALICE, "cancel")
    assert (result.ok, result.text) == (True, "stopping bob's shell command")
    assert shells.is_stopped
    assert party.queued[ALICE] == [9]


async def test_cancel_mine_withdraws_even_while_a_turn_runs() -> None:
    party = FakeParty(running=_batch(5), queued={ALICE: [8, 9]})
    result = await run(party, ALICE, "cancel", " mine ")
    assert (result.ok, result.text) == (True, "withdrew your prompt #9")
    assert party.asked == []
    nothing = await run(FakeParty(), ALICE, "cancel")
    assert (nothing.ok, nothing.text) == (False, "nothing is running and you have nothing queued")


# --------------------------------------------------------------------------- approvals


@pytest.mark.parametrize("args", ["", "12", "x allow", "12 maybe", "-1 allow"])
async def test_approve_needs_an_id_and_a_decision(args: str) -> None:
    party = FakeParty()
    result = await run(party, HOST, "approve", args)
    assert (result.ok, result.text) == (False, "usage: approve <approval id> allow|always|deny")
    assert party.asked == []


async def test_approve_passes_the_decision_on() -> None:
    party = FakeParty()
    result = await run(party, HOST, "approve", " 12  always ")
    assert (result.ok, result.text) == (True, "always approval 12")
    assert party.asked == ["decide 12 host always"]


async def test_approvals_lists_rules_and_only_the_host_resets_them() -> None:
    party = FakeParty(rules=["Bash(make test)", "Read"])
    listed = await run(party, ALICE, "approvals")
    assert listed.text == "always allowed in this party:\n  Bash(make test)\n  Read"
    refused = await run(party, ALICE, "approvals", "reset")
    assert (refused.ok, refused.text) == (False, "`approvals reset` is for the host only")
    assert party.rules
    reset = await run(party, HOST, "approvals", "reset")
    assert (reset.ok, reset.text) == (True, "forgot 2 always-allow rule(s)")
    assert (await run(party, ALICE, "approvals")).text == "always allowed in this party:\n  none"


# ------------------------------------------------------------- membership, invite, restart


async def test_leave_ends_membership() -> None:
    party = FakeParty()
    assert (await run(party, ALICE, "leave")).text == "you left the party"
    assert party.role_of(ALICE) is None


async def test_invite_shows_or_rotates_the_prompter_token() -> None:
    party = FakeParty()
    assert (await run(party, HOST, "invite")).text == "invite token: T-old"
    rotated = await run(party, HOST, "invite", "rotate")
    assert rotated.text == "new invite token: T-new (the old one no longer works)"
    assert party.asked == ["invite rotate=False", "invite rotate=True"]


async def test_the_host_sees_the_join_link_in_invite_and_status_and_nobody_else() -> None:
    party = FakeParty(link="https://abc.ngrok.app/#T-old")
    assert (await run(party, HOST, "invite")).text.endswith("\nlink: https://abc.ngrok.app/#T-old")
    assert "https://abc.ngrok.app/#T-old" in (await run(party, HOST, "status")).text
    assert "ngrok" not in (await run(party, ALICE, "status")).text


@pytest.mark.parametrize(
    ("name", "running", "text"),
    [
        ("restart", None, "restarting Claude"),
        ("new", None, "a fresh Claude conversation"),
        ("restart", _batch(), "restarting Claude after the running turn is interrupted"),
        ("new", _batch(), "a fresh Claude conversation after the running turn is interrupted"),
    ],
)
async def test_restart_and_new_are_handed_to_the_runner(
    name: str, running: Batch | None, text: str
) -> None:
    party = FakeParty(running=running)
    result = await run(party, HOST, name)
    assert (result.ok, result.text) == (True, text)
    assert party.asked == [f"restart fresh={name == 'new'}"]


# --------------------------------------------------------------------------- the shell queue


@dataclass(eq=False)
class ShellDesk:
    queue: ShellQueue
    party: FakeParty
    store: Store
    events: list[PartyEvent]
    wake: asyncio.Event
    workdir: Path


@pytest.fixture
async def desk(tmp_path: Path) -> AsyncIterator[ShellDesk]:
    workdir = tmp_path / "work"
    workdir.mkdir()
    events: list[PartyEvent] = []
    wake = asyncio.Event()
    party = FakeParty()
    async with Store(tmp_path / "state" / "x.db") as store:
        await store.ensure_party(PARTY)
        queue = ShellQueue(
            ShellRunner(workdir=workdir, timeout_s=10.0, max_output_chars=2000),
            allowed_users=("ws:u-alice", "ws:u-host"),
            party=PARTY,
            store=store,
            publish=events.append,
            chat_safe=party.chat_safe,
            wake=wake,
            busy_with=lambda: None if party.running is None else party.running.batch_id,
        )
        party.shells = queue
        yield ShellDesk(queue, party, store, events, wake, workdir)


async def test_the_shell_is_refused_when_off_or_not_allowed(desk: ShellDesk) -> None:
    off = await run(FakeParty(), HOST, "shell", "touch made")
    assert (off.ok, off.text) == (False, "the shell command is off for this party")
    desk.party.members[MALLORY] = Role.APPROVER
    unlisted = await run(desk.party, MALLORY, "shell", "touch made")
    assert (unlisted.ok, unlisted.text) == (False, "you may not run shell commands here")
    # A WebSocket name is the client's own claim: it counts only with the host's token.
    named = Author("ws", "u-alice", "alice", is_verified=False)
    desk.party.members[named] = Role.PROMPTER
    claimed = await run(desk.party, named, "shell", "touch made")
    assert (claimed.ok, claimed.text) == (False, "you may not run shell commands here")
    refused = await run(desk.party, ALICE, "shell", "echo one\necho two")
    assert not refused.ok
    assert refused.text.startswith("refused: ")
    assert not desk.wake.is_set(), "nothing was queued"
    assert not (desk.workdir / "made").exists()
    assert await desk.store.recent_shell_runs(PARTY, 5) == []


async def test_a_queued_command_runs_only_when_the_runner_drains_the_queue(
    desk: ShellDesk,
) -> None:
    desk.party.running = _batch(6)
    asked = asyncio.create_task(run(desk.party, ALICE, "shell", "  echo SECRET; exit 3  "))
    await desk.wake.wait()
    assert desk.events == [Notice("alice's shell command waits for batch 6 to end")]
    assert await desk.store.recent_shell_runs(PARTY, 5) == [], "it ran during the turn"

    await desk.queue.run_queued()
    result = await asked
    assert (result.ok, result.public) == (False, True)
    assert result.text.startswith("```\n$ echo [redacted]; exit 3\n[redacted]\n```\nexit 3 in ")
    assert isinstance(desk.events[-1], Notice)
    assert desk.events[-1].message.startswith("alice ran `echo [redacted]; exit 3` on the host")
    (recorded,) = await desk.store.recent_shell_runs(PARTY, 5)
    assert (recorded.command, recorded.outcome, recorded.exit_code) == (
        "echo SECRET; exit 3",
        "exited",
        3,
    )


async def test_a_caller_that_goes_away_withdraws_its_command(desk: ShellDesk) -> None:
    asked = asyncio.create_task(run(desk.party, ALICE, "shell", "touch made"))
    await desk.wake.wait()
    asked.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asked
    await desk.queue.run_queued()
    assert not (desk.workdir / "made").exists()
    assert await desk.store.recent_shell_runs(PARTY, 5) == []
    assert desk.queue.stop() is None
