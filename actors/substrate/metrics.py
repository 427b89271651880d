"""raytenant's metrics: one catalog, recorded through ray.util.metrics at the Ray edges.

State logic records into a `MetricSink` (a no-op by default, so cores and their tests need no
Ray); the Ray shells and the ingress pass `RayMetrics`, which creates the ray.util.metrics objects
of the catalog on first use. Ray exports them on each node's metrics port for Prometheus (prefixed
`ray_`) and the dashboard shows them; docs/operations.md has a Grafana dashboard for them.

Labels are bounded: shard / replica names, models (only priced models are recorded), phases,
statuses and reasons; never a tenant, a flow or a message id. Budget utilisation is a histogram
over tenants, not a gauge per tenant.
"""
from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger("raytenant.metrics")

COUNTER, GAUGE, HISTOGRAM = "counter", "gauge", "histogram"
LATENCY_MS = [0.5, 1, 2, 5, 10, 25, 50, 100, 250, 1000]
SECONDS = [0.1, 0.5, 1, 2, 5, 10, 30, 60, 300]
RATIO = [0.25, 0.5, 0.75, 0.8, 0.9, 1.0]

# name -> (kind, description, tag keys, histogram boundaries)
CATALOG: dict[str, tuple[str, str, tuple[str, ...], list[float] | None]] = {
    "raytenant_ws_connections": (GAUGE, "Open WebSocket connections", ("replica",), None),
    "raytenant_events_published": (COUNTER, "Events appended to tenants' streams", ("shard",), None),
    "raytenant_events_delivered": (COUNTER, "Events sent to WebSocket clients", ("replica",), None),
    "raytenant_slow_consumer_disconnects": (COUNTER, "Sockets closed 4008 because their queue was full", ("replica",), None),
    "raytenant_limit_refusals": (COUNTER, "Requests, sockets and writes refused by a tenant's limits", ("replica", "shard", "limit"), None),
    "raytenant_ledger_records": (COUNTER, "LLM usage records stored", ("shard", "model"), None),
    "raytenant_ledger_cost_usd": (COUNTER, "LLM cost recorded, in USD", ("shard", "model"), None),
    "raytenant_reservations_refused": (COUNTER, "Reservations the ledger refused", ("shard", "reason"), None),
    "raytenant_ledger_overruns": (COUNTER, "Settles that cost more than their reservation held", ("shard", "model"), None),
    "raytenant_budget_utilisation": (HISTOGRAM, "Month-to-date budget used / budget, per recorded call", ("shard",), RATIO),
    "raytenant_learning_patterns_learned": (COUNTER, "Patterns learned from corrections and successes", ("shard",), None),
    "raytenant_recommendation_ms": (HISTOGRAM, "Recommendation latency inside the shard", ("shard",), LATENCY_MS),
    "raytenant_mailbox_depth": (GAUGE, "Ready and in-flight messages in the shard's queues", ("shard",), None),
    "raytenant_mailbox_redeliveries": (COUNTER, "Messages queued again after their visibility timeout", ("shard",), None),
    "raytenant_mailbox_dead_letters": (COUNTER, "Messages that became dead letters", ("shard",), None),
    "raytenant_flows_running": (GAUGE, "Flows running in the runner", ("shard",), None),
    "raytenant_flows_finished": (COUNTER, "Flows that ended, by status", ("shard", "status"), None),
    "raytenant_flow_phase_seconds": (HISTOGRAM, "Duration of a flow phase", ("shard", "phase"), SECONDS),
}


class MetricSink:
    """Where state logic records metrics. This one drops them (tests, benches, no Ray)."""

    def inc(self, name: str, value: float = 1.0, **tags: str) -> None:
        """Add to a counter."""

    def set(self, name: str, value: float, **tags: str) -> None:
        """Set a gauge."""

    def observe(self, name: str, value: float, **tags: str) -> None:
        """Record a histogram observation."""


NO_METRICS = MetricSink()


class RecordingSink(MetricSink):
    """Keeps what was recorded: for tests of the state logic."""

    def __init__(self) -> None:
        self.records: list[tuple[str, str, float, dict[str, str]]] = []

    def inc(self, name: str, value: float = 1.0, **tags: str) -> None:
        self.records.append(("inc", name, value, tags))

    def set(self, name: str, value: float, **tags: str) -> None:
        self.records.append(("set", name, value, tags))

    def observe(self, name: str, value: float, **tags: str) -> None:
        self.records.append(("observe", name, value, tags))

    def total(self, name: str, **tags: str) -> float:
        return sum(v for op, n, v, t in self.records if n == name and op == "inc" and tags.items() <= t.items())


class RayMetrics(MetricSink):
    """Records into ray.util.metrics, with this process's fixed tags (its shard or replica)."""

    def __init__(self, **default_tags: str) -> None:
        self.default_tags = default_tags
        self._metrics: dict[str, Any] = {}

    @classmethod
    def for_actor(cls) -> "RayMetrics":
        """Tagged with the calling actor's name (`ledger-0`, `flows-1`, ...): its shard."""
        import ray

        return cls(shard=ray.get_runtime_context().get_actor_name() or "driver")

    def _metric(self, name: str) -> Any:
        if name not in self._metrics:
            from ray.util import metrics

            kind, description, keys, boundaries = CATALOG[name]
            if kind == COUNTER:
                made = metrics.Counter(name, description=description, tag_keys=keys)
            elif kind == GAUGE:
                made = metrics.Gauge(name, description=description, tag_keys=keys)
            else:
                made = metrics.Histogram(name, description=description, boundaries=boundaries, tag_keys=keys)
            self._metrics[name] = made
        return self._metrics[name]

    def _tags(self, tags: dict[str, str]) -> dict[str, str]:
        keys = CATALOG[tags.pop("__name")][2]
        merged = {**self.default_tags, **tags}
        return {k: str(merged.get(k, "")) for k in keys}

    def inc(self, name: str, value: float = 1.0, **tags: str) -> None:
        if value > 0:
            self._metric(name).inc(value, tags=self._tags({"__name": name, **tags}))

    def set(self, name: str, value: float, **tags: str) -> None:
        self._metric(name).set(value, tags=self._tags({"__name": name, **tags}))

    def observe(self, name: str, value: float, **tags: str) -> None:
        self._metric(name).observe(value, tags=self._tags({"__name": name, **tags}))
