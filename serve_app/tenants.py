"""A tenant's lifecycle as the operator runs it: create, show, suspend, resume, delete, export and
import (docs/operations.md "Tenant lifecycle"). The routes are in serve_app/routes/tenants.py.

Every step stores first and then tells the shards, and every step can be repeated: an operator
whose call failed half-way calls it again and ends in the same place.

- suspend: the record says `suspended` (a restarted shard reloads that), then the revocation
  shards refuse the tenant's tokens (403 `tenant_suspended`, sockets closed with 4003: every
  replica within a poll, 0.25 s), then the flow runners stop its flows after their phase.
- delete: suspended as above, every token issued until now revoked for good, its flows stopped,
  one second for every replica and every request in flight to see it, then the tenant forgotten by
  every shard, its rows deleted in one transaction, and forgotten again (in case a request that
  was already past the ingress reloaded it meanwhile).
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any, AsyncIterator, Iterable

from serve_app.auth import valid_tenant
from serve_app.errors import ApiError
from storage.tenants import TenantStore

if TYPE_CHECKING:
    from serve_app.runtime import Runtime

log = logging.getLogger("raytenant.tenants")

SETTLE_SECONDS = 1.0  # every replica honours a suspension within this (four revocation polls)


class TenantLifecycle:
    def __init__(self, runtime: "Runtime", store: TenantStore, *, settle: float = SETTLE_SECONDS) -> None:
        self.runtime, self.store, self.settle = runtime, store, settle

    async def record(self, name: str) -> dict[str, Any]:
        found = await self.store.get(name)
        if found is None:
            raise ApiError(404, "unknown_tenant", f"no tenant {name!r}")
        return found

    async def for_token(self, name: str) -> dict[str, Any]:
        """The record of a tenant a token is being minted for: created if unknown and the
        deployment allows it, else 404; a suspended tenant gets no new token (403)."""
        found = await self.store.get(name)
        if found is None:
            if not self.runtime.settings.auto_create_tenants:
                raise ApiError(404, "unknown_tenant", f"no tenant {name!r}; create it first (raytenant tenant create)")
            found = await self.store.ensure(name)
            await self.runtime.audit.record("operator", "create_tenant", name, "ok", by="mint_token")
        if found.get("state") != "active":
            raise ApiError(403, "tenant_suspended", f"tenant {name!r} is suspended")
        return found

    async def create(self, name: str) -> dict[str, Any]:
        created = await self.store.create(name)
        if created is None:
            raise ApiError(409, "tenant_exists", f"tenant {name!r} already exists")
        return created

    async def show(self, names: Iterable[str]) -> list[dict[str, Any]]:
        """Records with their limits and current figures: sockets open (the replicas' presence),
        month-to-date spend, patterns, queued messages, flows by state, the last event's seq."""
        records = [r for r in [await self.store.get(n) for n in names] if r is not None]
        return await self._with_figures(records)

    async def page(self, after: str, limit: int) -> list[dict[str, Any]]:
        return await self._with_figures(await self.store.page(after, limit))

    async def _with_figures(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        names = [r["tenant"] for r in records]
        figures = await self.store.figures(names)
        await self.runtime.router.report_now()
        presence = await asyncio.gather(*(self.runtime.hub.presence(n) for n in names))
        stored = await self.runtime.limits_store.get_many(names)
        overrides = [stored.get(n) for n in names]
        defaults = self.runtime.settings.default_limits()
        return [{**r, "limits": _limits(defaults, o), "figures": {"connections": p["connections"], **figures[r["tenant"]]}}
                for r, p, o in zip(records, presence, overrides)]

    async def suspend(self, name: str) -> dict[str, Any]:
        flows = await self._set_state(name, "suspended", "suspend")
        return {**await self.record(name), "flows_pausing": flows["pausing"]}

    async def resume(self, name: str) -> dict[str, Any]:
        flows = await self._set_state(name, "active", "resume_tenant")
        return {**await self.record(name), "flows_resumed": flows["resumed"]}

    async def _set_state(self, name: str, state: str, flow_step: str) -> dict[str, Any]:
        """Stored, then the replicas (through the revocation shard), then the flow runner."""
        if not await self.store.set_state(name, state):
            raise ApiError(404, "unknown_tenant", f"no tenant {name!r}")
        await self._suspend_tokens(name, state == "suspended")
        return await self.runtime.flows.call(flow_step, name)

    async def delete(self, name: str) -> dict[str, Any]:
        await self.record(name)
        runtime = self.runtime
        await self.store.set_state(name, "suspended")  # no token is minted for it from now on
        await self._suspend_tokens(name, True)
        revoked = await runtime.revocations.call("revoke", name, None, time.time(), runtime.tokens.max_ttl)
        flows = await runtime.flows.call("forget", name)
        if flows["still_running"]:
            raise ApiError(409, "flows_still_running", f"{flows['still_running']} flows of {name!r} did not stop "
                           "in time; nothing was deleted, try again", still_running=flows["still_running"])
        await asyncio.sleep(self.settle)
        await self.forget(name)
        deleted = await self.store.purge(name)
        await self.forget(name)
        await self._suspend_tokens(name, False)  # the revocation alone refuses its old tokens
        return {"tenant": name, "deleted": True, "rows": deleted, "tokens_issued_before": revoked["issued_before"]}

    async def forget(self, name: str) -> None:
        """Drop the tenant from every shard's memory (after a purge or an import)."""
        runtime = self.runtime
        await asyncio.gather(runtime.hub.forget(name), runtime.ledger.call("forget", name),
                             runtime.learning.call("forget", name), runtime.mailbox.call("forget", name),
                             runtime.quotas.call("forget", name))

    async def export(self, name: str) -> AsyncIterator[str]:
        await self.record(name)
        return self.store.export(name)

    async def import_lines(self, lines: list[bytes]) -> dict[str, Any]:
        found = await self.store.import_lines(lines, valid_tenant)
        await self.forget(found["tenant"])  # a shard that knew the name as empty loads the import
        if found["state"] == "suspended":
            await self._suspend_tokens(found["tenant"], True)
        return found

    async def _suspend_tokens(self, name: str, suspended: bool) -> None:
        """Through the revocation shard; this replica polls at once (the operator's next call sees
        it), the others at their next poll."""
        await self.runtime.revocations.call("suspend", name, suspended)
        await self.runtime.revocations.poll()


def _limits(defaults: Any, overrides: dict[str, Any] | None) -> dict[str, Any]:
    try:
        return defaults.with_overrides(overrides or {}).to_dict()
    except Exception:  # noqa: BLE001 - stored under other defaults: show the defaults
        return defaults.to_dict()
