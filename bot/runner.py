"""Runner: the one task that sends anything to a party's agent.

It collects what is pending (`party.quiet_gap_s`, at most `party.collect_window_s`), merges
it, records the batch before sending it, runs one turn and publishes its events; between
turns it applies controls (cancel, restart) and runs queued shell commands; when the API
refuses a turn it holds the queue and sends the same batch again. Everyone else reaches it
through ``wake`` and its control queue (`interrupt`, `restart`): never the agent directly.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import assert_never

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
from bot.commands import ShellQueue
from bot.config import Settings
from bot.lifecycle import first_of
from bot.merge import Merger
from bot.metrics import Metrics
from bot.model import (
    Batch,
    BatchDone,
    BatchStarted,
    Notice,
    OutputText,
    PartyEvent,
    QuestionOutcome,
    SourcePrompt,
    TurnStatus,
)
from bot.on_demand import OnDemandAgent
from bot.pace import Backoff, OutageHold
from bot.questions import Questions
from bot.render import outage_notice
from bot.safety import ChatSafeStream, Redactor
from bot.spend import SpendBook
from bot.store import StaleSources, Store
from bot.telemetry import Telemetry

__all__ = ["Runner"]

log = logging.getLogger(__name__)

# Said to Claude when a batch is sent again after the process or the bot died mid-turn.
_RERUN_NOTE = (
    "(This request is being re-sent: the previous attempt was cut off (the agent restarted, "
    "or its API refused the turn). Check what was already done before repeating it.)\n\n"
)
_MAX_ATTEMPTS = 2


@dataclass(frozen=True, slots=True)
class _Cancel:
    pass


@dataclass(frozen=True, slots=True)
class _Restart:
    fresh: bool


_Control = _Cancel | _Restart


class Runner:
    """A party's turns. `run` must run exactly once, for as long as the party lives;
    `interrupt` and `restart` may be called from any task."""

    def __init__(
        self,
        settings: Settings,
        *,
        name: str,
        store: Store,
        session: OnDemandAgent,
        merger: Merger,
        approvals: Approvals,
        questions: Questions,
        spend: SpendBook,
        metrics: Metrics,
        redactor: Redactor,
        publish: Callable[[PartyEvent], None],
        chat_safe: Callable[[str], str],
        wake: asyncio.Event,
        telemetry: Telemetry,
    ) -> None:
        self.name = name
        self._settings = settings
        self._agent = settings.agent.name
        self._store = store
        self.session = session
        self._merger = merger
        self._approvals = approvals
        self._questions = questions
        self.spend = spend
        self.metrics = metrics
        self._redactor = redactor
        self._publish = publish
        self.chat_safe = chat_safe
        self._telemetry = telemetry
        self.wake = wake  # set when there may be something to do: a prompt, a control
        self.shells: ShellQueue | None = None  # set by the party when the shell is on
        claude = settings.claude
        self._outages = OutageHold(Backoff(claude.outage_retry_s, claude.outage_retry_max_s))
        self._controls: asyncio.Queue[_Control] = asyncio.Queue()
        self._running: Batch | None = None  # written by the runner only
        self.last_turn_at: float | None = None
        self._stopping = False
        self._idle = asyncio.Event()  # set while no turn runs
        self._idle.set()
        self.abandoned_questions: list[int] = []  # left open by the last run: said on start

    @property
    def running(self) -> Batch | None:
        """The batch the agent is answering now."""
        return self._running

    @property
    def held_until(self) -> datetime | None:
        """Until when the queue is held because the API refused a turn."""
        return self._outages.until

    def interrupt(self) -> int | None:
        """Interrupt the running turn; its batch id, or None when idle."""
        if self._running is None:
            return None
        self._controls.put_nowait(_Cancel())
        return self._running.batch_id

    async def shut_down(self) -> None:
        """Take no more batches; interrupt the running turn and return once it has ended.
        Its batch stays sent, so the next start runs it again (once, saying so)."""
        self._stopping = True
        self.wake.set()
        if self._running is not None:
            self._questions.cancel_all(
                f"Concordia is restarting: {self._agent} will ask again", QuestionOutcome.ABANDONED
            )
            self._controls.put_nowait(_Cancel())
        await self._idle.wait()

    def restart(self, *, fresh: bool) -> bool:
        """Restart the agent (``fresh``: in a new conversation) between turns; True when a
        running turn is interrupted first."""
        self._controls.put_nowait(_Restart(fresh=fresh))
        self.wake.set()
        return self._running is not None

    async def run(self) -> None:
        """The runner: the only task that sends anything to Claude. Runs until cancelled."""
        unanswered = ", ".join(map(str, self.abandoned_questions))
        for open_batch in await self._store.open_batches(self.name):
            batch_id = open_batch.batch.batch_id
            note = f"batch {batch_id} was cut off by a restart; re-running it once"
            if unanswered and open_batch.was_sent:
                note += (
                    f" (question {unanswered} was left unanswered: {self._agent} will ask again)"
                )
                unanswered = ""
            await self._run_batch(open_batch.batch, note=note if open_batch.was_sent else "")
        if unanswered:  # its batch had ended after all: nothing will ask it again
            self._publish(Notice(f"question {unanswered} was left unanswered by a restart"))
        # Prompts left from a previous run have waited long enough.
        skip_window = bool(await self._store.pending_prompts(self.name))
        while True:
            await self.wake.wait()
            self.wake.clear()
            if self._stopping:
                continue  # shut down: idle until the app cancels the runner
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
            self.wake.set()

    async def _collect(self) -> None:
        """Let prompts sent together land in one batch: wait until none has come for
        `quiet_gap_s`, never longer than `collect_window_s`."""
        window = self._settings.party
        deadline = time.monotonic() + window.collect_window_s
        while (left := deadline - time.monotonic()) > 0:
            self.wake.clear()
            try:
                async with asyncio.timeout(min(window.quiet_gap_s, left)):
                    await self.wake.wait()  # another prompt: wait for quiet again
            except TimeoutError:
                return

    async def _wait_ready(self) -> None:
        if not self.session.ready.is_set():
            log.info("waiting for Claude to be ready", extra={"party": self.name})
            await self.session.ready.wait()

    async def _between_turns(self) -> None:
        """What waits for Claude to be idle: controls, then shell commands."""
        await self._apply_controls()
        if self.shells is not None:
            await self.shells.run_queued()

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
                            f"started a fresh {self._agent} conversation"
                            if fresh
                            else f"{self._agent} restarted"
                        )
                    )
                case _:
                    assert_never(control)

    async def _merge(self, sources: list[SourcePrompt]) -> Batch | None:
        """Merge the pending prompts into a stored batch; None if none is left pending."""
        while sources:
            started = time.monotonic()
            merge = await self._merger.merge(sources)
            took_s = time.monotonic() - started
            self.metrics.merge.add(took_s)
            self._telemetry.merge_seconds.labels(self.name).observe(took_s)
            self._telemetry.merges.labels(self.name, self._merger.name).inc()
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
        self._idle.clear()
        try:
            await self._send_batch(batch, note)
        finally:
            self._idle.set()

    async def _send_batch(self, batch: Batch, note: str) -> None:
        resent = False  # re-run after the API refused it: still sent, not a new attempt
        while True:
            if not resent:
                batch = await self._store.mark_sent(batch)
            if batch.attempt > _MAX_ATTEMPTS:
                detail = (
                    f"{self._agent} stopped mid-turn {_MAX_ATTEMPTS} times on this batch; "
                    "giving up on it"
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
                if self._stopping:
                    return  # kept sent: the next start runs it again
                log.warning(
                    "claude died during batch %d: %s",
                    batch.batch_id,
                    exc,
                    extra={"batch_id": batch.batch_id},
                )
                self._publish(
                    Notice(
                        f"{self._agent} stopped in the middle of batch {batch.batch_id}; "
                        "restarting it and re-running the batch once"
                    )
                )
                await self._wait_ready()
                await self._remember_session()
                continue
            except SessionError as exc:
                await self._finish(batch, TurnStatus.ERROR, str(exc))
                return
            if self._stopping:
                log.info(
                    "batch %d was interrupted by the stop; the next start runs it again",
                    batch.batch_id,
                    extra={"party": self.name, "batch_id": batch.batch_id},
                )
                return  # kept sent, not finished
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
            took_s = time.monotonic() - started
            self.metrics.turn.add(took_s)
            self._telemetry.turn_seconds.labels(self.name).observe(took_s)
            self.last_turn_at = time.monotonic()
        assert end is not None
        if end.usage is not None:
            await self.spend.record(batch, end.usage)
            self._telemetry.cost_usd.labels(self.name).inc(end.usage.cost_usd or 0.0)
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
                    self._approvals.cancel_all(f"{self._agent} is restarting: denied")
                    self._questions.cancel_all(f"{self._agent} is restarting")
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
        self._telemetry.batches.labels(self.name, status.value).inc()
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
