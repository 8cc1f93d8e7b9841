"""The party driven in-process through the memory adapter, served by `bot.app.App`: on the
`FakeAgent`, or on the real `claude` CLI for the tests about Claude (marked `claude`)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from adapters.memory import MemoryAdapter
from bot.model import Accepted, Rejected
from tests.conftest import make_settings
from tests.fakes.anthropic_api import LONG_REPLY, FakeAnthropic
from tests.rigs import Rig, open_rig
from tests.waits import until

pytestmark = [pytest.mark.timeout(60)]

SECRET = "sk-ant-test-secret-0123456789"


@pytest.fixture
async def rig(
    request: pytest.FixtureRequest, fake_api: FakeAnthropic, tmp_path: Path
) -> AsyncIterator[Rig]:
    """The party with alice (prompter) and host joined: on the real CLI if the test is
    marked `claude`, else on the fake agent."""
    api = fake_api if request.node.get_closest_marker("claude") else None
    async with open_rig(make_settings(tmp_path, api), api, secrets=[SECRET]) as rig:
        assert await rig.chat.join("alice", rig.invites.prompter)
        assert await rig.chat.join("host", rig.invites.host)
        yield rig


def _content(text: str) -> str:
    """Text without fence markers and whitespace: what splitting may add or move."""
    return "".join(text.replace("```python", "").replace("```", "").split())


async def _status_message(chat: MemoryAdapter, marker: str) -> None:
    """Wait until some message in the platform contains ``marker``."""
    await until(
        lambda: any(marker in m.text for m in chat.platform.messages.values()),
        chat.platform.calls,
        what=f"a message showing {marker!r}",
    )


async def _thread_shows(chat: MemoryAdapter, thread: str, expected: str) -> list[str]:
    """Wait until the thread's messages after the header hold ``expected``; return them all."""
    await until(
        lambda: _content("".join(chat.platform.thread_text(thread)[1:])) == _content(expected),
        chat.platform.calls,
        what=f"thread {thread} showing the expected text",
    )
    return chat.platform.thread_text(thread)


@pytest.mark.claude
async def test_long_reply_is_split_within_limits_with_balanced_fences(rig: Rig) -> None:
    submitted = await rig.chat.push_prompt("alice", "LONG please", thread="t-long")
    assert isinstance(submitted, Accepted)
    texts = await _thread_shows(rig.chat, "t-long", LONG_REPLY)
    header, body = texts[0], texts[1:]
    assert "alice" in header
    assert all(len(t) <= 2000 for t in texts)
    assert all(t.count("```") % 2 == 0 for t in body), "a fence left open across a split"
    assert len(body) <= len(LONG_REPLY) // 2000 + 2
    assert all(len(m.text) <= 2000 for m in rig.chat.platform.history), "an edit over the limit"


@pytest.mark.claude
async def test_rate_limited_edits_lose_nothing(rig: Rig) -> None:
    rig.chat.platform.fail_next(4, retry_after=0.02)
    await rig.chat.push_prompt("alice", "LONG with 429s", thread="t-429")
    texts = await _thread_shows(rig.chat, "t-429", LONG_REPLY)
    assert all(len(t) <= 2000 for t in texts)
    assert rig.chat.platform.failures_left == 0, "the 429s were really served"


async def test_output_never_shows_secrets_or_mass_mentions(rig: Rig) -> None:
    await rig.chat.push_prompt("alice", f"say {SECRET} to @everyone and @here", thread="t-s")
    await _status_message(rig.chat, "[redacted]")
    shown = "\n".join(m.text for m in rig.chat.platform.history)
    assert SECRET not in shown
    assert "@everyone" not in shown
    assert "@here" not in shown
    assert "@\u200beveryone" in shown


async def test_outsiders_are_refused_and_duplicates_not_queued_twice(rig: Rig) -> None:
    refused = await rig.chat.push_prompt("mallory", "do things")
    assert isinstance(refused, Rejected)
    assert "join" in refused.reason
    first = await rig.chat.push_prompt("alice", "SLOW dedupe me", source_id="msg-1")
    again = await rig.chat.push_prompt("alice", "SLOW dedupe me", source_id="msg-1")
    assert isinstance(first, Accepted)
    assert isinstance(again, Accepted)
    assert again.is_duplicate
    assert again.prompt_id == first.prompt_id
    await asyncio.wait_for(rig.api.first_delta.wait(), 30)
    assert sum("dedupe me" in t.user_text for t in rig.api.turns) == 1


async def test_commands_status_queue_cancel_and_host_only(rig: Rig) -> None:
    status = await rig.chat.command("alice", "status")
    assert status.ok
    assert "party default" in status.text
    refused = await rig.chat.command("alice", "restart")
    assert not refused.ok
    assert "host" in refused.text
    unknown = await rig.chat.command("alice", "frobnicate")
    assert not unknown.ok

    await rig.chat.push_prompt("alice", "SLOW occupy Claude")
    await asyncio.wait_for(rig.api.first_delta.wait(), 30)
    waiting = await rig.chat.push_prompt("alice", "queued behind")
    assert isinstance(waiting, Accepted)
    queue = await rig.chat.command("host", "queue")
    assert "queued behind" in queue.text
    assert "running: batch" in queue.text
    cancelled = await rig.chat.command("alice", "cancel")
    assert cancelled.ok
    assert "interrupting" in cancelled.text
    await _status_message(rig.chat, "interrupted")


async def test_cancel_withdraws_your_own_pending_prompt(rig: Rig) -> None:
    await rig.chat.push_prompt("alice", "SLOW occupy Claude")
    await asyncio.wait_for(rig.api.first_delta.wait(), 30)
    mine = await rig.chat.push_prompt("host", "withdraw me")
    assert isinstance(mine, Accepted)
    result = await rig.chat.command("host", "cancel", "mine")
    assert result.ok
    assert f"#{mine.prompt_id}" in result.text
    assert (await rig.store.prompt_state(mine.prompt_id)).value == "failed"
    nothing = await rig.chat.command("host", "cancel", "mine")
    assert not nothing.ok
    assert rig.party.session.ready.is_set()
    assert not any("withdraw me" in t.user_text for t in rig.api.turns)


async def test_rotated_invite_refuses_the_old_token_and_keeps_members(rig: Rig) -> None:
    old = rig.invites.prompter
    rotated = await rig.chat.command("host", "invite", "rotate")
    assert rotated.ok
    assert old not in rotated.text
    assert not await rig.chat.join("bob", old)
    new_token = rotated.text.split("new invite token: ")[1].split()[0]
    assert await rig.chat.join("bob", new_token)
    still = await rig.chat.push_prompt("alice", "alice is still in")
    assert isinstance(still, Accepted)


async def test_leave_ends_membership(rig: Rig) -> None:
    left = await rig.chat.command("alice", "leave")
    assert left.ok
    after = await rig.chat.push_prompt("alice", "am I in?")
    assert isinstance(after, Rejected)


@pytest.mark.claude
async def test_new_starts_a_fresh_conversation(rig: Rig) -> None:
    await rig.chat.push_prompt("alice", "first conversation", thread="t-a")
    await _status_message(rig.chat, "ECHO: first conversation")
    before = rig.api.turns[-1].session_id
    result = await rig.chat.command("host", "new")
    assert result.ok
    await rig.chat.push_prompt("alice", "second conversation", thread="t-b")
    await _status_message(rig.chat, "ECHO: second conversation")
    after = rig.api.turns[-1]
    assert after.session_id != before
    assert after.message_count == 2, "the fresh conversation carries no history"


async def test_a_member_flooding_prompts_is_paced_and_others_keep_their_turn(rig: Rig) -> None:
    burst = rig.party._settings.party.member_burst
    results = [await rig.chat.push_prompt("alice", f"flood {n}") for n in range(burst + 30)]
    accepted = [r for r in results if isinstance(r, Accepted)]
    refused = [r for r in results if isinstance(r, Rejected)]
    assert len(accepted) == burst
    assert len(refused) == 30
    assert "faster than 20 a minute (party.member_prompts_per_minute)" in refused[0].reason
    assert "try again in 3 s" in refused[0].reason
    other = await rig.chat.push_prompt("host", "my turn")
    assert isinstance(other, Accepted)
    assert rig.party.metrics.prompts_rejected == 30


@contextlib.asynccontextmanager
async def _party(tmp_path: Path, **party: float) -> AsyncIterator[Rig]:
    """alice and bob joined, on the fake agent, with these [party] settings."""
    async with open_rig(make_settings(tmp_path, None, party=party)) as rig:
        assert await rig.chat.join("alice", rig.invites.prompter)
        assert await rig.chat.join("bob", rig.invites.prompter)
        yield rig


async def test_a_lone_prompt_starts_after_the_quiet_gap_not_the_whole_window(
    tmp_path: Path,
) -> None:
    """A 30 s window would outlast the test's wait: the batch starts once 0.05 s pass quietly."""
    async with _party(tmp_path, collect_window_s=30.0, quiet_gap_s=0.05) as rig:
        await rig.chat.push_prompt("alice", "fix the flaky test", thread="t1")
        done = await rig.events.done(within_s=10)
        assert done.status.value == "success"
        assert [t.user_text for t in rig.api.turns] == ["fix the flaky test"]


async def test_prompts_sent_together_still_land_in_one_batch(tmp_path: Path) -> None:
    async with _party(tmp_path, collect_window_s=30.0, quiet_gap_s=0.5) as rig:
        asks = ("rename the config module", "and update its imports", "then run the tests")
        await asyncio.gather(
            *(
                rig.chat.push_prompt(name, ask, thread=f"t{i}")
                for i, (name, ask) in enumerate(zip(("alice", "bob", "alice"), asks, strict=True))
            )
        )
        await rig.events.done(within_s=10)
        [turn] = rig.api.turns
        for ask in asks:
            assert ask in turn.user_text


async def test_the_collect_window_caps_the_quiet_gap(tmp_path: Path) -> None:
    """A 30 s quiet gap would outlast the test's wait: the 0.2 s window closes the batch."""
    async with _party(tmp_path, collect_window_s=0.2, quiet_gap_s=30.0) as rig:
        await rig.chat.push_prompt("alice", "first", thread="t1")
        await rig.events.done(within_s=10)
        assert [t.user_text for t in rig.api.turns] == ["first"]
