"""A ~50,000-character reply streamed through `concordia run` into a thread of the fake Slack.

The real slack-bolt / slack-sdk clients (inside `concordia run`) talk to an in-process
FakeSlack (Web API and Socket Mode) and the real `claude` CLI to an in-process FakeAnthropic
whose ``LONG`` reply is the long text below, sent in 200-character deltas (``--chars-per-s``
paces them as a model would; 0 sends them as fast as the socket takes them). A member joins,
mentions the bot once, and the run ends when the thread shows the whole reply.

The fake Slack serves no rate limit of its own (it answers 429 only when told to), so the
figures to compare with Slack's published limits are the busiest windows: ``chat.update`` is
Tier 3 (about 50 a minute per workspace, bursts tolerated) and ``chat.postMessage`` about one
a second per channel. The goal is 0 429s.

Printed: the messages posted and the updates made in the thread, the 429s served, the most
calls of each method in any sliding 1 s and 60 s window, and the time from the fake API
writing the first delta to the fake Slack receiving the first post with output (time to first
visible text).

    python -m bench.slack_stream [--reply-chars 50000] [--chars-per-s 0] [--edit-interval-s 1.2]
"""

from __future__ import annotations

import asyncio
import html
import math
import time

from bench._common import (
    STREAM_TIMEOUT_S,
    bot_config,
    busiest_window,
    long_reply,
    print_table,
    run_stream_bench,
    scratch,
    whole_reply_shown,
)
from tests.e2e.drivers import SLACK_PARTY, party_tokens
from tests.e2e.harness import BotProcess
from tests.fakes.anthropic_api import FakeAnthropic
from tests.fakes.slack_api import (
    ALICE_ID,
    APP_TOKEN,
    BOT_TOKEN,
    BOT_USER_ID,
    CHANNEL_ID,
    RESPONSE_URL,
    FakeSlack,
    RecordedCall,
)
from tests.waits import until

_JOIN_TIMEOUT_S = 30.0
_DELTA_CHARS = 200
_MAX_MESSAGE_CHARS = 3500  # slack.max_message_chars' default
_WINDOWS_S = (1.0, 60.0)
_POST = "chat.postMessage"
_UPDATE = "chat.update"
_HEADER = "*Batch "  # Slack bold: *Batch N*


async def _join(slack: FakeSlack, bot: BotProcess) -> None:
    token, _ = await party_tokens(bot, SLACK_PARTY)
    await slack.send_slash_command(ALICE_ID, f"join {token}")
    async with asyncio.timeout(_JOIN_TIMEOUT_S):
        answer = await slack.next_call(RESPONSE_URL)
    if "Welcome" not in str(answer.params.get("text", "")):
        raise RuntimeError(f"the join was refused: {answer.params.get('text')!r}")


def _outputs(slack: FakeSlack, thread_ts: str) -> list[str]:
    """The bot's replies in the thread as a reader sees them, the batch header left out."""
    texts = (
        html.unescape(str(m["text"]))
        for m in slack.messages(CHANNEL_ID, thread_ts=thread_ts)[1:]
        if m["user"] == BOT_USER_ID
    )
    return [t for t in texts if not t.startswith(_HEADER)]


def _is_output(call: RecordedCall) -> bool:
    return not html.unescape(str(call.params.get("text", ""))).startswith(_HEADER)


async def _main(reply_chars: int, chars_per_s: float, edit_interval_s: float) -> None:
    reply = long_reply(reply_chars)
    delta_interval_s = _DELTA_CHARS / chars_per_s if chars_per_s else 0.0
    async with (
        FakeAnthropic(long_reply=reply, long_interval_s=delta_interval_s) as api,
        FakeSlack() as slack,
    ):
        with scratch("concordia-bench-slack-") as root:
            config = bot_config(
                root,
                api,
                slack={
                    "channels": [CHANNEL_ID],
                    "api_url": slack.api_url,
                    "edit_interval_s": edit_interval_s,
                    "max_message_chars": _MAX_MESSAGE_CHARS,
                },
                claude={"turn_timeout_s": STREAM_TIMEOUT_S},
            )
            env = {"SLACK_BOT_TOKEN": BOT_TOKEN, "SLACK_APP_TOKEN": APP_TOKEN}
            async with BotProcess(config, root, env=env) as bot:
                await _join(slack, bot)
                first_call = len(slack.calls)
                mention = await slack.send_mention(ALICE_ID, "LONG stream the whole guide")
                thread_ts = str(mention["payload"]["event"]["ts"])

                def shown() -> bool:
                    return whole_reply_shown(_outputs(slack, thread_ts), reply)

                await until(shown, slack.requests, within_s=STREAM_TIMEOUT_S, what="the reply")
                shown_at_s = time.monotonic()
                calls = slack.calls[first_call:]

    posts = [c for c in calls if c.method == _POST and c.error is None]
    updates = [c for c in calls if c.method == _UPDATE and c.error is None]
    outputs = [c for c in posts if _is_output(c)]
    first_text_at_s = api.first_text_at_s
    assert first_text_at_s is not None  # the reply was shown, so it was streamed
    busiest = {
        (method, window_s): busiest_window(
            sorted(c.arrived_at_s for c in calls if c.method == method), window_s
        )
        for method in (_POST, _UPDATE)
        for window_s in _WINDOWS_S
    }
    longest = max(len(html.unescape(str(c.params.get("text", "")))) for c in posts + updates)

    print(
        f"reply: {len(reply):,} chars in {math.ceil(len(reply) / _DELTA_CHARS)} deltas"
        f" ({'unpaced' if not chars_per_s else f'{chars_per_s:g} chars/s'}),"
        f" edit_interval_s = {edit_interval_s:g}, max_message_chars = {_MAX_MESSAGE_CHARS}"
    )
    print()
    print_table(
        ["figure", "value"],
        [
            ["output messages posted", len(outputs)],
            [
                f"  bound: ceil(chars / {_MAX_MESSAGE_CHARS}) + 1",
                math.ceil(len(reply) / _MAX_MESSAGE_CHARS) + 1,
            ],
            ["all posts in the thread (header included)", len(posts)],
            ["updates (chat.update)", len(updates)],
            ["longest text sent, unescaped (chars)", longest],
            ["429s / ratelimited served by the fake", slack.rate_limited_count],
            *(
                [f"most {method} in any {window_s:g} s, sliding", busiest[method, window_s]]
                for method in (_POST, _UPDATE)
                for window_s in _WINDOWS_S
            ),
            [
                "first delta -> first post with output (ms)",
                f"{(outputs[0].arrived_at_s - first_text_at_s) * 1000:.0f}",
            ],
            ["first delta -> whole reply shown (s)", f"{shown_at_s - first_text_at_s:.2f}"],
            [
                "last delta -> whole reply shown (ms)",
                f"{(shown_at_s - api.text_sent[-1][1]) * 1000:.0f}",
            ],
        ],
    )


def main() -> None:
    run_stream_bench("bench.slack_stream", __doc__, "slack.edit_interval_s", 1.2, _main)


if __name__ == "__main__":
    main()
