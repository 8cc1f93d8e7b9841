"""A ~50,000-character reply streamed through `concordia run` into a thread of the fake Discord.

The real discord.py client (inside `concordia run`) talks to an in-process FakeDiscord and the
real `claude` CLI to an in-process FakeAnthropic whose ``LONG`` reply is the long text below,
sent in 200-character deltas (``--chars-per-s`` paces them as a model would; 0 sends them as
fast as the socket takes them). A member joins, mentions the bot once, and the run ends when
the thread shows the whole reply.

The fake Discord advertises and enforces Discord's observed per-channel limits on the two
routes a stream uses: 5 message creates and 5 message edits per 5 s (its other routes stay
generous). discord.py reads the ``X-RateLimit-*`` headers and waits before a request that
would exceed them, so the goal is 0 429s.

Printed: the messages posted and the edits made in the thread, the 429s served, the most
requests each route saw in any sliding 5 s window (Discord's buckets reset on a fixed window,
so up to twice the limit can fall in a sliding one without a 429), and the time from the fake
API writing the first delta to the fake Discord receiving the first post with output (time to
first visible text).

    python -m bench.discord_stream [--reply-chars 50000] [--chars-per-s 0] [--edit-interval-s 1]
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import math
import re
import time
from collections.abc import Callable
from typing import Any

from bench._common import bot_config, command_line, print_table, scratch
from tests.e2e.harness import BotProcess
from tests.fakes.anthropic_api import LONG_REPLY, FakeAnthropic
from tests.fakes.discord_api import ALICE_ID, BOT_USER_ID, CHANNEL_ID, TOKEN, FakeDiscord

_STREAM_TIMEOUT_S = 600.0
_JOIN_TIMEOUT_S = 30.0
_MAX_MESSAGE_CHARS = 2000
_LOADING = 1 << 7
_WINDOW_S = 5.0
_DISCORD_LIMIT_PER_WINDOW = 5  # observed: 5 creates (and 5 edits) per 5 s in one channel
_POST = "POST /channels/{channel_id}/messages"
_PATCH = "PATCH /channels/{channel_id}/messages/{message_id}"
_ROUTE_LIMITS = {
    _POST: (_DISCORD_LIMIT_PER_WINDOW, _WINDOW_S),
    _PATCH: (_DISCORD_LIMIT_PER_WINDOW, _WINDOW_S),
}
_FENCE_LINE = re.compile(r"^[ \t]*```[^\n]*$", re.MULTILINE)
_PARTY = f"discord-{CHANNEL_ID}"
# The first characters of the status line a batch gets when it fails or is interrupted.
_STATUS_MARKS = ("⚠", "⏹")


def _long_reply(chars: int) -> str:
    """Copies of LONG_REPLY (markdown with fenced Python) joined until ``chars`` is reached."""
    copies = max(1, math.ceil(chars / (len(LONG_REPLY) + 2)))
    return "\n\n".join([LONG_REPLY] * copies)


def _squash(text: str) -> str:
    """What a split must keep, in order: the text without fence lines and whitespace."""
    return "".join(_FENCE_LINE.sub("", text).split())


async def _until(discord: FakeDiscord, predicate: Callable[[], bool], within_s: float) -> None:
    """Wait until ``predicate()`` holds, re-checked on each request the fake receives."""
    async with asyncio.timeout(within_s):
        while not predicate():
            await discord.requests.get()


async def _join(discord: FakeDiscord, bot: BotProcess) -> None:
    line = await bot.line_starting(f"party '{_PARTY}'")
    token = line.split("/concordia join ")[1].split()[0]
    interaction = await discord.send_interaction(
        ALICE_ID, subcommand="join", options={"token": token}
    )

    def answered() -> bool:
        replies = discord.interaction_messages(int(interaction["id"]))
        return any(r["content"] and not r["flags"] & _LOADING for r in replies)

    await _until(discord, answered, _JOIN_TIMEOUT_S)


def _outputs(discord: FakeDiscord, thread: int) -> list[dict[str, Any]]:
    return [
        m
        for m in discord.messages(thread)
        if int(m["author"]["id"]) == BOT_USER_ID and not str(m["content"]).startswith("**Batch ")
    ]


def _busiest_window(times_s: list[float]) -> int:
    """The most of ``times_s`` (sorted) that fall in any window of _WINDOW_S seconds."""
    return max(
        (bisect.bisect_right(times_s, t + _WINDOW_S) - i for i, t in enumerate(times_s)),
        default=0,
    )


async def _main(reply_chars: int, chars_per_s: float, edit_interval_s: float) -> None:
    reply = _long_reply(reply_chars)
    delta_interval_s = 200 / chars_per_s if chars_per_s else 0.0
    async with (
        FakeAnthropic(long_reply=reply, long_interval_s=delta_interval_s) as api,
        FakeDiscord(route_limits=_ROUTE_LIMITS) as discord,
    ):
        with scratch("concordia-bench-discord-") as root:
            config = bot_config(
                root,
                api,
                discord={
                    "channels": [str(CHANNEL_ID)],
                    "api_base": discord.api_base,
                    "gateway_url": discord.gateway_url,
                    "edit_interval_s": edit_interval_s,
                },
                # A paced 50k reply takes minutes; the tests' 60 s turn limit would cut it.
                claude={"turn_timeout_s": _STREAM_TIMEOUT_S},
            )
            async with BotProcess(config, root, env={"DISCORD_BOT_TOKEN": TOKEN}) as bot:
                await _join(discord, bot)
                first_call = len(discord.calls)
                mention = await discord.send_message(ALICE_ID, "LONG stream the whole guide")
                thread = int(mention["id"])
                expected = _squash(reply)

                def shown() -> bool:
                    texts = [str(m["content"]) for m in _outputs(discord, thread)]
                    ended = [t for t in texts if t.startswith(_STATUS_MARKS)]
                    if ended:
                        raise RuntimeError(f"the batch ended early: {ended[0]}")
                    return _squash("".join(texts)) == expected

                await _until(discord, shown, _STREAM_TIMEOUT_S)
                shown_at_s = time.monotonic()
                calls = discord.calls[first_call:]

    in_thread = [c for c in calls if c.path.startswith(f"/channels/{thread}/")]
    posts = [c for c in in_thread if c.route == _POST and c.status == 200]
    edits = [c for c in in_thread if c.route == _PATCH and c.status == 200]
    outputs = [c for c in posts if not str(c.json.get("content", "")).startswith("**Batch ")]
    first_text_at_s = api.first_text_at_s
    assert first_text_at_s is not None  # the reply was shown, so it was streamed
    busiest = {
        route: _busiest_window(sorted(c.arrived_at_s for c in in_thread if c.route == route))
        for route in (_POST, _PATCH)
    }

    print(
        f"reply: {len(reply):,} chars in {math.ceil(len(reply) / 200)} deltas"
        f" ({'unpaced' if not chars_per_s else f'{chars_per_s:g} chars/s'}),"
        f" edit_interval_s = {edit_interval_s:g}"
    )
    print()
    print_table(
        ["figure", "value"],
        [
            ["output messages posted", len(outputs)],
            ["  bound: ceil(chars / 2000) + 1", math.ceil(len(reply) / _MAX_MESSAGE_CHARS) + 1],
            ["all posts in the thread (header included)", len(posts)],
            ["edits", len(edits)],
            ["429s served by the fake", discord.rate_limited_count],
            [
                f"most creates in any {_WINDOW_S:g} s, sliding",
                busiest[_POST],
            ],
            [
                f"most edits in any {_WINDOW_S:g} s, sliding",
                busiest[_PATCH],
            ],
            [
                "first delta -> first post with output (ms)",
                f"{(outputs[0].arrived_at_s - first_text_at_s) * 1000:.0f}",
            ],
            ["first delta -> whole reply shown (s)", f"{shown_at_s - first_text_at_s:.2f}"],
        ],
    )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.discord_stream", description=__doc__)
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
        default=1.0,
        help="discord.edit_interval_s for the bot (its default is 1.0)",
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
    print(command_line("bench.discord_stream", flags))
    print()
    asyncio.run(_main(args.reply_chars, args.chars_per_s, args.edit_interval_s))


if __name__ == "__main__":
    main()
