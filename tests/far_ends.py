"""Each agent driver's far end, for the tests and benchmarks that run `concordia run` on every
``agent.kind``: a fake of the API the agent's real CLI calls, the settings that point the CLI
at it, and what the model was sent."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pytest

from tests.fakes.anthropic_api import FakeAnthropic, claude_command, claude_env
from tests.fakes.gemini_api import FakeGeminiForCli, gemini_cli_env, gemini_command
from tests.fakes.openai_api import FakeOpenAI, codex_command, codex_env

__all__ = ["FACTORIES", "FAR_ENDS", "SLOW_INTERVAL_S", "SLOW_STEPS", "FarEnd", "FarEndFactory"]

SLOW_STEPS = 40
SLOW_INTERVAL_S = 0.15
"""A SLOW reply streams for 6 s: long enough to cancel or kill it mid-turn."""


@dataclass(frozen=True)
class FarEnd:
    """One driver's far end, running: the settings sections that point the real CLI at it
    (for `tests.conftest.make_settings`), the user text of each request the model got, a
    word in the agent process's command line (to find it among the bot's children), the
    requests' whole bodies, and when a turn is surely under way (a TUI shows its answer
    only as it scrolls, so the chat may see nothing yet)."""

    kind: str
    sections: dict[str, dict[str, object]]
    user_texts: Callable[[], list[str]]
    process_marker: str
    bodies: Callable[[], list[dict[str, Any]]]  # every request's body: all the model saw
    first_delta: asyncio.Event  # set once a SLOW reply has streamed its echo: mid-turn


class FarEndFactory(Protocol):
    """Starts a far end for a test's or benchmark's files under ``root``; a SLOW reply
    streams ``slow_steps`` deltas ``slow_interval_s`` apart."""

    def __call__(
        self, root: Path, *, slow_interval_s: float = ..., slow_steps: int = ...
    ) -> contextlib.AbstractAsyncContextManager[FarEnd]: ...


@contextlib.asynccontextmanager
async def claude(
    root: Path, *, slow_interval_s: float = SLOW_INTERVAL_S, slow_steps: int = SLOW_STEPS
) -> AsyncIterator[FarEnd]:
    """`claude -p` stream-json against the fake Anthropic API."""
    async with FakeAnthropic(slow_interval_s=slow_interval_s, slow_steps=slow_steps) as api:
        env = claude_env(_home(root), api.base_url)
        yield FarEnd(
            kind="claude",
            sections={"claude": {"env": env, "command": claude_command()}},
            user_texts=lambda: [t.user_text for t in api.turns],
            process_marker="claude",
            bodies=lambda: [t.body for t in api.turns],
            first_delta=api.first_delta,
        )


@contextlib.asynccontextmanager
async def codex(
    root: Path, *, slow_interval_s: float = SLOW_INTERVAL_S, slow_steps: int = SLOW_STEPS
) -> AsyncIterator[FarEnd]:
    """`codex app-server` against the fake OpenAI Responses API."""
    async with FakeOpenAI(slow_interval_s=slow_interval_s, slow_steps=slow_steps) as api:
        env = codex_env(_home(root), api.base_url)
        yield FarEnd(
            kind="codex",
            sections={
                "claude": {"env": env},
                "agent": {"kind": "codex", "command": [codex_command()]},
            },
            user_texts=api.user_texts,
            process_marker="app-server",
            bodies=lambda: [t.body for t in api.turns],
            first_delta=api.first_delta,
        )


@contextlib.asynccontextmanager
async def gemini(
    root: Path, *, slow_interval_s: float = SLOW_INTERVAL_S, slow_steps: int = SLOW_STEPS
) -> AsyncIterator[FarEnd]:
    """`gemini --output-format stream-json`, one run a turn, against the fake Gemini API."""
    async with FakeGeminiForCli(slow_interval_s=slow_interval_s, slow_steps=slow_steps) as api:
        env = gemini_cli_env(_home(root), api.base_url)
        yield FarEnd(
            kind="gemini",
            sections={
                "claude": {"env": env},
                "agent": {"kind": "gemini", "command": [gemini_command()]},
                # The CLI's own key is GEMINI_API_KEY: the merger's must be another.
                "gemini": {"api_key_env": "MERGER_GEMINI_API_KEY"},
            },
            user_texts=api.user_texts,
            process_marker="gemini",
            bodies=lambda: [t.body for t in api.turns],
            first_delta=api.first_delta,
        )


TUI_MARKER = "^\u276f$"
"""Claude Code's TUI waits for input: its empty input line (the cursor's), above a footer."""
TUI_STARTUP = ["\x1b[B", "\r", "\x1b[A", "\r"]
"""The TUI's two questions before its prompt: trust the folder (down, Enter), then use the
API key it found (up, Enter); it remembers both."""


@contextlib.asynccontextmanager
async def repl(
    root: Path, *, slow_interval_s: float = SLOW_INTERVAL_S, slow_steps: int = SLOW_STEPS
) -> AsyncIterator[FarEnd]:
    """The repl driver on Claude Code's interactive TUI, against the fake Anthropic API:
    onboarding done in its HOME (else it reaches for api.anthropic.com), its inline renderer
    (the full-screen one keeps only what fits on the screen)."""
    async with FakeAnthropic(slow_interval_s=slow_interval_s, slow_steps=slow_steps) as api:
        home = _home(root)
        (home / ".claude.json").write_text('{"hasCompletedOnboarding": true}', encoding="utf-8")
        env = claude_env(home, api.base_url) | {"CLAUDE_CODE_DISABLE_ALTERNATE_SCREEN": "1"}
        yield FarEnd(
            kind="repl",
            sections={
                "claude": {"env": env},
                "agent": {
                    "kind": "repl",
                    "command": [claude_command()],
                    "prompt_marker": TUI_MARKER,
                    "idle_s": 1.5,  # its spinner pauses up to 0.45 s between frames
                    "startup": TUI_STARTUP,
                },
            },
            user_texts=lambda: [t.user_text for t in api.turns],
            process_marker="claude",
            bodies=lambda: [t.body for t in api.turns],
            first_delta=api.first_delta,
        )


def _home(root: Path) -> Path:
    home = root / "home"
    home.mkdir(exist_ok=True)
    return home


FACTORIES: dict[str, FarEndFactory] = {
    "claude": claude,
    "codex": codex,
    "gemini": gemini,
    "repl": repl,
}
"""Each ``agent.kind``'s far end."""

FAR_ENDS = [
    pytest.param(claude, marks=pytest.mark.claude, id="claude"),
    pytest.param(codex, marks=pytest.mark.codex, id="codex"),
    pytest.param(gemini, marks=pytest.mark.gemini, id="gemini"),
    pytest.param(repl, marks=pytest.mark.claude, id="repl-claude-tui"),
]
"""Every driver's far end, as pytest parameters marked with the CLI they need."""
