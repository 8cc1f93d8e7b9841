"""Invite tokens: minted with `secrets`, stored hashed in SQLite, shown only to the host.

The database keeps SHA-256 hashes only. The host still needs to read the tokens back
(`concordia invite`), so their clear text lives in one file next to the database,
created 0600. Rotating a token revokes the old hash in the same transaction, so the
old token stops working at once; participants who already joined stay.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bot.model import Role
from bot.store import Store

__all__ = ["InviteBook", "Invites", "invite_url"]

log = logging.getLogger(__name__)

_TOKEN_BYTES = 32
# The tokens every party has, readable back by the host; others are minted on demand.
_STANDING = (Role.PROMPTER, Role.HOST)


@dataclass(frozen=True, slots=True)
class Invites:
    prompter: str
    host: str


def invite_url(host: str, port: int, token: str) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"concordia://{shown}:{port}/{token}"


class InviteBook:
    """The party's current tokens: hashes in the store, clear text in a 0600 file."""

    def __init__(self, store: Store, party: str, path: Path):
        self._store = store
        self._party = party
        self._path = path

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
        tmp = self._path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_CREAT | os.O_TRUNC | os.O_WRONLY, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            json.dump(data, file)
        os.chmod(tmp, 0o600)
        os.replace(tmp, self._path)
