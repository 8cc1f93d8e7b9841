"""The core's import rules: no chat SDK or transport in bot/, each library in its one module.

`bot/cli.py` is the composition root: it alone may import concrete adapters (`adapters.*`).
Every other module in bot/ may import `adapters.base` (the seam) and nothing else from there.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

BOT = Path(__file__).resolve().parent.parent / "bot"
COMPOSITION_ROOT = "cli.py"

# Chat SDKs and transports: adapters only.
FORBIDDEN = ("discord", "slack_bolt", "slack_sdk", "websockets", "aiohttp")

# Third-party libraries each owned by exactly one module of bot/.
OWNERS = {"pexpect": "session.py", "aiosqlite": "store.py", "google.genai": "dedupe.py"}


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
        if (
            _within(name, "adapters")
            and not _within(name, "adapters.base")
            and filename != COMPOSITION_ROOT
        ):
            problems.append(f"{filename} imports {name}: only bot/cli.py may import adapters")
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
        ("output.py", "from adapters.base import AdapterError, MessageSink\n"),
        ("party.py", "from adapters import base\n"),
        ("session.py", "import pexpect\nimport pexpect.fdpexpect\n"),
        ("store.py", "import aiosqlite\n"),
        ("dedupe.py", "from google import genai\nfrom google.genai import types\n"),
        ("party.py", "from . import model\nfrom .store import Store\nimport google.protobuf\n"),
    ],
)
def test_checker_allows(filename: str, source: str) -> None:
    assert _violations(filename, source) == []
