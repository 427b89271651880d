"""Queued flows, started fairly across tenants: weighted round-robin by stride scheduling.

Every tenant has a `pass` value that advances by 1 / weight with each flow it starts (`charge`),
queued or not; the next flow to start is the oldest queued flow of the eligible tenant with the
lowest pass. A tenant that was idle joins at the current virtual time (the pass of the last flow
started from the queue), not at its old pass, so it cannot save up turns. So a tenant with 100
queued flows and a tenant with one alternate: the single flow waits for at most one flow of the
other to end.
"""
from __future__ import annotations

from collections import OrderedDict, deque
from typing import Any, Callable


class FairQueue:
    def __init__(self) -> None:
        self._queues: OrderedDict[str, deque[dict[str, Any]]] = OrderedDict()  # tenant -> rows, oldest first
        self._ids: dict[str, str] = {}  # flow id -> tenant
        self._pass: dict[str, float] = {}
        self._virtual = 0.0

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, flow_id: object) -> bool:
        return flow_id in self._ids

    def rows(self) -> list[dict[str, Any]]:
        return [row for queue in self._queues.values() for row in queue]

    def count(self, tenant: str) -> int:
        return len(self._queues.get(tenant, ()))

    def push(self, row: dict[str, Any]) -> None:
        tenant = row["tenant"]
        if tenant not in self._queues:
            self._queues[tenant] = deque()
        self._queues[tenant].append(row)
        self._ids[row["id"]] = tenant

    def remove(self, flow_id: str) -> dict[str, Any] | None:
        tenant = self._ids.pop(flow_id, None)
        if tenant is None:
            return None
        queue = self._queues[tenant]
        row = next(r for r in queue if r["id"] == flow_id)
        queue.remove(row)
        if not queue:
            del self._queues[tenant]
        return row

    def charge(self, tenant: str, weight: float) -> None:
        """A flow of `tenant` starts: its pass advances by 1 / weight."""
        self._pass[tenant] = max(self._pass.get(tenant, 0.0), self._virtual) + 1.0 / max(weight, 1e-6)

    def pop(self, eligible: Callable[[str], bool]) -> dict[str, Any] | None:
        """The next flow to start among tenants for which `eligible(tenant)` holds, or None."""
        candidates = [t for t in self._queues if eligible(t)]
        if not candidates:
            return None
        tenant = min(candidates, key=lambda t: max(self._pass.get(t, 0.0), self._virtual))
        self._virtual = max(self._pass.get(tenant, 0.0), self._virtual)
        queue = self._queues[tenant]
        row = queue.popleft()
        del self._ids[row["id"]]
        if not queue:
            del self._queues[tenant]
        if len(self._pass) > 2 * len(self._queues) + 1024:  # forget tenants whose pass no longer matters
            self._pass = {t: p for t, p in self._pass.items() if t in self._queues or p > self._virtual}
        return row
