"""The state folder: where the database and the tokens file live, outside the agent's reach.

Invariant: by default the state folder is a per-user folder outside any working tree
(``$XDG_STATE_HOME/concordia/<workdir key>/``, else ``~/.local/state/concordia/...``), mode
0700, so neither ``git add -A`` in the host's repository nor a command Claude runs there finds
it. A state file inside ``claude.workdir`` is refused unless the host said so knowingly, and
the ``.concordia/`` folder older versions kept in the working directory is moved out at start.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import sqlite3
from collections.abc import Iterable, Mapping
from pathlib import Path

__all__ = [
    "ADDRESS_NAME",
    "DATABASE_NAME",
    "LEGACY_DIR_NAME",
    "TOKENS_NAME",
    "default_state_dir",
    "inside",
    "make_private_dir",
    "move_legacy_state",
    "write_private",
]

DATABASE_NAME = "concordia.db"
TOKENS_NAME = "tokens.json"
ADDRESS_NAME = "address"  # the running bot's link base (a tunnel's URL), without a token
LEGACY_DIR_NAME = ".concordia"
"""Where versions before the state folder kept everything: inside the working directory."""

_KEY_HASH_CHARS = 12
_UNSAFE_KEY_CHARS = re.compile(r"[^A-Za-z0-9._-]+")


def default_state_dir(workdir: Path, environ: Mapping[str, str]) -> Path:
    """The per-user state folder of the party that works in ``workdir``.

    The key is the folder's name (for people looking) and a hash of its real path (so two
    checkouts named ``app`` do not share a database). A relative ``$XDG_STATE_HOME`` is ignored,
    as the XDG spec says.
    """
    base = environ.get("XDG_STATE_HOME", "")
    root = Path(base) if base and Path(base).is_absolute() else _home(environ) / ".local" / "state"
    real = os.path.realpath(workdir)
    digest = hashlib.sha256(real.encode()).hexdigest()[:_KEY_HASH_CHARS]
    name = _UNSAFE_KEY_CHARS.sub("-", Path(real).name).strip("-") or "root"
    return root / "concordia" / f"{name}-{digest}"


def _home(environ: Mapping[str, str]) -> Path:
    home = environ.get("HOME", "")
    return Path(home) if home else Path.home()


def inside(path: Path, folder: Path) -> bool:
    """Whether ``path`` is ``folder`` or lies under it, symlinks resolved."""
    return Path(os.path.realpath(path)).is_relative_to(os.path.realpath(folder))


def make_private_dir(path: Path) -> None:
    """Create ``path`` (and its parents) and make it 0700, even if it existed looser."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)


def write_private(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` atomically, 0600 from the first byte."""
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_CREAT | os.O_TRUNC | os.O_WRONLY, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as file:
        file.write(text)
    os.chmod(tmp, 0o600)  # a stale .tmp left by a crash keeps its old mode through O_TRUNC
    os.replace(tmp, path)


def move_legacy_state(candidates: Iterable[Path], state_dir: Path) -> list[str]:
    """Move an old ``.concordia/`` (database and tokens) into ``state_dir``; say what was done.

    Nothing is lost: the database is copied with SQLite's backup API (which carries what a
    crashed bot left in the write-ahead log), the tokens file as is, both 0600, into a
    temporary folder that is renamed into place; only then is the old folder removed. A state
    folder that already holds a database is never overwritten: the old folder is left where
    it is and the returned line says so, so the host decides.
    """
    said: list[str] = []
    seen: set[str] = set()
    for legacy in candidates:
        real = os.path.realpath(legacy)
        if real in seen or not _holds_state(legacy):
            continue
        seen.add(real)
        if (state_dir / DATABASE_NAME).exists() or (state_dir / TOKENS_NAME).exists():
            said.append(
                f"{legacy} holds an old state folder, but {state_dir} already has one: "
                f"remove {legacy} (it holds clear-text tokens Claude can read) or move it "
                f"over {state_dir} by hand"
            )
            continue
        _copy_into_place(legacy, state_dir)
        shutil.rmtree(legacy)
        said.append(
            f"moved the state folder {legacy} to {state_dir}: inside the working directory "
            "Claude could read its tokens"
        )
    return said


def _holds_state(folder: Path) -> bool:
    return (folder / DATABASE_NAME).is_file() or (folder / TOKENS_NAME).is_file()


def _copy_into_place(legacy: Path, state_dir: Path) -> None:
    make_private_dir(state_dir.parent)
    staging = state_dir.with_name(state_dir.name + ".moving")
    if staging.exists():  # a move cut short earlier; the old folder is still whole
        shutil.rmtree(staging)
    make_private_dir(staging)
    if (legacy / DATABASE_NAME).is_file():
        target = staging / DATABASE_NAME
        fd = os.open(target, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o600)
        os.close(fd)
        source = sqlite3.connect(f"file:{legacy / DATABASE_NAME}?mode=ro", uri=True)
        try:
            copy = sqlite3.connect(target)
            try:
                source.backup(copy)
            finally:
                copy.close()
        finally:
            source.close()
    if (legacy / TOKENS_NAME).is_file():
        target = staging / TOKENS_NAME
        fd = os.open(target, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as file:
            file.write((legacy / TOKENS_NAME).read_bytes())
    if state_dir.exists():  # an empty folder made by an earlier start
        state_dir.rmdir()
    os.rename(staging, state_dir)
