"""CodexSession: the `bot.agent.AgentSession` that is one `codex app-server` process (the
OpenAI Codex CLI), driven by JSON-RPC over its stdin and stdout, one JSON object a line.

The session's supervisor task owns the process: it spawns it, opens the conversation
(``initialize``, then ``thread/start``, or ``thread/resume`` of ``session_id``, the codex
thread id), reads every line, and restarts it with backoff when it dies. The party's runner
is the only caller of `run`, `interrupt`, `answer_tool` and `restart`.

Every thread runs with the approval policy ``untrusted`` in the ``workspace-write`` sandbox,
its approvals routed to us (``approvalsReviewer: user``), whatever the host's codex config
says: codex asks before each command it runs, and the party's approvers decide. A line codex
writes that is not JSON or not understood is logged and skipped; a request from codex that
is not an approval is refused (fail closed). What codex's messages mean for a turn (its
events, its approvals and their answers) is `agents.codex_protocol`'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import mimetypes
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections import deque
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

from agents.codex_protocol import (
    APPROVALS,
    LOG_CHARS,
    Approval,
    JsonObject,
    RpcId,
    Turn,
    answer,
    json_object,
    json_str,
    tool_request,
)
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
from bot.config import AgentSettings, ClaudeSettings
from bot.confinement import Confinement
from bot.model import Image, TurnStatus
from bot.supervisor import Lifeline
from bot.telemetry import version

__all__ = ["CodexSession", "codex_command"]

log = logging.getLogger(__name__)

_APP_SERVER = "app-server"
# "untrusted" asks before every command (0.171 asks even for `ls`); "on-request" would
# run any command the sandbox allows without asking, so the approvers would never see it.
_APPROVAL_POLICY = "untrusted"
# An approved command still runs in it: no network, writes only in the workdir and temp dirs.
_SANDBOX = "workspace-write"
_REVIEWER = "user"  # not "auto_review": a codex subagent must not decide for the party
# Lines as long as a resumed thread's history or a command's whole output.
_LINE_LIMIT_BYTES = 64 * 1024 * 1024
_TAIL_LINES = 20
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
# JSON-RPC's code for a method the receiver does not provide.
_METHOD_NOT_FOUND = -32601

_WARNINGS = frozenset({"warning", "configWarning", "deprecationNotice"})

_NO_QUESTIONS = (
    "questions and plans are not available on codex: it never asks them through Concordia"
)
_NO_PLAN = "plan mode is not available on codex: send the prompt without asking for a plan"


def codex_command(agent: AgentSettings, claude: ClaudeSettings) -> list[str]:
    """The argv that runs ``codex app-server``: the CLI (`agents.program`), ``app-server``,
    then the rest of ``agent.command`` (app-server's own options, such as ``-c model="o3"``).

    Raises SessionError, saying how to install it, when the CLI is not there."""
    program = agent_program(agent, claude)
    return [program.require(), _APP_SERVER, *program.argv[1:]]


@dataclass(frozen=True, slots=True)
class _Exited:
    """Put on the event queue by the supervisor when the process is gone."""

    exit_status: int | None
    tail: str


@dataclass(frozen=True, slots=True)
class _Incoming:
    """A notification, or (with ``rpc_id``) a request, that codex sent during a turn."""

    method: str
    params: JsonObject
    rpc_id: RpcId | None = None


class _Refused(SessionError):
    """codex answered a request with a JSON-RPC error."""

    def __init__(self, method: str, error: JsonObject):
        self.detail = str(error.get("message") or "")
        super().__init__(f"codex refused {method}: {self.detail}")


# -- the session --------------------------------------------------------------------------


class CodexSession:
    """The `codex app-server` process behind one party; a `bot.agent.AgentSession`.

    ``session_id`` is the codex thread id once a turn ran in the thread (a resumed one has
    it at once); ``ready`` is set while the process is up with its thread open;
    ``restarts`` counts unplanned exits. Use as an async context manager; `stop` is
    idempotent.
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
        self._agent = agent
        self._claude = claude
        self._confinement = confinement
        self._workdir = claude.workdir
        self._cwd = str(claude.workdir.resolve())  # codex wants the thread's cwd absolute
        self._turn_timeout_s = claude.turn_timeout_s
        self._grace_s = claude.interrupt_grace_s
        self._lifeline = Lifeline(
            "codex", backoff_s=claude.restart_backoff_s, backoff_max_s=claude.restart_backoff_max_s
        )
        self._env = dict(env)
        self.session_id = session_id
        self.ready = asyncio.Event()
        self._proc: subprocess.Popen[bytes] | None = None
        self._stdin: asyncio.WriteTransport | None = None
        self._exited = asyncio.Event()  # the current process has exited
        self._thread_id = ""
        self._next_id = 0
        self._pending: dict[RpcId, asyncio.Future[JsonObject]] = {}
        self._events: asyncio.Queue[_Incoming | _Exited] = asyncio.Queue()
        self._tail: deque[str] = deque(maxlen=_TAIL_LINES)
        self._supervisor: asyncio.Task[None] | None = None
        self._turn: Turn | None = None
        self._was_interrupted = False
        self._start_fresh = False

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
        """Spawn codex and open its thread; returns once it is ready. Raises SessionError
        (and leaves nothing running) when it cannot start or open the thread."""
        if self._supervisor is not None:
            raise RuntimeError("the session is already started")
        # Under bubblewrap where the machine has it: codex's own sandbox lets an approved
        # command read the whole disk, the bot's state folder included.
        command = self._confinement.wrap(codex_command(self._agent, self._claude))
        proc = self._spawn(command)
        supervisor = asyncio.create_task(self._supervise(command, proc), name="codex-supervisor")
        self._supervisor = supervisor
        ready = asyncio.create_task(self.ready.wait())
        try:
            await asyncio.wait([ready, supervisor], return_when=asyncio.FIRST_COMPLETED)
        finally:
            ready.cancel()
        if not self.ready.is_set():  # the supervisor ended: its error says why
            error = supervisor.exception() if not supervisor.cancelled() else None
            self._supervisor = None
            await self.stop()
            raise error or SessionError("codex stopped while starting")

    async def serve(self) -> None:
        """Wait while the supervisor keeps codex running; raise what ended it (codex could
        not start again, or open its thread). Cancelling it leaves the supervisor running
        (`stop` ends it)."""
        if self._supervisor is None:
            raise RuntimeError("CodexSession.serve() before start()")
        await asyncio.shield(self._supervisor)

    async def stop(self) -> None:
        """Close codex's stdin (it exits), give it ``claude.interrupt_grace_s``, then kill its
        process group; idempotent."""
        self._lifeline.is_stopping = True
        await self._terminate()
        supervisor, self._supervisor = self._supervisor, None
        if supervisor is None:
            return
        # It ends by itself once the process is gone; a cancel covers a backoff sleep.
        await asyncio.wait([supervisor], timeout=self._grace_s)
        supervisor.cancel()
        await asyncio.wait([supervisor])
        if not supervisor.cancelled() and supervisor.exception() is not None:
            log.warning("codex's supervisor had stopped: %s", supervisor.exception())

    async def restart(self, *, fresh: bool) -> None:
        """End codex and start it again, resuming the thread, or in a new one when ``fresh``;
        returns once the old process is gone (``ready`` tells when the new one is up)."""
        if self._turn is not None:
            raise RuntimeError("restart() while a turn runs: interrupt it first")
        self._start_fresh = fresh
        self._lifeline.plan_restart()
        await self._terminate()

    # -- the process ----------------------------------------------------------------------

    def _spawn(self, command: list[str]) -> subprocess.Popen[bytes]:
        log.info("starting codex", extra={"command": command[0], "resume": bool(self.session_id)})
        try:
            # A session of its own: killing the group also ends what codex ran, and codex
            # itself when the npm wrapper (node) in front of it is the one that died.
            proc = subprocess.Popen(
                command,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd=self._workdir,
                env=self._env,
                start_new_session=True,
            )
        except OSError as exc:
            raise SessionError(
                f"could not start {command[0]!r} ({exc}): run `make codex` or set "
                "agent.command to the codex CLI's path"
            ) from None
        self._proc = proc
        self._exited = asyncio.Event()
        self._tail.clear()
        return proc

    async def _supervise(self, command: list[str], proc: subprocess.Popen[bytes]) -> None:
        while True:
            started = time.monotonic()
            exit_status = await self._own(proc)
            tail = "\n".join(self._tail)
            self._events.put_nowait(_Exited(exit_status, tail))
            if not await self._lifeline.after_exit(exit_status, time.monotonic() - started, tail):
                return
            proc = self._spawn(command)

    async def _own(self, proc: subprocess.Popen[bytes]) -> int | None:
        """Open the thread, then read codex until it exits; its exit status. Raises
        SessionError when the thread cannot be opened. Cleans up the pipes whatever
        happens, and kills the process group on the way out."""
        assert proc.stdin is not None
        assert proc.stdout is not None
        assert proc.stderr is not None
        loop = asyncio.get_running_loop()
        stdout = asyncio.StreamReader(limit=_LINE_LIMIT_BYTES)
        stderr = asyncio.StreamReader(limit=_LINE_LIMIT_BYTES)
        out, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(stdout), proc.stdout
        )
        err, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(stderr), proc.stderr
        )
        self._stdin, _ = await loop.connect_write_pipe(asyncio.Protocol, proc.stdin)
        reading = asyncio.create_task(self._read(stdout), name="codex-stdout")
        draining = asyncio.create_task(self._drain(stderr), name="codex-stderr")
        waiting = asyncio.create_task(self._wait_exit(proc, self._exited), name="codex-exit")
        opening = asyncio.create_task(self._open(), name="codex-open")
        is_open = False
        try:
            # A codex that exits while starting answers nothing: do not wait for its replies.
            await asyncio.wait([opening, reading, waiting], return_when=asyncio.FIRST_COMPLETED)
            if opening.done():
                opening.result()  # raises SessionError when the thread could not be opened
                is_open = True
                self.ready.set()
                # Until it exits; a codex that closed its stdout is of no use either.
                await asyncio.wait([reading, waiting], return_when=asyncio.FIRST_COMPLETED)
        finally:
            opening.cancel()
            self.ready.clear()
            stdin, self._stdin = self._stdin, None
            stdin.close()
            _kill_group(proc)
            try:
                # What codex wrote before it died is still read, within the grace.
                await asyncio.wait([reading, draining, waiting], timeout=self._grace_s)
            finally:
                if reading.done() and not reading.cancelled() and reading.exception():
                    log.error("reading codex failed", exc_info=reading.exception())
                reading.cancel()
                draining.cancel()
                out.close()
                err.close()
                self._fail_pending(proc.returncode)
        if not is_open and not self._lifeline.is_exit_expected:
            tail = "\n".join(self._tail)[-LOG_CHARS:]
            raise SessionError(f"codex exited while starting ({proc.returncode}): {tail}".strip())
        return proc.returncode

    async def _wait_exit(self, proc: subprocess.Popen[bytes], exited: asyncio.Event) -> None:
        # A thread waits on the pid itself: asyncio's own wait would also wait for the
        # pipes, which an orphan (codex under a killed npm wrapper) holds open.
        await asyncio.to_thread(proc.wait)
        exited.set()
        _kill_group(proc)

    async def _terminate(self) -> None:
        """Close stdin (codex exits at its end; SIGTERM when its pipes are not set up yet),
        wait ``claude.interrupt_grace_s``, then kill the process group."""
        self.ready.clear()  # from now on no turn may start on this process
        proc = self._proc
        if proc is None:
            return
        if self._stdin is not None:
            self._stdin.close()
        else:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGTERM)
        if not self._exited.is_set():
            try:
                async with asyncio.timeout(self._grace_s):
                    await self._exited.wait()
            except TimeoutError:
                log.warning("codex did not exit after its stdin closed; killing it")
        _kill_group(proc)

    def _fail_pending(self, exit_status: int | None) -> None:
        pending, self._pending = self._pending, {}
        tail = "\n".join(self._tail)[-300:]
        for future in pending.values():
            if not future.done():
                future.set_exception(
                    SessionDied(
                        f"codex exited ({exit_status}): {tail}".strip(), exit_status=exit_status
                    )
                )

    async def _open(self) -> None:
        """``initialize``, then resume the session's thread or start one. A thread that
        cannot be resumed (codex no longer has it) is replaced by a new one."""
        deadline = self._turn_timeout_s
        try:
            async with asyncio.timeout(deadline):
                await self._call(
                    "initialize",
                    {
                        "clientInfo": {
                            "name": "concordia",
                            "title": "Concordia",
                            "version": version(),
                        },
                        "capabilities": None,
                    },
                )
                self._send({"method": "initialized"})
                if self._start_fresh:
                    self._start_fresh = False
                    self.session_id = None
                settings = {
                    "cwd": self._cwd,
                    "approvalPolicy": _APPROVAL_POLICY,
                    "sandbox": _SANDBOX,
                    "approvalsReviewer": _REVIEWER,
                }
                thread: JsonObject = {}
                if self.session_id:
                    try:
                        reply = await self._call(
                            "thread/resume",
                            {"threadId": self.session_id, "excludeTurns": True, **settings},
                        )
                        thread = json_object(reply.get("thread"))
                    except _Refused as exc:
                        log.warning(
                            "codex could not resume thread %s (%s); starting a new one",
                            self.session_id,
                            exc.detail,
                        )
                        self.session_id = None
                if not thread:
                    reply = await self._call("thread/start", settings)
                    thread = json_object(reply.get("thread"))
        except TimeoutError:
            raise SessionError(
                f"codex did not open its thread within claude.turn_timeout_s ({deadline:g} s)"
            ) from None
        thread_id = json_str(thread.get("id"))
        if not thread_id:
            raise SessionError("codex opened a thread without an id")
        self._thread_id = thread_id
        log.info("codex thread open", extra={"thread_id": thread_id})

    # -- the wire ---------------------------------------------------------------------------

    async def _read(self, stdout: asyncio.StreamReader) -> None:
        while True:
            try:
                line = await stdout.readline()
            except ValueError:  # longer than the limit: the reader dropped it
                log.warning("codex wrote a line over %d bytes; skipped", _LINE_LIMIT_BYTES)
                continue
            if not line:
                return
            self._route(line.decode("utf-8", errors="replace").strip())

    async def _drain(self, stderr: asyncio.StreamReader) -> None:
        """codex's log: kept for error messages, at DEBUG in ours (it may quote prompts)."""
        while True:
            try:
                line = await stderr.readline()
            except ValueError:
                continue
            if not line:
                return
            text = _ANSI.sub("", line.decode("utf-8", errors="replace")).strip()
            if text:
                self._tail.append(text[:LOG_CHARS])
                log.debug("codex: %s", text[:LOG_CHARS])

    def _route(self, line: str) -> None:
        """Hand one line to whoever waits for it: a reply to its caller, a notification or
        an approval to the running turn. Anything else is logged and dropped."""
        if not line:
            return
        log.debug("codex said %s", line[:LOG_CHARS])
        try:
            message = json.loads(line)
        except json.JSONDecodeError:
            log.warning("codex wrote a line that is not JSON: %s", line[:LOG_CHARS])
            return
        if not isinstance(message, dict):
            log.warning("codex wrote JSON that is not a message: %s", line[:LOG_CHARS])
            return
        method, raw_id = message.get("method"), message.get("id")
        rpc_id: RpcId | None = None
        if isinstance(raw_id, int | str) and not isinstance(raw_id, bool):
            rpc_id = raw_id
        if method is None and rpc_id is not None:
            future = self._pending.pop(rpc_id, None)
            if future is not None and not future.done():
                future.set_result(message)
            return
        if not isinstance(method, str):
            log.warning("codex wrote a message we do not understand: %s", line[:LOG_CHARS])
            return
        params = json_object(message.get("params"))
        if rpc_id is not None:
            self._on_request(rpc_id, method, params)
        elif method in _WARNINGS:  # the operator's to read: a bad setting, a deprecation
            said = json_str(params.get("message")) or json_str(params.get("summary"))
            log.warning("codex warns (%s): %s", method, said[:LOG_CHARS])
        elif self._turn is not None:
            self._events.put_nowait(_Incoming(method, params))
        else:
            log.debug("codex said %s between turns", method)

    def _on_request(self, rpc_id: RpcId, method: str, params: JsonObject) -> None:
        """An approval goes to the running turn; any other request is refused: Concordia
        answers nothing it was not built to (user input, MCP forms, auth refreshes)."""
        if method in APPROVALS and self._turn is not None:
            self._events.put_nowait(_Incoming(method, params, rpc_id))
            return
        log.warning("refusing codex's request %s", method)
        message = f"Concordia does not answer {method}"
        try:
            self._reply(rpc_id, error={"code": _METHOD_NOT_FOUND, "message": message})
        except SessionDied:
            log.debug("codex is gone before its %s was refused", method)

    def _send(self, message: Mapping[str, object]) -> None:
        """Write one message; the pipe transport buffers it, so this never blocks."""
        stdin = self._stdin
        if stdin is None or stdin.is_closing():
            raise SessionDied("codex's stdin is closed", exit_status=None)
        data = json.dumps(message, ensure_ascii=False)
        log.debug("codex hears %s", data[:LOG_CHARS])
        stdin.write(data.encode() + b"\n")

    def _reply(
        self,
        rpc_id: RpcId,
        *,
        result: Mapping[str, object] | None = None,
        error: JsonObject | None = None,
    ) -> None:
        if error is not None:
            self._send({"id": rpc_id, "error": dict(error)})
        else:
            self._send({"id": rpc_id, "result": dict(result or {})})

    async def _call(self, method: str, params: Mapping[str, object]) -> JsonObject:
        """Send a request and return its result. Raises `_Refused` on an error reply and
        `SessionDied` when codex exits first; safe to cancel."""
        self._next_id += 1
        rpc_id = self._next_id
        future: asyncio.Future[JsonObject] = asyncio.get_running_loop().create_future()
        self._pending[rpc_id] = future
        try:
            self._send({"id": rpc_id, "method": method, "params": dict(params)})
            reply = await future
        finally:
            self._pending.pop(rpc_id, None)
        if "error" in reply:
            raise _Refused(method, json_object(reply.get("error")))
        return json_object(reply.get("result"))

    # -- turns ------------------------------------------------------------------------------

    async def run(
        self, prompt: str, *, images: Sequence[Image] = (), plan: bool = False
    ) -> AsyncIterator[AgentEvent]:
        """Send one turn and yield its events; the last one is always a `TurnEnd`.

        ``images`` go as local image files (private to this turn, removed after it). Raises
        `SessionDied` if codex exits before the turn ends (the supervisor is already
        restarting it), and `SessionError` when codex cannot take the turn or ``plan`` is
        asked. A turn longer than ``claude.turn_timeout_s`` is interrupted, then codex is
        killed, and it ends with an error. Only one turn at a time."""
        if plan:
            raise SessionError(_NO_PLAN)
        if self._turn is not None:
            raise RuntimeError("a turn is already running: only the runner sends turns")
        if not self.ready.is_set():
            raise SessionError("codex is not running")
        while not self._events.empty():  # leftovers of a process that died between turns
            self._events.get_nowait()
        turn = self._turn = Turn(self._thread_id)
        self._was_interrupted = False
        self._tail.clear()
        deadline = time.monotonic() + self._turn_timeout_s
        image_dir: Path | None = None
        try:
            inputs: list[dict[str, object]] = [
                {"type": "text", "text": prompt, "text_elements": []}
            ]
            if images:
                image_dir = Path(tempfile.mkdtemp(prefix="concordia-codex-"))  # mode 0700
                paths = _write_images(image_dir, images)
                inputs += [{"type": "localImage", "path": str(p)} for p in paths]
            try:
                async with asyncio.timeout(self._turn_timeout_s):
                    reply = await self._call(
                        "turn/start", {"threadId": turn.thread_id, "input": inputs}
                    )
            except _Refused as exc:
                raise SessionError(f"codex would not take the turn: {exc.detail}") from None
            turn.turn_id = json_str(json_object(reply.get("turn")).get("id"))
            self.session_id = turn.thread_id  # the thread has a turn now: it can be resumed
            if self._was_interrupted:  # asked before codex had named the turn
                await self._send_interrupt()
            timed_out = False
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0 and not timed_out:
                    timed_out = True
                    log.warning("turn timed out after %.0f s; interrupting", self._turn_timeout_s)
                    await self.interrupt()
                    deadline = time.monotonic() + self._grace_s
                    continue
                if remaining <= 0:
                    log.error("codex ignored the interrupt; killing it")
                    if self._proc is not None:
                        _kill_group(self._proc)
                    deadline = float("inf")
                    continue
                try:
                    # asyncio.timeout, not wait_for: on 3.11 wait_for can drop a cancellation.
                    async with asyncio.timeout(None if remaining == float("inf") else remaining):
                        item = await self._events.get()
                except TimeoutError:
                    continue
                if isinstance(item, _Exited):
                    if timed_out:
                        self._turn = None
                        yield TurnEnd(TurnStatus.ERROR, turn.final_text, self._timeout_message())
                        return
                    raise SessionDied(
                        f"codex exited mid-turn ({item.exit_status}): {item.tail[-300:]}".strip(),
                        exit_status=item.exit_status,
                    )
                if not turn.is_ours(item.params):
                    log.debug("codex said %s about another turn", item.method)
                    continue
                if item.rpc_id is not None:
                    approval = Approval(item.rpc_id, item.method, item.params)
                    turn.approvals[str(item.rpc_id)] = approval
                    yield tool_request(approval, turn.items)
                elif item.method == "turn/completed":
                    end = turn.end(json_object(item.params.get("turn")))
                    if timed_out:
                        end = TurnEnd(
                            TurnStatus.ERROR, end.result, self._timeout_message(), end.usage
                        )
                    # Over before the caller reads it: it may stop iterating at the TurnEnd.
                    self._turn = None
                    _remove(image_dir)
                    yield end
                    return
                else:
                    for event in turn.feed(item.method, item.params):
                        yield event
        finally:
            if self._turn is turn:
                self._turn = None
            _remove(image_dir)

    async def interrupt(self) -> bool:
        """Ask codex to stop the running turn (``turn/interrupt``). Returns False when no
        turn is running; the turn still ends with its `TurnEnd` (INTERRUPTED)."""
        if self._turn is None:
            return False
        self._was_interrupted = True
        if self._turn.turn_id:  # else `run` sends it once codex has named the turn
            await self._send_interrupt()
        return True

    async def _send_interrupt(self) -> None:
        turn = self._turn
        if turn is None:
            return
        try:
            async with asyncio.timeout(self._grace_s):
                await self._call(
                    "turn/interrupt", {"threadId": turn.thread_id, "turnId": turn.turn_id}
                )
        except _Refused as exc:  # the turn ended meanwhile
            log.info("codex did not interrupt the turn: %s", exc.detail)
        except TimeoutError:
            log.warning("codex did not answer the interrupt within %.0f s", self._grace_s)

    async def answer_tool(self, request: ToolRequest, *, allow: bool, message: str = "") -> None:
        """Allow the command (file change, permissions) once, or decline it. codex tells
        the model only that the user declined, so ``message`` follows as a note in the turn
        (``turn/steer``) before the answer, and the model reads both together."""
        turn = self._turn
        approval = turn.approvals.pop(request.request_id, None) if turn is not None else None
        if turn is None or approval is None:
            log.warning("no approval %s is waiting (the turn ended?)", request.request_id)
            return
        if not allow and message:
            await self._steer(turn, f"The approvers declined that request: {message}")
        self._reply(approval.rpc_id, result=answer(approval, allow))

    async def _steer(self, turn: Turn, text: str) -> None:
        params = {
            "threadId": turn.thread_id,
            "expectedTurnId": turn.turn_id,
            "input": [{"type": "text", "text": text, "text_elements": []}],
        }
        try:
            async with asyncio.timeout(self._grace_s):
                await self._call("turn/steer", params)
        except _Refused as exc:
            log.warning("codex did not take the denial note: %s", exc.detail)
        except TimeoutError:
            log.warning("codex did not take the denial note within %.0f s", self._grace_s)

    async def answer_questions(
        self, request: QuestionRequest, answers: Mapping[str, str] | None, message: str = ""
    ) -> None:
        raise SessionError(_NO_QUESTIONS)

    async def answer_plan(
        self, request: PlanRequest, *, approved: bool, feedback: str = ""
    ) -> None:
        raise SessionError(_NO_QUESTIONS)

    def _timeout_message(self) -> str:
        return f"the turn took longer than claude.turn_timeout_s ({self._turn_timeout_s:g} s)"


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def _write_images(directory: Path, images: Sequence[Image]) -> list[Path]:
    """Each image as a private file (0600) in ``directory``, in order; their paths."""
    paths = []
    for n, image in enumerate(images, 1):
        path = directory / f"{n:03d}{mimetypes.guess_extension(image.media_type) or ''}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as file:
            file.write(image.data)
        paths.append(path)
    return paths


def _remove(directory: Path | None) -> None:
    """Remove a turn's image directory; idempotent."""
    if directory is not None:
        shutil.rmtree(directory, ignore_errors=True)
