"""Counters and timings kept in memory for `status`; one Metrics per party, written by its tasks."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["Metrics", "Timing"]


@dataclass(slots=True)
class Timing:
    """Running count, total, last and maximum of one kind of duration, in seconds."""

    count: int = 0
    total_s: float = 0.0
    last_s: float = 0.0
    max_s: float = 0.0

    def add(self, seconds: float) -> None:
        self.count += 1
        self.total_s += seconds
        self.last_s = seconds
        self.max_s = max(self.max_s, seconds)

    @property
    def mean_s(self) -> float:
        return self.total_s / self.count if self.count else 0.0

    def describe(self) -> str:
        if not self.count:
            return "none yet"
        return (
            f"last {self.last_s:.2f} s, mean {self.mean_s:.2f} s, "
            f"max {self.max_s:.2f} s ({self.count})"
        )


@dataclass(slots=True)
class Metrics:
    prompts_accepted: int = 0
    prompts_rejected: int = 0
    prompts_duplicate: int = 0
    batches: int = 0
    batches_failed: int = 0
    batches_rerun: int = 0
    merge: Timing = field(default_factory=Timing)
    turn: Timing = field(default_factory=Timing)

    def lines(self) -> list[str]:
        return [
            f"prompts: {self.prompts_accepted} accepted, {self.prompts_rejected} rejected, "
            f"{self.prompts_duplicate} duplicate",
            f"batches: {self.batches} run, {self.batches_failed} failed, "
            f"{self.batches_rerun} re-run",
            f"merge time: {self.merge.describe()}",
            f"turn time: {self.turn.describe()}",
        ]
