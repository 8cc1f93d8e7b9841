"""The operator's listener: Prometheus metrics, `/healthz` and `/readyz`, on a port of its own.

Invariant: it is off unless ``metrics.enabled``; on a loopback address it answers anyone on
this machine; on any other address every request needs ``Authorization: Bearer <token>``
(the token from ``metrics.token_env``, compared in constant time), so metrics never leave
the machine unauthenticated. It serves nothing else: no page, no WebSocket.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from collections.abc import Awaitable, Callable

import aiohttp
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from adapters.web.http import SECURITY_HEADERS
from bot import ConcordiaError
from bot.config import MetricsSettings, is_loopback

__all__ = ["OpsServer", "ask_running"]

log = logging.getLogger(__name__)

Readiness = Callable[[], Awaitable[list[str]]]
"""What keeps the bot from being ready: one line a problem, none when ready."""


class OpsServer:
    """Serves ``registry`` at /metrics, liveness at /healthz and ``readiness`` at /readyz."""

    name = "metrics"

    def __init__(
        self,
        settings: MetricsSettings,
        registry: CollectorRegistry,
        readiness: Readiness,
        *,
        token: str,
    ) -> None:
        if not is_loopback(settings.host) and not token:
            raise ConcordiaError(
                f"metrics.listen {settings.listen!r} is not a loopback address, so it needs a "
                f"bearer token: export ${settings.token_env} (any long random string; "
                "Prometheus sends it as `Authorization: Bearer …`), or listen on 127.0.0.1"
            )
        self._settings = settings
        self._registry = registry
        self._readiness = readiness
        self._token = token if not is_loopback(settings.host) else ""
        self._runner: web.AppRunner | None = None
        self.port = settings.port

    async def start(self) -> None:
        app = web.Application(middlewares=[self._guard], client_max_size=1024)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._settings.host, self._settings.port)
        try:
            await site.start()
        except OSError as exc:
            raise ConcordiaError(
                f"metrics.listen {self._settings.listen!r} cannot be used: {exc.strerror}"
            ) from None
        self.port = int(self._runner.addresses[0][1])  # the one port 0 gave us
        log.info("metrics, /healthz and /readyz on %s:%d", self._settings.host, self.port)

    async def run(self) -> None:
        """The server runs on its own once started; this only waits (an `Adapter`'s part)."""
        if self._runner is None:
            raise RuntimeError("start() the metrics listener before run()")
        await asyncio.Event().wait()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @web.middleware
    async def _guard(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if self._token:
            given = request.headers.get("Authorization", "")
            expected = f"Bearer {self._token}"
            if not hmac.compare_digest(given.encode(), expected.encode()):
                return web.json_response({"error": "a bearer token is needed"}, status=401)
        response = await handler(request)
        response.headers.update(SECURITY_HEADERS)
        return response

    async def _metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(self._registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _readyz(self, request: web.Request) -> web.Response:
        problems = await self._readiness()
        status = 503 if problems else 200
        body = {"status": "not ready" if problems else "ready", "problems": problems}
        return web.Response(text=json.dumps(body), status=status, content_type="application/json")


async def ask_running(url: str, headers: dict[str, str]) -> tuple[int, object]:
    """GET ``url`` of a running bot: (HTTP status, its JSON body). Raises ConnectionError
    when nothing answers in time, ValueError for a body that is not JSON."""
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
            session.get(url, headers=headers) as reply,
        ):
            return reply.status, await reply.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise ConnectionError(str(exc) or type(exc).__name__) from None
