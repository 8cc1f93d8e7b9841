"""The built-in WebSocket transport (protocol v1, ARCHITECTURE.md): terminals join a party.

Each connection has two tasks: the reader (this module's `_serve`) turns frames into
party calls, and the sender drains the connection's own queue, so a slow client never
holds up the runner. The token travels in the first frame, never in the URL.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from dataclasses import dataclass
from typing import Any, assert_never

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from bot.config import WebSocketSettings
from bot.invite import AttemptThrottle
from bot.model import (
    Accepted,
    ApprovalRequested,
    ApprovalResolved,
    Author,
    BatchDone,
    BatchStarted,
    Command,
    Decision,
    Notice,
    OutputText,
    PartyEvent,
    Prompt,
    Rejected,
)
from bot.party import IdentityTaken, Party
from bot.safety import clean_name

__all__ = ["PLATFORM", "PROTOCOL_VERSION", "WebSocketAdapter"]

log = logging.getLogger(__name__)

PLATFORM = "websocket"
PROTOCOL_VERSION = 1
CLOSE_BAD_TOKEN = 4001
CLOSE_TOO_SLOW = 4008
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

    def send(self, frame: dict[str, Any]) -> None:
        if self.outgoing.qsize() >= _MAX_QUEUED_FRAMES:
            self.outgoing.put_nowait(_Close(CLOSE_TOO_SLOW, "client too slow"))
            return
        self.outgoing.put_nowait(_Frame(json.dumps(frame, ensure_ascii=False)))

    def deliver(self, event: PartyEvent) -> None:
        self.send(event_frame(event))

    async def pump(self) -> None:
        while True:
            item = await self.outgoing.get()
            if isinstance(item, _Close):
                await self.connection.close(item.code, item.reason)
                return
            await self.connection.send(item.payload)


def event_frame(event: PartyEvent) -> dict[str, Any]:
    """A party event as its v1 frame."""
    match event:
        case BatchStarted(batch=batch):
            return {
                "type": "batch",
                "batch_id": batch.batch_id,
                "prompt": batch.prompt,
                "attempt": batch.attempt,
                "sources": [{"prompt_id": s.prompt_id, "author": s.author} for s in batch.sources],
                "groups": [
                    {"prompt_ids": list(g.prompt_ids), "instruction": g.instruction}
                    for g in batch.groups
                ],
            }
        case OutputText(batch_id=batch_id, text=text):
            return {"type": "output", "batch_id": batch_id, "text": text}
        case BatchDone(batch_id=batch_id, status=status, detail=detail):
            return {"type": "done", "batch_id": batch_id, "status": status.value, "detail": detail}
        case Notice(message=message):
            return {"type": "system", "message": message}
        case ApprovalRequested():
            return {
                "type": "approval",
                "approval_id": event.approval_id,
                "batch_id": event.batch_id,
                "tool": event.tool,
                "summary": event.summary,
                "input": event.detail,
                "needed": event.needed,
                "timeout_s": event.timeout_s,
            }
        case ApprovalResolved():
            return {
                "type": "approval_done",
                "approval_id": event.approval_id,
                "batch_id": event.batch_id,
                "allowed": event.allowed,
                "text": event.text,
            }
        case _:
            assert_never(event)


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
                client.outgoing.put_nowait(_Close(1000, "bye"))
        except* ConnectionClosed:
            pass
        finally:
            unsubscribe()

    async def _handshake(self, connection: ServerConnection, source: str) -> _Client | None:
        try:
            async with asyncio.timeout(self._settings.join_timeout_s):
                raw = await connection.recv()
        except (TimeoutError, ConnectionClosed):
            await connection.close(1008, "join frame expected")
            return None
        frame = _parse(raw)
        if frame is None or frame.get("type") != "join":
            await _send(
                connection,
                {
                    "type": "error",
                    "code": "join_expected",
                    "message": "the first frame must be join",
                },
            )
            await connection.close(1008, "join frame expected")
            return None
        token, name = frame.get("token"), frame.get("name")
        if not isinstance(name, str) or not name.strip() or len(name) > _MAX_NAME_CHARS:
            await _send(
                connection,
                {
                    "type": "error",
                    "code": "bad_name",
                    "message": f"name must be 1-{_MAX_NAME_CHARS} characters",
                },
            )
            await connection.close(1008, "bad name")
            return None
        name = clean_name(name)
        # The name is the identity here, chosen by the client: not verified.
        author = Author(PLATFORM, name, name, is_verified=False)
        delay = self._throttle.delay_s(source)
        if delay:
            await asyncio.sleep(delay)  # pacing: slows down repeated bad tokens from one address
        try:
            role = (
                await self._party.join(token, author) if isinstance(token, str) and token else None
            )
        except IdentityTaken as exc:
            await _send(connection, {"type": "error", "code": "name_taken", "message": str(exc)})
            await connection.close(1008, "name taken")
            return None
        if role is None:
            self._throttle.failed(source)
            log.warning(
                "refused a join with a bad token", extra={"platform": PLATFORM, "source": source}
            )
            await _send(
                connection,
                {"type": "error", "code": "bad_token", "message": "the invite token was refused"},
            )
            await connection.close(CLOSE_BAD_TOKEN, "bad token")
            return None
        self._throttle.succeeded(source)
        await _send(
            connection,
            {
                "type": "welcome",
                "protocol": PROTOCOL_VERSION,
                "party": self._party.name,
                "name": name,
                "role": role.value,
            },
        )
        return _Client(connection, author)

    async def _read(self, client: _Client, group: asyncio.TaskGroup) -> None:
        """Prompts are stored concurrently (a client may pipeline many; each waits for a
        group commit), up to a bound; a command first waits for the client's prompts."""
        slots = asyncio.Semaphore(_MAX_PROMPTS_IN_FLIGHT)
        in_flight: set[asyncio.Task[None]] = set()

        async def submit(frame: dict[str, Any]) -> None:
            try:
                await self._prompt(client, frame)
            finally:
                slots.release()

        async for raw in client.connection:
            frame = _parse(raw)
            if frame is None:
                client.send(
                    {
                        "type": "error",
                        "code": "malformed",
                        "message": "a frame must be one JSON object",
                    }
                )
                continue
            kind = frame.get("type")
            if kind == "prompt":
                await slots.acquire()
                task = group.create_task(submit(frame))
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)
            elif kind == "approve":
                approval_id, decision = frame.get("approval_id"), frame.get("decision")
                if not isinstance(approval_id, int) or decision not in set(Decision):
                    client.send(
                        {
                            "type": "error",
                            "code": "malformed",
                            "message": "approve needs an integer approval_id and a decision: "
                            "allow, always or deny",
                        }
                    )
                    continue
                result = await self._party.decide(approval_id, client.author, Decision(decision))
                client.send(
                    {
                        "type": "command_result",
                        "name": result.name,
                        "ok": result.ok,
                        "text": result.text,
                        "public": result.public,
                    }
                )
            elif kind == "command":
                if in_flight:
                    await asyncio.wait(in_flight)
                name = frame.get("name")
                args = frame.get("args", "")
                if not isinstance(name, str) or not isinstance(args, str):
                    client.send(
                        {
                            "type": "error",
                            "code": "malformed",
                            "message": "command needs a name and string args",
                        }
                    )
                    continue
                if name == "shell":
                    # It waits for Claude's turn and runs a while: keep reading meanwhile,
                    # so this client can still prompt, or cancel it.
                    group.create_task(self._command(client, name, args))
                elif not await self._command(client, name, args):
                    return
            else:
                client.send(
                    {
                        "type": "error",
                        "code": "unknown_type",
                        "message": f"unknown frame type {kind!r}",
                    }
                )

    async def _command(self, client: _Client, name: str, args: str) -> bool:
        """Run one command and send its result; False once the client has left."""
        result = await self._party.command(Command(name, args, client.author))
        client.send(
            {
                "type": "command_result",
                "name": result.name,
                "ok": result.ok,
                "text": result.text,
                "public": result.public,
            }
        )
        return not (name == "leave" and result.ok)

    async def _prompt(self, client: _Client, frame: dict[str, Any]) -> None:
        client_id, text = frame.get("id"), frame.get("text")
        if (
            not isinstance(client_id, str | int)
            or isinstance(client_id, bool)
            or not isinstance(text, str)
        ):
            client.send(
                {"type": "error", "code": "malformed", "message": "prompt needs an id and a text"}
            )
            return
        # The client id is scoped by the participant, so two clients cannot collide.
        source_id = f"{PLATFORM}:{client.author.user_id}:{client_id}"
        submission = await self._party.submit(Prompt(source_id, client.author, text))
        match submission:
            case Accepted(prompt_id=prompt_id, position=position, is_duplicate=is_duplicate):
                client.send(
                    {
                        "type": "queued",
                        "id": client_id,
                        "prompt_id": prompt_id,
                        "position": position,
                        "duplicate": is_duplicate,
                    }
                )
            case Rejected(reason=reason):
                client.send({"type": "rejected", "id": client_id, "reason": reason})
            case _:
                assert_never(submission)


def _parse(raw: str | bytes) -> dict[str, Any] | None:
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError:
            return None
    try:
        frame = json.loads(raw)
    except json.JSONDecodeError:
        return None
    return frame if isinstance(frame, dict) else None


async def _send(connection: ServerConnection, frame: dict[str, Any]) -> None:
    with contextlib.suppress(ConnectionClosed):
        await connection.send(json.dumps(frame))
