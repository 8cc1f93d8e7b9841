"""GeminiSession: the `bot.agent.AgentSession` that is the Gemini CLI (@google/gemini-cli
0.61), one headless ``gemini --output-format stream-json`` process per turn.

What the CLI does (read in its bundle, checked against tests/fakes/gemini_api.py):

- **Headless:** stdin is a pipe, so it runs non-interactively: it reads the prompt from
  stdin (it waits 500 ms for the first byte, reads at most 8 MiB) and never prompts. In the
  default approval mode the model is offered no tool that would need approval (no
  ``write_file``, ``replace``, ``run_shell_command``, ``web_fetch``), so the CLI never asks:
  there are no approvals on this driver. ``--approval-mode auto_edit`` or ``--yolo`` in
  ``agent.command`` offer more tools; the CLI honours them only in a trusted folder.
- **Conversation:** the ``init`` line's ``session_id`` is the conversation the CLI records
  under ``$HOME/.gemini/tmp/<project>/chats/`` (per workdir, kept 30 days by default);
  ``--resume <id>`` loads it and keeps that id. The id is adopted from a turn that ended and
  did not fail: a process killed mid-turn may have recorded nothing, and the CLI takes a
  failed turn's prompt back out, so a new conversation whose first turn failed is empty,
  cannot be resumed, and is deleted at the CLI's next start. An id the CLI cannot find
  ends the turn with its reason, and the next turn starts a new conversation.
- **Ending:** a ``result`` line ends a turn; SIGINT ends the process (exit 0) with none,
  and the partial answer is not recorded. Errors the CLI meets before a turn (no key, an
  untrusted folder, an unknown session) exit with its ``FatalError`` codes and a message on
  stderr.
- **Prompt as data:** a leading ``/`` would run one of the CLI's slash commands (``/model
  set X --persist`` rewrites the host's settings) and ``@word`` inlines a workspace file
  matching ``word``; the driver keeps both literal (a space before a leading ``/``, ``\\@``).
  Images go as ``@<file>`` references to 0600 files in a private directory the turn adds
  with ``--include-directories`` and removes afterwards.

The turn that runs owns its process (under bubblewrap when given a `Confinement`);
`interrupt` signals the process group, and `stop` kills it. What the process prints is read
by `agents.gemini_stream`. The party's runner is the only caller of `run`, `interrupt` and
`restart`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Self

from agents.gemini_stream import GeminiTurnParser, parse_line
from agents.program import agent_program
from bot.agent import (
    AgentEvent,
    PlanRequest,
    QuestionRequest,
    SessionDied,
    SessionError,
    ToolRequest,
    TurnEnd,
)
from bot.config import AgentKind, AgentSettings, ClaudeSettings
from bot.confinement import Confinement
from bot.model import Image, TurnStatus
from bot.pace import Backoff, Jitter

__all__ = ["GeminiSession"]

log = logging.getLogger(__name__)

_STREAM_JSON_FLAGS = ("--output-format", "stream-json")
_SKIP_TRUST = "--skip-trust"
# The CLI truncates stdin past this (readStdin's MAX_STDIN_SIZE); a prompt that long fails.
_MAX_STDIN_BYTES = 8 * 1024 * 1024
# One stream-json line (a tool's whole output can be one); a longer one is skipped.
_LINE_LIMIT_BYTES = 16 * 1024 * 1024
_STDERR_TAIL_LINES = 20
_SAID_CHARS = 500
# The CLI's FatalError exit codes (auth 41, input 42, sandbox 44, config 52, turn limit 53,
# tool 54, untrusted folder 55): it refused the turn and said why on stderr. Any other exit
# without a result line is a death (a signal; 1 when the relaunched child was killed).
_REFUSED_EXITS = frozenset({41, 42, 44, 52, 53, 54, 55})
_RESUME_FAILED = "Error resuming session"
# Startup chatter on stderr that never explains a failure.
_STDERR_NOISE = ("[STARTUP]", "Warning: 256-color support", "Ripgrep is not available")
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
# The CLI's at-command syntax: an unescaped @ starts a path (atCommandProcessor.ts).
_AT_SIGN = re.compile(r"(?<!\\)@")
_PATH_SAFE = re.compile(r"[A-Za-z0-9_./-]")
# The CLI tells an image by its file's extension.
_IMAGE_SUFFIXES = {
    "image/png": ".png",
    "image/jpeg": ".jpg",
    "image/gif": ".gif",
    "image/webp": ".webp",
}
_NO_APPROVALS = (
    "approvals are not available on the gemini driver: the Gemini CLI's headless mode never "
    "asks before the agent acts"
)
_NO_PLAN = (
    "/plan is not available on the gemini driver: the Gemini CLI's headless mode cannot ask "
    "for a plan's approval"
)


# -- one turn's process -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Exited:
    """Put on the turn's queue after the last stdout line, once the process is gone."""

    exit_status: int


_WAKE = "wake"  # on the turn's queue: look at the turn's state again (an interrupt came)


class _Process:
    """One turn's CLI process, in a session (and process group) of its own: its stdout lines
    on ``lines`` and then an `_Exited`; its stderr logged, the last lines in ``stderr_tail``.

    The CLI relaunches itself as a child that inherits the pipes, so the end of stdout is
    not the end of the process: the exit of the process started here is. Then the group is
    killed (the orphaned child, a tool's leftovers) and stdout ends.
    """

    def __init__(self, proc: subprocess.Popen[bytes], *, grace_s: float):
        self.proc = proc
        self.lines: asyncio.Queue[Mapping[str, object] | _Exited | str] = asyncio.Queue()
        self.stderr_tail: collections.deque[str] = collections.deque(maxlen=_STDERR_TAIL_LINES)
        self._grace_s = grace_s
        self._feeding: asyncio.Task[None] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._transports: list[asyncio.BaseTransport] = []

    @classmethod
    async def start(
        cls,
        argv: Sequence[str],
        *,
        cwd: Path,
        env: Mapping[str, str],
        stdin_data: bytes,
        grace_s: float,
    ) -> _Process:
        """Spawn ``argv`` and feed it ``stdin_data``; raises OSError when it cannot start."""
        process = cls(_popen(argv, cwd=cwd, env=env), grace_s=grace_s)
        try:
            await process._begin(stdin_data)
        except BaseException:
            await process.close()
            raise
        return process

    @property
    def pid(self) -> int:
        return self.proc.pid

    async def _begin(self, stdin_data: bytes) -> None:
        proc = self.proc
        assert proc.stdin is not None
        assert proc.stdout is not None
        assert proc.stderr is not None
        stdin = proc.stdin
        # The prompt first: the CLI waits only 500 ms for stdin's first byte once it reads.
        self._feeding = asyncio.create_task(
            asyncio.to_thread(_feed, stdin, stdin_data), name="gemini-stdin"
        )
        loop = asyncio.get_running_loop()
        readers = []
        for pipe in (proc.stdout, proc.stderr):
            reader = asyncio.StreamReader(limit=_LINE_LIMIT_BYTES)
            transport, _ = await loop.connect_read_pipe(functools.partial(_protocol, reader), pipe)
            self._transports.append(transport)
            readers.append(reader)
        reading = asyncio.create_task(self._read(readers[0]), name="gemini-stdout")
        self._tasks += [
            reading,
            asyncio.create_task(self._drain(readers[1]), name="gemini-stderr"),
            asyncio.create_task(self._watch(reading), name="gemini-exit"),
        ]

    def signal(self, signum: int) -> None:
        """Send ``signum`` to the process group (nothing when it is gone)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signum)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)

    def wake(self) -> None:
        self.lines.put_nowait(_WAKE)

    async def close(self) -> None:
        """Kill what is left of the group, stop reading, reap the process; idempotent."""
        if self.proc.returncode is None:
            self.kill()
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks)
        for transport in self._transports:
            transport.close()
        # The writer closes stdin itself, once the prompt is in or the pipe broke (the group
        # is dead): closing it here could block the loop on a write still in progress.
        if self._feeding is not None:
            _, pending = await asyncio.wait([self._feeding], timeout=self._grace_s)
            if pending:
                log.warning("the Gemini CLI's stdin is still held open; leaving its writer")
        elif self.proc.stdin is not None:
            self.proc.stdin.close()
        await asyncio.to_thread(self.proc.wait)

    async def _read(self, stdout: asyncio.StreamReader) -> None:
        while True:
            try:
                raw = await stdout.readline()
            except ValueError:  # over _LINE_LIMIT_BYTES: the reader dropped it
                log.warning(
                    "the Gemini CLI printed a line over %d bytes; skipped", _LINE_LIMIT_BYTES
                )
                continue
            if not raw:
                return
            text = raw.decode("utf-8", errors="replace").strip()
            if not text:
                continue
            line = parse_line(text)
            if line is None:
                log.warning("the Gemini CLI printed a line that is not stream-json: %s", text[:300])
                continue
            log.debug("gemini: %s", text[:500])
            self.lines.put_nowait(line)

    async def _drain(self, stderr: asyncio.StreamReader) -> None:
        while True:
            try:
                raw = await stderr.readline()
            except ValueError:
                continue
            if not raw:
                return
            text = _ANSI.sub("", raw.decode("utf-8", errors="replace")).rstrip()
            if not text:
                continue
            log.debug("gemini stderr: %s", text[:500])
            self.stderr_tail.append(text[:500])

    def last_words(self) -> str:
        """What the CLI last said on stderr, on one line: its last two lines that start a
        message (details are indented: a stack, the folder it searched), startup chatter
        left out."""
        said = [
            line
            for line in self.stderr_tail
            if not line[:1].isspace() and not line.startswith(_STDERR_NOISE)
        ]
        return " ".join(said[-2:])[:_SAID_CHARS]

    async def _watch(self, reading: asyncio.Task[None]) -> None:
        status = await asyncio.to_thread(self.proc.wait)
        self.kill()  # the relaunched child, a tool it left running: they hold stdout open
        try:
            async with asyncio.timeout(self._grace_s):
                await asyncio.shield(reading)
        except TimeoutError:
            log.warning("the Gemini CLI's stdout stayed open after it exited; the rest is lost")
        self.lines.put_nowait(_Exited(status))


def _popen(argv: Sequence[str], *, cwd: Path, env: Mapping[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        list(argv),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=cwd,
        env=dict(env),
        start_new_session=True,  # a group of its own: a signal reaches the CLI's tools too
    )


def _protocol(reader: asyncio.StreamReader) -> asyncio.StreamReaderProtocol:
    return asyncio.StreamReaderProtocol(reader)


def _feed(stdin: IO[bytes], data: bytes) -> None:
    """Write the prompt and close stdin (the CLI reads to its end). A CLI that exits before
    reading it all breaks the pipe; its exit says why, not this write."""
    with contextlib.suppress(OSError, ValueError):
        stdin.write(data)
    with contextlib.suppress(OSError, ValueError):
        stdin.close()


# -- the prompt -------------------------------------------------------------------------------


def _stdin_text(prompt: str, images: Sequence[Path]) -> str:
    """What the CLI reads: ``prompt`` kept literal (no slash command, no @-file), then one
    ``@<file>`` reference per image."""
    text = _AT_SIGN.sub(r"\\@", prompt)
    if text.startswith("/"):
        text = " " + text  # isSlashCommand looks at the first character only
    if images:
        text += "\n\n" + " ".join("@" + _escape_path(path) for path in images)
    return text


def _escape_path(path: Path) -> str:
    """``path`` as an @-reference: each character the CLI would end a path at, escaped."""
    return "".join(c if _PATH_SAFE.fullmatch(c) else "\\" + c for c in str(path))


@contextlib.contextmanager
def _image_files(images: Sequence[Image]) -> Iterator[tuple[Path | None, list[Path]]]:
    """The turn's images as 0600 files in a new 0700 directory, removed when the turn is
    over; ``(None, [])`` without images."""
    if not images:
        yield None, []
        return
    directory = Path(tempfile.mkdtemp(prefix="concordia-gemini-"))
    try:
        paths = []
        for n, image in enumerate(images, 1):
            path = directory / f"image-{n}{_IMAGE_SUFFIXES.get(image.media_type, '.png')}"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as file:
                file.write(image.data)
            paths.append(path)
        yield directory, paths
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _is_session_id(value: str) -> bool:
    """The CLI's ids are UUIDs; anything else on ``--resume`` could pick another session
    ("latest", an index) or read as a flag."""
    try:
        return str(uuid.UUID(value)) == value.lower()
    except ValueError:
        return False


# -- the session ------------------------------------------------------------------------------


class GeminiSession:
    """The Gemini CLI behind one party; a `bot.agent.AgentSession`.

    No process lives between turns: ``ready`` is set once `start` has seen the CLI answer
    ``--version``, and each `run` starts one. ``session_id`` is the conversation the next
    turn resumes; ``restarts`` counts turns whose process died. Use as an async context
    manager; `stop` is idempotent.
    """

    def __init__(
        self,
        agent: AgentSettings,
        claude: ClaudeSettings,
        *,
        session_id: str | None,
        env: Mapping[str, str],
        confinement: Confinement,
    ):
        """``confinement``: the CLI runs under its bubblewrap (`Confinement.wrap`), where the
        denied paths show nothing (when the OS sandbox is on)."""
        if agent.kind is not AgentKind.GEMINI:
            raise ValueError(f'GeminiSession needs agent.kind = "gemini", got {agent.kind!r}')
        self._agent = agent
        self._claude = claude
        self._confinement = confinement
        self._backoff = Backoff(
            claude.restart_backoff_s, claude.restart_backoff_max_s, jitter=Jitter.EQUAL
        )
        self._env = dict(env)
        if session_id is not None and not _is_session_id(session_id):
            log.warning("%r is no Gemini CLI session id; starting a new conversation", session_id)
            session_id = None
        self.session_id = session_id
        self.ready = asyncio.Event()
        self.restarts = 0
        self._argv: list[str] = []
        self._private: Path | None = None  # `_make_private`
        self._process: _Process | None = None
        self._parser: GeminiTurnParser | None = None
        self._is_turn_active = False
        self._is_started = False
        self._ended = asyncio.Event()
        self._failure: SessionError | None = None
        self._not_before = 0.0  # time.monotonic() before which no turn starts (backoff)

    @property
    def pid(self) -> int | None:
        """The running turn's process (the CLI's launcher); None between turns."""
        return self._process.pid if self._process is not None else None

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
        """Find the CLI and check that it runs (``--version``, in the agent's environment
        and workdir); raises SessionError saying how to fix it when it does not."""
        if self._is_started:
            raise RuntimeError("the session is already started")
        self._argv = self._command()
        self._make_private()
        version = await self._version()
        log.info("the Gemini CLI %s is ready", version, extra={"command": self._argv[0]})
        self._is_started = True
        self.ready.set()

    def _command(self) -> list[str]:
        """The CLI and the host's extra arguments, its path absolute (turns run elsewhere).
        ``--skip-trust``: headless, the CLI refuses a folder not trusted, and the host
        trusted ``claude.workdir`` by giving it to Concordia's agent (Claude's `-p` does not
        ask either)."""
        program = agent_program(self._agent, self._claude)
        return [os.path.abspath(program.require()), _SKIP_TRUST, *program.argv[1:]]

    async def _version(self) -> str:
        try:
            proc = await asyncio.create_subprocess_exec(
                *self._wrap([*self._argv, "--version"]),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                cwd=self._claude.workdir,
                env=self._env,
                start_new_session=True,
            )
        except OSError as exc:
            raise SessionError(f"could not start {self._argv[0]!r}: {exc}") from None
        try:
            async with asyncio.timeout(self._claude.turn_timeout_s):
                out, err = await proc.communicate()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
            raise SessionError(
                f"{self._argv[0]!r} --version did not answer within claude.turn_timeout_s "
                f"({self._claude.turn_timeout_s:g} s)"
            ) from None
        if proc.returncode != 0:
            said = _ANSI.sub("", (err or out).decode(errors="replace")).strip()[-300:]
            raise SessionError(
                f"{self._argv[0]!r} --version failed (exit {proc.returncode}): {said}; the "
                "Gemini CLI needs Node.js 20+ on the agent's PATH (make gemini installs it)"
            )
        return out.decode(errors="replace").strip()

    def _wrap(self, argv: list[str]) -> list[str]:
        return self._confinement.wrap(argv)

    def _make_private(self) -> None:
        """A temp folder of this session's own (0700): the CLI writes a report of each
        failed API call, the conversation in it, readable by all (0644) into ``$TMPDIR``."""
        private = Path(tempfile.mkdtemp(prefix="concordia-gemini-"))
        self._private = private
        self._env["TMPDIR"] = str(private)

    async def serve(self) -> None:
        """Wait while the CLI can take turns; raise what ended that (it could no longer be
        started). Returns once stopped; cancelling it changes nothing."""
        if not self._is_started:
            raise RuntimeError("GeminiSession.serve() before start()")
        await self._ended.wait()
        if self._failure is not None:
            raise self._failure

    async def stop(self) -> None:
        """Take no more turns; a running turn's process group is killed (that turn raises
        SessionDied). Idempotent."""
        self.ready.clear()
        self._ended.set()
        if self._process is not None:
            self._process.kill()
        if self._private is not None:
            shutil.rmtree(self._private, ignore_errors=True)
            self._private = None

    async def restart(self, *, fresh: bool) -> None:
        """Between turns no process runs, so there is nothing to restart: ``fresh`` forgets
        the conversation (the next turn starts a new one)."""
        if self._is_turn_active:
            raise RuntimeError("restart() while a turn runs: interrupt it first")
        if fresh:
            self.session_id = None

    # -- turns ----------------------------------------------------------------------------

    async def run(
        self, prompt: str, *, images: Sequence[Image] = (), plan: bool = False
    ) -> AsyncIterator[AgentEvent]:
        """Run one turn in a new CLI process and yield its events; the last is a `TurnEnd`.

        ``images`` reach the model as files the prompt references; ``plan`` is not
        available (SessionError). Raises `SessionDied` when the process dies before the
        turn ends (the next turn starts another), and `SessionError` when the turn cannot
        start. A turn longer than ``claude.turn_timeout_s`` is interrupted and ends with an
        error. Only one turn at a time.
        """
        if plan:
            raise SessionError(_NO_PLAN)
        if self._is_turn_active:
            raise RuntimeError("a turn is already running: only the runner sends turns")
        if not self.ready.is_set():
            raise SessionError("the Gemini CLI is not running")
        self._is_turn_active = True
        parser = self._parser = GeminiTurnParser()
        try:
            wait_s = self._not_before - time.monotonic()
            if wait_s > 0:
                await asyncio.sleep(wait_s)  # pacing: the restart backoff after a death
            if parser.was_interrupted:
                self._is_turn_active = False
                yield self._finish(TurnEnd(TurnStatus.INTERRUPTED, ""), parser)
                return
            with _image_files(images) as (image_dir, image_paths):
                resumed = self.session_id
                process = await self._spawn(prompt, resumed, image_dir, image_paths)
                async with contextlib.aclosing(self._follow(process, parser, resumed)) as events:
                    async for event in events:
                        if isinstance(event, TurnEnd):
                            self._is_turn_active = False  # over before the caller reads it
                        yield event
        finally:
            self._is_turn_active = False
            self._parser = None

    async def _spawn(
        self, prompt: str, resumed: str | None, image_dir: Path | None, image_paths: list[Path]
    ) -> _Process:
        data = _stdin_text(prompt, image_paths).encode()
        if len(data) > _MAX_STDIN_BYTES:
            raise SessionError(
                f"the prompt is {len(data)} bytes: the Gemini CLI reads at most "
                f"{_MAX_STDIN_BYTES} bytes from stdin and would cut the rest"
            )
        argv = [*self._argv, *_STREAM_JSON_FLAGS]
        if resumed:
            argv += ["--resume", resumed]
        if image_dir is not None:
            argv += ["--include-directories", str(image_dir)]
        try:
            process = await _Process.start(
                self._wrap(argv),
                cwd=self._claude.workdir,
                env=self._env,
                stdin_data=data,
                grace_s=self._claude.interrupt_grace_s,
            )
        except OSError as exc:
            error = SessionError(f"could not start the Gemini CLI {self._argv[0]!r}: {exc}")
            self._failure = error  # for good: serve ends the run with it
            self.ready.clear()
            self._ended.set()
            raise error from None
        self._process = process
        log.info("gemini turn started", extra={"resume": bool(resumed), "pid": process.pid})
        return process

    async def _follow(
        self, process: _Process, parser: GeminiTurnParser, resumed: str | None
    ) -> AsyncGenerator[AgentEvent, None]:
        """The events of ``process``'s turn, then its `TurnEnd`; raises SessionDied."""
        grace_s = self._claude.interrupt_grace_s
        deadline: float | None = time.monotonic() + self._claude.turn_timeout_s
        kill_at: float | None = None  # SIGINT was sent (or the result came): kill after this
        timed_out = False
        end: TurnEnd | None = None
        try:
            while True:
                now = time.monotonic()
                if parser.was_interrupted and kill_at is None:
                    process.signal(signal.SIGINT)  # the CLI shuts down, printing no result
                    kill_at = now + grace_s
                if kill_at is not None and now >= kill_at:
                    log.error("the Gemini CLI did not exit; killing it")
                    process.kill()
                    kill_at = deadline = None  # only its exit is awaited now
                elif deadline is not None and now >= deadline:
                    log.warning(
                        "turn timed out after %.0f s; interrupting it",
                        self._claude.turn_timeout_s,
                    )
                    timed_out, deadline = True, None
                    parser.was_interrupted = True
                    continue
                wake_at = min((t for t in (deadline, kill_at) if t is not None), default=None)
                try:
                    # asyncio.timeout, not wait_for: on 3.11 wait_for can drop a cancellation.
                    async with asyncio.timeout(None if wake_at is None else wake_at - now):
                        item = await process.lines.get()
                except TimeoutError:
                    continue
                if isinstance(item, _Exited):
                    exit_status = item.exit_status
                    break
                if isinstance(item, str):  # woken: an interrupt came
                    continue
                for event in parser.feed(item):
                    if not isinstance(event, TurnEnd):
                        yield event
                        continue
                    end = event
                    if kill_at is None:  # the CLI exits after its result; a stuck cleanup is cut
                        kill_at = time.monotonic() + grace_s
        finally:
            self._process = None
            await process.close()
        said = process.last_words()
        yield self._finish(self._ending(end, parser, exit_status, said, timed_out, resumed), parser)

    def _ending(
        self,
        end: TurnEnd | None,
        parser: GeminiTurnParser,
        exit_status: int,
        said: str,
        timed_out: bool,
        resumed: str | None,
    ) -> TurnEnd:
        """How the turn ended, from its result line (if any), the process's exit and what it
        last said on stderr; raises SessionDied when it died."""
        if timed_out:
            usage = end.usage if end is not None else None
            return TurnEnd(TurnStatus.ERROR, parser.text, self._timeout_message(), usage)
        if end is not None:
            return end
        if parser.was_interrupted:
            return TurnEnd(TurnStatus.INTERRUPTED, parser.text)
        said = said or f"no reason given (exit {exit_status})"
        if exit_status in _REFUSED_EXITS and not self._ended.is_set():
            if resumed and _RESUME_FAILED in said:
                self.session_id = None
                said += " (the next turn starts a new conversation)"
            return TurnEnd(TurnStatus.ERROR, "", f"the Gemini CLI refused the turn: {said}")
        if not self._ended.is_set():
            self.restarts += 1
            self._not_before = time.monotonic() + self._backoff.delay()
        raise SessionDied(
            f"the Gemini CLI exited mid-turn ({exit_status}): {said}", exit_status=exit_status
        )

    def _finish(self, end: TurnEnd, parser: GeminiTurnParser) -> TurnEnd:
        """The turn is over: adopt the conversation it ran in unless it failed (the CLI takes
        a failed turn's prompt back out, and a conversation left empty cannot be resumed);
        deaths in a row end here."""
        if parser.session_id and end.status is not TurnStatus.ERROR:
            self.session_id = parser.session_id
        self._backoff.reset()
        log.info("gemini turn ended: %s", end.status.value)
        return end

    async def interrupt(self) -> bool:
        """Stop the running turn: SIGINT to its process group, on which the CLI shuts down
        (it prints no result line); the turn ends INTERRUPTED with the text so far, and a
        CLI still running ``claude.interrupt_grace_s`` later is killed. False when no turn
        runs."""
        parser = self._parser
        if not self._is_turn_active or parser is None:
            return False
        parser.was_interrupted = True
        if self._process is not None:
            self._process.wake()  # the turn sends the signal: it owns the process
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
        return (
            f"the turn took longer than claude.turn_timeout_s ({self._claude.turn_timeout_s:g} s)"
        )
