"""The `concordia join` terminal client: one participant's seat in a party, over WebSocket v1.

Two tasks share one connection: the line task alone sends, the reader task alone
receives and prints. They talk only through an `asyncio.Queue` (reader → line task:
"this prompt of ours is answered") and one `asyncio.Event` written by the line task
("I am closing on purpose").
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import re
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import assert_never

from rich.console import Console
from rich.rule import Rule
from rich.status import Status
from rich.text import Text
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import (
    ConnectionClosed,
    WebSocketException,
)

from adapters import wire
from adapters.terminal.link import InviteUrl, connect_failure, parse_invite_url, tls_context_for
from bot.model import TurnStatus

__all__ = [
    "EXIT_NOT_JOINED",
    "EXIT_OK",
    "EXIT_UNANSWERED",
    "main",
    "run_join",
]

log = logging.getLogger(__name__)

EXIT_OK = 0
"""Piped: every prompt of ours was answered successfully. Interactive: we left."""
EXIT_UNANSWERED = 1
"""Piped: a prompt of ours was rejected, failed or interrupted, or the host went away."""
EXIT_NOT_JOINED = 2
"""The invite URL was wrong, the host could not be reached (or its certificate was refused),
or it refused us."""

JOIN_TIMEOUT_S = 10.0
"""Deadline for the TCP/TLS/WebSocket handshake and again for the host's `welcome`."""
BAD_TOKEN_CLOSE_WAIT_S = 2.0
"""After an `error` with code bad_token, how long we wait for the host's close 4001."""

_QUIT_COMMANDS = frozenset({"quit", "exit"})
# `/plan <ask>` is a prompt the host reads: Claude plans first and the group approves.
_PROMPT_COMMANDS = frozenset({"plan"})
# "/status", "/cancel 3"; "/etc/hosts is broken" is a prompt, not a command.
_COMMAND_LINE = re.compile(r"/(?P<name>[A-Za-z][A-Za-z0-9_-]*)(?:\s+(?P<args>.*))?", re.DOTALL)
_ANSWER_COMMAND = "answer"
# "/answer 3 2", "/answer 3 SQLite, but in WAL mode"; anything else goes to the host as the
# command it is, and the host answers with how to use it.
_ANSWER_ARGS = re.compile(r"(?P<id>\d{1,18})\s+(?P<text>\S.*)", re.DOTALL)
# Who may answer a question, as a `question` frame's ``answerers`` says.
_ANSWERERS = {
    "authors": "the batch's authors, approvers and the host may answer",
    "members": "anyone in the party may answer",
    "approvers": "approvers and the host may answer",
}
_PLAN_KIND = "plan"


# --- the host's frames (adapters.wire parses them) --------------------------------------------


def _turn_status(text: str) -> TurnStatus | None:
    """A `done` frame's status; None for one this client does not know yet."""
    try:
        return TurnStatus(text)
    except ValueError:
        return None


def _error_text(frame: wire.Error) -> str:
    return frame.message or frame.code or "unspecified error"


# --- input lines ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _PromptLine:
    text: str


@dataclass(frozen=True, slots=True)
class _CommandLine:
    name: str
    args: str


@dataclass(frozen=True, slots=True)
class _AnswerLine:
    """``/answer <id> <number, label or words>``: sent as an `answer` frame."""

    question_id: int
    text: str


class _Quit(enum.Enum):
    QUIT = "quit"


_Line = _PromptLine | _CommandLine | _AnswerLine | _Quit | None


def _parse_line(line: str) -> _Line:
    """Blank → None; ``/quit``/``/exit`` → quit; ``/answer <id> <words>`` → an answer;
    ``/plan …`` and anything not ``/word rest`` → a prompt; else a command."""
    text = line.strip()
    if not text:
        return None
    match = _COMMAND_LINE.fullmatch(text)
    if match is None:
        return _PromptLine(text)
    name = match["name"].lower()
    if name in _QUIT_COMMANDS:
        return _Quit.QUIT
    if name in _PROMPT_COMMANDS:
        return _PromptLine(text)
    args = (match["args"] or "").strip()
    if name == _ANSWER_COMMAND and (answer := _ANSWER_ARGS.fullmatch(args)):
        return _AnswerLine(int(answer["id"]), answer["text"])
    return _CommandLine(name=name, args=args)


# --- what the reader tells the line task ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Answered:
    """A prompt of ours was rejected or its batch finished."""

    client_id: str
    is_success: bool


@dataclass(frozen=True, slots=True)
class _CommandAnswered:
    is_ok: bool


@dataclass(frozen=True, slots=True)
class _HostError:
    """An `error` frame after welcome; it may answer a prompt or a command of ours."""

    client_id: str | None


@dataclass(frozen=True, slots=True)
class _Disconnected:
    """The host closed the connection (or it was lost) before we closed it."""


_Notice = _Answered | _CommandAnswered | _HostError | _Disconnected


# --- the screen (owned by the reader task) ---------------------------------------------------


class _Elapsed:
    """The spinner's text; rich re-renders it on every refresh, so the seconds tick."""

    def __init__(self, started_s: float) -> None:
        self._started_s = started_s

    def __rich__(self) -> Text:
        return Text(f"Claude is working… {int(time.monotonic() - self._started_s)}s", style="dim")


class _Screen:
    """Everything the client prints. Participants' and Claude's text is never markup."""

    def __init__(self, console: Console, *, is_interactive: bool) -> None:
        self._console = console
        self._is_interactive = is_interactive
        self._status: Status | None = None
        self._is_at_line_start = True

    def line(self, text: str, style: str = "") -> None:
        self.stop_spinner()
        self._end_partial_line()
        self._console.print(Text(text, style=style), markup=False, highlight=False, emoji=False)

    def batch(self, frame: wire.Batch) -> None:
        self.stop_spinner()
        self._end_partial_line()
        authors = list(dict.fromkeys(source.author for source in frame.sources))
        title = f"Batch {frame.batch_id} — {', '.join(authors) or 'nobody'}"
        self._console.print(Rule(Text(title, style="bold cyan"), style="cyan"))
        self._console.print(Text(frame.prompt), markup=False, highlight=False, emoji=False)
        self._console.print(Rule(style="cyan"))
        if self._is_interactive:
            self._status = self._console.status(_Elapsed(time.monotonic()))
            self._status.start()

    def output(self, text: str) -> None:
        if not text:
            return
        self.stop_spinner()
        # console.out neither parses markup nor wraps; highlight off keeps it verbatim.
        self._console.out(text, end="", highlight=False)
        self._is_at_line_start = text.endswith("\n")

    def done(self, frame: wire.Done) -> None:
        status = _turn_status(frame.status)
        match status:
            case TurnStatus.SUCCESS:
                self.line("✓ done", "green")
            case TurnStatus.ERROR:
                self.line("✗ error", "red")
            case TurnStatus.INTERRUPTED:
                self.line("⏹ interrupted", "yellow")
            case None:
                self.line(f"⏹ ended ({frame.status})", "yellow")
            case _:
                assert_never(status)

    def question(self, frame: wire.Question) -> None:
        """Claude's question, its numbered options, and how to answer it."""
        is_plan = frame.kind == _PLAN_KIND
        mark = "📋" if is_plan else "❓"
        header = f" · {frame.header}" if frame.header else ""
        self.line(f"{mark} question {frame.question_id}{header}: {frame.text}", "bold blue")
        for n, option in enumerate(frame.options, 1):
            about = f" — {option.description}" if option.description else ""
            self.line(f"   {n}. {option.label}{about}", "blue")
        answer = f"/answer {frame.question_id}"
        if is_plan:
            how = f"{answer} 1 approves; {answer} <what to change> rejects it"
        elif frame.multi_select:
            how = f"{answer} <numbers, as 1, 2> or {answer} <your own words>"
        else:
            how = f"{answer} <number> or {answer} <your own words>"
        who = _ANSWERERS.get(frame.answerers, "")
        self.line(f"   answer with {how}" + (f" ({who})" if who else ""), "dim")

    def question_done(self, frame: wire.QuestionDone) -> None:
        mark = "✅" if frame.answered else "⌛"
        self.line(f"{mark} question {frame.question_id}: {frame.text}", "blue")

    def stop_spinner(self) -> None:
        """Idempotent; the spinner must be gone before any other text is written."""
        if self._status is not None:
            self._status.stop()
            self._status = None

    def _end_partial_line(self) -> None:
        if not self._is_at_line_start:
            self._console.out("", highlight=False)
            self._is_at_line_start = True


# --- the two tasks ---------------------------------------------------------------------------


class _Reader:
    """Reads every frame, prints it, and tells the line task when ours are answered."""

    def __init__(
        self,
        screen: _Screen,
        notices: asyncio.Queue[_Notice],
        *,
        id_prefix: str,
        invite: InviteUrl,
        is_interactive: bool,
    ) -> None:
        self._screen = screen
        self._notices = notices
        self._id_prefix = id_prefix
        self._invite = invite
        self._is_interactive = is_interactive
        self._ours_by_prompt_id: dict[int, str] = {}
        self._ours_by_batch: dict[int, list[str]] = {}

    async def run(
        self, ws: ClientConnection, closing: asyncio.Event, line_task: asyncio.Task[int | None]
    ) -> None:
        try:
            while True:
                self._handle(await ws.recv(decode=True))
        except ConnectionClosed as exc:
            if not closing.is_set():
                self._screen.line(_describe_close(exc, self._invite), "red")
                self._notices.put_nowait(_Disconnected())
                # Still reading input: nothing more can be sent, so stop waiting for it.
                # Otherwise the line task is draining notices and will see _Disconnected.
                if not line_task.done():
                    line_task.cancel()
        finally:
            self._screen.stop_spinner()

    def _ours(self, client_id: str | int | None) -> str | None:
        """``client_id`` if it is one of our prompts' ids, else None."""
        if isinstance(client_id, str) and client_id.startswith(self._id_prefix):
            return client_id
        return None

    def _notify(self, notice: _Notice) -> None:
        # Only piped mode waits for answers; interactive sessions would just pile them up.
        if not self._is_interactive:
            self._notices.put_nowait(notice)

    def _handle(self, raw: str) -> None:
        log.debug("frame from host: %s", raw, extra={"platform": "websocket"})
        frame = wire.parse_server_frame(raw)
        match frame:
            case wire.Invalid(code=wire.ErrorCode.UNKNOWN_TYPE):
                pass  # a type from a newer protocol: ignore it (forward compatibility)
            case wire.Invalid():
                log.warning("ignoring a malformed frame from the host: %s", frame.message)
            case wire.Welcome():
                pass  # a repeated welcome changes nothing
            case wire.Error():
                self._screen.line(f"error: {_error_text(frame)}", "red")
                self._notify(_HostError(self._ours(frame.id)))
            case wire.Queued():
                if (client_id := self._ours(frame.id)) is not None:
                    self._ours_by_prompt_id[frame.prompt_id] = client_id
                self._screen.line(f"queued #{frame.prompt_id} (position {frame.position})", "dim")
            case wire.Rejected():
                self._screen.line(f"rejected: {frame.reason}", "red")
                if (client_id := self._ours(frame.id)) is not None:
                    self._notify(_Answered(client_id, is_success=False))
            case wire.Batch():
                ours = [
                    client_id
                    for source in frame.sources
                    if (client_id := self._ours_by_prompt_id.pop(source.prompt_id, None))
                ]
                if ours:
                    self._ours_by_batch.setdefault(frame.batch_id, []).extend(ours)
                self._screen.batch(frame)
            case wire.Output():
                self._screen.output(frame.text)
            case wire.Done():
                self._screen.done(frame)
                is_success = _turn_status(frame.status) is TurnStatus.SUCCESS
                for client_id in self._ours_by_batch.pop(frame.batch_id, []):
                    self._notify(_Answered(client_id, is_success=is_success))
            case wire.System():
                self._screen.line(frame.message, "yellow")
            case wire.Approval():
                quorum = f" (needs {frame.needed} approvers)" if frame.needed > 1 else ""
                self._screen.line(
                    f"🔐 approval {frame.approval_id}: Claude wants to {frame.summary}{quorum}",
                    "bold magenta",
                )
                if frame.input and frame.input not in frame.summary:
                    self._screen.line(frame.input, "magenta")
                self._screen.line(
                    f"   answer with /approve {frame.approval_id} allow | always | deny", "dim"
                )
            case wire.ApprovalDone():
                mark = "✅" if frame.allowed else "⛔"
                self._screen.line(f"{mark} approval {frame.approval_id}: {frame.text}", "magenta")
            case wire.Question():
                self._screen.question(frame)
            case wire.QuestionDone():
                self._screen.question_done(frame)
            case wire.CommandResult():
                self._screen.line(frame.text, "" if frame.ok else "red")
                self._notify(_CommandAnswered(is_ok=frame.ok))
            case _:
                assert_never(frame)


async def _send_lines(
    ws: ClientConnection,
    lines: AsyncIterator[str],
    notices: asyncio.Queue[_Notice],
    closing: asyncio.Event,
    *,
    id_prefix: str,
    is_interactive: bool,
) -> int | None:
    """Send each input line; piped, then wait until every prompt and command is answered.

    Returns the exit code, or None when the host went away first. It alone sends on
    ``ws`` and alone sets ``closing``.
    """
    outstanding: set[str] = set()
    commands_waiting = 0
    has_failed = False
    count = 0
    try:
        async for line in lines:
            parsed = _parse_line(line)
            match parsed:
                case None:
                    continue
                case _Quit.QUIT:
                    break
                case _CommandLine(name=name, args=args):
                    commands_waiting += 1
                    await ws.send(wire.format_frame(wire.Command(name=name, args=args)))
                case _AnswerLine(question_id=question_id, text=text):
                    commands_waiting += 1  # answered by a command_result named answer
                    answer = wire.Answer(question_id=question_id, text=text)
                    await ws.send(wire.format_frame(answer))
                case _PromptLine(text=text):
                    count += 1
                    client_id = f"{id_prefix}{count}"
                    outstanding.add(client_id)
                    await ws.send(wire.format_frame(wire.Prompt(id=client_id, text=text)))
                case _:
                    assert_never(parsed)
        # No deadline here: a turn lasts as long as Claude works; a host close ends the wait.
        while not is_interactive and (outstanding or commands_waiting):
            notice = await notices.get()
            match notice:
                case _Answered():
                    outstanding.discard(notice.client_id)
                    has_failed |= not notice.is_success
                case _CommandAnswered():
                    commands_waiting = max(0, commands_waiting - 1)
                    has_failed |= not notice.is_ok
                case _HostError():
                    has_failed = True
                    if notice.client_id in outstanding:
                        outstanding.discard(notice.client_id)
                    elif commands_waiting:
                        # v1 errors name no command; the oldest unanswered one is ours.
                        commands_waiting -= 1
                case _Disconnected():
                    return None
                case _:
                    assert_never(notice)
    except ConnectionClosed:
        return None  # the reader saw it too and says why
    closing.set()
    await ws.close()
    return EXIT_OK if is_interactive or not has_failed else EXIT_UNANSWERED


# --- joining -----------------------------------------------------------------------------------


def _describe_close(exc: ConnectionClosed, invite: InviteUrl) -> str:
    if exc.rcvd is None:
        return f"the connection to {invite} was lost"
    if exc.rcvd.code == wire.CloseCode.BAD_TOKEN:
        return "the invite token was refused"
    reason = f": {exc.rcvd.reason}" if exc.rcvd.reason else ""
    return f"the host closed the connection (code {exc.rcvd.code}{reason})"


async def _join(
    ws: ClientConnection, invite: InviteUrl, name: str, console: Console
) -> wire.Welcome | None:
    """Send the join frame and wait for the host's answer; None (after saying why) if refused."""

    def say(text: str, style: str) -> None:
        console.print(Text(text, style=style), markup=False, highlight=False, emoji=False)

    try:
        await ws.send(wire.format_frame(wire.Join(token=invite.token, name=name)))
        async with asyncio.timeout(JOIN_TIMEOUT_S):
            while True:
                frame = wire.parse_server_frame(await ws.recv(decode=True))
                match frame:
                    case wire.Welcome(protocol=wire.PROTOCOL_VERSION):
                        return frame
                    case wire.Welcome():
                        say(
                            f"{invite} speaks Concordia protocol {frame.protocol} and this client "
                            f"speaks {wire.PROTOCOL_VERSION}: use the host's version of concordia",
                            "red",
                        )
                        return None
                    case wire.Error():
                        say(f"error: {_error_text(frame)}", "red")
                        await _wait_for_refusal(ws, frame)
                        await ws.close()  # then close_code holds the host's code if it closed first
                        if (
                            frame.code == wire.ErrorCode.BAD_TOKEN
                            or ws.close_code == wire.CloseCode.BAD_TOKEN
                        ):
                            say("the invite token was refused", "red")
                        return None
                    case wire.Invalid(code=wire.ErrorCode.UNKNOWN_TYPE):
                        continue  # a newer host's extra frame; the welcome still comes
                    case wire.Invalid():
                        say(
                            f"{invite} does not speak the Concordia protocol: {frame.message}",
                            "red",
                        )
                        return None
                    case _:
                        say(f"{invite} sent a {frame.type} frame before welcome", "red")
                        return None
    except TimeoutError:
        say(f"{invite} did not welcome us within {JOIN_TIMEOUT_S:g}s", "red")
    except ConnectionClosed as exc:
        say(_describe_close(exc, invite), "red")
    return None


async def _wait_for_refusal(ws: ClientConnection, frame: wire.Error) -> None:
    """After a bad_token error the host closes with 4001; let that close arrive."""
    if frame.code != wire.ErrorCode.BAD_TOKEN:
        return
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(BAD_TOKEN_CLOSE_WAIT_S):
            await ws.wait_closed()


async def run_join(
    url: str,
    name: str,
    *,
    lines: AsyncIterator[str],
    console: Console,
    interactive: bool,
    cafile: Path | None = None,
) -> int:
    """Join the party behind ``url`` as ``name`` and relay ``lines`` until done.

    Interactive: runs until ``/quit``, end of input or the host closes; returns 0.
    Piped: sends every line, then waits until each of our prompts is answered (and
    each command has its result); returns 0 if all succeeded, 1 if any was rejected,
    failed or interrupted, or the host closed first. Returns 2 when joining fails
    (bad URL or ``cafile``, unreachable host, refused certificate, refused token).
    Never raises for those; safe to cancel.

    A TLS link verifies the host's certificate against the system's CAs, or against
    the PEM file ``cafile`` alone when it is given.
    """

    def say(text: str, style: str) -> None:
        console.print(Text(text, style=style), markup=False, highlight=False, emoji=False)

    try:
        invite = parse_invite_url(url)
    except ValueError as exc:
        say(str(exc), "red")
        return EXIT_NOT_JOINED
    if not name.strip():
        say("the name to join with must not be empty", "red")
        return EXIT_NOT_JOINED
    try:
        tls = tls_context_for(invite, cafile)
    except ValueError as exc:
        say(str(exc), "red")
        return EXIT_NOT_JOINED
    try:
        ws = await connect(invite.ws_url, ssl=tls, open_timeout=JOIN_TIMEOUT_S)
    except TimeoutError:
        say(f"cannot connect to {invite}: no answer within {JOIN_TIMEOUT_S:g}s", "red")
        return EXIT_NOT_JOINED
    except (OSError, WebSocketException) as exc:
        log.debug("connecting to %s failed", invite, exc_info=True)
        say(f"cannot connect to {invite}: {connect_failure(exc, invite, cafile)}", "red")
        return EXIT_NOT_JOINED
    async with ws:
        welcome = await _join(ws, invite, name, console)
        if welcome is None:
            return EXIT_NOT_JOINED
        say(f"joined party {welcome.party} as {welcome.name}", "green")
        if interactive:
            say("type a prompt and press Enter; /status, /queue, /cancel …; /quit to leave", "dim")
        log.info("joined", extra={"platform": "websocket", "party": welcome.party})
        notices: asyncio.Queue[_Notice] = asyncio.Queue()
        closing = asyncio.Event()
        id_prefix = f"{name}-{uuid.uuid4().hex[:8]}-"
        reader = _Reader(
            _Screen(console, is_interactive=interactive),
            notices,
            id_prefix=id_prefix,
            invite=invite,
            is_interactive=interactive,
        )
        async with asyncio.TaskGroup() as group:
            line_task = group.create_task(
                _send_lines(
                    ws,
                    lines,
                    notices,
                    closing,
                    id_prefix=id_prefix,
                    is_interactive=interactive,
                )
            )
            group.create_task(reader.run(ws, closing, line_task))
    code = None if line_task.cancelled() else line_task.result()
    if code is None:  # the host went away first
        return EXIT_OK if interactive else EXIT_UNANSWERED
    return code


# --- the command-line entry point --------------------------------------------------------------


async def _stdin_lines() -> AsyncIterator[str]:
    """Lines of ``sys.stdin`` without blocking the loop.

    A daemon thread reads, not `asyncio.to_thread`: a blocked read in the default
    executor would keep `asyncio.run` from returning after the host closes while
    the user has not pressed Enter. `connect_read_pipe` is not used because it
    refuses regular files (`concordia join URL < prompts.txt`).
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[str | None] = asyncio.Queue()

    def post(item: str | None) -> bool:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, item)
        except RuntimeError:  # the loop has closed: nobody is listening any more
            return False
        return True

    def pump() -> None:
        try:
            for line in sys.stdin:
                if not post(line):
                    return
        except (OSError, ValueError) as exc:  # ValueError: undecodable input
            log.warning("stopped reading standard input: %s", exc)
        post(None)

    threading.Thread(target=pump, name="concordia-stdin", daemon=True).start()
    while (line := await queue.get()) is not None:
        yield line


def main(url: str, name: str, cafile: Path | None = None) -> int:
    """`concordia join URL [--cafile CA.pem]`: interactive when stdin is a terminal.

    Returns the exit code.
    """
    console = Console(stderr=False)
    interactive = sys.stdin.isatty()
    try:
        return asyncio.run(
            run_join(
                url,
                name,
                lines=_stdin_lines(),
                console=console,
                interactive=interactive,
                cafile=cafile,
            )
        )
    except KeyboardInterrupt:
        return 130
