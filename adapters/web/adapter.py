"""The built-in transport: one aiohttp server for the page, WebSocket v1 and `/healthz`.

aiohttp rather than `websockets` with its HTTP hook: one app serves the page's files, the
WebSocket and TLS, with a response hook that puts the security headers on every answer
(errors and files included), and it is already installed (discord.py depends on it).

Each connection has two tasks: the reader (`_read`) turns frames into party calls, and the
sender (`_Client.pump`) drains the connection's own queue, so a slow client never holds up
the runner. The token travels in the first frame, never in the URL. With sharing on, a
second loopback listener is given to the tunnel alone: only there is the forwarded client
address believed (`http.client_address`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import assert_never
from urllib.parse import urlsplit

from aiohttp import WSCloseCode, WSMsgType, web

from adapters import wire
from adapters.web.http import (
    PAGE_DIR,
    add_security_headers,
    client_address,
    local_base,
    origin_allowed,
    tls_context,
)
from adapters.web.share import Tunnel
from bot.config import WebSocketSettings
from bot.images import IMAGE_TYPES, check_image, image_refusal
from bot.invite import JoinAddress
from bot.model import (
    Accepted,
    ApprovalRequested,
    ApprovalResolved,
    Author,
    BatchDone,
    BatchStarted,
    Command,
    CommandResult,
    Image,
    Notice,
    OutputText,
    PartyEvent,
    Prompt,
    QuestionAsked,
    QuestionClosed,
    Rejected,
)
from bot.pace import AttemptThrottle
from bot.party import IdentityTaken, Party
from bot.safety import clean_name, strip_controls

__all__ = ["PLATFORM", "WebAdapter", "event_frame", "prompt_images"]

log = logging.getLogger(__name__)

PLATFORM = "websocket"
_MAX_NAME_CHARS = 64
# A client this many frames behind is dropped rather than let the queue grow forever.
_MAX_QUEUED_FRAMES = 100_000
# Prompts of one connection being stored at once; the reader waits beyond that.
_MAX_PROMPTS_IN_FLIGHT = 256
# Refusals of one address held back at once; past that they are answered at once, unchecked.
_MAX_HELD_REFUSALS = 8
# Pings keep a tunnel's idle connection open and find a dead one.
_HEARTBEAT_S = 20.0
_REPLAY_MAX_CHARS = 4_000_000  # a running batch's output kept for late joiners
_IMAGE_NAME_CHARS = 100  # an image's name is quoted to Claude and in the batch


@dataclass(frozen=True, slots=True)
class _Frame:
    payload: str


@dataclass(frozen=True, slots=True)
class _Close:
    code: int
    reason: str


class _Gone(Exception):
    """The connection closed under the sender."""


class _Client:
    """One joined connection: its outgoing queue is fed by the party and by replies."""

    def __init__(self, ws: web.WebSocketResponse, author: Author):
        self.ws = ws
        self.author = author
        self.outgoing: asyncio.Queue[_Frame | _Close] = asyncio.Queue()

    def send(self, frame: wire.ServerFrame) -> None:
        if self.outgoing.qsize() >= _MAX_QUEUED_FRAMES:
            self.outgoing.put_nowait(_Close(wire.CloseCode.TOO_SLOW, "client too slow"))
            return
        self.outgoing.put_nowait(_Frame(wire.format_frame(frame)))

    def deliver(self, event: PartyEvent) -> None:
        self.send(event_frame(event))

    async def pump(self) -> None:
        while True:
            item = await self.outgoing.get()
            if isinstance(item, _Close):
                await self.ws.close(code=item.code, message=item.reason.encode())
                return
            try:
                await self.ws.send_str(item.payload)
            except ConnectionResetError:
                raise _Gone from None


class _Replay:
    """The latest batch, its output so far and its end if it ended, for a client that joins
    with `catch_up`: a page back from a dropped connection shows the rest of the turn, or how
    it ended, instead of a gap."""

    def __init__(self) -> None:
        self.batch: BatchStarted | None = None
        self.done: BatchDone | None = None
        self._text: list[str] = []
        self._chars = 0

    def deliver(self, event: PartyEvent) -> None:
        match event:
            case BatchStarted():
                self.batch, self.done, self._text, self._chars = event, None, [], 0
            case OutputText(batch_id=batch_id, text=text):
                is_latest = self.batch is not None and batch_id == self.batch.batch.batch_id
                if is_latest and self._chars + len(text) <= _REPLAY_MAX_CHARS:
                    self._text.append(text)
                    self._chars += len(text)
            case BatchDone():
                self.done = event
            case _:
                pass

    def frames(self) -> list[wire.ServerFrame]:
        if self.batch is None:
            return []
        batch_id = self.batch.batch.batch_id
        frames = [event_frame(self.batch), wire.Output(batch_id=batch_id, text="".join(self._text))]
        if self.done is not None and self.done.batch_id == batch_id:
            frames.append(event_frame(self.done))
        return frames


def event_frame(event: PartyEvent) -> wire.ServerFrame:
    """A party event as its v1 frame."""
    match event:
        case BatchStarted(batch=batch):
            return wire.Batch(
                batch_id=batch.batch_id,
                prompt=batch.prompt,
                attempt=batch.attempt,
                sources=tuple(
                    wire.Source(prompt_id=s.prompt_id, author=s.author) for s in batch.sources
                ),
                groups=tuple(
                    wire.Group(prompt_ids=g.prompt_ids, instruction=g.instruction)
                    for g in batch.groups
                ),
            )
        case OutputText(batch_id=batch_id, text=text):
            return wire.Output(batch_id=batch_id, text=text)
        case BatchDone(batch_id=batch_id, status=status, detail=detail):
            return wire.Done(batch_id=batch_id, status=status.value, detail=detail)
        case Notice(message=message):
            return wire.System(message=message)
        case ApprovalRequested():
            return wire.Approval(
                approval_id=event.approval_id,
                batch_id=event.batch_id,
                tool=event.tool,
                summary=event.summary,
                input=event.detail,
                needed=event.needed,
                timeout_s=event.timeout_s,
            )
        case ApprovalResolved():
            return wire.ApprovalDone(
                approval_id=event.approval_id,
                batch_id=event.batch_id,
                allowed=event.allowed,
                text=event.text,
            )
        case QuestionAsked():
            return wire.Question(
                question_id=event.question_id,
                batch_id=event.batch_id,
                kind=event.kind.value,
                header=event.header,
                text=event.text,
                options=tuple(
                    wire.QuestionOption(label=o.label, description=o.description)
                    for o in event.options
                ),
                multi_select=event.multi_select,
                answerers=event.answerers.value,
                timeout_s=event.timeout_s,
            )
        case QuestionClosed():
            return wire.QuestionDone(
                question_id=event.question_id,
                batch_id=event.batch_id,
                answered=event.answered,
                text=event.text,
            )
        case _:
            assert_never(event)


def prompt_images(
    images: tuple[wire.PromptImage, ...], *, max_image_bytes: int, max_frame_bytes: int
) -> tuple[Image, ...] | str:
    """A prompt frame's images as the party takes them, or why the prompt is refused.

    Fail closed: one image of a type Claude does not read, whose bytes are not the type it
    claims, or over ``max_image_bytes`` refuses the whole prompt (its sender can fix it and
    send again); nothing is dropped silently. Names are made one plain line."""
    taken: list[Image] = []
    for n, image in enumerate(images, 1):
        name = " ".join(strip_controls(image.name).split())[:_IMAGE_NAME_CHARS] or f"image {n}"
        if refusal := image_refusal(name, len(image.data), max_image_bytes):
            if len(image.data) > max_image_bytes:
                # Both limits hold: one shrunk under the first must still fit the second.
                refusal += (
                    f"; and the whole prompt frame, its images in base64, must fit in "
                    f"{max_frame_bytes:,} bytes (websocket.max_frame_bytes)"
                )
            return refusal
        if image.media_type not in IMAGE_TYPES:
            return (
                f"{name}: {image.media_type[:40]!r} is not an image type Claude reads "
                f"({', '.join(IMAGE_TYPES)})"
            )
        checked = check_image(name, image.data, max_image_bytes)
        if checked.refusal:
            return checked.refusal
        if checked.media_type != image.media_type:
            return f"{name} is not a {image.media_type} image: its bytes are {checked.media_type}"
        taken.append(Image(name, image.media_type, image.data))
    return tuple(taken)


def _result_frame(result: CommandResult) -> wire.CommandResult:
    return wire.CommandResult(
        name=result.name, ok=result.ok, text=result.text, public=result.public
    )


class WebAdapter:
    """Serves one party on ``websocket.host:port``: the page, WebSocket v1 and `/healthz`.

    `start` returns once listening; `run` keeps the tunnel (when sharing) until cancelled.
    """

    name = PLATFORM

    def __init__(
        self,
        settings: WebSocketSettings,
        party: Party,
        *,
        address: JoinAddress,
        tunnel: Tunnel | None = None,
        complain: Callable[[str], None] = lambda line: log.warning("%s", line),
    ):
        self._settings = settings
        self._party = party
        self._address = address
        self._tunnel = tunnel
        self._complain = complain
        self._runner: web.AppRunner | None = None
        self._port: int | None = None
        self._tunnel_port: int | None = None
        self._throttle = AttemptThrottle()
        self._held: dict[str, int] = {}  # refusals being held back, per address
        self._replay = _Replay()
        self._unsubscribe: Callable[[], None] = lambda: None
        self._open: set[web.WebSocketResponse] = set()

    @property
    def port(self) -> int:
        """The bound port (useful when configured as 0)."""
        if self._port is None:
            raise RuntimeError("the web transport is not started")
        return self._port

    async def start(self) -> None:
        settings = self._settings
        app = web.Application(client_max_size=1024)  # nothing is ever posted
        app.on_response_prepare.append(add_security_headers)
        app.router.add_get("/", self._root)
        app.router.add_get("/healthz", _healthz)
        app.router.add_static("/static/", PAGE_DIR, show_index=False, follow_symlinks=False)
        runner = self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        ssl = None
        if settings.tls_cert_file and settings.tls_key_file:
            ssl = tls_context(settings.tls_cert_file, settings.tls_key_file)
        site = web.TCPSite(runner, settings.host, settings.port, ssl_context=ssl)
        await site.start()
        self._port = int(runner.addresses[0][1])
        if self._tunnel is not None:
            # The tunnel's own door: loopback only, plain HTTP (the tunnel is the TLS end).
            door = socket.create_server(("127.0.0.1", 0))
            self._tunnel_port = int(door.getsockname()[1])
            await web.SockSite(runner, door).start()
        self._address.move(local_base(settings, self._port))
        self._unsubscribe = self._party.subscribe(self._replay)
        log.info("web transport listening on %s:%d", settings.host, self._port)

    async def run(self) -> None:
        if self._runner is None:
            raise RuntimeError("start() the web transport before run()")
        if self._tunnel is None or self._tunnel_port is None:
            await asyncio.Event().wait()  # the server runs on its own; this only waits
            return
        log.info("sharing through %s", self._tunnel.describe)
        await self._tunnel.run(self._tunnel_port, self._address.move, self._complain)

    @property
    def client_count(self) -> int:
        """WebSocket connections open now (pages and terminals)."""
        return len(self._open)

    async def stop(self) -> None:
        self._unsubscribe()
        for ws in list(self._open):
            with contextlib.suppress(ConnectionResetError):
                await ws.close(code=WSCloseCode.GOING_AWAY, message=b"host shutting down")
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- HTTP -------------------------------------------------------------------------------

    async def _root(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(
            max_msg_size=self._settings.max_frame_bytes,
            # Prompts are text; compression would let a small frame inflate past the limit.
            compress=False,
            heartbeat=_HEARTBEAT_S,
        )
        if not ws.can_prepare(request).ok:
            return web.FileResponse(PAGE_DIR / "index.html")
        if not origin_allowed(request, self._known_hosts()):
            log.warning("refused a WebSocket from another site's page", extra={"source": "?"})
            return web.Response(status=403, text="a page from another site may not connect\n")
        await ws.prepare(request)
        self._open.add(ws)
        try:
            await self._serve(ws, client_address(request, self._tunnel_port))
        finally:
            self._open.discard(ws)
        return ws

    def _known_hosts(self) -> set[str]:
        netloc = urlsplit(self._address.base).netloc
        return {netloc} if netloc else set()

    # -- one connection ---------------------------------------------------------------------

    async def _serve(self, ws: web.WebSocketResponse, source: str) -> None:
        joined = await self._handshake(ws, source)
        if joined is None:
            return
        client, catch_up = joined
        unsubscribe = self._party.subscribe(client)
        if catch_up:
            for frame in self._replay.frames():
                client.send(frame)
        # Asked before this client joined: they wait for someone to decide or answer.
        for approval in self._party.waiting_approvals():
            client.deliver(approval)
        for question in self._party.waiting_questions():
            client.deliver(question)
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(client.pump(), name="ws-sender")
                await self._read(client, group)
                # The sender closes after the frames already queued (a last command_result).
                client.outgoing.put_nowait(_Close(wire.CloseCode.NORMAL_CLOSURE, "bye"))
        except* _Gone:
            pass
        finally:
            unsubscribe()

    async def _handshake(
        self, ws: web.WebSocketResponse, source: str
    ) -> tuple[_Client, bool] | None:
        try:
            message = await ws.receive(timeout=self._settings.join_timeout_s)
        except TimeoutError:
            message = None
        if message is None or message.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
            await ws.close(code=wire.CloseCode.POLICY_VIOLATION, message=b"join frame expected")
            return None
        match wire.parse_client_frame(message.data):
            case wire.Join(token=token, name=name, catch_up=catch_up) if (
                name.strip() and len(name) <= _MAX_NAME_CHARS
            ):
                pass  # a good join: go on below
            case wire.Join() | wire.Invalid(kind=wire.ClientKind.JOIN):  # the name is wrong
                bad_name = f"name must be 1-{_MAX_NAME_CHARS} characters"
                await _refuse(ws, wire.ErrorCode.BAD_NAME, bad_name, "bad name")
                return None
            case _:
                no_join = "the first frame must be join"
                await _refuse(ws, wire.ErrorCode.JOIN_EXPECTED, no_join, "join frame expected")
                return None
        name = clean_name(name)
        # The name is the identity here, chosen by the client: not verified.
        author = Author(PLATFORM, name, name, is_verified=False)
        try:
            role = await self._party.join(token, author) if token else None
        except IdentityTaken as exc:
            await _refuse(ws, wire.ErrorCode.NAME_TAKEN, str(exc), "name taken")
            return None
        if role is None:
            if self._held.get(source, 0) >= _MAX_HELD_REFUSALS:
                # A flood from one address: the rest is answered at once, not queued up.
                busy = "too many refused joins from your address; wait a little and try again"
                await _refuse(ws, wire.ErrorCode.TOO_MANY_ATTEMPTS, busy, "too many attempts")
                return None
            await self._hold_refusal(source)
            refused = "the invite token was refused"
            await _refuse(ws, wire.ErrorCode.BAD_TOKEN, refused, "bad token")
            return None
        # A good token is never held back, whatever else came from its address: a flood of
        # bad tokens through the shared tunnel address must not lock the team out.
        self._throttle.succeeded(source)
        welcome = wire.Welcome(
            protocol=wire.PROTOCOL_VERSION,
            party=self._party.name,
            name=name,
            role=role.value,
            max_image_bytes=self._party.max_image_bytes,
            max_frame_bytes=self._settings.max_frame_bytes,
        )
        with contextlib.suppress(ConnectionResetError):
            await ws.send_str(wire.format_frame(welcome))
        return _Client(ws, author), catch_up

    async def _hold_refusal(self, source: str) -> None:
        """Pace repeated bad tokens from one address: the refusal waits, doubling each time."""
        delay = self._throttle.delay_s(source)
        self._throttle.failed(source)
        log.warning(
            "refused a join with a bad token", extra={"platform": PLATFORM, "source": source}
        )
        if not delay:
            return
        self._held[source] = self._held.get(source, 0) + 1
        try:
            await asyncio.sleep(delay)  # pacing, not synchronisation
        finally:
            self._held[source] -= 1
            if not self._held[source]:
                del self._held[source]

    async def _read(self, client: _Client, group: asyncio.TaskGroup) -> None:
        """Prompts are stored concurrently (a client may pipeline many; each waits for a
        group commit), up to a bound; a command first waits for the client's prompts."""
        slots = asyncio.Semaphore(_MAX_PROMPTS_IN_FLIGHT)
        in_flight: set[asyncio.Task[None]] = set()

        async def submit(frame: wire.Prompt) -> None:
            try:
                await self._prompt(client, frame)
            finally:
                slots.release()

        async for message in client.ws:
            if message.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
                return  # an error (a frame over max_frame_bytes: aiohttp closes with 1009)
            frame = wire.parse_client_frame(message.data)
            match frame:
                case wire.Prompt():
                    await slots.acquire()
                    task = group.create_task(submit(frame))
                    in_flight.add(task)
                    task.add_done_callback(in_flight.discard)
                case wire.Approve(approval_id=approval_id, decision=decision):
                    result = await self._party.decide(approval_id, client.author, decision)
                    client.send(_result_frame(result))
                case wire.Answer(question_id=question_id, text=text):
                    result = await self._party.answer(question_id, client.author, text)
                    client.send(_result_frame(result))
                case wire.Command(name=name, args=args):
                    if in_flight:
                        await asyncio.wait(in_flight)
                    if name == "shell":
                        # It waits for Claude's turn and runs a while: keep reading meanwhile,
                        # so this client can still prompt, or cancel it.
                        group.create_task(self._command(client, name, args))
                    elif not await self._command(client, name, args):
                        return
                case wire.Join() | wire.Invalid(kind=wire.ClientKind.JOIN):
                    # join is the type of the first frame only; after it, it is unknown.
                    client.send(
                        wire.Error(
                            code=wire.ErrorCode.UNKNOWN_TYPE,
                            message=f"unknown frame type {wire.ClientKind.JOIN.value!r}",
                        )
                    )
                case wire.Invalid():
                    if frame.kind is wire.ClientKind.COMMAND and in_flight:
                        await asyncio.wait(in_flight)  # answered in turn, as a good command is
                    client.send(frame.as_error())
                case _:
                    assert_never(frame)

    async def _command(self, client: _Client, name: str, args: str) -> bool:
        """Run one command and send its result; False once the client has left."""
        result = await self._party.command(Command(name, args, client.author))
        client.send(_result_frame(result))
        return not (name == "leave" and result.ok)

    async def _prompt(self, client: _Client, frame: wire.Prompt) -> None:
        # The client id is scoped by the participant, so two clients cannot collide.
        source_id = f"{PLATFORM}:{client.author.user_id}:{frame.id}"
        images = prompt_images(
            frame.images or (),
            max_image_bytes=self._party.max_image_bytes,
            max_frame_bytes=self._settings.max_frame_bytes,
        )
        if isinstance(images, str):
            client.send(wire.Rejected(id=frame.id, reason=images))
            return
        prompt = Prompt(source_id, client.author, frame.text, images=images)
        submission = await self._party.submit(prompt)
        match submission:
            case Accepted(prompt_id=prompt_id, position=position, is_duplicate=is_duplicate):
                client.send(
                    wire.Queued(
                        id=frame.id, prompt_id=prompt_id, position=position, duplicate=is_duplicate
                    )
                )
            case Rejected(reason=reason):
                client.send(wire.Rejected(id=frame.id, reason=reason))
            case _:
                assert_never(submission)


async def _healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def _refuse(
    ws: web.WebSocketResponse, code: wire.ErrorCode, message: str, reason: str
) -> None:
    """Answer a join with an error frame, then close: 4001 after bad_token, else 1008."""
    with contextlib.suppress(ConnectionResetError):
        await ws.send_str(wire.format_frame(wire.Error(code=code, message=message)))
    close_code = (
        wire.CloseCode.BAD_TOKEN
        if code is wire.ErrorCode.BAD_TOKEN
        else wire.CloseCode.POLICY_VIOLATION
    )
    await ws.close(code=close_code, message=reason.encode())
