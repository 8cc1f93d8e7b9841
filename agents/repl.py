"""ReplSession: the `bot.agent.AgentSession` that is any interactive terminal program
(``agent.command``) on a pty, its screen rendered by a terminal emulator (pyte).

A turn types the prompt and streams what appears below it; it ends once the output has
been quiet for ``agent.idle_s`` AND the last non-empty screen line matches
``agent.prompt_marker`` (a marker seen while output goes on is not the end). The session's
supervisor task owns the process: it spawns it, feeds every byte to the screen, sends
``agent.startup``, and restarts it with backoff when it dies. The party's runner is the only
caller of `run`, `interrupt` and `restart`. The driver never asks before the agent acts:
there are no approvals on it.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import logging
import os
import re
import signal
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

import pexpect
import pyte

from bot.agent import (
    AgentEvent,
    PlanRequest,
    QuestionRequest,
    SessionDied,
    SessionError,
    TextDelta,
    ToolRequest,
    TurnEnd,
)
from bot.config import AgentSettings, ClaudeSettings
from bot.model import Image, TurnStatus
from bot.pace import Backoff, Jitter

__all__ = ["ReplSession", "strip_echo"]

log = logging.getLogger(__name__)

_READ_CHUNK_BYTES = 65536
# A canonical pty line holds at most 4095 bytes; 1000 characters are at most 4000 bytes.
_WRITE_CHUNK_CHARS = 1000
_CTRL_C = "\x03"
_PASTE_START, _PASTE_END = "\x1b[200~", "\x1b[201~"
_BRACKETED_PASTE_MODE = 2004 << 5  # how pyte keeps the private mode ?2004 (DEC modes << 5)
# A process that lived this long before dying starts the restart backoff afresh.
_CALM_LIFE_S = 60.0


@dataclass(frozen=True, slots=True)
class _Exited:
    """Put on the update queue by the supervisor when the process is gone."""

    exit_status: int | None
    tail: str


_CHANGED = "changed"  # on the update queue: the screen changed


def strip_echo(text: str, prompt: str) -> str | None:
    """``text`` (what appeared below the prompt line) without the program's echo of
    ``prompt``: the echo is the shortest start of ``text`` holding every non-blank character
    of the prompt in order (prompt markers, continuation marks and wraps between them), up
    to the end of its line. None while the echo may still be arriving; ``text`` as it is
    when it plainly holds no echo (the program does not echo)."""
    wanted = [c for c in prompt if not c.isspace()]
    limit = 2 * len(prompt) + 200  # an echo is at most the prompt plus markers and wraps
    i = 0
    for pos, char in enumerate(text):
        if i == len(wanted):
            end = text.find("\n", pos - 1)
            return "" if end < 0 else text[end + 1 :]
        if pos > limit:
            return text
        if char == wanted[i]:
            i += 1
    if i == len(wanted):
        return ""
    return None if len(text) <= limit else text


class _Screen(pyte.Screen):
    """A pyte screen that keeps the lines scrolled off its top (``scrolled``), and answers
    the program's terminal queries (cursor position, device attributes) through ``reply``."""

    def __init__(self, columns: int, lines: int):
        super().__init__(columns, lines)
        self.scrolled: list[str] = []
        self.reply: list[str] = []

    def index(self) -> None:
        top, bottom = self.margins or pyte.screens.Margins(0, self.lines - 1)
        if self.cursor.y == bottom and top == 0:
            self.scrolled.append(self.display[0].rstrip())
        super().index()

    def write_process_input(self, data: str) -> None:
        self.reply.append(data)

    def text_lines(self) -> list[str]:
        """What was scrolled off, then the screen, each line without trailing spaces."""
        return [*self.scrolled, *(line.rstrip() for line in self.display)]

    def last_line(self) -> str:
        """The last non-empty line on the screen ("" when it is blank)."""
        return next((line.rstrip() for line in reversed(self.display) if line.strip()), "")


class ReplSession:
    """The terminal program behind one party; a `bot.agent.AgentSession`.

    ``ready`` is set once the program shows its prompt marker and can take a turn.
    ``session_id`` is always None (a program on a pty has no conversation to resume);
    ``restarts`` counts unplanned exits. Use as an async context manager; `stop` is
    idempotent.
    """

    def __init__(
        self,
        settings: AgentSettings,
        claude: ClaudeSettings,
        *,
        env: Mapping[str, str],
    ):
        if not settings.command:
            raise ValueError("ReplSession needs agent.command")
        self._settings = settings
        self._workdir: Path = claude.workdir
        self._turn_timeout_s = claude.turn_timeout_s
        self._grace_s = claude.interrupt_grace_s
        self._backoff = Backoff(
            claude.restart_backoff_s, claude.restart_backoff_max_s, jitter=Jitter.EQUAL
        )
        self._env = {"TERM": "xterm-256color", **env}
        self._marker = re.compile(settings.prompt_marker)
        self.session_id: str | None = None
        self.ready = asyncio.Event()
        self.restarts = 0
        self._proc: pexpect.spawn | None = None
        self._screen = _Screen(settings.columns, settings.rows)
        self._stream = pyte.Stream(self._screen)
        self._last_output = 0.0  # time.monotonic() of the last byte read
        self._updates: asyncio.Queue[str | _Exited] = asyncio.Queue()
        self._write_lock = asyncio.Lock()
        self._supervisor: asyncio.Task[None] | None = None
        self._is_turn_active = False
        self._was_interrupted = False
        self._is_stopping = False
        self._planned_restart = asyncio.Event()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        """Spawn the program and its supervisor; ``ready`` is set once it shows its marker.
        Raises SessionError when the program cannot start."""
        if self._supervisor is not None:
            raise RuntimeError("the session is already started")
        proc = self._spawn()  # the first spawn raises here: a wrong agent.command is said at once
        self._supervisor = asyncio.create_task(self._supervise(proc), name="repl-supervisor")

    async def serve(self) -> None:
        """Wait while the supervisor keeps the program running; raise what ended it (a
        respawn that failed, a marker that never showed). Cancelling it leaves the
        supervisor running (`stop` ends it)."""
        if self._supervisor is None:
            raise RuntimeError("ReplSession.serve() before start()")
        await asyncio.shield(self._supervisor)

    async def stop(self) -> None:
        """Hang up the program, give it ``claude.interrupt_grace_s``, then kill its group."""
        self._is_stopping = True
        supervisor = self._supervisor
        if supervisor is None:
            return
        supervisor.cancel()  # its cleanup hangs the program up (`_end`)
        await asyncio.wait([supervisor])
        if not supervisor.cancelled() and supervisor.exception() is not None:
            log.warning("the repl agent's supervisor had stopped: %s", supervisor.exception())
        self._supervisor = None

    async def restart(self, *, fresh: bool) -> None:
        """End the program and start it again (there is no conversation to resume: ``fresh``
        changes nothing)."""
        if self._is_turn_active:
            raise RuntimeError("restart() while a turn runs: interrupt it first")
        self._planned_restart.set()
        self._signal_group(signal.SIGHUP)

    # -- the process ----------------------------------------------------------------------

    def _spawn(self) -> pexpect.spawn:
        command = self._settings.command
        log.info("starting the repl agent", extra={"command": command[0]})
        try:
            proc = pexpect.spawn(
                command[0],
                list(command[1:]),
                cwd=str(self._workdir),
                env=self._env,
                dimensions=(self._settings.rows, self._settings.columns),
                encoding=None,
            )
        except pexpect.ExceptionPexpect as exc:
            raise SessionError(
                f"agent.command {command[0]!r} could not be started ({exc}): install it or set "
                "agent.command to its path"
            ) from None
        # Closing after the process is reaped must not sleep on the loop (ptyprocess waits).
        proc.delayafterclose = 0
        proc.ptyproc.delayafterclose = 0
        self._proc = proc
        self._screen.reset()
        self._screen.scrolled.clear()
        self._last_output = time.monotonic()
        return proc

    def _signal_group(self, signum: int) -> None:
        if self._proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._proc.pid, signum)

    async def _supervise(self, proc: pexpect.spawn) -> None:
        while True:
            started = time.monotonic()
            exit_status = await self._own(proc)
            self.ready.clear()
            tail = "\n".join(self._screen.text_lines()[-5:]).strip()
            self._updates.put_nowait(_Exited(exit_status, tail))
            if self._is_stopping:
                return
            if self._planned_restart.is_set():
                self._planned_restart.clear()
                log.info("the repl agent restarted on request")
            else:
                self.restarts += 1
                if time.monotonic() - started > _CALM_LIFE_S:
                    self._backoff.reset()
                delay_s = self._backoff.delay()
                log.warning(
                    "the repl agent exited unexpectedly (status %s); restarting in %.1f s",
                    exit_status,
                    delay_s,
                    extra={"exit_status": exit_status},
                )
                await asyncio.sleep(delay_s)  # pacing: restart backoff
            if self._is_stopping:
                return
            proc = self._spawn()

    async def _own(self, proc: pexpect.spawn) -> int | None:
        """Read the program until it exits, sending the startup keys and setting ``ready``
        on the way; its exit status. Cleans up the pty whatever happens."""
        loop = asyncio.get_running_loop()
        chunks: asyncio.Queue[bytes] = asyncio.Queue()
        fd = proc.child_fd

        def readable() -> None:
            try:
                data = os.read(fd, _READ_CHUNK_BYTES)
            except OSError:  # EIO: every end of the pty's other side is closed
                data = b""
            if not data:
                loop.remove_reader(fd)
            chunks.put_nowait(data)

        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        startup = list(self._settings.startup)
        deadline = time.monotonic() + self._turn_timeout_s
        loop.add_reader(fd, readable)
        try:
            while True:
                timeout = None
                if not self.ready.is_set():
                    quiet_at = self._last_output + self._settings.idle_s
                    timeout = max(0.0, quiet_at - time.monotonic())
                try:
                    async with asyncio.timeout(timeout):
                        data = await chunks.get()
                except TimeoutError:
                    await self._start_up(startup, deadline)
                    continue
                if not data:
                    break
                self._stream.feed(decoder.decode(data))
                self._last_output = time.monotonic()
                if self._screen.reply:
                    # A few bytes, written at once and outside the lock: a prompt being
                    # typed must not hold up the answer the program waits for.
                    answer, self._screen.reply[:] = "".join(self._screen.reply), []
                    with contextlib.suppress(OSError):
                        _write_all(fd, answer.encode())
                self._updates.put_nowait(_CHANGED)
            status: int | None = await asyncio.to_thread(proc.wait)
            return status
        finally:
            loop.remove_reader(fd)
            if not proc.terminated:
                await self._end(proc)
            proc.close()

    async def _end(self, proc: pexpect.spawn) -> None:
        """Hang up the program's group, give it ``claude.interrupt_grace_s``, then kill it."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGHUP)
        waiter = asyncio.ensure_future(asyncio.to_thread(_reap, proc))
        _, pending = await asyncio.wait([waiter], timeout=self._grace_s)
        if pending:
            log.warning("the repl agent did not exit on hangup; killing it")
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            await waiter

    async def _start_up(self, startup: list[str], deadline: float) -> None:
        """The screen settled before the program was ready: send the next startup key, or,
        with none left, be ready if the marker shows. Raises SessionError past ``deadline``."""
        if startup:
            await self._write(startup.pop(0))
            self._last_output = time.monotonic()
        elif self._marker.search(self._screen.last_line()):
            self.ready.set()
        elif time.monotonic() > deadline:
            raise SessionError(
                f"agent.prompt_marker {self._settings.prompt_marker!r} did not match the "
                f"screen's last line {self._screen.last_line()[-80:]!r} within "
                f"claude.turn_timeout_s ({self._turn_timeout_s:g} s) of starting "
                f"{self._settings.command[0]!r}: fix the marker or agent.startup"
            )
        else:
            self._last_output = time.monotonic()  # look again after another quiet spell

    async def _write(self, text: str) -> None:
        proc = self._proc
        if proc is None:
            raise SessionError("the repl agent is not running")
        async with self._write_lock:
            try:
                for start in range(0, len(text), _WRITE_CHUNK_CHARS):
                    data = text[start : start + _WRITE_CHUNK_CHARS].encode()
                    # The pty blocks a writer while the program does not read: off the loop.
                    await asyncio.to_thread(_write_all, proc.child_fd, data)
            except OSError as exc:
                message = f"the repl agent's pty is closed: {exc}"
                raise SessionDied(message, exit_status=None) from None

    # -- turns ----------------------------------------------------------------------------

    async def run(
        self, prompt: str, *, images: Sequence[Image] = (), plan: bool = False
    ) -> AsyncIterator[AgentEvent]:
        """Type one prompt and yield what appears below it; the last event is a `TurnEnd`.

        ``images`` and ``plan`` are not available on a terminal program and raise
        SessionError. Raises `SessionDied` if the program exits before the turn ends (the
        supervisor is already restarting it). A turn longer than ``claude.turn_timeout_s``
        is interrupted and ends with an error. Only one turn at a time.
        """
        if self._is_turn_active:
            raise RuntimeError("a turn is already running: only the runner sends turns")
        if images or plan:
            raise SessionError("images and /plan are not available on the repl driver")
        if not self.ready.is_set():
            raise SessionError("the repl agent is not running")
        while not self._updates.empty():  # leftovers of earlier output or an earlier process
            self._updates.get_nowait()
        self._is_turn_active = True
        self._was_interrupted = False
        screen = self._screen
        screen.scrolled.clear()
        start_line = screen.cursor.y  # the prompt line: the marker, then the echo
        emitted = 0  # lines of the answer already yielded
        timed_out = False
        deadline = time.monotonic() + self._turn_timeout_s
        try:
            sent_at = time.monotonic()
            await self._write(self._typed(prompt))
            while True:
                lines = screen.text_lines()[start_line:]
                finished = lines[: len(screen.scrolled) + screen.cursor.y - start_line]
                answer = strip_echo("\n".join(finished), prompt)
                if answer is not None and answer:
                    new = answer.split("\n")[emitted:]
                    if new:
                        emitted += len(new)
                        yield TextDelta("\n".join(new) + "\n")
                now = time.monotonic()
                quiet_s = now - max(self._last_output, sent_at)
                has_output = self._last_output > sent_at
                is_marked = has_output and bool(self._marker.search(screen.last_line()))
                if is_marked and quiet_s >= self._settings.idle_s:
                    rest = self._answer_rest(lines, prompt, emitted)
                    if rest:
                        yield TextDelta(rest)
                    result = self._answer_rest(lines, prompt, 0)
                    if timed_out:
                        end = TurnEnd(TurnStatus.ERROR, result, self._timeout_message())
                    elif self._was_interrupted:
                        end = TurnEnd(TurnStatus.INTERRUPTED, result)
                    else:
                        end = TurnEnd(TurnStatus.SUCCESS, result)
                    # Over before the caller reads it: it may stop iterating at the TurnEnd.
                    self._is_turn_active = False
                    yield end
                    return
                if now >= deadline:
                    if timed_out:
                        log.error("the repl agent ignored the interrupt; killing it")
                        self._signal_group(signal.SIGKILL)
                        deadline = float("inf")
                    else:
                        timed_out = True
                        log.warning(
                            "turn timed out after %.0f s; interrupting", self._turn_timeout_s
                        )
                        await self.interrupt()
                        deadline = time.monotonic() + self._grace_s
                    continue
                wait_s = deadline - now
                if is_marked:
                    wait_s = min(wait_s, self._settings.idle_s - quiet_s)
                try:
                    # asyncio.timeout, not wait_for: on 3.11 wait_for can drop a cancellation.
                    async with asyncio.timeout(None if wait_s == float("inf") else wait_s):
                        item = await self._updates.get()
                except TimeoutError:
                    continue
                if isinstance(item, _Exited):
                    if timed_out:
                        self._is_turn_active = False
                        yield TurnEnd(TurnStatus.ERROR, "", self._timeout_message())
                        return
                    raise SessionDied(
                        f"the repl agent exited mid-turn ({item.exit_status}): "
                        f"{item.tail[-300:]}".strip(),
                        exit_status=item.exit_status,
                    )
        finally:
            self._is_turn_active = False

    def _typed(self, prompt: str) -> str:
        """The keys that enter ``prompt``: one bracketed paste when the program turned
        bracketed paste on, else the lines as typed; then Enter."""
        keys = prompt.replace("\r\n", "\n").replace("\n", "\r")
        if _BRACKETED_PASTE_MODE in self._screen.mode:
            return f"{_PASTE_START}{keys}{_PASTE_END}\r"
        return keys + "\r"

    def _answer_rest(self, lines: list[str], prompt: str, emitted: int) -> str:
        """The answer's lines from ``emitted`` on, once the turn is over: everything below
        the echo but the closing marker line."""
        text = "\n".join(lines).rstrip()
        answer = strip_echo(text, prompt)
        if answer is None:  # no echo: all below the prompt line is the answer
            answer = text.partition("\n")[2]
        kept = answer.split("\n")
        if kept and self._marker.search(kept[-1]):
            kept.pop()
        return "\n".join(kept[emitted:]).rstrip()

    async def interrupt(self) -> bool:
        """Press Ctrl-C. Returns False when no turn is running; the turn still ends with its
        `TurnEnd` (INTERRUPTED) once the program shows its marker again."""
        if not self._is_turn_active:
            return False
        self._was_interrupted = True
        await self._write(_CTRL_C)
        return True

    async def answer_tool(self, request: ToolRequest, *, allow: bool, message: str = "") -> None:
        raise SessionError(_NO_APPROVALS)

    async def answer_questions(
        self, request: QuestionRequest, answers: Mapping[str, str] | None, message: str = ""
    ) -> None:
        raise SessionError(_NO_APPROVALS)

    async def answer_plan(
        self, request: PlanRequest, *, approved: bool, feedback: str = ""
    ) -> None:
        raise SessionError(_NO_APPROVALS)

    def _timeout_message(self) -> str:
        return f"the turn took longer than claude.turn_timeout_s ({self._turn_timeout_s:g} s)"


_NO_APPROVALS = (
    "approvals are not available on the repl driver: it never asks before the agent acts"
)


def _write_all(fd: int, data: bytes) -> None:
    while data:
        written = os.write(fd, data)
        data = data[written:]


def _reap(proc: pexpect.spawn) -> None:
    with contextlib.suppress(ChildProcessError, pexpect.ExceptionPexpect):
        proc.wait()
