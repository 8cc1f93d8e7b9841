"""The party test rig: the bot's own composition root (`bot.app.App`) with the in-memory chat
adapter bound, served in a task for as long as a test runs.

Its agent is the real `claude` CLI when the test gives it the fake Anthropic API (mark such
tests `claude`), else a `FakeAgent`. Leaving the rig stops the app; if serving died, leaving
raises what killed it (a `PartFailed` naming the part).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from adapters.memory import MemoryAdapter
from bot.app import App
from bot.config import Settings
from bot.confinement import Confinement
from bot.invite import InviteBook, Invites
from bot.model import ApprovalRequested, BatchDone, PartyEvent
from bot.party import Party
from bot.state_dir import TOKENS_NAME
from bot.store import Store
from tests.conftest import NO_CONFINEMENT
from tests.fakes.agent import FakeAgent
from tests.fakes.anthropic_api import FakeAnthropic
from tests.waits import until

__all__ = ["Events", "Rig", "open_rig", "serving"]

READY_WITHIN_S = 30.0


@dataclass(eq=False)
class Events:
    """Every party event in order, with a way to wait for one."""

    seen: list[PartyEvent] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    def deliver(self, event: PartyEvent) -> None:
        self.seen.append(event)
        self.arrived.set()

    async def until(
        self, predicate: Callable[[PartyEvent], bool], after: int = 0, within_s: float = 60.0
    ) -> PartyEvent:
        """The first event from index ``after`` on that satisfies ``predicate``."""
        event = await until(
            lambda: next((e for e in self.seen[after:] if predicate(e)), None),
            self.arrived,
            within_s=within_s,
            what="the party event awaited",
        )
        assert event is not None
        return event

    async def approval(self, after: int = 0) -> ApprovalRequested:
        event = await self.until(lambda e: isinstance(e, ApprovalRequested), after)
        assert isinstance(event, ApprovalRequested)
        return event

    async def done(self, after: int = 0, within_s: float = 60.0) -> BatchDone:
        event = await self.until(lambda e: isinstance(e, BatchDone), after, within_s)
        assert isinstance(event, BatchDone)
        return event


@dataclass
class Rig:
    """One party served by `App`, its chat, and what a test reads. ``api`` is where the
    agent's turns are recorded (``turns``, ``first_delta``): the fake Anthropic API behind
    the real CLI, or the `FakeAgent` itself."""

    app: App
    party: Party
    chat: MemoryAdapter
    store: Store
    invites: Invites
    book: InviteBook
    events: Events
    api: FakeAnthropic | FakeAgent
    workdir: Path


@contextlib.asynccontextmanager
async def serving(app: App) -> AsyncIterator[None]:
    """Run ``app.serve`` in a task until the block ends, once every part is up.

    Raises what ended serving (`PartFailed`) when it died, at start or during the block."""
    stop = asyncio.Event()
    ready = asyncio.Event()
    served = asyncio.create_task(app.serve(stop, ready.set), name="app-serve")
    served.add_done_callback(lambda _: ready.set())
    try:
        async with asyncio.timeout(READY_WITHIN_S):
            await ready.wait()
        if served.done():
            served.result()  # raises what ended it
            raise RuntimeError("App.serve returned before it was stopped")
        yield
    finally:
        stop.set()
        await served


@contextlib.asynccontextmanager
async def open_rig(
    settings: Settings,
    api: FakeAnthropic | None = None,
    *,
    agent_env: Mapping[str, str] | None = None,
    confinement: Confinement = NO_CONFINEMENT,
    secrets: Sequence[str] = (),
) -> AsyncIterator[Rig]:
    """The default party of ``settings``, served with the memory adapter bound.

    With ``api`` the agent is the real CLI (its environment ``agent_env``, by default
    ``claude.env``), else a `FakeAgent` in ``claude.workdir``. ``secrets`` are redacted as
    if they were configured. Nobody has joined yet."""
    fakes: list[FakeAgent] = []

    def fake_agent(party: str, session_id: str | None) -> FakeAgent:
        fakes.append(FakeAgent(workdir=settings.claude.workdir, session_id=session_id))
        return fakes[-1]

    async with App(
        settings,
        agent_env=settings.claude.env if agent_env is None else agent_env,
        confinement=confinement,
        agent_factory=None if api is not None else fake_agent,
    ) as app:
        app.redactor.add(*secrets)
        name = settings.party.name
        party = app.parties[name]
        events = Events()
        party.subscribe(events)
        chat = MemoryAdapter(party)
        app.add(chat)
        book = InviteBook(app.store, name, settings.state_dir / TOKENS_NAME)
        async with serving(app):
            await party.session.start()  # as if someone had joined: the tests read its agent
            yield Rig(
                app=app,
                party=party,
                chat=chat,
                store=app.store,
                invites=app.invites[name],
                book=book,
                events=events,
                api=api if api is not None else fakes[0],
                workdir=settings.claude.workdir,
            )
