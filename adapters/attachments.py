"""Files attached to a chat prompt: text folded into it, images sent along, the rest named.

Invariant: a text file is read into the prompt or, when it cannot fit, the whole prompt is
refused (it was part of the ask); an image the model reads (`bot.images`, told by its
bytes) within ``party.max_image_bytes`` goes with the prompt as an image; any other file is
named in the prompt and the sender is told why it was left out; nothing is dropped
silently. The same rules and words on every chat platform.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from bot.images import IMAGE_TYPES, check_image, image_refusal
from bot.model import Image, Prompt, Rejected, RejectKind, Submission
from bot.ports import PartyPort

__all__ = ["Attachment", "Folded", "Reader", "Submitted", "fold", "submit_with", "too_long"]

Reader = Callable[["Attachment"], Awaitable[bytes | None]]
"""Fetches an attachment's bytes, or None when it cannot (having logged why)."""

_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".webp")
_TAKEN = "Claude takes text files and PNG, JPEG, GIF or WebP images"


@dataclass(frozen=True, slots=True)
class Folded:
    """A prompt's text with its text files in, the images to send along, and one line per
    file left out saying why (for the sender)."""

    text: str
    images: tuple[Image, ...] = ()
    left_out: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Submitted:
    """What the party said to a chat prompt, and the files it left out (to tell the sender)."""

    submission: Submission
    left_out: tuple[str, ...] = ()


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


def _is_image(attachment: Attachment) -> bool:
    return attachment.kind in IMAGE_TYPES or attachment.name.lower().endswith(_IMAGE_SUFFIXES)


async def fold(
    text: str,
    attachments: Sequence[Attachment],
    *,
    limit: int,
    max_image_bytes: int,
    read: Reader,
) -> Folded | Rejected:
    """``text`` with each text attachment appended under its name, each image the model
    reads kept to send along, and each other file named.

    ``read`` fetches a file's bytes, or None when it cannot (it logs why): such a file is
    named as unreadable. A text file that would take the prompt over ``limit`` characters
    refuses it, without downloading it when its size alone says so.
    """
    budget = limit - len(text)
    parts = [text] if text else []
    images: list[Image] = []
    left_out: list[str] = []

    def leave_out(attachment: Attachment, why: str) -> None:
        """Name the file in the prompt; ``why`` is one sentence for its sender."""
        kind = attachment.kind or "unknown type"
        parts.append(
            f"[attachment {attachment.name} ({kind}, {attachment.size:,} bytes) not included]"
        )
        left_out.append(why)

    for attachment in attachments:
        if _is_image(attachment):
            if refusal := image_refusal(attachment.name, attachment.size, max_image_bytes):
                leave_out(attachment, refusal)  # not even fetched
                continue
            data = await read(attachment)
            if data is None:
                parts.append(f"[attachment {attachment.name}: could not be read]")
                left_out.append(f"{attachment.name} could not be downloaded")
                continue
            checked = check_image(attachment.name, data, max_image_bytes)
            if checked.refusal:
                leave_out(attachment, checked.refusal)
            else:
                images.append(Image(attachment.name, checked.media_type, data))
            continue
        if not attachment.is_text:
            leave_out(attachment, f"{attachment.name} was not included: {_TAKEN}")
            continue
        # UTF-8 takes 1-4 bytes a character: past 4x the budget it cannot fit.
        if attachment.size > budget * 4:
            return Rejected(too_long(attachment.name, attachment.size, limit), RejectKind.TOO_LONG)
        raw = await read(attachment)
        body = None if raw is None else raw.decode("utf-8", errors="replace")
        if body is None:
            parts.append(f"[attachment {attachment.name}: could not be read]")
            left_out.append(f"{attachment.name} could not be downloaded")
            continue
        if len(body) > budget:
            return Rejected(too_long(attachment.name, attachment.size, limit), RejectKind.TOO_LONG)
        parts.append(f"--- {attachment.name} ---\n{body}")
        budget -= len(body)
    return Folded("\n\n".join(parts), tuple(images), tuple(left_out))


async def submit_with(
    party: PartyPort, prompt: Prompt, attachments: Sequence[Attachment], read: Reader
) -> Submitted:
    """A chat mention handed to ``party`` with its attachments folded in.

    A stranger's files are not fetched: the party refuses the prompt anyway (and says why).
    """
    if not attachments or party.role_of(prompt.author) is None:
        return Submitted(await party.submit(prompt))
    folded = await fold(
        prompt.text,
        attachments,
        limit=party.max_prompt_chars,
        max_image_bytes=party.max_image_bytes,
        read=read,
    )
    if isinstance(folded, Rejected):
        return Submitted(folded)
    submission = await party.submit(
        dataclasses.replace(prompt, text=folded.text, images=folded.images)
    )
    return Submitted(submission, folded.left_out)
