"""End-to-end harness: `concordia run` as a real subprocess and protocol-v1 WebSocket clients."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from adapters import wire
from tests.waits import until

_URL = re.compile(r"^(invite|host):\s+http://([\d.]+):(\d+)/#(\S+)$")
_START_TIMEOUT_S = 30.0


class BotProcess:
    """`concordia run --config FILE` in a subprocess; knows its port and tokens once started."""

    def __init__(
        self,
        config: Path,
        cwd: Path,
        env: dict[str, str] | None = None,
        args: tuple[str, ...] = (),
    ):
        self._config = config
        self._cwd = cwd
        self._env = env or {}
        self._args = args
        self.proc: asyncio.subprocess.Process | None = None
        self.port = 0
        self.invite = ""
        self.host_token = ""
        self.log: list[str] = []
        self.stdout: list[str] = []
        self._stdout_lines: asyncio.Queue[str] = asyncio.Queue()
        self.printed = asyncio.Event()  # set at each new line on stdout or stderr
        self._stdout_task: asyncio.Task[None] | None = None
        self._stderr_task: asyncio.Task[None] | None = None

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
        if exc_type is not None:
            sys.stderr.write("---- concordia run's log ----\n" + "".join(self.log))

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bot.cli",
            "run",
            "--config",
            str(self._config),
            *self._args,
            cwd=self._cwd,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, **self._env, "PYTHONUNBUFFERED": "1"},
        )
        assert self.proc.stdout is not None
        assert self.proc.stderr is not None
        self._stderr_task = asyncio.create_task(self._collect(self.proc.stderr))
        async with asyncio.timeout(_START_TIMEOUT_S):
            while not (self.invite and self.host_token):
                line = (await self.proc.stdout.readline()).decode()
                if not line:
                    await self.proc.wait()
                    raise RuntimeError(
                        f"concordia run exited: {self.proc.returncode}\n" + "".join(self.log)
                    )
                self.stdout.append(line)
                match = _URL.match(line.strip())
                if match:
                    self.port = int(match.group(3))
                    if match.group(1) == "invite":
                        self.invite = match.group(4)
                    else:
                        self.host_token = match.group(4)
        self._stdout_task = asyncio.create_task(self._collect_stdout(self.proc.stdout))

    async def _collect(self, stream: asyncio.StreamReader) -> None:
        async for line in stream:
            self.log.append(line.decode(errors="replace"))
            self.printed.set()

    async def _collect_stdout(self, stream: asyncio.StreamReader) -> None:
        async for raw in stream:
            line = raw.decode(errors="replace")
            self.stdout.append(line)
            self._stdout_lines.put_nowait(line)
            self.printed.set()

    async def line_starting(self, prefix: str, within_s: float = 10.0) -> str:
        """The first stdout line starting with ``prefix``, waiting for it if need be."""
        return await until(
            lambda: next((line for line in self.stdout if line.startswith(prefix)), ""),
            self._stdout_lines,
            within_s=within_s,
            what=f"a line starting {prefix!r} on stdout",
        )

    async def said(self, text: str, within_s: float = 30.0) -> str:
        """The first line on stdout or stderr containing ``text``, waiting for it."""
        return await until(
            lambda: next((line for line in self.stdout + self.log if text in line), ""),
            self.printed,
            within_s=within_s,
            what=f"a line saying {text!r}",
        )

    def kill(self) -> None:
        """kill -9, as a crash would."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), 15)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        for task in (self._stderr_task, self._stdout_task):
            if task is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.wait_for(task, 5)
        self.proc = None

    async def wait_exit(self) -> int:
        assert self.proc is not None
        code = await self.proc.wait()
        if self._stderr_task is not None:
            await self._stderr_task
        return code


class Client:
    """A protocol-v1 client that records every frame it receives in a queue.

    Frames stay plain dicts both ways, so that tests can send what no `adapters.wire` frame
    could be and see exactly what the server wrote.
    """

    def __init__(self, port: int, token: str, name: str):
        self._url = f"ws://127.0.0.1:{port}/"
        self._token = token
        self.name = name
        self.frames: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.all: list[dict[str, Any]] = []
        self.ws: ClientConnection | None = None
        self._reader: asyncio.Task[None] | None = None
        self.closed = asyncio.Event()

    async def __aenter__(self) -> Self:
        self.ws = await connect(self._url, max_size=None)
        await self.send({"type": wire.ClientKind.JOIN, "token": self._token, "name": self.name})
        self._reader = asyncio.create_task(self._read())
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self._reader is not None:
            await self._reader

    async def _read(self) -> None:
        assert self.ws is not None
        with contextlib.suppress(ConnectionClosed):
            async for raw in self.ws:
                frame = json.loads(raw)
                self.all.append(frame)
                self.frames.put_nowait(frame)
        self.closed.set()

    async def send(self, frame: dict[str, Any]) -> None:
        assert self.ws is not None
        await self.ws.send(json.dumps(frame))

    async def prompt(self, client_id: str, text: str) -> None:
        await self.send({"type": wire.ClientKind.PROMPT, "id": client_id, "text": text})

    async def expect(self, kind: str, within_s: float = 30.0, **fields: Any) -> dict[str, Any]:
        """The next frame of ``kind`` matching ``fields``; frames skipped stay in ``all``."""
        async with asyncio.timeout(within_s):
            while True:
                frame = await self.frames.get()
                if frame.get("type") == kind and all(frame.get(k) == v for k, v in fields.items()):
                    return frame

    async def until(
        self, predicate: Callable[[list[dict[str, Any]]], bool], within_s: float = 60.0
    ) -> None:
        """Wait until ``predicate(all frames so far)`` holds, woken by each new frame."""
        await until(
            lambda: predicate(self.all),
            self.frames,
            within_s=within_s,
            what=getattr(predicate, "__name__", "the frames' condition"),
        )

    async def frames_until(
        self, kind: str, within_s: float = 30.0, **fields: Any
    ) -> AsyncIterator[dict[str, Any]]:
        async with asyncio.timeout(within_s):
            while True:
                frame = await self.frames.get()
                yield frame
                if frame.get("type") == kind and all(frame.get(k) == v for k, v in fields.items()):
                    return
