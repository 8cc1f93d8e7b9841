"""Shared fixtures: a clean environment, the fake Anthropic and Gemini APIs, and settings."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from bot.config import Settings, load_settings
from bot.confinement import Confinement
from tests.fakes.anthropic_api import FakeAnthropic, claude_command, claude_env
from tests.fakes.gemini_api import FakeGemini

_CLEARED_PREFIXES = ("CONCORDIA_", "ANTHROPIC_", "GEMINI_", "GOOGLE_", "CLAUDE_")
# slack-sdk sends even 127.0.0.1 through HTTP(S)_PROXY (it ignores NO_PROXY): the fakes are local.
_CLEARED_NAMES = frozenset(
    {"HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"}
)


NO_CONFINEMENT = Confinement(denied=(), is_sandboxed=False)
"""For the sessions of tests that are not about what the agent can reach."""


@pytest.fixture(autouse=True)
def clean_environ() -> Iterator[None]:
    """No test reads the developer's environment (httpx's clean_environ)."""
    saved = dict(os.environ)
    for name in list(os.environ):
        if name.startswith(_CLEARED_PREFIXES) or name in _CLEARED_NAMES:
            del os.environ[name]
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


@pytest.fixture
async def fake_api() -> AsyncIterator[FakeAnthropic]:
    async with FakeAnthropic(slow_interval_s=0.2, slow_steps=50) as api:
        yield api


def make_settings(
    tmp_path: Path, api: FakeAnthropic | None, **overrides: dict[str, object]
) -> Settings:
    """Settings for one test: files under tmp_path, the real CLI pointed at the fake API
    (``api`` None: no CLI at all, for a party whose agent is `tests.fakes.agent.FakeAgent`)."""
    home = tmp_path / "home"
    workdir = tmp_path / "work"
    home.mkdir(exist_ok=True)
    workdir.mkdir(exist_ok=True)
    claude: dict[str, object] = {
        "workdir": str(workdir),
        "turn_timeout_s": 60.0,
        "restart_backoff_s": 0.2,
    }
    if api is not None:
        env = claude_env(home, api.base_url)
        env["CLAUDE_CODE_MAX_RETRIES"] = "0"
        claude = {"command": claude_command(), "env": env, **claude}
    raw: dict[str, dict[str, object]] = {
        "store": {"path": str(tmp_path / "state" / "concordia.db")},
        "party": {"collect_window_s": 0.05},
        "claude": claude,
        "websocket": {"host": "127.0.0.1", "port": 0},
    }
    for section, values in overrides.items():
        raw.setdefault(section, {}).update(values)
    config = tmp_path / "config.toml"
    config.write_text(_to_toml(raw), encoding="utf-8")
    return load_settings(config, environ={})


def _to_toml(raw: dict[str, dict[str, object]]) -> str:
    import json

    lines = []
    for section, values in raw.items():
        lines.append(f"[{section}]")
        for key, value in values.items():
            if isinstance(value, dict):
                inner = ", ".join(f"{json.dumps(k)} = {json.dumps(v)}" for k, v in value.items())
                lines.append(f"{key} = {{ {inner} }}")
            else:
                lines.append(f"{key} = {json.dumps(value)}")
    return "\n".join(lines) + "\n"


@pytest.fixture
async def fake_gemini() -> AsyncIterator[FakeGemini]:
    """A running FakeGemini that accepts the key ``test-key``."""
    async with FakeGemini() as fake:
        yield fake
