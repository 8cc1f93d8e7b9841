"""adapters.attachments: files folded into a chat prompt, the same way on every platform."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import pytest

from adapters.attachments import Attachment, Folded, fold, submit_with
from bot.model import Accepted, Author, Image, Prompt, Rejected, RejectKind, Role, Submission
from tests.payloads.images import PNG_1PX

ALICE = Author("chat", "alice", "alice")
STRANGER = Author("chat", "eve", "eve")
LIMIT = 1000
IMAGE_LIMIT = 4096

Read = Callable[[Attachment], Awaitable[bytes | None]]


def _reader(contents: dict[str, str | bytes | None]) -> Read:
    async def read(attachment: Attachment) -> bytes | None:
        content = contents[attachment.ref]
        return content.encode() if isinstance(content, str) else content

    return read


def text_file(name: str, size: int, ref: str | None = None) -> Attachment:
    return Attachment(name, size, "text/plain", True, ref or name)


def image_file(name: str, size: int, kind: str = "image/png") -> Attachment:
    return Attachment(name, size, kind, False, name)


async def _fold(text: str, files: list[Attachment], read: Read) -> Folded | Rejected:
    return await fold(text, files, limit=LIMIT, max_image_bytes=IMAGE_LIMIT, read=read)


async def test_text_files_are_read_in_images_kept_and_others_named() -> None:
    files = [
        text_file("notes.txt", 5),
        image_file("dot.png", len(PNG_1PX)),
        Attachment("build.zip", 2048, "application/zip", False, "z"),
    ]
    folded = await _fold("look", files, _reader({"notes.txt": "hello", "dot.png": PNG_1PX}))
    assert isinstance(folded, Folded)
    assert folded.text == (
        "look\n\n--- notes.txt ---\nhello\n\n[attachment build.zip (application/zip, 2,048 "
        "bytes) not included]"
    )
    assert folded.images == (Image("dot.png", "image/png", PNG_1PX),)
    assert folded.left_out == (
        "build.zip was not included: Claude takes text files and PNG, JPEG, GIF or WebP images",
    )


async def test_an_oversize_image_is_named_and_not_fetched() -> None:
    fetched: list[str] = []

    async def read(attachment: Attachment) -> bytes | None:
        fetched.append(attachment.ref)
        return PNG_1PX

    folded = await _fold("see", [image_file("huge.png", IMAGE_LIMIT + 1)], read)
    assert isinstance(folded, Folded)
    assert folded.images == ()
    assert "[attachment huge.png (image/png, 4,097 bytes) not included]" in folded.text
    assert "party.max_image_bytes" in folded.left_out[0]
    assert fetched == []


async def test_an_image_that_is_not_one_is_left_out() -> None:
    """The platform's word for the type does not count: the bytes do."""
    folded = await _fold("see", [image_file("fake.png", 9)], _reader({"fake.png": b"#!/bin/sh"}))
    assert isinstance(folded, Folded)
    assert folded.images == ()
    assert "not an image Claude reads" in folded.left_out[0]


async def test_an_unreadable_text_file_is_named_as_such() -> None:
    folded = await _fold("", [text_file("a.txt", 3)], _reader({"a.txt": None}))
    assert isinstance(folded, Folded)
    assert folded.text == "[attachment a.txt: could not be read]"
    assert folded.left_out == ("a.txt could not be downloaded",)


@pytest.mark.parametrize(("size", "content"), [(4_001, None), (10, "x" * 998)])
async def test_a_text_file_over_the_limit_refuses_the_prompt(size: int, content: str) -> None:
    """By its size alone (not even fetched), or once read."""
    fetched: list[str] = []

    async def read(attachment: Attachment) -> bytes | None:
        fetched.append(attachment.ref)
        return None if content is None else content.encode()

    body = await _fold("ask", [text_file("big.txt", size)], read)
    assert isinstance(body, Rejected)
    assert body.kind is RejectKind.TOO_LONG
    assert "big.txt" in body.reason
    assert "party.max_prompt_chars" in body.reason
    assert fetched == ([] if content is None else ["big.txt"])


@dataclass
class Party:
    """The `PartyPort` seam, as much of it as `submit_with` uses."""

    members: set[str]
    max_prompt_chars: int = LIMIT
    max_image_bytes: int = IMAGE_LIMIT
    submitted: list[Prompt] = field(default_factory=list)

    def role_of(self, author: Author) -> Role | None:
        return Role.PROMPTER if author.user_id in self.members else None

    async def submit(self, prompt: Prompt) -> Submission:
        self.submitted.append(prompt)
        if prompt.author.user_id not in self.members:
            return Rejected("join first", RejectKind.NOT_MEMBER)
        return Accepted(len(self.submitted), 1)


async def test_a_members_files_are_folded_before_the_party_sees_the_prompt() -> None:
    party = Party({"alice"})
    prompt = Prompt("m1", ALICE, "summarise", thread="t")
    files = [text_file("a.txt", 2), image_file("dot.png", len(PNG_1PX))]
    result = await submit_with(party, prompt, files, _reader({"a.txt": "hi", "dot.png": PNG_1PX}))  # type: ignore[arg-type]
    assert isinstance(result.submission, Accepted)
    assert result.left_out == ()
    assert party.submitted[0].text == "summarise\n\n--- a.txt ---\nhi"
    assert party.submitted[0].images == (Image("dot.png", "image/png", PNG_1PX),)


async def test_a_strangers_files_are_not_fetched() -> None:
    party = Party({"alice"})
    fetched: list[str] = []

    async def read(attachment: Attachment) -> bytes | None:
        fetched.append(attachment.ref)
        return b"secret"

    prompt = Prompt("m1", STRANGER, "hi", thread="t")
    result = await submit_with(party, prompt, [text_file("a.txt", 2)], read)  # type: ignore[arg-type]
    assert isinstance(result.submission, Rejected)
    assert result.submission.kind is RejectKind.NOT_MEMBER
    assert fetched == []
    assert party.submitted[0].text == "hi"
