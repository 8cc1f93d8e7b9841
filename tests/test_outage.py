"""When the model's API refuses turns (usage limit, 429, 529): the queue is held, nothing is
lost, and the batch runs again by itself. The real `claude` CLI against the fake API, whose
``LIMIT_*`` triggers refuse a text's first request as the real API refuses."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from bot.agent import Outage, OutageKind, TurnEnd
from bot.model import Accepted, BatchDone, Notice, TurnStatus
from bot.stream_json import TurnParser
from tests.conftest import make_settings
from tests.fakes.anthropic_api import FakeAnthropic
from tests.rigs import Rig, open_rig
from tests.test_session_parser import _replay

pytestmark = [pytest.mark.timeout(60)]


@pytest.mark.parametrize(
    ("transcript", "kind"),
    [
        ("b_stream_json_api_429.jsonl.txt", OutageKind.RATE_LIMITED),
        # API-key accounts get no rate_limit_event even with the unified headers: a 429.
        ("b_stream_json_api_429_rate_limit_headers.jsonl.txt", OutageKind.RATE_LIMITED),
        ("b_stream_json_api_529.jsonl.txt", OutageKind.OVERLOADED),
    ],
)
def test_the_real_clis_refused_turns_are_outages(transcript: str, kind: OutageKind) -> None:
    [turn] = _replay(transcript)
    assert turn.end.status is TurnStatus.ERROR
    assert turn.end.outage == Outage(kind)


def test_a_rejecting_rate_limit_event_is_a_usage_limit_with_its_reset() -> None:
    """The event's shape as subscription accounts get it (not reachable with an API key)."""
    parser = TurnParser()
    event = {
        "type": "rate_limit_event",
        "rate_limit_info": {
            "status": "rejected",
            "resetsAt": 1778565600,
            "rateLimitType": "five_hour",
        },
    }
    assert parser.feed(event) == []
    [end] = parser.feed(_refused("You've hit your limit · resets 2pm"))
    assert isinstance(end, TurnEnd)
    assert end.outage == Outage(OutageKind.USAGE_LIMIT, datetime.fromtimestamp(1778565600, UTC))


def test_an_allowed_rate_limit_event_changes_nothing() -> None:
    parser = TurnParser()
    parser.feed({"type": "rate_limit_event", "rate_limit_info": {"status": "allowed_warning"}})
    [end] = parser.feed({"type": "result", "subtype": "success", "result": "hi"})
    assert isinstance(end, TurnEnd)
    assert end.outage is None


def test_the_usage_limit_message_carries_its_reset_time() -> None:
    [end] = TurnParser().feed(_refused("API Error: Claude AI usage limit reached|1778565600"))
    assert isinstance(end, TurnEnd)
    assert end.outage == Outage(OutageKind.USAGE_LIMIT, datetime.fromtimestamp(1778565600, UTC))


def test_other_errors_are_not_outages() -> None:
    [end] = TurnParser().feed({**_refused("API Error: 500 boom"), "api_error_status": 500})
    assert isinstance(end, TurnEnd)
    assert end.outage is None


def _refused(text: str) -> dict[str, Any]:
    return {"type": "result", "subtype": "success", "is_error": True, "result": text}


@contextlib.asynccontextmanager
async def _party(tmp_path: Path) -> AsyncIterator[Rig]:
    async with FakeAnthropic(usage_reset_s=1.0) as api:
        settings = make_settings(
            tmp_path, api, claude={"outage_retry_s": 0.3, "outage_retry_max_s": 1.0}
        )
        async with open_rig(settings, api) as rig:
            assert await rig.chat.join("alice", rig.invites.prompter)
            assert await rig.chat.join("bob", rig.invites.prompter)
            yield rig


def _notices(rig: Rig) -> list[str]:
    return [e.message for e in rig.events.seen if isinstance(e, Notice)]


@pytest.mark.claude
@pytest.mark.parametrize(
    ("trigger", "said"),
    [
        ("LIMIT_529", "Claude's API is overloaded"),
        ("LIMIT_429", "Claude's API is rate-limiting us"),
        ("LIMIT_USAGE", "Claude's usage limit is reached"),
    ],
)
async def test_a_refused_turn_holds_the_queue_and_runs_again_by_itself(
    tmp_path: Path, trigger: str, said: str
) -> None:
    async with _party(tmp_path) as rig:
        assert isinstance(await rig.chat.push_prompt("alice", f"{trigger} fix it"), Accepted)
        held = await rig.events.until(lambda e: isinstance(e, Notice) and said in e.message)
        assert isinstance(held, Notice)
        assert "the queue is held until" in held.message
        if trigger == "LIMIT_USAGE":
            assert "(as the API said)" in held.message
        status = await rig.chat.command("bob", "status")
        assert "holding the queue until" in status.text
        # Prompts sent during the hold are kept and answered once, after it.
        assert isinstance(await rig.chat.push_prompt("bob", "and the docs"), Accepted)
        first = await rig.events.done()
        assert first.status is TurnStatus.SUCCESS
        second = await rig.events.done(after=rig.events.seen.index(first) + 1)
        assert second.status is TurnStatus.SUCCESS
        asked = [t.user_text for t in rig.api.turns]
        assert asked[0] == f"{trigger} fix it"  # refused
        assert asked[1].endswith(f"{trigger} fix it")  # the same batch again, said to be a re-run
        assert "re-sent" in asked[1]
        assert sum("and the docs" in a for a in asked) == 1
        done = [e for e in rig.events.seen if isinstance(e, BatchDone)]
        assert len(done) == 2  # nothing answered twice, nothing failed
        assert "holding the queue" not in (await rig.chat.command("bob", "status")).text
