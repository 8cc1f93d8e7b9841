"""Claude's credentials: which variables hold them, the API key `concordia setup` stores.

Invariant: a stored key lives only in ``claude.credentials_file``, created 0600 (and refused
inside the working tree by `bot.config`), and is handed to Claude only when no credential
variable is set.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path

from bot.config import ClaudeSettings

__all__ = [
    "API_KEY_VAR",
    "CREDENTIAL_VARS",
    "check_api_key",
    "has_credentials",
    "store_api_key",
    "stored_api_key",
]

API_KEY_VAR = "ANTHROPIC_API_KEY"
CREDENTIAL_VARS = (API_KEY_VAR, "ANTHROPIC_AUTH_TOKEN", "CLAUDE_CODE_OAUTH_TOKEN")
"""The variables Claude Code takes a credential from."""

_DEFAULT_API_BASE = "https://api.anthropic.com"
_KEY_CHECK_TIMEOUT_S = 15.0


def stored_api_key(claude: ClaudeSettings) -> str | None:
    """The key `concordia setup` stored, or None (no file, or not the file it writes)."""
    try:
        data = json.loads(claude.credentials_file.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    key = data.get("anthropic_api_key") if isinstance(data, dict) else None
    return str(key) if key else None


def store_api_key(path: Path, key: str) -> None:
    """Keep ``key`` in ``path``, created (or truncated) 0600 in a 0700 folder."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_CREAT | os.O_TRUNC | os.O_WRONLY, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as file:
        json.dump({"anthropic_api_key": key}, file)
    os.chmod(path, 0o600)


def has_credentials(env: Mapping[str, str]) -> bool:
    """Whether Claude, started with ``env``, has something to authenticate with."""
    if any(env.get(var) for var in CREDENTIAL_VARS):
        return True
    home = Path(env.get("HOME", str(Path.home())))
    return (home / ".claude" / ".credentials.json").exists()


def check_api_key(claude: ClaudeSettings, key: str) -> bool | None:
    """True if the API accepts the key, False if it rejects it, None if it cannot be reached.

    Blocking (urllib): `concordia setup` runs it before the event loop exists."""
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
