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

import math
import time
from typing import Any

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
from tests.e2e.drivers import DISCORD_PARTY, interaction_reply, party_tokens
from tests.e2e.harness import BotProcess
from tests.fakes.anthropic_api import FakeAnthropic
from tests.fakes.discord_api import ALICE_ID, BOT_USER_ID, CHANNEL_ID, TOKEN, FakeDiscord
from tests.waits import until

_JOIN_TIMEOUT_S = 30.0
_MAX_MESSAGE_CHARS = 2000
_WINDOW_S = 5.0
_DISCORD_LIMIT_PER_WINDOW = 5  # observed: 5 creates (and 5 edits) per 5 s in one channel
_POST = "POST /channels/{channel_id}/messages"
_PATCH = "PATCH /channels/{channel_id}/messages/{message_id}"
_ROUTE_LIMITS = {
    _POST: (_DISCORD_LIMIT_PER_WINDOW, _WINDOW_S),
    _PATCH: (_DISCORD_LIMIT_PER_WINDOW, _WINDOW_S),
}


async def _join(discord: FakeDiscord, bot: BotProcess) -> None:
    token, _ = await party_tokens(bot, DISCORD_PARTY)
    interaction = await discord.send_interaction(
        ALICE_ID, subcommand="join", options={"token": token}
    )
    await interaction_reply(discord, interaction, within_s=_JOIN_TIMEOUT_S)


def _outputs(discord: FakeDiscord, thread: int) -> list[dict[str, Any]]:
    return [
        m
        for m in discord.messages(thread)
        if int(m["author"]["id"]) == BOT_USER_ID and not str(m["content"]).startswith("**Batch ")
    ]


async def _main(reply_chars: int, chars_per_s: float, edit_interval_s: float) -> None:
    reply = long_reply(reply_chars)
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
                claude={"turn_timeout_s": STREAM_TIMEOUT_S},
            )
            async with BotProcess(config, root, env={"DISCORD_BOT_TOKEN": TOKEN}) as bot:
                await _join(discord, bot)
                first_call = len(discord.calls)
                mention = await discord.send_message(ALICE_ID, "LONG stream the whole guide")
                thread = int(mention["id"])

                def shown() -> bool:
                    texts = [str(m["content"]) for m in _outputs(discord, thread)]
                    return whole_reply_shown(texts, reply)

                await until(shown, discord.requests, within_s=STREAM_TIMEOUT_S, what="the reply")
                shown_at_s = time.monotonic()
                calls = discord.calls[first_call:]

    in_thread = [c for c in calls if c.path.startswith(f"/channels/{thread}/")]
    posts = [c for c in in_thread if c.route == _POST and c.status == 200]
    edits = [c for c in in_thread if c.route == _PATCH and c.status == 200]
    outputs = [c for c in posts if not str(c.json.get("content", "")).startswith("**Batch ")]
    first_text_at_s = api.first_text_at_s
    assert first_text_at_s is not None  # the reply was shown, so it was streamed
    busiest = {
        route: busiest_window(
            sorted(c.arrived_at_s for c in in_thread if c.route == route), _WINDOW_S
        )
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
            [
                "last delta -> whole reply shown (ms)",
                f"{(shown_at_s - api.text_sent[-1][1]) * 1000:.0f}",
            ],
        ],
    )


def main() -> None:
    run_stream_bench("bench.discord_stream", __doc__, "discord.edit_interval_s", 1.0, _main)


if __name__ == "__main__":
    main()
