"""The import rules: no chat SDK or transport in bot/, each library in its one module, and
the arrows between packages pointing one way.

The seams live in the core (`bot.ports`): nothing in bot/ imports adapters/ but the composition
root, and no adapter imports another (they may share `adapters.attachments` and
`adapters.wire`, which are no adapters).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

BOT = Path(__file__).resolve().parent.parent / "bot"
ADAPTERS = BOT.parent / "adapters"
COMPOSITION_ROOTS = frozenset({"cli.py", "app.py"})
# Modules of adapters/ that are not adapters: what several adapters share.
ADAPTER_SHARED = frozenset({"attachments", "wire"})

# Chat SDKs and transports: adapters only.
FORBIDDEN = ("discord", "slack_bolt", "slack_sdk", "websockets", "aiohttp")

# The concrete agent: only the composition root builds one; the core drives `bot.agent`.
CONCRETE = {"bot.session": COMPOSITION_ROOTS, "agents": COMPOSITION_ROOTS}

# Third-party libraries each owned by exactly one module of bot/.
OWNERS = {
    "pexpect": "session.py",
    "aiosqlite": "store.py",
    "google.genai": "merge_gemini.py",
    "prometheus_client": "telemetry.py",
    "PIL": "images.py",
}


def _imports(source: str) -> set[str]:
    """Every module a bot/ module imports, anywhere in it, as absolute dotted names.

    ``from x import y`` yields ``x.y`` (y may be a submodule: ``from adapters import
    websocket``); relative imports resolve against the ``bot`` package.
    """
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                module = ".".join(part for part in ("bot", module) if part)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def _within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def _violations(filename: str, source: str) -> list[str]:
    problems = []
    for name in sorted(_imports(source)):
        if any(_within(name, sdk) for sdk in FORBIDDEN):
            problems.append(
                f"{filename} imports {name}: chat SDKs and transports live in adapters/"
            )
        if _within(name, "adapters") and filename not in COMPOSITION_ROOTS:
            problems.append(
                f"{filename} imports {name}: only the composition root (bot/app.py, bot/cli.py) "
                "may import adapters; the seams are in bot/ports.py"
            )
        for module, users in CONCRETE.items():
            if _within(name, module) and filename not in users:
                problems.append(
                    f"{filename} imports {name}: the core drives the agent through bot/agent.py"
                )
        for library, owner in OWNERS.items():
            if _within(name, library) and filename != owner:
                problems.append(f"{filename} imports {name}: only bot/{owner} may")
    return problems


def _modules() -> list[Path]:
    return sorted(BOT.glob("*.py"))


def test_bot_modules_are_found() -> None:
    names = {p.name for p in _modules()}
    assert {"__init__.py", "cli.py", "config.py", "session.py", "store.py"} <= names


@pytest.mark.parametrize("path", _modules(), ids=lambda p: p.name)
def test_import_rules(path: Path) -> None:
    assert _violations(path.name, path.read_text(encoding="utf-8")) == []


def _adapter_violations(filename: str, source: str) -> list[str]:
    """An adapter importing another adapter (a module of adapters/ that is not shared).

    ``filename`` is relative to adapters/: an adapter that is a package (``discord/sink.py``)
    may import its own modules."""
    allowed = ADAPTER_SHARED | {filename.split("/")[0].removesuffix(".py")}
    return [
        f"adapters/{filename} imports {name}: adapters translate; they do not use each other"
        for name in sorted(_imports(source))
        if _within(name, "adapters") and name.partition(".")[2].split(".")[0] not in allowed
    ]


@pytest.mark.parametrize(
    "path", sorted(ADAPTERS.rglob("*.py")), ids=lambda p: str(p.relative_to(ADAPTERS))
)
def test_no_adapter_imports_another(path: Path) -> None:
    name = str(path.relative_to(ADAPTERS))
    assert _adapter_violations(name, path.read_text(encoding="utf-8")) == []


@pytest.mark.parametrize(
    ("filename", "source", "culprit"),
    [
        ("slack.py", "from adapters.discord import DiscordSink\n", "adapters.discord"),
        ("terminal.py", "from adapters import websocket\n", "adapters.websocket"),
        ("memory.py", "import adapters.slack\n", "adapters.slack"),
        ("discord/sink.py", "from adapters.slack import SlackSink\n", "adapters.slack"),
    ],
)
def test_adapter_checker_catches(filename: str, source: str, culprit: str) -> None:
    assert any(culprit in p for p in _adapter_violations(filename, source))


@pytest.mark.parametrize(
    ("filename", "source"),
    [
        ("terminal.py", "from adapters.wire import Welcome\n"),
        ("discord.py", "from adapters.attachments import fold\n"),
        ("websocket.py", "from adapters import wire\n"),
        ("discord/adapter.py", "from adapters.discord.sink import DiscordSink\n"),
    ],
)
def test_adapter_checker_allows(filename: str, source: str) -> None:
    assert _adapter_violations(filename, source) == []


def test_owned_libraries_are_imported_by_their_owner_only() -> None:
    for library, owner in OWNERS.items():
        importers = {
            path.name
            for path in _modules()
            if any(_within(n, library) for n in _imports(path.read_text(encoding="utf-8")))
        }
        assert importers <= {owner}, f"{library} imported by {importers - {owner}}"


# --------------------------------------------------------------------------- the checker itself


@pytest.mark.parametrize(
    ("filename", "source", "culprit"),
    [
        ("party.py", "import discord\n", "discord"),
        (
            "party.py",
            "from slack_bolt.async_app import AsyncApp\n",
            "slack_bolt.async_app.AsyncApp",
        ),
        ("output.py", "import slack_sdk.web.async_client\n", "slack_sdk.web.async_client"),
        (
            "cli.py",
            "from websockets.asyncio.server import serve\n",
            "websockets.asyncio.server.serve",
        ),
        ("party.py", "def f():\n    import aiohttp\n", "aiohttp"),
        ("party.py", "from adapters.websocket import WebSocketAdapter\n", "adapters.websocket"),
        ("party.py", "from adapters import memory\n", "adapters.memory"),
        ("relay.py", "from adapters.attachments import fold\n", "adapters.attachments"),
        ("party.py", "from bot.session import ClaudeSession\n", "bot.session"),
        ("party.py", "from agents.repl import ReplSession\n", "agents.repl"),
        ("party.py", "import pexpect\n", "pexpect"),
        ("store.py", "from pexpect import fdpexpect\n", "pexpect.fdpexpect"),
        ("party.py", "import aiosqlite\n", "aiosqlite"),
        ("party.py", "from google import genai\n", "google.genai"),
        ("session.py", "from google.genai import types\n", "google.genai.types"),
        ("party.py", "if TYPE_CHECKING:\n    import aiosqlite\n", "aiosqlite"),
    ],
)
def test_checker_catches(filename: str, source: str, culprit: str) -> None:
    problems = _violations(filename, source)
    assert problems
    assert any(culprit in p for p in problems)


@pytest.mark.parametrize(
    ("filename", "source"),
    [
        ("cli.py", "from adapters.websocket import WebSocketAdapter\nimport adapters.terminal\n"),
        ("session.py", "import pexpect\nimport pexpect.fdpexpect\n"),
        ("store.py", "import aiosqlite\n"),
        ("merge_gemini.py", "from google import genai\nfrom google.genai import types\n"),
        ("party.py", "from . import model\nfrom .store import Store\nimport google.protobuf\n"),
    ],
)
def test_checker_allows(filename: str, source: str) -> None:
    assert _violations(filename, source) == []
