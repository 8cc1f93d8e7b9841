"""Turning one batch's streamed text into chat messages: split to the platform's limit, edit in
place at the platform's pace, and record every message in the outbox before it is sent.

Invariant: an `OutputStream`'s owner task is the only caller of post/edit for that stream;
message k+1 is never posted before message k, and every text is written to the `Outbox` before
the platform call that shows it and confirmed after, so `redeliver` can finish after a crash.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass

from bot.delivery import DeliveryPolicy, timed_out
from bot.lifecycle import Lifecycle, OwnedTask, transition
from bot.ports import AdapterError, MessageSink, Outbox
from bot.split import MIN_MESSAGE_CHARS, is_visible, plan, render_span

__all__ = ["OutputStream"]

log = logging.getLogger(__name__)


class _Close:
    """Queue sentinel: no more input."""

    __slots__ = ()


_CLOSE = _Close()


@dataclass(slots=True)
class _Message:
    """One platform message of a stream, as its owner task tracks it. Never leaves the task."""

    seq: int
    text: str  # what it must show now
    is_final: bool = False  # no later input changes `text`
    written: str | None = None  # the text last recorded in the outbox
    entry_id: int | None = None
    ref: str | None = None  # set once posted
    shown: str | None = None  # the text the platform last confirmed
    sent_at: float = -math.inf  # time.monotonic() of the last successful post or edit


class OutputStream(OwnedTask):
    """One batch's output in one thread of one `MessageSink`.

    Use as ``async with OutputStream(...) as stream``: entering starts the owner task, the only
    caller of the sink for this stream. `feed` hands it text without waiting. The current
    message is posted as soon as it has something visible and then edited in place, at most
    once per ``sink.edit_interval_s``, always with the newest text; once the turn is over
    (`close`), each message's final text goes out at once, without waiting for the interval.
    When it would exceed ``sink.max_message_chars`` it is finalised at a `split_message`
    boundary and the next one begins, so the messages end up exactly ``split_message(all text
    fed)``. A text is written to the outbox before the call that shows it and confirmed after.
    A failed call is retried with whatever text is newest by then, after the platform's
    ``retry_after`` (or backoff); message k+1 is never posted before message k.

    Leaving the block normally is `close`. Leaving it with an exception (cancellation
    included) cancels the owner; what was written but not confirmed stays in the outbox for
    `redeliver`.
    """

    def __init__(
        self,
        sink: MessageSink,
        outbox: Outbox,
        *,
        platform: str,
        thread: str,
        batch_id: int,
        first_seq: int = 0,
        policy: DeliveryPolicy | None = None,
    ) -> None:
        """Raises ValueError when the sink's ``max_message_chars`` is below the minimum."""
        if sink.max_message_chars < MIN_MESSAGE_CHARS:
            raise ValueError(
                f"sink.max_message_chars must be at least {MIN_MESSAGE_CHARS}, "
                f"got {sink.max_message_chars}"
            )
        self._sink = sink
        self._outbox = outbox
        self._platform = platform
        self._thread = thread
        self._batch_id = batch_id
        self._policy = policy or DeliveryPolicy()
        self._max_chars = sink.max_message_chars
        self._interval_s = sink.edit_interval_s
        self._queue: asyncio.Queue[str | _Close] = asyncio.Queue()
        super().__init__()
        # Everything below is the owner task's alone.
        self._pending: list[str] = []
        self._is_dirty = False
        self._is_closing = False
        self._tail = ""  # raw text of the current message onwards
        self._tail_fence: str | None = None  # the fence open where `_tail` starts
        self._tail_slack: int | None = None  # `plan`'s slack left where `_tail` starts
        self._messages: list[_Message] = []
        self._done_upto = 0  # messages before this index are final and confirmed
        self._next_seq = first_seq
        self._hold_until = -math.inf  # no platform call before this time.monotonic()
        self._failures = 0  # consecutive failed calls

    @property
    def next_seq(self) -> int:
        """The seq after this stream's last message. Only meaningful once `close` returned."""
        return self._next_seq

    def _what(self) -> str:
        return f"output stream of batch {self._batch_id}"

    async def _finish(self) -> None:
        await self.close()

    def feed(self, text: str) -> None:
        """Append ``text`` to the output. Never waits.

        Raises:
            RuntimeError: the stream is not open (not entered, or `close` was called).
        """
        if self._state is not Lifecycle.OPEN:
            raise RuntimeError(
                f"OutputStream.feed() needs an open stream; this one is {self._state}"
            )
        if text:
            self._queue.put_nowait(text)

    async def close(self) -> None:
        """Flush everything and return once every message is confirmed on the platform.

        Progress edits still waiting are dropped: each message gets its final text next. Safe
        to call again (it raises the same error again); cancelling it cancels the owner task.
        Leaving the ``async with`` block after a close() does not raise its error a second time.

        Raises:
            AdapterError: a call failed for good (not retryable, or out of attempts).
            RuntimeError: the stream was never entered.
        """
        if self._task is None:
            raise RuntimeError("OutputStream.close() before `async with` started it")
        if self._task.cancelled():
            raise RuntimeError("OutputStream.close() after the stream was cancelled")
        if self._state is Lifecycle.OPEN:
            self._state = transition("OutputStream", self._state, Lifecycle.CLOSING)
            self._queue.put_nowait(_CLOSE)
        await self._task

    # -- the owner task

    async def _run(self) -> None:
        while True:
            self._drain()
            if self._is_dirty:
                self._is_dirty = False
                self._reflow()
                await self._record_finals()
            step = self._next_step()
            if step is None:
                if self._is_closing:
                    return
                self._take(await self._queue.get())
                continue
            message, due = step
            delay = due - time.monotonic()
            if delay > 0:
                # Deliberate pacing (edit interval, retry_after). Input is taken as it comes,
                # so the close ends the wait of a progress edit: the final text goes at once.
                try:
                    async with asyncio.timeout(delay):
                        item = await self._queue.get()
                except TimeoutError:
                    continue
                self._take(item)
                continue
            await self._send(message)

    def _take(self, item: str | _Close) -> None:
        if isinstance(item, _Close):
            self._is_closing = True
        else:
            self._pending.append(item)
        self._is_dirty = True

    def _drain(self) -> None:
        while True:
            try:
                item = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            self._take(item)

    def _reflow(self) -> None:
        """Re-cut the current message's text; every part but the last becomes final."""
        if self._pending:
            self._tail += "".join(self._pending)
            self._pending.clear()
        spans = plan(self._tail, self._tail_fence, self._max_chars, self._tail_slack)
        for index, span in enumerate(spans):
            is_final = self._is_closing or index < len(spans) - 1
            self._settle(render_span(self._tail, span), is_final=is_final)
        if spans and not self._is_closing:
            self._tail = self._tail[spans[-1].start :]
            self._tail_fence = spans[-1].fence_in
            self._tail_slack = spans[-1].slack_in

    def _settle(self, text: str, *, is_final: bool) -> None:
        last = self._messages[-1] if self._messages else None
        if last is None or last.is_final:
            if not is_visible(text):
                return  # nothing to show yet (or ever, if final)
            last = _Message(seq=self._next_seq, text=text)
            self._next_seq += 1
            self._messages.append(last)
        last.text = text
        last.is_final = is_final

    async def _record_finals(self) -> None:
        # A final text is recorded at once, even if its edit must wait for pacing: after a crash,
        # `redeliver` then shows the final cut, not a stale progress text overlapping the next.
        for message in self._messages[self._done_upto :]:
            if message.is_final and message.written != message.text:
                await self._write(message)

    async def _write(self, message: _Message) -> None:
        message.entry_id = await self._outbox.outbox_write(
            self._platform, self._thread, self._batch_id, message.seq, message.text
        )
        message.written = message.text

    def _next_step(self) -> tuple[_Message, float] | None:
        """The message to send next and when, or None when everything is confirmed."""
        while self._done_upto < len(self._messages):
            first = self._messages[self._done_upto]
            if not (first.is_final and first.shown == first.text):
                break
            self._done_upto += 1
        best: tuple[_Message, float] | None = None
        for message in self._messages[self._done_upto :]:
            if message.shown == message.text:
                continue
            due = self._hold_until
            # Progress edits are paced; a turn's final text goes out at once (the platform's
            # own limits still hold: its 429's retry_after sets `_hold_until`).
            is_turn_over = self._is_closing and message.is_final
            if message.ref is not None and not is_turn_over:
                due = max(due, message.sent_at + self._interval_s)
            if best is None or due < best[1]:
                best = (message, due)
            if message.ref is None:
                break  # later messages are posted after this one
        return best

    async def _send(self, message: _Message) -> None:
        text = message.text
        if message.written != text:
            await self._write(message)
        assert message.entry_id is not None  # set by _write
        what = "post" if message.ref is None else "edit"
        try:
            async with asyncio.timeout(self._policy.call_timeout_s):
                if message.ref is None:
                    ref = await self._sink.post(self._thread, text)
                else:
                    ref = message.ref
                    await self._sink.edit(ref, text)
        except AdapterError as exc:
            self._retry_later(exc)
            return
        except TimeoutError as exc:
            self._retry_later(timed_out(what, self._policy, exc))
            return
        message.ref = ref
        message.shown = text
        message.sent_at = time.monotonic()
        self._failures = 0
        await self._outbox.outbox_confirm(message.entry_id, ref, text)

    def _retry_later(self, error: AdapterError) -> None:
        self._failures += 1
        if not error.retryable or self._failures >= self._policy.max_attempts:
            raise error
        delay = self._policy.retry_delay_s(self._failures, error.retry_after)
        self._hold_until = time.monotonic() + delay
        log.warning(
            "output call failed (%s); retrying with the newest text in %.2fs",
            error,
            delay,
            extra=self._log_extra(),
        )

    def _log_extra(self) -> dict[str, object]:
        return {"platform": self._platform, "batch_id": self._batch_id}
