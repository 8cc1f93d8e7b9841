"""Approving Claude's tool use from Slack (#8): the request as Block Kit with three buttons,
clicks over Socket Mode, the outcome in place of the buttons.

The first tests drive the Slack side alone (the real slack-sdk and slack-bolt against the fake
Slack, and a stand-in party where the core would decide); the last ones are end to end:
`concordia run` with the real `claude` CLI asking permission for a Bash call.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, cast

import pytest
from slack_sdk.web.async_client import AsyncWebClient

from adapters.slack import SlackAdapter, SlackSink
from bot.app import chat_outputs
from bot.config import SlackSettings
from bot.model import (
    Accepted,
    ApprovalRequested,
    ApprovalResolved,
    Author,
    Batch,
    BatchStarted,
    Command,
    CommandResult,
    Decision,
    Listener,
    Prompt,
    Role,
    SourcePrompt,
)
from bot.party import Party
from bot.ports import AdapterError, ApprovalSink, OutboxEntry
from bot.relay import ThreadRelay
from tests.e2e.harness import BotProcess
from tests.e2e.test_slack_e2e import join, start_bot
from tests.fakes.anthropic_api import FakeAnthropic
from tests.fakes.slack_api import (
    ACK_DEADLINE_S,
    ALICE_ID,
    APP_TOKEN,
    BOB_ID,
    BOT_TOKEN,
    BOT_USER_ID,
    CHANNEL_ID,
    RESPONSE_URL,
    FakeSlack,
)
from tests.waits import until

PARTY = f"slack-{CHANNEL_ID}"
ALLOW, ALWAYS, DENY = (f"concordia_approval_{d}" for d in ("allow", "always", "deny"))
_DEADLINE_S = 10.0
# Anything that would ping or link on Slack: a user, channel or group mention, <!here>, a URL.
_PING = re.compile(r"<[@#!]|<https?:")


@pytest.fixture
async def fake_slack() -> AsyncIterator[FakeSlack]:
    async with FakeSlack() as fake:
        yield fake


def _request(**changes: Any) -> ApprovalRequested:
    fields: dict[str, Any] = {
        "approval_id": 4,
        "batch_id": 2,
        "tool": "Bash",
        "summary": "run `touch approved.txt`",
        "detail": "touch approved.txt",
        "needed": 1,
        "requesters": (Author("slack", ALICE_ID, "alice"),),
        "timeout_s": 120.0,
    }
    return ApprovalRequested(**(fields | changes))


def _texts(blocks: list[dict[str, Any]]) -> list[str]:
    """Every mrkdwn/plain text in ``blocks``, in order (sections, context elements, buttons)."""
    found = []
    for block in blocks:
        if "text" in block:
            found.append(block["text"]["text"])
        for element in block.get("elements", []):
            text = element.get("text")
            found.append(text["text"] if isinstance(text, dict) else str(text))
    return found


def _buttons(message: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        element
        for block in message["blocks"] or []
        if block["type"] == "actions"
        for element in block["elements"]
    ]


async def _thread(fake: FakeSlack) -> str:
    """A member's mention to hang the approval under; returns its ``"C/TS"`` thread."""
    envelope = await fake.send_mention(ALICE_ID, "start")
    return f"{CHANNEL_ID}/{envelope['payload']['event']['ts']}"


def _sink(fake: FakeSlack, *, edit_interval_s: float = 0.05) -> SlackSink:
    client = AsyncWebClient(token=BOT_TOKEN, base_url=fake.api_url)
    return SlackSink(client, max_message_chars=3500, edit_interval_s=edit_interval_s)


def _reply(fake: FakeSlack, thread: str) -> dict[str, Any]:
    (reply,) = fake.messages(CHANNEL_ID, thread_ts=thread.split("/")[1])[1:]
    return reply


# -- SlackSink: the request and its outcome ------------------------------------------------------


async def test_the_request_has_three_buttons_and_pings_each_slack_requester_once(
    fake_slack: FakeSlack,
) -> None:
    thread = await _thread(fake_slack)
    approval = _request(
        summary="run `echo <!channel> & <@U0BOB00001>`",
        detail="echo <!channel> & <@U0BOB00001> <https://evil.example|x>\n```\nend",
        needed=2,
        requesters=(
            Author("slack", ALICE_ID, "alice"),
            Author("slack", ALICE_ID, "alice, again"),
            Author("websocket", BOB_ID, "bob"),  # not a Slack user: never mentioned
            Author("slack", "U0BOB00001> <!channel", "forged"),  # not a Slack id: dropped
        ),
    )
    sink = _sink(fake_slack)
    assert isinstance(sink, ApprovalSink)

    ref = await sink.post_approval(thread, approval)

    reply = _reply(fake_slack, thread)
    assert ref == f"{CHANNEL_ID}:{reply['ts']}"
    request, detail, how, actions = reply["blocks"]
    assert actions["type"] == "actions"
    assert request["text"]["text"] == (
        "🔐 *Approval 4*: Claude wants to run `echo &lt;!channel&gt; &amp; &lt;@U0BOB00001&gt;`"
    )
    assert detail["text"]["text"].startswith("```\n")
    assert detail["text"]["text"].endswith("\n```")
    inner = detail["text"]["text"][4:-4]
    assert "```" not in inner, "a fence in the detail cannot close the code block"
    assert html.unescape(inner).replace("\u200b", "") == approval.detail
    how_text = how["elements"][0]["text"]
    assert "needs 2 approvers" in how_text
    assert "no answer in 120 s denies it" in how_text
    assert [
        (b["action_id"], b["text"]["text"], b.get("style"), b["value"]) for b in _buttons(reply)
    ] == [
        (ALLOW, "Allow once", "primary", "4"),
        (ALWAYS, "Always allow", None, "4"),
        (DENY, "Deny", "danger", "4"),
    ]
    for shown in (reply["text"], "\n".join(_texts(reply["blocks"]))):
        assert shown.count(f"<@{ALICE_ID}>") == 1, "the requester is pinged once"
        assert _PING.findall(shown.replace(f"<@{ALICE_ID}>", "")) == [], "and nobody else"
    assert "Approval 4" in reply["text"]
    assert (reply["unfurl_links"], reply["unfurl_media"]) == (False, False)


async def test_one_approver_and_no_slack_requester_means_no_quorum_line_and_no_ping(
    fake_slack: FakeSlack,
) -> None:
    thread = await _thread(fake_slack)
    await _sink(fake_slack).post_approval(
        thread, _request(requesters=(Author("websocket", "carol", "carol"),))
    )
    reply = _reply(fake_slack, thread)
    shown = reply["text"] + "\n".join(_texts(reply["blocks"]))
    assert "approvers" not in shown
    assert _PING.search(shown) is None


async def test_closing_keeps_the_request_drops_the_buttons_and_shows_the_outcome(
    fake_slack: FakeSlack,
) -> None:
    sink = _sink(fake_slack)
    outcomes = []
    for allowed, text in ((True, "allowed by <@U0BOB00001>"), (False, "denied by bob & co")):
        thread = await _thread(fake_slack)
        approval = _request()
        ref = await sink.post_approval(thread, approval)
        posted = _reply(fake_slack, thread)
        await sink.close_approval(ref, approval, ApprovalResolved(4, 2, allowed, text))
        closed = _reply(fake_slack, thread)
        assert closed["blocks"][:2] == posted["blocks"][:2], "the same request"
        assert _buttons(closed) == []
        assert all(b["type"] != "actions" for b in closed["blocks"])
        assert _PING.search(closed["text"] + "\n".join(_texts(closed["blocks"]))) is None
        outcomes.append(closed["blocks"][-1]["elements"][0]["text"])
    assert outcomes == ["✅ allowed by &lt;@U0BOB00001&gt;", "⛔ denied by bob &amp; co"]


async def test_a_huge_detail_is_cut_to_block_kits_limit_without_splitting_an_entity(
    fake_slack: FakeSlack,
) -> None:
    thread = await _thread(fake_slack)
    await _sink(fake_slack).post_approval(thread, _request(detail="&" * 5000))
    detail = _reply(fake_slack, thread)["blocks"][1]["text"]["text"]
    assert len(detail) <= 3000
    assert detail.endswith("&amp;…\n```")


async def test_rate_limits_become_adapter_errors_with_retry_after(fake_slack: FakeSlack) -> None:
    thread = await _thread(fake_slack)
    sink = _sink(fake_slack)
    fake_slack.rate_limit("chat.postMessage", retry_after=7)
    with pytest.raises(AdapterError) as limited:
        await sink.post_approval(thread, _request())
    ref = await sink.post_approval(thread, _request())
    fake_slack.rate_limit("chat.update", in_body=True)
    with pytest.raises(AdapterError) as in_body:
        await sink.close_approval(ref, _request(), ApprovalResolved(4, 2, True, "allowed by bob"))

    assert limited.value.retry_after == 7.0
    assert in_body.value.retry_after == 1.0, "in-body ratelimited counts as a 429"
    assert len(_buttons(_reply(fake_slack, thread))) == 3, "the failed update changed nothing"


async def test_an_approval_is_paced_like_any_post_in_its_channel(fake_slack: FakeSlack) -> None:
    thread = await _thread(fake_slack)
    sink = _sink(fake_slack, edit_interval_s=0.5)
    await sink.post(thread, "Claude is working")
    await sink.post_approval(thread, _request())
    first, second = (c for c in fake_slack.calls if c.method == "chat.postMessage")
    # The wait is measured from before the first call left; its trip is the tolerance.
    assert second.arrived_at_s - first.arrived_at_s >= 0.4


class _Outbox:
    """Nothing left to redeliver; what is written is confirmed and forgotten."""

    async def outbox_write(
        self, platform: str, thread: str, batch_id: int, seq: int, text: str
    ) -> int:
        return 1

    async def outbox_confirm(self, entry_id: int, ref: str, text: str) -> None:
        return None

    async def outbox_unsynced(self, platform: str) -> list[OutboxEntry]:
        return []


async def test_the_relay_shows_the_request_with_buttons_and_closes_it(
    fake_slack: FakeSlack,
) -> None:
    thread = await _thread(fake_slack)
    async with ThreadRelay(
        _sink(fake_slack), _Outbox(), platform="slack", home_thread=thread
    ) as relay:
        relay.deliver(_request())
        relay.deliver(ApprovalResolved(4, 2, False, "denied by bob"))
    (post,) = (c for c in fake_slack.calls if c.method == "chat.postMessage")
    assert [b["type"] for b in post.params["blocks"]] == [
        "section",
        "section",
        "context",
        "actions",
    ]
    closed = _reply(fake_slack, thread)
    assert _buttons(closed) == []
    assert closed["blocks"][-1]["elements"][0]["text"] == "⛔ denied by bob"


# -- SlackAdapter: clicks and /concordia approve ----------------------------------------------


class _Party:
    """Where the core would decide: records what the adapter hands in, answers as told."""

    name = PARTY
    max_prompt_chars = 10_000

    def __init__(self, members: dict[str, Role]) -> None:
        self.members = members
        self.listeners: list[Listener] = []
        self.decided: asyncio.Queue[tuple[int, Author, Decision]] = asyncio.Queue()
        self.commands: asyncio.Queue[Command] = asyncio.Queue()
        self.release = asyncio.Event()
        self.release.set()
        self.answer = "allowed approval 4 <@U0BOB00001>"

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        self.listeners.append(listener)
        return lambda: self.listeners.remove(listener)

    async def submit(self, prompt: Prompt) -> Accepted:
        return Accepted(prompt_id=1, position=1)  # the mention a request hangs under

    def role_of(self, author: Author) -> Role | None:
        return self.members.get(author.user_id) if author.platform == "slack" else None

    async def decide(self, approval_id: int, author: Author, decision: Decision) -> CommandResult:
        self.decided.put_nowait((approval_id, author, decision))
        await self.release.wait()
        return CommandResult("approve", True, self.answer)

    async def command(self, command: Command) -> CommandResult:
        self.commands.put_nowait(command)
        return CommandResult(command.name, True, f"ran {command.name} {command.args}")


@contextlib.asynccontextmanager
async def _serving(fake: FakeSlack, party: _Party) -> AsyncIterator[SlackAdapter]:
    settings = SlackSettings(channels=(CHANNEL_ID,), api_url=fake.api_url, edit_interval_s=0.05)
    adapter = SlackAdapter(
        settings, {CHANNEL_ID: cast(Party, party)}, bot_token=BOT_TOKEN, app_token=APP_TOKEN
    )
    try:
        async with asyncio.timeout(_DEADLINE_S):
            await adapter.start()
            await fake.next_connection()
        # The relay between the party and Slack, as `concordia run` wires it.
        async with chat_outputs(adapter, {party.name: cast(Party, party)}, _Outbox()):
            yield adapter
    finally:
        await adapter.stop()


async def _posted_request(fake: FakeSlack, party: _Party, thread_ts: str) -> dict[str, Any]:
    """Open a batch for the mention ``thread_ts`` and publish a request during it, as the party
    does; return the message the request became in that thread."""
    (relay,) = party.listeners
    source = SourcePrompt(1, ALICE_ID, "go", thread=f"{CHANNEL_ID}/{thread_ts}", platform="slack")
    relay.deliver(BatchStarted(Batch(2, "go", (source,), ())))
    relay.deliver(_request())
    await until(
        lambda: _approval(fake, thread_ts) is not None,
        fake.requests,
        within_s=_DEADLINE_S,
        what="the approval request posted",
    )
    message = _approval(fake, thread_ts)
    assert message is not None
    return message


async def _ephemeral_to(fake: FakeSlack, user: str, after: int = 0) -> dict[str, Any]:
    """The first ephemeral message to ``user`` among those from index ``after`` on."""

    def found() -> list[dict[str, Any]]:
        return [e for e in fake.ephemerals[after:] if e["user"] == user]

    await until(found, fake.requests, within_s=_DEADLINE_S, what=f"an ephemeral to {user}")
    return found()[0]


@pytest.mark.timeout(30)
async def test_a_click_is_acked_before_the_decision_and_answered_to_the_clicker_alone(
    fake_slack: FakeSlack,
) -> None:
    party = _Party({BOB_ID: Role.APPROVER})
    party.release.clear()  # the core takes its time deciding
    async with _serving(fake_slack, party):
        mention = await fake_slack.send_mention(ALICE_ID, "TOOL_BASH touch approved.txt")
        thread = mention["payload"]["event"]["ts"]
        message = await _posted_request(fake_slack, party, thread)

        click = await fake_slack.click_button(BOB_ID, message["ts"], ALLOW)
        ack = await fake_slack.wait_ack(click["envelope_id"], ACK_DEADLINE_S)
        decided = await asyncio.wait_for(party.decided.get(), _DEADLINE_S)
        assert fake_slack.ephemerals == [], "acked while the decision was still open"
        party.release.set()
        answer = await _ephemeral_to(fake_slack, BOB_ID)

    assert ack.elapsed_s < ACK_DEADLINE_S
    assert decided == (4, Author("slack", BOB_ID, "bob"), Decision.ALLOW)
    assert answer["text"] == "allowed approval 4 &lt;@U0BOB00001&gt;"
    assert (answer["channel"], answer["thread_ts"]) == (CHANNEL_ID, thread), "in the thread"
    assert [e["user"] for e in fake_slack.ephemerals] == [BOB_ID]
    shown = _approval(fake_slack, thread)
    assert shown is not None
    assert shown["text_history"] == [message["text"]], "the outcome is the core's to show"


@pytest.mark.timeout(30)
async def test_each_button_maps_to_its_decision(fake_slack: FakeSlack) -> None:
    party = _Party({BOB_ID: Role.HOST})
    async with _serving(fake_slack, party):
        thread = (await fake_slack.send_mention(ALICE_ID, "go"))["payload"]["event"]["ts"]
        message = await _posted_request(fake_slack, party, thread)
        decisions = []
        for action_id in (ALLOW, ALWAYS, DENY):
            click = await fake_slack.click_button(BOB_ID, message["ts"], action_id)
            await fake_slack.wait_ack(click["envelope_id"], ACK_DEADLINE_S)
            decisions.append(await asyncio.wait_for(party.decided.get(), _DEADLINE_S))
    assert [d for _, _, d in decisions] == [Decision.ALLOW, Decision.ALWAYS, Decision.DENY]


@pytest.mark.timeout(30)
async def test_a_non_members_click_gets_the_join_hint_and_decides_nothing(
    fake_slack: FakeSlack,
) -> None:
    party = _Party({})
    async with _serving(fake_slack, party):
        thread = (await fake_slack.send_mention(ALICE_ID, "go"))["payload"]["event"]["ts"]
        message = await _posted_request(fake_slack, party, thread)
        click = await fake_slack.click_button(ALICE_ID, message["ts"], DENY)
        await fake_slack.wait_ack(click["envelope_id"], ACK_DEADLINE_S)
        hint = await _ephemeral_to(fake_slack, ALICE_ID)
    assert "not joined" in hint["text"]
    assert "/concordia join &lt;token&gt;" in hint["text"]
    assert party.decided.empty()


@pytest.mark.timeout(30)
async def test_concordia_approve_and_approvals_reach_the_party_as_commands(
    fake_slack: FakeSlack,
) -> None:
    party = _Party({BOB_ID: Role.HOST})
    async with _serving(fake_slack, party):
        texts = []
        for text in ("approve 4 deny", "approvals reset"):
            envelope = await fake_slack.send_slash_command(BOB_ID, text)
            await fake_slack.wait_ack(envelope["envelope_id"], ACK_DEADLINE_S)
            async with asyncio.timeout(_DEADLINE_S):
                texts.append((await fake_slack.next_call(RESPONSE_URL)).params["text"])
        approve = party.commands.get_nowait()
        approvals = party.commands.get_nowait()
    assert (approve.name, approve.args, approve.author.user_id) == ("approve", "4 deny", BOB_ID)
    assert (approvals.name, approvals.args) == ("approvals", "reset")
    assert texts == ["ran approve 4 deny", "ran approvals reset"]


# -- end to end: `concordia run`, the real claude CLI ------------------------------------------


async def _tokens(bot: BotProcess) -> tuple[str, str]:
    """The Slack party's prompter and host tokens, as `concordia run` prints them."""
    line = await bot.line_starting(f"party '{PARTY}'")
    prompter = line.split("/concordia join ")[1].split()[0]
    host = line.split("(host: ")[1].split(")")[0]
    return prompter, host


def _approval(fake: FakeSlack, thread_ts: str) -> dict[str, Any] | None:
    """The approval request in the thread (the bot's message with approval blocks), if any."""
    return next(
        (
            m
            for m in fake.messages(CHANNEL_ID, thread_ts=thread_ts)[1:]
            if m["user"] == BOT_USER_ID
            and any(b.get("block_id") == "concordia_approval_request" for b in m["blocks"] or [])
        ),
        None,
    )


def _outcome(message: dict[str, Any] | None) -> str:
    """The closed request's outcome line; "" while it is open (its buttons still shown)."""
    if message is None or _buttons(message):
        return ""
    last = message["blocks"][-1]
    return str(last["elements"][0]["text"]) if last["type"] == "context" else ""


def _shown(fake: FakeSlack, thread_ts: str) -> str:
    """Everything the bot showed in the thread (texts and block texts), unescaped."""
    parts = []
    for message in fake.messages(CHANNEL_ID, thread_ts=thread_ts)[1:]:
        parts.append(message["text"])
        parts.extend(_texts(message["blocks"] or []))
    return html.unescape("\n".join(parts))


async def _request_in_thread(
    fake: FakeSlack, bot: BotProcess, command: str
) -> tuple[str, dict[str, Any]]:
    """Alice (a prompter) asks Claude for ``command``; the thread and its approval request."""
    mention = await fake.send_mention(ALICE_ID, f"TOOL_BASH {command}")
    thread_ts = mention["payload"]["event"]["ts"]
    try:
        await until(lambda: _approval(fake, thread_ts) is not None, fake.requests, within_s=60)
    except AssertionError:
        raise AssertionError("no approval request:\n" + "".join(bot.log[-40:])) from None
    message = _approval(fake, thread_ts)
    assert message is not None
    return thread_ts, message


@pytest.mark.claude
@pytest.mark.timeout(120)
async def test_allow_once_runs_the_tool_and_the_request_shows_who_allowed_it(
    fake_api: FakeAnthropic, fake_slack: FakeSlack, tmp_path: Path
) -> None:
    bot = await start_bot(tmp_path, fake_api, fake_slack)
    try:
        prompter, host = await _tokens(bot)
        assert "Welcome" in await join(fake_slack, ALICE_ID, prompter)
        assert "Welcome" in await join(fake_slack, BOB_ID, host)
        thread_ts, request = await _request_in_thread(fake_slack, bot, "touch approved.txt")
        made = tmp_path / "work" / "approved.txt"
        assert not made.exists(), "nothing runs before someone allows it"
        assert [b["action_id"] for b in _buttons(request)] == [ALLOW, ALWAYS, DENY]
        for shown in (request["text"], "\n".join(_texts(request["blocks"]))):
            assert shown.count(f"<@{ALICE_ID}>") == 1, "the requester is pinged once"
            assert _PING.findall(shown.replace(f"<@{ALICE_ID}>", "")) == []
        assert "touch approved.txt" in request["blocks"][1]["text"]["text"]

        answered = len(fake_slack.ephemerals)  # the join answers came before
        click = await fake_slack.click_button(BOB_ID, request["ts"], ALLOW)
        ack = await fake_slack.wait_ack(click["envelope_id"], ACK_DEADLINE_S)
        assert ack.elapsed_s < ACK_DEADLINE_S
        await until(
            lambda: (
                _outcome(_approval(fake_slack, thread_ts)) != ""
                and "TOOL RESULT" in _shown(fake_slack, thread_ts)
            ),
            fake_slack.requests,
            within_s=60,
            what="the request closed and the tool's result shown",
        )
        closed = _approval(fake_slack, thread_ts)
        assert made.exists(), "the allowed command ran"
        assert _outcome(closed) == "✅ allowed by bob"
        assert closed is not None
        assert closed["blocks"][:2] == request["blocks"][:2]
        answer = await _ephemeral_to(fake_slack, BOB_ID, answered)
        assert answer["text"] == f"allowed approval {click['payload']['actions'][0]['value']}"
        assert answer["thread_ts"] == thread_ts
        assert [c.params["user"] for c in fake_slack.calls if c.method == "chat.postEphemeral"] == [
            BOB_ID
        ]
    finally:
        await bot.stop()


@pytest.mark.claude
@pytest.mark.timeout(120)
async def test_deny_keeps_the_tool_from_running_and_a_non_member_is_told_to_join(
    fake_api: FakeAnthropic, fake_slack: FakeSlack, tmp_path: Path
) -> None:
    bot = await start_bot(tmp_path, fake_api, fake_slack)
    try:
        prompter, host = await _tokens(bot)
        assert "Welcome" in await join(fake_slack, ALICE_ID, prompter)
        thread_ts, request = await _request_in_thread(fake_slack, bot, "touch denied.txt")

        answered = len(fake_slack.ephemerals)
        early = await fake_slack.click_button(BOB_ID, request["ts"], DENY)  # not joined yet
        await fake_slack.wait_ack(early["envelope_id"], ACK_DEADLINE_S)
        hint = await _ephemeral_to(fake_slack, BOB_ID, answered)
        assert "not joined" in hint["text"]
        assert _outcome(_approval(fake_slack, thread_ts)) == "", "the hint decided nothing"

        assert "Welcome" in await join(fake_slack, BOB_ID, host)
        click = await fake_slack.click_button(BOB_ID, request["ts"], DENY)
        await fake_slack.wait_ack(click["envelope_id"], ACK_DEADLINE_S)
        await until(
            lambda: (
                _outcome(_approval(fake_slack, thread_ts)) != ""
                and "TOOL ERROR" in _shown(fake_slack, thread_ts)
            ),
            fake_slack.requests,
            within_s=60,
            what="the request closed and the tool's error shown",
        )
        assert _outcome(_approval(fake_slack, thread_ts)) == "⛔ denied by bob"
        assert not (tmp_path / "work" / "denied.txt").exists()
    finally:
        await bot.stop()


@pytest.mark.claude
@pytest.mark.timeout(120)
async def test_a_prompters_click_is_refused_with_a_reason_and_changes_nothing(
    fake_api: FakeAnthropic, fake_slack: FakeSlack, tmp_path: Path
) -> None:
    bot = await start_bot(tmp_path, fake_api, fake_slack)
    try:
        prompter, host = await _tokens(bot)
        assert "Welcome" in await join(fake_slack, ALICE_ID, prompter)
        assert "Welcome" in await join(fake_slack, BOB_ID, host)
        thread_ts, request = await _request_in_thread(fake_slack, bot, "touch refused.txt")

        answered = len(fake_slack.ephemerals)
        click = await fake_slack.click_button(ALICE_ID, request["ts"], ALLOW)
        await fake_slack.wait_ack(click["envelope_id"], ACK_DEADLINE_S)
        refusal = await _ephemeral_to(fake_slack, ALICE_ID, answered)
        assert "prompter" in refusal["text"], "the reason is given"
        assert refusal["thread_ts"] == thread_ts
        still = _approval(fake_slack, thread_ts)
        assert still is not None
        assert still["text_history"] == [request["text"]], "the request is unchanged"
        assert len(_buttons(still)) == 3
        assert not (tmp_path / "work" / "refused.txt").exists()

        # It is still waiting: the host ends it with the slash command instead of a button.
        approval_id = click["payload"]["actions"][0]["value"]
        await fake_slack.send_slash_command(BOB_ID, f"approve {approval_id} deny")
        await until(
            lambda: _outcome(_approval(fake_slack, thread_ts)) != "",
            fake_slack.requests,
            within_s=60,
            what="the request closed",
        )
        assert _outcome(_approval(fake_slack, thread_ts)) == "⛔ denied by bob"
        assert not (tmp_path / "work" / "refused.txt").exists()
    finally:
        await bot.stop()
