"""ClaudeSession: the `bot.agent.AgentSession` that is one `claude -p` stream-json process,
driven through pexpect over pipes.

Pipes, not a pty: with a tty on stdin `claude -p` refuses to start, and a canonical
pty cuts input lines at 4095 bytes. The reading side is `pexpect.fdpexpect.fdspawn`
on the stdout pipe, whose `expect(async_=True)` is event-driven; `PopenSpawn` reads
through a thread and its expect loop polls every 0.1 ms, which would burn a core
while Claude thinks. The session's supervisor task owns the process: it spawns it,
reads every line, and restarts it with `--resume <session_id>` when it dies.
The party's runner is the only caller of `run`, `interrupt` and `restart`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import signal
import subprocess
import time
from collections import deque
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import IO, Self

import pexpect
import pexpect.fdpexpect

from bot.agent import (
    AgentEvent,
    PlanRequest,
    QuestionRequest,
    SessionDied,
    SessionError,
    ToolRequest,
    TurnEnd,
)
from bot.config import ClaudeSettings
from bot.confinement import Confinement
from bot.model import Image, TurnStatus
from bot.stream_json import StreamLine, TurnParser, parse_line
from bot.supervisor import Lifeline

# The events are `bot.agent`'s; they are re-exported for callers driving a session directly.
__all__ = ["ClaudeSession", "stream_json_command"]

log = logging.getLogger(__name__)

_STREAM_JSON_FLAGS = (
    "-p",
    "--input-format",
    "stream-json",
    "--output-format",
    "stream-json",
    "--verbose",
    "--include-partial-messages",
    # Tool calls Claude's own rules do not settle are asked over the control channel.
    "--permission-prompt-tool",
    "stdio",
)
_READ_CHUNK_BYTES = 65536
# Writes this small fit in an empty pipe buffer (64 kB on Linux) and cannot block.
_INLINE_WRITE_BYTES = 16384
_TAIL_LINES = 20
# A process that lived this long before dying starts the restart backoff afresh: it is a new
# failure, not the next of a crash loop.


@dataclass(frozen=True, slots=True)
class _Exited:
    """Put on the line queue by the supervisor when the process is gone."""

    exit_status: int | None
    tail: str


def stream_json_command(
    settings: ClaudeSettings, session_id: str | None, confinement: Confinement
) -> list[str]:
    command = [settings.command, *_STREAM_JSON_FLAGS]
    if settings.permission_mode:
        command += ["--permission-mode", settings.permission_mode]
    if settings.allowed_tools:
        command += ["--allowedTools", *settings.allowed_tools]
    if settings.disallowed_tools:
        command += ["--disallowedTools", *settings.disallowed_tools]
    command += settings.args
    # The CLI keeps one --settings, the last: claude.args may not hold one (bot.config).
    command += ["--settings", confinement.cli_settings()]
    if session_id:
        command += ["--resume", session_id]
    return command


class ClaudeSession:
    """The Claude process behind one party; a `bot.agent.AgentSession`.

    ``ready`` is set while a process is up and able to take a turn. ``restarts`` counts
    unplanned exits. Use as an async context manager; `stop` is idempotent.
    """

    def __init__(
        self,
        settings: ClaudeSettings,
        *,
        session_id: str | None,
        env: Mapping[str, str],
        confinement: Confinement,
    ):
        self._settings = settings
        self._env = dict(env)
        self._confinement = confinement
        self.session_id = session_id
        self.ready = asyncio.Event()
        self._lifeline = Lifeline(
            "claude",
            backoff_s=settings.restart_backoff_s,
            backoff_max_s=settings.restart_backoff_max_s,
        )
        self._lines: asyncio.Queue[StreamLine | _Exited] = asyncio.Queue()
        self._proc: subprocess.Popen[bytes] | None = None
        self._write_lock = asyncio.Lock()
        self._supervisor: asyncio.Task[None] | None = None
        self._is_turn_active = False
        self._start_fresh = False
        self._parser = TurnParser()
        self._process_cost_usd = 0.0  # what this process's turns cost so far
        self._mode = self._configured_mode  # the process's permission mode, as it last said
        self._controls_sent = 0
        self._tail: deque[str] = deque(maxlen=_TAIL_LINES)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

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
        """Spawn the process; returns once it is ready. Raises SessionError if it cannot start."""
        if self._supervisor is not None:
            raise RuntimeError("the session is already started")
        self._spawn()  # the first spawn raises here, so a wrong claude.command is reported at once
        self._supervisor = asyncio.create_task(self._supervise(), name="claude-supervisor")

    async def serve(self) -> None:
        """Wait while the supervisor keeps Claude running; raise what ended it (a respawn that
        failed). For the composition root's task group: a party whose Claude is gone for good
        must end the run with the reason, not leave its runner waiting. Cancelling it leaves
        the supervisor running (`stop` ends it)."""
        if self._supervisor is None:
            raise RuntimeError("ClaudeSession.serve() before start()")
        await asyncio.shield(self._supervisor)

    async def stop(self) -> None:
        """Close stdin, give the process a moment to exit, then kill its process group."""
        self._lifeline.is_stopping = True
        if self._proc is not None:
            await self._terminate(self._proc)
        if self._supervisor is not None:
            self._supervisor.cancel()
            # Its error, if it died, went to whoever awaited `serve` (the run ends with it).
            await asyncio.wait([self._supervisor])
            if not self._supervisor.cancelled() and self._supervisor.exception() is not None:
                log.warning("claude's supervisor had stopped: %s", self._supervisor.exception())
            self._supervisor = None

    async def restart(self, *, fresh: bool) -> None:
        """End the current process and start another; ``fresh`` starts a new conversation."""
        if self._is_turn_active:
            raise RuntimeError("restart() while a turn runs: interrupt it first")
        self._start_fresh = fresh
        self._lifeline.plan_restart()
        if self._proc is not None:
            await self._terminate(self._proc)

    # -- the process ----------------------------------------------------------------------

    @property
    def _configured_mode(self) -> str:
        return self._settings.permission_mode or "default"

    def _spawn(self) -> None:
        self._process_cost_usd = 0.0  # a new process counts its cost from zero
        self._mode = self._configured_mode
        if self._start_fresh:
            self.session_id = None
            self._start_fresh = False
        command = stream_json_command(self._settings, self.session_id, self._confinement)
        log.info("starting claude", extra={"command": command[0], "resume": bool(self.session_id)})
        try:
            # A session of its own, so that killing the group also ends the tools Claude ran.
            self._proc = subprocess.Popen(
                command,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                cwd=self._settings.workdir,
                env=self._env,
                start_new_session=True,
            )
        except FileNotFoundError:
            raise SessionError(
                f"claude.command {self._settings.command!r} was not found: install Claude Code "
                "(make run does) or set claude.command to its path"
            ) from None
        except OSError as exc:
            raise SessionError(f"could not start {self._settings.command!r}: {exc}") from None
        self.ready.set()

    async def _supervise(self) -> None:
        while True:
            proc = self._proc
            assert proc is not None
            assert proc.stdout is not None
            started = time.monotonic()
            # The reader owns a duplicate of the pipe and closes it; closing the original
            # too would close whatever fd number the next process's pipe reuses.
            fd = os.dup(proc.stdout.fileno())
            proc.stdout.close()
            await self._pump(fd)
            self.ready.clear()
            exit_status = await asyncio.to_thread(proc.wait)
            tail = "\n".join(self._tail)
            self._lines.put_nowait(_Exited(exit_status, tail))
            if not await self._lifeline.after_exit(exit_status, time.monotonic() - started, tail):
                return
            self._spawn()

    async def _pump(self, fd: int) -> None:
        """Read stdout line by line until EOF, handing JSON lines to the running turn."""
        reader = pexpect.fdpexpect.fdspawn(
            fd, encoding="utf-8", codec_errors="replace", maxread=_READ_CHUNK_BYTES
        )
        try:
            while True:
                index = await reader.expect_exact(["\n", pexpect.EOF], timeout=None, async_=True)
                line = reader.before
                if index == 1:
                    if line.strip():
                        self._note_text(line)
                    return
                self._route(line)
        finally:
            # The transport that pexpect's async expect opened on the fd is left to us.
            pair = getattr(reader, "async_pw_transport", None)
            if pair is not None:
                pair[1].close()

    def _route(self, line: str) -> None:
        line = line.strip()
        if not line:
            return
        message = parse_line(line)
        if message is None:
            self._note_text(line)
            return
        if message.get("type") == "result" and message.get("session_id"):
            # Only a finished turn's conversation is on disk to resume: a CLI killed during
            # its first turn saved nothing, and `--resume` of its id fails.
            self.session_id = str(message["session_id"])
        if isinstance(mode := message.get("permissionMode"), str):
            self._mode = mode  # it changes by itself: an approved plan leaves plan mode
        if self._is_turn_active:
            self._lines.put_nowait(message)
        elif message.get("type") not in ("control_response",):
            log.debug("claude said something between turns", extra={"line": line[:200]})

    def _note_text(self, text: str) -> None:
        """Non-JSON output (warnings, API errors in some versions): kept for error messages."""
        for line in text.splitlines():
            if line.strip():
                self._tail.append(line.strip()[:500])
                log.warning("claude: %s", line.strip()[:500])

    async def _write(self, message: Mapping[str, object]) -> None:
        proc = self._proc
        if proc is None or proc.stdin is None:
            raise SessionError("claude is not running")
        data = (json.dumps(message, ensure_ascii=False) + "\n").encode()
        stdin = proc.stdin
        async with self._write_lock:
            try:
                if len(data) <= _INLINE_WRITE_BYTES:
                    _write_all(stdin, data)
                else:  # larger than the pipe buffer could take at once: write off the loop
                    await asyncio.to_thread(_write_all, stdin, data)
            except (BrokenPipeError, ValueError, OSError) as exc:
                raise SessionDied(f"claude's stdin is closed: {exc}", exit_status=None) from None

    async def _terminate(self, proc: subprocess.Popen[bytes]) -> None:
        if proc.stdin is not None:
            with contextlib.suppress(OSError):
                proc.stdin.close()
        try:
            async with asyncio.timeout(self._settings.interrupt_grace_s):
                await asyncio.to_thread(proc.wait)
        except TimeoutError:
            log.warning("claude did not exit after stdin closed; killing it")
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)

    # -- turns ----------------------------------------------------------------------------

    async def run(
        self, prompt: str, *, images: Sequence[Image] = (), plan: bool = False
    ) -> AsyncIterator[AgentEvent]:
        """Send one user turn and yield its events; the last one is always a `TurnEnd`.

        ``images`` follow the text as image blocks. ``plan`` runs the turn in plan mode
        (as every turn is with ``claude.permission_mode = "plan"``).

        Raises `SessionDied` if the process exits before the turn ends (the supervisor is
        already restarting it). A turn longer than ``claude.turn_timeout_s`` is interrupted
        and ends with an error. Only one turn at a time.
        """
        if self._is_turn_active:
            raise RuntimeError("a turn is already running: only the runner sends turns")
        if not self.ready.is_set():
            raise SessionError("claude is not running")
        while not self._lines.empty():  # leftovers of a process that died between turns
            self._lines.get_nowait()
        self._is_turn_active = True
        self._tail.clear()
        deadline = time.monotonic() + self._settings.turn_timeout_s
        parser = self._parser = TurnParser(cost_before_usd=self._process_cost_usd)
        timed_out = False
        try:
            await self._set_mode("plan" if plan else self._configured_mode)
            await self._write(_user_message(prompt, images))
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0 and not timed_out:
                    timed_out = True
                    log.warning(
                        "turn timed out after %.0f s; interrupting", self._settings.turn_timeout_s
                    )
                    await self.interrupt()
                    deadline = time.monotonic() + self._settings.interrupt_grace_s
                    continue
                if remaining <= 0:
                    log.error("claude ignored the interrupt; killing it")
                    if self._proc is not None:
                        with contextlib.suppress(ProcessLookupError, PermissionError):
                            os.killpg(self._proc.pid, signal.SIGKILL)
                    deadline = float("inf")
                    continue
                timeout = None if remaining == float("inf") else remaining
                try:
                    # asyncio.timeout, not wait_for: on 3.11 wait_for drops a cancellation
                    # that lands as the line arrives, and the runner would never stop.
                    async with asyncio.timeout(timeout):
                        item = await self._lines.get()
                except TimeoutError:
                    continue
                if isinstance(item, _Exited):
                    if timed_out:
                        yield TurnEnd(TurnStatus.ERROR, "", self._timeout_message())
                        return
                    raise SessionDied(
                        f"claude exited mid-turn ({item.exit_status}): {item.tail[-300:]}".strip(),
                        exit_status=item.exit_status,
                    )
                for event in parser.feed(item):
                    if isinstance(event, TurnEnd) and timed_out:
                        event = TurnEnd(
                            TurnStatus.ERROR, event.result, self._timeout_message(), event.usage
                        )
                    if isinstance(event, TurnEnd) and event.usage and event.usage.cost_usd:
                        self._process_cost_usd += event.usage.cost_usd
                    yield event
                    if isinstance(event, TurnEnd):
                        return
        finally:
            self._is_turn_active = False

    async def interrupt(self) -> bool:
        """Ask Claude to stop the running turn (a stream-json control request).

        Returns False when no turn is running. The turn still ends with its `TurnEnd`.
        """
        if not self._is_turn_active:
            return False
        self._controls_sent += 1
        self._parser.was_interrupted = True
        await self._write(
            {
                "type": "control_request",
                "request_id": f"interrupt-{self._controls_sent}",
                "request": {"subtype": "interrupt"},
            }
        )
        return True

    async def answer_tool(self, request: ToolRequest, *, allow: bool, message: str = "") -> None:
        """Answer a `ToolRequest`: allow it as asked, or deny it telling Claude ``message``."""
        await self._answer(request.request_id, dict(request.input) if allow else None, message)

    async def answer_questions(
        self, request: QuestionRequest, answers: Mapping[str, str] | None, message: str = ""
    ) -> None:
        """AskUserQuestion's answer is its input plus ``answers`` (question → label or own
        words, several labels joined by ", "), as the CLI's own dialog gives it."""
        updated = None if answers is None else {**request.input, "answers": dict(answers)}
        await self._answer(request.request_id, updated, message)

    async def answer_plan(
        self, request: PlanRequest, *, approved: bool, feedback: str = ""
    ) -> None:
        """Approved, ExitPlanMode goes ahead (the CLI leaves plan mode); rejected, Claude
        reads ``feedback`` as the tool's error and plans again."""
        await self._answer(request.request_id, dict(request.input) if approved else None, feedback)

    async def _set_mode(self, mode: str) -> None:
        if mode == self._mode:
            return
        self._controls_sent += 1
        await self._write(
            {
                "type": "control_request",
                "request_id": f"mode-{self._controls_sent}",
                "request": {"subtype": "set_permission_mode", "mode": mode},
            }
        )
        self._mode = mode

    async def _answer(
        self, request_id: str, updated_input: Mapping[str, object] | None, message: str
    ) -> None:
        """A permission answer: allow with ``updated_input``, or (None) deny with ``message``."""
        decision: dict[str, object] = (
            {"behavior": "deny", "message": message or "denied"}
            if updated_input is None
            else {"behavior": "allow", "updatedInput": dict(updated_input)}
        )
        await self._write(
            {
                "type": "control_response",
                "response": {
                    "subtype": "success",
                    "request_id": request_id,
                    "response": decision,
                },
            }
        )

    def _timeout_message(self) -> str:
        return (
            f"the turn took longer than claude.turn_timeout_s ({self._settings.turn_timeout_s:g} s)"
        )


def _user_message(prompt: str, images: Sequence[Image]) -> dict[str, object]:
    """A stream-json user message: the text alone, or the text then one block per image."""
    if not images:
        return {"type": "user", "message": {"role": "user", "content": prompt}}
    blocks: list[dict[str, object]] = [{"type": "text", "text": prompt}]
    for image in images:
        data = base64.b64encode(image.data).decode("ascii")
        source = {"type": "base64", "media_type": image.media_type, "data": data}
        blocks.append({"type": "image", "source": source})
    return {"type": "user", "message": {"role": "user", "content": blocks}}


def _write_all(stdin: IO[bytes], data: bytes) -> None:
    stdin.write(data)
    stdin.flush()
