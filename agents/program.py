"""Which program each kind of agent runs, where it is installed, and its version: one answer
for the drivers (to start it), `concordia doctor` (is it installed?) and `status` (which
agent, which version).

``make codex`` / ``make gemini`` (and ``make test``) install the pinned CLIs under
``.tools/<kind>/`` of the checkout; `make run` puts those on PATH. A configured
``agent.command`` always wins.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from bot.agent import SessionError
from bot.config import AgentKind, AgentSettings, ClaudeSettings

__all__ = ["AgentProgram", "agent_program", "program_version"]

_VERSION_TIMEOUT_S = 10.0
_VERSION = re.compile(r"\d+\.\d+(?:\.\d+)?(?:[-+][0-9A-Za-z.-]+)?")
_INSTALLS = {
    AgentKind.CODEX: ("codex", "@openai/codex"),
    AgentKind.GEMINI: ("gemini", "@google/gemini-cli"),
}


@dataclass(frozen=True, slots=True)
class AgentProgram:
    """The agent's program as configured: ``argv`` (program first, then the host's extra
    arguments) and ``path``, where the program was found (None: it is not installed)."""

    kind: AgentKind
    argv: tuple[str, ...]
    path: str | None

    @property
    def has_version_flag(self) -> bool:
        """Whether ``--version`` is known to print a version and exit (not for whatever
        terminal program a repl agent is)."""
        return self.kind is not AgentKind.REPL

    def require(self) -> str:
        """The program's path; SessionError saying how to install it when it is missing."""
        if self.path is not None:
            return self.path
        match self.kind:
            case AgentKind.CLAUDE:
                fix = "install Claude Code (make run does) or set claude.command to its path"
                setting = "claude.command"
            case AgentKind.REPL:
                fix = "install it or set agent.command to its path"
                setting = "agent.command"
            case AgentKind.CODEX | AgentKind.GEMINI:
                name, package = _INSTALLS[self.kind]
                fix = (
                    f"run `make {name}` (installs the pinned {package} under .tools/{name}/), "
                    f"`npm install -g {package}`, or set agent.command to its path"
                )
                setting = "agent.command"
        raise SessionError(f"{setting} {self.argv[0]!r} was not found: {fix}")


def agent_program(agent: AgentSettings, claude: ClaudeSettings) -> AgentProgram:
    """The program ``agent.kind`` runs, found on PATH or (codex, gemini) in the checkout's
    ``.tools/``."""
    match agent.kind:
        case AgentKind.CLAUDE:
            argv: tuple[str, ...] = (claude.command,)
        case AgentKind.REPL:
            argv = agent.command
        case AgentKind.CODEX | AgentKind.GEMINI:
            argv = agent.command or (_local_install(agent.kind),)
    return AgentProgram(agent.kind, argv, shutil.which(argv[0]))


def _local_install(kind: AgentKind) -> str:
    """The project-local install when there is one, else the bare name (looked up on PATH)."""
    name, _ = _INSTALLS[kind]
    local = Path(".tools") / name / "node_modules" / ".bin" / name
    return str(local.absolute()) if os.access(local, os.X_OK) else name


async def program_version(program: AgentProgram, env: Mapping[str, str]) -> str | None:
    """The version ``program --version`` prints ("2.1.331 (Claude Code)" → "2.1.331"), or
    None when it is missing, has no such flag, or does not answer within 10 s. It runs with
    ``env``, the agent's environment: none of the bot's secrets, even for ``--version``."""
    if program.path is None or not program.has_version_flag:
        return None
    try:
        proc = await asyncio.create_subprocess_exec(
            program.path,
            "--version",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
            env=dict(env),
        )
    except OSError:
        return None
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), _VERSION_TIMEOUT_S)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return None
    found = _VERSION.search(out.decode(errors="replace"))
    return found.group() if proc.returncode == 0 and found else None
