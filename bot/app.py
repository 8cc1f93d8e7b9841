"""The composition root: every part of a run built from the settings, and served together.

Invariant: `App.serve` runs every owner task (each party's agent supervisor and runner,
each transport, a relay per chat sink and party) in ONE task group, so a part that dies ends
the run with a `PartFailed` naming it, instead of leaving a bot that looks alive but is
deaf. Only this module and `bot.cli` import adapters.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import os
import re
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self, assert_never

from adapters.web import WebAdapter
from adapters.web.ops import OpsServer
from adapters.web.share import CommandTunnel, NgrokTunnel, Tunnel
from agents.codex import CodexSession
from agents.gemini import GeminiSession
from agents.program import agent_program, program_version
from agents.repl import ReplSession
from bot import ConcordiaError
from bot.agent import AgentSession
from bot.config import NGROK_TOKEN_ENV, AgentKind, ClaudeSettings, Settings, ShareProvider
from bot.confinement import Confinement, SandboxMode, SandboxSupport, agent_environment
from bot.credentials import API_KEY_VAR, CREDENTIAL_VARS, stored_api_key
from bot.delivery import redeliver
from bot.invite import InviteBook, Invites, JoinAddress
from bot.lifecycle import first_of
from bot.merge import Merger
from bot.merge_gemini import GeminiMerger
from bot.merge_local import LocalMerger
from bot.on_demand import OnDemandAgent
from bot.party import Party
from bot.ports import Adapter, ChatAdapter, ChatOutput, ConnectedAdapter, Outbox, PartyPort
from bot.relay import ThreadRelay
from bot.retention import Retention
from bot.safety import Redactor
from bot.session import ClaudeSession
from bot.state_dir import (
    ADDRESS_NAME,
    DATABASE_NAME,
    LEGACY_DIR_NAME,
    TOKENS_NAME,
    default_state_dir,
    make_private_dir,
    move_legacy_state,
    write_private,
)
from bot.store import Store
from bot.telemetry import CountedSink, Telemetry

__all__ = [
    "AgentFactory",
    "App",
    "BotTokens",
    "PartFailed",
    "agent_env",
    "bot_secret_names",
    "build_merger",
    "build_tunnel",
    "chat_outputs",
    "confinement_for",
    "hide_own_process",
    "prepare_state",
    "secrets_of",
]

log = logging.getLogger(__name__)

_SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSWORD", re.IGNORECASE)

AgentFactory = Callable[[str, str | None], AgentSession]
"""Builds one party's agent, not yet started: (party name, its stored session id or None)."""


class PartFailed(ConcordiaError):
    """A part of the run (``part`` names it) stopped; the run ends with this reason."""

    def __init__(self, part: str, reason: BaseException | str):
        super().__init__(f"{part} stopped: {reason}")
        self.part = part


@dataclass(frozen=True, slots=True)
class BotTokens:
    """The bot's own secrets for the chat platforms, read from the environment by the CLI."""

    discord: str = ""
    slack_bot: str = ""
    slack_app: str = ""
    ngrok: str = ""  # $NGROK_AUTHTOKEN, for `share.provider = "ngrok"`


# -- what the agent sees --------------------------------------------------------------------


def bot_secret_names(settings: Settings) -> list[str]:
    """The variables that hold the bot's own secrets, which the agent must never see."""
    return [
        settings.discord.token_env,
        settings.slack.bot_token_env,
        settings.slack.app_token_env,
        settings.gemini.api_key_env,
        settings.metrics.token_env,
        NGROK_TOKEN_ENV,
    ]


_AGENT_PREFIXES: dict[AgentKind, tuple[str, ...]] = {
    AgentKind.CODEX: ("OPENAI_", "CODEX_"),
    AgentKind.GEMINI: ("GEMINI_", "GOOGLE_"),
}
"""What each other agent's CLI reads besides Claude's allow-list: its key, base URL, home."""


def agent_env(settings: Settings, environ: Mapping[str, str]) -> dict[str, str]:
    """The agent's environment: the allow-listed part of ``environ`` (and what the kind's CLI
    reads), ``claude.env``, the stored key if no credential is set; never the bot's own
    secrets (`bot.confinement`): the Gemini CLI gets no key held in ``gemini.api_key_env``."""
    claude = settings.claude
    env = agent_environment(
        environ,
        claude.env,
        bot_secret_names=bot_secret_names(settings),
        prefixes=_AGENT_PREFIXES.get(settings.agent.kind, ()),
    )
    if settings.agent.kind is AgentKind.GEMINI:
        # The Gemini CLI loads the first .env above its workdir into its environment, but
        # only into variables not set: set to nothing, the bot's own cannot come from there.
        for name in bot_secret_names(settings):
            env.setdefault(name, "")
    # Few retries: an API outage should fail the turn with the API's message, not hang it.
    env.setdefault("CLAUDE_CODE_MAX_RETRIES", str(claude.api_max_retries))
    env.setdefault("DISABLE_AUTOUPDATER", "1")
    if not any(env.get(var) for var in CREDENTIAL_VARS):
        key = stored_api_key(claude)
        if key:
            env[API_KEY_VAR] = key
    return env


def confinement_for(
    settings: Settings, config: Path | None, support: SandboxSupport
) -> Confinement:
    """What a run denies the agent: its own files and the bot's /proc entry."""
    denied = [settings.state_dir, settings.claude.credentials_file, Path(f"/proc/{os.getpid()}")]
    if settings.websocket.tls_key_file is not None:
        denied.append(settings.websocket.tls_key_file)
    if config is not None:
        denied.append(config.resolve())
    mode = settings.claude.sandbox
    return Confinement(
        denied=tuple(denied),
        is_sandboxed=mode is not SandboxMode.OFF and support.is_available,
        is_sandbox_required=mode is SandboxMode.REQUIRED,
    )


def hide_own_process() -> None:
    """Make this process non-dumpable (Linux): its /proc entries, environ included, become
    unreadable to other processes of the same user, such as a command Claude runs. The bot's
    tokens are in its environment; the agent's process gets an allow-list instead."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_dumpable = 4
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(pr_set_dumpable, 0, 0, 0, 0) != 0:
        log.warning("could not make the bot non-dumpable (errno %d)", ctypes.get_errno())


def secrets_of(
    claude: ClaudeSettings, env: Mapping[str, str], invites: list[Invites], tokens: BotTokens
) -> list[str]:
    """What must never reach chat or the log: tokens, keys, secret-named claude.env values."""
    found = [token for each in invites for token in (each.prompter, each.host)]
    found += [env[var] for var in CREDENTIAL_VARS if env.get(var)]
    found += [value for name, value in claude.env.items() if _SECRET_NAME.search(name)]
    found += [t for t in (tokens.discord, tokens.slack_bot, tokens.slack_app, tokens.ngrok) if t]
    return found


def build_tunnel(
    settings: Settings, tokens: BotTokens, environ: Mapping[str, str]
) -> Tunnel | None:
    """The share tunnel the settings ask for; None when sharing is off."""
    share = settings.share
    match share.provider:
        case ShareProvider.OFF:
            return None
        case ShareProvider.NGROK:
            return NgrokTunnel(tokens.ngrok or None, domain=share.ngrok_domain)
        case ShareProvider.COMMAND:
            # The host's own tunnel program: their environment, less the bot's chat secrets.
            hidden = set(bot_secret_names(settings)) - {NGROK_TOKEN_ENV}
            env = {k: v for k, v in environ.items() if k not in hidden}
            return CommandTunnel(share.command, share.url_pattern, env)


def prepare_state(settings: Settings, environ: Mapping[str, str]) -> list[str]:
    """Move an old in-tree ``.concordia/`` out (default store path only), then make the state
    folder 0700; return what the host should read. Run before anything opens the database."""
    default = default_state_dir(settings.claude.workdir, environ) / DATABASE_NAME
    legacy = [Path.cwd() / LEGACY_DIR_NAME, settings.claude.workdir / LEGACY_DIR_NAME]
    said: list[str] = []
    if settings.store_path == default:
        said += move_legacy_state(legacy, settings.state_dir)
    else:
        said += [
            f"{folder} is an old state folder inside the working tree (with clear-text tokens "
            "Claude can read); store.path points elsewhere, so it is not used: delete it"
            for folder in legacy
            if folder.is_dir() and folder.resolve() != settings.state_dir.resolve()
        ]
    make_private_dir(settings.state_dir)
    return said


def build_merger(settings: Settings, environ: Mapping[str, str]) -> Merger:
    """The merger ``settings`` ask for: Gemini when its key is set, else the local one.

    google-genai itself is imported only when a `GeminiMerger` is built, so a host without a
    key never loads it (it costs 0.35 s of every start)."""
    gemini = settings.gemini
    api_key = environ.get(gemini.api_key_env, "")
    if not api_key:
        return LocalMerger(note=f"set ${gemini.api_key_env} to merge with Gemini")
    return GeminiMerger(
        api_key=api_key,
        model=gemini.model,
        timeout_s=gemini.timeout_s,
        base_url=gemini.base_url,
        fallback=LocalMerger(),
    )


# -- relays ---------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def chat_outputs(
    adapter: ChatAdapter,
    parties: Mapping[str, PartyPort],
    outbox: Outbox,
    telemetry: Telemetry | None = None,
) -> AsyncIterator[list[tuple[ChatOutput, ThreadRelay]]]:
    """Relays from each party to ``adapter``'s sinks, for as long as the block runs.

    Messages a crash cut off are finished first (`redeliver`), then each relay is started
    and subscribed. On the way out each is unsubscribed and stopped (its queue flushed).
    With ``telemetry``, every call to a sink is counted."""
    outputs = adapter.outputs()
    if telemetry is not None:
        counted = {
            id(o.sink): CountedSink(o.sink, telemetry.chat_call(o.platform)) for o in outputs
        }
        outputs = [dataclasses.replace(o, sink=counted[id(o.sink)]) for o in outputs]
    async with contextlib.AsyncExitStack() as stack:
        for sink, platform in {(o.sink, o.platform): None for o in outputs}:
            finished = await redeliver(sink, outbox, platform)
            if finished:
                log.info("finished %d %s messages cut off by a restart", finished, platform)
        relays = []
        for output in outputs:
            relay = await stack.enter_async_context(
                ThreadRelay(
                    output.sink,
                    outbox,
                    platform=output.platform,
                    home_thread=output.home_thread,
                    markup=output.markup,
                )
            )
            stack.callback(parties[output.party].subscribe(relay))
            relays.append((output, relay))
        yield relays


# -- the app --------------------------------------------------------------------------------


class App:
    """Concordia assembled: the store, an agent and a party per party name, the transports
    the settings turn on, and the redactor every output goes through.

    Use as ``async with App(...) as app`` (everything opened), then `serve` until stopped.
    `add` binds one more adapter before `serve` (tests bind the in-memory one). Each agent
    comes from ``agent_factory``; by default it is the driver ``agent.kind`` names (Claude's
    `bot.session.ClaudeSession`, or one of `agents/`) with ``agent_env`` and ``confinement``.
    Whatever the agent, ``agent_env``'s credentials are redacted from every output.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        agent_env: Mapping[str, str],
        confinement: Confinement,
        tokens: BotTokens = BotTokens(),
        environ: Mapping[str, str] | None = None,
        agent_factory: AgentFactory | None = None,
    ):
        self.settings = settings
        self._agent_env = dict(agent_env)
        self._confinement = confinement
        self._agent_factory = agent_factory or self._agent
        self._tokens = tokens
        self._environ = os.environ if environ is None else environ
        self._stack = contextlib.AsyncExitStack()
        self.parties: dict[str, Party] = {}
        self.sessions: dict[str, OnDemandAgent] = {}
        self.invites: dict[str, Invites] = {}
        self.adapters: list[Adapter] = []
        self._store: Store | None = None
        self._redactor: Redactor | None = None
        self._web: WebAdapter | None = None
        self._merger: Merger | None = None
        self.telemetry = Telemetry()
        self.address = JoinAddress()  # where the terminals' party is joined by link

    @property
    def store(self) -> Store:
        if self._store is None:
            raise RuntimeError("App.store before `async with App(...)`")
        return self._store

    @property
    def redactor(self) -> Redactor:
        if self._redactor is None:
            raise RuntimeError("App.redactor before `async with App(...)`")
        return self._redactor

    @property
    def websocket_port(self) -> int:
        """The port the page and WebSocket listen on, once `serve` has started them."""
        if self._web is None:
            raise RuntimeError("App.websocket_port before `async with App(...)`")
        return self._web.port

    async def __aenter__(self) -> Self:
        try:
            await self._open()
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._stack.aclose()

    async def _open(self) -> None:
        settings = self.settings
        stack = self._stack
        store = self._store = await stack.enter_async_context(Store(settings.store_path))
        books: dict[str, InviteBook] = {}
        for name in settings.party_names():
            await store.ensure_party(name)
            address = self.address if name == settings.party.name else None
            books[name] = InviteBook(store, name, settings.state_dir / TOKENS_NAME, address=address)
            self.invites[name] = await books[name].ensure()
        secrets = secrets_of(
            settings.claude, self._agent_env, list(self.invites.values()), self._tokens
        )
        if gemini_key := self._environ.get(settings.gemini.api_key_env, ""):
            secrets.append(gemini_key)
        self._redactor = Redactor(secrets)
        merger = self._merger = build_merger(settings, self._environ)
        if isinstance(merger, GeminiMerger):
            stack.push_async_callback(merger.aclose)
        program = agent_program(settings.agent, settings.claude)
        if self._agent_factory == self._agent:
            program.require()  # a wrong command is said at start, not with the first prompt
        version = await program_version(program, self._agent_env)
        agent_label = settings.agent.describe() + (f" {version}" if version else "")
        for name in settings.party_names():
            agent = OnDemandAgent(
                functools.partial(self._agent_factory, name),
                session_id=await store.session_id(name),
                idle_stop_s=settings.agent.idle_stop_s,
                name=f"agent of party {name!r}",
            )
            session = await stack.enter_async_context(agent)
            self.sessions[name] = session
            self.parties[name] = Party(
                settings,
                name=name,
                store=store,
                session=session,
                merger=merger,
                invites=books[name],
                redactor=self._redactor,
                telemetry=self.telemetry,
                agent=agent_label,
            )
            await self.parties[name].load()
        self._web = WebAdapter(
            settings.websocket,
            self.parties[settings.party.name],
            address=self.address,
            tunnel=build_tunnel(settings, self._tokens, self._environ),
        )
        self.adapters.append(self._web)
        self._keep_address(settings.state_dir / ADDRESS_NAME)
        self.telemetry.observe(self)
        if settings.metrics.enabled:
            token = self._environ.get(settings.metrics.token_env, "")
            self.redactor.add(token)
            self.adapters.insert(
                0, OpsServer(settings.metrics, self.telemetry.registry, self.readiness, token=token)
            )
        if self._tokens.discord:
            from adapters.discord import DiscordAdapter

            discord = settings.discord
            channels = {c: self.parties[discord.party_of(c)] for c in discord.channels}
            self.adapters.append(
                DiscordAdapter(discord, channels, token=self._tokens.discord, clean=self.chat_safe)
            )
        if self._tokens.slack_bot and self._tokens.slack_app:
            from adapters.slack import SlackAdapter

            slack = settings.slack
            channels = {c: self.parties[slack.party_of(c)] for c in slack.channels}
            self.adapters.append(
                SlackAdapter(
                    slack,
                    channels,
                    bot_token=self._tokens.slack_bot,
                    app_token=self._tokens.slack_app,
                )
            )

    def _keep_address(self, path: Path) -> None:
        """Keep the current link base in the state folder while running, for `concordia
        invite` (a tunnel's URL changes from run to run). No token is in it."""

        def record(base: str) -> None:
            write_private(path, base + "\n")

        self.address.watch(record)
        self._stack.callback(path.unlink, missing_ok=True)

    def _agent(self, party: str, session_id: str | None) -> AgentSession:
        """The agent ``agent.kind`` names, with this run's environment and confinement."""
        agent, claude = self.settings.agent, self.settings.claude
        env, confinement = self._agent_env, self._confinement
        match agent.kind:
            case AgentKind.CLAUDE:
                return ClaudeSession(
                    claude, session_id=session_id, env=env, confinement=confinement
                )
            case AgentKind.REPL:
                return ReplSession(agent, claude, env=env, confinement=confinement)
            case AgentKind.CODEX:
                return CodexSession(
                    agent, claude, session_id=session_id, env=env, confinement=confinement
                )
            case AgentKind.GEMINI:
                return GeminiSession(
                    agent, claude, session_id=session_id, env=env, confinement=confinement
                )
            case unknown:
                assert_never(unknown)

    async def _shut_down_parties(self) -> None:
        """Stop intake and end every running turn, kept for a re-run; within half the stop's
        time, the other half being for the transports to flush."""
        budget_s = self.settings.run.shutdown_timeout_s / 2
        try:
            async with asyncio.timeout(budget_s):
                await asyncio.gather(*(party.shut_down() for party in self.parties.values()))
        except TimeoutError:
            log.warning("a turn did not end within %.0f s of the stop; it runs again", budget_s)

    # -- what the metrics and /readyz read (bot.telemetry.Observed) ------------------------

    def queue_depths(self) -> dict[str, int]:
        return {name: self.store.pending_count(name) for name in self.parties}

    def agents(self) -> dict[str, tuple[bool, int]]:
        return {
            name: (agent.is_running and agent.ready.is_set(), agent.restarts)
            for name, agent in self.sessions.items()
        }

    def connected_clients(self) -> int:
        return self._web.client_count if self._web is not None else 0

    def merge_fallbacks(self) -> dict[str, int]:
        merger = self._merger
        return dict(merger.fallback_kinds) if isinstance(merger, GeminiMerger) else {}

    async def readiness(self) -> list[str]:
        """What keeps the bot from being ready, one line each. An agent restarting is ready:
        its supervisor restarts it with backoff, and a respawn that fails ends the run."""
        problems = []
        try:
            await self.store.ping()
        except Exception as exc:  # noqa: BLE001 - whatever it is, the store cannot answer
            problems.append(f"the store does not answer: {exc}")
        for adapter in self.adapters:
            if isinstance(adapter, ConnectedAdapter) and not await adapter.is_connected():
                problems.append(f"the {adapter.name} transport is not connected")
        return problems

    def chat_safe(self, text: str) -> str:
        """Text fit for chat under this run's redactor (every party shares it)."""
        return next(iter(self.parties.values())).chat_safe(text)

    def add(self, adapter: Adapter) -> None:
        """Bind one more adapter; `serve` starts it with the others."""
        self.adapters.append(adapter)

    async def serve(self, stop: asyncio.Event, on_ready: Callable[[], None] = lambda: None) -> None:
        """Run every part until ``stop`` is set, then stop them all.

        Adapters start first (a runner resuming a batch at once must find them listening),
        each chat adapter's relays next, then the runners and the store's retention
        (`bot.retention`, when store.keep_days or keep_audit_days is set); ``on_ready`` is
        called once all are up. Raises `PartFailed` naming the first part that stopped on its own.
        """
        stopping = False

        async def owned(part: str, work: Awaitable[None]) -> None:
            try:
                await work
            except asyncio.CancelledError:
                raise
            except ConcordiaError as exc:
                raise PartFailed(part, exc) from exc
            except Exception as exc:
                log.error("%s failed", part, exc_info=exc)
                raise PartFailed(part, f"{type(exc).__name__}: {exc}") from exc
            if not stopping:
                raise PartFailed(part, "it ended while the bot was running")

        async with contextlib.AsyncExitStack() as stack:
            try:
                async with asyncio.TaskGroup() as group:
                    tasks: list[asyncio.Task[None]] = []

                    def spawn(part: str, work: Awaitable[None]) -> None:
                        tasks.append(group.create_task(owned(part, work), name=part))

                    for name, session in self.sessions.items():
                        spawn(f"Claude of party {name!r}", session.serve())
                    for adapter in self.adapters:
                        stack.push_async_callback(adapter.stop)
                        await adapter.start()
                        spawn(f"the {adapter.name} transport", adapter.run())
                        if isinstance(adapter, ChatAdapter):
                            relays = await stack.enter_async_context(
                                chat_outputs(adapter, self.parties, self.store, self.telemetry)
                            )
                            for output, relay in relays:
                                where = f"{output.platform} relay of party {output.party!r}"
                                spawn(f"the {where}", relay.serve())
                    for name, party in self.parties.items():
                        spawn(f"the runner of party {name!r}", party.run())
                    retention = Retention(self.store, self.settings.store)
                    if retention.is_enabled:
                        spawn("the store's retention", retention.serve())
                    on_ready()
                    await stop.wait()
                    log.info("stopping")
                    stopping = True
                    await self._shut_down_parties()
                    for task in tasks:
                        task.cancel()
            except BaseExceptionGroup as failed:
                # One line for the host (the Discord token was refused), not a traceback.
                reason = first_of(failed, ConcordiaError)
                if reason is None:
                    raise
                raise reason from None
