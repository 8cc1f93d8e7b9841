"""Retention: the store's finished history pruned a little at a time while the bot runs.

Invariant: only what is over goes (finished prompts and batches, outbox rows already shown,
settled audit rows); what is open or recent stays (`Store.prune` says exactly what). One owner
task, `Retention.serve`, does it off the hot path: a pass at start, then one every
`interval_s`, each in small transactions.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from bot.config import StoreSettings
from bot.store import Pruned, Store

__all__ = ["COST_KEEP_DAYS", "Retention"]

log = logging.getLogger(__name__)

COST_KEEP_DAYS = 31.0
"""Cost rows are kept at least this long, whatever `store.keep_days`: the longest month, so the
cost report's "this month" is always whole."""

# A pass every tenth of the shortest keep period: a row outlives its period by at most a tenth.
_PASSES_PER_PERIOD = 10
_MIN_INTERVAL_S = 5.0  # a tiny keep_days (a soak test) does not make it a busy loop
_MAX_INTERVAL_S = 3600.0


class Retention:
    """Prunes ``store`` by ``settings.keep_days`` (finished history; cost rows after at least
    `COST_KEEP_DAYS`) and ``settings.keep_audit_days`` (the audit trail); 0 keeps that kind.

    ``now`` is the clock the cut-offs are taken from (tests move it)."""

    def __init__(
        self,
        store: Store,
        settings: StoreSettings,
        *,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ):
        self._store = store
        self._keep_days = settings.keep_days
        self._keep_audit_days = settings.keep_audit_days
        self._now = now

    @property
    def is_enabled(self) -> bool:
        """Whether anything is ever pruned; when not, `serve` need not run."""
        return self._keep_days > 0 or self._keep_audit_days > 0

    @property
    def interval_s(self) -> float:
        """Seconds between passes: a tenth of the shortest keep period, within [5 s, 1 h]."""
        periods = [d for d in (self._keep_days, self._keep_audit_days) if d > 0]
        if not periods:
            return _MAX_INTERVAL_S
        tenth = min(periods) * 86400 / _PASSES_PER_PERIOD
        return min(max(tenth, _MIN_INTERVAL_S), _MAX_INTERVAL_S)

    async def prune(self) -> Pruned:
        """One pass: delete what is older than the settings keep; logs the counts at INFO
        when anything went. Raises what the store raises; safe to cancel."""
        now = self._now()
        keep = self._keep_days
        audit = self._keep_audit_days
        started = time.monotonic()
        pruned = await self._store.prune(
            finished_before=now - timedelta(days=keep) if keep > 0 else None,
            costs_before=now - timedelta(days=max(keep, COST_KEEP_DAYS)) if keep > 0 else None,
            audit_before=now - timedelta(days=audit) if audit > 0 else None,
        )
        elapsed_s = time.monotonic() - started
        if pruned.total:
            log.info(
                "pruned the store: %d prompts (%d images), %d batches, %d outbox rows, "
                "%d turn costs (%d shares), %d approvals, %d shell runs, %d questions",
                pruned.prompts,
                pruned.images,
                pruned.batches,
                pruned.outbox,
                pruned.turn_costs,
                pruned.cost_shares,
                pruned.approvals,
                pruned.shell_runs,
                pruned.questions,
                extra={"elapsed_s": round(elapsed_s, 3)},
            )
        else:
            log.debug("nothing to prune", extra={"elapsed_s": round(elapsed_s, 3)})
        return pruned

    async def serve(self) -> None:
        """Prune at once, then every `interval_s`, until cancelled.

        A pass that fails (the disk is full, the file is locked past its timeout) is logged
        with its traceback and tried again at the next pass: housekeeping that cannot run now
        must not stop the bot, and the log says each time that it did not run."""
        while True:
            try:
                await self.prune()
            except Exception:
                log.exception("pruning the store failed; trying again in %.0f s", self.interval_s)
            await asyncio.sleep(self.interval_s)
