"""ThreadRelay: a party's events shown on one chat sink, each batch in its own thread.

Invariant: one owner task per relay handles events in order; a batch's header, output and
status go through the outbox, so a crash loses none of them.
"""

from __future__ import annotations

import asyncio
import logging
from typing import assert_never

from bot.delivery import DeliveryPolicy, call_with_retry
from bot.lifecycle import Lifecycle, OwnedTask, owner_error, transition
from bot.model import (
    ApprovalRequested,
    ApprovalResolved,
    Batch,
    BatchDone,
    BatchStarted,
    Notice,
    OutputText,
    PartyEvent,
    QuestionAsked,
    QuestionClosed,
)
from bot.ports import AdapterError, ApprovalSink, MessageSink, Outbox, QuestionSink
from bot.render import (
    Markup,
    approval_text,
    batch_header,
    closed_approval_text,
    closed_question_text,
    question_text,
    status_line,
)
from bot.stream import OutputStream

__all__ = ["ThreadRelay"]

log = logging.getLogger(__name__)

_HEADER_SEQ = 0  # a batch's header is its first message; its output follows, then the status


class _Stop:
    """Queue sentinel: stop once everything queued before it is handled."""

    __slots__ = ()


_STOP = _Stop()


class ThreadRelay(OwnedTask):
    """Shows a party's events on one `MessageSink`, each batch in its first source's thread.

    Use as ``async with ThreadRelay(...) as relay``; `deliver` never waits. The owner task
    handles events in order: `BatchStarted` posts a header (authors and the quoted prompt,
    noting a re-run) and opens an `OutputStream`; `OutputText` feeds it; `BatchDone` closes it
    and posts the status unless it was a success with output; `Notice` goes to the latest
    batch's thread, or nowhere before the first batch. Header, output and status go through
    the outbox (header seq 0, output from 1, status last); notices do not. A batch whose
    delivery fails for good is logged and skipped; later batches still go.
    """

    def __init__(
        self,
        sink: MessageSink,
        outbox: Outbox,
        *,
        platform: str,
        home_thread: str = "",
        policy: DeliveryPolicy | None = None,
        markup: Markup = Markup.MARKDOWN,
    ) -> None:
        """``home_thread`` takes the batches of a shared party that have no source on this
        platform (prompts from another transport), and notices before the first batch;
        with none, such batches are not shown here. ``markup`` is the sink's own."""
        self._sink = sink
        self._outbox = outbox
        self._platform = platform
        self._home_thread = home_thread
        self._policy = policy or DeliveryPolicy()
        self._markup = markup
        self._queue: asyncio.Queue[PartyEvent | _Stop] = asyncio.Queue()
        # Approvals shown and not yet resolved: their message ref, request and plain text.
        self._approvals: dict[int, tuple[str, ApprovalRequested, str]] = {}
        # Questions likewise.
        self._questions: dict[int, tuple[str, QuestionAsked, str]] = {}
        super().__init__()
        # The latest batch's thread; the owner task's alone.
        self._thread: str | None = home_thread or None

    def _what(self) -> str:
        return f"{self._platform} relay"

    async def _finish(self) -> None:
        await self.stop()

    def deliver(self, event: PartyEvent) -> None:
        """Queue ``event`` for the owner task. Never waits.

        Raises:
            RuntimeError: the relay is not running: not entered, stopping, or its task died
                (that error is chained).
        """
        if self._state is not Lifecycle.OPEN:
            raise RuntimeError(
                f"ThreadRelay.deliver() needs a running relay; this one is {self._state}"
            )
        if self._task is not None and self._task.done():
            raise RuntimeError(
                "ThreadRelay.deliver() needs a running relay; its task has ended"
            ) from owner_error(self._task)
        self._queue.put_nowait(event)

    async def serve(self) -> None:
        """Wait while the relay serves: return once it is stopped, raise what ended its owner
        task otherwise. For the composition root's task group, where a dead relay must end the
        run with its reason instead of leaving a chat that shows ⏳ forever. Cancelling it
        leaves the relay running (`stop` ends it)."""
        if self._task is None:
            raise RuntimeError("ThreadRelay.serve() before `async with` started it")
        await asyncio.shield(self._task)

    async def stop(self) -> None:
        """Handle everything delivered so far, then stop; an open batch is flushed without a
        status. Safe to call again; cancelling it cancels the owner task.

        A batch that cannot be delivered is logged and skipped, not raised.

        Raises:
            Exception: whatever else ended the owner task (a store error, a bug).
            RuntimeError: the relay was never entered, or was cancelled.
        """
        if self._task is None:
            raise RuntimeError("ThreadRelay.stop() before `async with` started it")
        if self._task.cancelled():
            raise RuntimeError("ThreadRelay.stop() after the relay was cancelled")
        if self._state is Lifecycle.OPEN:
            self._state = transition("ThreadRelay", self._state, Lifecycle.CLOSING)
            self._queue.put_nowait(_STOP)
        await self._task

    async def _run(self) -> None:
        event: PartyEvent | _Stop | None = None
        while True:
            if event is None:
                event = await self._queue.get()
            match event:
                case _Stop():
                    return
                case BatchStarted(batch=batch):
                    event = await self._relay_batch(batch)
                case Notice(message=message):
                    await self._post_notice(message)
                    event = None
                case ApprovalRequested() | ApprovalResolved():
                    await self._relay_approval(event, self._thread)
                    event = None
                case QuestionAsked() | QuestionClosed():
                    await self._relay_question(event, self._thread)
                    event = None
                case OutputText() | BatchDone():
                    log.warning(
                        "dropping %s for batch %d: no batch is open",
                        type(event).__name__,
                        event.batch_id,
                        extra={"platform": self._platform, "batch_id": event.batch_id},
                    )
                    event = None
                case _:
                    assert_never(event)

    async def _relay_batch(self, batch: Batch) -> BatchStarted | _Stop | None:
        """Relay one batch; return the event that cut it short (handled next), if any."""
        thread = next(
            (s.thread for s in batch.sources if s.platform == self._platform and s.thread),
            self._home_thread,
        )
        extra = {"platform": self._platform, "batch_id": batch.batch_id}
        if not thread:
            log.debug("batch has no thread on this platform", extra=extra)
            return await self._skip(batch.batch_id)
        self._thread = thread
        header = batch_header(batch, self._sink.max_message_chars, self._markup)
        try:
            await self._post_once(thread, batch.batch_id, _HEADER_SEQ, header)
        except AdapterError:
            log.error("could not post the batch header; skipping it", exc_info=True, extra=extra)
            return await self._skip(batch.batch_id)
        ending: BatchDone | BatchStarted | _Stop | None = None
        seq = _HEADER_SEQ + 1
        try:
            # One stream per stretch of output: an approval request ends the stretch, so
            # what Claude writes after it is posted below it, not above.
            while ending is None:
                stream = OutputStream(
                    self._sink,
                    self._outbox,
                    platform=self._platform,
                    thread=thread,
                    batch_id=batch.batch_id,
                    first_seq=seq,
                    policy=self._policy,
                )
                async with stream:
                    event = await self._pump(batch.batch_id, stream, thread)
                    await stream.close()
                seq = stream.next_seq
                if isinstance(event, ApprovalRequested):
                    await self._relay_approval(event, thread)
                elif isinstance(event, QuestionAsked):
                    await self._relay_question(event, thread)
                else:
                    ending = event
            if isinstance(ending, BatchDone):
                status = status_line(ending, has_output=seq > _HEADER_SEQ + 1)
                if status is not None:
                    await self._post_once(thread, batch.batch_id, seq, status)
        except AdapterError:
            log.error("could not deliver the batch's output", exc_info=True, extra=extra)
        return None if isinstance(ending, BatchDone) else ending

    async def _skip(self, batch_id: int) -> BatchStarted | _Stop | None:
        """Drop this batch's output until it ends; the event that cut it short, if any."""
        ending = await self._pump(batch_id, None)
        return ending if isinstance(ending, BatchStarted | _Stop) else None

    async def _pump(
        self, batch_id: int, stream: OutputStream | None, thread: str | None = None
    ) -> BatchDone | BatchStarted | _Stop | ApprovalRequested | QuestionAsked:
        """Feed this batch's output to ``stream`` (or drop it) until something ends the batch,
        or, with a stream, until an approval request or a question (returned: it goes below
        the output)."""
        while True:
            event = await self._queue.get()
            match event:
                case OutputText(batch_id=b, text=text) if b == batch_id:
                    if stream is not None:
                        stream.feed(text)
                case BatchDone(batch_id=b) if b == batch_id:
                    return event
                case BatchStarted() | _Stop():
                    return event
                case Notice(message=message):
                    await self._post_notice(message)
                case ApprovalRequested() | QuestionAsked() if stream is not None:
                    return event
                case ApprovalRequested() | ApprovalResolved():
                    await self._relay_approval(event, thread)
                case QuestionAsked() | QuestionClosed():
                    await self._relay_question(event, thread)
                case OutputText() | BatchDone():
                    log.warning(
                        "dropping %s for batch %d while batch %d is open",
                        type(event).__name__,
                        event.batch_id,
                        batch_id,
                        extra={"platform": self._platform, "batch_id": event.batch_id},
                    )
                case _:
                    assert_never(event)

    async def _post_once(self, thread: str, batch_id: int, seq: int, text: str) -> None:
        entry_id = await self._outbox.outbox_write(self._platform, thread, batch_id, seq, text)
        ref = await call_with_retry(
            self._policy, lambda: self._sink.post(thread, text), what=f"post to {self._platform}"
        )
        await self._outbox.outbox_confirm(entry_id, ref, text)

    async def _relay_approval(
        self, event: ApprovalRequested | ApprovalResolved, thread: str | None
    ) -> None:
        """Show an approval request (buttons where the sink has them), then how it ended."""
        extra = {"platform": self._platform, "batch_id": event.batch_id}
        try:
            match event:
                case ApprovalRequested():
                    if thread is None:
                        return
                    if isinstance(self._sink, ApprovalSink):
                        sink = self._sink
                        ref = await call_with_retry(
                            self._policy,
                            lambda: sink.post_approval(thread, event),
                            what=f"approval to {self._platform}",
                        )
                        self._approvals[event.approval_id] = (ref, event, "")
                    else:
                        text = approval_text(event, self._sink.max_message_chars)
                        ref = await call_with_retry(
                            self._policy,
                            lambda: self._sink.post(thread, text),
                            what=f"approval to {self._platform}",
                        )
                        self._approvals[event.approval_id] = (ref, event, text)
                case ApprovalResolved():
                    shown = self._approvals.pop(event.approval_id, None)
                    if shown is None:
                        return
                    ref, request, text = shown
                    if isinstance(self._sink, ApprovalSink):
                        sink = self._sink
                        await call_with_retry(
                            self._policy,
                            lambda: sink.close_approval(ref, request, event),
                            what=f"approval update on {self._platform}",
                        )
                    else:
                        closed = closed_approval_text(text, event, self._sink.max_message_chars)
                        await call_with_retry(
                            self._policy,
                            lambda: self._sink.edit(ref, closed),
                            what=f"approval update on {self._platform}",
                        )
                case _:
                    assert_never(event)
        except AdapterError:
            log.error("could not show an approval", exc_info=True, extra=extra)

    async def _relay_question(
        self, event: QuestionAsked | QuestionClosed, thread: str | None
    ) -> None:
        """Show Claude's question (buttons where the sink has them), then who answered."""
        extra = {"platform": self._platform, "batch_id": event.batch_id}
        sink = self._sink
        try:
            match event:
                case QuestionAsked():
                    if thread is None:
                        return
                    text = (
                        ""
                        if isinstance(sink, QuestionSink)
                        else question_text(event, sink.max_message_chars)
                    )
                    ref = await call_with_retry(
                        self._policy,
                        lambda: (
                            sink.post_question(thread, event)
                            if isinstance(sink, QuestionSink)
                            else sink.post(thread, text)
                        ),
                        what=f"question to {self._platform}",
                    )
                    self._questions[event.question_id] = (ref, event, text)
                case QuestionClosed():
                    shown = self._questions.pop(event.question_id, None)
                    if shown is None:
                        return
                    ref, asked, text = shown
                    closed = closed_question_text(text, event, sink.max_message_chars)
                    await call_with_retry(
                        self._policy,
                        lambda: (
                            sink.close_question(ref, asked, event)
                            if isinstance(sink, QuestionSink)
                            else sink.edit(ref, closed)
                        ),
                        what=f"question update on {self._platform}",
                    )
                case _:
                    assert_never(event)
        except AdapterError:
            log.error("could not show a question", exc_info=True, extra=extra)

    async def _post_notice(self, message: str) -> None:
        thread = self._thread
        if thread is None:
            log.info("notice not shown: no batch thread yet", extra={"platform": self._platform})
            return
        try:
            await call_with_retry(
                self._policy,
                lambda: self._sink.post(thread, message),
                what=f"notice to {self._platform}",
            )
        except AdapterError:
            log.error("could not post a notice", exc_info=True, extra={"platform": self._platform})
