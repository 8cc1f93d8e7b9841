"""The built-in WebSocket transport (protocol v1, ARCHITECTURE.md): terminals join a party.

Each connection has two tasks: the reader (this module's `_serve`) turns frames into
party calls, and the sender drains the connection's own queue, so a slow client never
holds up the runner. The token travels in the first frame, never in the URL.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import assert_never

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from adapters import wire
from bot.config import WebSocketSettings
from bot.model import (
    Accepted,
    ApprovalRequested,
    ApprovalResolved,
    Author,
    BatchDone,
    BatchStarted,
    Command,
    CommandResult,
    Notice,
    OutputText,
    PartyEvent,
    Prompt,
    Rejected,
)
from bot.pace import AttemptThrottle
from bot.party import IdentityTaken, Party
from bot.safety import clean_name

__all__ = ["PLATFORM", "WebSocketAdapter"]

log = logging.getLogger(__name__)

PLATFORM = "websocket"
_MAX_NAME_CHARS = 64
# A client this many frames behind is dropped rather than let the queue grow forever.
_MAX_QUEUED_FRAMES = 100_000
# Prompts of one connection being stored at once; the reader waits beyond that.
_MAX_PROMPTS_IN_FLIGHT = 256


@dataclass(frozen=True, slots=True)
class _Frame:
    payload: str


@dataclass(frozen=True, slots=True)
class _Close:
    code: int
    reason: str


class _Client:
    """One joined connection: its outgoing queue is fed by the party and by replies."""

    def __init__(self, connection: ServerConnection, author: Author):
        self.connection = connection
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
                await self.connection.close(item.code, item.reason)
                return
            await self.connection.send(item.payload)


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
        case _:
            assert_never(event)


def _result_frame(result: CommandResult) -> wire.CommandResult:
    return wire.CommandResult(
        name=result.name, ok=result.ok, text=result.text, public=result.public
    )


class WebSocketAdapter:
    """Serves one party on ``websocket.host:port``. `start` returns once listening."""

    name = PLATFORM

    def __init__(self, settings: WebSocketSettings, party: Party):
        self._settings = settings
        self._party = party
        self._server: Server | None = None
        self._throttle = AttemptThrottle()

    @property
    def port(self) -> int:
        """The bound port (useful when configured as 0)."""
        if self._server is None:
            raise RuntimeError("the WebSocket adapter is not started")
        sockets = list(self._server.sockets)
        return int(sockets[0].getsockname()[1])

    async def start(self) -> None:
        self._server = await serve(
            self._serve,
            self._settings.host,
            self._settings.port,
            max_size=self._settings.max_frame_bytes,
            # Prompts are text; compression would let a small frame inflate past max_size.
            compression=None,
        )
        log.info("websocket transport listening on %s:%d", self._settings.host, self.port)

    async def run(self) -> None:
        if self._server is None:
            raise RuntimeError("start() the WebSocket adapter before run()")
        await self._server.serve_forever()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _serve(self, connection: ServerConnection) -> None:
        source = str(connection.remote_address[0]) if connection.remote_address else "?"
        client = await self._handshake(connection, source)
        if client is None:
            return
        unsubscribe = self._party.subscribe(client)
        for approval in self._party.waiting_approvals():  # asked before this client joined
            client.deliver(approval)
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(client.pump(), name="ws-sender")
                await self._read(client, group)
                # The sender closes after the frames already queued (a last command_result).
                client.outgoing.put_nowait(_Close(wire.CloseCode.NORMAL_CLOSURE, "bye"))
        except* ConnectionClosed:
            pass
        finally:
            unsubscribe()

    async def _handshake(self, connection: ServerConnection, source: str) -> _Client | None:
        try:
            async with asyncio.timeout(self._settings.join_timeout_s):
                raw = await connection.recv()
        except (TimeoutError, ConnectionClosed):
            await connection.close(wire.CloseCode.POLICY_VIOLATION, "join frame expected")
            return None
        match wire.parse_client_frame(raw):
            case wire.Join(token=token, name=name) if name.strip() and len(name) <= _MAX_NAME_CHARS:
                pass  # a good join: go on below
            case wire.Join() | wire.Invalid(kind=wire.ClientKind.JOIN):  # the name is wrong
                bad_name = f"name must be 1-{_MAX_NAME_CHARS} characters"
                await _refuse(connection, wire.ErrorCode.BAD_NAME, bad_name, "bad name")
                return None
            case _:
                no_join = "the first frame must be join"
                await _refuse(
                    connection, wire.ErrorCode.JOIN_EXPECTED, no_join, "join frame expected"
                )
                return None
        name = clean_name(name)
        # The name is the identity here, chosen by the client: not verified.
        author = Author(PLATFORM, name, name, is_verified=False)
        delay = self._throttle.delay_s(source)
        if delay:
            await asyncio.sleep(delay)  # pacing: slows down repeated bad tokens from one address
        try:
            role = await self._party.join(token, author) if token else None
        except IdentityTaken as exc:
            await _refuse(connection, wire.ErrorCode.NAME_TAKEN, str(exc), "name taken")
            return None
        if role is None:
            self._throttle.failed(source)
            log.warning(
                "refused a join with a bad token", extra={"platform": PLATFORM, "source": source}
            )
            refused = "the invite token was refused"
            await _refuse(connection, wire.ErrorCode.BAD_TOKEN, refused, "bad token")
            return None
        self._throttle.succeeded(source)
        welcome = wire.Welcome(
            protocol=wire.PROTOCOL_VERSION, party=self._party.name, name=name, role=role.value
        )
        await _send(connection, welcome)
        return _Client(connection, author)

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

        async for raw in client.connection:
            frame = wire.parse_client_frame(raw)
            match frame:
                case wire.Prompt():
                    await slots.acquire()
                    task = group.create_task(submit(frame))
                    in_flight.add(task)
                    task.add_done_callback(in_flight.discard)
                case wire.Approve(approval_id=approval_id, decision=decision):
                    result = await self._party.decide(approval_id, client.author, decision)
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
        submission = await self._party.submit(Prompt(source_id, client.author, frame.text))
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


async def _send(connection: ServerConnection, frame: wire.ServerFrame) -> None:
    with contextlib.suppress(ConnectionClosed):
        await connection.send(wire.format_frame(frame))


async def _refuse(
    connection: ServerConnection, code: wire.ErrorCode, message: str, reason: str
) -> None:
    """Answer a join with an error frame, then close: 4001 after bad_token, else 1008."""
    await _send(connection, wire.Error(code=code, message=message))
    close_code = (
        wire.CloseCode.BAD_TOKEN
        if code is wire.ErrorCode.BAD_TOKEN
        else wire.CloseCode.POLICY_VIOLATION
    )
    await connection.close(close_code, reason)
