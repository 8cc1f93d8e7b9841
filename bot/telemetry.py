"""Prometheus metrics: one registry per app, so a test (or a second app) reads its own.

Invariant: names follow the Prometheus conventions (the ``concordia_`` prefix, base units,
counters ending ``_total``) and labels never hold a user id, a name a person chose, a token
or a prompt: only party names (from the host's config), platforms, and closed sets of
outcomes and reasons. What is counted as it happens is incremented where it happens (the
party, the runner, the relays' sinks); what is a state (queue depth, agents up, connected
clients) is read at scrape time from the parts that own it.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Protocol, TypeVar

from prometheus_client import CollectorRegistry, Counter, Histogram, Info
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from bot.ports import AdapterError, MessageSink

__all__ = ["CountedSink", "Observed", "Telemetry", "version"]

CallCount = Callable[[str, AdapterError | None], None]
"""Counts one platform call: its kind (post, edit) and the error it failed with, or None."""

_T = TypeVar("_T")
_TURN_BUCKETS_S = (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800)
_QUICK_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_WAIT_BUCKETS_S = (1, 5, 10, 30, 60, 120, 300, 600, 1800)


def version() -> str:
    try:
        return importlib.metadata.version("concordia")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


class Observed(Protocol):
    """What the scrape reads from a running app: states, not events."""

    def queue_depths(self) -> Mapping[str, int]: ...

    def agents(self) -> Mapping[str, tuple[bool, int]]:
        """Per party: (its agent is up, its unplanned restarts so far)."""
        ...

    def connected_clients(self) -> int: ...

    def merge_fallbacks(self) -> Mapping[str, int]:
        """How many merges fell back to the local merger, by reason, since the start."""
        ...


class _States(Collector):
    def __init__(self, observed: Callable[[], Observed | None]) -> None:
        self._observed = observed

    def collect(self) -> Iterator[Metric]:
        observed = self._observed()
        if observed is None:
            return
        depth = GaugeMetricFamily(
            "concordia_queue_depth", "Prompts waiting for a batch", labels=["party"]
        )
        for party, count in observed.queue_depths().items():
            depth.add_metric([party], count)
        up = GaugeMetricFamily(
            "concordia_agent_up",
            "1 while the party's agent process runs and is ready",
            labels=["party"],
        )
        restarts = CounterMetricFamily(
            "concordia_agent_restarts",
            "Unplanned restarts of the party's agent",
            labels=["party"],
        )
        for party, (is_up, count) in observed.agents().items():
            up.add_metric([party], 1.0 if is_up else 0.0)
            restarts.add_metric([party], count)
        clients = GaugeMetricFamily(
            "concordia_connected_clients", "WebSocket clients (pages, terminals) connected"
        )
        clients.add_metric([], observed.connected_clients())
        fallbacks = CounterMetricFamily(
            "concordia_merge_fallbacks",
            "Merges the local merger did because Gemini could not, by reason",
            labels=["reason"],
        )
        for reason, count in observed.merge_fallbacks().items():
            fallbacks.add_metric([reason], count)
        yield from (depth, up, restarts, clients, fallbacks)


class Telemetry:
    """The app's metrics. ``observe`` is set once the app runs, for what is read at scrape."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.prompts_received = Counter(
            "concordia_prompts_received", "Prompts handed in", ["party", "platform"], registry=r
        )
        self.prompts_rejected = Counter(
            "concordia_prompts_rejected",
            "Prompts refused, by reason",
            ["party", "reason"],
            registry=r,
        )
        self.merges = Counter(
            "concordia_merges", "Batches merged, by merger", ["party", "merger"], registry=r
        )
        self.merge_seconds = Histogram(
            "concordia_merge_duration_seconds",
            "Time to merge a batch",
            ["party"],
            buckets=_QUICK_BUCKETS_S,
            registry=r,
        )
        self.turn_seconds = Histogram(
            "concordia_turn_duration_seconds",
            "Time from sending a batch to its end",
            ["party"],
            buckets=_TURN_BUCKETS_S,
            registry=r,
        )
        self.batches = Counter(
            "concordia_batches", "Batches ended, by outcome", ["party", "outcome"], registry=r
        )
        self.approvals = Counter(
            "concordia_approvals",
            "Tool-use requests settled, by outcome",
            ["party", "outcome"],
            registry=r,
        )
        self.approval_wait_seconds = Histogram(
            "concordia_approval_wait_seconds",
            "Time a tool-use request waited",
            ["party"],
            buckets=_WAIT_BUCKETS_S,
            registry=r,
        )
        self.chat_calls = Counter(
            "concordia_chat_calls",
            "Messages posted or edited on a chat platform",
            ["platform", "kind"],
            registry=r,
        )
        self.platform_errors = Counter(
            "concordia_platform_errors",
            "Failed chat platform calls",
            ["platform", "kind"],
            registry=r,
        )
        self.rate_limited = Counter(
            "concordia_rate_limited", "429s a chat platform answered", ["platform"], registry=r
        )
        self.shell_runs = Counter(
            "concordia_shell_runs",
            "Shell commands run, by outcome",
            ["party", "outcome"],
            registry=r,
        )
        self.cost_usd = Counter(
            "concordia_cost_usd",
            "What the agent's turns cost, in US dollars",
            ["party"],
            registry=r,
        )
        Info("concordia_build", "The running Concordia", registry=r).info({"version": version()})
        self._observed: Observed | None = None
        r.register(_States(lambda: self._observed))

    def observe(self, observed: Observed) -> None:
        self._observed = observed

    def chat_call(self, platform: str) -> CallCount:
        """A counter of one platform's calls: (kind, the error or None)."""

        def count(kind: str, error: AdapterError | None) -> None:
            if error is None:
                self.chat_calls.labels(platform, kind).inc()
                return
            self.platform_errors.labels(platform, kind).inc()
            if error.retry_after is not None:
                self.rate_limited.labels(platform).inc()

        return count


class CountedSink:
    """A chat sink whose posts and edits (its approvals and questions too) are counted.

    Every other attribute is the wrapped sink's, so it has the same controls
    (`bot.ports.ApprovalSink`, `QuestionSink`) exactly when the wrapped one has them."""

    _POSTS = frozenset({"post", "post_approval", "post_question"})
    _EDITS = frozenset({"edit", "close_approval", "close_question"})

    def __init__(self, sink: MessageSink, count: CallCount) -> None:
        self._sink = sink
        self._count = count

    @property
    def max_message_chars(self) -> int:
        return self._sink.max_message_chars

    @property
    def edit_interval_s(self) -> float:
        return self._sink.edit_interval_s

    async def post(self, thread: str, text: str) -> str:
        return await self._counted("post", self._sink.post, thread, text)

    async def edit(self, ref: str, text: str) -> None:
        await self._counted("edit", self._sink.edit, ref, text)

    def __getattr__(self, name: str) -> object:
        call = getattr(self._sink, name)
        if name in self._POSTS or name in self._EDITS:
            kind = "post" if name in self._POSTS else "edit"

            async def counted(*args: object) -> object:
                return await self._counted(kind, call, *args)

            return counted
        return call

    async def _counted(self, kind: str, call: Callable[..., Awaitable[_T]], *args: object) -> _T:
        try:
            result = await call(*args)
        except AdapterError as error:
            self._count(kind, error)
            raise
        self._count(kind, None)
        return result
