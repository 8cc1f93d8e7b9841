"""Party: the people sharing one agent session, their queue, and the one runner.

Only the runner (`bot.runner.Runner`) writes to the agent (a `bot.agent.AgentSession`:
Claude, in a run, kept up only while used by `bot.on_demand.OnDemandAgent`). The party is
what everyone else talks to: membership, intake, commands, answers and decisions; it asks
the runner through the store, its wake-up event and its control queue. Every accepted prompt is in
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

from bot import ConcordiaError, commands
from bot.approvals import Approvals
from bot.commands import Overview, ShellQueue
from bot.config import Settings
from bot.images import check_image
from bot.invite import InviteBook
from bot.merge import Merger
from bot.metrics import Metrics
from bot.model import (
    ApprovalOutcome,
    ApprovalRequested,
    Author,
    Command,
    CommandResult,
    Decision,
    Listener,
    PartyEvent,
    Prompt,
    QuestionAsked,
    Rejected,
    RejectKind,
    Role,
    Submission,
)
from bot.on_demand import OnDemandAgent
from bot.pace import AttemptThrottle, MemberPace
from bot.questions import Questions
from bot.runner import Runner
from bot.safety import (
    Redactor,
    UnsafeInput,
    clean_name,
    neutralize_mentions,
    sanitize_prompt,
    strip_controls,
)
from bot.shell import ShellRunner
from bot.spend import SpendBook
from bot.store import Participant, Store
from bot.telemetry import Telemetry

__all__ = ["Party"]

log = logging.getLogger(__name__)

# A prompt starting with this asks Claude to plan first; the group approves the plan.
_PLAN_PREFIX = "/plan "


class IdentityTaken(ConcordiaError):
    """A self-chosen name is a member already, with another role."""


def _cleaned(author: Author) -> Author:
    name = clean_name(author.name)
    return author if name == author.name else dataclasses.replace(author, name=name)


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
        telemetry: Telemetry,
        agent: str,
    ):
        self.name = name
        self._agent = agent  # the agent and its version in a few words, as `status` names it
        self._telemetry = telemetry
        self._settings = settings
        self._store = store
        self.session = session
        self._merger = merger
        self._invites = invites
        self._redactor = redactor
        self.metrics = Metrics()
        self.spend = SpendBook(store, name, settings.budget)
        self._listeners: set[Listener] = set()
        self._members: dict[tuple[str, str], Participant] = {}
        self._join_attempts = AttemptThrottle()
        self._pace = MemberPace(
            burst=settings.party.member_burst,
            per_minute=settings.party.member_prompts_per_minute,
        )
        self._wake = asyncio.Event()
        self._is_stopping = False
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
                busy_with=self._running_batch_id,
                observe=lambda outcome: telemetry.shell_runs.labels(name, outcome.value).inc(),
            )
            if shell.enabled
            else None
        )

        def approval_settled(outcome: ApprovalOutcome, wait_s: float) -> None:
            telemetry.approvals.labels(name, outcome.value).inc()
            telemetry.approval_wait_seconds.labels(name).observe(wait_s)

        self._approvals = Approvals(
            settings.approvals,
            party=name,
            store=store,
            redactor=redactor,
            publish=self._publish,
            observe=approval_settled,
        )
        self._questions = Questions(
            settings.questions,
            party=name,
            store=store,
            redactor=redactor,
            publish=self._publish,
            turn_timeout_s=settings.claude.turn_timeout_s,
        )
        self._runner = Runner(
            settings,
            name=name,
            store=store,
            session=session,
            merger=merger,
            approvals=self._approvals,
            questions=self._questions,
            spend=self.spend,
            metrics=self.metrics,
            redactor=redactor,
            publish=self._publish,
            chat_safe=self.chat_safe,
            wake=self._wake,
            telemetry=telemetry,
        )
        self._runner.shells = self._shells

    async def load(self) -> None:
        """Read who has joined; call once before serving."""
        await self._store.ensure_party(self.name)
        await self._approvals.load()
        self._runner.abandoned_questions = await self._questions.load()
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
        if role.may_approve and self._settings.agent.has_approvals:
            text += f" You may also decide on the tools {self.agent_name} asks to use."
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
        self._telemetry.prompts_received.labels(self.name, prompt.author.platform).inc()
        if self._is_stopping:
            return self._reject(
                RejectKind.STOPPING,
                "Concordia is restarting: nothing was queued; send it again in a minute",
            )
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
        self._telemetry.prompts_rejected.labels(self.name, kind.value).inc()
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
    def agent_name(self) -> str:
        """What messages call the agent ("Claude", "Codex")."""
        return self._settings.agent.name

    @property
    def shells(self) -> ShellQueue | None:
        """The shell command queue; None when the shell is off for this party."""
        return self._shells

    async def overview(self) -> Overview:
        """The party now, for `status` and `queue`."""
        pending = tuple(await self._store.pending_prompts(self.name))
        last = self._runner.last_turn_at
        return Overview(
            running=self._runner.running,
            is_ready=self.session.ready.is_set(),
            restarts=self.session.restarts,
            pending=pending,
            last_turn_age_s=None if last is None else time.monotonic() - last,
            merger=self._merger.describe(),
            participants=len(self._members),
            metrics=tuple(self.metrics.lines()),
            held_until=self._runner.held_until,
            agent_running=self.session.is_running,
            agent=self._agent,
            has_approvals=self._settings.agent.has_approvals,
        )

    def approval_rules(self) -> list[str]:
        """The party's standing "always" rules, sorted."""
        return self._approvals.rules()

    async def forget_approval_rules(self) -> int:
        """Forget every "always" rule; returns how many there were."""
        return await self._approvals.reset()

    def interrupt_turn(self) -> int | None:
        """Have the runner interrupt the running turn; its batch id, or None when idle."""
        return self._runner.interrupt()

    async def withdraw_latest(self, author: Author) -> int | None:
        """Withdraw ``author``'s newest queued prompt; its id, or None."""
        return await self._store.withdraw_latest(self.name, author.platform, author.user_id)

    def restart(self, *, fresh: bool) -> bool:
        """Have the runner restart Claude (``fresh``: in a new conversation) between turns;
        True when a running turn is interrupted first."""
        return self._runner.restart(fresh=fresh)

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

    def _running_batch_id(self) -> int | None:
        running = self._runner.running
        return None if running is None else running.batch_id

    def chat_safe(self, text: str) -> str:
        """Text fit for chat: no controls, no configured secret, no mass ping."""
        return neutralize_mentions(self._redactor.redact(strip_controls(text)))

    async def shut_down(self) -> None:
        """Take no more prompts (they are refused, saying the bot is restarting), interrupt
        the running turn and return once it has ended; its batch runs again at the next
        start."""
        self._is_stopping = True
        await self._runner.shut_down()

    # -- the runner -------------------------------------------------------------------------

    async def run(self) -> None:
        """The runner (`bot.runner.Runner`): the only task that sends anything to the agent.
        Runs until cancelled."""
        await self._runner.run()
