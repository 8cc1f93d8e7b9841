"""The /concordia command console: a table from command name to handler, the chat text each
one answers with, and the queue of shell commands waiting for a pause between turns.

Invariant: a command never drives Claude or touches the runner's state itself; it asks the
party through `CommandTarget` (cancel and restart are applied by the runner, shell commands
run when the runner calls `ShellQueue.run_queued`), so the runner stays the only writer to
Claude and nothing runs on the host during a turn.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol, assert_never

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
from bot.render import shell_output
from bot.shell import ShellDenied, ShellRunner
from bot.spend import PERIODS, SpendBook
from bot.store import ShellRun, Store

__all__ = ["COMMANDS", "HOST_ONLY", "CommandTarget", "Overview", "ShellQueue", "dispatch"]

log = logging.getLogger(__name__)

HOST_ONLY = frozenset({"invite", "restart", "new"})
_STATUS_SHELL_RUNS = 3
_PREVIEW_CHARS = 80  # a queued prompt's first line in `queue`
_SHELL_COMMAND_CHARS = 80  # a shell command in `status`


@dataclass(frozen=True, slots=True)
class Overview:
    """A party at one moment, as `status` and `queue` show it."""

    running: Batch | None  # the batch Claude is answering now
    is_ready: bool  # Claude is up, not starting or restarting
    restarts: int  # unplanned restarts of Claude so far
    pending: tuple[SourcePrompt, ...]  # queued prompts, oldest first
    last_turn_age_s: float | None  # since the last turn ended; None before the first
    merger: str  # how prompts are merged, in a few words
    participants: int
    metrics: tuple[str, ...]  # lines of counters and timings
    held_until: datetime | None = None  # the API refused a turn: the queue waits until then
    agent_running: bool = True  # False while the agent is stopped for want of use
    agent: str = "Claude"  # the agent in a few words (`AgentSettings.describe`)
    has_approvals: bool = True  # False on a driver that never asks before acting


class CommandTarget(Protocol):
    """What a command may ask of a party; `bot.party.Party` implements it.

    Reads: who is who, the overview, the standing rules. Acts: each one either finishes at
    once or is handed to the runner (interrupt, restart, the shell queue), never done here.
    """

    @property
    def name(self) -> str: ...

    @property
    def agent_name(self) -> str:
        """What messages call the agent ("Claude", "Codex")."""
        ...

    @property
    def shells(self) -> ShellQueue | None:
        """The party's shell command queue; None when the shell is off."""
        ...

    @property
    def spend(self) -> SpendBook:
        """What the party's turns cost, and who spent it."""
        ...

    def role_of(self, author: Author) -> Role | None: ...

    def chat_safe(self, text: str) -> str: ...

    async def overview(self) -> Overview: ...

    def approval_rules(self) -> list[str]: ...

    async def forget_approval_rules(self) -> int: ...

    async def answer(self, question_id: int, author: Author, text: str) -> CommandResult: ...

    async def decide(
        self, approval_id: int, author: Author, decision: Decision
    ) -> CommandResult: ...

    def interrupt_turn(self) -> int | None:
        """Have the runner interrupt the running turn; its batch id, or None when idle."""
        ...

    async def withdraw_latest(self, author: Author) -> int | None: ...

    def restart(self, *, fresh: bool) -> bool:
        """Have the runner restart Claude; True when a running turn is interrupted first."""
        ...

    async def invite_token(self, *, rotate: bool) -> str: ...

    async def join_link(self) -> str:
        """The prompter's link to the party ("" when it is joined from chat only)."""
        ...

    async def leave(self, author: Author) -> None: ...


_Handler = Callable[[CommandTarget, Command, Role], Awaitable[CommandResult]]


async def dispatch(target: CommandTarget, command: Command) -> CommandResult:
    """Run a participant's command; the answer is one short text fit for chat.

    Refuses non-members, host-only commands from others and unknown names; otherwise the
    handler of ``command.name`` answers."""
    role = target.role_of(command.author)
    name = command.name
    if role is None:
        return CommandResult(name, False, "you have not joined this party")
    if name in HOST_ONLY and role is not Role.HOST:
        return CommandResult(name, False, f"`{name}` is for the host only")
    handler = _HANDLERS.get(name)
    if handler is None:
        known = ", ".join(COMMANDS)
        return CommandResult(name, False, f"unknown command `{name}`; try one of: {known}")
    return await handler(target, command, role)


async def _status(target: CommandTarget, command: Command, role: Role) -> CommandResult:
    seen = await target.overview()
    shells = target.shells
    runs = None if shells is None else await shells.recent(_STATUS_SHELL_RUNS)
    state = f"running batch {seen.running.batch_id}" if seen.running else "idle"
    if not seen.agent_running and seen.running is None:
        state = "not running (it starts with the next prompt, in the same conversation)"
    elif not seen.is_ready:
        state = "starting" if not seen.restarts else "restarting"
    if seen.held_until is not None:
        until = seen.held_until.astimezone().strftime("%H:%M:%S")
        state = f"holding the queue until {until} (its API refused the last turn)"
    if seen.last_turn_age_s is None:
        last = "no turn yet"
    else:
        last = f"last turn ended {seen.last_turn_age_s:.0f} s ago"
    lines = [
        f"party {target.name}: {seen.agent} is {state}; {len(seen.pending)} prompt(s) queued; "
        f"{last}",
        f"restarts: {seen.restarts}; merger: {seen.merger}; participants: {seen.participants}; "
        f"spent today: ${await target.spend.today():.2f}",
        *seen.metrics,
        *_shell_lines(target, runs),
        f"always allowed: {', '.join(target.approval_rules()) or 'nothing'}"
        if seen.has_approvals
        else "approvals: not available on this driver (the agent never asks before it acts)",
    ]
    if role is Role.HOST and (link := await target.join_link()):
        lines.append(f"join link (give it to teammates only): {link}")
    return CommandResult(command.name, True, "\n".join(lines))


def _shell_lines(target: CommandTarget, runs: tuple[ShellRun, ...] | None) -> list[str]:
    if runs is None:
        return ["shell: off"]
    if not runs:
        return ["shell: on; no command run yet"]
    lines = ["last shell commands:"]
    for run in runs:
        shown = target.chat_safe(run.command)[:_SHELL_COMMAND_CHARS]
        lines.append(f"  {run.started_at[:19]} {run.name}: `{shown}` {_ended(run)}")
    return lines


def _ended(run: ShellRun) -> str:
    match run.outcome:
        case None:
            return "never finished"
        case ShellOutcome.FAILED:
            return "could not start"
        case ShellOutcome.EXITED:
            word = "exit"
        case ShellOutcome.TIMED_OUT:
            word = "timed out"
        case ShellOutcome.CANCELLED:
            word = "cancelled"
        case _:
            assert_never(run.outcome)
    return f"{word} {run.exit_code} in {run.duration_s or 0.0:.1f} s"


async def _cost(target: CommandTarget, command: Command, role: Role) -> CommandResult:
    """Your own spend per period; the host also sees the party's and everyone's today."""
    is_host = role is Role.HOST
    report = await target.spend.report(command.author, everyone=is_host)
    lines = [f"your spend: {_per_period(report.mine)}"]
    if is_host:
        lines.append(f"party {target.name}: {_per_period(report.party)}")
        today = ", ".join(f"{s.name} ${s.cost_usd:.2f}" for s in report.members["today"])
        lines.append(f"today by member: {today or 'nobody yet'}")
    return CommandResult(command.name, True, "\n".join(lines))


async def _budget(target: CommandTarget, command: Command, role: Role) -> CommandResult:
    """The daily budgets and today's spend; `budget lift` (host) lets the party go on today."""
    if command.args.strip() == "lift":
        if role is not Role.HOST:
            return CommandResult(command.name, False, "`budget lift` is for the host only")
        target.spend.lift()
        return CommandResult(
            command.name, True, "the party's budget is lifted for today", public=True
        )
    return CommandResult(command.name, True, await target.spend.describe_budget())


def _per_period(spent: dict[str, float]) -> str:
    return " · ".join(f"{period} ${spent[period]:.2f}" for period in PERIODS)


async def _queue(target: CommandTarget, command: Command, role: Role) -> CommandResult:
    seen = await target.overview()
    lines = []
    if seen.running:
        lines.append(
            f"running: batch {seen.running.batch_id} for {', '.join(seen.running.authors)}"
        )
    if not seen.pending:
        lines.append("nobody is waiting")
    for source in seen.pending:
        lines.append(f"#{source.prompt_id} {source.author}: {_preview(source.text)}")
    return CommandResult(command.name, True, "\n".join(lines))


async def _cancel(target: CommandTarget, command: Command, role: Role) -> CommandResult:
    """`cancel` interrupts the running turn (or shell command; when idle, it withdraws your
    newest queued prompt); `cancel mine` always withdraws your newest queued prompt."""
    if command.args.strip() != "mine":
        batch_id = target.interrupt_turn()
        if batch_id is not None:
            return CommandResult("cancel", True, f"interrupting batch {batch_id}")
        who = None if target.shells is None else target.shells.stop()
        if who is not None:
            return CommandResult("cancel", True, f"stopping {who}'s shell command")
    withdrawn = await target.withdraw_latest(command.author)
    if withdrawn is None:
        return CommandResult("cancel", False, "nothing is running and you have nothing queued")
    return CommandResult("cancel", True, f"withdrew your prompt #{withdrawn}")


async def _shell(target: CommandTarget, command: Command, role: Role) -> CommandResult:
    """Check a shell command and wait for the runner to run it between turns.

    The answer (the fenced output) is public; everyone also gets a one-line notice.
    """
    shells = target.shells
    if shells is None:
        return CommandResult("shell", False, "the shell command is off for this party")
    author = command.author
    allowed = f"{author.platform}:{author.user_id}" in shells.allowed_users
    # A name the client chose (WebSocket) counts only with the host token.
    if not allowed or (not author.is_verified and role is not Role.HOST):
        return CommandResult("shell", False, "you may not run shell commands here")
    try:
        return await shells.submit(command.args, author)
    except ShellDenied as exc:
        return CommandResult("shell", False, f"refused: {exc}")


async def _approve(target: CommandTarget, command: Command, role: Role) -> CommandResult:
    approval_id, _, decision = command.args.strip().partition(" ")
    if not approval_id.isdigit() or decision.strip() not in set(Decision):
        return CommandResult(command.name, False, "usage: approve <approval id> allow|always|deny")
    return await target.decide(int(approval_id), command.author, Decision(decision.strip()))


async def _answer(target: CommandTarget, command: Command, role: Role) -> CommandResult:
    question_id, _, text = command.args.strip().partition(" ")
    if not question_id.isdigit() or not text.strip():
        return CommandResult(
            command.name, False, "usage: answer <question id> <option number, label or your words>"
        )
    return await target.answer(int(question_id), command.author, text)


async def _approvals(target: CommandTarget, command: Command, role: Role) -> CommandResult:
    if command.args.strip() == "reset":
        if role is not Role.HOST:
            return CommandResult(command.name, False, "`approvals reset` is for the host only")
        cleared = await target.forget_approval_rules()
        return CommandResult(command.name, True, f"forgot {cleared} always-allow rule(s)")
    rules = target.approval_rules()
    listed = "\n".join(f"  {r}" for r in rules) if rules else "  none"
    return CommandResult(command.name, True, f"always allowed in this party:\n{listed}")


async def _leave(target: CommandTarget, command: Command, role: Role) -> CommandResult:
    await target.leave(command.author)
    return CommandResult(command.name, True, "you left the party")


async def _invite(target: CommandTarget, command: Command, role: Role) -> CommandResult:
    if command.args.strip() == "rotate":
        token = await target.invite_token(rotate=True)
        said = f"new invite token: {token} (the old one no longer works)"
    else:
        said = f"invite token: {await target.invite_token(rotate=False)}"
    if link := await target.join_link():
        said += f"\nlink: {link}"
    return CommandResult("invite", True, said)


async def _restart(target: CommandTarget, command: Command, role: Role) -> CommandResult:
    what = f"restarting {target.agent_name}"
    return _restarting(command.name, target.restart(fresh=False), what)


async def _new(target: CommandTarget, command: Command, role: Role) -> CommandResult:
    what = f"a fresh {target.agent_name} conversation"
    return _restarting(command.name, target.restart(fresh=True), what)


def _restarting(name: str, is_interrupting: bool, what: str) -> CommandResult:
    when = " after the running turn is interrupted" if is_interrupting else ""
    return CommandResult(name, True, f"{what}{when}")


@dataclass(slots=True, eq=False)
class _ShellRequest:
    """A checked shell command waiting for the runner, and where its answer goes."""

    command: str
    author: Author
    answer: asyncio.Future[CommandResult]
    cancel: asyncio.Event = field(default_factory=asyncio.Event)


class ShellQueue:
    """Shell commands from chat, waiting to run on the host one at a time, between turns.

    `submit`, `stop` and `recent` may be called from any task; `run_queued` only by the
    party's runner, while Claude is idle. Each run is recorded before it starts and when it
    ends, and everyone gets a one-line notice of it; its output is the caller's answer.
    """

    def __init__(
        self,
        runner: ShellRunner,
        *,
        allowed_users: Collection[str],
        party: str,
        store: Store,
        publish: Callable[[PartyEvent], None],
        chat_safe: Callable[[str], str],
        wake: asyncio.Event,
        busy_with: Callable[[], int | None],
        observe: Callable[[ShellOutcome], None] = lambda outcome: None,
    ) -> None:
        """``wake`` is the runner's wake-up event; ``busy_with`` the batch it is running;
        ``observe`` hears how each run ended (the metrics)."""
        self.allowed_users = allowed_users  # platform:user_id
        self._runner = runner
        self._party = party
        self._store = store
        self._publish = publish
        self._chat_safe = chat_safe
        self._wake = wake
        self._busy_with = busy_with
        self._observe = observe
        self._queue: collections.deque[_ShellRequest] = collections.deque()
        self._running: _ShellRequest | None = None  # written by `run_queued` only

    async def submit(self, command: str, author: Author) -> CommandResult:
        """Queue ``command`` for the runner and wait for its answer (public: the output).

        Raises `ShellDenied`, with nothing queued, when the command is refused. Cancelling
        the caller withdraws the command, or stops it if it already runs."""
        self._runner.check(command)
        request = _ShellRequest(command.strip(), author, asyncio.get_running_loop().create_future())
        self._queue.append(request)
        self._wake.set()
        batch_id = self._busy_with()
        if batch_id is not None:
            self._publish(
                Notice(f"{author.name}'s shell command waits for batch {batch_id} to end")
            )
        try:
            return await request.answer
        except asyncio.CancelledError:
            request.cancel.set()  # the caller is gone: do not start it, or stop it
            raise

    def stop(self) -> str | None:
        """Stop the command running now; the name of who started it, or None."""
        if self._running is None:
            return None
        self._running.cancel.set()
        return self._running.author.name

    async def recent(self, limit: int) -> tuple[ShellRun, ...]:
        """The party's last ``limit`` runs, newest first."""
        return tuple(await self._store.recent_shell_runs(self._party, limit))

    async def run_queued(self) -> None:
        """Run the queued commands one by one; for the runner, between turns only."""
        while self._queue:
            request = self._queue.popleft()
            if request.answer.done() or request.cancel.is_set():
                continue
            self._running = request
            try:
                request.answer.set_result(await self._run(request))
            finally:
                self._running = None
                if not request.answer.done():  # the runner itself was cancelled
                    request.answer.cancel()

    async def _run(self, request: _ShellRequest) -> CommandResult:
        command, author = request.command, request.author
        run_id = await self._store.start_shell_run(self._party, author, command)
        shown = self._chat_safe(command)
        log.info("%s runs a shell command", author.name, extra={"party": self._party})
        try:
            result = await self._runner.run(command, cancel=request.cancel)
        except (ShellDenied, OSError) as exc:
            await self._store.finish_shell_run(run_id, ShellOutcome.FAILED, None, 0.0)
            self._observe(ShellOutcome.FAILED)
            return CommandResult(
                "shell", False, self._chat_safe(f"could not run `{command}`: {exc}")
            )
        await self._store.finish_shell_run(
            run_id, result.outcome, result.exit_code, result.duration_s
        )
        self._observe(result.outcome)
        self._publish(Notice(f"{author.name} ran `{shown}` on the host: {result.summary}"))
        text = shell_output(command, result.output, result.summary)
        return CommandResult("shell", result.exit_code == 0, self._chat_safe(text), public=True)


def _preview(text: str, limit: int = _PREVIEW_CHARS) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


# In the order `unknown command` lists them.
_HANDLERS: dict[str, _Handler] = {
    "status": _status,
    "queue": _queue,
    "cost": _cost,
    "budget": _budget,
    "cancel": _cancel,
    "shell": _shell,
    "approve": _approve,
    "answer": _answer,
    "approvals": _approvals,
    "leave": _leave,
    "invite": _invite,
    "restart": _restart,
    "new": _new,
}
COMMANDS = tuple(_HANDLERS)
