"""The seam between the core and a transport: what an adapter promises and may raise.

Adapters only translate. They turn platform payloads into `Prompt`/`Command` for a
party and turn party events into platform calls; queueing, merging and sessions
never enter them. No chat SDK is imported here.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from bot import ConcordiaError
from bot.model import ApprovalRequested, ApprovalResolved

__all__ = ["Adapter", "AdapterError", "ApprovalSink", "MessageSink", "too_long"]


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


@runtime_checkable
class ApprovalSink(Protocol):
    """A sink that shows a tool-use approval with its own controls (buttons).

    Sinks without it get the approval as a plain message naming the
    `/concordia approve <id> allow|always|deny` command. Both calls raise `AdapterError`.
    """

    async def post_approval(self, thread: str, approval: ApprovalRequested) -> str:
        """Post the request (mentioning its requesters once); return the message ref."""
        ...

    async def close_approval(
        self, ref: str, approval: ApprovalRequested, resolved: ApprovalResolved
    ) -> None:
        """Show how it ended and take its controls away."""
        ...


def too_long(name: str, size: int, limit: int) -> str:
    """Why a prompt with an attached text file over the party's limit is refused."""
    return (
        f"the attached {name} ({size:,} bytes) does not fit in a prompt: the limit is "
        f"{limit:,} characters (party.max_prompt_chars)"
    )


class Adapter(Protocol):
    """A transport bound to parties: `start` returns once it is serving, `run` serves until
    cancelled and raises `AdapterError` when it cannot go on (a refused token)."""

    name: str

    async def start(self) -> None: ...

    async def run(self) -> None: ...

    async def stop(self) -> None:
        """Stop serving; idempotent."""
        ...
