"""Invite tokens: minted once, kept hashed in the store and 0600 on disk, rotated at once."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from bot.invite import InviteBook, JoinAddress
from bot.model import Role
from bot.store import Store


@pytest.fixture
async def store(tmp_path: Path):
    async with Store(tmp_path / "db" / "concordia.db") as store:
        await store.ensure_party("p")
        yield store


async def test_first_run_mints_tokens_and_later_runs_keep_them(
    store: Store, tmp_path: Path
) -> None:
    path = tmp_path / "db" / "tokens.json"
    first = await InviteBook(store, "p", path).ensure()
    again = await InviteBook(store, "p", path).ensure()
    assert first == again
    assert first.prompter != first.host
    assert len(first.prompter) >= 40
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert await store.check_invite("p", first.prompter) is Role.PROMPTER
    assert await store.check_invite("p", first.host) is Role.HOST


async def test_rotation_revokes_the_old_token_only(store: Store, tmp_path: Path) -> None:
    book = InviteBook(store, "p", tmp_path / "tokens.json")
    before = await book.ensure()
    rotated = await book.rotate(Role.PROMPTER)
    assert rotated != before.prompter
    assert await store.check_invite("p", before.prompter) is None
    assert await store.check_invite("p", rotated) is Role.PROMPTER
    assert await store.check_invite("p", before.host) is Role.HOST
    assert (await book.ensure()).prompter == rotated


async def test_a_token_file_without_its_hash_is_minted_afresh(store: Store, tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    path.write_text('{"p": {"prompter": "stale", "host": "stale-too"}}')
    tokens = await InviteBook(store, "p", path).ensure()
    assert tokens.prompter != "stale"
    assert await store.check_invite("p", "stale") is None


def test_a_join_link_carries_the_token_in_its_fragment_and_follows_the_address() -> None:
    address = JoinAddress()
    assert address.link("T") == ""  # nothing listens yet: no link to hand out
    moves: list[str] = []
    address.watch(moves.append)
    address.move("http://127.0.0.1:8765/")
    assert address.link("T") == "http://127.0.0.1:8765/#T"
    address.move("http://127.0.0.1:8765")  # the same base: no news
    address.move("https://abc.ngrok.app")
    assert address.link("T") == "https://abc.ngrok.app/#T"
    assert moves == ["http://127.0.0.1:8765", "https://abc.ngrok.app"]
