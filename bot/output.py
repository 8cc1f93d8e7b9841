"""Turning one batch's streamed text into chat messages: split to the platform's limit, edit in
place at the platform's pace, and record every message in the outbox before it is sent.

Invariant: an `OutputStream`'s owner task is the only caller of post/edit for that stream;
message k+1 is never posted before message k, and every text is written to the `Outbox` before
the platform call that shows it and confirmed after, so `redeliver` can finish after a crash.
"""

from __future__ import annotations

import asyncio
import bisect
import enum
import functools
import logging
import math
import random
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol, Self, TypeVar, assert_never

from adapters.base import AdapterError, ApprovalSink, MessageSink
from bot.model import (
    ApprovalRequested,
    ApprovalResolved,
    Batch,
    BatchDone,
    BatchStarted,
    Notice,
    OutputText,
    PartyEvent,
    TurnStatus,
)
from bot.safety import neutralize_mentions

__all__ = [
    "MIN_MESSAGE_CHARS",
    "DeliveryPolicy",
    "Outbox",
    "OutboxEntry",
    "OutputStream",
    "ThreadRelay",
    "redeliver",
    "split_message",
]

log = logging.getLogger(__name__)

_T = TypeVar("_T")

MIN_MESSAGE_CHARS = 64
"""The smallest message limit `split_message` accepts: a reopened fence and its close must fit."""

# --------------------------------------------------------------------------- splitting

_FENCE = "```"
# A fence line is a line whose first non-blank characters are ```. This is CommonMark's line
# rule, which is what Claude writes; an odd number of ``` on the line toggles the state, so a
# one-line "```x```" does not.
_FENCE_START = re.compile(r"[ \t]*```")
_FENCE_LINE = re.compile(r"^[ \t]*```[^\n]*", re.MULTILINE)
# Cuts prefer a paragraph, then a line, then a word boundary, but only within the last quarter
# of the budget, and only while the stream's slack lasts (see `_plan`).
_BOUNDARY_WINDOW = 0.25
# An info string longer than this is not repeated when a fence is reopened; it is not a
# language name, and repeating it could eat the budget of every part.
_MAX_INFO_CHARS = 32


@dataclass(frozen=True, slots=True)
class _Span:
    """text[start:end] is one part's body; fence_in/out is the info of the fence open there."""

    start: int
    end: int
    fence_in: str | None
    fence_out: str | None
    slack_in: int  # boundary slack left when this part starts (see `_plan`)


def _fence_step(line: str, fence: str | None) -> str | None:
    """The fence state after ``line``: None when outside a fence, else the open fence's info."""
    stripped = line.lstrip(" \t")
    if not stripped.startswith(_FENCE) or stripped.count(_FENCE) % 2 == 0:
        return fence
    if fence is not None:
        return None
    return stripped.rstrip().lstrip("`").strip()


def _fence_after(text: str, start: int, end: int, fence: str | None) -> str | None:
    """The fence state after text[start:end], ``fence`` being the state at ``start``."""
    for match in _FENCE_LINE.finditer(text, start, end):
        fence = _fence_step(match.group(), fence)
    return fence


def _reopen(info: str) -> str:
    return f"{_FENCE}{info if len(info) <= _MAX_INFO_CHARS else ''}\n"


def _close(body: str) -> str:
    return _FENCE if body.endswith("\n") else "\n" + _FENCE


def _render(text: str, span: _Span) -> str:
    body = text[span.start : span.end]
    head = "" if span.fence_in is None else _reopen(span.fence_in)
    tail = "" if span.fence_out is None else _close(body)
    return head + body + tail


def _is_visible(text: str) -> bool:
    # Platforms refuse a message that is empty or only whitespace.
    return bool(text.strip())


def _choose_cut(
    text: str, pos: int, fence: str | None, budget: int, window: int
) -> tuple[int, str | None]:
    """Where the part starting at ``pos`` ends, and the fence state there: a boundary no
    more than ``window`` characters before the budget's end, else a hard cut.

    The choice depends on text[pos:pos + budget] and ``window`` only, so a stream that cuts
    as soon as its text overflows makes exactly the cuts `split_message` makes.
    """
    limit = min(pos + budget, len(text))
    lo = pos + budget - window
    starts = [pos]  # line starts in [pos, limit]
    states = [fence]  # the fence state at each of them
    i = pos
    while (j := text.find("\n", i, limit)) >= 0:
        state = states[-1]
        if _FENCE_START.match(text, i, j):
            state = _fence_step(text[i:j], state)
        starts.append(j + 1)
        states.append(state)
        i = j + 1

    def fits(c: int) -> tuple[bool, str | None]:
        k = bisect.bisect_right(starts, c) - 1
        state = states[k]
        if c == starts[k]:
            close_chars = len(_FENCE)
        else:
            # Never inside a fence line, and never so the next part starts like one.
            lead = text[starts[k] : c].lstrip(" \t")
            if lead.startswith(_FENCE) or _FENCE.startswith(lead):
                return False, state
            if c < len(text) and text[c] in " \t`":
                return False, state
            close_chars = len(_FENCE) + 1
        return c - pos + (0 if state is None else close_chars) <= budget, state

    line_cut: tuple[int, str | None] | None = None
    for k in range(len(starts) - 1, 0, -1):
        c = starts[k]
        if c < lo:
            break
        if c - pos + (0 if states[k] is None else len(_FENCE)) > budget:
            continue
        if not text[starts[k - 1] : c].strip():  # the line ending here is blank: a paragraph
            return c, states[k]
        if line_cut is None:
            line_cut = (c, states[k])
    if line_cut is not None:
        return line_cut
    end = limit
    while (space := text.rfind(" ", lo, end)) >= 0:
        ok, state = fits(space + 1)
        if ok:
            return space + 1, state
        end = space
    for c in range(limit, pos, -1):
        ok, state = fits(c)
        if ok:
            return c, state
    # Only a fence line longer than the whole budget gets here: cut it anyway.
    c = max(pos + 1, limit - len(_FENCE) - 1)
    return c, states[bisect.bisect_right(starts, c) - 1]


def _plan(text: str, fence: str | None, max_chars: int, slack: int | None = None) -> list[_Span]:
    """Cut ``text`` (which starts with ``fence`` open) into spans that render to <= max_chars.

    ``slack`` (default half of ``max_chars``) is how many characters, summed over all parts
    but the last, may go unused by cutting at a nicer boundary; each cut may spend half
    of what is left. The other half covers the fence lines of cuts inside code. Keeping the
    total below ``max_chars`` is what bounds the count at one message per ``max_chars`` of
    text plus one (issue #4); that holds while the fence lines of splits stay under half a
    message, true at Discord's and Slack's limits (about 15 characters a split).
    """
    slack = max_chars // 2 if slack is None else slack
    spans: list[_Span] = []
    pos, n = 0, len(text)
    while pos < n:
        budget = max_chars - (0 if fence is None else len(_reopen(fence)))
        if n - pos <= budget:
            out = _fence_after(text, pos, n, fence)
            if n - pos + (0 if out is None else len(_close(text))) <= budget:
                spans.append(_Span(pos, n, fence, out, slack))
                break
        window = min(int(budget * _BOUNDARY_WINDOW), slack // 2)
        cut, out = _choose_cut(text, pos, fence, budget, window)
        spans.append(_Span(pos, cut, fence, out, slack))
        slack = max(0, slack - (budget - (cut - pos)))
        pos, fence = cut, out
    return spans


def split_message(text: str, max_chars: int) -> list[str]:
    """Split ``text`` into messages of at most ``max_chars`` characters each.

    Cuts prefer a paragraph boundary, then a line boundary, then a space, then anywhere (never
    inside a fence line), and keep each separator with the part before it. A part that ends
    inside a ``` fence is closed with ``` (after a newline if it does not end with one) and the
    next part reopens it with the same info string (e.g. ```python); those lines count against
    ``max_chars``. An unclosed fence at the end of ``text`` is closed too, so every part is
    balanced. Removing the added fence lines and joining the parts gives ``text`` back, except
    that parts with nothing visible (whitespace only) are dropped. ``""`` gives ``[]``. Pure.

    Raises:
        ValueError: ``max_chars`` is below `MIN_MESSAGE_CHARS`.
    """
    if max_chars < MIN_MESSAGE_CHARS:
        raise ValueError(f"max_chars must be at least {MIN_MESSAGE_CHARS}, got {max_chars}")
    parts = (_render(text, span) for span in _plan(text, None, max_chars))
    return [part for part in parts if _is_visible(part)]


# --------------------------------------------------------------------------- outbox


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    """One message as the outbox last recorded it; ``ref`` is None until it was first posted."""

    entry_id: int
    platform: str
    thread: str
    batch_id: int
    seq: int
    text: str
    ref: str | None


class Outbox(Protocol):
    """The durable record of what must appear on each platform (the SQLite store implements it).

    An entry is keyed by (platform, thread, batch_id, seq). It is unsynced from the moment a
    text is written until the platform confirms that very text.
    """

    async def outbox_write(
        self, platform: str, thread: str, batch_id: int, seq: int, text: str
    ) -> int:
        """Upsert the entry's text and mark it unsynced; return its stable entry_id."""
        ...

    async def outbox_confirm(self, entry_id: int, ref: str, text: str) -> None:
        """Record that the platform shows ``text`` under ``ref``.

        The entry becomes synced iff ``text`` equals its latest written text.
        """
        ...

    async def outbox_unsynced(self, platform: str) -> list[OutboxEntry]:
        """What still has to be posted or edited on ``platform``, in (batch_id, seq) order."""
        ...


# --------------------------------------------------------------------------- delivery


@dataclass(frozen=True, slots=True)
class DeliveryPolicy:
    """How a platform call is retried: a deadline per call, and a bounded number of attempts.

    A failure that names ``retry_after`` waits exactly that long; any other retryable failure
    (or a missed deadline) backs off exponentially from ``backoff_base_s`` up to
    ``backoff_cap_s``, with jitter. After ``max_attempts`` consecutive failures the last error
    is raised.
    """

    max_attempts: int = 6
    backoff_base_s: float = 0.5
    backoff_cap_s: float = 30.0
    call_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {self.max_attempts}")
        if not 0 < self.backoff_base_s <= self.backoff_cap_s:
            raise ValueError("backoff_base_s must be > 0 and <= backoff_cap_s")
        if self.call_timeout_s <= 0:
            raise ValueError(f"call_timeout_s must be > 0, got {self.call_timeout_s}")

    def retry_delay_s(self, attempt: int, retry_after: float | None) -> float:
        """Seconds to wait after the ``attempt``-th consecutive failure (1-based)."""
        if retry_after is not None:
            return max(0.0, retry_after)
        ceiling = min(self.backoff_cap_s, self.backoff_base_s * 2.0 ** (attempt - 1))
        return ceiling / 2 + random.uniform(0, ceiling / 2)


def _timed_out(what: str, policy: DeliveryPolicy, exc: TimeoutError) -> AdapterError:
    error = AdapterError(f"{what} got no answer within {policy.call_timeout_s}s")
    error.__cause__ = exc
    return error


async def _call_with_retry(
    policy: DeliveryPolicy, call: Callable[[], Awaitable[_T]], *, what: str
) -> _T:
    """Await ``call()`` under the policy's deadline, retrying as the policy says.

    Raises:
        AdapterError: a non-retryable failure, or the last one once attempts are used up.
    """
    attempt = 0
    while True:
        attempt += 1
        try:
            async with asyncio.timeout(policy.call_timeout_s):
                return await call()
        except AdapterError as exc:
            error = exc
        except TimeoutError as exc:
            error = _timed_out(what, policy, exc)
        if not error.retryable or attempt >= policy.max_attempts:
            raise error
        delay = policy.retry_delay_s(attempt, error.retry_after)
        log.warning("%s failed (%s); retrying in %.2fs", what, error, delay)
        await asyncio.sleep(delay)  # deliberate pacing: the platform's retry_after or backoff


async def redeliver(
    sink: MessageSink, outbox: Outbox, platform: str, *, policy: DeliveryPolicy | None = None
) -> int:
    """Finish what a crash interrupted: post (no ref) or edit (ref) every unsynced entry.

    Entries go in (batch_id, seq) order and each is confirmed after its call, so running this
    again after a crash in the middle repeats nothing that was confirmed. When an entry fails
    for good, the rest of its batch in that thread is skipped (posting them would break the
    order) and logged; the others still go. Returns how many entries were delivered.
    """
    policy = policy or DeliveryPolicy()

    async def deliver(entry: OutboxEntry) -> str:
        if entry.ref is None:
            return await sink.post(entry.thread, entry.text)
        await sink.edit(entry.ref, entry.text)
        return entry.ref

    delivered = 0
    broken: set[tuple[str, int]] = set()
    for entry in await outbox.outbox_unsynced(platform):
        if (entry.thread, entry.batch_id) in broken:
            continue
        try:
            ref = await _call_with_retry(
                policy, functools.partial(deliver, entry), what=f"redeliver {platform}"
            )
        except AdapterError:
            log.error(
                "could not redeliver message %d of batch %d; skipping the rest of the batch",
                entry.seq,
                entry.batch_id,
                exc_info=True,
                extra={"platform": platform, "batch_id": entry.batch_id},
            )
            broken.add((entry.thread, entry.batch_id))
            continue
        await outbox.outbox_confirm(entry.entry_id, ref, entry.text)
        delivered += 1
    return delivered


# --------------------------------------------------------------------------- streaming


class _Lifecycle(enum.StrEnum):
    UNOPENED = "unopened"  # built; no owner task yet
    OPEN = "open"  # owner task running; accepting input
    CLOSING = "closing"  # asked to finish; the owner flushes what it has
    CLOSED = "closed"  # owner finished or cancelled; nothing more happens


_TRANSITIONS: dict[_Lifecycle, frozenset[_Lifecycle]] = {
    _Lifecycle.UNOPENED: frozenset({_Lifecycle.OPEN}),
    _Lifecycle.OPEN: frozenset({_Lifecycle.CLOSING, _Lifecycle.CLOSED}),
    _Lifecycle.CLOSING: frozenset({_Lifecycle.CLOSED}),
    _Lifecycle.CLOSED: frozenset(),
}


def _transition(what: str, current: _Lifecycle, target: _Lifecycle) -> _Lifecycle:
    if target not in _TRANSITIONS[current]:
        raise RuntimeError(f"{what} cannot become {target} once {current}; use a new one")
    return target


async def _cancel_owner(task: asyncio.Task[None], exc: BaseException | None, what: str) -> None:
    """Cancel an owner task on the way out of a failed block; log an error it hid, if any."""
    task.cancel()
    await asyncio.wait([task])
    if not task.cancelled():
        error = task.exception()
        if error is not None and error is not exc:
            log.error("%s failed", what, exc_info=error)


def _owner_error(task: asyncio.Task[None] | None) -> BaseException | None:
    """Why an owner task ended early, for chaining into a misuse error."""
    if task is None or not task.done() or task.cancelled():
        return None
    return task.exception()


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


class OutputStream:
    """One batch's output in one thread of one `MessageSink`.

    Use as ``async with OutputStream(...) as stream``: entering starts the owner task, the only
    caller of the sink for this stream. `feed` hands it text without waiting. The current
    message is posted as soon as it has something visible and then edited in place, at most
    once per ``sink.edit_interval_s``, always with the newest text. When it would exceed
    ``sink.max_message_chars`` it is finalised at a `split_message` boundary and the next one
    begins, so the messages end up exactly ``split_message(all text fed)``. A text is written to
    the outbox before the call that shows it and confirmed after. A failed call is retried
    with whatever text is newest by then, after the platform's ``retry_after`` (or backoff);
    message k+1 is never posted before message k.

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
        self._state = _Lifecycle.UNOPENED  # written by the caller's side only
        self._task: asyncio.Task[None] | None = None
        # Everything below is the owner task's alone.
        self._pending: list[str] = []
        self._is_dirty = False
        self._is_closing = False
        self._tail = ""  # raw text of the current message onwards
        self._tail_fence: str | None = None  # the fence open where `_tail` starts
        self._tail_slack: int | None = None  # `_plan`'s slack left where `_tail` starts
        self._messages: list[_Message] = []
        self._done_upto = 0  # messages before this index are final and confirmed
        self._next_seq = first_seq
        self._hold_until = -math.inf  # no platform call before this time.monotonic()
        self._failures = 0  # consecutive failed calls

    @property
    def next_seq(self) -> int:
        """The seq after this stream's last message. Only meaningful once `close` returned."""
        return self._next_seq

    async def __aenter__(self) -> Self:
        self._state = _transition("OutputStream", self._state, _Lifecycle.OPEN)
        self._task = asyncio.create_task(self._run(), name=f"output-{self._batch_id}")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._task is None:
            return
        try:
            if exc_type is None:
                if self._state is _Lifecycle.OPEN:
                    await self.close()
                else:  # close() was called; its caller got any error
                    await asyncio.wait([self._task])
                return
            await _cancel_owner(self._task, exc, f"output stream of batch {self._batch_id}")
        finally:
            self._state = _Lifecycle.CLOSED

    def feed(self, text: str) -> None:
        """Append ``text`` to the output. Never waits.

        Raises:
            RuntimeError: the stream is not open (not entered, or `close` was called).
        """
        if self._state is not _Lifecycle.OPEN:
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
        if self._state is _Lifecycle.OPEN:
            self._state = _transition("OutputStream", self._state, _Lifecycle.CLOSING)
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
                # Deliberate pacing (edit interval, retry_after); input keeps coalescing.
                await asyncio.sleep(delay)
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
        spans = _plan(self._tail, self._tail_fence, self._max_chars, self._tail_slack)
        for index, span in enumerate(spans):
            is_final = self._is_closing or index < len(spans) - 1
            self._settle(_render(self._tail, span), is_final=is_final)
        if spans and not self._is_closing:
            self._tail = self._tail[spans[-1].start :]
            self._tail_fence = spans[-1].fence_in
            self._tail_slack = spans[-1].slack_in

    def _settle(self, text: str, *, is_final: bool) -> None:
        last = self._messages[-1] if self._messages else None
        if last is None or last.is_final:
            if not _is_visible(text):
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
            if message.ref is not None:
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
            self._retry_later(_timed_out(what, self._policy, exc))
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


# --------------------------------------------------------------------------- relay

_HEADER_SEQ = 0  # a batch's header is its first message; its output follows, then the status
_HEADER_PROMPT_CHARS = 300
_HEADER_PROMPT_LINES = 8
_HEADER_PART_CHARS = 120
_HEADER_AUTHORS = 10
_STATUS_DETAIL_CHARS = 200


def _batch_header(batch: Batch, max_chars: int) -> str:
    """ "**Batch 12** — alice, bob" and the merged prompt, capped and quoted line by line."""
    names = batch.authors
    authors = ", ".join(names[:_HEADER_AUTHORS])
    if len(names) > _HEADER_AUTHORS:
        authors += f" and {len(names) - _HEADER_AUTHORS} more"
    title = f"**Batch {batch.batch_id}**"
    if batch.is_rerun:
        title += f" (re-run after a restart, attempt {batch.attempt})"
    if batch.groups and len(batch.sources) > 1:
        lines = _merge_lines(batch)
    else:
        prompt = batch.prompt.strip()
        if len(prompt) > _HEADER_PROMPT_CHARS:
            prompt = prompt[: _HEADER_PROMPT_CHARS - 1].rstrip() + "…"
        lines = prompt.splitlines()
    if len(lines) > _HEADER_PROMPT_LINES:
        lines = [*lines[:_HEADER_PROMPT_LINES], "…"]
    quoted = "\n".join(f"> {line}" if line.strip() else ">" for line in lines)
    header = neutralize_mentions(f"{title} — {authors}" + (f"\n{quoted}" if quoted else ""))
    if len(header) > max_chars:
        header = header[: max_chars - 1] + "…"
    return header


def _merge_lines(batch: Batch) -> list[str]:
    """One line per part of a merged batch: its instruction and the prompts merged into it.

    "1. fix the login test ← #12 alice, #14 bob", then a line for the reactions counted.
    """
    author = {s.prompt_id: s.author for s in batch.sources}
    lines = []
    for number, group in enumerate(batch.groups, start=1):
        first = group.instruction.strip().splitlines()[0] if group.instruction.strip() else ""
        if len(first) > _HEADER_PART_CHARS:
            first = first[: _HEADER_PART_CHARS - 1].rstrip() + "…"
        merged = ", ".join(f"#{i} {author.get(i, '?')}" for i in group.prompt_ids)
        lines.append(f"{number}. {first} ← {merged}")
    grouped = {i for g in batch.groups for i in g.prompt_ids}
    reactions = [f"#{s.prompt_id} {s.author}" for s in batch.sources if s.prompt_id not in grouped]
    if reactions:
        lines.append(f"reactions: {', '.join(reactions)}")
    return lines


def _approval_text(approval: ApprovalRequested, max_chars: int) -> str:
    """An approval as a plain message: what Claude wants, and how to answer."""
    quorum = (
        f"needs {approval.needed} different approvers"
        if approval.needed > 1
        else "needs one approver"
    )
    detail = approval.detail.replace("```", "`\u200b``")
    answer = (
        f"Approvers answer with `/concordia approve {approval.approval_id} allow`, "
        f"`always` or `deny`; {quorum}; no answer in {approval.timeout_s:g} s denies it."
    )
    head = f"🔐 **Approval {approval.approval_id}**: Claude wants to {approval.summary}"
    room = max_chars - len(head) - len(answer) - 12
    if len(detail) > room:
        detail = detail[: max(0, room - 1)] + "…"
    return neutralize_mentions(f"{head}\n```\n{detail}\n```\n{answer}")


def _closed_approval_text(text: str, resolved: ApprovalResolved, max_chars: int) -> str:
    """The approval's message once decided: its request, then the outcome instead of how
    to answer."""
    request = text.rsplit("\n", 1)[0]
    mark = "✅" if resolved.allowed else "⛔"
    line = neutralize_mentions(f"{mark} {resolved.text}")
    return (request[: max_chars - len(line) - 1] + "\n" + line)[:max_chars]


def _status_line(done: BatchDone, *, has_output: bool) -> str | None:
    match done.status:
        case TurnStatus.SUCCESS:
            return None if has_output else "✓ done (no output)"
        case TurnStatus.ERROR:
            detail = neutralize_mentions(" ".join(done.detail.split()))[:_STATUS_DETAIL_CHARS]
            return f"⚠ failed: {detail}" if detail else "⚠ failed"
        case TurnStatus.INTERRUPTED:
            return "⏹ interrupted"
        case _:
            assert_never(done.status)


class _Stop:
    """Queue sentinel: stop once everything queued before it is handled."""

    __slots__ = ()


_STOP = _Stop()


class ThreadRelay:
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
    ) -> None:
        """``home_thread`` takes the batches of a shared party that have no source on this
        platform (prompts from another transport), and notices before the first batch;
        with none, such batches are not shown here."""
        self._sink = sink
        self._outbox = outbox
        self._platform = platform
        self._home_thread = home_thread
        self._policy = policy or DeliveryPolicy()
        self._queue: asyncio.Queue[PartyEvent | _Stop] = asyncio.Queue()
        # Approvals shown and not yet resolved: their message ref, request and plain text.
        self._approvals: dict[int, tuple[str, ApprovalRequested, str]] = {}
        self._state = _Lifecycle.UNOPENED  # written by the caller's side only
        self._task: asyncio.Task[None] | None = None
        # The latest batch's thread; the owner task's alone.
        self._thread: str | None = home_thread or None

    async def __aenter__(self) -> Self:
        self._state = _transition("ThreadRelay", self._state, _Lifecycle.OPEN)
        self._task = asyncio.create_task(self._run(), name=f"relay-{self._platform}")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._task is None:
            return
        try:
            if exc_type is None:
                if self._state is _Lifecycle.OPEN:
                    await self.stop()
                else:  # stop() was called; its caller got any error
                    await asyncio.wait([self._task])
                return
            await _cancel_owner(self._task, exc, f"{self._platform} relay")
        finally:
            self._state = _Lifecycle.CLOSED

    def deliver(self, event: PartyEvent) -> None:
        """Queue ``event`` for the owner task. Never waits.

        Raises:
            RuntimeError: the relay is not running: not entered, stopping, or its task died
                (that error is chained).
        """
        if self._state is not _Lifecycle.OPEN:
            raise RuntimeError(
                f"ThreadRelay.deliver() needs a running relay; this one is {self._state}"
            )
        if self._task is not None and self._task.done():
            raise RuntimeError(
                "ThreadRelay.deliver() needs a running relay; its task has ended"
            ) from _owner_error(self._task)
        self._queue.put_nowait(event)

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
        if self._state is _Lifecycle.OPEN:
            self._state = _transition("ThreadRelay", self._state, _Lifecycle.CLOSING)
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
        header = _batch_header(batch, self._sink.max_message_chars)
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
                else:
                    ending = event
            if isinstance(ending, BatchDone):
                status = _status_line(ending, has_output=seq > _HEADER_SEQ + 1)
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
    ) -> BatchDone | BatchStarted | _Stop | ApprovalRequested:
        """Feed this batch's output to ``stream`` (or drop it) until something ends the batch,
        or, with a stream, until an approval request (returned: it goes below the output)."""
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
                case ApprovalRequested() if stream is not None:
                    return event
                case ApprovalRequested() | ApprovalResolved():
                    await self._relay_approval(event, thread)
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
        ref = await _call_with_retry(
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
                        ref = await _call_with_retry(
                            self._policy,
                            lambda: sink.post_approval(thread, event),
                            what=f"approval to {self._platform}",
                        )
                        self._approvals[event.approval_id] = (ref, event, "")
                    else:
                        text = _approval_text(event, self._sink.max_message_chars)
                        ref = await _call_with_retry(
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
                        await _call_with_retry(
                            self._policy,
                            lambda: sink.close_approval(ref, request, event),
                            what=f"approval update on {self._platform}",
                        )
                    else:
                        closed = _closed_approval_text(text, event, self._sink.max_message_chars)
                        await _call_with_retry(
                            self._policy,
                            lambda: self._sink.edit(ref, closed),
                            what=f"approval update on {self._platform}",
                        )
                case _:
                    assert_never(event)
        except AdapterError:
            log.error("could not show an approval", exc_info=True, extra=extra)

    async def _post_notice(self, message: str) -> None:
        thread = self._thread
        if thread is None:
            log.info("notice not shown: no batch thread yet", extra={"platform": self._platform})
            return
        try:
            await _call_with_retry(
                self._policy,
                lambda: self._sink.post(thread, message),
                what=f"notice to {self._platform}",
            )
        except AdapterError:
            log.error("could not post a notice", exc_info=True, extra={"platform": self._platform})
