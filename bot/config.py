"""Settings: TOML file + environment, validated in one pass into frozen, typed settings.

Every problem is reported at once, each naming its dotted key, where the value came
from (file or variable) and how to fix it. Defaults run with no accounts at all:
SQLite, the local merger and the WebSocket transport on loopback.
"""

from __future__ import annotations

import difflib
import enum
import ipaddress
import json
import os
import re
import shlex
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Self, assert_never
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from bot import ConcordiaError
from bot.confinement import SandboxMode
from bot.model import Answerers
from bot.state_dir import DATABASE_NAME, default_state_dir, inside

__all__ = [
    "AgentKind",
    "AgentSettings",
    "ApprovalSettings",
    "BudgetSettings",
    "ClaudeSettings",
    "ConfigError",
    "DiscordSettings",
    "GeminiSettings",
    "LogSettings",
    "PartySettings",
    "Settings",
    "ShareProvider",
    "ShareSettings",
    "ShellSettings",
    "SlackSettings",
    "StoreSettings",
    "WebSocketSettings",
    "is_loopback",
    "load_settings",
]

ENV_PREFIX = "CONCORDIA_"
NGROK_TOKEN_ENV = "NGROK_AUTHTOKEN"  # what the ngrok SDK and CLI read; a bot secret
CONFIG_ENV = "CONCORDIA_CONFIG"


class ConfigError(ConcordiaError):
    """The configuration is invalid; ``problems`` holds one line per bad key."""

    def __init__(self, problems: list[str]):
        super().__init__("invalid configuration:\n  " + "\n  ".join(problems))
        self.problems = problems


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps a port on this machine."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name: it may resolve anywhere


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class StoreSettings(_Section):
    path: Path | None = Field(
        default=None,
        description="SQLite file (the tokens file sits beside it); unset: the per-user state "
        "folder (bot.state_dir). Relative paths are relative to the directory concordia runs in",
    )
    allow_inside_workdir: bool = False
    keep_days: float = Field(
        default=30.0,
        ge=0,
        description="finished prompts and batches, and delivered outbox rows, older than this "
        "are pruned (cost rows after at least 31 days); 0 keeps them all",
    )
    keep_audit_days: float = Field(
        default=0.0,
        ge=0,
        description="settled approvals, shell runs and questions (the audit trail) older than "
        "this are pruned; 0 keeps them all",
    )

    @field_validator("path", mode="before")
    @classmethod
    def _empty_is_default(cls, path: object) -> object:
        return None if path == "" else path  # TOML has no null: "" asks for the default


class PartySettings(_Section):
    name: str = Field(default="default", min_length=1, max_length=64)
    collect_window_s: float = Field(
        default=1.5,
        ge=0,
        le=60,
        description="the longest an idle party waits to collect prompts arriving together",
    )
    quiet_gap_s: float = Field(
        default=0.25,
        ge=0,
        le=60,
        description="an idle party starts its batch once no prompt came for this long, so a "
        "lone prompt does not wait the whole collect window",
    )
    max_prompt_chars: int = Field(default=256_000, ge=1, le=10_000_000)
    max_image_bytes: int = Field(
        default=3_750_000,
        ge=1024,
        le=3_750_000,
        description="the largest image attachment sent to Claude (the API takes at most 5 MB "
        "of base64, which is 3.75 MB of image)",
    )
    member_burst: int = Field(default=20, ge=1)
    member_prompts_per_minute: float = Field(default=20.0, gt=0)


class ClaudeSettings(_Section):
    command: str = Field(default="claude", min_length=1)
    args: tuple[str, ...] = ()
    env: dict[str, str] = Field(default_factory=dict)
    workdir: Path = Path(".")
    turn_timeout_s: float = Field(default=1800.0, gt=0)
    interrupt_grace_s: float = Field(default=10.0, gt=0)
    restart_backoff_s: float = Field(default=1.0, gt=0)
    restart_backoff_max_s: float = Field(default=30.0, gt=0)
    api_max_retries: int = Field(default=2, ge=0, le=10)
    outage_retry_s: float = Field(
        default=30.0,
        gt=0,
        description="after the API refused a turn (overloaded, rate-limited) without saying "
        "when to come back: the first wait before the batch runs again, doubling each time",
    )
    outage_retry_max_s: float = Field(default=600.0, gt=0)
    credentials_file: Path = Path("~/.config/concordia/credentials.json")
    sandbox: SandboxMode = SandboxMode.AUTO
    permission_mode: str = Field(
        default="", pattern="^(|default|acceptEdits|plan|bypassPermissions|dontAsk)$"
    )
    allowed_tools: tuple[str, ...] = ()
    disallowed_tools: tuple[str, ...] = ()

    @field_validator("args")
    @classmethod
    def _no_settings_flag(cls, args: tuple[str, ...]) -> tuple[str, ...]:
        if any(arg == "--settings" or arg.startswith("--settings=") for arg in args):
            raise ValueError(
                "may not hold --settings: Concordia passes its own (the rules that keep Claude "
                "out of its files, and the sandbox); put yours in .claude/settings.json"
            )
        return args


class WebSocketSettings(_Section):
    """The built-in transport: the page, WebSocket v1 and `/healthz` on one port."""

    host: str = "127.0.0.1"
    port: int = Field(default=8765, ge=0, le=65535)
    max_frame_bytes: int = Field(default=2_097_152, ge=1024)
    join_timeout_s: float = Field(default=10.0, gt=0)
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    allow_plaintext: bool = False
    public_url: str = Field(
        default="",
        description="the base of the links the host hands out, when this machine is reached "
        "by another name (a reverse proxy, a DNS name): https://concordia.example.com",
    )

    @field_validator("tls_cert_file", "tls_key_file", mode="before")
    @classmethod
    def _empty_is_none(cls, path: object) -> object:
        return None if path == "" else path

    @field_validator("public_url")
    @classmethod
    def _base_url(cls, url: str) -> str:
        if not url:
            return url
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(
                "must be an http:// or https:// URL, e.g. https://concordia.example.com"
            )
        if parts.query or parts.fragment or parts.username or parts.password:
            raise ValueError("must be a plain base URL: no user, query or #fragment")
        return url.rstrip("/")

    @model_validator(mode="after")
    def _tls_or_loopback(self) -> Self:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file go together: set both or neither")
        if not self.is_tls and not self.allow_plaintext and not is_loopback(self.host):
            raise ValueError(
                f"host {self.host!r} is reachable from other machines, and without TLS the "
                "invite token would cross the network in clear text. Add TLS "
                "(websocket.tls_cert_file and tls_key_file), or keep host on 127.0.0.1 and "
                "share with `concordia run --share`, or set websocket.allow_plaintext = true "
                "knowingly (a trusted network only)"
            )
        return self

    @property
    def is_tls(self) -> bool:
        return self.tls_cert_file is not None


class ShareProvider(enum.StrEnum):
    """How the party is made reachable from the internet (`[share]`)."""

    OFF = "off"
    NGROK = "ngrok"  # the ngrok SDK, `pip install 'concordia[share]'`, $NGROK_AUTHTOKEN
    COMMAND = "command"  # any tunnel program: `share.command`, its URL from `url_pattern`


class ShareSettings(_Section):
    provider: ShareProvider = Field(
        default=ShareProvider.OFF,
        description='"off"; "command" when share.command is set; `run --share` means "ngrok" '
        "unless share.command is set",
    )
    command: str = Field(
        default="",
        description='e.g. "cloudflared tunnel --url http://127.0.0.1:{port}"; {port} is the '
        "loopback port Concordia opens for the tunnel",
    )
    url_pattern: str = Field(
        default=r"https://[A-Za-z0-9.-]+\.[A-Za-z]{2,}(?::\d+)?",
        description="a regex picking the public URL from the command's output (a group named "
        "url, else the whole match)",
    )
    ngrok_domain: str = Field(default="", description="a reserved ngrok domain, if you have one")

    @field_validator("url_pattern")
    @classmethod
    def _compiles(cls, pattern: str) -> str:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"is not a regular expression: {exc}") from None
        return pattern

    @model_validator(mode="before")
    @classmethod
    def _command_turns_it_on(cls, raw: object) -> object:
        if isinstance(raw, dict) and raw.get("command") and raw.get("provider", "off") == "off":
            return {**raw, "provider": ShareProvider.COMMAND}
        return raw

    @model_validator(mode="after")
    def _command_goes_with_its_provider(self) -> Self:
        if self.provider is ShareProvider.COMMAND and not self.command:
            raise ValueError('provider "command" needs share.command (the tunnel to start)')
        if self.command and self.provider is ShareProvider.NGROK:
            raise ValueError('share.command is set but provider is "ngrok": keep one of them')
        try:
            shlex.split(self.command)
        except ValueError as exc:
            raise ValueError(f"share.command cannot be split like a shell line: {exc}") from None
        if self.command and "{port}" not in self.command:
            raise ValueError("share.command must name {port}, the port its tunnel forwards to")
        return self

    def turned_on(self) -> Self:
        """These settings for `run --share`: ngrok unless a command is configured."""
        if self.provider is not ShareProvider.OFF:
            return self
        return self.model_copy(update={"provider": ShareProvider.NGROK})


class _ChannelBridge(_Section):
    """What every chat bridge shares: the channels it serves and the party each belongs to."""

    channels: tuple[str, ...] = ()
    parties: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _bound_channels_are_served(self) -> Self:
        unknown = sorted(set(self.parties) - set(self.channels))
        if unknown:
            raise ValueError(f"parties names channels not listed in channels: {unknown}")
        return self

    @property
    def is_enabled(self) -> bool:
        return bool(self.channels)

    def party_of(self, channel: str) -> str:
        """The party a served channel belongs to: its binding, else one of its own."""
        return self.parties.get(channel, f"{self._platform}-{channel}")

    _platform: ClassVar[str]


class DiscordSettings(_ChannelBridge):
    _platform: ClassVar[str] = "discord"
    token_env: str = Field(default="DISCORD_BOT_TOKEN", min_length=1)
    api_base: str = "https://discord.com/api/v10"
    gateway_url: str = "wss://gateway.discord.gg"
    edit_interval_s: float = Field(default=1.0, gt=0)
    ready_timeout_s: float = Field(default=60.0, gt=0)

    @field_validator("channels")
    @classmethod
    def _snowflakes(cls, channels: tuple[str, ...]) -> tuple[str, ...]:
        for channel in channels:
            if not channel.isdigit():
                raise ValueError(f"{channel!r} is not a channel id (Developer Mode → Copy ID)")
        return channels


class SlackSettings(_ChannelBridge):
    _platform: ClassVar[str] = "slack"
    bot_token_env: str = Field(default="SLACK_BOT_TOKEN", min_length=1)
    app_token_env: str = Field(default="SLACK_APP_TOKEN", min_length=1)
    api_url: str = "https://slack.com/api/"
    max_message_chars: int = Field(default=3500, ge=500, le=40000)
    edit_interval_s: float = Field(default=1.2, gt=0)
    download_timeout_s: float = Field(default=30.0, gt=0)


class ApprovalSettings(_Section):
    quorum: int = Field(default=1, ge=1, le=20)
    quorum_tools: tuple[str, ...] = ()
    timeout_s: float = Field(default=120.0, gt=0, le=86_400)


class AgentKind(enum.StrEnum):
    """Which driver runs a party's agent."""

    CLAUDE = "claude"  # `claude -p` in stream-json (bot.session)
    REPL = "repl"  # any interactive terminal program through a pty (agents.repl)
    CODEX = "codex"  # the OpenAI Codex CLI through `codex app-server` (agents.codex)
    GEMINI = (
        "gemini"  # the Gemini CLI, one `--output-format stream-json` run a turn (agents.gemini)
    )


class AgentSettings(_Section):
    idle_stop_s: float = Field(
        default=900.0,
        ge=0,
        le=7 * 86_400,
        description="a party's agent is stopped after this long without a turn, and resumes "
        "the same conversation when next needed; 0 keeps it running once started",
    )
    kind: AgentKind = AgentKind.CLAUDE
    command: tuple[str, ...] = Field(
        default=(),
        description="the agent's program and its arguments: required for repl; for codex and "
        "gemini the CLI and extra arguments (default: the project-local install, else the "
        "kind's name on PATH)",
    )
    prompt_marker: str = Field(
        default="^> ?$",
        min_length=1,
        description="a regex matched on the rendered line the cursor is on and on the last "
        "non-empty line (trailing spaces stripped): where it matches, the program waits for input",
    )
    idle_s: float = Field(
        default=0.5,
        gt=0,
        le=60,
        description="output quiet this long while the prompt marker shows ends a repl turn; a "
        "typed prompt gets its Enter once the screen was quiet this long",
    )
    columns: int = Field(default=120, ge=20, le=1000)
    rows: int = Field(default=40, ge=5, le=1000)
    startup: tuple[str, ...] = Field(
        default=(),
        description="keys sent at start, each once the screen has settled, until the prompt "
        "marker shows",
    )

    @field_validator("prompt_marker")
    @classmethod
    def _compiles(cls, marker: str) -> str:
        try:
            re.compile(marker)
        except re.error as exc:
            raise ValueError(f"not a regular expression ({exc})") from None
        return marker

    @model_validator(mode="after")
    def _repl_has_command(self) -> Self:
        if self.kind is AgentKind.REPL and not self.command:
            raise ValueError(
                'agent.command is required when agent.kind = "repl": set it to the program '
                'and its arguments, e.g. command = ["python3", "-i"]'
            )
        return self

    @property
    def name(self) -> str:
        """What the party's messages call the agent ("Claude restarted")."""
        match self.kind:
            case AgentKind.CLAUDE:
                return "Claude"
            case AgentKind.REPL:
                return "The repl agent"
            case AgentKind.CODEX:
                return "Codex"
            case AgentKind.GEMINI:
                return "Gemini CLI"
            case unknown:
                assert_never(unknown)

    def describe(self) -> str:
        """The agent in a few words, as `status` names it."""
        if self.kind is AgentKind.REPL:
            return f"the repl agent `{shlex.join(self.command)}`"
        return self.name

    @property
    def has_approvals(self) -> bool:
        """Whether the driver asks before the agent acts (the repl driver cannot, nor the
        Gemini CLI's headless mode)."""
        return self.kind in (AgentKind.CLAUDE, AgentKind.CODEX)


class QuestionSettings(_Section):
    answerers: Answerers = Answerers.AUTHORS
    timeout_s: float = Field(
        default=0.0,
        ge=0,
        le=86_400,
        description="how long a question waits for an answer; 0 waits as long as the turn may "
        "run (claude.turn_timeout_s)",
    )
    remind_every_s: float = Field(default=300.0, ge=0, le=86_400, description="0 never reminds")


class ShellSettings(_Section):
    enabled: bool = False
    allowed_users: tuple[str, ...] = ()
    allow: tuple[str, ...] = ()
    timeout_s: float = Field(default=60.0, gt=0, le=3600)
    max_output_chars: int = Field(default=3000, ge=200, le=1_000_000)

    @field_validator("allowed_users")
    @classmethod
    def _platform_ids(cls, users: tuple[str, ...]) -> tuple[str, ...]:
        for user in users:
            platform, _, user_id = user.partition(":")
            if not platform.isalpha() or not platform.islower() or not user_id.strip():
                raise ValueError(
                    f"{user!r} is not <platform>:<user id> (discord:123…, slack:U…, "
                    "websocket:<name>)"
                )
        return users


class GeminiSettings(_Section):
    api_key_env: str = Field(default="GEMINI_API_KEY", min_length=1)
    model: str = Field(default="gemini-3.8-flash", min_length=1)
    base_url: str = ""
    timeout_s: float = Field(default=5.0, gt=0, le=120)


class BudgetSettings(_Section):
    """Daily spending limits in US dollars, by the host's local day; 0 is no limit."""

    party_daily_usd: float = Field(default=0.0, ge=0)
    member_daily_usd: float = Field(default=0.0, ge=0)


class MetricsSettings(_Section):
    """Prometheus metrics, `/healthz` and `/readyz` on a listener of their own."""

    enabled: bool = False
    listen: str = Field(default="127.0.0.1:9464", pattern=r"^\[?[^\s]+\]?:[0-9]{1,5}$")
    token_env: str = Field(
        default="METRICS_BEARER_TOKEN",
        min_length=1,
        description="the variable holding the bearer token a non-loopback listen address needs "
        "(not CONCORDIA_…: those name settings)",
    )

    @property
    def host(self) -> str:
        return self.listen.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])


class RunSettings(_Section):
    shutdown_timeout_s: float = Field(
        default=20.0,
        gt=0,
        le=600,
        description="on SIGTERM or SIGINT: at most this long to flush, interrupt the turn and "
        "close the store before exiting",
    )


class LogSettings(_Section):
    level: str = Field(default="INFO", pattern="^(DEBUG|INFO|WARNING|ERROR)$")
    format: str = Field(
        default="text",
        pattern="^(text|json)$",
        description="json: one object a line (time, level, logger, message, party, batch id)",
    )


class Settings(_Section):
    store: StoreSettings = StoreSettings()
    party: PartySettings = PartySettings()
    claude: ClaudeSettings = ClaudeSettings()
    agent: AgentSettings = AgentSettings()
    websocket: WebSocketSettings = WebSocketSettings()
    share: ShareSettings = ShareSettings()
    discord: DiscordSettings = DiscordSettings()
    slack: SlackSettings = SlackSettings()
    approvals: ApprovalSettings = ApprovalSettings()
    questions: QuestionSettings = QuestionSettings()
    shell: ShellSettings = ShellSettings()
    gemini: GeminiSettings = GeminiSettings()
    budget: BudgetSettings = BudgetSettings()
    metrics: MetricsSettings = MetricsSettings()
    run: RunSettings = RunSettings()
    log: LogSettings = LogSettings()

    def party_names(self) -> list[str]:
        """Every party this configuration runs: the terminals' one first."""
        names = [self.party.name]
        bound = [self.discord.party_of(c) for c in self.discord.channels]
        bound += [self.slack.party_of(c) for c in self.slack.channels]
        for name in bound:
            if name not in names:
                names.append(name)
        return names

    @property
    def store_path(self) -> Path:
        """The SQLite file; only a `resolved` copy has one."""
        if self.store.path is None:
            raise RuntimeError("settings not resolved: use load_settings or Settings.resolved")
        return self.store.path

    @property
    def state_dir(self) -> Path:
        """The folder of the database and the tokens file."""
        return self.store_path.parent

    def resolved(self, base: Path, environ: Mapping[str, str]) -> Self:
        """Return a copy with relative paths made absolute against ``base`` and the default
        store path (the per-user state folder of ``claude.workdir``) filled in."""
        workdir = _absolute(self.claude.workdir, base)
        path = (
            default_state_dir(workdir, environ) / DATABASE_NAME
            if self.store.path is None
            else _absolute(self.store.path, base)
        )
        store = self.store.model_copy(update={"path": path})
        claude = self.claude.model_copy(
            update={
                "workdir": workdir,
                "credentials_file": _absolute(self.claude.credentials_file, base),
            }
        )
        tls = {
            key: _absolute(path, base)
            for key in ("tls_cert_file", "tls_key_file")
            if (path := getattr(self.websocket, key)) is not None
        }
        websocket = self.websocket.model_copy(update=tls)
        return self.model_copy(update={"store": store, "claude": claude, "websocket": websocket})

    def state_problems(self) -> list[str]:
        """State files the agent could read because they sit in its working tree."""
        if self.store.allow_inside_workdir:
            return []
        workdir = self.claude.workdir
        problems = []
        if inside(self.store_path, workdir):
            problems.append(
                f"store.path {self.store_path} is inside claude.workdir {workdir}: Claude could "
                "read the tokens and every prompt there, and `git add -A` would commit them. "
                "Remove store.path (the default is a per-user folder outside the repository), "
                "set it outside the working tree, or set store.allow_inside_workdir = true "
                "knowingly"
            )
        if inside(self.claude.credentials_file, workdir):
            problems.append(
                f"claude.credentials_file {self.claude.credentials_file} is inside "
                f"claude.workdir {workdir}: Claude could read the API key there. Move it out "
                "(default ~/.config/concordia/credentials.json) or set "
                "store.allow_inside_workdir = true knowingly"
            )
        key = self.websocket.tls_key_file
        if key is not None and inside(key, workdir):
            problems.append(
                f"websocket.tls_key_file {key} is inside claude.workdir {workdir}: Claude could "
                "read the TLS private key there. Move it out of the working tree, or set "
                "store.allow_inside_workdir = true knowingly"
            )
        return problems


def _absolute(path: Path, base: Path) -> Path:
    path = path.expanduser()
    return path if path.is_absolute() else (base / path).resolve()


def load_settings(
    path: Path | None = None, environ: Mapping[str, str] | None = None, *, base: Path | None = None
) -> Settings:
    """Read ``path`` (or $CONCORDIA_CONFIG, or nothing: defaults), apply CONCORDIA_* overrides.

    Raises `ConfigError` listing every problem. Relative paths resolve against ``base``
    (default: the current directory).
    """
    env = os.environ if environ is None else environ
    if path is None and env.get(CONFIG_ENV):
        path = Path(env[CONFIG_ENV])
    raw: dict[str, Any] = {}
    origin: dict[str, str] = {}
    problems: list[str] = []
    if path is not None:
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError([f"{path}: no such config file (copy config.example.toml)"]) from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError([f"{path}: not valid TOML: {exc}"]) from None
        for section, table in raw.items():
            if isinstance(table, dict):
                for key in table:
                    origin[f"{section}.{key}"] = str(path)
    problems += _apply_env(raw, origin, env)
    problems += _unknown_keys(raw, origin)
    try:
        settings = Settings.model_validate(_known_only(raw))
    except ValidationError as exc:
        problems += [_describe(err, origin) for err in exc.errors()]
    if problems:
        raise ConfigError(problems)
    resolved = settings.resolved(base or Path.cwd(), env)
    problems = resolved.state_problems()
    if problems:
        raise ConfigError(problems)
    return resolved


def _known_only(raw: dict[str, Any]) -> dict[str, Any]:
    """``raw`` without the keys `_unknown_keys` reported, so the rest is still checked."""
    known: dict[str, Any] = {}
    for section, table in raw.items():
        if section in Settings.model_fields and isinstance(table, dict):
            fields = _section_model(section).model_fields
            known[section] = {k: v for k, v in table.items() if k in fields}
    return known


def _unknown_keys(raw: dict[str, Any], origin: dict[str, str]) -> list[str]:
    problems = []
    sections = Settings.model_fields
    for section, table in raw.items():
        if section not in sections:
            problems.append(f"[{section}] is not a section{_did_you_mean(section, sections)}")
            continue
        if not isinstance(table, dict):
            problems.append(f"[{section}] must be a table")
            continue
        fields = _section_model(section).model_fields
        for key in table:
            if key not in fields:
                where = origin.get(f"{section}.{key}", "")
                hint = _did_you_mean(key, fields)
                problems.append(f"{section}.{key} is not a setting{hint} ({where})")
    return problems


def _section_model(section: str) -> type[BaseModel]:
    annotation = Settings.model_fields[section].annotation
    assert isinstance(annotation, type)
    assert issubclass(annotation, BaseModel)
    return annotation


def _apply_env(raw: dict[str, Any], origin: dict[str, str], env: Mapping[str, str]) -> list[str]:
    """Overlay CONCORDIA_<SECTION>_<KEY> variables; tables and lists are JSON."""
    problems = []
    for name, value in env.items():
        if not name.startswith(ENV_PREFIX) or name == CONFIG_ENV:
            continue
        rest = name[len(ENV_PREFIX) :].lower()
        section = next((s for s in Settings.model_fields if rest.startswith(s + "_")), None)
        if section is None:
            problems.append(f"{name} names no setting (expected CONCORDIA_<SECTION>_<KEY>)")
            continue
        key = rest[len(section) + 1 :]
        fields = _section_model(section).model_fields
        if key not in fields:
            problems.append(f"{name} names no setting{_did_you_mean(key, fields)}")
            continue
        parsed: Any = value
        if value.startswith(("[", "{")):
            try:
                parsed = json.loads(value)
            except json.JSONDecodeError:
                problems.append(f"{name}: a list or table must be JSON")
                continue
        table = raw.setdefault(section, {})
        if not isinstance(table, dict):
            continue  # `_unknown_keys` reports "[section] must be a table"
        table[key] = parsed
        origin[f"{section}.{key}"] = f"${name}"
    return problems


def _describe(err: Any, origin: dict[str, str]) -> str:
    dotted = ".".join(str(p) for p in err["loc"])
    top = ".".join(str(p) for p in err["loc"][:2])
    # A section-wide check (discord.parties vs discord.channels) has no key of its own.
    inside = (source for key, source in origin.items() if key.startswith(top + "."))
    where = origin.get(top) or next(inside, "default")
    return f"{dotted}: {err['msg']} (got {err.get('input')!r} from {where})"


def _did_you_mean(word: str, choices: Mapping[str, object] | list[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""
