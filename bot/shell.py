"""The guarded ``/concordia shell`` runner: one command from chat, run on the host in the
party's workdir, outside Claude.

Why it is guarded: the command text comes from a chat message, and it runs on the machine
that holds the bot's tokens. Who may run it at all is decided elsewhere (an allow-list of
participants); this module decides what may run and how, and it knows nothing of chat or the
store.

Guarantees, for every command `ShellRunner.run` accepts:

- Nothing runs unless `ShellRunner.check` passed: no blank command, no NUL, no control
  character or escape sequence, no bidi override, no line break (one command per call), at
  most `MAX_COMMAND_CHARS` characters. With allow patterns set, no shell syntax either, and the
  command must match a pattern; it then runs without a shell (see `check` for the rules).
- The environment is scrubbed: only `PASSED_ENVIRONMENT` is copied, plus ``TERM=dumb`` and
  ``NO_COLOR=1``, so no token or key of the bot reaches the command. Only stdin, stdout and
  stderr are open in it (stdin is /dev/null).
- The command runs in a new session, hence its own process group and no controlling terminal
  (nothing can prompt on the host's terminal). When it ends, by itself, by timeout or by
  cancellation, whatever is left of that group is terminated (SIGTERM, then SIGKILL after
  ``kill_grace_s``), the process is reaped and the output pipe is closed. A background child
  (``sleep 300 &``) does not keep `run` waiting, nor does it survive. A child that leaves the
  group with its own ``setsid`` (or ``setpgid``) is out of reach: it is not killed, but `run`
  stops reading after ``kill_grace_s`` and closes the pipe anyway.
- The output (stdout and stderr interleaved) is read as it comes and never buffered whole: at
  most ``max_output_chars`` are kept, the first two thirds and the last third, with a line
  saying how many characters were cut between them. Invalid UTF-8 becomes U+FFFD, and control
  and escape sequences are removed (`bot.safety.strip_controls`), so colour codes never reach
  chat. Secrets printed by the command itself are not redacted here: that is the caller's job.
"""

from __future__ import annotations

import asyncio
import codecs
import enum
import logging
import os
import re
import shlex
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

from bot import ConcordiaError
from bot.model import ShellOutcome
from bot.safety import strip_controls

__all__ = [
    "MAX_COMMAND_CHARS",
    "PASSED_ENVIRONMENT",
    "SHELL_METACHARACTERS",
    "ShellDenied",
    "ShellResult",
    "ShellRunner",
]

log = logging.getLogger(__name__)

MAX_COMMAND_CHARS = 4_000
"""Longer commands are refused: nobody types more in a chat box, and a paste that long is
more likely a script than a command."""

PASSED_ENVIRONMENT = (
    "PATH",
    "HOME",
    "LANG",
    "LC_ALL",
    "LC_CTYPE",
    "TZ",
    "USER",
    "LOGNAME",
    "SHELL",
    "TMPDIR",
)
"""The only variables copied from the bot's environment; ``TERM`` is always ``dumb`` and
``NO_COLOR`` is ``1``."""

SHELL_METACHARACTERS = frozenset(";&|`$<>")
"""Refused anywhere in the command (inside quotes too) when allow patterns are set.

Such commands run without a shell, so none of these would do what the user meant: ``;``,
``&&``, ``||``, ``|`` and ``&`` chain, pipe or background; ``<`` and ``>`` redirect; `` ` ``
and every ``$`` (``$(…)``, ``${…}``, ``$VAR``) substitute. Refusing says so, where running
would silently pass the text to the program as an argument. The rule is on the raw text, so
no quoting trick matters. Line breaks are refused in every mode. Glob characters (``* ? [ ]``),
``~``, ``#``, parentheses and braces are allowed: without a shell they reach the program
literally, which is what ``git log -- '*.py'`` or ``pytest -k 'a or (b)'`` want.
"""

_SHELL = "/bin/sh"
# shlex.split's word separators are ASCII, so patterns are matched on the same words: a
# no-break space must not make "git\u00a0status" look like "git status".
_BLANKS = re.compile(r"[ \t]+")
_GLOB_CHARS = frozenset("*?[")
# An escape sequence or "\r\n" may be split between two reads: text from an introducer this
# close to the end is held until more arrives (every piece is stripped anyway, so the hold only
# keeps a split sequence's tail from showing as stray text).
_INTRODUCERS = re.compile("[\x1b\x90\x98\x9b\x9d\x9e\x9f]")
_ESCAPE_HOLD_CHARS = 64


class ShellDenied(ConcordiaError):
    """The command was refused before anything ran; the message is one line fit for chat
    and says what to change. It never repeats the command."""


@dataclass(frozen=True, slots=True)
class ShellResult:
    """What one command did.

    ``exit_code`` is the process's status as `asyncio.subprocess.Process.returncode` gives it
    (negative: killed by that signal); without a shell, 127 when the program was not found and
    126 when it could not be executed; None when it was never reaped. ``output`` is already
    capped, and ``cut_chars`` says how many characters were cut from its middle. ``timed_out``
    and ``cancelled`` say that the runner killed it, and why.
    """

    command: str
    exit_code: int | None
    output: str
    cut_chars: int
    duration_s: float
    timeout_s: float
    timed_out: bool
    cancelled: bool

    @property
    def outcome(self) -> ShellOutcome:
        """How it ended, as the store records it (never `ShellOutcome.FAILED`: it ran)."""
        if self.timed_out:
            return ShellOutcome.TIMED_OUT
        return ShellOutcome.CANCELLED if self.cancelled else ShellOutcome.EXITED

    @property
    def summary(self) -> str:
        """One line for chat: "exit 0 in 0.12 s", "killed after 30 s timeout",
        "cancelled after 2.1 s", "exit 2 in 1.0 s; 9,998,000 characters cut"."""
        took = _format_duration(self.duration_s)
        if self.cancelled:
            text = f"cancelled after {took} s"
        elif self.timed_out:
            text = f"killed after {self.timeout_s:g} s timeout"
        elif self.exit_code is None:
            text = f"no exit status after {took} s"
        elif self.exit_code < 0:
            text = f"killed by {_signal_name(-self.exit_code)} after {took} s"
        else:
            text = f"exit {self.exit_code} in {took} s"
        if self.cut_chars:
            text += f"; {self.cut_chars:,} characters cut"
        return text


class _Ending(enum.Enum):
    EXITED = enum.auto()  # the main process exited by itself
    TIMED_OUT = enum.auto()  # timeout_s passed first
    CANCELLED = enum.auto()  # the caller's cancel event was set first


class ShellRunner:
    """Runs commands in ``workdir`` with the guarantees in the module docstring. Holds no
    state between calls, so concurrent `run` calls are independent.

    ``allow``: fnmatch patterns (case-sensitive) matched against the command with runs of
    blanks collapsed, e.g. ``"git status"``, ``"git log *"``, ``"pytest*"``. A ``*`` admits
    any arguments, options included (``git log --output=FILE`` writes a file), and a pattern
    such as ``"ls*"`` also admits ``lsof``: write ``"ls"`` and ``"ls *"`` to mean ls alone.
    A program named by a path (``"./check.sh *"``) runs only when a pattern's first word is
    that exact path, with no glob character. An entry is as safe as the program it allows:
    pytest and git run code and config from the workdir, which Claude can edit. Empty: the
    allowed users are trusted with a shell, and commands run through ``/bin/sh -c``.

    Raises:
        ValueError: a limit is out of range, or a pattern is blank.
    """

    __slots__ = (
        "_allow",
        "_kill_grace_s",
        "_literal_programs",
        "_max_output_chars",
        "_timeout_s",
        "_workdir",
    )

    def __init__(
        self,
        *,
        workdir: Path,
        timeout_s: float,
        max_output_chars: int,
        allow: Sequence[str] = (),
        kill_grace_s: float = 2.0,
    ) -> None:
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, not {timeout_s!r}")
        if max_output_chars < 1:
            raise ValueError(f"max_output_chars must be >= 1, not {max_output_chars!r}")
        if not kill_grace_s >= 0:
            raise ValueError(f"kill_grace_s must be >= 0, not {kill_grace_s!r}")
        if isinstance(allow, str):
            raise ValueError("allow must be a sequence of patterns, not one string")
        patterns = tuple(_BLANKS.sub(" ", p.strip(" \t")) for p in allow)
        if any(not p for p in patterns):
            raise ValueError("allow has a blank pattern, which would match nothing")
        self._workdir = workdir
        self._timeout_s = timeout_s
        self._max_output_chars = max_output_chars
        self._allow = patterns
        self._kill_grace_s = kill_grace_s
        # A program named with a "/" runs only when a pattern names it literally: otherwise
        # "ls*" would admit "ls/../../bin/sh" as soon as a directory "ls" exists in the workdir.
        self._literal_programs = frozenset(
            program
            for program in (p.split(" ", 1)[0] for p in patterns)
            if "/" in program and not _GLOB_CHARS & set(program)
        )

    def check(self, command: str) -> list[str] | None:
        """Validate ``command`` without running anything. Pure.

        Returns the argv to exec (``shlex.split``) when allow patterns are set: the command
        will run without a shell. Returns None when there are none: it will run through
        ``/bin/sh -c``, shell syntax included.

        Raises:
            ShellDenied: blank; longer than `MAX_COMMAND_CHARS`; a NUL, a line break, any
                other control character or escape sequence, or a bidi override; not
                encodable as UTF-8 (lone surrogates). With allow patterns: any of
                `SHELL_METACHARACTERS`, no pattern matching, unbalanced quotes, or a program
                path that no pattern names.
        """
        if not command.strip():
            raise ShellDenied("the command is empty: write it after /concordia shell")
        if len(command) > MAX_COMMAND_CHARS:
            raise ShellDenied(
                f"the command is {len(command):,} characters; at most {MAX_COMMAND_CHARS:,} "
                "are accepted"
            )
        if "\x00" in command:
            raise ShellDenied("the command contains a NUL character: remove it")
        if "\n" in command or "\r" in command:
            raise ShellDenied("the command has a line break: send one command per call")
        # strip_controls changes exactly the texts that hold a C0/C1 control other than tab,
        # an escape sequence, DEL or a bidi override (bot.safety's rules for prompts).
        if strip_controls(command) != command:
            raise ShellDenied(
                "the command contains control characters, escape sequences or bidi "
                "overrides: retype it as plain text"
            )
        try:
            command.encode("utf-8")
        except UnicodeEncodeError:
            raise ShellDenied("the command is not valid UTF-8 text: retype it") from None
        if not self._allow:
            return None
        found = sorted(SHELL_METACHARACTERS.intersection(command))
        if found:
            raise ShellDenied(
                f"shell syntax ({' '.join(found)}) is not accepted here: commands run without "
                "a shell, one program per call, with no pipes, redirects or variables"
            )
        normalised = _BLANKS.sub(" ", command.strip(" \t"))
        if not any(fnmatchcase(normalised, pattern) for pattern in self._allow):
            raise ShellDenied(
                "this command is not on the shell allow-list; allowed: " + ", ".join(self._allow)
            )
        try:
            argv = shlex.split(command)
        except ValueError as exc:  # "No closing quotation", "No escaped character"
            raise ShellDenied(f"the command cannot be parsed ({exc}): check its quotes") from None
        if not argv:  # shlex drops nothing that str.strip keeps, but argv[0] must exist
            raise ShellDenied("the command is empty: write it after /concordia shell")
        if "/" in argv[0] and argv[0] not in self._literal_programs:
            raise ShellDenied(
                "a program path is accepted only when the allow-list names it exactly; "
                "use the program's name"
            )
        return argv

    async def run(
        self,
        command: str,
        *,
        started: asyncio.Event | None = None,
        cancel: asyncio.Event | None = None,
    ) -> ShellResult:
        """Check ``command``, run it and return what it did.

        ``started`` is set once the process exists. Setting ``cancel`` stops the command the
        way a timeout does and returns a result with ``cancelled=True`` and the output so far;
        when it is already set, nothing is started.

        Cancelling the task that awaits `run` stops the process group the same way (SIGTERM,
        SIGKILL after ``kill_grace_s``, reap, close the pipe), then re-raises CancelledError:
        no result, as asyncio's contract wants. A second cancellation during that cleanup
        skips straight to SIGKILL.

        Raises:
            ShellDenied: `check` refused the command; nothing ran.
            OSError: the process could not be started for a reason other than the program
                (missing workdir, no /bin/sh, out of file descriptors).
        """
        argv = self.check(command)
        if cancel is not None and cancel.is_set():
            return self._result(command, None, ("", 0), 0.0, _Ending.CANCELLED)
        log.debug("shell command: %r", command)
        loop = asyncio.get_running_loop()
        capture = _OutputCapture(self._max_output_chars)
        pipe_closed: asyncio.Future[None] = loop.create_future()
        # Our own pipe rather than stdout=PIPE: we hold the only read end, so we can close it
        # while an escaped child still holds the write end (asyncio's pipe transport would
        # stay open until every writer is gone).
        read_fd, write_fd = os.pipe()
        try:
            read_file = os.fdopen(read_fd, "rb", buffering=0)
        except BaseException:  # cancellation too: close both ends, then let it through
            os.close(read_fd)
            os.close(write_fd)
            raise
        try:
            transport, _ = await loop.connect_read_pipe(
                lambda: _OutputPipe(capture, pipe_closed), read_file
            )
        except BaseException:  # cancellation too: close both ends, then let it through
            read_file.close()
            os.close(write_fd)
            raise
        started_at = time.monotonic()
        try:
            try:
                proc = await asyncio.create_subprocess_exec(
                    *(argv if argv is not None else [_SHELL, "-c", "--", command]),
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=write_fd,
                    stderr=asyncio.subprocess.STDOUT,
                    cwd=self._workdir,
                    env=_environment(),
                    start_new_session=True,
                )
            finally:
                os.close(write_fd)  # the child has its copy; EOF must depend on it alone
        except OSError as exc:
            transport.close()
            if argv is None or exc.filename != argv[0]:
                raise
            await asyncio.wait({pipe_closed})  # connection_lost has closed the read end
            # What a shell would say, so exec and shell modes read the same in chat.
            missing = isinstance(exc, FileNotFoundError)
            reason = "command not found" if missing else "permission denied"
            output = (f"{argv[0]}: {reason}\n", 0)
            return self._result(
                command, 127 if missing else 126, output, time.monotonic() - started_at
            )
        except BaseException:
            transport.close()
            raise
        if started is not None:
            started.set()

        exited = asyncio.create_task(proc.wait())
        is_stopped = False
        try:
            try:
                ending = await self._wait_for_end(exited, cancel)
            finally:
                # Also on CancelledError, which propagates once the group is stopped.
                await self._stop(proc.pid, exited, pipe_closed)
                is_stopped = True
            transport.close()
            await asyncio.wait({pipe_closed})  # connection_lost has closed the read end
        finally:
            if not is_stopped:  # cancelled again during _stop: no more waiting
                _signal_group(proc.pid, signal.SIGKILL)
            exited.cancel()
            transport.close()
        result = self._result(
            command, proc.returncode, capture.finish(), time.monotonic() - started_at, ending
        )
        log.info("shell command %s", result.summary, extra={"elapsed_s": result.duration_s})
        return result

    async def _wait_for_end(
        self, exited: asyncio.Task[int], cancel: asyncio.Event | None
    ) -> _Ending:
        """Wait for the main process to exit, the timeout or the cancel event."""
        cancelled = asyncio.create_task(cancel.wait()) if cancel is not None else None
        try:
            waits: set[asyncio.Task[int] | asyncio.Task[bool]] = {exited}
            if cancelled is not None:
                waits.add(cancelled)
            await asyncio.wait(waits, timeout=self._timeout_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if cancelled is not None:
                cancelled.cancel()
        if exited.done():
            return _Ending.EXITED
        if cancel is not None and cancel.is_set():
            return _Ending.CANCELLED
        return _Ending.TIMED_OUT

    async def _stop(
        self, pgid: int, exited: asyncio.Task[int], pipe_closed: asyncio.Future[None]
    ) -> None:
        """End whatever is left of the group: SIGTERM, up to kill_grace_s for the main process
        to be reaped and the pipe to reach EOF, SIGKILL; then up to kill_grace_s for each of
        the two. Waits never cancel what they wait on, so a timeout leaves nothing half done.
        """
        grace_s = self._kill_grace_s
        if _signal_group(pgid, signal.SIGTERM):
            both: set[asyncio.Future[Any]] = {exited, pipe_closed}
            await asyncio.wait(both, timeout=grace_s)
            # Also when both are done: a member that ignores SIGTERM and closed its stdout.
            _signal_group(pgid, signal.SIGKILL)
        await asyncio.wait({exited}, timeout=grace_s)
        # Drain what the pipe still holds; only a child outside the group keeps it open.
        await asyncio.wait({pipe_closed}, timeout=grace_s)

    def _result(
        self,
        command: str,
        exit_code: int | None,
        output: tuple[str, int],
        duration_s: float,
        ending: _Ending = _Ending.EXITED,
    ) -> ShellResult:
        text, cut_chars = output
        return ShellResult(
            command=command,
            exit_code=exit_code,
            output=text,
            cut_chars=cut_chars,
            duration_s=duration_s,
            timeout_s=self._timeout_s,
            timed_out=ending is _Ending.TIMED_OUT,
            cancelled=ending is _Ending.CANCELLED,
        )


class _OutputPipe(asyncio.Protocol):
    """Folds each piece into the capture as it arrives; ``closed`` resolves at EOF or close.

    The transport reads at most 256 KiB per callback and the piece is folded in at once, so
    that is all the raw output ever held in memory; no flow control is needed.
    """

    def __init__(self, capture: _OutputCapture, closed: asyncio.Future[None]) -> None:
        self._capture = capture
        self._closed = closed

    def data_received(self, data: bytes) -> None:
        self._capture.feed(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._closed.done():
            self._closed.set_result(None)


class _OutputCapture:
    """Decodes, strips and caps output fed in pieces, in memory bounded by the cap.

    Keeps the first ``max_chars - max_chars // 3`` characters and the last ``max_chars // 3``;
    `finish` joins them with a line saying how many were cut between. Counts are of the
    stripped text, so escape sequences neither use the budget nor count as cut.
    """

    __slots__ = (
        "_decoder",
        "_head",
        "_head_chars",
        "_head_max_chars",
        "_held",
        "_seen_chars",
        "_tail",
        "_tail_max_chars",
    )

    def __init__(self, max_chars: int) -> None:
        self._tail_max_chars = max_chars // 3
        self._head_max_chars = max_chars - self._tail_max_chars
        self._head: list[str] = []
        self._head_chars = 0
        self._tail = ""
        self._seen_chars = 0
        self._held = ""
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, data: bytes) -> None:
        text = self._held + self._decoder.decode(data)
        cut = len(text)
        for match in _INTRODUCERS.finditer(text, max(0, cut - _ESCAPE_HOLD_CHARS)):
            cut = match.start()
            break
        else:
            if text.endswith("\r"):  # "\r" + "\n" in the next piece is one line break
                cut -= 1
        self._held = text[cut:]
        self._keep(strip_controls(text[:cut]))

    def finish(self) -> tuple[str, int]:
        """Return the capped text and how many characters were cut; the capture is spent."""
        self._keep(strip_controls(self._held + self._decoder.decode(b"", final=True)))
        self._held = ""
        head = "".join(self._head)
        cut_chars = self._seen_chars - len(head) - len(self._tail)
        if not cut_chars:
            return head + self._tail, 0
        return f"{head}\n… {cut_chars:,} characters cut …\n{self._tail}", cut_chars

    def _keep(self, text: str) -> None:
        self._seen_chars += len(text)
        room = self._head_max_chars - self._head_chars
        if room > 0 and text:
            part = text[:room]
            self._head.append(part)
            self._head_chars += len(part)
            text = text[room:]
        if not text or not self._tail_max_chars:
            return
        if len(text) >= self._tail_max_chars:
            self._tail = text[-self._tail_max_chars :]
        else:
            self._tail = (self._tail + text)[-self._tail_max_chars :]


def _environment() -> dict[str, str]:
    env = {name: os.environ[name] for name in PASSED_ENVIRONMENT if name in os.environ}
    env.setdefault("PATH", os.defpath)
    env["TERM"] = "dumb"
    env["NO_COLOR"] = "1"
    return env


def _signal_group(pgid: int, sig: signal.Signals) -> bool:
    """Send ``sig`` to the process group; False when the group is gone (that is fine)."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    return True


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _format_duration(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds:.2f}"
    if seconds < 10:
        return f"{seconds:.1f}"
    return f"{seconds:,.0f}"
