"""What the agent can reach: its environment, the paths it is denied, and the OS sandbox.

Invariant: the agent process sees none of the bot's own secrets. Its environment is an
allow-list (never the chat platforms' tokens, Gemini's key or a ``CONCORDIA_*`` setting), and
Concordia's files (the state folder with the database and the tokens file, the config file,
the credentials file, the bot's own ``/proc`` entry) are denied to it twice: by permission
rules the CLI enforces on its file tools and on the Bash commands it can read paths from, and,
where the machine has it, by Claude Code's OS sandbox, which hides them from every command
and its children. The first line of defence is elsewhere: the state folder lives outside
the agent's working tree (`bot.state_dir`).
"""

from __future__ import annotations

import enum
import json
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "AGENT_ENVIRONMENT",
    "AGENT_ENVIRONMENT_PREFIXES",
    "Confinement",
    "SandboxMode",
    "SandboxSupport",
    "agent_environment",
    "sandbox_support",
]

log = logging.getLogger(__name__)

AGENT_ENVIRONMENT = frozenset(
    {
        "PATH",
        "HOME",
        "USER",
        "LOGNAME",
        "SHELL",
        "TMPDIR",
        "TZ",
        "LANG",
        "LANGUAGE",
        "TERM",
        "COLORTERM",
        "NO_COLOR",
        # Claude Code's own configuration and the way it reaches the API.
        "CLAUDE_CONFIG_DIR",
        "XDG_CONFIG_HOME",
        "XDG_CACHE_HOME",
        "XDG_DATA_HOME",
        "HTTPS_PROXY",
        "HTTP_PROXY",
        "NO_PROXY",
        "https_proxy",
        "http_proxy",
        "no_proxy",
        "NODE_EXTRA_CA_CERTS",
        "SSL_CERT_FILE",
        "SSL_CERT_DIR",
        "DISABLE_AUTOUPDATER",
    }
)
"""Variables copied from the bot's environment into the agent's, besides the prefixes."""

AGENT_ENVIRONMENT_PREFIXES = ("LC_", "ANTHROPIC_", "CLAUDE_CODE_")
"""Locale variables and the credentials and switches Claude Code itself reads."""

_FORBIDDEN_PREFIX = "CONCORDIA_"
_BWRAP_PROBE_TIMEOUT_S = 5.0


class SandboxMode(enum.StrEnum):
    """``claude.sandbox``: whether every command the agent runs is confined by the OS."""

    AUTO = "auto"  # on where the machine has it, with a line at start when it has not
    REQUIRED = "required"  # refuse to start without it
    OFF = "off"


@dataclass(frozen=True, slots=True)
class SandboxSupport:
    """Whether Claude Code's sandbox can run here; ``missing`` says what to install."""

    is_available: bool
    mechanism: str
    missing: str = ""


def sandbox_support() -> SandboxSupport:
    """Probe the machine: Seatbelt on macOS; bubblewrap (which must actually start a
    namespace: some containers forbid it) and socat on Linux. Blocking; call it once at start."""
    if sys.platform == "darwin":
        return SandboxSupport(True, "seatbelt")
    if not sys.platform.startswith("linux"):
        return SandboxSupport(False, "", f"Claude Code has no sandbox on {sys.platform}")
    missing = [name for name in ("bwrap", "socat") if shutil.which(name) is None]
    if missing:
        packages = " ".join("bubblewrap" if m == "bwrap" else m for m in missing)
        return SandboxSupport(
            False, "bubblewrap", f"install {packages} (apt-get install {packages})"
        )
    try:
        probe = subprocess.run(
            ["bwrap", "--ro-bind", "/", "/", "--dev", "/dev", "--unshare-pid", "true"],
            capture_output=True,
            timeout=_BWRAP_PROBE_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return SandboxSupport(False, "bubblewrap", f"bubblewrap could not start: {exc}")
    if probe.returncode != 0:
        reason = probe.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["no reason"]
        return SandboxSupport(
            False,
            "bubblewrap",
            f"bubblewrap cannot create a namespace here ({reason[0]}); allow unprivileged "
            "user namespaces (sysctl kernel.unprivileged_userns_clone=1) or run outside "
            "this container",
        )
    return SandboxSupport(True, "bubblewrap")


def agent_environment(
    environ: Mapping[str, str],
    extra: Mapping[str, str],
    *,
    bot_secret_names: Iterable[str],
    prefixes: tuple[str, ...] = (),
) -> dict[str, str]:
    """The agent's environment: the allow-listed part of ``environ`` (with the variables
    starting with ``prefixes``: the credentials and switches another agent's CLI reads),
    then ``extra`` (``claude.env``, which the host chose).

    Whatever the lists say, no variable named in ``bot_secret_names`` (the chat platforms'
    token variables, Gemini's key variable), no ``CONCORDIA_*`` setting and no variable
    holding the value of one of them reaches the agent: a host who exported the Discord token
    under a second name, or copied it into ``claude.env``, still does not hand it to Claude.
    """
    names = set(bot_secret_names)
    values = {environ[name] for name in names if environ.get(name)}
    env = {
        name: value
        for name, value in environ.items()
        if name in AGENT_ENVIRONMENT or name.startswith((*AGENT_ENVIRONMENT_PREFIXES, *prefixes))
    }
    env.update(extra)
    dropped = sorted(
        name
        for name, value in env.items()
        if name in names or name.startswith(_FORBIDDEN_PREFIX) or value in values
    )
    for name in dropped:
        del env[name]
    if dropped:
        log.warning(
            "kept the bot's own secrets out of Claude's environment: %s", ", ".join(dropped)
        )
    env.setdefault("PATH", os.defpath)
    return env


def _with_sigint(disposition: str) -> list[str]:
    """A prefix that runs the rest of the command with SIGINT set to ``disposition`` (a
    `signal` name): dispositions set to ignore survive exec, and a program resets them."""
    code = (
        "import os, signal, sys; "
        f"signal.signal(signal.SIGINT, signal.{disposition}); "
        "os.execvp(sys.argv[1], sys.argv[1:])"
    )
    return [sys.executable, "-c", code]


@dataclass(frozen=True, slots=True)
class Confinement:
    """The paths the agent is denied and whether the OS sandbox is on.

    `cli_settings` is the JSON given to ``claude --settings``: settings on the command line
    outrank the user's and the project's own settings files, and deny rules outrank every
    allow rule and permission mode, ``bypassPermissions`` included.
    """

    denied: tuple[Path, ...]
    is_sandboxed: bool
    is_sandbox_required: bool = False

    def deny_rules(self) -> list[str]:
        """Permission rules for the file tools; the CLI also applies ``Read`` rules to the
        paths a Bash command names (``cat``, ``head``, ``grep -r``, ``find``, ``base64``)."""
        rules: list[str] = []
        for path in self._paths():
            # "//" starts an absolute path in Claude Code's gitignore-style rules.
            anchored = "/" + path.as_posix()
            for tool in ("Read", "Edit"):
                rules.append(f"{tool}({anchored})")
                rules.append(f"{tool}({anchored}/**)")
        return rules

    def cli_settings(self) -> str:
        settings: dict[str, object] = {"permissions": {"deny": self.deny_rules()}}
        if self.is_sandboxed:
            settings["sandbox"] = {
                "enabled": True,
                # Sandboxed commands still go to the party's approvers, as without a sandbox.
                "autoAllowBashIfSandboxed": False,
                "failIfUnavailable": self.is_sandbox_required,
                "filesystem": {"denyRead": [p.as_posix() for p in self._paths()]},
            }
        return json.dumps(settings, separators=(",", ":"))

    def wrap(self, argv: Sequence[str]) -> list[str]:
        """``argv`` run where the denied paths show nothing, for an agent that takes no
        ``--settings`` (every driver but Claude's): bubblewrap gives it the host's file
        system with an empty tmpfs over each denied folder, an unreadable /dev/null (the
        mount is nodev) over each denied file, and a PID namespace of its own, so that no
        /proc entry of the bot is there. It dies with the bot (``--die-with-parent``).

        An interrupt (Ctrl-C on the pty, SIGINT to the process group) is for the agent:
        bubblewrap runs with SIGINT ignored, else it would die of it and take the agent
        down with it, and the agent gets it back as the default. ``argv`` unchanged when
        the OS sandbox is off (`bot.app` says so at start)."""
        if not self.is_sandboxed:
            return list(argv)
        command = ["bwrap", "--dev-bind", "/", "/", "--unshare-pid", "--proc", "/proc"]
        for path in self._paths():
            if path.is_relative_to("/proc"):
                continue  # the new /proc holds only the agent's own processes
            if path.is_dir():
                command += ["--tmpfs", str(path)]
            elif path.exists():
                command += ["--ro-bind", "/dev/null", str(path)]
        command += ["--die-with-parent", "--"]
        return [*_with_sigint("SIG_IGN"), *command, *_with_sigint("SIG_DFL"), *argv]

    def _paths(self) -> list[Path]:
        """Each denied path as given and, when a symlink leads elsewhere, as resolved."""
        seen: list[Path] = []
        for path in self.denied:
            for form in (path, path.resolve()):
                if form not in seen:
                    seen.append(form)
        return seen
