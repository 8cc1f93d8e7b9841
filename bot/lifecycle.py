"""The lifecycle of a resource owned by one task (an output stream, a thread relay).

Invariant: every transition goes through `transition`, which refuses an illegal one, and an
owner task that dies early has its error reported, never swallowed.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Coroutine
from types import TracebackType
from typing import Any, Self, TypeVar

__all__ = ["Lifecycle", "OwnedTask", "cancel_owner", "first_of", "owner_error", "transition"]

log = logging.getLogger(__name__)

_E = TypeVar("_E", bound=BaseException)


class Lifecycle(enum.StrEnum):
    UNOPENED = "unopened"  # built; no owner task yet
    OPEN = "open"  # owner task running; accepting input
    CLOSING = "closing"  # asked to finish; the owner flushes what it has
    CLOSED = "closed"  # owner finished or cancelled; nothing more happens


_TRANSITIONS: dict[Lifecycle, frozenset[Lifecycle]] = {
    Lifecycle.UNOPENED: frozenset({Lifecycle.OPEN}),
    Lifecycle.OPEN: frozenset({Lifecycle.CLOSING, Lifecycle.CLOSED}),
    Lifecycle.CLOSING: frozenset({Lifecycle.CLOSED}),
    Lifecycle.CLOSED: frozenset(),
}


def transition(what: str, current: Lifecycle, target: Lifecycle) -> Lifecycle:
    if target not in _TRANSITIONS[current]:
        raise RuntimeError(f"{what} cannot become {target} once {current}; use a new one")
    return target


async def cancel_owner(task: asyncio.Task[None], exc: BaseException | None, what: str) -> None:
    """Cancel an owner task on the way out of a failed block; log an error it hid, if any."""
    task.cancel()
    await asyncio.wait([task])
    if not task.cancelled():
        error = task.exception()
        if error is not None and error is not exc:
            log.error("%s failed", what, exc_info=error)


def owner_error(task: asyncio.Task[None] | None) -> BaseException | None:
    """Why an owner task ended early, for chaining into a misuse error."""
    if task is None or not task.done() or task.cancelled():
        return None
    return task.exception()


def first_of(group: BaseExceptionGroup[BaseException], kind: type[_E]) -> _E | None:
    """The first exception of ``kind`` in a task group's ``group`` (nested groups searched).

    Re-raise it bare: ``raise`` inside ``except*`` wraps the new exception in a group again on
    Python 3.11.0-3.11.3 (fixed in 3.11.4, gh-103590), and the floor is 3.11."""
    for exc in group.exceptions:
        if isinstance(exc, kind):
            return exc
        if isinstance(exc, BaseExceptionGroup):
            found = first_of(exc, kind)
            if found is not None:
                return found
    return None


class OwnedTask:
    """A resource one task owns, as an async context manager: entering starts the owner task
    (`_run`), leaving normally lets it finish what it has (`_finish`), leaving with an error
    (cancellation included) cancels it and logs an error it hid. Subclasses say what they are
    (`_what`) for errors and logs."""

    def __init__(self) -> None:
        self._state = Lifecycle.UNOPENED  # written by the caller's side only
        self._task: asyncio.Task[None] | None = None

    def _what(self) -> str:
        raise NotImplementedError

    def _run(self) -> Coroutine[Any, Any, None]:
        raise NotImplementedError

    async def _finish(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        self._state = transition(type(self).__name__, self._state, Lifecycle.OPEN)
        self._task = asyncio.create_task(self._run(), name=self._what())
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
                if self._state is Lifecycle.OPEN:
                    await self._finish()
                else:  # finishing was asked for; its caller got any error
                    await asyncio.wait([self._task])
                return
            await cancel_owner(self._task, exc, self._what())
        finally:
            self._state = Lifecycle.CLOSED
