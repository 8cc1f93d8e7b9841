"""`concordia run | setup | invite | join`: the entry points, and where the parts are wired."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import json
import logging
import os
import re
import shutil
import signal
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path

from adapters.websocket import WebSocketAdapter
from bot import ConcordiaError
from bot.config import CONFIG_ENV, ClaudeSettings, Settings, load_settings
from bot.confinement import (
    Confinement,
    SandboxMode,
    SandboxSupport,
    agent_environment,
    sandbox_support,
)
from bot.invite import InviteBook, Invites, invite_url
from bot.merge import build_merger
from bot.merge_gemini import GeminiMerger
from bot.model import Role
from bot.party import Party
from bot.ports import Adapter
from bot.safety import Redactor
from bot.session import ClaudeSession
from bot.state_dir import (
    DATABASE_NAME,
    LEGACY_DIR_NAME,
    default_state_dir,
    make_private_dir,
    move_legacy_state,
)
from bot.store import Store

log = logging.getLogger("concordia")

_SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSWORD", re.IGNORECASE)
_API_KEY_VAR = "ANTHROPIC_API_KEY"
_CREDENTIAL_VARS = (_API_KEY_VAR, "ANTHROPIC_AUTH_TOKEN", "CLAUDE_CODE_OAUTH_TOKEN")
_DEFAULT_API_BASE = "https://api.anthropic.com"
_KEY_CHECK_TIMEOUT_S = 15.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="concordia", description=__doc__)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        type=Path,
        help="config file (default: $CONCORDIA_CONFIG, else built-in defaults)",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("run", parents=[common], help="run the bot in this directory")
    commands.add_parser(
        "setup", parents=[common], help="store the Anthropic API key for Claude (0600 file)"
    )
    invite = commands.add_parser("invite", parents=[common], help="show the invite tokens")
    invite.add_argument(
        "--rotate",
        action="store_true",
        help="replace the prompter token; the old one stops working",
    )
    invite.add_argument(
        "--role",
        choices=[r.value for r in Role],
        help="mint an extra token of this role (approver: may decide on Claude's tool use)",
    )
    invite.add_argument(
        "--ttl", type=_duration, help="with --role: the token expires after this (90s, 30m, 2h, 1d)"
    )
    invite.add_argument(
        "--single-use", action="store_true", help="with --role: the token works for one join"
    )
    invite.add_argument("--revoke", metavar="TOKEN", help="end this token at once")
    invite.add_argument(
        "--party", help="the party (default: party.name; Discord and Slack channels have their own)"
    )
    commands.add_parser(
        "doctor", parents=[common], help="check the setup: claude, credentials, Discord"
    )
    join = commands.add_parser("join", help="join a party from this terminal")
    join.add_argument("url", help="concordia://HOST:PORT/TOKEN")
    join.add_argument(
        "--name", default=os.environ.get("USER", "guest"), help="your name in the party"
    )
    args = parser.parse_args(argv)

    if args.command == "join":
        from adapters.terminal import main as join_main

        return join_main(args.url, args.name)
    try:
        settings = load_settings(args.config)
    except ConcordiaError as exc:
        print(f"concordia: {exc}", file=sys.stderr)
        return 2
    _configure_logging(settings)
    try:
        match args.command:
            case "run":
                return asyncio.run(_run(settings, _config_path(args)))
            case "setup":
                return _setup(settings.claude)
            case "invite":
                return asyncio.run(_invite(settings, args))
            case "doctor":
                return asyncio.run(_doctor(settings))
    except ConcordiaError as exc:
        print(f"concordia: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 2


def _configure_logging(settings: Settings) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=settings.log.level, handlers=[handler])
    # Their DEBUG output is every SQL statement, gateway frame and request body: a Slack
    # `/concordia join <token>` payload or an invite answer would land in the log whole.
    for noisy in (
        "aiosqlite",
        "discord",
        "websockets",
        "slack_bolt",
        "slack_sdk",
        "google_genai",
        "httpx",
        "httpcore",
        "aiohttp",
    ):
        logging.getLogger(noisy).setLevel(max(logging.INFO, logging.getLogger().level))


class _RedactingFilter(logging.Filter):
    """Keeps tokens and keys out of the log, whatever a message interpolates."""

    def __init__(self, redactor: Redactor):
        super().__init__()
        self._redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = self._redactor.redact(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


def _state_file(settings: Settings, name: str) -> Path:
    return settings.state_dir / name


def _prepare_state(settings: Settings) -> None:
    """Move an old in-tree ``.concordia/`` out (default store path only), then make the state
    folder 0700. Run before anything opens the database."""
    default = default_state_dir(settings.claude.workdir, os.environ) / DATABASE_NAME
    legacy = [Path.cwd() / LEGACY_DIR_NAME, settings.claude.workdir / LEGACY_DIR_NAME]
    if settings.store_path == default:
        for line in move_legacy_state(legacy, settings.state_dir):
            print(f"concordia: {line}", file=sys.stderr, flush=True)
    else:
        for folder in legacy:
            if folder.is_dir() and folder.resolve() != settings.state_dir.resolve():
                print(
                    f"concordia: {folder} is an old state folder inside the working tree "
                    "(with clear-text tokens Claude can read); store.path points elsewhere, so "
                    "it is not used: delete it",
                    file=sys.stderr,
                    flush=True,
                )
    make_private_dir(settings.state_dir)


def _confinement(settings: Settings, config: Path | None, support: SandboxSupport) -> Confinement:
    """What `concordia run` denies the agent: its own files and the bot's /proc entry."""
    denied = [settings.state_dir, settings.claude.credentials_file, Path(f"/proc/{os.getpid()}")]
    if config is not None:
        denied.append(config.resolve())
    mode = settings.claude.sandbox
    return Confinement(
        denied=tuple(denied),
        is_sandboxed=mode is not SandboxMode.OFF and support.is_available,
        is_sandbox_required=mode is SandboxMode.REQUIRED,
    )


def _config_path(args: argparse.Namespace) -> Path | None:
    named = args.config or os.environ.get(CONFIG_ENV)
    return Path(named) if named else None


# -- credentials --------------------------------------------------------------------------


def _stored_api_key(claude: ClaudeSettings) -> str | None:
    try:
        data = json.loads(claude.credentials_file.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    key = data.get("anthropic_api_key") if isinstance(data, dict) else None
    return str(key) if key else None


def _claude_env(settings: Settings) -> dict[str, str]:
    """The CLI's environment: the allow-listed part of ours, claude.env, the stored key if no
    credential is set; never the bot's own secrets (`bot.confinement`)."""
    claude = settings.claude
    env = agent_environment(os.environ, claude.env, bot_secret_names=_bot_secret_names(settings))
    # Few retries: an API outage should fail the turn with the API's message, not hang it.
    env.setdefault("CLAUDE_CODE_MAX_RETRIES", str(claude.api_max_retries))
    env.setdefault("DISABLE_AUTOUPDATER", "1")
    if not any(env.get(var) for var in _CREDENTIAL_VARS):
        key = _stored_api_key(claude)
        if key:
            env[_API_KEY_VAR] = key
    return env


def _bot_secret_names(settings: Settings) -> list[str]:
    """The variables that hold the bot's own secrets, which the agent must never see."""
    return [
        settings.discord.token_env,
        settings.slack.bot_token_env,
        settings.slack.app_token_env,
        settings.gemini.api_key_env,
    ]


def _has_credentials(env: Mapping[str, str]) -> bool:
    if any(env.get(var) for var in _CREDENTIAL_VARS):
        return True
    home = Path(env.get("HOME", str(Path.home())))
    return (home / ".claude" / ".credentials.json").exists()


def _check_api_key(claude: ClaudeSettings, key: str) -> bool | None:
    """True if the API accepts the key, False if it rejects it, None if it cannot be reached."""
    base = (
        claude.env.get("ANTHROPIC_BASE_URL")
        or os.environ.get("ANTHROPIC_BASE_URL")
        or _DEFAULT_API_BASE
    ).rstrip("/")
    request = urllib.request.Request(
        f"{base}/v1/models", headers={"x-api-key": key, "anthropic-version": "2023-06-01"}
    )
    try:
        with urllib.request.urlopen(request, timeout=_KEY_CHECK_TIMEOUT_S):
            return True
    except urllib.error.HTTPError as exc:
        return False if exc.code in (401, 403) else None
    except (urllib.error.URLError, TimeoutError, OSError):
        return None


def _setup(claude: ClaudeSettings) -> int:
    """Ask for the API key until the API accepts it, then keep it in a 0600 file."""
    while True:
        try:
            key = getpass.getpass("Anthropic API key (input hidden): ").strip()
        except EOFError:
            print("no key given", file=sys.stderr)
            return 1
        if not key:
            continue
        verdict = _check_api_key(claude, key)
        if verdict is False:
            print("that key was rejected by the API; try again (Ctrl-C to stop)", file=sys.stderr)
            continue
        if verdict is None:
            print("could not reach the API to check the key; storing it unchecked", file=sys.stderr)
        break
    path = claude.credentials_file
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_CREAT | os.O_TRUNC | os.O_WRONLY, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as file:
        json.dump({"anthropic_api_key": key}, file)
    os.chmod(path, 0o600)
    print(f"stored the key in {path} (mode 0600)")
    return 0


# -- commands ------------------------------------------------------------------------------


async def _doctor(settings: Settings) -> int:
    """Say what would stop `concordia run` from working, each with its fix; 1 if anything."""
    problems: list[str] = []
    claude = settings.claude
    found = shutil.which(claude.command)
    if found is None:
        problems.append(
            f"claude.command {claude.command!r} is not on PATH: `make run` installs a pinned one "
            "into .tools/, or set claude.command to its path"
        )
    else:
        version = await _claude_version(found)
        print(f"✓ claude: {found} ({version or 'version unknown'})")
    if _has_credentials(_claude_env(settings)):
        print("✓ Claude has credentials")
    else:
        problems.append("Claude has no credentials: run `concordia setup` or set ANTHROPIC_API_KEY")
    if not claude.workdir.is_dir():
        problems.append(f"claude.workdir {claude.workdir} is not a directory")
    print(f"✓ state folder: {settings.state_dir} (outside the working tree)")
    support = await asyncio.to_thread(sandbox_support)
    if claude.sandbox is SandboxMode.OFF:
        print("! Claude's sandbox is off (claude.sandbox): approved commands are not confined")
    elif support.is_available:
        print(f"✓ Claude's sandbox: {support.mechanism}")
    elif claude.sandbox is SandboxMode.REQUIRED:
        problems.append(f"claude.sandbox is required but the sandbox cannot run: {support.missing}")
    else:
        print(
            f"! Claude's sandbox is missing: {support.missing}; without it an approved command "
            "can read any file of this user (Concordia's own files stay denied by rules)"
        )
    if settings.discord.is_enabled:
        token = os.environ.get(settings.discord.token_env, "")
        if not token:
            problems.append(
                f"discord.channels is set but ${settings.discord.token_env} is empty: export the "
                "bot token (Developer Portal → Bot → Reset Token)"
            )
        else:
            from adapters.discord import diagnose

            found_problems = await diagnose(settings.discord, token)
            problems += found_problems
            if not found_problems:
                print("✓ Discord: token accepted, Message Content intent on, channels visible")
    if settings.slack.is_enabled:
        slack = settings.slack
        bot_token = os.environ.get(slack.bot_token_env, "")
        app_token = os.environ.get(slack.app_token_env, "")
        if not (bot_token and app_token):
            problems.append(
                f"slack.channels is set but ${slack.bot_token_env} or ${slack.app_token_env} is "
                "empty: export the xoxb- bot token and the xapp- app-level token"
            )
        else:
            from adapters.slack import diagnose as diagnose_slack

            slack_problems = await diagnose_slack(slack, bot_token, app_token)
            problems += slack_problems
            if not slack_problems:
                print("✓ Slack: both tokens accepted, scopes granted")
    for problem in problems:
        print(f"✗ {problem}")
    if not problems:
        print("everything needed is in place")
    return 1 if problems else 0


async def _claude_version(command: str) -> str:
    try:
        proc = await asyncio.create_subprocess_exec(
            command, "--version", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL
        )
        out, _ = await asyncio.wait_for(proc.communicate(), _KEY_CHECK_TIMEOUT_S)
    except (OSError, TimeoutError):
        return ""
    return out.decode(errors="replace").strip()


async def _invite(settings: Settings, args: argparse.Namespace) -> int:
    party = args.party or settings.party.name
    if party not in settings.party_names():
        known = ", ".join(settings.party_names())
        print(f"concordia: no party {party!r}; known: {known}", file=sys.stderr)
        return 2
    if (args.ttl or args.single_use) and not args.role:
        print("concordia: --ttl and --single-use go with --role", file=sys.stderr)
        return 2
    ws = settings.websocket
    _prepare_state(settings)
    async with Store(settings.store_path) as store:
        await store.ensure_party(party)
        book = InviteBook(store, party, _state_file(settings, "tokens.json"))
        if args.revoke:
            if not await book.revoke(args.revoke):
                print("concordia: that token is not a live invite of this party", file=sys.stderr)
                return 1
            print("revoked; it no longer lets anyone join")
            return 0
        if args.role:
            token = await book.mint_extra(
                Role(args.role), ttl_s=args.ttl, single_use=args.single_use
            )
            limits = [
                f"expires in {args.ttl:g} s" if args.ttl else "",
                "single use" if args.single_use else "",
            ]
            said = "; ".join(x for x in limits if x) or "until revoked"
            print(f"{args.role} token ({said}), shown only now:")
            print(f"  {invite_url(ws.host, ws.port, token)}")
            print(f"  in Discord or Slack: /concordia join {token}")
            return 0
        if args.rotate:
            await book.rotate(Role.PROMPTER)
        invites = await book.ensure()
    print(f"invite: {invite_url(ws.host, ws.port, invites.prompter)}")
    print(f"host:   {invite_url(ws.host, ws.port, invites.host)}")
    return 0


def _duration(text: str) -> float:
    """ "90s", "30m", "2h", "1d" or plain seconds, for argparse."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    number, unit = (text[:-1], text[-1]) if text[-1:] in units else (text, "s")
    try:
        seconds = float(number) * units[unit]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a duration such as 90s, 30m, 2h or 1d"
        ) from None
    if seconds <= 0:
        raise argparse.ArgumentTypeError("a duration must be positive")
    return seconds


async def _run(settings: Settings, config: Path | None) -> int:
    _hide_own_process()
    support = await asyncio.to_thread(sandbox_support)
    if settings.claude.sandbox is SandboxMode.REQUIRED and not support.is_available:
        print(
            f"concordia: claude.sandbox is required but the sandbox cannot run: {support.missing}",
            file=sys.stderr,
        )
        return 2
    claude_env = _claude_env(settings)
    if not _has_credentials(claude_env):
        if not sys.stdin.isatty():
            print(
                "concordia: Claude has no credentials: "
                "run `concordia setup` (or set ANTHROPIC_API_KEY)",
                file=sys.stderr,
            )
            return 2
        if _setup(settings.claude) != 0:
            return 1
        claude_env = _claude_env(settings)

    discord_token = ""
    if settings.discord.is_enabled:
        discord_token = os.environ.get(settings.discord.token_env, "")
        if not discord_token:
            print(
                f"concordia: discord.channels is set but ${settings.discord.token_env} is empty: "
                "export the bot token (Developer Portal → Bot → Reset Token) or clear "
                "discord.channels",
                file=sys.stderr,
            )
            return 2

    slack_tokens: tuple[str, str] | None = None
    if settings.slack.is_enabled:
        slack = settings.slack
        bot_token = os.environ.get(slack.bot_token_env, "")
        app_token = os.environ.get(slack.app_token_env, "")
        if not (bot_token and app_token):
            print(
                f"concordia: slack.channels is set but ${slack.bot_token_env} (xoxb-) or "
                f"${slack.app_token_env} (xapp-, Socket Mode) is empty: export both or clear "
                "slack.channels",
                file=sys.stderr,
            )
            return 2
        slack_tokens = (bot_token, app_token)

    _prepare_state(settings)
    confinement = _confinement(settings, config, support)
    _say_sandbox(settings, support)
    async with Store(settings.store_path) as store, contextlib.AsyncExitStack() as stack:
        tokens_file = _state_file(settings, "tokens.json")
        books: dict[str, InviteBook] = {}
        invites: dict[str, Invites] = {}
        for name in settings.party_names():
            await store.ensure_party(name)
            books[name] = InviteBook(store, name, tokens_file)
            invites[name] = await books[name].ensure()
        secrets = _secrets(settings.claude, claude_env, list(invites.values()))
        if discord_token:
            secrets.append(discord_token)
        if slack_tokens:
            secrets.extend(slack_tokens)
        if gemini_key := os.environ.get(settings.gemini.api_key_env, ""):
            secrets.append(gemini_key)
        redactor = Redactor(secrets)
        for handler in logging.getLogger().handlers:
            handler.addFilter(_RedactingFilter(redactor))
        merger = build_merger(settings)
        if isinstance(merger, GeminiMerger):
            stack.push_async_callback(merger.aclose)
        parties: dict[str, Party] = {}
        for name in settings.party_names():
            session_id = await store.session_id(name)
            session = await stack.enter_async_context(
                ClaudeSession(
                    settings.claude, session_id=session_id, env=claude_env, confinement=confinement
                )
            )
            parties[name] = Party(
                settings,
                name=name,
                store=store,
                session=session,
                merger=merger,
                invites=books[name],
                redactor=redactor,
            )
            await parties[name].load()
        websocket = WebSocketAdapter(settings.websocket, parties[settings.party.name])
        adapters: list[Adapter] = [websocket]
        if discord_token:
            from adapters.discord import DiscordAdapter

            channels = {c: parties[settings.discord.party_of(c)] for c in settings.discord.channels}
            adapters.append(DiscordAdapter(settings.discord, channels, store, token=discord_token))
        if slack_tokens:
            from adapters.slack import SlackAdapter

            bot_token, app_token = slack_tokens
            channels = {c: parties[settings.slack.party_of(c)] for c in settings.slack.channels}
            adapters.append(
                SlackAdapter(
                    settings.slack, channels, store, bot_token=bot_token, app_token=app_token
                )
            )
        await _serve(parties, adapters, lambda: _announce(settings, websocket.port, invites))
    return 0


def _hide_own_process() -> None:
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


def _say_sandbox(settings: Settings, support: SandboxSupport) -> None:
    if settings.claude.sandbox is SandboxMode.OFF:
        print(
            'concordia: Claude\'s sandbox is off (claude.sandbox = "off"): a command you '
            "approve can read anything this user can",
            file=sys.stderr,
            flush=True,
        )
    elif not support.is_available:
        print(
            f"concordia: Claude's sandbox is not available ({support.missing}); Concordia's "
            "files are still denied by permission rules, but an approved command could read "
            "other files of this user",
            file=sys.stderr,
            flush=True,
        )
    else:
        log.info("Claude's commands run in its sandbox (%s)", support.mechanism)


async def _serve(
    parties: Mapping[str, Party], adapters: list[Adapter], announce: Callable[[], None]
) -> None:
    """Run every party's runner and every adapter until SIGINT/SIGTERM or a fatal error.

    An adapter that fails for good (a refused Discord token) ends the whole run: a bot that
    looks alive but is deaf is worse than one that stops with a message.
    """
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await _run_tasks(parties, adapters, announce, stop)
    finally:
        for adapter in adapters:
            await adapter.stop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):
                loop.remove_signal_handler(sig)


async def _run_tasks(
    parties: Mapping[str, Party],
    adapters: list[Adapter],
    announce: Callable[[], None],
    stop: asyncio.Event,
) -> None:
    try:
        async with asyncio.TaskGroup() as group:
            # Adapters first: a runner resuming a batch at once must find them listening.
            tasks = []
            for adapter in adapters:
                await adapter.start()
                tasks.append(group.create_task(adapter.run(), name=f"adapter-{adapter.name}"))
            tasks += [group.create_task(p.run(), name=f"runner-{p.name}") for p in parties.values()]
            announce()
            await stop.wait()
            log.info("stopping")
            for task in tasks:
                task.cancel()
    except* ConcordiaError as group:
        # One line for the host (the Discord token was refused), not a task-group traceback.
        raise group.exceptions[0] from None


def _announce(settings: Settings, port: int, invites: Mapping[str, Invites]) -> None:
    """Print what the host hands out: the terminals' invite URLs, each other party's tokens."""
    host = settings.websocket.host
    default = invites[settings.party.name]
    print(f"concordia: party {settings.party.name!r} in {settings.claude.workdir}", flush=True)
    print(f"invite: {invite_url(host, port, default.prompter)}", flush=True)
    print(f"host:   {invite_url(host, port, default.host)}", flush=True)
    print(
        f"teammates join with: concordia join {invite_url(host, port, default.prompter)} "
        "--name NAME",
        flush=True,
    )
    print(
        "people who may approve Claude's tool use: concordia invite --role approver",
        flush=True,
    )
    for name, tokens in invites.items():
        if name != settings.party.name:
            print(
                f"party {name!r}: /concordia join {tokens.prompter}  (host: {tokens.host})",
                flush=True,
            )


def _secrets(claude: ClaudeSettings, env: Mapping[str, str], invites: list[Invites]) -> list[str]:
    """What must never reach chat or the log: tokens, keys, and secret-named claude.env values."""
    found = [token for tokens in invites for token in (tokens.prompter, tokens.host)]
    found += [env[var] for var in _CREDENTIAL_VARS if env.get(var)]
    found += [value for name, value in claude.env.items() if _SECRET_NAME.search(name)]
    return found


if __name__ == "__main__":
    sys.exit(main())
