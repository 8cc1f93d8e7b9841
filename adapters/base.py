"""The seam between the core and a transport: what an adapter promises and may raise.

Adapters only translate. They turn platform payloads into `Prompt`/`Command` for a
party and turn party events into platform calls; queueing, merging and sessions
never enter them. No chat SDK is imported here.
"""

from __future__ import annotations

from typing import Protocol

from bot import ConcordiaError

__all__ = ["Adapter", "AdapterError", "MessageSink"]


class AdapterError(ConcordiaError):
    """A transport call failed.

    ``retry_after`` (seconds) is set when the platform said when to try again (a 429);
    ``retryable`` is False when retrying cannot help (a deleted thread, a bad token).
    """

    def __init__(self, message: str, *, retry_after: float | None = None, retryable: bool = True):
        super().__init__(message)
        self.retry_after = retry_after
        self.retryable = retryable


class MessageSink(Protocol):
    """A platform where output lands as messages that can be posted and edited.

    ``max_message_chars`` is the platform's hard limit for one message and
    ``edit_interval_s`` the least time between two edits of one message that stays
    inside its rate limits. Both calls raise `AdapterError` on failure.
    """

    @property
    def max_message_chars(self) -> int: ...

    @property
    def edit_interval_s(self) -> float: ...

    async def post(self, thread: str, text: str) -> str:
        """Post a new message in ``thread``; return its opaque message ref."""
        ...

    async def edit(self, ref: str, text: str) -> None:
        """Replace the text of the message ``ref``."""
        ...


class Adapter(Protocol):
    """A transport bound to parties: `start` returns once it is serving, `run` serves until
    cancelled and raises `AdapterError` when it cannot go on (a refused token)."""

    name: str

    async def start(self) -> None: ...

    async def run(self) -> None: ...

    async def stop(self) -> None:
        """Stop serving; idempotent."""
        ...
