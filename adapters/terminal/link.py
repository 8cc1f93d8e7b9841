"""Invite links and reaching the host they name: parsing every shape a host hands out, the
TLS context that verifies it, and one line saying why a connection failed.

A link is ``https://HOST[:PORT][/PATH]#TOKEN`` (or http, ws, wss) or
``concordia[s]://HOST:PORT/TOKEN``; the token never appears in what is shown or connected to.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from websockets.exceptions import InvalidMessage, InvalidStatus, WebSocketException

__all__ = ["InviteUrl", "connect_failure", "parse_invite_url", "tls_context_for"]


@dataclass(frozen=True, slots=True)
class _LinkKind:
    """What an invite link's scheme says about the connection and where the token is."""

    is_tls: bool
    default_port: int | None  # None: the link must name its port
    is_token_in_path: bool  # concordia[s]://HOST:PORT/TOKEN; else the token is the #fragment


_LINK_KINDS: dict[str, _LinkKind] = {
    "https": _LinkKind(is_tls=True, default_port=443, is_token_in_path=False),
    "http": _LinkKind(is_tls=False, default_port=80, is_token_in_path=False),
    "wss": _LinkKind(is_tls=True, default_port=443, is_token_in_path=False),
    "ws": _LinkKind(is_tls=False, default_port=80, is_token_in_path=False),
    "concordias": _LinkKind(is_tls=True, default_port=None, is_token_in_path=True),
    "concordia": _LinkKind(is_tls=False, default_port=None, is_token_in_path=True),
}
_LINK_HINT = (
    "an invite link looks like https://HOST[:PORT][/PATH]#TOKEN (or http://, wss://, ws://), "
    "or concordia://HOST:PORT/TOKEN (concordias:// with TLS)"
)


@dataclass(frozen=True, slots=True)
class InviteUrl:
    """A parsed invite link; ``host`` has no IPv6 brackets, ``path`` starts with ``/``.

    ``str()`` is the connect URL, never the token: it is safe to show and log.
    """

    host: str
    port: int
    token: str = field(repr=False)
    is_tls: bool = False
    path: str = "/"

    @property
    def ws_url(self) -> str:
        """Where to connect. The token is deliberately absent: it travels in the join frame."""
        return f"{'wss' if self.is_tls else 'ws'}://{self._netloc}{self.path}"

    @property
    def _netloc(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        if self.port == (443 if self.is_tls else 80):
            return host  # the default port for the scheme goes unsaid
        return f"{host}:{self.port}"

    def __str__(self) -> str:
        return self.ws_url


def parse_invite_url(url: str) -> InviteUrl:
    """Parse an invite link as printed by `concordia run`, or as a browser shows it.

    ``https://HOST[:PORT][/PATH]#TOKEN`` connects to ``wss://HOST[:PORT][/PATH]`` and
    ``http://…#TOKEN`` to ``ws://…``; ``wss://…#TOKEN`` and ``ws://…#TOKEN`` are taken as
    given; ``concordia://HOST:PORT/TOKEN`` connects to ``ws://HOST:PORT/`` and
    ``concordias://`` to ``wss://``. Default ports: 443 with TLS, 80 without.

    Raises `ValueError` naming the part that is wrong. The message never repeats the
    token, so it is safe to show or log.
    """
    text = url.strip()
    if any(ch.isspace() for ch in text):
        # urlsplit would silently drop a tab or line break inside the token.
        raise ValueError(f"invite link must not contain spaces or line breaks; {_LINK_HINT}")
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        raise ValueError(
            f"invite link is malformed ({exc}); {_LINK_HINT} (IPv6 hosts go in brackets)"
        ) from None
    if not parts.scheme or "://" not in text:
        raise ValueError(f"invite link has no scheme; {_LINK_HINT}")
    kind = _LINK_KINDS.get(parts.scheme.lower())
    if kind is None:
        raise ValueError(f"invite link scheme {parts.scheme}:// is not one of ours; {_LINK_HINT}")
    if parts.username is not None or parts.password is not None:
        raise ValueError(f"invite link must not carry a user name or password; {_LINK_HINT}")
    host = parts.hostname
    if not host:
        raise ValueError(f"invite link has no host; {_LINK_HINT}")
    if port == 0:
        raise ValueError(f"invite link port must be 1-65535, not 0; {_LINK_HINT}")
    if port is None:
        if kind.default_port is None:
            raise ValueError(f"invite link has no port after the host; {_LINK_HINT}")
        port = kind.default_port
    if kind.is_token_in_path:
        if parts.query or parts.fragment or "?" in text or "#" in text:
            raise ValueError(f"invite link must end with the token (no ? or # part); {_LINK_HINT}")
        token = parts.path.removeprefix("/")
        if not token:
            raise ValueError(f"invite link has no token after HOST:PORT/; {_LINK_HINT}")
        if "/" in token:
            raise ValueError(f"invite link token must be one path segment; {_LINK_HINT}")
        path = "/"
    else:
        if parts.query or "?" in text.partition("#")[0]:
            raise ValueError(f"invite link must not have a ?… part; {_LINK_HINT}")
        token = parts.fragment
        if not token:
            raise ValueError(f"invite link has no token: it ends with #TOKEN; {_LINK_HINT}")
        path = parts.path or "/"
    return InviteUrl(host=host, port=port, token=token, is_tls=kind.is_tls, path=path)


def tls_context_for(invite: InviteUrl, cafile: Path | None) -> ssl.SSLContext | None:
    """How to verify the host: None for a link without TLS.

    Raises `ValueError` saying what is wrong with ``cafile``.
    """
    if not invite.is_tls:
        if cafile is not None:
            raise ValueError(
                f"--cafile is for a link with TLS (https://, wss:// or concordias://); "
                f"this one connects to {invite} without TLS"
            )
        return None
    if cafile is None:
        return ssl.create_default_context()  # the system's CAs
    try:
        return ssl.create_default_context(cafile=cafile)
    except ssl.SSLError as exc:  # before OSError, its base: the file is there but not PEM
        raise ValueError(
            f"--cafile {cafile} is not a PEM file of CA certificates ({exc.reason or exc})"
        ) from None
    except OSError as exc:
        raise ValueError(f"cannot read --cafile {cafile}: {exc.strerror or exc}") from None


_NAME_MISMATCH_CODES = frozenset({62, 64})  # X509_V_ERR_HOSTNAME_MISMATCH, _IP_ADDRESS_MISMATCH


def connect_failure(
    exc: OSError | WebSocketException, invite: InviteUrl, cafile: Path | None
) -> str:
    """Why connecting failed, in one line that says what to try; never the token."""
    refusal = _certificate_refusal(exc)
    if refusal is not None:
        reason = (refusal.verify_message or "").rstrip(".")
        said = f"certificate verify failed: {reason}" if reason else str(refusal)
        if refusal.verify_code in _NAME_MISMATCH_CODES:
            advice = "the link must name a host the certificate was issued for"
        elif cafile is None:
            advice = "if the host uses its own CA, pass --cafile CA.pem"
        else:
            advice = f"check that {cafile} is the CA that issued the host's certificate"
        return f"the host's certificate was refused ({said}); {advice}"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (is the host running?)"
    if invite.is_tls and isinstance(exc, ssl.SSLError | ConnectionResetError):
        # A plain HTTP server answers the TLS hello with text (wrong version number)
        # or just drops the connection (reset): both mean it does not speak TLS here.
        said = "connection reset"
        if isinstance(exc, ssl.SSLError):  # reason: WRONG_VERSION_NUMBER → wrong version number
            said = (exc.reason or "").replace("_", " ").lower() or str(exc)
        return (
            f"the TLS handshake failed ({said}); is the host serving TLS? "
            "without TLS its link starts with http://"
        )
    said = str(exc) or type(exc).__name__
    if not invite.is_tls and isinstance(exc, InvalidMessage | InvalidStatus | ConnectionResetError):
        # A TLS server takes our plain HTTP request for a broken hello and hangs up.
        return f"{said} (if the host serves TLS, its link starts with https://)"
    return said


def _certificate_refusal(exc: BaseException) -> ssl.SSLCertVerificationError | None:
    """The certificate error behind ``exc``, if any.

    websockets 17 lets it out of `connect` as is, but a library may wrap it (``raise … from``).
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, ssl.SSLCertVerificationError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None
