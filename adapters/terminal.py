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
import json
import logging
import re
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Literal, TypedDict, assert_never
from urllib.parse import urlsplit

from rich.console import Console
from rich.rule import Rule
from rich.status import Status
from rich.text import Text
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, WebSocketException

from bot.model import TurnStatus

__all__ = [
    "EXIT_NOT_JOINED",
    "EXIT_OK",
    "EXIT_UNANSWERED",
    "InviteUrl",
    "main",
    "parse_invite_url",
    "run_join",
]

log = logging.getLogger(__name__)

EXIT_OK = 0
"""Piped: every prompt of ours was answered successfully. Interactive: we left."""
EXIT_UNANSWERED = 1
"""Piped: a prompt of ours was rejected, failed or interrupted, or the host went away."""
EXIT_NOT_JOINED = 2
"""The invite URL was wrong, the host could not be reached, or it refused us."""

JOIN_TIMEOUT_S = 10.0
"""Deadline for the TCP/WebSocket handshake and again for the host's `welcome`."""
BAD_TOKEN_CLOSE_WAIT_S = 2.0
"""After an `error` with code bad_token, how long we wait for the host's close 4001."""

_SCHEME = "concordia"
_PROTOCOL_VERSION = 1
_CLOSE_BAD_TOKEN = 4001  # v1: the host closes with this code after a bad_token error
_ERROR_BAD_TOKEN = "bad_token"
_QUIT_COMMANDS = frozenset({"quit", "exit"})
# "/status", "/cancel 3"; "/etc/hosts is broken" is a prompt, not a command.
_COMMAND_LINE = re.compile(r"/(?P<name>[A-Za-z][A-Za-z0-9_-]*)(?:\s+(?P<args>.*))?", re.DOTALL)


# --- invite URLs -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class InviteUrl:
    """A parsed ``concordia://HOST:PORT/TOKEN``; ``host`` has no IPv6 brackets."""

    host: str
    port: int
    token: str

    @property
    def ws_url(self) -> str:
        """Where to connect. The token is deliberately absent: it travels in the join frame."""
        return f"ws://{self._netloc}/"

    @property
    def _netloc(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def __str__(self) -> str:
        return self._netloc


def parse_invite_url(url: str) -> InviteUrl:
    """Parse an invite URL as printed by `concordia run`.

    Raises `ValueError` naming the part that is wrong. The message never repeats the
    token, so it is safe to show or log.
    """
    text = url.strip()
    hint = "an invite URL looks like concordia://HOST:PORT/TOKEN"
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        raise ValueError(
            f"invite URL is malformed ({exc}); {hint} (IPv6 hosts go in brackets)"
        ) from None
    if parts.scheme.lower() != _SCHEME:
        got = f"{parts.scheme}://" if parts.scheme else "no scheme"
        raise ValueError(f"invite URL must start with {_SCHEME}:// (got {got}); {hint}")
    if parts.username is not None or parts.password is not None:
        raise ValueError(f"invite URL must not carry a user name or password; {hint}")
    host = parts.hostname
    if not host:
        raise ValueError(f"invite URL has no host; {hint}")
    if port is None:
        raise ValueError(f"invite URL has no port after the host; {hint}")
    if port == 0:
        raise ValueError(f"invite URL port must be 1-65535, not 0; {hint}")
    if parts.query or parts.fragment or "?" in text or "#" in text:
        raise ValueError(f"invite URL must end with the token (no ? or # part); {hint}")
    token = parts.path.removeprefix("/")
    if not token:
        raise ValueError(f"invite URL has no token after HOST:PORT/; {hint}")
    if "/" in token or any(ch.isspace() for ch in token):
        raise ValueError(f"invite URL token must be one path segment without spaces; {hint}")
    return InviteUrl(host=host, port=port, token=token)


# --- wire frames: client -> server -------------------------------------------------------


class _JoinFrame(TypedDict):
    type: Literal["join"]
    token: str
    name: str


class _PromptFrame(TypedDict):
    type: Literal["prompt"]
    id: str
    text: str


class _CommandFrame(TypedDict):
    type: Literal["command"]
    name: str
    args: str


# --- wire frames: server -> client -------------------------------------------------------


class _MalformedFrame(ValueError):
    """A known server frame is missing a field or has the wrong type for one."""

    def __init__(self, kind: str, field: str, problem: str) -> None:
        super().__init__(f"{kind} frame: field {field!r} {problem}")
        self.kind = kind
        self.field = field


@dataclass(frozen=True, slots=True)
class _Welcome:
    party: str
    name: str


@dataclass(frozen=True, slots=True)
class _Error:
    code: str
    message: str
    client_id: str | None  # set when the host says which prompt of ours it refers to


@dataclass(frozen=True, slots=True)
class _Queued:
    client_id: str
    prompt_id: str
    position: int


@dataclass(frozen=True, slots=True)
class _Rejected:
    client_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class _Source:
    prompt_id: str
    author: str


@dataclass(frozen=True, slots=True)
class _Batch:
    batch_id: str
    prompt: str
    sources: tuple[_Source, ...]


@dataclass(frozen=True, slots=True)
class _Output:
    batch_id: str
    text: str


@dataclass(frozen=True, slots=True)
class _Done:
    batch_id: str
    status: TurnStatus | None  # None: a status this client does not know yet
    status_text: str


@dataclass(frozen=True, slots=True)
class _System:
    message: str


@dataclass(frozen=True, slots=True)
class _Approval:
    approval_id: str
    summary: str
    input: str
    needed: int


@dataclass(frozen=True, slots=True)
class _ApprovalDone:
    approval_id: str
    allowed: bool
    text: str


@dataclass(frozen=True, slots=True)
class _CommandResult:
    name: str
    is_ok: bool
    text: str


_ServerFrame = (
    _Welcome
    | _Error
    | _Queued
    | _Rejected
    | _Batch
    | _Output
    | _Done
    | _System
    | _Approval
    | _ApprovalDone
    | _CommandResult
)


def _field(raw: Mapping[str, object], kind: str, field: str) -> object:
    if field not in raw:
        raise _MalformedFrame(kind, field, "is missing")
    return raw[field]


def _str(raw: Mapping[str, object], kind: str, field: str) -> str:
    value = _field(raw, kind, field)
    if not isinstance(value, str):
        raise _MalformedFrame(kind, field, "must be a string")
    return value


def _ident(raw: Mapping[str, object], kind: str, field: str) -> str:
    """An id the host may send as a string or an integer; we compare them as text."""
    value = _field(raw, kind, field)
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise _MalformedFrame(kind, field, "must be a string or an integer")
    return str(value)


def _int(raw: Mapping[str, object], kind: str, field: str) -> int:
    value = _field(raw, kind, field)
    if isinstance(value, bool) or not isinstance(value, int):
        raise _MalformedFrame(kind, field, "must be an integer")
    return value


def _bool(raw: Mapping[str, object], kind: str, field: str) -> bool:
    value = _field(raw, kind, field)
    if not isinstance(value, bool):
        raise _MalformedFrame(kind, field, "must be true or false")
    return value


def _welcome(raw: Mapping[str, object]) -> _Welcome:
    return _Welcome(party=_ident(raw, "welcome", "party"), name=_str(raw, "welcome", "name"))


def _error(raw: Mapping[str, object]) -> _Error:
    # Only the code is named by v1; the human text and a prompt id are optional extras.
    code = _str(raw, "error", "code") if "code" in raw else ""
    message = _str(raw, "error", "message") if "message" in raw else ""
    client_id = _ident(raw, "error", "id") if "id" in raw else None
    return _Error(code=code, message=message or code or "unspecified error", client_id=client_id)


def _queued(raw: Mapping[str, object]) -> _Queued:
    return _Queued(
        client_id=_ident(raw, "queued", "id"),
        prompt_id=_ident(raw, "queued", "prompt_id"),
        position=_int(raw, "queued", "position"),
    )


def _rejected(raw: Mapping[str, object]) -> _Rejected:
    return _Rejected(
        client_id=_ident(raw, "rejected", "id"), reason=_str(raw, "rejected", "reason")
    )


def _batch(raw: Mapping[str, object]) -> _Batch:
    sources_raw = _field(raw, "batch", "sources")
    if not isinstance(sources_raw, list):
        raise _MalformedFrame("batch", "sources", "must be a list")
    sources: list[_Source] = []
    for item in sources_raw:
        if not isinstance(item, dict):
            raise _MalformedFrame("batch", "sources", "must hold objects")
        sources.append(
            _Source(
                prompt_id=_ident(item, "batch sources[]", "prompt_id"),
                author=_str(item, "batch sources[]", "author"),
            )
        )
    return _Batch(
        batch_id=_ident(raw, "batch", "batch_id"),
        prompt=_str(raw, "batch", "prompt"),
        sources=tuple(sources),
    )


def _output(raw: Mapping[str, object]) -> _Output:
    return _Output(batch_id=_ident(raw, "output", "batch_id"), text=_str(raw, "output", "text"))


def _done(raw: Mapping[str, object]) -> _Done:
    status_text = _str(raw, "done", "status")
    try:
        status: TurnStatus | None = TurnStatus(status_text)
    except ValueError:
        status = None
    return _Done(batch_id=_ident(raw, "done", "batch_id"), status=status, status_text=status_text)


def _approval(raw: Mapping[str, object]) -> _Approval:
    needed = raw.get("needed", 1)
    return _Approval(
        approval_id=_ident(raw, "approval", "approval_id"),
        summary=_str(raw, "approval", "summary"),
        input=_str(raw, "approval", "input"),
        needed=needed if isinstance(needed, int) else 1,
    )


def _approval_done(raw: Mapping[str, object]) -> _ApprovalDone:
    allowed = raw.get("allowed")
    return _ApprovalDone(
        approval_id=_ident(raw, "approval_done", "approval_id"),
        allowed=allowed is True,
        text=_str(raw, "approval_done", "text"),
    )


def _system(raw: Mapping[str, object]) -> _System:
    return _System(message=_str(raw, "system", "message"))


def _command_result(raw: Mapping[str, object]) -> _CommandResult:
    return _CommandResult(
        name=_str(raw, "command_result", "name"),
        is_ok=_bool(raw, "command_result", "ok"),
        text=_str(raw, "command_result", "text"),
    )


_TRANSLATORS: dict[str, Callable[[Mapping[str, object]], _ServerFrame]] = {
    "welcome": _welcome,
    "error": _error,
    "queued": _queued,
    "rejected": _rejected,
    "batch": _batch,
    "output": _output,
    "done": _done,
    "system": _system,
    "approval": _approval,
    "approval_done": _approval_done,
    "command_result": _command_result,
}


def _parse_server_frame(raw: str) -> _ServerFrame | None:
    """Translate one text frame; None for a type this client does not know (v1 may grow).

    Raises `_MalformedFrame` for invalid JSON or a known type with a bad field.
    """
    try:
        decoded: object = json.loads(raw)
    except ValueError:
        raise _MalformedFrame("server", "(frame)", "is not valid JSON") from None
    if not isinstance(decoded, dict):
        raise _MalformedFrame("server", "(frame)", "is not a JSON object")
    kind = decoded.get("type")
    if not isinstance(kind, str):
        raise _MalformedFrame("server", "type", "is missing or not a string")
    translate = _TRANSLATORS.get(kind)
    return None if translate is None else translate(decoded)


# --- input lines ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _PromptLine:
    text: str


@dataclass(frozen=True, slots=True)
class _CommandLine:
    name: str
    args: str


class _Quit(enum.Enum):
    QUIT = "quit"


_Line = _PromptLine | _CommandLine | _Quit | None


def _parse_line(line: str) -> _Line:
    """Blank → None; ``/quit``/``/exit`` → quit; ``/word rest`` → command; else a prompt."""
    text = line.strip()
    if not text:
        return None
    match = _COMMAND_LINE.fullmatch(text)
    if match is None:
        return _PromptLine(text)
    name = match["name"].lower()
    if name in _QUIT_COMMANDS:
        return _Quit.QUIT
    return _CommandLine(name=name, args=(match["args"] or "").strip())


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

    def batch(self, frame: _Batch) -> None:
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

    def done(self, frame: _Done) -> None:
        match frame.status:
            case TurnStatus.SUCCESS:
                self.line("✓ done", "green")
            case TurnStatus.ERROR:
                self.line("✗ error", "red")
            case TurnStatus.INTERRUPTED:
                self.line("⏹ interrupted", "yellow")
            case None:
                self.line(f"⏹ ended ({frame.status_text})", "yellow")
            case _:
                assert_never(frame.status)

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
        self._ours_by_prompt_id: dict[str, str] = {}
        self._ours_by_batch: dict[str, list[str]] = {}

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

    def _is_ours(self, client_id: str) -> bool:
        return client_id.startswith(self._id_prefix)

    def _notify(self, notice: _Notice) -> None:
        # Only piped mode waits for answers; interactive sessions would just pile them up.
        if not self._is_interactive:
            self._notices.put_nowait(notice)

    def _handle(self, raw: str) -> None:
        log.debug("frame from host: %s", raw, extra={"platform": "websocket"})
        try:
            frame = _parse_server_frame(raw)
        except _MalformedFrame as exc:
            log.warning("ignoring a malformed frame from the host: %s", exc)
            return
        match frame:
            case None:
                pass  # a type from a newer protocol: ignore it (forward compatibility)
            case _Welcome():
                pass  # a repeated welcome changes nothing
            case _Error():
                self._screen.line(f"error: {frame.message}", "red")
                is_ours = frame.client_id is not None and self._is_ours(frame.client_id)
                self._notify(_HostError(frame.client_id if is_ours else None))
            case _Queued():
                if self._is_ours(frame.client_id):
                    self._ours_by_prompt_id[frame.prompt_id] = frame.client_id
                self._screen.line(f"queued #{frame.prompt_id} (position {frame.position})", "dim")
            case _Rejected():
                self._screen.line(f"rejected: {frame.reason}", "red")
                if self._is_ours(frame.client_id):
                    self._notify(_Answered(frame.client_id, is_success=False))
            case _Batch():
                ours = [
                    client_id
                    for source in frame.sources
                    if (client_id := self._ours_by_prompt_id.pop(source.prompt_id, None))
                ]
                if ours:
                    self._ours_by_batch.setdefault(frame.batch_id, []).extend(ours)
                self._screen.batch(frame)
            case _Output():
                self._screen.output(frame.text)
            case _Done():
                self._screen.done(frame)
                is_success = frame.status is TurnStatus.SUCCESS
                for client_id in self._ours_by_batch.pop(frame.batch_id, []):
                    self._notify(_Answered(client_id, is_success=is_success))
            case _System():
                self._screen.line(frame.message, "yellow")
            case _Approval():
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
            case _ApprovalDone():
                mark = "✅" if frame.allowed else "⛔"
                self._screen.line(f"{mark} approval {frame.approval_id}: {frame.text}", "magenta")
            case _CommandResult():
                self._screen.line(frame.text, "" if frame.is_ok else "red")
                self._notify(_CommandAnswered(is_ok=frame.is_ok))
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
                    command: _CommandFrame = {"type": "command", "name": name, "args": args}
                    commands_waiting += 1
                    await ws.send(json.dumps(command))
                case _PromptLine(text=text):
                    count += 1
                    client_id = f"{id_prefix}{count}"
                    prompt: _PromptFrame = {"type": "prompt", "id": client_id, "text": text}
                    outstanding.add(client_id)
                    await ws.send(json.dumps(prompt))
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
    if exc.rcvd.code == _CLOSE_BAD_TOKEN:
        return "the invite token was refused"
    reason = f": {exc.rcvd.reason}" if exc.rcvd.reason else ""
    return f"the host closed the connection (code {exc.rcvd.code}{reason})"


async def _join(
    ws: ClientConnection, invite: InviteUrl, name: str, console: Console
) -> _Welcome | None:
    """Send the join frame and wait for the host's answer; None (after saying why) if refused."""

    def say(text: str, style: str) -> None:
        console.print(Text(text, style=style), markup=False, highlight=False, emoji=False)

    join: _JoinFrame = {"type": "join", "token": invite.token, "name": name}
    try:
        await ws.send(json.dumps(join))
        async with asyncio.timeout(JOIN_TIMEOUT_S):
            while True:
                try:
                    frame = _parse_server_frame(await ws.recv(decode=True))
                except _MalformedFrame as exc:
                    say(f"{invite} does not speak the Concordia protocol: {exc}", "red")
                    return None
                match frame:
                    case _Welcome():
                        return frame
                    case _Error():
                        say(f"error: {frame.message}", "red")
                        await _wait_for_refusal(ws, frame)
                        await ws.close()  # then close_code holds the host's code if it closed first
                        if frame.code == _ERROR_BAD_TOKEN or ws.close_code == _CLOSE_BAD_TOKEN:
                            say("the invite token was refused", "red")
                        return None
                    case None:
                        continue  # a newer host's extra frame; the welcome still comes
                    case _:
                        say(f"{invite} sent {type(frame).__name__} before welcome", "red")
                        return None
    except TimeoutError:
        say(f"{invite} did not welcome us within {JOIN_TIMEOUT_S:g}s", "red")
    except ConnectionClosed as exc:
        say(_describe_close(exc, invite), "red")
    return None


async def _wait_for_refusal(ws: ClientConnection, frame: _Error) -> None:
    """After a bad_token error the host closes with 4001; let that close arrive."""
    if frame.code != _ERROR_BAD_TOKEN:
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
) -> int:
    """Join the party behind ``url`` as ``name`` and relay ``lines`` until done.

    Interactive: runs until ``/quit``, end of input or the host closes; returns 0.
    Piped: sends every line, then waits until each of our prompts is answered (and
    each command has its result); returns 0 if all succeeded, 1 if any was rejected,
    failed or interrupted, or the host closed first. Returns 2 when joining fails
    (bad URL, unreachable host, refused token). Never raises for those; safe to cancel.
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
        ws = await connect(invite.ws_url, open_timeout=JOIN_TIMEOUT_S)
    except ConnectionRefusedError:
        say(f"cannot connect to {invite}: connection refused (is the host running?)", "red")
        return EXIT_NOT_JOINED
    except TimeoutError:
        say(f"cannot connect to {invite}: no answer within {JOIN_TIMEOUT_S:g}s", "red")
        return EXIT_NOT_JOINED
    except (OSError, WebSocketException) as exc:
        say(f"cannot connect to {invite}: {exc}", "red")
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


def main(url: str, name: str) -> int:
    """`concordia join URL`: interactive when stdin is a terminal; returns the exit code."""
    console = Console(stderr=False)
    interactive = sys.stdin.isatty()
    try:
        return asyncio.run(
            run_join(url, name, lines=_stdin_lines(), console=console, interactive=interactive)
        )
    except KeyboardInterrupt:
        return 130
