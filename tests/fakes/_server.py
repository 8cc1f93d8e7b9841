"""Starting a fake's aiohttp app on a free loopback port, shared by the fakes."""

from __future__ import annotations

from aiohttp import web

__all__ = ["serve_on_loopback"]


async def serve_on_loopback(app: web.Application, *, shutdown_timeout_s: float) -> web.AppRunner:
    """Serve ``app`` on 127.0.0.1 at a free port; ``runner.addresses[0]`` says which.

    ``handler_cancellation``: a client that hangs up cancels its handler at once (a slow
    stream stops, a hung request ends). A listener that fails to start leaks no runner.
    """
    runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=shutdown_timeout_s)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner
