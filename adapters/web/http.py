"""The HTTP side of the built-in transport: headers, who is asking, from where, over what.

Pure functions and small values the server (`adapters.web.adapter`) composes; kept apart
so each rule of the browser path (CSP, Origin, the forwarded address, TLS) reads on its own.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Collection
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

from aiohttp import web

from bot import ConcordiaError
from bot.config import WebSocketSettings

__all__ = [
    "PAGE_DIR",
    "SECURITY_HEADERS",
    "WILDCARD_HOSTS",
    "add_security_headers",
    "client_address",
    "local_base",
    "origin_allowed",
    "tls_context",
]

PAGE_DIR: Final = Path(__file__).parent / "page"
"""The browser page: static files shipped as package data, no build step."""

SECURITY_HEADERS: Final = {
    # Only our own scripts and styles; the WebSocket back to where the page came from; no
    # image or request anywhere else (a Markdown image in Claude's output stays unloaded).
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
}


async def add_security_headers(request: web.Request, response: web.StreamResponse) -> None:
    """`on_response_prepare`: every answer carries the headers, errors and files included."""
    response.headers.update(SECURITY_HEADERS)
    response.headers["Server"] = "concordia"  # not the library and version to probe
    if response.content_type == "text/html":
        response.headers["Cache-Control"] = "no-store"
    elif request.path.startswith("/static/"):
        response.headers["Cache-Control"] = "no-cache"  # revalidated: an upgrade shows at once


def origin_allowed(request: web.Request, known_hosts: Collection[str]) -> bool:
    """A WebSocket handshake may come from our own page or from a program (no Origin).

    A page elsewhere that opens a socket to us sends its own Origin; it is refused, so a
    cross-site page cannot drive a participant's session. Our page's origin is the Host it
    was asked for, or one of ``known_hosts`` (the public URL, the tunnel's), compared as
    host[:port] because a tunnel serves https outside and plain http to us.
    """
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    try:
        parts = urlsplit(origin)
    except ValueError:
        return False
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return False  # "null" (a sandboxed frame, a file:// page) and the like
    netloc = parts.netloc.lower()
    allowed = {h.lower() for h in known_hosts}
    if request.host:
        allowed.add(request.host.lower())
    return netloc in allowed or _without_default_port(netloc, parts.scheme) in allowed


def _without_default_port(netloc: str, scheme: str) -> str:
    default = ":443" if scheme == "https" else ":80"
    return netloc.removesuffix(default)


def client_address(request: web.Request, forwarded_port: int | None) -> str:
    """Who is knocking, for the join throttle.

    A connection to ``forwarded_port`` (the loopback listener only the tunnel we started is
    told about) came through that tunnel: the client is the last `X-Forwarded-For` entry,
    the one the tunnel added. Anywhere else the header is the client's own word and is
    ignored, so nobody can pose as someone else's address.
    """
    peer = request.remote or "?"
    if forwarded_port is None or request.transport is None:
        return peer
    sockname = request.transport.get_extra_info("sockname")
    if not sockname or sockname[1] != forwarded_port:
        return peer
    forwarded = request.headers.getall("X-Forwarded-For", [])
    entries = [e.strip() for line in forwarded for e in line.split(",") if e.strip()]
    return f"via tunnel {entries[-1]}" if entries else peer


WILDCARD_HOSTS: Final = frozenset({"", "0.0.0.0", "::"})


def local_base(settings: WebSocketSettings, port: int) -> str:
    """The base of the links this listener hands out, before any tunnel.

    Never a wildcard address, which nobody can connect to: ``websocket.public_url`` when
    set, else this machine's name.
    """
    if settings.public_url:
        return settings.public_url
    host = socket.getfqdn() if settings.host in WILDCARD_HOSTS else settings.host
    shown = f"[{host}]" if ":" in host else host
    return f"{'https' if settings.is_tls else 'http'}://{shown}:{port}"


def tls_context(cert_file: Path, key_file: Path) -> ssl.SSLContext:
    """The server's TLS context (TLS 1.2 or newer); a clear error when the files are wrong."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert_file, key_file)
    except FileNotFoundError as exc:
        raise ConcordiaError(
            f"websocket.tls_cert_file / tls_key_file: {exc.filename or cert_file} does not exist"
        ) from None
    except (ssl.SSLError, OSError) as exc:
        raise ConcordiaError(
            f"websocket.tls_cert_file {cert_file} and tls_key_file {key_file} do not make a "
            f"certificate and its key (PEM files): {exc}"
        ) from None
    return context
