"""`concordia run | setup | invite | join`: the entry points, and where the parts are wired."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import importlib.util
import json
import logging
import os
import re
import shlex
import shutil
import signal
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

from adapters.web.http import WILDCARD_HOSTS, local_base, tls_context
from adapters.web.ops import ask_running
from agents.program import agent_program, program_version
from bot import ConcordiaError
from bot.agent import SessionError
from bot.app import (
    App,
    BotTokens,
    agent_env,
    confinement_for,
    hide_own_process,
    prepare_state,
)
from bot.config import (
    CONFIG_ENV,
    NGROK_TOKEN_ENV,
    AgentKind,
    ClaudeSettings,
    Settings,
    ShareProvider,
    is_loopback,
    load_settings,
)
from bot.confinement import SandboxMode, SandboxSupport, sandbox_support
from bot.credentials import check_api_key, has_credentials, store_api_key
from bot.invite import InviteBook, Invites, JoinAddress
from bot.model import Role
from bot.safety import Redactor
from bot.state_dir import ADDRESS_NAME, TOKENS_NAME
from bot.store import Store, back_up
from bot.telemetry import version

log = logging.getLogger("concordia")

_SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSWORD", re.IGNORECASE)
_API_KEY_VAR = "ANTHROPIC_API_KEY"
_CREDENTIAL_VARS = (_API_KEY_VAR, "ANTHROPIC_AUTH_TOKEN", "CLAUDE_CODE_OAUTH_TOKEN")
_DEFAULT_API_BASE = "https://api.anthropic.com"
_KEY_CHECK_TIMEOUT_S = 15.0
_GEMINI_CLI_KEY = "GEMINI_API_KEY"  # what the Gemini CLI reads for its key


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="concordia", description=__doc__)
    parser.add_argument("--version", action="version", version=f"concordia {version()}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        type=Path,
        help="config file (default: $CONCORDIA_CONFIG, else built-in defaults)",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", parents=[common], help="run the bot in this directory")
    run.add_argument(
        "--log-format",
        choices=["text", "json"],
        help="json: one object a line, for a log collector (default: log.format)",
    )
    run.add_argument(
        "--share",
        action="store_true",
        help="open a public HTTPS link for teammates elsewhere ([share]; default: ngrok)",
    )
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
    doctor = commands.add_parser(
        "doctor", parents=[common], help="check the setup: claude, credentials, Discord"
    )
    doctor.add_argument(
        "--running",
        action="store_true",
        help="ask the running bot instead: /readyz on [metrics] (else the web /healthz)",
    )
    backup = commands.add_parser(
        "backup",
        parents=[common],
        help="copy the state database to FILE (0600), safe while the bot runs",
    )
    backup.add_argument("file", type=Path, metavar="FILE", help="the copy to write")
    backup.add_argument("--force", action="store_true", help="overwrite FILE if it exists")
    join = commands.add_parser("join", help="join a party from this terminal")
    join.add_argument("url", help="the invite link: https://HOST/#TOKEN (or concordia://…)")
    join.add_argument(
        "--cafile", type=Path, help="trust this CA's certificate (a host with a private CA)"
    )
    join.add_argument(
        "--name", default=os.environ.get("USER", "guest"), help="your name in the party"
    )
    args = parser.parse_args(argv)

    if args.command == "join":
        from adapters.terminal import main as join_main

        return join_main(args.url, args.name, cafile=args.cafile)
    try:
        settings = load_settings(args.config)
    except ConcordiaError as exc:
        print(f"concordia: {exc}", file=sys.stderr)
        return 2
    if getattr(args, "log_format", None):
        settings = settings.model_copy(
            update={"log": settings.log.model_copy(update={"format": args.log_format})}
        )
    _configure_logging(settings)
    try:
        match args.command:
            case "run":
                if args.share:
                    settings = settings.model_copy(update={"share": settings.share.turned_on()})
                return asyncio.run(_run(settings, _config_path(args)))
            case "setup":
                return _setup(settings.claude)
            case "invite":
                return asyncio.run(_invite(settings, args))
            case "doctor" if args.running:
                return asyncio.run(_doctor_running(settings))
            case "doctor":
                return asyncio.run(_doctor(settings))
            case "backup":
                return asyncio.run(_backup(settings, args.file, force=args.force))
    except ConcordiaError as exc:
        print(f"concordia: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 2


def _configure_logging(settings: Settings) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if settings.log.format == "json":
        handler.setFormatter(_JsonFormatter())
    else:
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


class _JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message, and the party and batch id where
    the record names them (the redacting filter has already run on the message)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in ("party", "batch_id", "platform"):
            if (value := record.__dict__.get(key)) is not None:
                entry[key] = value
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


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


def _config_path(args: argparse.Namespace) -> Path | None:
    named = args.config or os.environ.get(CONFIG_ENV)
    return Path(named) if named else None


# -- credentials --------------------------------------------------------------------------


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
        verdict = check_api_key(claude, key)
        if verdict is False:
            print("that key was rejected by the API; try again (Ctrl-C to stop)", file=sys.stderr)
            continue
        if verdict is None:
            print("could not reach the API to check the key; storing it unchecked", file=sys.stderr)
        break
    store_api_key(claude.credentials_file, key)
    print(f"stored the key in {claude.credentials_file} (mode 0600)")
    return 0


# -- commands ------------------------------------------------------------------------------


async def _doctor(settings: Settings) -> int:
    """Say what would stop `concordia run` from working, each with its fix; 1 if anything."""
    problems: list[str] = []
    claude = settings.claude
    program = agent_program(settings.agent, settings.claude)
    try:
        found = program.require()
    except SessionError as exc:
        problems.append(str(exc))
    else:
        version = await program_version(program, agent_env(settings, os.environ))
        print(f"✓ {settings.agent.describe()} {version or '(version unknown)'}: {found}")
    problems += _credential_problems(settings)
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
    problems += _web_problems(settings)
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


def _web_problems(settings: Settings) -> list[str]:
    """What would keep teammates out: the TLS files, the share tunnel's needs."""
    ws, share = settings.websocket, settings.share
    problems = []
    if ws.tls_cert_file is not None and ws.tls_key_file is not None:
        try:
            tls_context(ws.tls_cert_file, ws.tls_key_file)
            print(f"✓ TLS: {ws.tls_cert_file}")
        except ConcordiaError as exc:
            problems.append(str(exc))
    if share.provider is ShareProvider.NGROK:
        if importlib.util.find_spec("ngrok") is None:
            problems.append(
                "share.provider is ngrok but the SDK is missing: pip install 'concordia[share]'"
            )
        elif not os.environ.get(NGROK_TOKEN_ENV):
            problems.append(
                f"share.provider is ngrok but ${NGROK_TOKEN_ENV} is empty: copy it from the ngrok "
                "dashboard (Your Authtoken) and export it"
            )
        else:
            print("✓ sharing: ngrok, with an authtoken")
    elif share.provider is ShareProvider.COMMAND:
        program = shlex.split(share.command)[0]
        if shutil.which(program) is None:
            problems.append(f"share.command's program {program!r} is not on PATH")
        else:
            print(f"✓ sharing: {program}")
    return problems


def _credential_problems(settings: Settings) -> list[str]:
    """Whether the agent will find a key: Claude's are checked; the Gemini CLI's default
    variable must not be the merger's (the bot's secrets never reach the agent)."""
    env = agent_env(settings, os.environ)
    match settings.agent.kind:
        case AgentKind.CLAUDE:
            if not has_credentials(env):
                return ["Claude has no credentials: run `concordia setup` or set ANTHROPIC_API_KEY"]
            print("✓ Claude has credentials")
        case AgentKind.GEMINI if settings.gemini.api_key_env == _GEMINI_CLI_KEY:
            return [
                f"the Gemini CLI reads ${_GEMINI_CLI_KEY}, which is also the merger's key "
                "(gemini.api_key_env) and so is kept from the agent: give the merger its own "
                'variable (gemini.api_key_env = "MERGER_GEMINI_API_KEY")'
            ]
        case _:
            pass  # the CLI's own login is its business: `codex login`, gemini's OAuth
    return []


async def _invite(settings: Settings, args: argparse.Namespace) -> int:
    party = args.party or settings.party.name
    if party not in settings.party_names():
        known = ", ".join(settings.party_names())
        print(f"concordia: no party {party!r}; known: {known}", file=sys.stderr)
        return 2
    if (args.ttl or args.single_use) and not args.role:
        print("concordia: --ttl and --single-use go with --role", file=sys.stderr)
        return 2
    for line in prepare_state(settings, os.environ):
        print(f"concordia: {line}", file=sys.stderr, flush=True)
    address = _known_address(settings)
    async with Store(settings.store_path) as store:
        await store.ensure_party(party)
        book = InviteBook(store, party, settings.state_dir / TOKENS_NAME)
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
            if party == settings.party.name:
                print(f"  {address.link(token)}")
            print(f"  in Discord or Slack: /concordia join {token}")
            return 0
        if args.rotate:
            await book.rotate(Role.PROMPTER)
        invites = await book.ensure()
    if party == settings.party.name:
        print(f"invite: {address.link(invites.prompter)}")
        print(f"host:   {address.link(invites.host)}")
    else:
        print(f"invite: /concordia join {invites.prompter}")
        print(f"host:   /concordia join {invites.host}")
    return 0


async def _doctor_running(settings: Settings) -> int:
    """Ask the running bot whether it is ready: 0 when it is, 1 (saying why) when not."""
    metrics = settings.metrics
    if metrics.enabled:
        host = "127.0.0.1" if metrics.host in WILDCARD_HOSTS else metrics.host
        host = f"[{host}]" if ":" in host else host
        url = f"http://{host}:{metrics.port}/readyz"
        token = os.environ.get(metrics.token_env, "")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
    else:
        url = _known_address(settings).base.rstrip("/") + "/healthz"
        headers = {}
    try:
        status, body = await ask_running(url, headers)
    except (OSError, TimeoutError, ValueError) as exc:
        print(f"✗ no running bot answered at {url}: {exc or type(exc).__name__}")
        return 1
    if status == 401:
        print(f"✗ {url} wants the bearer token: export ${metrics.token_env}")
        return 1
    problems = body.get("problems", []) if isinstance(body, dict) else []
    if status == 200:
        what = "ready" if metrics.enabled else "up (turn on [metrics] for its readiness)"
        print(f"✓ the running bot is {what} ({url})")
        return 0
    print(f"✗ the running bot is not ready ({url}):")
    for problem in problems:
        print(f"  - {problem}")
    return 1


async def _backup(settings: Settings, target: Path, *, force: bool) -> int:
    """`concordia backup FILE`: the online backup of the state database (`bot.store.back_up`)."""
    copy = await back_up(settings.store_path, target, overwrite=force)
    print(
        f"backed up {settings.store_path} to {copy.path} "
        f"({copy.size_bytes} bytes, schema version {copy.schema_version}, mode 0600)"
    )
    return 0


def _known_address(settings: Settings) -> JoinAddress:
    """The link base of the running bot (a tunnel's URL) if one runs, else the configured."""
    address = JoinAddress()
    try:
        address.move((settings.state_dir / ADDRESS_NAME).read_text(encoding="utf-8").strip())
    except FileNotFoundError:
        address.move(local_base(settings.websocket, settings.websocket.port))
    return address


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
    hide_own_process()
    support = await asyncio.to_thread(sandbox_support)
    if settings.claude.sandbox is SandboxMode.REQUIRED and not support.is_available:
        print(
            f"concordia: claude.sandbox is required but the sandbox cannot run: {support.missing}",
            file=sys.stderr,
        )
        return 2
    claude_env = agent_env(settings, os.environ)
    if settings.agent.kind is AgentKind.CLAUDE and not has_credentials(claude_env):
        if not sys.stdin.isatty():
            print(
                "concordia: Claude has no credentials: "
                "run `concordia setup` (or set ANTHROPIC_API_KEY)",
                file=sys.stderr,
            )
            return 2
        if _setup(settings.claude) != 0:
            return 1
        claude_env = agent_env(settings, os.environ)
    tokens = _bot_tokens(settings)
    if tokens is None:
        return 2
    metrics = settings.metrics
    if metrics.enabled and not is_loopback(metrics.host) and not os.environ.get(metrics.token_env):
        print(
            f"concordia: metrics.listen {metrics.listen!r} is not loopback, so it needs a bearer "
            f"token: export ${metrics.token_env} (a long random string), or listen on 127.0.0.1",
            file=sys.stderr,
        )
        return 2
    for line in prepare_state(settings, os.environ):
        print(f"concordia: {line}", file=sys.stderr, flush=True)
    _say_sandbox(settings, support)
    confinement = confinement_for(settings, config, support)
    async with App(settings, agent_env=claude_env, confinement=confinement, tokens=tokens) as app:
        for handler in logging.getLogger().handlers:
            handler.addFilter(_RedactingFilter(app.redactor))
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            await app.serve(stop, lambda: _announce(settings, app.address, app.invites))
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                with contextlib.suppress(ValueError):
                    loop.remove_signal_handler(sig)
    return 0


def _bot_tokens(settings: Settings) -> BotTokens | None:
    """The chat platforms' tokens the settings need, from the environment; None (said why)
    when one is missing."""
    discord = ""
    if settings.discord.is_enabled:
        discord = os.environ.get(settings.discord.token_env, "")
        if not discord:
            print(
                f"concordia: discord.channels is set but ${settings.discord.token_env} is empty: "
                "export the bot token (Developer Portal → Bot → Reset Token) or clear "
                "discord.channels",
                file=sys.stderr,
            )
            return None
    slack_bot = slack_app = ""
    if settings.slack.is_enabled:
        slack = settings.slack
        slack_bot = os.environ.get(slack.bot_token_env, "")
        slack_app = os.environ.get(slack.app_token_env, "")
        if not (slack_bot and slack_app):
            print(
                f"concordia: slack.channels is set but ${slack.bot_token_env} (xoxb-) or "
                f"${slack.app_token_env} (xapp-, Socket Mode) is empty: export both or clear "
                "slack.channels",
                file=sys.stderr,
            )
            return None
    ngrok = ""
    if settings.share.provider is ShareProvider.NGROK:
        ngrok = os.environ.get(NGROK_TOKEN_ENV, "")  # none: the tunnel says what to do
    return BotTokens(discord=discord, slack_bot=slack_bot, slack_app=slack_app, ngrok=ngrok)


def _say_sandbox(settings: Settings, support: SandboxSupport) -> None:
    if settings.agent.kind is not AgentKind.CLAUDE:
        _say_wrapper(settings, support)
    elif settings.claude.sandbox is SandboxMode.OFF:
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


def _say_wrapper(settings: Settings, support: SandboxSupport) -> None:
    """Another agent takes no deny rules: only bubblewrap around it hides Concordia's files."""
    name = settings.agent.describe()
    if settings.claude.sandbox is not SandboxMode.OFF and support.is_available:
        log.info("%s runs under %s, Concordia's files hidden from it", name, support.mechanism)
        return
    why = (
        'claude.sandbox = "off"'
        if settings.claude.sandbox is SandboxMode.OFF
        else f"the sandbox is not available: {support.missing}"
    )
    print(
        f"concordia: {name} is not confined ({why}): it can read Concordia's state folder, "
        "invite tokens included, and anything else this user can",
        file=sys.stderr,
        flush=True,
    )


def _announce(settings: Settings, address: JoinAddress, invites: Mapping[str, Invites]) -> None:
    """Print what the host hands out: the link to the terminals' party (again each time a
    tunnel moves it), each other party's tokens."""
    default = invites[settings.party.name]
    print(f"concordia: party {settings.party.name!r} in {settings.claude.workdir}", flush=True)
    ws = settings.websocket
    if ws.allow_plaintext and not ws.is_tls and not is_loopback(ws.host):
        print(
            f"concordia: websocket.allow_plaintext is on and {ws.host} is reachable from other "
            "machines: invite tokens cross the network in clear text",
            file=sys.stderr,
            flush=True,
        )
    _print_links(address, default)
    if ws.host in WILDCARD_HOSTS and not ws.public_url:
        print(
            f"the link names this machine as {urlsplit(address.base).hostname}; if teammates "
            "reach it by another name, set websocket.public_url",
            flush=True,
        )
    print(
        "teammates open the invite link in a browser, or: concordia join LINK --name NAME",
        flush=True,
    )
    print(
        "people who may approve Claude's tool use: concordia invite --role approver",
        flush=True,
    )
    if settings.share.provider is not ShareProvider.OFF:
        print("sharing: waiting for the public link…", flush=True)
    for name, tokens in invites.items():
        if name != settings.party.name:
            print(
                f"party {name!r}: /concordia join {tokens.prompter}  (host: {tokens.host})",
                flush=True,
            )
    address.watch(lambda base: _print_links(address, default, shared=True))


def _print_links(address: JoinAddress, invites: Invites, *, shared: bool = False) -> None:
    if shared:
        print(f"concordia: the party is shared at {address.base}", flush=True)
    print(f"invite: {address.link(invites.prompter)}", flush=True)
    print(f"host:   {address.link(invites.host)}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
