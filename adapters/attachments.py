"""Files attached to a chat prompt, folded into its text within the party's limit.

Invariant: a text file is read into the prompt or, when it cannot fit, the whole prompt is
refused (it was part of the ask); any other file is named in the prompt; nothing is dropped
silently. The same rules and words on every chat platform.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from bot.model import Prompt, Rejected, RejectKind, Submission
from bot.ports import PartyPort

__all__ = ["Attachment", "Reader", "fold", "submit_with", "too_long"]

Reader = Callable[["Attachment"], Awaitable[str | None]]
"""Fetches a text attachment's content, or None when it cannot (having logged why)."""


@dataclass(frozen=True, slots=True)
class Attachment:
    """A file as the platform describes it: ``size`` in bytes, ``kind`` its MIME type, ``ref``
    what the platform's reader needs to fetch it (a URL, an id)."""

    name: str
    size: int
    kind: str
    is_text: bool
    ref: str


def too_long(name: str, size: int, limit: int) -> str:
    """Why a prompt with an attached text file over the party's limit is refused."""
    return (
        f"the attached {name} ({size:,} bytes) does not fit in a prompt: the limit is "
        f"{limit:,} characters (party.max_prompt_chars)"
    )


async def fold(
    text: str,
    attachments: Sequence[Attachment],
    *,
    limit: int,
    read: Reader,
) -> str | Rejected:
    """``text`` with each text attachment appended under its name, and each other one named.

    ``read`` fetches a text file's content, or None when it cannot (it logs why): such a file
    is named as unreadable. A text file that would take the prompt over ``limit`` characters
    refuses it, without downloading it when its size alone says so.
    """
    budget = limit - len(text)
    parts = [text] if text else []
    for attachment in attachments:
        if not attachment.is_text:
            kind = attachment.kind or "unknown type"
            parts.append(
                f"[attachment {attachment.name} ({kind}, {attachment.size:,} bytes) not included]"
            )
            continue
        # UTF-8 takes 1-4 bytes a character: past 4x the budget it cannot fit.
        if attachment.size > budget * 4:
            return Rejected(too_long(attachment.name, attachment.size, limit), RejectKind.TOO_LONG)
        body = await read(attachment)
        if body is None:
            parts.append(f"[attachment {attachment.name}: could not be read]")
            continue
        if len(body) > budget:
            return Rejected(too_long(attachment.name, attachment.size, limit), RejectKind.TOO_LONG)
        parts.append(f"--- {attachment.name} ---\n{body}")
        budget -= len(body)
    return "\n\n".join(parts)


async def submit_with(
    party: PartyPort, prompt: Prompt, attachments: Sequence[Attachment], read: Reader
) -> Submission:
    """A chat mention handed to ``party`` with its attachments folded in.

    A stranger's files are not fetched: the party refuses the prompt anyway (and says why).
    """
    if not attachments or party.role_of(prompt.author) is None:
        return await party.submit(prompt)
    body = await fold(prompt.text, attachments, limit=party.max_prompt_chars, read=read)
    if isinstance(body, Rejected):
        return body
    return await party.submit(dataclasses.replace(prompt, text=body))
