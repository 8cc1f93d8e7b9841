"""Invite tokens: minted with `secrets`, stored hashed in SQLite, shown only to the host.

The database keeps SHA-256 hashes only. The host still needs to read the tokens back
(`concordia invite`), so their clear text lives in one file next to the database,
created 0600. Rotating a token revokes the old hash in the same transaction, so the
old token stops working at once; participants who already joined stay.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bot.model import Role
from bot.state_dir import write_private
from bot.store import Store

__all__ = ["InviteBook", "Invites", "JoinAddress"]

log = logging.getLogger(__name__)

_TOKEN_BYTES = 32
# The tokens every party has, readable back by the host; others are minted on demand.
_STANDING = (Role.PROMPTER, Role.HOST)


@dataclass(frozen=True, slots=True)
class Invites:
    prompter: str
    host: str


class JoinAddress:
    """Where teammates join from: the base of the link the host hands out.

    The transport sets it once it listens; a tunnel moves it when its public URL comes (again
    after a restart). Whoever shows a link asks here at that moment. The token goes in the
    URL's fragment, which a browser never sends: it stays out of request lines and logs.
    """

    def __init__(self) -> None:
        self._base = ""
        self._watchers: list[Callable[[str], None]] = []

    @property
    def base(self) -> str:
        return self._base

    def link(self, token: str) -> str:
        """The link for ``token``; "" before the transport listens."""
        return f"{self._base}/#{token}" if self._base else ""

    def move(self, base: str) -> None:
        base = base.rstrip("/")
        if base == self._base:
            return
        self._base = base
        for watcher in list(self._watchers):
            watcher(base)

    def watch(self, watcher: Callable[[str], None]) -> None:
        """Call ``watcher`` with each new base from now on."""
        self._watchers.append(watcher)


class InviteBook:
    """The party's current tokens: hashes in the store, clear text in a 0600 file."""

    def __init__(self, store: Store, party: str, path: Path, *, address: JoinAddress | None = None):
        self._store = store
        self._party = party
        self._path = path
        self.address = address  # where this party is joined by link; None: chat only

    async def ensure(self) -> Invites:
        """Return the current tokens, minting any that is missing (first run)."""
        known = self._read()
        for role in _STANDING:
            if role.value not in known or not await self._store.has_invite(self._party, role):
                known[role.value] = await self._mint(role, known)
        return Invites(prompter=known[Role.PROMPTER.value], host=known[Role.HOST.value])

    async def rotate(self, role: Role) -> str:
        """Replace the token of ``role``; the old one is refused from now on."""
        return await self._mint(role, self._read())

    async def mint_extra(
        self, role: Role, *, ttl_s: float | None = None, single_use: bool = False
    ) -> str:
        """A token of its own for ``role`` (approvers, or a guest), shown once and kept
        only hashed: it can expire after ``ttl_s`` or be used for one join."""
        token = secrets.token_urlsafe(_TOKEN_BYTES)
        expires = datetime.now(UTC) + timedelta(seconds=ttl_s) if ttl_s else None
        await self._store.add_invite(
            self._party, role, token, expires_at=expires, uses=1 if single_use else None
        )
        log.info("minted an extra %s invite", role.value, extra={"party": self._party})
        return token

    async def revoke(self, token: str) -> bool:
        """End ``token``; a standing prompter or host token is replaced by a new one."""
        known = self._read()
        for role in _STANDING:
            if known.get(role.value) == token:
                await self.rotate(role)
                return True
        return await self._store.revoke_invite(self._party, token)

    async def _mint(self, role: Role, known: dict[str, str]) -> str:
        token = secrets.token_urlsafe(_TOKEN_BYTES)
        known[role.value] = token
        # The file first: a crash between the two leaves a token the host can read but
        # that does not work yet, and the next `ensure` mints again. The other order
        # could leave a working token nobody can read.
        self._write(known)
        await self._store.replace_invite(self._party, role, token)
        log.info("minted a new %s invite", role.value, extra={"party": self._party})
        return token

    def _read(self) -> dict[str, str]:
        try:
            data = json.loads(self._path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        party = data.get(self._party, {}) if isinstance(data, dict) else {}
        return {str(k): str(v) for k, v in party.items()} if isinstance(party, dict) else {}

    def _write(self, tokens: dict[str, str]) -> None:
        try:
            data = json.loads(self._path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            data = {}
        data[self._party] = tokens
        self._path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_private(self._path, json.dumps(data))
