"""Revocation shards: which tenant tokens are refused before they expire, with an epoch that lets
every ingress replica learn of a revocation within a poll, without a database read per request.

A revocation names one token (`jti`) or every token of a tenant issued before a time. The shard
that owns the tenant stores it (durable before it is acknowledged), applies it and bumps its
epoch. Replicas poll every shard's `changes(since)` (actors/revocations/client.py) and refuse
revoked tokens out of their verified-token cache. A restarted shard reloads what is in force and
starts a new incarnation, so replicas take its whole state again. A revocation is kept until every
token it concerns has expired: the maximum token TTL after it was made.

`RevocationCore` is the state logic (tests drive it without Ray); `Revocations` is the Ray actor.
"""
from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable

from actors.substrate.operations import ActorError
from actors.substrate.placement import shard_for

KIND = "revocations"
MAX_LOG = 10_000  # changes kept for incremental polls; a replica further behind takes the whole state


class RevocationError(ActorError):
    """A refused revocation operation (status, code, message, details)."""


@dataclass
class TenantRevocations:
    """What is revoked of one tenant: tokens issued before `before`, single tokens by jti, and all
    of its tokens while the tenant is suspended."""

    before: float = 0.0
    jtis: dict[str, float] = field(default_factory=dict)  # jti -> until when the revocation holds
    before_until: float = 0.0
    suspended: bool = False

    def refuses(self, iat: float, jti: str | None) -> bool:
        return iat < self.before or (jti is not None and jti in self.jtis)

    def to_dict(self) -> dict[str, Any]:
        return {"before": self.before, "before_until": self.before_until, "jtis": dict(self.jtis),
                "suspended": self.suspended}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TenantRevocations":
        return cls(float(data["before"]), {str(k): float(v) for k, v in data["jtis"].items()}, float(data["before_until"]),
                   bool(data.get("suspended", False)))

    def change(self, change: dict[str, Any]) -> None:
        """Apply one entry of a shard's change log."""
        if "suspended" in change:
            self.suspended = bool(change["suspended"])
        else:
            self.apply(change["jti"], change["before"], change["until"])

    def apply(self, jti: str | None, before: float | None, until: float) -> None:
        if jti is not None:
            self.jtis[jti] = max(until, self.jtis.get(jti, 0.0))
        if before is not None and before > self.before:
            self.before, self.before_until = before, until

    def prune(self, now: float) -> bool:
        """Drop what no longer concerns an unexpired token; True when nothing is left."""
        self.jtis = {j: until for j, until in self.jtis.items() if until > now}
        if self.before_until <= now:
            self.before, self.before_until = 0.0, 0.0
        return not self.jtis and not self.before and not self.suspended


@dataclass(frozen=True)
class RevocationOptions:
    max_ttl: float  # a revocation holds this long: every token it concerns has expired by then
    sweep_interval: float = 60.0


def _ts(value: datetime | None) -> float | None:
    return None if value is None else value.timestamp()


class RevocationCore:
    def __init__(self, store: Any, shard: int, shards: int, options: RevocationOptions, *,
                 clock: Callable[[], float] = time.time, tenants: Any = None) -> None:
        self.store, self.shard, self.shards, self.options, self.clock = store, shard, shards, options, clock
        self.tenant_store = tenants  # storage.tenants.TenantStore: which tenants are suspended
        self.incarnation = uuid.uuid4().hex
        self.epoch = 0
        self.log: list[tuple[int, str, dict[str, Any]]] = []  # (epoch, tenant, change)
        self.tenants: dict[str, TenantRevocations] = {}
        self._loaded = False

    async def _load(self) -> None:
        """What is in force for the tenants this shard owns (once, before the first answer)."""
        if self._loaded:
            return
        now = datetime.fromtimestamp(self.clock(), timezone.utc)
        for row in await self.store.revocations(now):
            if shard_for(row["tenant"], self.shards) == self.shard:
                self.tenants.setdefault(row["tenant"], TenantRevocations()).apply(
                    row["jti"], _ts(row["issued_before"]), row["expires_at"].timestamp())
        for tenant in await self.tenant_store.suspended() if self.tenant_store is not None else ():
            if shard_for(tenant, self.shards) == self.shard:
                self.tenants.setdefault(tenant, TenantRevocations()).suspended = True
        self._loaded = True

    async def revoke(self, tenant: str, jti: str | None, before: float | None,
                     max_ttl: float | None = None) -> dict[str, Any]:
        """Stored, then in force on this shard; replicas see it at their next poll. It holds for
        `max_ttl` (the caller's current maximum token TTL; the shard's own if not given)."""
        await self._load()
        now = self.clock()
        if before is not None and not 0 <= before <= now + 1.0:
            raise RevocationError(422, "invalid_issued_before", "issued_before must be a past time after 1970")
        until = now + max(max_ttl or 0.0, self.options.max_ttl)
        stamp = datetime.fromtimestamp(now, timezone.utc)
        row_id = await self.store.add_revocation(
            tenant, jti, None if before is None else datetime.fromtimestamp(before, timezone.utc), stamp,
            datetime.fromtimestamp(until, timezone.utc))
        self.tenants.setdefault(tenant, TenantRevocations()).apply(jti, before, until)
        self._log(tenant, {"jti": jti, "before": before, "until": until})
        return {"id": row_id, "tenant": tenant, "jti": jti, "issued_before": before, "expires_at": until,
                "epoch": self.epoch}

    async def suspend(self, tenant: str, suspended: bool) -> dict[str, Any]:
        """Refuse (or accept again) every token of the tenant. The caller stored the tenant's state
        first (a restarted shard reloads it); replicas see the change at their next poll."""
        await self._load()
        found = self.tenants.setdefault(tenant, TenantRevocations())
        if found.suspended != suspended:
            found.suspended = suspended
            self._log(tenant, {"suspended": suspended})
        if not suspended and found.prune(self.clock()):
            del self.tenants[tenant]
        return {"tenant": tenant, "suspended": suspended, "epoch": self.epoch}

    def _log(self, tenant: str, change: dict[str, Any]) -> None:
        self.epoch += 1
        self.log.append((self.epoch, tenant, change))
        del self.log[:-MAX_LOG]

    async def changes(self, _tenant: str, since: int, incarnation: str | None) -> dict[str, Any]:
        """What changed after epoch `since` of `incarnation`; the whole state when the caller
        knows another incarnation or is further behind than the log reaches."""
        await self._load()
        head = {"incarnation": self.incarnation, "epoch": self.epoch}
        oldest = self.log[0][0] if self.log else self.epoch + 1
        if incarnation != self.incarnation or since + 1 < oldest and since < self.epoch:
            return {**head, "full": True, "tenants": {t: r.to_dict() for t, r in self.tenants.items()}}
        return {**head, "full": False, "changes": [[t, c] for e, t, c in self.log if e > since]}

    async def list(self, tenant: str) -> dict[str, Any]:
        await self._load()
        found = self.tenants.get(tenant)
        return found.to_dict() if found else TenantRevocations().to_dict()

    async def sweep(self) -> None:
        now = self.clock()
        for tenant in [t for t, r in self.tenants.items() if r.prune(now)]:
            del self.tenants[tenant]

    def stats(self) -> dict[str, Any]:
        return {"tenants": len(self.tenants), "epoch": self.epoch}
