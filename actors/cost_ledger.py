"""CostLedger: prices, race-free budgets, reservations, idempotent usage, advice and selection.

`LedgerCore` is the state logic (driven by tests without Ray); `CostLedger` is the Ray actor.
One shard owns a tenant, and every decision about a tenant's budget is taken in memory without an
await between the check and the change, so concurrent requests can never both spend the same
remainder (the original read the budget, inserted, then updated it in separate transactions, and
lost 74% of the increments under load). Writes then join a group commit; a caller is answered only
after its transaction committed, and a failed transaction undoes its operations' in-memory effects
before the next batch is composed, so memory and database never drift apart.

Budgets follow the UTC calendar month: a new month starts at zero with the same settings, carrying
the open reservations. Crossing the alert threshold publishes one `budget_alert` per month.
"""
from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Awaitable, Callable

import ray

from actors.metrics import NO_METRICS, MetricSink, RayMetrics
from actors.activation import ActivationTable, InFlight
from actors.batching import Batcher, commit_failure
from actors.gc_policy import quiet_gc
from actors.model_quality import TASK_QUALITY, model_quality
from actors.operations import ActorError
from actors.shard_actor import BackgroundPublisher, ShardActor, stream_publisher
from actors.prices import NANOS, Price, PriceCatalog, default_catalog
from storage.engine import create_engine
from storage.ledger import LedgerStore, LedgerWrites, utc

log = logging.getLogger("raytenant.cost_ledger")

KIND = "cost-ledger"
Notify = Callable[[str, dict[str, Any]], Awaitable[Any]]


class LedgerError(ActorError):
    """A refused ledger operation (status, code, message, details)."""


def usd(nanos: int) -> float:
    return round(nanos / NANOS, 9)


def month_of(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m")


@dataclass(frozen=True)
class LedgerOptions:
    reservation_ttl: float = 600.0  # an unsettled reservation is released after this
    sweep_interval: float = 5.0
    idle_seconds: float = 600.0
    max_tenants: int = 50_000
    remembered_keys: int = 10_000  # idempotency results kept in memory per tenant (older: from SQL)
    substitution_margin: float = 0.05  # quality a cheaper substitute may give up
    substitution_min_cost: float = 1.0  # USD in the window before a model is worth advice
    batching_min_requests: int = 1_000
    batching_max_tokens: int = 500  # "small" requests
    cache_min_input_tokens: int = 100_000


@dataclass
class Budget:
    month: str
    amount: int
    threshold: float
    used: int = 0
    reserved: int = 0
    alert_sent: bool = False

    @property
    def remaining(self) -> int:
        return self.amount - self.used - self.reserved

    def row(self, tenant: str) -> dict[str, Any]:
        return {
            "tenant": tenant, "month": self.month, "amount_nanos": self.amount, "alert_threshold": self.threshold,
            "used_nanos": self.used, "reserved_nanos": self.reserved, "alert_sent": self.alert_sent,
        }

    def view(self) -> dict[str, Any]:
        return {
            "month": self.month,
            "monthly_budget": usd(self.amount),
            "alert_threshold": self.threshold,
            "used": usd(self.used),
            "reserved": usd(self.reserved),
            "remaining": usd(self.remaining),
            "utilization": round(self.used / self.amount, 6) if self.amount else None,
            "alert_sent": self.alert_sent,
        }


@dataclass
class Reservation:
    id: str
    month: str
    model: str
    amount: int
    expires_at: float
    created_at: float
    state: str = "open"

    def row(self, tenant: str) -> dict[str, Any]:
        return {
            "id": self.id, "tenant": tenant, "month": self.month, "model": self.model, "amount_nanos": self.amount,
            "state": self.state, "expires_at": datetime.fromtimestamp(self.expires_at, timezone.utc),
            "created_at": datetime.fromtimestamp(self.created_at, timezone.utc),
        }


@dataclass
class TenantCosts:
    budget: Budget | None = None
    overrides: dict[str, Price] = field(default_factory=dict)
    reservations: dict[str, Reservation] = field(default_factory=dict)
    closed: OrderedDict[str, str] = field(default_factory=OrderedDict)  # reservation id -> final state
    keys: OrderedDict[str, tuple[dict[str, Any], asyncio.Future]] = field(default_factory=OrderedDict)


@dataclass
class PendingWrite:
    """One operation's share of a group commit. Budget rows are snapshotted at flush time."""

    writes: LedgerWrites
    tenant: str
    undo: Callable[[], None]


class LedgerCore:
    def __init__(
        self,
        store: LedgerStore,
        options: LedgerOptions = LedgerOptions(),
        *,
        catalog: PriceCatalog | None = None,
        notify: Notify | None = None,
        clock: Callable[[], float] = time.time,
        metrics: MetricSink = NO_METRICS,
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.options = options
        self.catalog = catalog or default_catalog()
        self.notify = notify
        self.clock = clock
        self.quality = model_quality()
        self._in_flight = InFlight()
        self.tenants: ActivationTable[TenantCosts] = ActivationTable(
            self._load, idle_seconds=options.idle_seconds, max_tenants=options.max_tenants,
            busy=self._in_flight.__contains__,
        )
        # Unbounded batches: a flush snapshots the budgets, which must hold only this batch's changes.
        self._commits: Batcher[PendingWrite, None] = Batcher(self._flush, max_batch=2**62, isolate="retry", group=lambda item: item.tenant)
        # Keys not in memory (recorded before this activation, or forgotten) are looked up in SQL;
        # concurrent operations share one query.
        self._key_lookups: Batcher[tuple[str, list[str]], dict[str, dict]] = Batcher(self._lookup_keys)
        self._alerts = BackgroundPublisher(notify, "budget alert")
        self.alerts_sent = 0

    # -- activation and commit --------------------------------------------------------------------
    async def _load(self, tenants: list[str]) -> dict[str, TenantCosts]:
        loaded = await self.store.load(tenants)
        states = {}
        for tenant, found in loaded.items():
            state = TenantCosts()
            if found["budget"]:
                row = found["budget"]
                state.budget = Budget(
                    row["month"], row["amount_nanos"], row["alert_threshold"], row["used_nanos"],
                    row["reserved_nanos"], row["alert_sent"],
                )
            for row in found["reservations"]:
                state.reservations[row["id"]] = Reservation(
                    row["id"], row["month"], row["model"], row["amount_nanos"],
                    utc(row["expires_at"]).timestamp(), utc(row["created_at"]).timestamp(),
                )
            for row in found["overrides"]:
                state.overrides[row["model"].lower()] = Price(
                    row["input_per_token"], row["output_per_token"], row["cached_per_token"]
                )
            states[tenant] = state
        return states

    async def _lookup_keys(self, items: list[tuple[str, list[str]]]) -> list[dict[str, dict]]:
        found = await self.store.usage_by_keys({(t, k) for t, keys in items for k in keys})
        return [{k: found[(t, k)] for k in keys if (t, k) in found} for t, keys in items]

    async def _state(self, tenant: str) -> TenantCosts:
        state = (await self.tenants.activate([tenant]))[tenant]
        self._roll_month(state)
        return state

    def _roll_month(self, state: TenantCosts) -> None:
        month = month_of(self.clock())
        budget = state.budget
        if budget is not None and budget.month < month:
            carried = sum(r.amount for r in state.reservations.values())
            state.budget = Budget(month, budget.amount, budget.threshold, 0, carried, False)

    async def _flush(self, pending: list[PendingWrite]) -> list[None]:
        merged = LedgerWrites()
        for item in pending:
            merged.merge(item.writes)
            state = self.tenants.peek(item.tenant)
            if state is not None and state.budget is not None:
                merged.budgets[(item.tenant, state.budget.month)] = state.budget.row(item.tenant)
        try:
            await self.store.write(merged)
        except BaseException:
            for item in reversed(pending):  # before the next batch is composed
                item.undo()
            raise
        return [None] * len(pending)

    async def _commit(self, tenant: str, writes: LedgerWrites, undo: Callable[[], None]) -> None:
        """Join the next group commit; returns once it is durable. A tenant with a commit in flight
        stays in memory: reloading it from storage meanwhile would miss the uncommitted change."""
        with self._in_flight.hold(tenant):
            try:
                await self._commits.submit(PendingWrite(writes, tenant, undo))
            except Exception as error:
                failure = commit_failure(error)
                if failure == "retry":
                    raise
                if failure == "refused":
                    raise LedgerError(422, "value_not_storable", "the database refused a value of this request; nothing was stored") from error
                log.exception("ledger commit failed")
                raise LedgerError(503, "ledger_unavailable", "the ledger could not store this; nothing was recorded") from error

    # -- prices -----------------------------------------------------------------------------------
    def known_price(self, state: TenantCosts, model: str) -> Price | None:
        """The tenant's override, else the catalog's price, else None."""
        return state.overrides.get(model.lower()) or self.catalog.lookup(model)

    def price(self, state: TenantCosts, model: str) -> Price:
        price = self.known_price(state, model)
        if price is None:
            raise LedgerError(422, "unknown_model", f"no price is known for model {model!r}; set a price override", model=model)
        return price

    async def prices(self, tenant: str, search: str = "", limit: int = 50) -> list[dict[str, Any]]:
        state = await self._state(tenant)
        rows = [{"model": m, "source": "override", **p.to_dict()} for m, p in sorted(state.overrides.items()) if search.lower() in m]
        rows += [{"model": m, "source": "catalog", **p.to_dict()} for m, p in self.catalog.search(search, limit)]
        return rows[:limit]

    async def set_override(self, tenant: str, model: str, price: Price) -> dict[str, Any]:
        state = await self._state(tenant)
        key = model.lower()
        before = state.overrides.get(key)
        state.overrides[key] = price
        row = {"tenant": tenant, "model": key, "input_per_token": price.input, "output_per_token": price.output,
               "cached_per_token": price.cached}

        def undo() -> None:
            if before is None:
                state.overrides.pop(key, None)
            else:
                state.overrides[key] = before

        await self._commit(tenant, LedgerWrites(overrides={(tenant, key): row}), undo)
        return {"model": key, "source": "override", **price.to_dict()}

    async def delete_override(self, tenant: str, model: str) -> None:
        state = await self._state(tenant)
        key = model.lower()
        if key not in state.overrides:
            raise LedgerError(404, "override_not_found", f"no price override for {model!r}")
        before = state.overrides.pop(key)
        await self._commit(tenant, LedgerWrites(overrides={(tenant, key): None}), lambda: state.overrides.__setitem__(key, before))

    # -- budgets ----------------------------------------------------------------------------------
    async def set_budget(self, tenant: str, amount_usd: float, threshold: float) -> dict[str, Any]:
        state = await self._state(tenant)
        before = state.budget
        amount = round(amount_usd * NANOS)
        if before is None or before.month != month_of(self.clock()):
            carried = sum(r.amount for r in state.reservations.values())
            state.budget = Budget(month_of(self.clock()), amount, threshold, 0, carried)
        else:
            state.budget = Budget(before.month, amount, threshold, before.used, before.reserved, before.alert_sent)
        alert = self._check_alert(state)

        def undo() -> None:
            state.budget = before

        await self._commit(tenant, LedgerWrites(), undo)
        self._publish_alert(tenant, alert)
        return state.budget.view()

    async def get_budget(self, tenant: str) -> dict[str, Any]:
        state = await self._state(tenant)
        if state.budget is None:
            raise LedgerError(404, "budget_not_set", "no budget is set for this tenant")
        return state.budget.view()

    def _check_alert(self, state: TenantCosts) -> dict[str, Any] | None:
        budget = state.budget
        if budget is None or budget.alert_sent or budget.amount <= 0:
            return None
        if budget.used < budget.threshold * budget.amount:
            return None
        budget.alert_sent = True
        return {**budget.view(), "message": f"LLM spend reached {budget.used / budget.amount:.0%} of the monthly budget"}

    def _publish_alert(self, tenant: str, alert: dict[str, Any] | None) -> None:
        """After the commit that set alert_sent: the flag is durable, so the alert goes out once."""
        if alert is None or self.notify is None:
            return
        self.alerts_sent += 1
        self._alerts.send(tenant, alert)

    # -- usage ------------------------------------------------------------------------------------
    async def record_usage(self, tenant: str, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Record a batch (all or nothing). A retried idempotency key returns its first result."""
        state = await self._state(tenant)
        keys = [r["idempotency_key"] for r in records if r.get("idempotency_key")]
        missing = [k for k in keys if k not in state.keys]
        if missing:
            for key, row in (await self._key_lookups.submit((tenant, missing))).items():
                if key not in state.keys:
                    done = asyncio.get_running_loop().create_future()
                    done.set_result(None)
                    state.keys[key] = (_usage_result(row, duplicate=True), done)
        # From here to the commit nothing awaits: the check and the change are one step.
        priced = [(r, self.price(state, r["model"])) for r in records]
        now = self.clock()
        results: list[dict[str, Any] | None] = []
        waits: list[asyncio.Future] = []
        rows, new_keys, total = [], [], 0
        commit_done = asyncio.get_running_loop().create_future()
        for record, price in priced:
            key = record.get("idempotency_key")
            if key and key in state.keys:
                first, done = state.keys[key]
                results.append({**first, "duplicate": True})
                waits.append(done)
                continue
            cost = price.cost_nanos(record["input_tokens"], record["output_tokens"], record.get("cached_tokens", 0))
            total += cost
            row = _usage_row(tenant, record, cost, now)
            rows.append(row)
            result = _usage_result(row, duplicate=False)
            results.append(result)
            if key:
                state.keys[key] = (result, commit_done)
                new_keys.append(key)
        budget = state.budget
        if budget is not None and total > budget.remaining:
            for key in new_keys:
                del state.keys[key]
            raise LedgerError(402, "budget_exceeded", "this usage would exceed the monthly budget",
                              remaining=usd(budget.remaining), requested=usd(total))
        if budget is not None:
            budget.used += total
        alert = self._check_alert(state)
        self._forget_old_keys(state)

        def undo() -> None:
            if budget is not None:
                budget.used -= total
                if alert is not None:
                    budget.alert_sent = False
            for key in new_keys:
                state.keys.pop(key, None)

        try:
            if rows:
                await self._commit(tenant, LedgerWrites(usage=rows), undo)
            commit_done.set_result(None)
        except BaseException as error:
            commit_done.set_exception(error)
            commit_done.exception()  # mark retrieved; duplicates waiting on it get the error
            raise
        self._measure(rows, budget)
        for wait in waits:
            await wait  # a duplicate is answered only once its first record is committed
        self._publish_alert(tenant, alert)
        return results

    def _measure(self, rows: list[dict[str, Any]], budget: Budget | None) -> None:
        """Metrics of stored usage: records and cost by model, and where the budget stands."""
        for row in rows:
            self.metrics.inc("raytenant_ledger_records", model=row["model"])
            self.metrics.inc("raytenant_ledger_cost_usd", row["cost_nanos"] / NANOS, model=row["model"])
        if rows and budget is not None and budget.amount > 0:
            self.metrics.observe("raytenant_budget_utilisation", budget.used / budget.amount)

    def _forget_old_keys(self, state: TenantCosts) -> None:
        while len(state.keys) > self.options.remembered_keys:
            key, (_, done) = next(iter(state.keys.items()))
            if not done.done():
                break
            del state.keys[key]

    # -- reservations -----------------------------------------------------------------------------
    async def reserve(self, tenant: str, model: str, input_tokens: int, output_tokens: int, ttl: float | None = None):
        state = await self._state(tenant)
        amount = self.price(state, model).cost_nanos(input_tokens, output_tokens)
        budget = state.budget
        if budget is not None and amount > budget.remaining:
            self.metrics.inc("raytenant_reservations_refused", reason="budget_exceeded")
            raise LedgerError(402, "budget_exceeded", "the reservation does not fit in the remaining budget",
                              remaining=usd(budget.remaining), requested=usd(amount))
        now = self.clock()
        reservation = Reservation(uuid.uuid4().hex, month_of(now), model, amount, now + (ttl or self.options.reservation_ttl), now)
        state.reservations[reservation.id] = reservation
        if budget is not None:
            budget.reserved += amount

        def undo() -> None:
            state.reservations.pop(reservation.id, None)
            if budget is not None:
                budget.reserved -= amount

        await self._commit(tenant, LedgerWrites(reservations={reservation.id: reservation.row(tenant)}), undo)
        return {
            "reservation_id": reservation.id,
            "model": model,
            "amount": usd(amount),
            "expires_at": datetime.fromtimestamp(reservation.expires_at, timezone.utc).isoformat(),
            "remaining": usd(budget.remaining) if budget is not None else None,
        }

    def _open(self, state: TenantCosts, reservation_id: str) -> Reservation:
        reservation = state.reservations.get(reservation_id)
        if reservation is None:
            closed = state.closed.get(reservation_id)
            if closed:
                raise LedgerError(409, "reservation_closed", f"the reservation is already {closed}", state=closed)
            raise LedgerError(404, "reservation_not_found", "no open reservation with this id")
        return reservation

    def _close(self, state: TenantCosts, reservation: Reservation, final: str) -> Callable[[], None]:
        """Take a reservation off the budget; returns the undo."""
        del state.reservations[reservation.id]
        reservation.state = final
        state.closed[reservation.id] = final
        while len(state.closed) > self.options.remembered_keys:
            state.closed.popitem(last=False)
        budget = state.budget
        counted = budget is not None and reservation.month <= budget.month
        if counted:
            budget.reserved -= reservation.amount

        def undo() -> None:
            reservation.state = "open"
            state.reservations[reservation.id] = reservation
            state.closed.pop(reservation.id, None)
            if counted:
                budget.reserved += reservation.amount

        return undo

    async def settle(self, tenant: str, reservation_id: str, usage: dict[str, Any]) -> dict[str, Any]:
        state = await self._state(tenant)
        reservation = self._open(state, reservation_id)
        price = self.price(state, reservation.model)
        cost = price.cost_nanos(usage["input_tokens"], usage["output_tokens"], usage.get("cached_tokens", 0))
        undo_close = self._close(state, reservation, "settled")
        budget = state.budget
        if budget is not None:
            budget.used += cost
        alert = self._check_alert(state)
        row = _usage_row(tenant, {**usage, "model": reservation.model}, cost, self.clock(), reservation_id)

        def undo() -> None:
            if budget is not None:
                budget.used -= cost
                if alert is not None:
                    budget.alert_sent = False
            undo_close()

        await self._commit(tenant, LedgerWrites(usage=[row], reservations={reservation.id: reservation.row(tenant)}), undo)
        self._measure([row], budget)
        self._publish_alert(tenant, alert)
        return {
            **_usage_result(row, duplicate=False),
            "reservation_id": reservation.id,
            "reserved": usd(reservation.amount),
            "released": usd(max(0, reservation.amount - cost)),
            "overrun": usd(max(0, cost - reservation.amount)),
        }

    async def release(self, tenant: str, reservation_id: str) -> dict[str, Any]:
        state = await self._state(tenant)
        reservation = self._open(state, reservation_id)
        undo = self._close(state, reservation, "released")
        await self._commit(tenant, LedgerWrites(reservations={reservation.id: reservation.row(tenant)}), undo)
        return {"reservation_id": reservation.id, "state": "released", "released": usd(reservation.amount)}

    async def expire(self) -> int:
        """Release every open reservation past its TTL (runs periodically in the actor)."""
        now = self.clock()
        expired = 0
        for tenant in self.tenants.names():
            state = self.tenants.peek(tenant)
            if state is None:
                continue
            due = [r for r in state.reservations.values() if r.expires_at <= now]
            if not due:
                continue
            undos = [self._close(state, r, "expired") for r in due]
            rows = {r.id: r.row(tenant) for r in due}

            def undo(undos=undos) -> None:
                for step in reversed(undos):
                    step()

            try:
                await self._commit(tenant, LedgerWrites(reservations=rows), undo)
                expired += len(due)
            except LedgerError:
                log.warning("could not expire reservations of %s; will retry", tenant)
        return expired

    # -- reads and advice -------------------------------------------------------------------------
    async def summary(self, tenant: str, start: datetime, end: datetime) -> dict[str, Any]:
        raw = await self.store.summary(tenant, start, end)
        return {
            "start": start.isoformat(),
            "end": end.isoformat(),
            "total_cost": usd(raw["total"]["cost_nanos"]),
            "total_tokens": raw["total"]["tokens"],
            "total_requests": raw["total"]["requests"],
            "input_tokens": raw["total"]["input_tokens"],
            "output_tokens": raw["total"]["output_tokens"],
            "cached_tokens": raw["total"]["cached_tokens"],
            **{
                name: {key: {"cost": usd(m["cost_nanos"]), "tokens": m["tokens"], "requests": m["requests"]} for key, m in raw[name].items()}
                for name in ("by_model", "by_agent", "by_flow", "by_day")
            },
        }

    def estimate_with(self, state: TenantCosts, model: str, input_tokens: int, output_tokens: int, cached_tokens: int = 0):
        price = self.price(state, model)
        cached_tokens = min(cached_tokens, input_tokens)
        total = price.cost_nanos(input_tokens, output_tokens, cached_tokens)
        tokens = input_tokens + output_tokens
        return {
            "model": model,
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "cached_tokens": cached_tokens,
            "input_cost": usd(price.cost_nanos(input_tokens - cached_tokens, 0)),
            "cached_input_cost": usd(price.cost_nanos(cached_tokens, 0, cached_tokens)),
            "output_cost": usd(price.cost_nanos(0, output_tokens)),
            "total_cost": usd(total),
            "cost_per_1k_tokens": usd(round(total * 1000 / tokens)) if tokens else 0.0,
            "price": price.to_dict(),
            "source": "override" if model.lower() in state.overrides else "catalog",
        }

    async def estimate(self, tenant: str, model: str, input_tokens: int, output_tokens: int, cached_tokens: int = 0):
        return self.estimate_with(await self._state(tenant), model, input_tokens, output_tokens, cached_tokens)

    def _candidates(self, state: TenantCosts) -> dict[str, tuple[float, Price]]:
        found = {}
        for model, quality in self.quality.items():
            price = self.known_price(state, model)
            if price is not None:
                found[model] = (quality, price)
        return found

    async def select_model(
        self, tenant: str, task_type: str, quality_requirement: float | None, cost_constraint: float | None
    ) -> dict[str, Any]:
        """The cheapest known model that meets the quality bar (and the cost limit for a typical
        call of 1,000 input + 500 output tokens, as the original estimated)."""
        state = await self._state(tenant)
        needed = quality_requirement if quality_requirement is not None else TASK_QUALITY.get(task_type, 0.8)
        typical = {m: (q, p.cost_nanos(1000, 500)) for m, (q, p) in self._candidates(state).items()}
        qualified = {m: v for m, v in typical.items() if v[0] >= needed}
        if not qualified:
            best = max(typical, key=lambda m: typical[m][0])
            quality, cost = typical[best]
            return {"model": best, "task_type": task_type, "quality": quality, "estimated_cost_per_call": usd(cost),
                    "meets_quality": False, "within_cost_constraint": cost_constraint is None or usd(cost) <= cost_constraint,
                    "reason": f"no known model reaches quality {needed:.2f}; {best} is the best available ({quality:.2f})"}
        affordable = {m: v for m, v in qualified.items() if cost_constraint is None or usd(v[1]) <= cost_constraint}
        pool = affordable or qualified
        model = min(pool, key=lambda m: (pool[m][1], -pool[m][0]))
        quality, cost = pool[model]
        reason = (f"cheapest of {len(qualified)} models with quality >= {needed:.2f} "
                  f"(est. ${usd(cost):.6f} per 1,000+500-token call)")
        if cost_constraint is not None and not affordable:
            reason += f"; none fits the cost constraint ${cost_constraint}, so this is the cheapest qualified"
        return {"model": model, "task_type": task_type, "quality": quality, "estimated_cost_per_call": usd(cost),
                "meets_quality": True, "within_cost_constraint": bool(affordable) or cost_constraint is None, "reason": reason}

    async def recommendations(self, tenant: str) -> dict[str, Any]:
        state = await self._state(tenant)
        now = self.clock()
        end = datetime.fromtimestamp(now, timezone.utc) + timedelta(seconds=1)  # include this instant
        start = end - timedelta(days=30)
        raw = await self.store.summary(tenant, start, end)
        advice: list[dict[str, Any]] = []
        candidates = self._candidates(state)
        margin = self.options.substitution_margin
        for model, usage in raw["by_model"].items():
            current = self.known_price(state, model)
            current_quality = self.quality.get(model) or self.quality.get(self.catalog.canonical(model) or "")
            if current is None or current_quality is None or usd(usage["cost_nanos"]) < self.options.substitution_min_cost:
                continue
            cost_now = usage["cost_nanos"]
            best = None
            for alt, (quality, price) in candidates.items():
                if alt == model or quality < current_quality - margin:
                    continue
                alt_cost = price.cost_nanos(usage["input_tokens"], usage["output_tokens"], usage["cached_tokens"])
                if alt_cost < cost_now and (best is None or alt_cost < best[1]):
                    best = (alt, alt_cost, quality)
            if best:
                savings = usd(cost_now - best[1])  # the window is 30 days: a month's worth
                advice.append({
                    "type": "model_substitution", "current_model": model, "recommended_model": best[0],
                    "potential_monthly_savings": savings, "quality_impact": round(best[2] - current_quality, 3),
                    "priority": "high" if savings > 50 else "medium",
                })
        total = raw["total"]
        if total["requests"] >= self.options.batching_min_requests and total["tokens"] / total["requests"] <= self.options.batching_max_tokens:
            advice.append({
                "type": "request_batching", "current_requests": total["requests"],
                "average_tokens_per_request": round(total["tokens"] / total["requests"], 1),
                "implementation": "batch small similar requests into one prompt; fixed prompt overhead is paid once",
                "priority": "medium",
            })
        cache_savings = 0
        for model, usage in raw["by_model"].items():
            price = self.known_price(state, model)
            if price is None or price.cached is None or usage["input_tokens"] < self.options.cache_min_input_tokens:
                continue
            if usage["cached_tokens"] / max(1, usage["input_tokens"]) < 0.1:
                # Assume half the input (system prompts, tool schemas, context) could be served cached.
                movable = usage["input_tokens"] // 2
                cache_savings += price.cost_nanos(movable, 0) - price.cost_nanos(movable, 0, movable)
        if cache_savings > 0:
            advice.append({
                "type": "prompt_caching", "potential_monthly_savings": usd(cache_savings),
                "implementation": "put stable prompt parts first so the provider can cache them",
                "priority": "medium",
            })
        budget = state.budget
        if budget is not None:
            moment = datetime.fromtimestamp(now, timezone.utc)
            month_start = moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
            next_month = (month_start + timedelta(days=32)).replace(day=1)
            elapsed = max((moment - month_start).total_seconds(), 3600.0)
            projected = budget.used * (next_month - month_start).total_seconds() / elapsed
            advice.append({
                "type": "burn_rate", "month": budget.month, "spent": usd(budget.used),
                "projected_month_end": usd(round(projected)), "budget": usd(budget.amount),
                "projected_utilization": round(projected / budget.amount, 3) if budget.amount else None,
                "priority": "high" if projected > budget.amount else "low",
            })
        return {"window_days": 30, "recommendations": advice}

    def stats(self) -> dict[str, Any]:
        return {"active_tenants": len(self.tenants), "commits": self._commits.flushes, "alerts_sent": self.alerts_sent}


def _usage_row(tenant: str, record: dict[str, Any], cost: int, now: float, reservation_id: str | None = None):
    return {
        "tenant": tenant, "model": record["model"], "input_tokens": record["input_tokens"],
        "output_tokens": record["output_tokens"], "cached_tokens": record.get("cached_tokens", 0), "cost_nanos": cost,
        "agent": record.get("agent"), "task": record.get("task"), "flow_id": record.get("flow_id"),
        "idempotency_key": record.get("idempotency_key"), "reservation_id": reservation_id,
        "ts": datetime.fromtimestamp(now, timezone.utc),
    }


def _usage_result(row: dict[str, Any], *, duplicate: bool) -> dict[str, Any]:
    return {
        "model": row["model"], "cost": usd(row["cost_nanos"]), "input_tokens": row["input_tokens"],
        "output_tokens": row["output_tokens"], "cached_tokens": row["cached_tokens"],
        "idempotency_key": row["idempotency_key"], "duplicate": duplicate,
    }


PUBLIC_METHODS = frozenset(
    {"record_usage", "reserve", "settle", "release", "set_budget", "get_budget", "summary", "recommendations",
     "estimate", "select_model", "prices", "set_override", "delete_override"}
)


@ray.remote(num_cpus=0, max_concurrency=10_000)
class CostLedger(ShardActor):
    """Ray shell: one ledger shard with its own engine; publishes budget alerts to the EventHub."""

    public = PUBLIC_METHODS

    def __init__(self, database_url: str, options: LedgerOptions = LedgerOptions(), hub: dict | None = None) -> None:
        self.engine = create_engine(database_url)
        publish = stream_publisher(hub, "budget_alert")
        notify = (lambda tenant, alert: publish(tenant, [alert])) if publish else None
        self.core = LedgerCore(LedgerStore(self.engine), options, notify=notify, metrics=RayMetrics.for_actor())
        self.sweep = self.core.expire
        quiet_gc()
