"""The deploy files (Dockerfile, compose.yaml, contrib/) agree with the code they deploy.

Docker and systemd are not on every machine that runs the suite, so these read the files:
what they check is what drifts silently when the code changes under them.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from bot.config import RunSettings, load_settings

_REPO = Path(__file__).resolve().parents[1]


def _read(name: str) -> str:
    return (_REPO / name).read_text(encoding="utf-8")


def _seconds(text: str, pattern: str) -> float:
    found = re.search(pattern, text, re.MULTILINE)
    assert found, f"no {pattern!r}"
    return float(found.group(1))


def _top_packages() -> set[str]:
    pyproject = tomllib.loads(_read("pyproject.toml"))
    return {name.split(".")[0] for name in pyproject["tool"]["setuptools"]["packages"]}


def test_the_image_pins_the_claude_cli_the_makefile_pins() -> None:
    makefile = re.search(r"^CLAUDE_VERSION := (\S+)$", _read("Makefile"), re.MULTILINE)
    dockerfile = re.search(r"^ARG CLAUDE_VERSION=(\S+)$", _read("Dockerfile"), re.MULTILINE)
    assert makefile
    assert dockerfile
    assert dockerfile.group(1) == makefile.group(1)


def test_the_image_is_built_from_every_package_the_wheel_holds() -> None:
    copied = set(re.findall(r"^COPY (\S+) /src/\1$", _read("Dockerfile"), re.MULTILINE))
    assert copied == _top_packages()
    allowed = {
        line[1:].rstrip("/") for line in _read(".dockerignore").splitlines() if line[:1] == "!"
    }
    assert _top_packages() <= allowed
    assert "contrib/container.toml" in allowed


def test_the_container_settings_load_with_what_compose_sets() -> None:
    environ = {"CONCORDIA_METRICS_ENABLED": "true", "METRICS_BEARER_TOKEN": "a-long-secret"}
    settings = load_settings(_REPO / "contrib" / "container.toml", environ)
    assert settings.store_path == Path("/state/concordia.db")
    assert settings.claude.workdir == Path("/work")
    assert settings.claude.credentials_file.parent == Path("/state")
    assert settings.websocket.host == "0.0.0.0"
    assert settings.websocket.port == 8765, "the Dockerfile's HEALTHCHECK and EXPOSE use 8765"
    assert settings.metrics.port == 9464, "the Dockerfile's EXPOSE and compose.yaml use 9464"


def test_service_managers_wait_longer_than_the_graceful_stop() -> None:
    """Past these the manager kills the bot mid-stop, and the turn is not put away."""
    shutdown_s = RunSettings().shutdown_timeout_s
    assert _seconds(_read("contrib/concordia.service"), r"^TimeoutStopSec=(\d+)s$") > shutdown_s
    assert _seconds(_read("compose.yaml"), r"^\s+stop_grace_period: (\d+)s$") > shutdown_s
