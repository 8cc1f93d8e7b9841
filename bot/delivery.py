"""Calling a platform: a deadline per call, retries with backoff, and redelivery after a crash.

Invariant: a failure that names ``retry_after`` waits exactly that long; other retryable
failures back off with jitter; what the outbox holds unconfirmed is finished by `redeliver`.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

from bot.pace import Backoff, Jitter
from bot.ports import AdapterError, MessageSink, Outbox, OutboxEntry

__all__ = ["DeliveryPolicy", "call_with_retry", "redeliver", "timed_out"]

log = logging.getLogger(__name__)

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class DeliveryPolicy:
    """How a platform call is retried: a deadline per call, and a bounded number of attempts.

    A failure that names ``retry_after`` waits exactly that long; any other retryable failure
    (or a missed deadline) backs off exponentially from ``backoff_base_s`` up to
    ``backoff_cap_s``, with equal jitter (at least half of each step). After ``max_attempts``
    consecutive failures the last error is raised.
    """

    max_attempts: int = 6
    backoff_base_s: float = 0.5
    backoff_cap_s: float = 30.0
    call_timeout_s: float = 30.0
    _backoff: Backoff = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {self.max_attempts}")
        if not 0 < self.backoff_base_s <= self.backoff_cap_s:
            raise ValueError("backoff_base_s must be > 0 and <= backoff_cap_s")
        if self.call_timeout_s <= 0:
            raise ValueError(f"call_timeout_s must be > 0, got {self.call_timeout_s}")
        # Only its stateless `delay_for` is used: one policy serves many streams and relays,
        # each counting its own failures.
        backoff = Backoff(self.backoff_base_s, self.backoff_cap_s, jitter=Jitter.EQUAL)
        object.__setattr__(self, "_backoff", backoff)

    def retry_delay_s(self, attempt: int, retry_after: float | None) -> float:
        """Seconds to wait after the ``attempt``-th consecutive failure (1-based)."""
        if retry_after is not None:
            return max(0.0, retry_after)
        return self._backoff.delay_for(attempt)


def timed_out(what: str, policy: DeliveryPolicy, exc: TimeoutError) -> AdapterError:
    error = AdapterError(f"{what} got no answer within {policy.call_timeout_s}s")
    error.__cause__ = exc
    return error


async def call_with_retry(
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
            error = timed_out(what, policy, exc)
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
            ref = await call_with_retry(
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
