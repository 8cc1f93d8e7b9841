"""What every agent driver does when its process exits: stop there, start again at once (a
restart someone asked for), or count an unplanned death and start again after a backoff
that grows while the process keeps dying young.

Each driver's own supervisor task owns its process and calls `Lifeline.after_exit` when it
is gone; the policy lives here once.
"""

from __future__ import annotations

import asyncio
import logging

from bot.pace import Backoff, Jitter

__all__ = ["CALM_LIFE_S", "Lifeline"]

log = logging.getLogger(__name__)

CALM_LIFE_S = 60.0
"""A process that lived this long before dying starts the restart backoff afresh."""


class Lifeline:
    """One agent's restart policy. ``restarts`` counts unplanned exits."""

    def __init__(self, what: str, *, backoff_s: float, backoff_max_s: float):
        self._what = what
        self._backoff = Backoff(backoff_s, backoff_max_s, jitter=Jitter.EQUAL)
        self._is_planned = False
        self.is_stopping = False
        self.restarts = 0

    @property
    def is_exit_expected(self) -> bool:
        """Whether the process is ending because it was asked to (a stop, a restart)."""
        return self.is_stopping or self._is_planned

    def plan_restart(self) -> None:
        """The next exit is asked for: restart at once, without counting it."""
        self._is_planned = True

    async def after_exit(self, exit_status: int | None, lived_s: float, tail: str = "") -> bool:
        """The process exited after ``lived_s`` (its last output: ``tail``): whether to start
        it again, once the backoff has passed for an unplanned exit. False once the agent is
        stopping."""
        if self.is_stopping:
            return False
        if self._is_planned:
            self._is_planned = False
            log.info("%s restarted on request", self._what)
            return True
        self.restarts += 1
        if lived_s > CALM_LIFE_S:
            self._backoff.reset()
        delay_s = self._backoff.delay()
        log.warning(
            "%s exited unexpectedly (status %s); restarting in %.1f s",
            self._what,
            exit_status,
            delay_s,
            extra={"exit_status": exit_status, "tail": tail[-500:]},
        )
        await asyncio.sleep(delay_s)  # pacing: restart backoff
        return not self.is_stopping
