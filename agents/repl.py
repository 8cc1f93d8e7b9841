"""ReplSession: the `bot.agent.AgentSession` that is any interactive terminal program
(``agent.command``) on a pty, its screen rendered by a terminal emulator (pyte).

The program waits for input where ``agent.prompt_marker`` matches the line the cursor is on
(a TUI keeps its input line above a footer) or the last non-empty line. A turn types the
prompt, presses Enter once the screen has settled, and ends once the output has been quiet
for ``agent.idle_s`` AND the marker shows (a marker seen while output goes on is not the
end). The answer is what the turn changed above the input line, less the echo of the
prompt: what stayed as it was at the top (earlier output) and just above the input line (an
input box's frame, a status row), and all below the input line (a footer), is the program's
own. The session's supervisor task owns the process: it spawns it, feeds every byte to the
screen, sends ``agent.startup``, and restarts it with backoff when it dies. The party's
runner is the only caller of `run`, `interrupt` and `restart`. The driver never asks before
the agent acts: there are no approvals on it.
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

from agents.program import agent_program
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
from bot.confinement import Confinement
from bot.model import Image, TurnStatus
from bot.supervisor import Lifeline

__all__ = ["ReplSession", "strip_echo"]

log = logging.getLogger(__name__)

_READ_CHUNK_BYTES = 65536
# A canonical pty line holds at most 4095 bytes; 1000 characters are at most 4000 bytes.
_WRITE_CHUNK_CHARS = 1000
_CTRL_C = "\x03"
_ENTER = "\r"
# Kill the line (the tty's VKILL, readline's unix-line-discard), then Backspace (the tty's
# VERASE, as xterm sends it), which joins a multi-line input's line to the one above.
_KILL_LINE, _BACKSPACE = "\x15", "\x7f"
_PASTE_START, _PASTE_END = "\x1b[200~", "\x1b[201~"
_BRACKETED_PASTE_MODE = 2004 << 5  # how pyte keeps the private mode ?2004 (DEC modes << 5)
_ALTERNATE_SCREEN_MODE = 1049 << 5
# A program may elide the middle of a long echo (Claude Code's TUI shows "(N lines hidden)")
# but shows its end: these many of the prompt's last letters and digits mark where it ends.
_ECHO_TAIL_CHARS = 200


@dataclass(frozen=True, slots=True)
class _Exited:
    """Put on the update queue by the supervisor when the process is gone."""

    exit_status: int | None
    tail: str


_CHANGED = "changed"  # on the update queue: the screen changed


def strip_echo(text: str, prompt: str) -> str | None:
    """``text`` (what appeared from the prompt line on) without the program's echo of
    ``prompt``, which runs to the end of its line. Only letters and digits count: the echo
    may be wrapped, indented, hold prompt markers and continuation marks, or be rendered
    (Claude Code's TUI drops Markdown's code fences from it). For a prompt of more than 200
    of them, the echo ends where its last 200 first appear in a row (its middle may be
    elided); else at the shortest start of ``text`` holding all of them in order. None
    while the echo may still be arriving; ``text`` as it is when it plainly holds no echo
    (the program does not echo)."""
    wanted = "".join(c for c in prompt if c.isalnum())
    limit = 2 * len(prompt) + 200  # an echo is at most the prompt plus markers and wraps
    last = _run_end(text, wanted[-_ECHO_TAIL_CHARS:]) if len(wanted) > _ECHO_TAIL_CHARS else -1
    if last < 0:
        last = _subsequence_end(text[: limit + 1], wanted)
    if last < 0:
        return None if len(text) <= limit else text
    end = text.find("\n", last)
    return "" if end < 0 else text[end + 1 :]


def _subsequence_end(text: str, wanted: str) -> int:
    """Where in ``text`` the last of ``wanted``'s characters, found in order, is; -1 when
    they are not all there."""
    if not wanted:
        return 0
    i = 0
    for pos, char in enumerate(text):
        if char == wanted[i]:
            i += 1
            if i == len(wanted):
                return pos
    return -1


def _run_end(text: str, wanted: str) -> int:
    """Where in ``text`` the first run of ``wanted`` (letters and digits only: anything
    else between its characters skipped) ends; -1 when there is none."""
    places = [pos for pos, char in enumerate(text) if char.isalnum()]
    found = "".join(text[pos] for pos in places).find(wanted)
    return -1 if found < 0 else places[found + len(wanted) - 1]


def _changed(before: list[str], after: list[str]) -> tuple[int, int]:
    """The span of ``after`` that differs from ``before``: past their common start, short
    of their common end (which never reaches into the common start)."""
    start = 0
    while start < min(len(before), len(after)) and before[start] == after[start]:
        start += 1
    end_before, end = len(before), len(after)
    while start < min(end_before, end) and before[end_before - 1] == after[end - 1]:
        end_before -= 1
        end -= 1
    return start, end


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

    def last_row(self) -> int:
        """The row of the last non-empty line on the screen (0 when it is blank)."""
        rows = self.display
        return next((y for y in range(len(rows) - 1, -1, -1) if rows[y].strip()), 0)

    def draws_below_cursor(self) -> bool:
        """Whether anything shows below the cursor's line: a TUI's footer under its input
        line, where a REPL has nothing below the line it writes."""
        return any(line.strip() for line in self.display[self.cursor.y + 1 :])


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
        confinement: Confinement,
    ):
        if not settings.command:
            raise ValueError("ReplSession needs agent.command")
        self._settings = settings
        self._workdir: Path = claude.workdir
        self._turn_timeout_s = claude.turn_timeout_s
        self._grace_s = claude.interrupt_grace_s
        self._lifeline = Lifeline(
            "the repl agent",
            backoff_s=claude.restart_backoff_s,
            backoff_max_s=claude.restart_backoff_max_s,
        )
        self._confinement = confinement
        self._claude = claude
        self._env = {"TERM": "xterm-256color", **env}
        self._marker = re.compile(settings.prompt_marker)
        self.session_id: str | None = None
        self.ready = asyncio.Event()
        self._proc: pexpect.spawn | None = None
        self._screen = _Screen(settings.columns, settings.rows)
        self._stream = pyte.Stream(self._screen)
        self._last_output = 0.0  # time.monotonic() of the last byte read
        self._updates: asyncio.Queue[str | _Exited] = asyncio.Queue()
        self._write_lock = asyncio.Lock()
        self._supervisor: asyncio.Task[None] | None = None
        self._is_turn_active = False
        self._was_interrupted = False

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def restarts(self) -> int:
        return self._lifeline.restarts

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
        self._lifeline.is_stopping = True
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
        self._lifeline.plan_restart()
        self._signal_group(signal.SIGHUP)

    # -- the process ----------------------------------------------------------------------

    def _spawn(self) -> pexpect.spawn:
        command = self._settings.command
        log.info("starting the repl agent", extra={"command": command[0]})
        path = agent_program(self._settings, self._claude).require()
        argv = self._confinement.wrap([path, *command[1:]])
        try:
            proc = pexpect.spawn(
                argv[0],
                argv[1:],
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

    def _input_row(self) -> int | None:
        """The screen row where the program waits for input: the cursor's line when the
        marker matches it, else the last non-empty line when it matches that; None when
        the marker shows on neither."""
        screen = self._screen
        for row in (screen.cursor.y, screen.last_row()):
            if self._marker.search(screen.display[row].rstrip()):
                return row
        return None

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
            if not await self._lifeline.after_exit(exit_status, time.monotonic() - started, tail):
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
        is_full_screen = False
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
                if not is_full_screen and _ALTERNATE_SCREEN_MODE in self._screen.mode:
                    is_full_screen = True
                    log.warning(
                        "the repl agent switched to the alternate screen: a full-screen "
                        "program redraws what fits on it, so a longer answer comes back cut; "
                        "run it inline if it can (Claude Code: CLAUDE_CODE_DISABLE_ALTERNATE_"
                        "SCREEN=1 in claude.env)"
                    )
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
        """The screen settled before the program was ready: be ready if the marker shows,
        else send the next startup key. The keys answer what stands before the prompt; a
        restarted program that remembers their answers asks nothing, and keys sent to its
        prompt could recall and resend an earlier one. Raises SessionError past
        ``deadline``."""
        if self._input_row() is not None:
            self.ready.set()
        elif startup:
            await self._write(startup.pop(0))
            self._last_output = time.monotonic()
        elif time.monotonic() > deadline:
            rows = self._screen.display
            cursor_line = rows[self._screen.cursor.y].rstrip()[-80:]
            last_line = rows[self._screen.last_row()].rstrip()[-80:]
            raise SessionError(
                f"agent.prompt_marker {self._settings.prompt_marker!r} matched neither the "
                f"cursor's line {cursor_line!r} nor the screen's last line {last_line!r} "
                f"within claude.turn_timeout_s ({self._turn_timeout_s:g} s) of starting "
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
        """Type one prompt and yield its answer as it becomes final; the last event is a
        `TurnEnd`, whose ``result`` is all the deltas joined.

        A line is final once it is above the cursor of a program that writes where its
        cursor is (a REPL); on one that draws below its input line (a TUI, redrawing its
        screen at will), once it has scrolled off the screen; the rest when the turn ends.
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
        before = screen.text_lines()[: screen.cursor.y]  # what stood above the input line
        is_boxed = screen.draws_below_cursor()
        answer: list[str] = []  # the answer's lines already yielded
        marked_at: float | None = None  # when the marker last began to show
        timed_out = False
        deadline = time.monotonic() + self._turn_timeout_s
        try:
            sent_at = await self._enter(prompt, deadline)
            keys_at = sent_at  # when keys last went in: quiet counts from then
            while True:
                now = time.monotonic()
                quiet_s = now - max(self._last_output, keys_at)
                is_quiet = quiet_s >= self._settings.idle_s
                # The marker counts once the program answered Enter, or was interrupted
                # (cut before Enter, it has nothing to answer).
                has_output = self._last_output > sent_at or self._was_interrupted
                input_row = self._input_row() if has_output else None
                if input_row is None:
                    marked_at = None
                elif marked_at is None:
                    marked_at = self._last_output  # the update that showed the marker
                is_over = input_row is not None and is_quiet
                # Mid-frame a TUI's cursor may be anywhere: once it drew below, it does.
                is_boxed = is_boxed or screen.draws_below_cursor()
                lines = screen.text_lines()
                top = len(screen.scrolled)
                row = screen.cursor.y if input_row is None else input_row
                start, end = _changed(before, lines[: top + row])
                if is_boxed and not is_over:
                    end = min(end, max(start, top))
                final = _answer(lines[start:end], prompt, is_over)
                if len(final) > len(answer):
                    new = "\n".join(final[len(answer) :])
                    yield TextDelta(f"\n{new}" if answer else new)
                    answer += final[len(answer) :]
                if is_over:
                    assert marked_at is not None
                    # The completion detection's delay: from the program done (its last
                    # output, the marker showing) to the turn's end; idle_s and a little.
                    done_s = now - max(marked_at, self._last_output)
                    log.debug("turn over %.3f s after the program was done", done_s)
                    result = "\n".join(answer)
                    if timed_out:
                        turn_end = TurnEnd(TurnStatus.ERROR, result, self._timeout_message())
                    elif self._was_interrupted:
                        turn_end = TurnEnd(TurnStatus.INTERRUPTED, result)
                    else:
                        turn_end = TurnEnd(TurnStatus.SUCCESS, result)
                    # Over before the caller reads it: it may stop iterating at the TurnEnd.
                    self._is_turn_active = False
                    yield turn_end
                    return
                if self._was_interrupted and input_row is None and is_quiet:
                    # An interrupted program may put the prompt back on its input line for
                    # editing (Claude Code's TUI does when it had no answer yet): kill it,
                    # line by line, so that the next prompt is not typed after it.
                    await self._write((_KILL_LINE + _BACKSPACE) * (prompt.count("\n") + 1))
                    keys_at = time.monotonic()
                    continue
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
                if input_row is not None or self._was_interrupted:
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
                    raise _died(item)
        finally:
            self._is_turn_active = False

    async def _enter(self, prompt: str, deadline: float) -> float:
        """Type ``prompt``, then press Enter once the screen has settled (a TUI takes a long
        paste in many reads and counts an Enter that comes amid them as part of it); the
        time just before Enter went. Raises SessionDied if the program exits meanwhile."""
        await self._write(self._typed(prompt))
        typed_at = time.monotonic()
        while True:
            now = time.monotonic()
            quiet_s = now - max(self._last_output, typed_at)
            if quiet_s >= self._settings.idle_s or now >= deadline:
                break
            try:
                async with asyncio.timeout(min(self._settings.idle_s - quiet_s, deadline - now)):
                    item = await self._updates.get()
            except TimeoutError:
                continue
            if isinstance(item, _Exited):
                raise _died(item)
        entered_at = time.monotonic()  # before: the answer may come while the write returns
        if not self._was_interrupted:  # a turn cut before Enter is not entered
            await self._write(_ENTER)
        return entered_at

    def _typed(self, prompt: str) -> str:
        """The keys that type ``prompt``, Enter aside: one bracketed paste when the program
        turned bracketed paste on, else the lines as typed."""
        keys = prompt.replace("\r\n", "\n").replace("\n", _ENTER)
        if _BRACKETED_PASTE_MODE in self._screen.mode:
            return f"{_PASTE_START}{keys}{_PASTE_END}"
        return keys

    async def interrupt(self) -> bool:
        """Press Ctrl-C (the terminal's interrupt: a REPL's KeyboardInterrupt, a TUI's
        stop). Returns False when no turn is running; the turn still ends with its
        `TurnEnd` (INTERRUPTED) once the program shows its marker again, the prompt killed
        first if the program put it back on its input line."""
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


def _answer(region: list[str], prompt: str, is_over: bool) -> list[str]:
    """The answer's lines in ``region`` (the lines the turn changed, from the prompt line
    on): below the echo, without blank lines around them (a blank line waits for the line
    after it). None of it while the echo may still be arriving; once the turn ``is_over``
    with no echo found, all below the prompt line."""
    text = strip_echo("\n".join(region), prompt)
    if text is None and not is_over:
        return []
    lines = region[1:] if text is None else text.split("\n")
    kept = [n for n, line in enumerate(lines) if line.strip()]
    return lines[kept[0] : kept[-1] + 1] if kept else []


def _died(exited: _Exited) -> SessionDied:
    return SessionDied(
        f"the repl agent exited mid-turn ({exited.exit_status}): {exited.tail[-300:]}".strip(),
        exit_status=exited.exit_status,
    )


def _write_all(fd: int, data: bytes) -> None:
    while data:
        written = os.write(fd, data)
        data = data[written:]


def _reap(proc: pexpect.spawn) -> None:
    with contextlib.suppress(ChildProcessError, pexpect.ExceptionPexpect):
        proc.wait()
