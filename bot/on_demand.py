"""OnDemandAgent: a party's agent runs only while the party uses it.

An agent process costs memory (150 MB for Claude) whether anyone prompts or not. This
wrapper starts the agent when it is first needed (`wake`, on a join or an accepted prompt,
so the start hides behind the merge window; or the first turn), stops it after
``agent.idle_stop_s`` without a turn, and starts the next one in the same conversation (the
agent's stored session id, which `claude --resume` continues).

Invariant: `serve`, in the composition root's task group, is the one task that starts and
stops the inner agent; everyone else asks it through ``_wanted`` and waits on ``_changed``.
A turn in progress (or waiting for the group's answer) keeps the agent up.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping, Sequence
from types import TracebackType
from typing import Any, Self

from bot.agent import (
    AgentEvent,
    AgentSession,
    PlanRequest,
    QuestionRequest,
    SessionError,
    ToolRequest,
)
from bot.model import Image

__all__ = ["OnDemandAgent"]

log = logging.getLogger(__name__)


class OnDemandAgent:
    """An `AgentSession` that starts its inner agent (from ``build(session_id)``) on demand
    and stops it when idle; ``idle_stop_s`` 0 keeps it running once started."""

    def __init__(
        self,
        build: Callable[[str | None], AgentSession],
        *,
        session_id: str | None,
        idle_stop_s: float,
        name: str = "agent",
    ) -> None:
        self._build = build
        self._session_id = session_id
        self._idle_stop_s = idle_stop_s
        self._name = name
        self._inner: AgentSession | None = None
        self._stopping = False
        self._wanted = asyncio.Event()
        self._changed = asyncio.Event()
        self._stopped = asyncio.Event()
        self._always_ready = asyncio.Event()
        self._always_ready.set()  # a stopped agent can take a turn: the turn starts it
        self._turns = 0  # turns running now (0 or 1: the runner sends one at a time)
        self._last_used = time.monotonic()
        self._earlier_restarts = 0
        self.starts = 0  # how many times the inner agent was started
        self.changed = asyncio.Event()  # set at each start, stop and turn end: for watchers

    # -- what the party reads ---------------------------------------------------------------

    @property
    def ready(self) -> asyncio.Event:
        """Set while a turn can be sent: the agent is up, or stopped and able to start."""
        inner = self._inner
        return inner.ready if inner is not None and not self._stopping else self._always_ready

    @property
    def is_running(self) -> bool:
        """The agent's process exists (starting, serving or being stopped)."""
        return self._inner is not None

    @property
    def session_id(self) -> str | None:
        inner = self._inner
        return (inner.session_id if inner is not None else None) or self._session_id

    @property
    def restarts(self) -> int:
        inner = self._inner
        return self._earlier_restarts + (inner.restarts if inner is not None else 0)

    async def start(self) -> None:
        """Start the agent now, and return once it is up (a warm start for what follows)."""
        await self._running()

    def wake(self) -> None:
        """The agent is about to be needed: start it now if it is stopped; never waits."""
        self._last_used = time.monotonic()
        if self._inner is None or self._stopping:
            self._wanted.set()
        self._signal()  # a running agent's idle timer starts over

    # -- lifecycle ------------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stopped.set()
        self._signal()

    async def serve(self) -> None:
        """Own the inner agent: start it when wanted, stop it when idle, until the app stops.
        Raises what ended the inner agent for good (it could not be started again)."""
        while not self._stopped.is_set():
            await self._wanted.wait()
            self._wanted.clear()
            if self._stopped.is_set():
                return
            inner = self._build(self._session_id)
            self.starts += 1
            log.info("starting the %s", self._name, extra={"resume": bool(self._session_id)})
            async with inner:
                self._inner, self._stopping = inner, False
                self._signal()
                try:
                    await _first_of(inner.serve(), self._until_idle())
                finally:
                    self._stopping = True
                    self._session_id = inner.session_id or self._session_id
                    self._earlier_restarts += inner.restarts
                    self._signal()
            self._inner = None
            self._signal()

    async def _until_idle(self) -> None:
        """Return once no turn ran for ``idle_stop_s`` (or the app stops)."""
        while not self._stopped.is_set():
            if self._turns or not self._idle_stop_s:
                await self._next_change()
                continue
            left = self._last_used + self._idle_stop_s - time.monotonic()
            if left <= 0:
                log.info(
                    "stopping the %s after %.0f s without a turn", self._name, self._idle_stop_s
                )
                return
            try:
                async with asyncio.timeout(left):  # the idle timer, or a change of plan
                    await self._next_change()
            except TimeoutError:
                pass

    # -- turns -------------------------------------------------------------------------------

    async def run(
        self, prompt: str, *, images: Sequence[Image] = (), plan: bool = False
    ) -> AsyncIterator[AgentEvent]:
        self._turns += 1
        try:
            inner = await self._running()
            async for event in inner.run(prompt, images=images, plan=plan):
                yield event
        finally:
            self._turns -= 1
            self._last_used = time.monotonic()
            self._signal()

    async def interrupt(self) -> bool:
        inner = self._inner
        return await inner.interrupt() if inner is not None else False

    async def answer_tool(self, request: ToolRequest, *, allow: bool, message: str = "") -> None:
        await self._current().answer_tool(request, allow=allow, message=message)

    async def answer_questions(
        self, request: QuestionRequest, answers: Mapping[str, str] | None, message: str = ""
    ) -> None:
        await self._current().answer_questions(request, answers, message)

    async def answer_plan(
        self, request: PlanRequest, *, approved: bool, feedback: str = ""
    ) -> None:
        await self._current().answer_plan(request, approved=approved, feedback=feedback)

    async def restart(self, *, fresh: bool) -> None:
        """Restart the running agent; a stopped one starts fresh next time, or resumes."""
        inner = self._inner
        if inner is not None and not self._stopping:
            await inner.restart(fresh=fresh)
        elif fresh:
            self._session_id = None

    # -- inside ------------------------------------------------------------------------------

    async def _running(self) -> AgentSession:
        """The inner agent, started if it was not, once it is ready."""
        while True:
            inner = self._inner
            if inner is not None and not self._stopping:
                await inner.ready.wait()
                if self._inner is inner and not self._stopping:
                    return inner
                continue
            if self._stopped.is_set():
                raise SessionError(f"the {self._name} is stopping")
            self.wake()
            await self._next_change()

    def _current(self) -> AgentSession:
        if self._inner is None:
            raise SessionError(f"the {self._name} is not running")
        return self._inner

    def _signal(self) -> None:
        self._changed.set()
        self.changed.set()

    async def _next_change(self) -> None:
        self._changed.clear()
        await self._changed.wait()


async def _first_of(*waits: Coroutine[Any, Any, None]) -> None:
    """Wait until the first of ``waits`` returns, cancel the rest; raise what the first to
    finish raised."""
    tasks = [asyncio.create_task(w) for w in waits]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.wait(tasks)
    for task in done:
        if not task.cancelled() and (error := task.exception()) is not None:
            raise error
