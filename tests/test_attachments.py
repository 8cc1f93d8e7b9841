"""adapters.attachments: files folded into a chat prompt, the same way on every platform."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from adapters.attachments import Attachment, fold, submit_with
from bot.model import Accepted, Author, Prompt, Rejected, RejectKind, Role, Submission

ALICE = Author("chat", "alice", "alice")
STRANGER = Author("chat", "eve", "eve")


def _reader(contents: dict[str, str | None]) -> Callable[[Attachment], object]:
    async def read(attachment: Attachment) -> str | None:
        return contents[attachment.ref]

    return read


def text_file(name: str, size: int, ref: str | None = None) -> Attachment:
    return Attachment(name, size, "text/plain", True, ref or name)


async def test_text_files_are_read_in_and_others_named() -> None:
    files = [text_file("notes.txt", 5), Attachment("logo.png", 2048, "image/png", False, "p")]
    body = await fold("look", files, limit=1000, read=_reader({"notes.txt": "hello"}))
    assert body == (
        "look\n\n--- notes.txt ---\nhello\n\n[attachment logo.png (image/png, 2,048 bytes) "
        "not included]"
    )


async def test_an_unreadable_text_file_is_named_as_such() -> None:
    body = await fold("", [text_file("a.txt", 3)], limit=100, read=_reader({"a.txt": None}))
    assert body == "[attachment a.txt: could not be read]"


@pytest.mark.parametrize(("size", "content"), [(4_001, None), (10, "x" * 998)])
async def test_a_text_file_over_the_limit_refuses_the_prompt(size: int, content: str) -> None:
    """By its size alone (not even fetched), or once read."""
    fetched: list[str] = []

    async def read(attachment: Attachment) -> str | None:
        fetched.append(attachment.ref)
        return content

    body = await fold("ask", [text_file("big.txt", size)], limit=1000, read=read)
    assert isinstance(body, Rejected)
    assert body.kind is RejectKind.TOO_LONG
    assert "big.txt" in body.reason
    assert "party.max_prompt_chars" in body.reason
    assert fetched == ([] if content is None else ["big.txt"])


@dataclass
class Party:
    """The `PartyPort` seam, as much of it as `submit_with` uses."""

    members: set[str]
    max_prompt_chars: int = 1000
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
    result = await submit_with(party, prompt, [text_file("a.txt", 2)], _reader({"a.txt": "hi"}))  # type: ignore[arg-type]
    assert isinstance(result, Accepted)
    assert party.submitted[0].text == "summarise\n\n--- a.txt ---\nhi"


async def test_a_strangers_files_are_not_fetched() -> None:
    party = Party({"alice"})
    fetched: list[str] = []

    async def read(attachment: Attachment) -> str | None:
        fetched.append(attachment.ref)
        return "secret"

    prompt = Prompt("m1", STRANGER, "hi", thread="t")
    result = await submit_with(party, prompt, [text_file("a.txt", 2)], read)  # type: ignore[arg-type]
    assert isinstance(result, Rejected)
    assert result.kind is RejectKind.NOT_MEMBER
    assert fetched == []
    assert party.submitted[0].text == "hi"
