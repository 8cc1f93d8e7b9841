"""Output (split, delivery, stream, relay): splitting, the owner task, recovery and the relay.

The sink is an in-process fake of the `MessageSink` seam that records every call in a queue the
tests await, and fails or stalls chosen calls on demand; the outbox is an in-memory `Outbox`.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import random
import time
from dataclasses import dataclass, field

import pytest

from bot.delivery import DeliveryPolicy, redeliver
from bot.model import (
    ApprovalRequested,
    ApprovalResolved,
    Batch,
    BatchDone,
    BatchStarted,
    MergeGroup,
    Notice,
    OutputText,
    SourcePrompt,
    TurnStatus,
)
from bot.ports import AdapterError, OutboxEntry
from bot.relay import ThreadRelay
from bot.split import MIN_MESSAGE_CHARS, split_message
from bot.stream import OutputStream

PLATFORM = "fake"
THREAD = "thread-1"
FAST = DeliveryPolicy(max_attempts=6, backoff_base_s=0.001, backoff_cap_s=0.01, call_timeout_s=5)


# --------------------------------------------------------------------------- fakes


@dataclass(slots=True)
class _Row:
    platform: str
    thread: str
    batch_id: int
    seq: int
    text: str
    ref: str | None = None
    is_synced: bool = False


class MemoryOutbox:
    """The `Outbox` protocol over dicts, as the SQLite store will implement it."""

    def __init__(self) -> None:
        self.rows: dict[int, _Row] = {}
        self._ids: dict[tuple[str, str, int, int], int] = {}

    async def outbox_write(
        self, platform: str, thread: str, batch_id: int, seq: int, text: str
    ) -> int:
        key = (platform, thread, batch_id, seq)
        if key not in self._ids:
            self._ids[key] = len(self._ids) + 1
            self.rows[self._ids[key]] = _Row(platform, thread, batch_id, seq, text)
        row = self.rows[self._ids[key]]
        row.text = text
        row.is_synced = False
        return self._ids[key]

    async def outbox_confirm(self, entry_id: int, ref: str, text: str) -> None:
        row = self.rows[entry_id]
        row.ref = ref
        row.is_synced = text == row.text

    async def outbox_unsynced(self, platform: str) -> list[OutboxEntry]:
        rows = [(i, r) for i, r in self.rows.items() if r.platform == platform and not r.is_synced]
        rows.sort(key=lambda item: (item[1].batch_id, item[1].seq))
        return [
            OutboxEntry(i, r.platform, r.thread, r.batch_id, r.seq, r.text, r.ref) for i, r in rows
        ]

    def holds_unsynced(self, text: str) -> bool:
        return any(not r.is_synced and r.text == text for r in self.rows.values())


@dataclass(frozen=True, slots=True)
class Call:
    kind: str  # "post" or "edit"
    target: str  # the thread for a post, the ref for an edit
    text: str
    at: float
    error: AdapterError | None = None
    ref: str | None = None


@dataclass
class FakeSink:
    """A platform in memory: messages by ref, threads in post order, every call recorded."""

    max_chars: int = 200
    interval_s: float = 0.0
    outbox: MemoryOutbox | None = None  # when set, check each text was recorded before the call
    messages: dict[str, str] = field(default_factory=dict)
    threads: dict[str, list[str]] = field(default_factory=dict)
    log: list[Call] = field(default_factory=list)
    calls: asyncio.Queue[Call] = field(default_factory=asyncio.Queue)
    unrecorded: list[str] = field(default_factory=list)
    blocked: asyncio.Event = field(default_factory=asyncio.Event)
    _failures: dict[tuple[str, int], AdapterError] = field(default_factory=dict)
    _blocks: set[tuple[str, int]] = field(default_factory=set)
    _attempts: dict[str, int] = field(default_factory=lambda: {"post": 0, "edit": 0})
    _never: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def max_message_chars(self) -> int:
        return self.max_chars

    @property
    def edit_interval_s(self) -> float:
        return self.interval_s

    def fail_on(self, kind: str, *attempts: int, error: AdapterError) -> None:
        """Make the given attempts (1-based, per kind) of post or edit raise ``error``."""
        for attempt in attempts:
            self._failures[(kind, attempt)] = error

    def block_on(self, kind: str, attempt: int) -> None:
        """Make that attempt hang forever without reaching the platform; sets `blocked`."""
        self._blocks.add((kind, attempt))

    async def _enter(self, kind: str, target: str, text: str) -> None:
        self._attempts[kind] += 1
        attempt = self._attempts[kind]
        if (kind, attempt) in self._blocks:
            self.blocked.set()
            await self._never.wait()
        if self.outbox is not None and not self.outbox.holds_unsynced(text):
            self.unrecorded.append(text)
        error = self._failures.get((kind, attempt))
        if error is None and len(text) > self.max_chars:
            error = AdapterError(f"{len(text)} chars is over the limit", retryable=False)
        if error is not None:
            self._record(Call(kind, target, text, time.monotonic(), error=error))
            raise error

    def _record(self, call: Call) -> None:
        self.log.append(call)
        self.calls.put_nowait(call)

    async def post(self, thread: str, text: str) -> str:
        await self._enter("post", thread, text)
        ref = f"m{len(self.messages) + 1}"
        self.messages[ref] = text
        self.threads.setdefault(thread, []).append(ref)
        self._record(Call("post", thread, text, time.monotonic(), ref=ref))
        return ref

    async def edit(self, ref: str, text: str) -> None:
        if ref not in self.messages:
            raise AdapterError(f"unknown message {ref}", retryable=False)
        await self._enter("edit", ref, text)
        self.messages[ref] = text
        self._record(Call("edit", ref, text, time.monotonic(), ref=ref))

    def texts(self, thread: str) -> list[str]:
        """What the thread shows now, oldest message first."""
        return [self.messages[ref] for ref in self.threads.get(thread, [])]

    def ok(self, kind: str | None = None) -> list[Call]:
        return [c for c in self.log if c.error is None and (kind is None or c.kind == kind)]


async def next_call(sink: FakeSink) -> Call:
    return await asyncio.wait_for(sink.calls.get(), 5)


# --------------------------------------------------------------------------- fence model
# An independent reading of the documented rule: a line whose first non-blank characters are
# ``` is a fence line, and an odd number of ``` on it toggles the fence.


def fence_state(text: str) -> str | None:
    state: str | None = None
    for line in text.split("\n"):
        stripped = line.lstrip(" \t")
        if stripped.startswith("```") and stripped.count("```") % 2 == 1:
            state = None if state is not None else stripped.strip().lstrip("`").strip()
    return state


def is_balanced(part: str) -> bool:
    return fence_state(part) is None


def reassembles(parts: list[str], text: str) -> bool:
    """Whether removing added fence lines from ``parts`` gives ``text`` back.

    A part may start with "```info\\n" only where ``text`` is inside a fence, and end with "```"
    (after a newline) only where ``text`` is inside a fence; everything else must be a slice
    of ``text``, the slices contiguous. Dropped parts can only be whitespace.
    """

    def walk(i: int, pos: int) -> bool:
        if i == len(parts):
            return not text[pos:].strip()
        part = parts[i]
        if fence_state(text[:pos]) is not None:
            if not part.startswith("```") or "\n" not in part:
                return False
            part = part[part.index("\n") + 1 :]
        options = [(part, False)]
        if part.endswith("\n```"):
            options.append((part[:-3], True))
            if not part[:-4].endswith("\n"):
                options.append((part[:-4], True))
        for body, closed in options:
            if not body or not text.startswith(body, pos):
                continue
            if closed != (fence_state(text[: pos + len(body)]) is not None):
                continue
            if walk(i + 1, pos + len(body)):
                return True
        return False

    return walk(0, 0)


# --------------------------------------------------------------------------- text generators

_WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "lazy", "dogs", "café", "日本", "😀"]
_WORDS += ["`code`", "**bold**", "x=1"]


def prose(rng: random.Random, chars: int, *, line_chars: int | None = None) -> str:
    words: list[str] = []
    size = line = 0
    while size < chars:
        word = rng.choice(_WORDS)
        sep = " "
        if line_chars is not None and line + len(word) > line_chars:
            sep, line = "\n", 0
        words.append(sep + word if words else word)
        size += len(word) + 1
        line += len(word) + 1
    return "".join(words)


def markdown(rng: random.Random, blocks: int) -> str:
    out: list[str] = []
    for _ in range(blocks):
        kind = rng.random()
        if kind < 0.4:
            out.append(prose(rng, rng.randrange(20, 400), line_chars=rng.choice([None, 60, 100])))
        elif kind < 0.7:
            info = rng.choice(["python", "", "sh", "diff"])
            body = "\n".join(
                "    " * rng.randrange(3) + prose(rng, rng.randrange(5, 70))
                for _ in range(rng.randrange(1, 25))
            )
            out.append(f"```{info}\n{body}\n```")
        elif kind < 0.8:
            out.append("".join(rng.choice("abcdef0123") for _ in range(rng.randrange(50, 500))))
        elif kind < 0.9:
            out.append("\n".join(f"- {prose(rng, rng.randrange(5, 80))}" for _ in range(5)))
        else:
            out.append("inline ```python``` and `x` and ``y`` stay put")
    text = rng.choice(["\n\n", "\n"]).join(out)
    if rng.random() < 0.2:
        text += "\n```python\nprint('left open')\n"  # an interrupted turn
    return text


# --------------------------------------------------------------------------- split_message


def test_short_text_is_one_part():
    assert split_message("hello\n\nworld", 64) == ["hello\n\nworld"]


def test_empty_and_blank_text_give_no_parts():
    assert split_message("", 64) == []
    assert split_message(" \n\n\t", 64) == []


def test_max_chars_below_the_minimum_is_refused():
    with pytest.raises(ValueError, match="at least 64"):
        split_message("x", MIN_MESSAGE_CHARS - 1)
    assert split_message("x" * 100, MIN_MESSAGE_CHARS) == ["x" * 64, "x" * 36]


def test_paragraph_boundary_beats_a_later_line_boundary():
    first = "\n".join(["a" * 50] * 3)
    rest = "b" * 10 + "\n" + "c" * 100
    parts = split_message(f"{first}\n\n{rest}", 200)
    assert parts == [f"{first}\n\n", rest]


def test_line_boundary_beats_a_word_boundary():
    lines = [" ".join(["word"] * 5)] * 20  # 24-char lines
    parts = split_message("\n".join(lines), 100)
    assert all(part.endswith("\n") for part in parts[:-1])
    assert "".join(parts) == "\n".join(lines)


def test_word_boundary_then_hard_cut():
    words = " ".join(["abcdefg"] * 60)
    parts = split_message(words, 100)
    assert all(part.endswith(" ") and len(part) <= 100 for part in parts[:-1])
    assert "".join(parts) == words
    assert split_message("x" * 250, 100) == ["x" * 100, "x" * 100, "x" * 50]


def test_split_inside_a_fence_closes_and_reopens_it():
    code = "\n".join(f"value_{i} = compute({i})" for i in range(30))
    text = f"Here is the code:\n```python\n{code}\n```\nDone."
    parts = split_message(text, 120)
    assert len(parts) > 2
    for part in parts:
        assert len(part) <= 120
        assert is_balanced(part)
    for part in parts[1:-1]:
        assert part.startswith("```python\n")
        assert part.endswith("\n```")
    assert parts[-1].startswith("```python\n")
    assert parts[-1].endswith("```\nDone.")
    assert reassembles(parts, text)


def test_hard_cut_inside_a_fence_counts_the_added_lines():
    text = "```\n" + "y" * 500 + "\n```"
    parts = split_message(text, 64)
    assert all(len(part) <= 64 and is_balanced(part) for part in parts)
    assert max(len(part) for part in parts) == 64  # the budget is used, not wasted
    assert reassembles(parts, text)


def test_unclosed_fence_at_the_end_is_closed():
    assert split_message("```sh\necho hi", 64) == ["```sh\necho hi\n```"]
    assert split_message("```sh\necho hi\n", 64) == ["```sh\necho hi\n```"]


def test_an_inline_triple_backtick_is_not_a_fence():
    text = ("see ```python``` inline\n" * 12).strip()
    parts = split_message(text, 100)
    assert not any(part.startswith("```python\n") for part in parts)
    assert "".join(parts) == text


def test_unbroken_text_takes_one_message_per_max_chars():
    for n in (199, 200, 201, 4000, 4001):
        assert len(split_message("z" * n, 200)) == math.ceil(n / 200)


@pytest.mark.parametrize("seed", range(200))
def test_random_markdown_splits_within_limits_and_reassembles(seed):
    rng = random.Random(seed)
    text = markdown(rng, rng.randrange(1, 12))
    max_chars = rng.randrange(MIN_MESSAGE_CHARS, 400)
    parts = split_message(text, max_chars)
    for part in parts:
        assert len(part) <= max_chars
        assert is_balanced(part)
        assert part.strip()
    # Boundaries are only looked for in the last quarter, so no part but the last is short:
    # the number of messages stays within a third of the minimum.
    for part in parts[:-1]:
        assert len(part) >= 0.75 * (max_chars - len("```python\n")) - len("\n```")
    assert reassembles(parts, text)


# --------------------------------------------------------------------------- OutputStream


def stream_for(sink: FakeSink, outbox: MemoryOutbox, **kwargs) -> OutputStream:
    kwargs.setdefault("policy", FAST)
    return OutputStream(sink, outbox, platform=PLATFORM, thread=THREAD, batch_id=7, **kwargs)


async def stream_all(stream: OutputStream, text: str) -> None:
    async with stream:
        stream.feed(text)
        await stream.close()


def assert_settled(sink: FakeSink, outbox: MemoryOutbox, text: str) -> None:
    """The thread shows exactly split_message(text), each message posted once, all confirmed."""
    parts = split_message(text, sink.max_chars)
    assert sink.texts(THREAD) == parts
    assert len(sink.ok("post")) == len(parts)
    assert sink.unrecorded == []
    for call in sink.log:
        assert len(call.text) <= sink.max_chars
        assert is_balanced(call.text)
    rows = sorted(outbox.rows.values(), key=lambda r: r.seq)
    assert [r.text for r in rows] == parts
    assert all(r.is_synced for r in rows)
    assert [sink.messages[r.ref] for r in rows if r.ref] == parts


@pytest.mark.parametrize("seed", range(12))
async def test_streamed_output_ends_as_split_message_of_the_whole(seed):
    rng = random.Random(seed)
    outbox = MemoryOutbox()
    sink = FakeSink(max_chars=rng.choice([64, 120, 200]), interval_s=rng.choice([0, 0.002]))
    sink.outbox = outbox
    text = markdown(rng, 8)
    deltas, pos = [], 0
    while pos < len(text):
        step = rng.randrange(1, 40)
        deltas.append(text[pos : pos + step])
        pos += step

    async with stream_for(sink, outbox) as stream:
        while deltas:
            group = [deltas.pop(0) for _ in range(min(len(deltas), rng.randrange(1, 6)))]
            for delta in group:
                stream.feed(delta)
            if "".join(group).strip():
                await next_call(sink)  # the stream made progress; feed the next deltas
        closing_at = time.monotonic()
        await stream.close()

    assert_settled(sink, outbox, text)
    parts = split_message(text, sink.max_chars)
    assert len(parts) <= math.ceil(len(text) / (0.75 * (sink.max_chars - 10) - 4)) + 1
    edits: dict[str, list[float]] = {}
    for call in sink.ok("edit"):
        edits.setdefault(call.target, []).append(call.at)
    for times in edits.values():
        for before, after in itertools.pairwise(times):
            if after < closing_at:  # progress edits are paced; the turn's final text is not
                assert after - before >= sink.interval_s - 1e-3


async def test_prose_stream_takes_one_message_per_max_chars_plus_one():
    rng = random.Random(5)
    outbox = MemoryOutbox()
    sink = FakeSink(max_chars=2000, interval_s=0)
    text = "\n".join(prose(rng, 3000) for _ in range(6))  # long lines, as Claude writes prose
    async with stream_for(sink, outbox) as stream:
        for start in range(0, len(text), 97):
            stream.feed(text[start : start + 97])
        await stream.close()
    assert_settled(sink, outbox, text)
    assert len(sink.texts(THREAD)) <= math.ceil(len(text) / 2000) + 1


async def test_first_content_is_posted_then_edited_in_place():
    outbox = MemoryOutbox()
    sink = FakeSink(interval_s=0.01, outbox=outbox)
    async with stream_for(sink, outbox) as stream:
        stream.feed("Hel")
        call = await next_call(sink)
        assert (call.kind, call.target, call.text) == ("post", THREAD, "Hel")
        stream.feed("lo")
        stream.feed(" world")
        call = await next_call(sink)
        assert (call.kind, call.target, call.text) == ("edit", "m1", "Hello world")
        await stream.close()
    assert sink.texts(THREAD) == ["Hello world"]
    assert len(sink.log) == 2


async def test_the_final_text_goes_out_at_once_not_after_the_edit_interval():
    """A 60 s interval would outlast the test's timeout: only progress edits are paced."""
    outbox = MemoryOutbox()
    sink = FakeSink(interval_s=60.0, outbox=outbox)
    async with stream_for(sink, outbox) as stream:
        stream.feed("Hel")
        assert (await next_call(sink)).kind == "post"
        stream.feed("lo, the end")  # a progress edit now would wait 60 s
        async with asyncio.timeout(5):
            await stream.close()
    assert sink.texts(THREAD) == ["Hello, the end"]
    assert [c.kind for c in sink.log] == ["post", "edit"]


async def test_blank_output_posts_nothing():
    outbox = MemoryOutbox()
    sink = FakeSink()
    async with stream_for(sink, outbox) as stream:
        stream.feed("\n\n")
        stream.feed("   \n")
    assert sink.log == []
    assert outbox.rows == {}
    assert stream.next_seq == 0


async def test_429_on_edits_retries_with_the_latest_text():
    outbox = MemoryOutbox()
    sink = FakeSink(interval_s=0.005, outbox=outbox)
    sink.fail_on("edit", 1, 2, error=AdapterError("429", retry_after=0.02))
    async with stream_for(sink, outbox) as stream:
        stream.feed("alpha")
        assert (await next_call(sink)).text == "alpha"
        stream.feed(" beta")
        first = await next_call(sink)
        assert (first.kind, first.text, first.error is not None) == ("edit", "alpha beta", True)
        stream.feed(" gamma")  # arrives while the stream waits out retry_after
        second = await next_call(sink)
        assert (second.text, second.error is not None) == ("alpha beta gamma", True)
        stream.feed(" delta")
        third = await next_call(sink)
        assert (third.text, third.error) == ("alpha beta gamma delta", None)
        await stream.close()
    assert second.at - first.at >= 0.02 - 1e-3
    assert third.at - second.at >= 0.02 - 1e-3
    assert_settled(sink, outbox, "alpha beta gamma delta")


async def test_429_on_posts_keeps_order_and_loses_nothing():
    rng = random.Random(3)
    outbox = MemoryOutbox()
    sink = FakeSink(max_chars=150, interval_s=0.001, outbox=outbox)
    sink.fail_on("post", 2, 3, 5, error=AdapterError("429", retry_after=0.005))
    text = markdown(rng, 6)
    async with stream_for(sink, outbox) as stream:
        for start in range(0, len(text), 50):
            stream.feed(text[start : start + 50])
        await stream.close()
    assert_settled(sink, outbox, text)
    assert len([c for c in sink.log if c.error]) == 3


async def test_close_sends_final_texts_instead_of_pending_progress():
    rng = random.Random(11)
    outbox = MemoryOutbox()
    sink = FakeSink(max_chars=200, interval_s=0.02, outbox=outbox)
    rest = prose(rng, 700, line_chars=70)
    async with stream_for(sink, outbox) as stream:
        stream.feed("Intro line\n")
        assert (await next_call(sink)).kind == "post"
        stream.feed(rest)  # arrives while the first message waits out its edit interval
        await stream.close()
    text = "Intro line\n" + rest
    assert_settled(sink, outbox, text)
    parts = split_message(text, 200)
    # Each message got its final text in one call: no progress edit went out in between.
    assert [c.text for c in sink.ok("edit")] == [parts[0]]
    assert [c.text for c in sink.ok("post")] == ["Intro line\n", *parts[1:]]


async def test_a_non_retryable_error_comes_out_of_close():
    outbox = MemoryOutbox()
    sink = FakeSink()
    sink.fail_on("post", 1, error=AdapterError("thread was deleted", retryable=False))
    with pytest.raises(AdapterError, match="thread was deleted"):
        await stream_all(stream_for(sink, outbox), "hello")
    assert len(sink.log) == 1


async def test_retries_stop_after_max_attempts():
    outbox = MemoryOutbox()
    sink = FakeSink()
    sink.fail_on("post", 1, 2, 3, error=AdapterError("429", retry_after=0.001))
    policy = DeliveryPolicy(max_attempts=3, backoff_base_s=0.001, backoff_cap_s=0.001)
    with pytest.raises(AdapterError, match="429"):
        await stream_all(stream_for(sink, outbox, policy=policy), "hello")
    assert [c.kind for c in sink.log] == ["post"] * 3
    assert sink.texts(THREAD) == []


def test_the_platforms_retry_after_is_waited_exactly():
    policy = DeliveryPolicy(backoff_base_s=0.5, backoff_cap_s=30.0)
    assert policy.retry_delay_s(1, 2.5) == 2.5
    assert policy.retry_delay_s(6, 0.0) == 0.0
    assert policy.retry_delay_s(2, -1.0) == 0.0


def test_other_failures_back_off_with_equal_jitter_up_to_the_cap():
    policy = DeliveryPolicy(backoff_base_s=0.5, backoff_cap_s=4.0)
    for attempt, ceiling in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (5, 4.0), (40, 4.0)]:
        delays = [policy.retry_delay_s(attempt, None) for _ in range(50)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays), (attempt, delays)
        assert len(set(delays)) > 1, "no jitter"


def test_a_policy_that_cannot_work_is_refused():
    with pytest.raises(ValueError, match="backoff_base_s"):
        DeliveryPolicy(backoff_base_s=2.0, backoff_cap_s=1.0)
    with pytest.raises(ValueError, match="max_attempts"):
        DeliveryPolicy(max_attempts=0)


async def test_a_call_past_its_deadline_is_retried():
    outbox = MemoryOutbox()
    sink = FakeSink(outbox=outbox)
    sink.block_on("post", 1)
    policy = DeliveryPolicy(backoff_base_s=0.001, backoff_cap_s=0.001, call_timeout_s=0.05)
    async with stream_for(sink, outbox, policy=policy) as stream:
        stream.feed("hello")
        await stream.close()
    assert sink.blocked.is_set()
    assert_settled(sink, outbox, "hello")


async def test_feed_outside_the_open_stream_is_refused():
    stream = stream_for(FakeSink(), MemoryOutbox())
    with pytest.raises(RuntimeError, match="open stream"):
        stream.feed("too early")
    async with stream:
        stream.feed("x")
        await stream.close()
        with pytest.raises(RuntimeError, match="open stream"):
            stream.feed("too late")
    with pytest.raises(RuntimeError, match="cannot become open"):
        async with stream:
            pass


def test_a_sink_limit_below_the_minimum_is_refused():
    with pytest.raises(ValueError, match="max_message_chars"):
        stream_for(FakeSink(max_chars=10), MemoryOutbox())


# --------------------------------------------------------------------------- crash + redeliver


async def _crash_when_blocked(sink: FakeSink, outbox: MemoryOutbox, feed) -> None:
    """Run a stream until the sink stalls, then cancel it, as a crash would."""

    async def run() -> None:
        async with stream_for(sink, outbox) as stream:
            await feed(stream)
            await stream.close()

    task = asyncio.create_task(run())
    await asyncio.wait_for(sink.blocked.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_redeliver_posts_what_a_crash_left_unposted():
    rng = random.Random(21)
    text = prose(rng, 900, line_chars=60)
    outbox = MemoryOutbox()
    sink = FakeSink(max_chars=200, outbox=outbox)
    sink.block_on("post", 3)

    async def feed(stream: OutputStream) -> None:
        stream.feed(text)

    await _crash_when_blocked(sink, outbox, feed)
    parts = split_message(text, 200)
    assert sink.texts(THREAD) == parts[:2]
    pending = await outbox.outbox_unsynced(PLATFORM)
    assert [(e.seq, e.text, e.ref) for e in pending] == [
        (seq, part, None) for seq, part in enumerate(parts) if seq >= 2
    ]

    assert await redeliver(sink, outbox, PLATFORM, policy=FAST) == len(parts) - 2
    assert_settled(sink, outbox, text)
    assert await redeliver(sink, outbox, PLATFORM, policy=FAST) == 0
    assert len(sink.ok("post")) == len(parts)


async def test_redeliver_edits_a_message_whose_final_edit_was_cut_off():
    rng = random.Random(22)
    rest = prose(rng, 600, line_chars=60)
    outbox = MemoryOutbox()
    sink = FakeSink(max_chars=200, interval_s=0.01, outbox=outbox)
    sink.block_on("edit", 1)

    async def feed(stream: OutputStream) -> None:
        stream.feed("Progress so far\n")
        assert (await next_call(sink)).kind == "post"
        stream.feed(rest)

    await _crash_when_blocked(sink, outbox, feed)
    text = "Progress so far\n" + rest
    parts = split_message(text, 200)
    assert sink.texts(THREAD)[0] == "Progress so far\n"  # the stale progress text
    pending = await outbox.outbox_unsynced(PLATFORM)
    assert (pending[0].seq, pending[0].text, pending[0].ref) == (0, parts[0], "m1")

    assert await redeliver(sink, outbox, PLATFORM, policy=FAST) == len(pending)
    assert_settled(sink, outbox, text)


async def test_redeliver_skips_the_rest_of_a_batch_that_fails_for_good():
    outbox = MemoryOutbox()
    sink = FakeSink()
    for seq in range(3):
        await outbox.outbox_write(PLATFORM, "gone", 1, seq, f"lost {seq}")
        await outbox.outbox_write(PLATFORM, "alive", 2, seq, f"kept {seq}")
    await outbox.outbox_write("other-platform", "x", 3, 0, "not ours")
    sink.fail_on("post", 1, error=AdapterError("unknown channel", retryable=False))

    assert await redeliver(sink, outbox, PLATFORM, policy=FAST) == 3
    assert sink.texts("alive") == ["kept 0", "kept 1", "kept 2"]
    assert sink.texts("gone") == []
    assert [e.text for e in await outbox.outbox_unsynced(PLATFORM)] == [
        "lost 0",
        "lost 1",
        "lost 2",
    ]


# --------------------------------------------------------------------------- ThreadRelay


def make_batch(batch_id: int, thread: str, prompt: str = "fix the tests", **kwargs) -> Batch:
    sources = (
        SourcePrompt(1, "alice", "fix the tests", thread, PLATFORM),
        SourcePrompt(2, "bob", "make the tests pass", "elsewhere", PLATFORM),
        SourcePrompt(3, "alice", "please", thread, PLATFORM),
    )
    return Batch(batch_id=batch_id, prompt=prompt, sources=sources, groups=(), **kwargs)


def relay_for(sink: FakeSink, outbox: MemoryOutbox) -> ThreadRelay:
    return ThreadRelay(sink, outbox, platform=PLATFORM, policy=FAST)


async def test_relay_posts_header_then_output_in_the_first_source_thread():
    rng = random.Random(31)
    output = prose(rng, 500, line_chars=50)
    outbox = MemoryOutbox()
    sink = FakeSink(max_chars=200, outbox=outbox)
    async with relay_for(sink, outbox) as relay:
        relay.deliver(BatchStarted(make_batch(12, "t-12", "fix the tests\nand lint")))
        for start in range(0, len(output), 30):
            relay.deliver(OutputText(12, output[start : start + 30]))
        relay.deliver(BatchDone(12, TurnStatus.SUCCESS))
    shown = sink.texts("t-12")
    assert shown[0] == "**Batch 12** — alice, bob\n> fix the tests\n> and lint"
    assert shown[1:] == split_message(output, 200)  # success with output: nothing extra
    assert "elsewhere" not in sink.threads
    assert sink.unrecorded == []
    rows = sorted(outbox.rows.values(), key=lambda r: r.seq)
    assert [r.seq for r in rows] == list(range(len(shown)))
    assert all(r.is_synced for r in rows)


@pytest.mark.parametrize(
    ("done", "output", "status"),
    [
        (BatchDone(4, TurnStatus.SUCCESS), "", "✓ done (no output)"),
        (
            BatchDone(4, TurnStatus.ERROR, "session died\nexit 1"),
            "partial",
            "⚠ failed: session died exit 1",
        ),
        (BatchDone(4, TurnStatus.ERROR), "partial", "⚠ failed"),
        (BatchDone(4, TurnStatus.INTERRUPTED), "```py\nhalf", "⏹ interrupted"),
    ],
)
async def test_relay_posts_the_status_after_the_output(done, output, status):
    outbox = MemoryOutbox()
    sink = FakeSink(outbox=outbox)
    async with relay_for(sink, outbox) as relay:
        relay.deliver(BatchStarted(make_batch(4, "t")))
        relay.deliver(OutputText(4, output))
        relay.deliver(done)
    shown = sink.texts("t")
    assert shown[1:] == [*split_message(output, sink.max_chars), status]
    assert all(r.is_synced for r in outbox.rows.values())


async def test_relay_header_says_a_rerun_and_caps_the_prompt():
    outbox = MemoryOutbox()
    sink = FakeSink(max_chars=2000)
    prompt = "\n".join(f"line {i} " + "word " * 30 for i in range(20))
    async with relay_for(sink, outbox) as relay:
        relay.deliver(BatchStarted(make_batch(9, "t", prompt, attempt=2)))
        relay.deliver(BatchDone(9, TurnStatus.INTERRUPTED))
    header = sink.texts("t")[0]
    assert header.startswith("**Batch 9** (re-run after a restart, attempt 2) — alice, bob\n")
    quoted = header.split("\n")[1:]
    assert all(line.startswith(">") for line in quoted)
    assert header.endswith("…")
    assert len(header) < 300 + 100


async def test_relay_header_cannot_ping_everyone():
    sink = FakeSink()
    async with relay_for(sink, MemoryOutbox()) as relay:
        relay.deliver(BatchStarted(make_batch(1, "t", "@everyone look")))
        relay.deliver(BatchDone(1, TurnStatus.SUCCESS, ""))
    assert "@\u200beveryone" in sink.texts("t")[0]


async def test_relay_notices_go_to_the_latest_batch_thread():
    outbox = MemoryOutbox()
    sink = FakeSink()
    async with relay_for(sink, outbox) as relay:
        relay.deliver(Notice("before any batch"))
        relay.deliver(BatchStarted(make_batch(1, "first")))
        relay.deliver(OutputText(1, "one"))
        relay.deliver(BatchDone(1, TurnStatus.SUCCESS))
        relay.deliver(BatchStarted(make_batch(2, "second")))
        relay.deliver(BatchDone(2, TurnStatus.INTERRUPTED))
        relay.deliver(Notice("session restarted"))
    assert sink.texts("first")[1:] == ["one"]
    assert sink.texts("second")[1:] == ["⏹ interrupted", "session restarted"]
    assert all("before any batch" not in c.text for c in sink.log)


async def test_relay_ignores_stray_events_and_flushes_an_open_batch_on_stop():
    sink = FakeSink()
    async with relay_for(sink, MemoryOutbox()) as relay:
        relay.deliver(OutputText(99, "no batch is open"))
        relay.deliver(BatchDone(99, TurnStatus.SUCCESS))
        relay.deliver(BatchStarted(make_batch(5, "t")))
        relay.deliver(OutputText(6, "another batch's output"))
        relay.deliver(OutputText(5, "mine"))
    assert [c.text for c in sink.log] == ["**Batch 5** — alice, bob\n> fix the tests", "mine"]


async def test_relay_moves_on_after_a_batch_fails_for_good():
    outbox = MemoryOutbox()
    sink = FakeSink()
    sink.fail_on("post", 2, error=AdapterError("missing permissions", retryable=False))
    async with relay_for(sink, outbox) as relay:
        relay.deliver(BatchStarted(make_batch(1, "t1")))
        relay.deliver(OutputText(1, "lost output"))
        relay.deliver(BatchDone(1, TurnStatus.ERROR, "boom"))
        relay.deliver(BatchStarted(make_batch(2, "t2")))
        relay.deliver(OutputText(2, "second batch output"))
        relay.deliver(BatchDone(2, TurnStatus.SUCCESS))
    assert sink.texts("t1") == ["**Batch 1** — alice, bob\n> fix the tests"]
    assert sink.texts("t2")[1:] == ["second batch output"]
    assert [e.text for e in await outbox.outbox_unsynced(PLATFORM)] == ["lost output"]


async def test_relay_refuses_events_once_stopped():
    relay = relay_for(FakeSink(), MemoryOutbox())
    with pytest.raises(RuntimeError, match="running relay"):
        relay.deliver(Notice("too early"))
    async with relay:
        pass
    with pytest.raises(RuntimeError, match="running relay"):
        relay.deliver(Notice("too late"))


class BrokenOutbox(MemoryOutbox):
    async def outbox_write(self, platform, thread, batch_id, seq, text):
        raise OSError("disk full")


async def test_a_store_failure_stops_the_relay_loudly():
    sink = FakeSink()
    relay = relay_for(sink, BrokenOutbox())
    async with relay:
        relay.deliver(BatchStarted(make_batch(1, "t")))
        with pytest.raises(OSError, match="disk full"):
            await relay.stop()
    assert sink.log == []  # nothing is posted that the outbox did not record


def _foreign_batch(batch_id: int) -> Batch:
    """A batch of a shared party whose prompts all came from another transport."""
    sources = (SourcePrompt(1, "carol", "from a terminal", "", "ws"),)
    return Batch(batch_id=batch_id, prompt="from a terminal", sources=sources, groups=())


async def test_relay_shows_other_transports_batches_in_its_home_thread():
    outbox = MemoryOutbox()
    sink = FakeSink(outbox=outbox)
    relay = ThreadRelay(sink, outbox, platform=PLATFORM, home_thread="channel", policy=FAST)
    async with relay:
        relay.deliver(BatchStarted(_foreign_batch(5)))
        relay.deliver(OutputText(5, "answer"))
        relay.deliver(BatchDone(5, TurnStatus.SUCCESS))
    shown = sink.texts("channel")
    assert shown[0].startswith("**Batch 5** — carol")
    assert shown[1:] == ["answer"]


async def test_relay_without_a_home_thread_skips_other_transports_batches():
    outbox = MemoryOutbox()
    sink = FakeSink(outbox=outbox)
    async with relay_for(sink, outbox) as relay:
        relay.deliver(BatchStarted(_foreign_batch(6)))
        relay.deliver(OutputText(6, "answer"))
        relay.deliver(BatchDone(6, TurnStatus.SUCCESS))
        relay.deliver(BatchStarted(make_batch(7, "t-7")))
        relay.deliver(OutputText(7, "mine"))
        relay.deliver(BatchDone(7, TurnStatus.SUCCESS))
    assert set(sink.threads) == {"t-7"}
    assert sink.texts("t-7")[1:] == ["mine"]


@pytest.mark.parametrize("seed", range(40))
def test_split_uses_one_message_per_limit_plus_at_most_one(seed):
    """Issue #4: one message per max_chars of output, plus at most one, even for text with
    a paragraph break every few lines and code fences split across messages."""
    rng = random.Random(seed)
    text = markdown(rng, 400)[:50_000]
    for limit in (2000, 3500):  # Discord and Slack; see _plan on smaller limits
        parts = split_message(text, limit)
        assert len(parts) <= -(-len(text) // limit) + 1, (limit, len(text), len(parts))
        assert all(len(p) <= limit for p in parts)


async def test_relay_header_lists_each_part_and_the_prompts_merged_into_it():
    sources = (
        SourcePrompt(4, "alice", "fix test_login", "t", PLATFORM),
        SourcePrompt(5, "bob", "please fix test_login", "t", PLATFORM),
        SourcePrompt(6, "carol", "bump requests to 2.32\nand pin it", "t", PLATFORM),
        SourcePrompt(7, "dave", "+1", "t", PLATFORM),
    )
    groups = (
        MergeGroup((6,), ("carol",), "bump requests to 2.32\nand pin it"),
        MergeGroup((4, 5), ("alice", "bob", "dave"), "x" * 300),
    )
    batch = Batch(batch_id=3, prompt="merged", sources=sources, groups=groups)
    sink = FakeSink(max_chars=2000)
    async with relay_for(sink, MemoryOutbox()) as relay:
        relay.deliver(BatchStarted(batch))
        relay.deliver(BatchDone(3, TurnStatus.SUCCESS))
    header = sink.texts("t")[0].split("\n")
    assert header[0] == "**Batch 3** — alice, bob, carol, dave"
    assert header[1] == "> 1. bump requests to 2.32 ← #6 carol"
    assert header[2].startswith("> 2. xxx")
    assert header[2].endswith("… ← #4 alice, #5 bob")
    assert len(header[2]) < 160
    assert header[3] == "> reactions: #7 dave"


async def test_output_after_an_approval_goes_below_it() -> None:
    request = ApprovalRequested(
        approval_id=4,
        batch_id=12,
        tool="Bash",
        summary="run `touch x`",
        detail="touch x",
        needed=1,
        requesters=(),
        timeout_s=120,
    )
    sink = FakeSink(max_chars=2000)
    async with relay_for(sink, MemoryOutbox()) as relay:
        relay.deliver(BatchStarted(make_batch(12, "t")))
        relay.deliver(OutputText(12, "before the tool"))
        relay.deliver(request)
        relay.deliver(ApprovalResolved(4, 12, allowed=True, text="allowed by ann"))
        relay.deliver(OutputText(12, "after the tool"))
        relay.deliver(BatchDone(12, TurnStatus.SUCCESS))
    shown = sink.texts("t")
    assert shown[1] == "before the tool"
    assert shown[2].startswith("🔐 **Approval 4**: Claude wants to run `touch x`")
    assert shown[2].endswith("✅ allowed by ann")
    assert "/concordia approve 4" not in shown[2]
    assert shown[3:] == ["after the tool"]
