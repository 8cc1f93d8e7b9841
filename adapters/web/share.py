"""Sharing: a tunnel that makes the bot's local port reachable from the internet, and says
at which public URL.

Invariant: a tunnel never takes the bot down. A problem it cannot fix is said once, as one
line a host can act on, and the tunnel then waits to be cancelled while the bot keeps serving
locally; being cancelled closes the tunnel (or stops its command's whole process group).
Nothing a tunnel says contains the ngrok authtoken.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import shlex
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, NoReturn, Protocol, cast

from bot.pace import Backoff

if TYPE_CHECKING:
    import ngrok

__all__ = ["CommandTunnel", "NgrokTunnel", "Tunnel"]

log = logging.getLogger(__name__)

# A share command's output lines longer than this are dropped (logged as such), not buffered.
_MAX_LINE_BYTES = 16 * 1024
# What a URL printed at the end of a sentence or inside a box carries after it.
_URL_TRAILING = ".,;:)]}>|'\""
# A child that lived this long before exiting was healthy: the next failure starts a new series.
_HEALTHY_AFTER_S = 60.0
# How long closing an ngrok listener may take (an RPC to ngrok's cloud) before we let it go.
_NGROK_CLOSE_TIMEOUT_S = 5.0
# An SDK message is cut to this many characters in a complaint.
_MAX_SDK_MESSAGE_CHARS = 300


class Tunnel(Protocol):
    """A public address for a local port, kept up while `run` runs."""

    @property
    def describe(self) -> str:
        """What the tunnel is, for a host to read: "ngrok", "the share command `bore …`"."""
        ...

    async def run(
        self, port: int, announce: Callable[[str], None], complain: Callable[[str], None]
    ) -> None:
        """Forward ``port`` (on 127.0.0.1) until cancelled.

        Calls ``announce(public_url)`` each time a public URL is (re)established, and
        ``complain(line)`` with one line a host can act on when something goes wrong. Never
        returns on its own: after a problem it cannot fix it says so once and then waits to
        be cancelled (the bot keeps serving locally). Cancelled, it closes the tunnel / stops
        its child before returning.
        """
        ...


async def _park() -> NoReturn:
    """Wait to be cancelled: a tunnel that cannot work stays quiet rather than ending."""
    never = asyncio.Event()
    while True:
        await never.wait()


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    """Send ``sig`` to the process group; a group that is already gone is fine."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


class CommandTunnel:
    """A tunnel run by a command (cloudflared, bore, ssh to localhost.run) that prints its
    public URL.

    ``command`` is split like a shell line (`shlex.split`), and ``{port}`` in any argument
    becomes the port (plain replacement, so other braces are harmless). The first match of
    ``url_pattern`` in the child's output (its group ``url`` if it has one, else the whole
    match) is announced, once per child. A child that exits, for any reason, is restarted
    after a `Backoff` delay (1 s doubling to 30 s unless one is given; reset by a child that
    announced a URL or lived a minute). A program that is not there is said once, not retried.
    A child that prints no URL within ``url_timeout_s`` is said once and left running.
    Stopped, the child's group gets SIGTERM, then SIGKILL after ``stop_grace_s``.

    Raises ValueError at construction for an empty or unparsable command or a bad pattern.
    Only the task running `run` starts, reads and stops the child (one at a time).
    """

    def __init__(
        self,
        command: str,
        url_pattern: str,
        env: Mapping[str, str],
        *,
        backoff: Backoff | None = None,
        url_timeout_s: float = 30.0,
        stop_grace_s: float = 5.0,
    ) -> None:
        try:
            argv = shlex.split(command)
        except ValueError as exc:
            raise ValueError(f"share.command cannot be split like a shell line: {exc}") from None
        if not argv:
            raise ValueError("share.command is empty: give the command that opens the tunnel")
        try:
            self._url_pattern = re.compile(url_pattern)
        except re.error as exc:
            raise ValueError(f"share.url_pattern is not a regular expression: {exc}") from None
        if url_timeout_s <= 0 or stop_grace_s <= 0:
            raise ValueError(
                f"url_timeout_s and stop_grace_s must be > 0, got {url_timeout_s}, {stop_grace_s}"
            )
        self._argv = tuple(argv)
        self._env = dict(env)
        self._backoff = backoff if backoff is not None else Backoff(1.0, 30.0)
        self._url_timeout_s = url_timeout_s
        self._stop_grace_s = stop_grace_s
        self._proc: asyncio.subprocess.Process | None = None
        self._is_running = False

    @property
    def describe(self) -> str:
        # The program only: the arguments may carry a provider's token.
        more = " …" if len(self._argv) > 1 else ""
        return f"the share command `{self._argv[0]}{more}`"

    @property
    def pid(self) -> int | None:
        """The running child's pid (also its process group's id); None between children."""
        return self._proc.pid if self._proc is not None else None

    async def run(
        self, port: int, announce: Callable[[str], None], complain: Callable[[str], None]
    ) -> None:
        """See `Tunnel.run`. Raises RuntimeError if this tunnel is already running."""
        if self._is_running:
            raise RuntimeError("this CommandTunnel is already running: one task owns its child")
        self._is_running = True
        try:
            await self._supervise(port, announce, complain)
        finally:
            self._is_running = False

    async def _supervise(
        self, port: int, announce: Callable[[str], None], complain: Callable[[str], None]
    ) -> NoReturn:
        argv = [arg.replace("{port}", str(port)) for arg in self._argv]
        program = argv[0]
        while True:
            try:
                proc = await asyncio.create_subprocess_exec(
                    *argv,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    env=self._env,
                    start_new_session=True,  # its own process group, stopped as one
                    limit=_MAX_LINE_BYTES,
                )
            except FileNotFoundError:
                complain(
                    f"the share command's program `{program}` was not found: install it or "
                    "fix share.command; serving locally only"
                )
                await _park()
            except PermissionError:
                complain(
                    f"the share command's program `{program}` cannot be run (permission "
                    "denied): fix share.command; serving locally only"
                )
                await _park()
            self._proc = proc
            started_s = time.monotonic()
            log.info("share command started (pid %d)", proc.pid, extra={"pid": proc.pid})
            try:
                has_announced = await self._watch(proc, announce, complain)
            finally:
                try:
                    await self._stop(proc)
                finally:
                    self._proc = None
            lived_s = time.monotonic() - started_s
            if has_announced or lived_s >= _HEALTHY_AFTER_S:
                self._backoff.reset()
            delay_s = self._backoff.delay()
            log.warning(
                "share command exited with code %s after %.1f s; restarting in %g s",
                proc.returncode,
                lived_s,
                delay_s,
                extra={"exit_code": proc.returncode, "elapsed_s": round(lived_s, 3)},
            )
            complain(
                f"the share command exited (code {proc.returncode}); restarting in {delay_s:g} s"
            )
            await asyncio.sleep(delay_s)  # deliberate pacing: the backoff

    async def _watch(
        self,
        proc: asyncio.subprocess.Process,
        announce: Callable[[str], None],
        complain: Callable[[str], None],
    ) -> bool:
        """Read the child's output until it ends and the child exits; True if it announced."""
        assert proc.stdout is not None  # stdout=PIPE
        has_announced = False
        has_complained = False
        deadline = asyncio.get_running_loop().time() + self._url_timeout_s
        while True:
            try:
                async with asyncio.timeout_at(
                    None if has_announced or has_complained else deadline
                ):
                    raw = await proc.stdout.readline()
            except TimeoutError:
                # readline keeps what it had buffered, so nothing is lost by timing it out.
                has_complained = True
                complain(
                    "the share command printed no URL matching share.url_pattern within "
                    f"{self._url_timeout_s:g} s; check the pattern against its output (logged "
                    "at DEBUG); it keeps running"
                )
                continue
            except ValueError:
                log.debug("share command printed a line over %d bytes; dropped", _MAX_LINE_BYTES)
                continue
            if not raw:
                break
            line = raw.decode(errors="replace").rstrip("\r\n")
            log.debug("share command: %s", line)
            if has_announced:
                continue
            url = self._find_url(line)
            if url:
                has_announced = True
                announce(url)
        await proc.wait()
        return has_announced

    def _find_url(self, line: str) -> str | None:
        match = self._url_pattern.search(line)
        if match is None:
            return None
        url = match.group("url") if "url" in self._url_pattern.groupindex else match.group(0)
        return url.rstrip(_URL_TRAILING) or None

    async def _stop(self, proc: asyncio.subprocess.Process) -> None:
        """Stop the child's whole group (SIGTERM, then SIGKILL after the grace) and reap it.

        Also sweeps what the child left behind in its group after exiting by itself. Safe to
        call when the child has already exited.
        """
        try:
            if proc.returncode is None:
                _signal_group(proc.pid, signal.SIGTERM)
                try:
                    async with asyncio.timeout(self._stop_grace_s):
                        await proc.wait()
                except TimeoutError:
                    log.warning(
                        "share command ignored SIGTERM for %g s; killing it", self._stop_grace_s
                    )
        finally:
            # The group id outlives the reaped leader while any member lives, and is not
            # handed to a new process meanwhile, so this cannot hit a stranger.
            _signal_group(proc.pid, signal.SIGKILL)
            await proc.wait()


class NgrokTunnel:
    """A tunnel through ngrok's cloud with its Python SDK (the ``concordia[share]`` extra).

    Without the SDK or an authtoken it says how to get them, once, and waits; an SDK error
    (offline, refused token, taken domain) is said once, with the SDK's message and the token
    cut out, and it waits. The SDK keeps its session up and reconnects by itself, so the URL
    is announced once. Cancelled, it closes the listener.
    """

    def __init__(self, authtoken: str | None, *, domain: str = "") -> None:
        self._authtoken = authtoken or None
        self._domain = domain

    @property
    def describe(self) -> str:
        return "ngrok"

    async def run(
        self, port: int, announce: Callable[[str], None], complain: Callable[[str], None]
    ) -> None:
        """See `Tunnel.run`."""
        try:
            import ngrok
        except ImportError:
            complain("sharing with ngrok needs the ngrok package: pip install 'concordia[share]'")
            await _park()
        token = self._authtoken
        if token is None:
            complain(
                "sharing with ngrok needs NGROK_AUTHTOKEN: copy yours from the ngrok dashboard "
                "(Getting Started → Your Authtoken), export it and restart; serving locally only"
            )
            await _park()
        address = f"127.0.0.1:{port}"
        try:
            # Inside a running loop, forward() returns an asyncio Task (its stub says Listener).
            if self._domain:
                pending = ngrok.forward(address, authtoken=token, domain=self._domain)
            else:
                pending = ngrok.forward(address, authtoken=token)
            listener = await cast("Awaitable[ngrok.Listener]", pending)
        except ValueError as exc:  # the SDK raises ValueError for all of its failures
            message = _sdk_message(exc, token)
            complain(
                f"ngrok could not open the tunnel ({message}): check NGROK_AUTHTOKEN"
                f"{' and share.ngrok_domain' if self._domain else ''} and the network; "
                "serving locally only"
            )
            await _park()
        try:
            url = listener.url()
            log.info("ngrok tunnel open at %s", url, extra={"url": url})
            announce(url)
            await _park()
        finally:
            await _close_listener(listener)


async def _close_listener(listener: ngrok.Listener) -> None:
    """Close ``listener``, giving up after a while (closing is a call to ngrok's cloud)."""
    try:
        async with asyncio.timeout(_NGROK_CLOSE_TIMEOUT_S):
            await listener.close()
    except (TimeoutError, ValueError) as exc:
        log.warning("ngrok listener did not close cleanly: %s", type(exc).__name__)


def _sdk_message(exc: BaseException, secret: str) -> str:
    """The SDK's message on one line, short, with ``secret`` cut out: it is the cloud's
    error text, and ngrok's refusal of a malformed token can quote the token back."""
    text = ": ".join(str(arg) for arg in exc.args) or type(exc).__name__
    text = " ".join(text.split())
    if secret:
        text = text.replace(secret, "[authtoken]")
    if len(text) > _MAX_SDK_MESSAGE_CHARS:
        text = text[: _MAX_SDK_MESSAGE_CHARS - 1] + "…"
    return text
