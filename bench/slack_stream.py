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

import argparse
import asyncio
import bisect
import html
import math
import re
import time
from collections.abc import Callable

from bench._common import bot_config, command_line, print_table, scratch
from tests.e2e.harness import BotProcess
from tests.fakes.anthropic_api import LONG_REPLY, FakeAnthropic
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

_STREAM_TIMEOUT_S = 600.0
_JOIN_TIMEOUT_S = 30.0
_DELTA_CHARS = 200
_MAX_MESSAGE_CHARS = 3500  # slack.max_message_chars' default
_WINDOWS_S = (1.0, 60.0)
_POST = "chat.postMessage"
_UPDATE = "chat.update"
_FENCE_LINE = re.compile(r"^[ \t]*```[^\n]*$", re.MULTILINE)
_PARTY = f"slack-{CHANNEL_ID}"
_HEADER = "**Batch "
# The first characters of the status line a batch gets when it fails or is interrupted.
_STATUS_MARKS = ("⚠", "⏹")


def _long_reply(chars: int) -> str:
    """Copies of LONG_REPLY (markdown with fenced Python) joined until ``chars`` is reached."""
    copies = max(1, math.ceil(chars / (len(LONG_REPLY) + 2)))
    return "\n\n".join([LONG_REPLY] * copies)


def _squash(text: str) -> str:
    """What a split must keep, in order: the text without fence lines and whitespace."""
    return "".join(_FENCE_LINE.sub("", text).split())


async def _until(slack: FakeSlack, predicate: Callable[[], bool], within_s: float) -> None:
    """Wait until ``predicate()`` holds, re-checked on each request the fake receives."""
    async with asyncio.timeout(within_s):
        while not predicate():
            await slack.requests.get()


async def _join(slack: FakeSlack, bot: BotProcess) -> None:
    line = await bot.line_starting(f"party '{_PARTY}'")
    token = line.split("/concordia join ")[1].split()[0]
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


def _busiest_window(times_s: list[float], window_s: float) -> int:
    """The most of ``times_s`` (sorted) that fall in any window of ``window_s`` seconds."""
    return max(
        (bisect.bisect_right(times_s, t + window_s) - i for i, t in enumerate(times_s)),
        default=0,
    )


def _is_output(call: RecordedCall) -> bool:
    return not html.unescape(str(call.params.get("text", ""))).startswith(_HEADER)


async def _main(reply_chars: int, chars_per_s: float, edit_interval_s: float) -> None:
    reply = _long_reply(reply_chars)
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
                # A paced 50k reply takes minutes; the tests' 60 s turn limit would cut it.
                claude={"turn_timeout_s": _STREAM_TIMEOUT_S},
            )
            env = {"SLACK_BOT_TOKEN": BOT_TOKEN, "SLACK_APP_TOKEN": APP_TOKEN}
            async with BotProcess(config, root, env=env) as bot:
                await _join(slack, bot)
                first_call = len(slack.calls)
                mention = await slack.send_mention(ALICE_ID, "LONG stream the whole guide")
                thread_ts = str(mention["payload"]["event"]["ts"])
                expected = _squash(reply)

                def shown() -> bool:
                    texts = _outputs(slack, thread_ts)
                    ended = [t for t in texts if t.startswith(_STATUS_MARKS)]
                    if ended:
                        raise RuntimeError(f"the batch ended early: {ended[0]}")
                    return _squash("".join(texts)) == expected

                await _until(slack, shown, _STREAM_TIMEOUT_S)
                shown_at_s = time.monotonic()
                calls = slack.calls[first_call:]

    posts = [c for c in calls if c.method == _POST and c.error is None]
    updates = [c for c in calls if c.method == _UPDATE and c.error is None]
    outputs = [c for c in posts if _is_output(c)]
    first_text_at_s = api.first_text_at_s
    assert first_text_at_s is not None  # the reply was shown, so it was streamed
    busiest = {
        (method, window_s): _busiest_window(
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
        ],
    )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.slack_stream", description=__doc__)
    parser.add_argument("--reply-chars", type=int, default=50_000, help="length of the reply")
    parser.add_argument(
        "--chars-per-s",
        type=float,
        default=0.0,
        help="stream the reply at this rate, as a model would (0: as fast as possible)",
    )
    parser.add_argument(
        "--edit-interval-s",
        type=float,
        default=1.2,
        help="slack.edit_interval_s for the bot (its default is 1.2)",
    )
    args = parser.parse_args()
    if args.reply_chars < 1:
        parser.error("--reply-chars must be >= 1")
    if args.chars_per_s < 0:
        parser.error("--chars-per-s must be >= 0")
    if args.edit_interval_s <= 0:
        parser.error("--edit-interval-s must be > 0")
    flags = {
        "reply-chars": args.reply_chars,
        "chars-per-s": args.chars_per_s,
        "edit-interval-s": args.edit_interval_s,
    }
    print(command_line("bench.slack_stream", flags))
    print()
    asyncio.run(_main(args.reply_chars, args.chars_per_s, args.edit_interval_s))


if __name__ == "__main__":
    main()
