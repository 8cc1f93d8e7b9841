"""bot.config: defaults, TOML, CONCORDIA_* overrides, error reports and config.example.toml."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from pydantic import BaseModel

from bot.config import ConfigError, Settings, ShareProvider, StoreSettings, load_settings
from bot.state_dir import default_state_dir

EXAMPLE = Path(__file__).resolve().parent.parent / "config.example.toml"

# Fields whose loaded value is a resolved path, so the example's raw text is compared instead.
_PATH_FIELDS = {("store", "path"), ("claude", "workdir"), ("claude", "credentials_file")}


def _write(tmp_path: Path, text: str, name: str = "config.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def _sections() -> dict[str, type[BaseModel]]:
    sections = {}
    for name, field in Settings.model_fields.items():
        model = field.annotation
        assert isinstance(model, type)
        assert issubclass(model, BaseModel)
        sections[name] = model
    return sections


def _problems(exc: pytest.ExceptionInfo[ConfigError]) -> str:
    return "\n".join(exc.value.problems)


# --------------------------------------------------------------------------- defaults


def test_defaults_with_no_file(tmp_path: Path) -> None:
    home = tmp_path / "home"
    repo = tmp_path / "repo"
    repo.mkdir()
    settings = load_settings(None, environ={"HOME": str(home)}, base=repo)

    assert settings.party.collect_window_s == 1.5
    assert settings.party.max_prompt_chars == 256_000
    assert settings.claude.command == "claude"
    assert settings.claude.args == ()
    assert settings.claude.env == {}
    assert settings.claude.turn_timeout_s == 1800.0
    assert settings.websocket.host == "127.0.0.1"
    assert settings.websocket.port == 8765
    # The per-user state folder of this working directory, outside it (#12).
    assert settings.store.path == default_state_dir(repo, {"HOME": str(home)}) / "concordia.db"
    assert settings.store.path.is_relative_to(home / ".local" / "state" / "concordia")
    assert settings.claude.sandbox == "auto"
    assert settings.claude.workdir == repo.resolve()
    assert (
        settings.claude.credentials_file
        == Path("~/.config/concordia/credentials.json").expanduser()
    )


def test_settings_are_frozen(tmp_path: Path) -> None:
    settings = load_settings(None, environ={}, base=tmp_path)
    with pytest.raises(ValueError, match="frozen"):
        settings.websocket.port = 1


# --------------------------------------------------------------------------- TOML


def test_keys_load_from_toml(tmp_path: Path) -> None:
    config = _write(
        tmp_path,
        """
[store]
path = "/srv/concordia/state.db"

[party]
collect_window_s = 0.25
max_prompt_chars = 1000

[claude]
command = "/opt/claude/bin/claude"
args = ["--model", "sonnet"]
env = { ANTHROPIC_BASE_URL = "http://127.0.0.1:9", CLAUDE_CODE_MAX_RETRIES = "0" }
workdir = "/srv/repo"
turn_timeout_s = 42.5

[websocket]
host = "0.0.0.0"
port = 9001
tls_cert_file = "tls/cert.pem"
tls_key_file = "/etc/concordia/key.pem"
public_url = "https://concordia.example.com/"

[share]
command = "cloudflared tunnel --url http://127.0.0.1:{port}"
""",
    )

    settings = load_settings(config, environ={}, base=tmp_path)

    assert settings.store.path == Path("/srv/concordia/state.db")
    assert settings.party.collect_window_s == 0.25
    assert settings.party.max_prompt_chars == 1000
    assert settings.claude.command == "/opt/claude/bin/claude"
    assert settings.claude.args == ("--model", "sonnet")
    assert settings.claude.env == {
        "ANTHROPIC_BASE_URL": "http://127.0.0.1:9",
        "CLAUDE_CODE_MAX_RETRIES": "0",
    }
    assert settings.claude.workdir == Path("/srv/repo")
    assert settings.claude.turn_timeout_s == 42.5
    assert settings.websocket.host == "0.0.0.0"
    assert settings.websocket.port == 9001
    assert settings.websocket.tls_cert_file == tmp_path / "tls" / "cert.pem"
    assert settings.websocket.tls_key_file == Path("/etc/concordia/key.pem")
    assert settings.websocket.public_url == "https://concordia.example.com"
    assert settings.share.provider is ShareProvider.COMMAND  # a command turns sharing on
    # Keys the file leaves out keep their defaults.
    assert settings.party.name == "default"
    assert settings.claude.interrupt_grace_s == 10.0


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.20", "build-box.lan"])
def test_a_host_reachable_from_other_machines_needs_tls(tmp_path: Path, host: str) -> None:
    config = _write(tmp_path, f'[websocket]\nhost = "{host}"\n')
    with pytest.raises(ConfigError) as refused:
        load_settings(config, environ={}, base=tmp_path)
    said = str(refused.value)
    assert "clear text" in said
    assert "tls_cert_file" in said
    assert "--share" in said
    assert "allow_plaintext" in said
    knowingly = _write(tmp_path, f'[websocket]\nhost = "{host}"\nallow_plaintext = true\n')
    assert load_settings(knowingly, environ={}, base=tmp_path).websocket.host == host


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1", "127.0.0.2"])
def test_loopback_needs_no_tls(tmp_path: Path, host: str) -> None:
    config = _write(tmp_path, f'[websocket]\nhost = "{host}"\n')
    assert not load_settings(config, environ={}, base=tmp_path).websocket.is_tls


@pytest.mark.parametrize(
    ("section", "complaint"),
    [
        ('[websocket]\ntls_cert_file = "c.pem"\n', "set both or neither"),
        ('[websocket]\npublic_url = "ftp://x"\n', "http:// or https://"),
        ('[websocket]\npublic_url = "https://x/#frag"\n', "no user, query or #fragment"),
        ('[share]\nprovider = "command"\n', "needs share.command"),
        ('[share]\ncommand = "bore local 80"\n', "must name {port}"),
        ('[share]\nprovider = "ngrok"\ncommand = "x {port}"\n', "keep one of them"),
        ('[share]\nurl_pattern = "(https"\n', "not a regular expression"),
        ('[share]\nprovider = "tailscale"\n', "share.provider"),
    ],
)
def test_bad_tls_and_share_settings_say_what_to_fix(
    tmp_path: Path, section: str, complaint: str
) -> None:
    with pytest.raises(ConfigError, match=re.escape(complaint)):
        load_settings(_write(tmp_path, section), environ={}, base=tmp_path)


def test_the_tls_key_may_not_sit_in_the_working_tree(tmp_path: Path) -> None:
    config = _write(
        tmp_path,
        '[websocket]\ntls_cert_file = "c.pem"\ntls_key_file = "repo/key.pem"\n'
        '[claude]\nworkdir = "repo"\n',
    )
    with pytest.raises(ConfigError, match="TLS private key"):
        load_settings(config, environ={}, base=tmp_path)


def test_relative_paths_resolve_against_base(tmp_path: Path) -> None:
    base = tmp_path / "run"
    base.mkdir()
    config = _write(tmp_path, '[store]\npath = "state/x.db"\n[claude]\nworkdir = "../repo"\n')

    settings = load_settings(config, environ={}, base=base)

    assert settings.store.path == base.resolve() / "state" / "x.db"
    assert settings.claude.workdir == tmp_path.resolve() / "repo"
    assert settings.store.path.is_absolute()
    assert settings.claude.workdir.is_absolute()


def test_absolute_paths_are_kept(tmp_path: Path) -> None:
    config = _write(tmp_path, f'[store]\npath = "{tmp_path / "abs.db"}"\n')
    settings = load_settings(config, environ={}, base=tmp_path / "elsewhere")
    assert settings.store.path == tmp_path / "abs.db"


# --------------------------------------------------------------------------- environment


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    config = _write(tmp_path, '[websocket]\nport = 9001\n[claude]\ncommand = "from-file"\n')
    environ = {
        "CONCORDIA_WEBSOCKET_PORT": "9100",
        "CONCORDIA_PARTY_COLLECT_WINDOW_S": "0.5",
        "CONCORDIA_CLAUDE_ARGS": '["--model", "opus", "--verbose"]',
        "CONCORDIA_CLAUDE_ENV": '{"ANTHROPIC_BASE_URL": "http://127.0.0.1:1", "X": "y"}',
        "CONCORDIA_STORE_PATH": "env/state.db",
        "CONCORDIA_CLAUDE_WORKDIR": "repo",
        "CONCORDIA_CLAUDE_TURN_TIMEOUT_S": "5",
        "UNRELATED_VARIABLE": "ignored",
    }

    settings = load_settings(config, environ=environ, base=tmp_path)

    assert settings.websocket.port == 9100
    assert settings.party.collect_window_s == 0.5
    assert settings.claude.args == ("--model", "opus", "--verbose")
    assert settings.claude.env == {"ANTHROPIC_BASE_URL": "http://127.0.0.1:1", "X": "y"}
    assert settings.store.path == tmp_path.resolve() / "env" / "state.db"
    assert settings.claude.turn_timeout_s == 5.0
    assert settings.claude.command == "from-file"  # not overridden: the file's value stays


def test_environment_applies_without_a_file(tmp_path: Path) -> None:
    settings = load_settings(None, environ={"CONCORDIA_LOG_LEVEL": "DEBUG"}, base=tmp_path)
    assert settings.log.level == "DEBUG"


def test_concordia_config_names_the_file(tmp_path: Path) -> None:
    config = _write(tmp_path, "[websocket]\nport = 9200\n", name="named.toml")
    settings = load_settings(None, environ={"CONCORDIA_CONFIG": str(config)}, base=tmp_path)
    assert settings.websocket.port == 9200


def test_explicit_path_wins_over_concordia_config(tmp_path: Path) -> None:
    named = _write(tmp_path, "[websocket]\nport = 9200\n", name="named.toml")
    explicit = _write(tmp_path, "[websocket]\nport = 9300\n", name="explicit.toml")
    settings = load_settings(explicit, environ={"CONCORDIA_CONFIG": str(named)}, base=tmp_path)
    assert settings.websocket.port == 9300


def test_process_environment_is_read_when_environ_is_omitted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CONCORDIA_WEBSOCKET_PORT", "9400")
    settings = load_settings(None, base=tmp_path)
    assert settings.websocket.port == 9400


def test_concordia_config_naming_a_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as exc:
        load_settings(None, environ={"CONCORDIA_CONFIG": str(missing)}, base=tmp_path)
    assert str(missing) in str(exc.value)
    assert "no such config file" in str(exc.value)


# --------------------------------------------------------------------------- errors


def test_unknown_key_has_a_hint_and_the_file_name(tmp_path: Path) -> None:
    config = _write(tmp_path, "[party]\ncolect_window_s = 2.0\n")

    with pytest.raises(ConfigError) as exc:
        load_settings(config, environ={}, base=tmp_path)

    [problem] = exc.value.problems
    assert "party.colect_window_s" in problem
    assert "did you mean 'collect_window_s'" in problem
    assert str(config) in problem
    assert problem in str(exc.value)


def test_unknown_section_has_a_hint(tmp_path: Path) -> None:
    config = _write(tmp_path, "[websockets]\nport = 1\n")
    with pytest.raises(ConfigError) as exc:
        load_settings(config, environ={}, base=tmp_path)
    assert "[websockets] is not a section" in _problems(exc)
    assert "did you mean 'websocket'" in _problems(exc)


def test_section_that_is_not_a_table(tmp_path: Path) -> None:
    config = _write(tmp_path, 'store = "x.db"\n')
    with pytest.raises(ConfigError) as exc:
        load_settings(config, environ={}, base=tmp_path)
    assert "[store] must be a table" in _problems(exc)


def test_unknown_environment_variable_has_a_hint(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        load_settings(None, environ={"CONCORDIA_WEBSOCKET_PROT": "1"}, base=tmp_path)
    assert "CONCORDIA_WEBSOCKET_PROT names no setting" in _problems(exc)
    assert "did you mean 'port'" in _problems(exc)


def test_environment_variable_naming_no_section(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        load_settings(None, environ={"CONCORDIA_NOTHING": "1"}, base=tmp_path)
    assert "CONCORDIA_NOTHING names no setting" in _problems(exc)


def test_environment_json_that_does_not_parse(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        load_settings(None, environ={"CONCORDIA_CLAUDE_ARGS": '["--model", '}, base=tmp_path)
    assert "CONCORDIA_CLAUDE_ARGS: a list or table must be JSON" in _problems(exc)


def test_empty_environment_value_is_validated_as_a_value(tmp_path: Path) -> None:
    # `export CONCORDIA_CLAUDE_COMMAND=` is an empty string, not malformed JSON.
    with pytest.raises(ConfigError) as exc:
        load_settings(None, environ={"CONCORDIA_CLAUDE_COMMAND": ""}, base=tmp_path)
    [problem] = exc.value.problems
    assert problem.startswith("claude.command:")
    assert "from $CONCORDIA_CLAUDE_COMMAND" in problem


def test_out_of_range_value_names_the_key_and_the_file(tmp_path: Path) -> None:
    config = _write(tmp_path, "[websocket]\nport = 70000\n")

    with pytest.raises(ConfigError) as exc:
        load_settings(config, environ={}, base=tmp_path)

    [problem] = exc.value.problems
    assert problem.startswith("websocket.port:")
    assert "70000" in problem
    assert f"from {config}" in problem


def test_wrong_type_names_the_key_and_the_variable(tmp_path: Path) -> None:
    environ = {"CONCORDIA_PARTY_COLLECT_WINDOW_S": "soon"}

    with pytest.raises(ConfigError) as exc:
        load_settings(None, environ=environ, base=tmp_path)

    [problem] = exc.value.problems
    assert problem.startswith("party.collect_window_s:")
    assert "from $CONCORDIA_PARTY_COLLECT_WINDOW_S" in problem


def test_wrong_type_inside_a_table_names_the_nested_key(tmp_path: Path) -> None:
    config = _write(tmp_path, "[claude]\nenv = { RETRIES = 3 }\n")
    with pytest.raises(ConfigError) as exc:
        load_settings(config, environ={}, base=tmp_path)
    [problem] = exc.value.problems
    assert problem.startswith("claude.env.RETRIES:")
    assert f"from {config}" in problem


def test_several_validation_problems_are_reported_together(tmp_path: Path) -> None:
    config = _write(
        tmp_path, '[websocket]\nport = -1\n[party]\ncollect_window_s = 120\n[log]\nlevel = "LOUD"\n'
    )
    environ = {"CONCORDIA_CLAUDE_TURN_TIMEOUT_S": "0"}

    with pytest.raises(ConfigError) as exc:
        load_settings(config, environ=environ, base=tmp_path)

    keys = sorted(p.split(":", 1)[0] for p in exc.value.problems)
    assert keys == [
        "claude.turn_timeout_s",
        "log.level",
        "party.collect_window_s",
        "websocket.port",
    ]
    assert "from $CONCORDIA_CLAUDE_TURN_TIMEOUT_S" in _problems(exc)


def test_unknown_keys_and_bad_values_are_reported_together(tmp_path: Path) -> None:
    # STYLE.md: "validates the result ... in a single pass. All problems are reported together".
    config = _write(tmp_path, "[party]\ncolect_window_s = 2.0\n[websocket]\nport = 70000\n")
    environ = {"CONCORDIA_CLAUDE_TIMEOUT_S": "5"}

    with pytest.raises(ConfigError) as exc:
        load_settings(config, environ=environ, base=tmp_path)

    text = _problems(exc)
    assert "party.colect_window_s is not a setting" in text
    assert "CONCORDIA_CLAUDE_TIMEOUT_S names no setting" in text
    assert "websocket.port:" in text
    assert len(exc.value.problems) == 3


def test_invalid_toml(tmp_path: Path) -> None:
    config = _write(tmp_path, "[websocket\nport = \n")
    with pytest.raises(ConfigError) as exc:
        load_settings(config, environ={}, base=tmp_path)
    [problem] = exc.value.problems
    assert str(config) in problem
    assert "not valid TOML" in problem


def test_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "absent.toml"
    with pytest.raises(ConfigError) as exc:
        load_settings(missing, environ={}, base=tmp_path)
    [problem] = exc.value.problems
    assert str(missing) in problem
    assert "no such config file" in problem
    assert "config.example.toml" in problem


# --------------------------------------------------------------------------- example file


def test_example_file_loads(tmp_path: Path) -> None:
    settings = load_settings(
        EXAMPLE, environ={"HOME": str(tmp_path / "home")}, base=tmp_path / "repo"
    )
    assert settings.websocket.port == 8765


def test_example_file_lists_every_setting_and_nothing_else() -> None:
    raw = tomllib.loads(EXAMPLE.read_text(encoding="utf-8"))
    sections = _sections()

    assert set(raw) == set(sections), "sections differ between Settings and config.example.toml"
    for name, model in sections.items():
        assert isinstance(raw[name], dict)
        missing = set(model.model_fields) - set(raw[name])
        dead = set(raw[name]) - set(model.model_fields)
        assert not missing, f"[{name}] settings missing from config.example.toml: {missing}"
        assert not dead, f"[{name}] keys in config.example.toml that are no setting: {dead}"


def test_example_values_are_the_defaults(tmp_path: Path) -> None:
    raw = tomllib.loads(EXAMPLE.read_text(encoding="utf-8"))
    loaded = load_settings(EXAMPLE, environ={"HOME": str(tmp_path / "home")}, base=tmp_path / "r")

    for name, model in _sections().items():
        for key, field in model.model_fields.items():
            default = field.get_default(call_default_factory=True)
            if (name, key) == ("store", "path"):  # "" in TOML, which has no null
                assert StoreSettings.model_validate(raw[name]).path == default
            elif (name, key) in _PATH_FIELDS:
                assert Path(raw[name][key]) == default, f"{name}.{key}"
            else:
                assert getattr(getattr(loaded, name), key) == default, f"{name}.{key}"


def test_environment_override_of_a_section_that_is_not_a_table(tmp_path: Path) -> None:
    config = _write(tmp_path, 'store = "x.db"\n')
    with pytest.raises(ConfigError) as exc:
        load_settings(config, environ={"CONCORDIA_STORE_PATH": "y.db"}, base=tmp_path)
    assert "[store] must be a table" in _problems(exc)
