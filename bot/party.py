"""Party: the people sharing one agent session, their queue, and the one runner.

Only the runner task writes to the agent (a `bot.agent.AgentSession`: Claude, in a run,
kept up only while used by `bot.on_demand.OnDemandAgent`).
Everyone else (adapters submitting prompts, commands such as cancel or restart) asks it
through the store, its wake-up event and its control queue. Every accepted prompt is in
SQLite before `submit` returns, and the runner resumes whatever a previous process left
pending or in flight. The /concordia commands are `bot.commands`; they reach the party
only through the methods of `bot.commands.CommandTarget`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import assert_never

from bot import ConcordiaError, commands
from bot.agent import (
    Outage,
    PlanRequest,
    QuestionRequest,
    SessionDied,
    SessionError,
    TextDelta,
    ToolRequest,
    ToolUse,
    TurnEnd,
)
from bot.approvals import Approvals
from bot.commands import Overview, ShellQueue
from bot.config import Settings
from bot.images import check_image
from bot.invite import InviteBook
from bot.lifecycle import first_of
from bot.merge import Merger
from bot.metrics import Metrics
from bot.model import (
    ApprovalRequested,
    Author,
    Batch,
    BatchDone,
    BatchStarted,
    Command,
    CommandResult,
    Decision,
    Listener,
    Notice,
    OutputText,
    PartyEvent,
    Prompt,
    QuestionAsked,
    Rejected,
    RejectKind,
    Role,
    SourcePrompt,
    Submission,
    TurnStatus,
)
from bot.on_demand import OnDemandAgent
from bot.pace import AttemptThrottle, Backoff, MemberPace, OutageHold
from bot.questions import Questions
from bot.render import outage_notice
from bot.safety import (
    ChatSafeStream,
    Redactor,
    UnsafeInput,
    clean_name,
    neutralize_mentions,
    sanitize_prompt,
    strip_controls,
)
from bot.shell import ShellRunner
from bot.spend import SpendBook
from bot.store import Participant, StaleSources, Store

__all__ = ["Party"]

log = logging.getLogger(__name__)

# Said to Claude when a batch is sent again after the process or the bot died mid-turn.
_RERUN_NOTE = (
    "(This request is being re-sent: the previous attempt was cut off (the agent restarted, "
    "or its API refused the turn). Check what was already done before repeating it.)\n\n"
)
_MAX_ATTEMPTS = 2
# A prompt starting with this asks Claude to plan first; the group approves the plan.
_PLAN_PREFIX = "/plan "


class IdentityTaken(ConcordiaError):
    """A self-chosen name is a member already, with another role."""


def _cleaned(author: Author) -> Author:
    name = clean_name(author.name)
    return author if name == author.name else dataclasses.replace(author, name=name)


@dataclass(frozen=True, slots=True)
class _Cancel:
    pass


@dataclass(frozen=True, slots=True)
class _Restart:
    fresh: bool


_Control = _Cancel | _Restart


class Party:
    """One channel's worth of people and their shared Claude session.

    `submit`, `command`, `join` and `leave` may be called from any task; `run` is the
    runner and must run exactly once, for as long as the party lives.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        name: str,
        store: Store,
        session: OnDemandAgent,
        merger: Merger,
        invites: InviteBook,
        redactor: Redactor,
    ):
        self.name = name
        self._settings = settings
        self._store = store
        self.session = session
        self._merger = merger
        self._invites = invites
        self._redactor = redactor
        self.metrics = Metrics()
        self.spend = SpendBook(store, name, settings.budget)
        claude = settings.claude
        self._outages = OutageHold(Backoff(claude.outage_retry_s, claude.outage_retry_max_s))
        self._listeners: set[Listener] = set()
        self._members: dict[tuple[str, str], Participant] = {}
        self._join_attempts = AttemptThrottle()
        self._pace = MemberPace(
            burst=settings.party.member_burst,
            per_minute=settings.party.member_prompts_per_minute,
        )
        self._wake = asyncio.Event()
        self._controls: asyncio.Queue[_Control] = asyncio.Queue()
        self._running: Batch | None = None  # written by the runner only
        shell = settings.shell
        self._shells = (
            ShellQueue(
                ShellRunner(
                    workdir=settings.claude.workdir,
                    timeout_s=shell.timeout_s,
                    max_output_chars=shell.max_output_chars,
                    allow=shell.allow,
                ),
                allowed_users=shell.allowed_users,
                party=name,
                store=store,
                publish=self._publish,
                chat_safe=self.chat_safe,
                wake=self._wake,
                busy_with=lambda: None if self._running is None else self._running.batch_id,
            )
            if shell.enabled
            else None
        )
        self._approvals = Approvals(
            settings.approvals, party=name, store=store, redactor=redactor, publish=self._publish
        )
        self._questions = Questions(
            settings.questions,
            party=name,
            store=store,
            redactor=redactor,
            publish=self._publish,
            turn_timeout_s=settings.claude.turn_timeout_s,
        )
        self._last_turn_at: float | None = None
        self._abandoned_questions: list[int] = []

    async def load(self) -> None:
        """Read who has joined; call once before serving."""
        await self._store.ensure_party(self.name)
        await self._approvals.load()
        self._abandoned_questions = await self._questions.load()
        for member in await self._store.participants(self.name):
            self._members[(member.platform, member.user_id)] = member
        if await self._store.pending_prompts(self.name) or await self._store.open_batches(
            self.name
        ):
            self._wake.set()

    # -- listeners ----------------------------------------------------------------------

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Start delivering every party event to ``listener``; returns the unsubscribe call."""
        self._listeners.add(listener)
        return lambda: self._listeners.discard(listener)

    def _publish(self, event: PartyEvent) -> None:
        for listener in list(self._listeners):
            try:
                listener.deliver(event)
            except Exception:
                # A broken transport must not take the party (and every other one) down.
                log.exception("a listener failed; dropping it", extra={"party": self.name})
                self._listeners.discard(listener)

    # -- membership -----------------------------------------------------------------------

    async def join(self, token: str, author: Author) -> Role | None:
        """Admit ``author`` if ``token`` is a live invite; return the role granted, or None.

        Raises `IdentityTaken` when ``author`` is not verified (a WebSocket name) and is a
        member already with another role: a name must not carry someone else's rights,
        nor take them away."""
        author = _cleaned(author)
        role = await self._store.check_invite(self.name, token)
        if role is None:
            return None
        held = self.role_of(author)
        if not author.is_verified and held is not None and held is not role:
            raise IdentityTaken(
                f"the name {author.name!r} is in this party with another role; pick another name"
            )
        self._redactor.add(token)  # minted elsewhere (`concordia invite`): redact it from now on
        member = Participant(author.platform, author.user_id, author.name, role)
        await self._store.join(self.name, member)
        self._members[(author.platform, author.user_id)] = member
        log.info("%s joined as %s", author.name, role.value, extra={"party": self.name})
        self.session.wake()  # they will prompt soon: the agent starts meanwhile
        return role

    async def admit(self, token: str, author: Author) -> CommandResult:
        """`join` for chat commands: the answer to show the person who tried the token.

        Repeated bad tokens from one account are answered ever more slowly."""
        account = f"{author.platform}:{author.user_id}"
        delay = self._join_attempts.delay_s(account)
        if delay:
            await asyncio.sleep(delay)  # pacing: slows down guessing from one account
        role = await self.join(token.strip(), author)
        if role is None:
            self._join_attempts.failed(account)
            return CommandResult("join", False, "That invite token was refused.")
        self._join_attempts.succeeded(account)
        text = f"Welcome to party {self.name} ({role.value}). Mention me with a prompt."
        if role.may_approve:
            text += " You may also decide on the tools Claude asks to use."
        return CommandResult("join", True, text)

    async def leave(self, author: Author) -> None:
        await self._store.leave(self.name, author.platform, author.user_id)
        self._members.pop((author.platform, author.user_id), None)

    @property
    def max_prompt_chars(self) -> int:
        return self._settings.party.max_prompt_chars

    @property
    def max_image_bytes(self) -> int:
        return self._settings.party.max_image_bytes

    def role_of(self, author: Author) -> Role | None:
        member = self._members.get((author.platform, author.user_id))
        return member.role if member else None

    # -- intake -----------------------------------------------------------------------------

    async def submit(self, prompt: Prompt) -> Submission:
        """Authorize, sanitise and durably queue a prompt.

        Returns `Accepted` once the prompt is committed to the store (a repeated
        ``source_id`` returns the first acceptance again), or `Rejected` with a reason.
        """
        author = _cleaned(prompt.author)
        if author is not prompt.author:
            prompt = dataclasses.replace(prompt, author=author)
        if self.role_of(prompt.author) is None:
            return self._reject(
                RejectKind.NOT_MEMBER,
                "you have not joined this party: join with an invite token first",
            )
        if over := await self.spend.member_refusal(prompt.author):
            return self._reject(RejectKind.OVER_BUDGET, over)
        wait_s = self._pace.take((prompt.author.platform, prompt.author.user_id))
        if wait_s:
            return self._reject(
                RejectKind.PACED,
                f"you are sending prompts faster than {self._pace.per_minute:g} a minute "
                f"(party.member_prompts_per_minute); try again in {math.ceil(wait_s)} s",
            )
        try:
            text = sanitize_prompt(prompt.text)
        except UnsafeInput as exc:
            return self._reject(RejectKind.UNSAFE, str(exc))
        plan = text.lstrip().startswith(_PLAN_PREFIX) or text.strip() == _PLAN_PREFIX.strip()
        if plan:
            text = text.lstrip()[len(_PLAN_PREFIX) :]
        if not text.strip():
            return self._reject(RejectKind.EMPTY, "the prompt is empty")
        if refusal := self._image_refusal(prompt):
            return self._reject(RejectKind.UNSAFE, refusal)
        limit = self._settings.party.max_prompt_chars
        if len(text) > limit:
            return self._reject(
                RejectKind.TOO_LONG,
                f"the prompt has {len(text):,} characters; "
                f"the limit is {limit:,} (party.max_prompt_chars)",
            )
        accepted = await self._store.add_prompt(self.name, prompt, text, plan=plan)
        if accepted.is_duplicate:
            self.metrics.prompts_duplicate += 1
        else:
            self.metrics.prompts_accepted += 1
            self.session.wake()  # starts while the prompt waits for others to merge with
            self._wake.set()
            log.debug(
                "accepted prompt %d",
                accepted.prompt_id,
                extra={"party": self.name, "prompt_ids": [accepted.prompt_id]},
            )
        return accepted

    def _image_refusal(self, prompt: Prompt) -> str:
        """Adapters check images before they hand them in; this is the last line: an image
        that is not what it claims, or too large, refuses the prompt."""
        limit = self._settings.party.max_image_bytes
        for image in prompt.images:
            checked = check_image(image.name, image.data, limit)
            if checked.refusal:
                return checked.refusal
            if checked.media_type != image.media_type:
                return f"{image.name} is a {checked.media_type}, not a {image.media_type}"
        return ""

    def _reject(self, kind: RejectKind, reason: str) -> Rejected:
        self.metrics.prompts_rejected += 1
        return Rejected(reason, kind)

    # -- commands (the table is bot.commands; what it may ask is below) -----------------

    async def command(self, command: Command) -> CommandResult:
        """Run a participant's command; the answer is one short text fit for chat."""
        command = dataclasses.replace(command, author=_cleaned(command.author))
        return await commands.dispatch(self, command)

    def waiting_approvals(self) -> list[ApprovalRequested]:
        """The tool-use requests waiting for a decision, oldest first (for late joiners)."""
        return self._approvals.waiting()

    def waiting_questions(self) -> list[QuestionAsked]:
        """Claude's questions waiting for an answer, oldest first (for late joiners)."""
        return self._questions.waiting()

    async def answer(self, question_id: int, author: Author, text: str) -> CommandResult:
        """A participant's answer to one of Claude's questions (a button's option number or
        label, or their own words)."""
        role = self.role_of(author)
        if role is None:
            return CommandResult("answer", False, "you have not joined this party")
        return self._questions.answer(question_id, _cleaned(author), role, text)

    async def decide(self, approval_id: int, author: Author, decision: Decision) -> CommandResult:
        """An approver's (or the host's) answer to a tool-use request; for buttons."""
        role = self.role_of(author)
        if role is None:
            return CommandResult("approve", False, "you have not joined this party")
        return self._approvals.decide(approval_id, _cleaned(author), role, decision)

    # -- what a command may ask (bot.commands.CommandTarget) ------------------------------

    @property
    def shells(self) -> ShellQueue | None:
        """The shell command queue; None when the shell is off for this party."""
        return self._shells

    async def overview(self) -> Overview:
        """The party now, for `status` and `queue`."""
        pending = tuple(await self._store.pending_prompts(self.name))
        last = self._last_turn_at
        return Overview(
            running=self._running,
            is_ready=self.session.ready.is_set(),
            restarts=self.session.restarts,
            pending=pending,
            last_turn_age_s=None if last is None else time.monotonic() - last,
            merger=self._merger.describe(),
            participants=len(self._members),
            metrics=tuple(self.metrics.lines()),
            held_until=self._outages.until,
            agent_running=self.session.is_running,
        )

    def approval_rules(self) -> list[str]:
        """The party's standing "always" rules, sorted."""
        return self._approvals.rules()

    async def forget_approval_rules(self) -> int:
        """Forget every "always" rule; returns how many there were."""
        return await self._approvals.reset()

    def interrupt_turn(self) -> int | None:
        """Have the runner interrupt the running turn; its batch id, or None when idle."""
        if self._running is None:
            return None
        self._controls.put_nowait(_Cancel())
        return self._running.batch_id

    async def withdraw_latest(self, author: Author) -> int | None:
        """Withdraw ``author``'s newest queued prompt; its id, or None."""
        return await self._store.withdraw_latest(self.name, author.platform, author.user_id)

    def restart(self, *, fresh: bool) -> bool:
        """Have the runner restart Claude (``fresh``: in a new conversation) between turns;
        True when a running turn is interrupted first."""
        self._controls.put_nowait(_Restart(fresh=fresh))
        self._wake.set()
        return self._running is not None

    async def join_link(self) -> str:
        """The prompter's link to this party ("" when it is joined from chat only)."""
        address = self._invites.address
        return address.link((await self._invites.ensure()).prompter) if address else ""

    async def invite_token(self, *, rotate: bool) -> str:
        """The prompter invite token; ``rotate`` replaces it first (the old one stops working)."""
        if not rotate:
            return (await self._invites.ensure()).prompter
        token = await self._invites.rotate(Role.PROMPTER)
        self._redactor.add(token)
        return token

    def chat_safe(self, text: str) -> str:
        """Text fit for chat: no controls, no configured secret, no mass ping."""
        return neutralize_mentions(self._redactor.redact(strip_controls(text)))

    # -- the runner -------------------------------------------------------------------------

    async def run(self) -> None:
        """The runner: the only task that sends anything to Claude. Runs until cancelled."""
        unanswered = ", ".join(map(str, self._abandoned_questions))
        for open_batch in await self._store.open_batches(self.name):
            batch_id = open_batch.batch.batch_id
            note = f"batch {batch_id} was cut off by a restart; re-running it once"
            if unanswered and open_batch.was_sent:
                note += f" (question {unanswered} was left unanswered: Claude will ask again)"
                unanswered = ""
            await self._run_batch(open_batch.batch, note=note if open_batch.was_sent else "")
        if unanswered:  # its batch had ended after all: nothing will ask it again
            self._publish(Notice(f"question {unanswered} was left unanswered by a restart"))
        # Prompts left from a previous run have waited long enough.
        skip_window = bool(await self._store.pending_prompts(self.name))
        while True:
            await self._wake.wait()
            self._wake.clear()
            await self._between_turns()
            if not await self._store.pending_prompts(self.name):
                skip_window = False
                continue
            await self._wait_ready()
            if not skip_window:
                await self._collect()
            await self.spend.hold_while_over(lambda why: self._publish(Notice(why)))
            await self._between_turns()
            sources = await self._store.pending_prompts(self.name)
            if not sources:
                continue
            batch = await self._merge(sources)
            if batch is None:
                continue
            await self._run_batch(batch)
            # Prompts that arrived during the turn were collected while Claude was busy.
            skip_window = True
            self._wake.set()

    async def _collect(self) -> None:
        """Let prompts sent together land in one batch: wait until none has come for
        `quiet_gap_s`, never longer than `collect_window_s`."""
        window = self._settings.party
        deadline = time.monotonic() + window.collect_window_s
        while (left := deadline - time.monotonic()) > 0:
            self._wake.clear()
            try:
                async with asyncio.timeout(min(window.quiet_gap_s, left)):
                    await self._wake.wait()  # another prompt: wait for quiet again
            except TimeoutError:
                return

    async def _wait_ready(self) -> None:
        if not self.session.ready.is_set():
            log.info("waiting for Claude to be ready", extra={"party": self.name})
            await self.session.ready.wait()

    async def _between_turns(self) -> None:
        """What waits for Claude to be idle: controls, then shell commands."""
        await self._apply_controls()
        if self._shells is not None:
            await self._shells.run_queued()

    async def _apply_controls(self) -> None:
        while not self._controls.empty():
            control = self._controls.get_nowait()
            match control:
                case _Cancel():
                    pass  # nothing is running between turns
                case _Restart(fresh=fresh):
                    await self.session.restart(fresh=fresh)
                    if fresh:
                        await self._store.set_session_id(self.name, None)
                    self._publish(
                        Notice(
                            "started a fresh Claude conversation" if fresh else "Claude restarted"
                        )
                    )
                case _:
                    assert_never(control)

    async def _merge(self, sources: list[SourcePrompt]) -> Batch | None:
        """Merge the pending prompts into a stored batch; None if none is left pending."""
        while sources:
            started = time.monotonic()
            merge = await self._merger.merge(sources)
            self.metrics.merge.add(time.monotonic() - started)
            try:
                return await self._store.create_batch(
                    self.name, merge.prompt, merge.groups, sources
                )
            except StaleSources:  # someone withdrew a prompt while it was being merged
                sources = await self._store.pending_prompts(self.name)
        return None

    async def _run_batch(self, batch: Batch, *, note: str = "") -> None:
        """Send one batch to Claude, stream its output, and record how it ended.

        ``note`` is said right after the batch starts, so it lands in the batch's thread."""
        resent = False  # re-run after the API refused it: still sent, not a new attempt
        while True:
            if not resent:
                batch = await self._store.mark_sent(batch)
            if batch.attempt > _MAX_ATTEMPTS:
                detail = (
                    f"Claude stopped mid-turn {_MAX_ATTEMPTS} times on this batch; giving up on it"
                )
                await self._finish(batch, TurnStatus.ERROR, detail)
                return
            if batch.is_rerun:
                self.metrics.batches_rerun += 1
            self._publish(BatchStarted(self._shown(batch)))
            if note:
                self._publish(Notice(note))
                note = ""
            try:
                status, detail, outage = await self._turn(batch, resent=resent)
            except SessionDied as exc:
                log.warning(
                    "claude died during batch %d: %s",
                    batch.batch_id,
                    exc,
                    extra={"batch_id": batch.batch_id},
                )
                self._publish(
                    Notice(
                        f"Claude stopped in the middle of batch {batch.batch_id}; "
                        "restarting it and re-running the batch once"
                    )
                )
                await self._wait_ready()
                await self._remember_session()
                continue
            except SessionError as exc:
                await self._finish(batch, TurnStatus.ERROR, str(exc))
                return
            if outage is not None:
                await self._hold(batch, outage)
                resent = True
                continue
            self._outages.clear()
            await self._finish(batch, status, detail)
            return

    async def _hold(self, batch: Batch, outage: Outage) -> None:
        """The API refused the turn: hold the queue (prompts are still accepted) until it
        said it resets, else with backoff; then the same batch runs again."""
        wait_s = self._outages.hold_for(outage)
        assert self._outages.until is not None
        self._publish(Notice(outage_notice(outage, batch.batch_id, self._outages.until)))
        log.warning("holding the queue %.0f s: %s", wait_s, outage, extra={"party": self.name})
        await asyncio.sleep(wait_s)  # pacing: the API said when, or the backoff does

    async def _turn(self, batch: Batch, *, resent: bool) -> tuple[TurnStatus, str, Outage | None]:
        text = _RERUN_NOTE + batch.prompt if batch.is_rerun or resent else batch.prompt
        images = await self._store.batch_images(batch.batch_id)
        if images:
            listed = "; ".join(
                f"{n}. {image.name} from {author}" for n, (author, image) in enumerate(images, 1)
            )
            text += f"\n\n(Attached images, in order: {listed}.)"
        output = ChatSafeStream(self._redactor)
        started = time.monotonic()
        self._running = batch
        end: TurnEnd | None = None
        try:
            async with asyncio.TaskGroup() as group:
                watcher = group.create_task(self._watch_controls(), name="turn-controls")
                try:
                    await self._wait_ready()
                    turn = self.session.run(
                        text, images=[image for _, image in images], plan=batch.wants_plan
                    )
                    async for event in turn:
                        match event:
                            case TextDelta(text=delta):
                                self._emit(batch, output.feed(delta))
                            case ToolUse(name=tool, detail=detail):
                                self._emit(batch, output.feed(f"\n\n⚙ {tool}: {detail}\n\n"))
                            case ToolRequest():
                                # Claude waits for this answer; the output so far goes first.
                                self._emit(batch, output.flush())
                                allowed, why = await self._approvals.ask(
                                    event,
                                    batch_id=batch.batch_id,
                                    requesters=[s.author_id for s in batch.sources],
                                )
                                await self.session.answer_tool(event, allow=allowed, message=why)
                            case QuestionRequest():
                                self._emit(batch, output.flush())
                                answers = await self._questions.ask(event, batch=batch)
                                if isinstance(answers, str):
                                    await self.session.answer_questions(event, None, answers)
                                else:
                                    await self.session.answer_questions(event, answers)
                            case PlanRequest(plan=plan):
                                self._emit(batch, output.feed(f"\n\n{plan.strip()}\n\n"))
                                self._emit(batch, output.flush())
                                approved, feedback = await self._questions.review_plan(
                                    event, batch=batch
                                )
                                await self.session.answer_plan(
                                    event, approved=approved, feedback=feedback
                                )
                            case TurnEnd():
                                end = event
                            case _:
                                assert_never(event)
                finally:
                    watcher.cancel()
        except BaseExceptionGroup as group_error:
            died = first_of(group_error, SessionDied) or first_of(group_error, SessionError)
            if died is None:
                raise
            raise died from None
        finally:
            self._running = None
            self._emit(batch, output.flush())
            self.metrics.turn.add(time.monotonic() - started)
            self._last_turn_at = time.monotonic()
        assert end is not None
        if end.usage is not None:
            await self.spend.record(batch, end.usage)
        await self._remember_session()
        return end.status, self._redactor.redact(end.error), end.outage

    async def _watch_controls(self) -> None:
        """During a turn: cancel interrupts it; restart interrupts it and waits its turn."""
        while True:
            control = await self._controls.get()
            match control:
                case _Cancel():
                    await self.session.interrupt()
                    self._approvals.cancel_all("the turn was cancelled: denied")
                    self._questions.cancel_all("the turn was cancelled")
                case _Restart():
                    await self.session.interrupt()
                    self._approvals.cancel_all("Claude is restarting: denied")
                    self._questions.cancel_all("Claude is restarting")
                    self._controls.put_nowait(control)  # applied once the turn has ended
                    return
                case _:
                    assert_never(control)

    def _shown(self, batch: Batch) -> Batch:
        """The batch as participants see it: a prompt may quote a secret or @everyone."""

        safe = self.chat_safe
        return dataclasses.replace(
            batch,
            prompt=safe(batch.prompt),
            sources=tuple(dataclasses.replace(s, text=safe(s.text)) for s in batch.sources),
            groups=tuple(
                dataclasses.replace(g, instruction=safe(g.instruction)) for g in batch.groups
            ),
        )

    def _emit(self, batch: Batch, text: str) -> None:
        if text:
            self._publish(OutputText(batch.batch_id, text))

    async def _finish(self, batch: Batch, status: TurnStatus, detail: str) -> None:
        await self._store.finish_batch(batch.batch_id, status, detail)
        self.metrics.batches += 1
        if status is TurnStatus.ERROR:
            self.metrics.batches_failed += 1
        log.info(
            "batch %d ended: %s",
            batch.batch_id,
            status.value,
            extra={
                "party": self.name,
                "batch_id": batch.batch_id,
                "prompt_ids": [s.prompt_id for s in batch.sources],
            },
        )
        self._publish(BatchDone(batch.batch_id, status, detail))

    async def _remember_session(self) -> None:
        if self.session.session_id:
            await self._store.set_session_id(self.name, self.session.session_id)
