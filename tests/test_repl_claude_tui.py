"""agents.repl against the real `claude` TUI (interactive, no -p) and the fake Anthropic API:
the startup keys answer the TUI's questions (and are not sent again once it remembers the
answers); a turn streams the answer without the TUI's chrome and ends once the input line
is back and the screen is quiet; an answer longer than the screen comes whole; a second turn
carries the history; Ctrl-C interrupts; a killed TUI is restarted; a 200 kB prompt arrives
whole by bracketed paste.

The TUI runs with its classic inline renderer (CLAUDE_CODE_DISABLE_ALTERNATE_SCREEN=1):
2.1.331's default full-screen renderer redraws only what fits on the screen, so a long
answer would never be on it whole.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import signal
import time
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path

import pytest

from agents.repl import ReplSession
from bot.agent import SessionDied, SessionError, TextDelta, TurnEnd
from bot.model import TurnStatus
from tests.conftest import NO_CONFINEMENT, make_settings
from tests.fakes.anthropic_api import (
    LONG_REPLY,
    FakeAnthropic,
    RecordedRequest,
    claude_command,
    claude_env,
)

pytestmark = [pytest.mark.claude, pytest.mark.timeout(120)]

GLYPH = "\u276f"  # the TUI's prompt glyph, a heavy right-pointing angle quotation mark
# The TUI's input line when it is empty; the cursor sits on it, above the input box's lower
# border and the footer. Neither the trust dialog's "<glyph> No, exit" nor the echo
# "<glyph> <prompt>" matches.
MARKER = f"^{GLYPH}$"
# The TUI's spinner, busy, pauses up to about 0.45 s between frames (measured on 2.1.331).
IDLE_S = 1.5
# The TUI's two questions before its prompt, each defaulting to the answer that stops it:
# the workspace trust dialog (down to "Yes, I trust this folder", Enter), then "Detected a
# custom API key ... Do you want to use this API key?" (up to "Yes", Enter). It remembers
# both answers in HOME/.claude.json.
STARTUP_KEYS = ["\x1b[B", "\r", "\x1b[A", "\r"]
SLOW_STEPS = 10
FAKE_KEY = claude_env(Path(), "http://127.0.0.1")["ANTHROPIC_API_KEY"]
WITHIN_S = 60.0
# Chrome the streamed answer must not hold: the input box's border, the footer, a spinner.
_BORDER = re.compile(r"^[─━═]{10,}$")
_FOOTER = ("esc to interrupt", "shift+tab", "for agents", "/effort")
_SPINNER = re.compile(r"^\S \w+…")  # "✽ Slithering… (2s · ↓ 7 tokens)"
# How the TUI hands a long paste to the model: wrapped in tags naming the paste.
_PASTED = re.compile(
    r'\A\s*<pasted_content id="(\w+)">\n(.*)\n</pasted_content id="\1">\s*\Z', re.DOTALL
)


@pytest.fixture
async def api() -> AsyncIterator[FakeAnthropic]:
    # LONG paced as a model streams, so the TUI draws its answer a few lines at a time.
    async with FakeAnthropic(
        slow_interval_s=0.2, slow_steps=SLOW_STEPS, long_interval_s=0.05
    ) as fake:
        yield fake


def _home(tmp_path: Path, *, is_asked: bool) -> None:
    """Onboarding done (else the TUI reaches for api.anthropic.com and exits); the workdir's
    trust and the API key answered already, or left to `STARTUP_KEYS` when ``is_asked``."""
    config: dict[str, object] = {"hasCompletedOnboarding": True}
    if not is_asked:
        workdir = str((tmp_path / "work").resolve())
        config["projects"] = {workdir: {"hasTrustDialogAccepted": True}}
        config["customApiKeyResponses"] = {"approved": [FAKE_KEY[-20:]], "rejected": []}
    (tmp_path / "home" / ".claude.json").write_text(json.dumps(config), encoding="utf-8")


def _session(
    tmp_path: Path,
    api: FakeAnthropic,
    *,
    is_asked: bool = False,
    claude: dict[str, object] | None = None,
    **agent: object,
) -> ReplSession:
    settings = make_settings(
        tmp_path,
        api,
        claude=claude or {},
        agent={
            "kind": "repl",
            "command": [claude_command()],
            "prompt_marker": MARKER,
            "idle_s": IDLE_S,
            "startup": STARTUP_KEYS,
            **agent,
        },
    )
    env = claude_env(tmp_path / "home", api.base_url)
    env["CLAUDE_CODE_DISABLE_ALTERNATE_SCREEN"] = "1"
    _home(tmp_path, is_asked=is_asked)
    return ReplSession(settings.agent, settings.claude, env=env, confinement=NO_CONFINEMENT)


@pytest.fixture
async def tui(tmp_path: Path, api: FakeAnthropic) -> AsyncIterator[ReplSession]:
    session = _session(tmp_path, api)
    async with session:
        await asyncio.wait_for(session.ready.wait(), WITHIN_S)
        yield session


async def _turn(session: ReplSession, prompt: str) -> tuple[str, TurnEnd, float]:
    """The turn's streamed text, its end, and the monotonic time the end came."""
    text = ""
    events: list[object] = []
    async with asyncio.timeout(WITHIN_S):
        async for event in session.run(prompt):
            events.append(event)
            if isinstance(event, TextDelta):
                text += event.text
    end = events[-1]
    assert isinstance(end, TurnEnd), f"the turn ended without a TurnEnd: {events!r}"
    assert all(isinstance(e, TextDelta) for e in events[:-1]), events
    return text, end, time.monotonic()


async def _consume(session: ReplSession, prompt: str, events: asyncio.Queue[object]) -> None:
    """Put each of the turn's events on ``events``, or what it raised."""
    try:
        async for event in session.run(prompt):
            events.put_nowait(event)
    except SessionError as exc:
        events.put_nowait(exc)


async def _request(api: FakeAnthropic) -> RecordedRequest:
    return await asyncio.wait_for(api.requests.get(), WITHIN_S)


def _texts(request: RecordedRequest) -> list[str]:
    """Every text block of the request's messages, whoever said it."""
    texts = []
    for message in request.body["messages"]:
        content = message["content"]
        blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content
        texts += [block["text"] for block in blocks if block.get("type") == "text"]
    return texts


def _assert_no_chrome(text: str, prompt: str) -> None:
    for line in text.splitlines():
        assert not line.startswith(GLYPH), f"the echo or the input line was streamed: {line!r}"
        assert not _BORDER.match(line.strip()), f"the input box was streamed: {line!r}"
        assert not any(f in line for f in _FOOTER), f"the footer was streamed: {line!r}"
        assert not _SPINNER.match(line), f"a spinner was streamed: {line!r}"
        assert line.strip() != prompt, f"the echo was streamed: {line!r}"


# -- start ----------------------------------------------------------------------------------


async def test_the_startup_keys_answer_the_tuis_questions(
    tmp_path: Path, api: FakeAnthropic
) -> None:
    async with _session(tmp_path, api, is_asked=True) as session:
        await asyncio.wait_for(session.ready.wait(), WITHIN_S)
        _, end, _ = await _turn(session, "are you there")
    assert end.result.splitlines()[0] == "● ECHO: are you there"
    assert (await _request(api)).user_text == "are you there"
    # The TUI keeps the answers in its config (written in its own time: read once it exited).
    config = json.loads((tmp_path / "home" / ".claude.json").read_text(encoding="utf-8"))
    # Trust is kept for the project's root: the workdir, or a folder above it holding .git.
    workdir = (tmp_path / "work").resolve()
    trusted = [
        Path(path)
        for path, project in config.get("projects", {}).items()
        if project.get("hasTrustDialogAccepted")
    ]
    assert any(workdir.is_relative_to(path) for path in trusted), config.get("projects")
    assert config["customApiKeyResponses"]["approved"] == [FAKE_KEY[-20:]]


async def test_without_the_startup_keys_the_trust_dialog_is_never_ready(
    tmp_path: Path, api: FakeAnthropic
) -> None:
    # The dialog's cursor line is "<glyph> No, exit", which the marker must not take for the
    # input line; claude.turn_timeout_s is how long the supervisor waits for the marker.
    session = _session(tmp_path, api, is_asked=True, claude={"turn_timeout_s": 5.0}, startup=[])
    async with session:
        with pytest.raises(SessionError, match=r"agent\.prompt_marker.*No, exit"):
            await asyncio.wait_for(session.serve(), WITHIN_S)
    assert not session.ready.is_set()
    assert api.turns == []


# -- turns ------------------------------------------------------------------------------------


async def test_a_turn_streams_the_answer_and_ends_once_the_tui_is_quiet(
    api: FakeAnthropic, tui: ReplSession
) -> None:
    prompt = "SLOW hello TUI"
    text, end, ended_at = await _turn(tui, prompt)
    request = await _request(api)
    assert request.user_text == prompt
    assert end.status is TurnStatus.SUCCESS
    # The TUI shows a reply line only once it is whole: here, when the last delta is in.
    answer = "● ECHO: SLOW hello TUI" + " ." * SLOW_STEPS
    assert end.result.splitlines()[0] == answer
    assert text == end.result  # streamed, then the TurnEnd, which holds no more than that
    _assert_no_chrome(text, prompt)
    # Not over while the reply streamed (its spinner kept the screen busy); over once the
    # input line was back and the screen had been quiet for idle_s.
    last_delta_at = api.text_sent[-1][1]
    assert ended_at - last_delta_at >= IDLE_S


async def test_an_answer_longer_than_the_screen_streams_whole_as_it_scrolls(
    api: FakeAnthropic, tui: ReplSession
) -> None:
    deltas: list[tuple[str, float]] = []
    async with asyncio.timeout(WITHIN_S):
        async for event in tui.run("LONG please"):
            if isinstance(event, TextDelta):
                deltas.append((event.text, time.monotonic()))
            else:
                end = event
    assert isinstance(end, TurnEnd)
    assert end.status is TurnStatus.SUCCESS
    assert "".join(text for text, _ in deltas) == end.result
    # About 300 lines on a 40-row screen: what scrolled off was streamed while it came.
    assert deltas[0][1] < api.text_sent[-1][1]
    # Rendered Markdown: no "##", fences or backticks, but every word, once, in order.
    plain = re.sub(r"^#+ |^```\w*$|`", "", LONG_REPLY, flags=re.MULTILINE)
    words = end.result.split()
    assert words[0] == "●"
    assert words[1 : len(plain.split()) + 1] == plain.split()
    _assert_no_chrome(end.result, "LONG please")


async def test_a_second_turn_carries_the_history(api: FakeAnthropic, tui: ReplSession) -> None:
    _, first_end, _ = await _turn(tui, "first question")
    first = await _request(api)
    text, end, _ = await _turn(tui, "second question")
    second = await _request(api)
    assert first_end.result.splitlines()[0] == "● ECHO: first question"
    assert end.result.splitlines()[0] == "● ECHO: second question"
    assert "first question" not in end.result  # the earlier turn stays out of this answer
    assert second.user_text == "second question"
    assert second.message_count > first.message_count
    assert "first question" in _texts(second)
    assert "ECHO: first question" in _texts(second)
    _assert_no_chrome(text, "second question")


async def test_the_echo_the_tui_renders_as_markdown_is_not_streamed(
    api: FakeAnthropic, tui: ReplSession
) -> None:
    # The TUI's echo of this prompt is "<glyph> fix this:", a blank line, "  raise
    # SystemExit(3)": the code block's fences are gone from it.
    prompt = "fix this:\n\n```\nraise SystemExit(3)\n```"
    text, end, _ = await _turn(tui, prompt)
    request = await _request(api)
    assert prompt in request.user_text
    assert end.status is TurnStatus.SUCCESS
    assert end.result.startswith("● ECHO:")
    assert text == end.result
    _assert_no_chrome(text, prompt)


async def test_ctrl_c_interrupts_a_slow_turn_and_the_next_one_works(
    tmp_path: Path,
) -> None:
    api = FakeAnthropic(slow_interval_s=0.2, slow_steps=150)  # a 30 s reply
    async with api, _session(tmp_path, api) as session:
        await asyncio.wait_for(session.ready.wait(), WITHIN_S)
        pid = session.pid
        end = await _interrupted(session, "SLOW stop me", api.first_delta.wait())
        # One Ctrl-C while busy stops the turn, not the TUI (two while idle would end it).
        assert session.pid == pid
        assert session.restarts == 0
        _, end, _ = await _turn(session, "after the interrupt")
    assert end.status is TurnStatus.SUCCESS
    assert end.result.splitlines()[0] == "● ECHO: after the interrupt"
    assert [t.user_text for t in api.turns] == ["SLOW stop me", "after the interrupt"]


async def test_ctrl_c_before_any_answer_leaves_the_input_line_empty(tmp_path: Path) -> None:
    # Interrupted before it had any answer, the TUI takes the turn back: it drops the
    # prompt's echo and puts the prompt back on its input line, for editing.
    api = FakeAnthropic(slow_start_s=30.0)
    async with api, _session(tmp_path, api) as session:
        await asyncio.wait_for(session.ready.wait(), WITHIN_S)
        end = await _interrupted(session, "SLOW wait\nfor me", _request(api))
        assert end.result == ""
        _, end, _ = await _turn(session, "after the interrupt")
    assert end.result.splitlines()[0] == "● ECHO: after the interrupt"
    # Not "SLOW wait\nfor meafter the interrupt": the put-back prompt was killed first.
    assert [t.user_text for t in api.turns] == ["SLOW wait\nfor me", "after the interrupt"]


async def _interrupted(session: ReplSession, prompt: str, when: Awaitable[object]) -> TurnEnd:
    """Run a turn of ``prompt``, press Ctrl-C once ``when`` is done; the turn's end, which
    comes within a few quiet spells, not at the end of the slow reply."""
    events: asyncio.Queue[object] = asyncio.Queue()
    turn = asyncio.create_task(_consume(session, prompt, events))
    await asyncio.wait_for(when, WITHIN_S)
    assert await session.interrupt()
    async with asyncio.timeout(5 * IDLE_S):
        await turn
    *_, end = [events.get_nowait() for _ in range(events.qsize())]
    assert isinstance(end, TurnEnd), end
    assert end.status is TurnStatus.INTERRUPTED
    assert not await session.interrupt(), "no turn runs any more"
    return end


async def test_a_tui_killed_mid_turn_raises_and_is_restarted_without_startup_keys(
    api: FakeAnthropic, tui: ReplSession
) -> None:
    events: asyncio.Queue[object] = asyncio.Queue()
    turn = asyncio.create_task(_consume(tui, "SLOW then die", events))
    await asyncio.wait_for(api.first_delta.wait(), WITHIN_S)
    first_pid = tui.pid
    assert first_pid is not None
    os.kill(first_pid, signal.SIGKILL)
    async with asyncio.timeout(WITHIN_S):
        await turn
    died = [events.get_nowait() for _ in range(events.qsize())][-1]
    assert isinstance(died, SessionDied), died
    await asyncio.wait_for(tui.ready.wait(), WITHIN_S)
    assert tui.restarts == 1
    assert tui.pid != first_pid
    _, end, _ = await _turn(tui, "after the restart")
    assert end.status is TurnStatus.SUCCESS
    assert end.result.splitlines()[0] == "● ECHO: after the restart"
    # The TUI asked nothing, so no startup key went: at its prompt after the restart, up and
    # Enter would have sent "SLOW then die" again.
    assert [t.user_text for t in api.turns] == ["SLOW then die", "after the restart"]


async def test_a_200_kb_prompt_arrives_whole_by_bracketed_paste(
    api: FakeAnthropic, tui: ReplSession
) -> None:
    words = random.Random(17).choices(["alpha", "beta", "gamma", "delta", "epsilon"], k=40_000)
    lines = [" ".join(words[i : i + 12]) for i in range(0, len(words), 12)]
    prompt = ("BIG " + "\n".join(lines))[:200_000].rstrip()
    assert len(prompt.encode()) > 199_000
    _, end, _ = await _turn(tui, prompt)
    request = await _request(api)
    pasted = _PASTED.match(request.user_text)
    assert pasted is not None, request.user_text[:200]
    assert pasted.group(2) == prompt
    assert end.status is TurnStatus.SUCCESS
    # The answer echoes the first 200 characters the model got, the paste's opening tag
    # first; the TUI's echo of the prompt (its middle elided) is not in it.
    assert end.result.startswith("● ECHO:")
    assert "<pasted_content" in end.result
    assert "lines hidden" not in end.result
    assert prompt.splitlines()[-1] not in end.result
