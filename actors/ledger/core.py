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
import math
import time
from contextlib import contextmanager
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from typing import Any, Awaitable, Callable, Iterator

from actors.ledger.levels import COLUMNS, Level, LevelSettings, RateWindow, Tags, WindowEntry, level_keys, period_bounds, period_id
from actors.ledger.model_quality import TASK_QUALITY, model_quality
from actors.ledger.prices import NANOS, Price, PriceCatalog, default_catalog, usd
from actors.substrate.activation import ActivationTable
from actors.substrate.background import BackgroundPublisher
from actors.substrate.batching import SOLO, Batcher, Refused
from actors.substrate.group_commit import GroupCommit, Pending
from actors.substrate.metrics import NO_METRICS, MetricSink
from actors.substrate.operations import ActorError
from actors.substrate.stamps import Stamps
from storage.ledger import LedgerStore, LedgerWrites, utc

log = logging.getLogger("raytenant.cost_ledger")

KIND = "cost-ledger"
Notify = Callable[[str, dict[str, Any]], Awaitable[Any]]


class LedgerError(ActorError):
    """A refused ledger operation (status, code, message, details)."""


EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def month_of(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m")


def month_start(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, timezone.utc).replace(day=1, hour=0, minute=0, second=0, microsecond=0)


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
    max_levels: int = 1_000  # budget levels per tenant


@dataclass
class Budget:
    """A tenant's month. `amount` is the tenant's own budget (costs:admin), `cap` the operator's hard
    cap; either may be unset. What is spent is tracked whether or not either is set, so a budget set
    mid-month counts everything the month already spent."""

    month: str
    amount: int | None = None
    threshold: float = 0.8
    used: int = 0
    reserved: int = 0
    alert_sent: bool = False
    cap: int | None = None
    overrun: int = 0  # recorded beyond the reservations calls were admitted under

    @property
    def limit(self) -> int | None:
        """What the month may spend: the lower of the tenant's budget and the operator's cap."""
        bounds = [x for x in (self.amount, self.cap) if x is not None]
        return min(bounds) if bounds else None

    @property
    def remaining(self) -> int | None:
        limit = self.limit
        return None if limit is None else limit - self.used - self.reserved

    def admits(self, amount: int) -> bool:
        """Whether `amount` more may be held or spent: never while the month is at or over its
        limit (an overrun or a late settle can take it there)."""
        limit = self.limit
        return limit is None or (self.used < limit and amount <= limit - self.used - self.reserved)

    def next_month(self, month: str, carried: int) -> "Budget":
        return Budget(month, self.amount, self.threshold, 0, carried, False, self.cap, 0)

    def row(self, tenant: str) -> dict[str, Any]:
        return {
            "tenant": tenant, "month": self.month, "amount_nanos": self.amount, "alert_threshold": self.threshold,
            "used_nanos": self.used, "reserved_nanos": self.reserved, "alert_sent": self.alert_sent,
            "cap_nanos": self.cap, "overrun_nanos": self.overrun,
        }

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> "Budget":
        return cls(row["month"], row["amount_nanos"], row["alert_threshold"], row["used_nanos"], row["reserved_nanos"],
                   row["alert_sent"], row["cap_nanos"], row["overrun_nanos"])

    def view(self) -> dict[str, Any]:
        limit, remaining = self.limit, self.remaining
        return {
            "month": self.month,
            "monthly_budget": usd(self.amount) if self.amount is not None else None,
            "operator_cap": usd(self.cap) if self.cap is not None else None,
            "limit": usd(limit) if limit is not None else None,
            "alert_threshold": self.threshold,
            "used": usd(self.used),
            "reserved": usd(self.reserved),
            "remaining": usd(remaining) if remaining is not None else None,
            "utilization": round(self.used / limit, 6) if limit else None,
            "alert_sent": self.alert_sent,
            "overrun": usd(self.overrun),
            "over_limit": limit is not None and self.used >= limit,
        }


@dataclass
class Reservation:
    """Money held for one call's worst case: its declared input tokens and its output bound (which
    the caller passes to the provider as max_tokens). None for reservations made before bounds."""

    id: str
    month: str
    model: str
    amount: int
    expires_at: float
    created_at: float
    state: str = "open"
    input_tokens: int | None = None
    max_output_tokens: int | None = None
    tags: Tags = field(default_factory=dict)  # engagement and user (from the token), agent: its levels
    rate_entries: list[tuple[RateWindow, WindowEntry]] = field(default_factory=list, compare=False)

    def row(self, tenant: str) -> dict[str, Any]:
        return {
            "id": self.id, "tenant": tenant, "month": self.month, "model": self.model, "amount_nanos": self.amount,
            "state": self.state, "expires_at": datetime.fromtimestamp(self.expires_at, timezone.utc),
            "created_at": datetime.fromtimestamp(self.created_at, timezone.utc),
            "input_tokens": self.input_tokens, "max_output_tokens": self.max_output_tokens,
            "engagement": self.tags.get("engagement"), "user_id": self.tags.get("user"), "agent": self.tags.get("agent"),
        }

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> "Reservation":
        tags = {"engagement": row.get("engagement"), "user": row.get("user_id"), "agent": row.get("agent")}
        return cls(row["id"], row["month"], row["model"], row["amount_nanos"], utc(row["expires_at"]).timestamp(),
                   utc(row["created_at"]).timestamp(), row["state"], row["input_tokens"], row["max_output_tokens"],
                   tags)

    def correct_rates(self, tokens: int) -> None:
        """What the call really used replaces its reserved worst case in the TPM windows."""
        for window, entry in self.rate_entries:
            window.correct(entry, tokens)


@dataclass
class TenantCosts:
    budget: Budget
    overrides: dict[str, Price] = field(default_factory=dict)
    reservations: dict[str, Reservation] = field(default_factory=dict)
    closed: OrderedDict[str, str] = field(default_factory=OrderedDict)  # reservation id -> final state
    # idempotency key -> (first result, its commit, what the record said: a retry must say the same)
    keys: OrderedDict[str, tuple[dict[str, Any], asyncio.Future, tuple]] = field(default_factory=OrderedDict)
    pending_keys: dict[str, str] = field(default_factory=dict)  # gateway keys whose call is in flight
    levels: dict[tuple[str, str], Level] = field(default_factory=dict)  # (scope, key) -> its level
    levels_roll_at: float = math.inf  # the end of the earliest level period
    look_up_keys: bool = False  # it re-sent a stored key: its unknown keys are looked up before a commit
    # Levels being set, whose period spend is still being read from SQL: they count what happens meanwhile.
    counting: dict[tuple[str, str], list[Level]] = field(default_factory=dict)

    # What the open reservations hold under each (scope, key) their tags name, level or not. Kept
    # apart from the Level objects (which a failed set or delete may swap back), it changes exactly
    # when a reservation enters or leaves `reservations`, so a level's `reserved` cannot drift.
    held: dict[tuple[str, str], int] = field(default_factory=dict)

    def levels_of(self, tags: Tags) -> list[Level]:
        return [self.level(name) for name in level_keys(tags) if name in self.levels]

    def level(self, name: tuple[str, str]) -> Level:
        level = self.levels[name]
        level.reserved = self.held.get(name, 0)
        return level

    def hold(self, reservation: Reservation, sign: int = 1) -> None:
        for name in level_keys(reservation.tags):
            left = self.held.get(name, 0) + sign * reservation.amount
            if left:
                self.held[name] = left
            else:
                self.held.pop(name, None)


@dataclass
class LedgerChange:
    """One operation's rows for the group commit. Budget and level rows are snapshotted when the
    batch is written, so they hold every change committed with it."""

    rows: LedgerWrites
    levels: tuple[tuple[str, str], ...] = ()  # levels whose row this operation changed


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
        # Whole tenants per batch: a write snapshots the budgets, which must hold only this batch's changes.
        self._commits: GroupCommit[LedgerChange] = GroupCommit(self._write, LedgerError, whole_tenant=True)
        self.tenants: ActivationTable[TenantCosts] = ActivationTable(
            self._load, idle_seconds=options.idle_seconds, max_tenants=options.max_tenants,
            busy=self._commits.in_flight.__contains__,
        )
        # Keys not in memory (recorded before this activation, or forgotten) are looked up in SQL;
        # concurrent operations share one query.
        self._key_lookups: Batcher[tuple[str, list[str]], dict[str, dict]] = Batcher(self._lookup_keys)
        self._alerts = BackgroundPublisher(notify, "budget alert")
        self._stamps = Stamps(clock)
        self.alerts_sent = 0

    def _stamp(self) -> datetime:
        """A usage time later than every earlier one, to the microsecond the databases keep: a
        level being set reads the spend before its own stamp and counts what comes after."""
        return EPOCH + timedelta(microseconds=self._stamps.next())

    # -- activation and commit --------------------------------------------------------------------
    async def _load(self, tenants: list[str]) -> dict[str, TenantCosts]:
        loaded = await self.store.load(tenants)
        month = month_of(self.clock())
        fresh = [t for t, found in loaded.items() if not found["budget"] or found["budget"]["month"] != month]
        spent = await self.store.month_spend(fresh, month_start(self.clock()))
        states = {}
        for tenant, found in loaded.items():
            reservations = {row["id"]: Reservation.from_row(row) for row in found["reservations"]}
            row = found["budget"]
            if tenant in fresh:  # no row for this month yet: the month's spend is its usage so far
                used, overrun = spent.get(tenant, (0, 0))
                last = Budget.from_row(row) if row else Budget(month)
                budget = last.next_month(month, sum(r.amount for r in reservations.values()))
                budget.used, budget.overrun = used, overrun
            else:
                budget = Budget.from_row(row)
            state = TenantCosts(budget, reservations=reservations)
            for reservation in reservations.values():
                state.hold(reservation)
            for row in found["overrides"]:
                state.overrides[row["model"].lower()] = Price(
                    row["input_per_token"], row["output_per_token"], row["cached_per_token"]
                )
            if found["levels"]:
                await self._load_levels(tenant, state, found["levels"])
            states[tenant] = state
        return states

    async def _load_levels(self, tenant: str, state: TenantCosts, rows: list[dict[str, Any]]) -> None:
        """Each level's period spend is its recorded usage; what it holds, its open reservations."""
        now = self.clock()
        levels = [Level.from_row(row, now) for row in rows]
        spent = await self.store.level_spend(
            tenant, [(COLUMNS.get(lv.scope), lv.key, period_bounds(lv.settings.period, now)[0]) for lv in levels])
        for level, (used, overrun) in zip(levels, spent):
            level.used, level.overrun = used, overrun
            state.levels[level.name] = level
        state.levels_roll_at = self._roll_time(state)

    def _roll_time(self, state: TenantCosts) -> float:
        now = self.clock()
        ends = [period_bounds(lv.settings.period, now)[1].timestamp() for lv in state.levels.values()]
        return min(ends, default=math.inf)

    async def _lookup_keys(self, items: list[tuple[str, list[str]]]) -> list[dict[str, dict]]:
        found = await self.store.usage_by_keys({(t, k) for t, keys in items for k in keys})
        return [{k: found[(t, k)] for k in keys if (t, k) in found} for t, keys in items]

    async def _state(self, tenant: str) -> TenantCosts:
        state = (await self.tenants.activate([tenant]))[tenant]
        self._roll_month(state)
        if self.clock() >= state.levels_roll_at:
            self._roll_levels(state)
        return state

    def _roll_levels(self, state: TenantCosts) -> None:
        """A new period starts each level at zero, still holding the open reservations. A new
        object, so an operation of the last period that undoes itself cannot touch this one."""
        now = self.clock()
        for name, level in list(state.levels.items()):
            current = period_id(level.settings.period, now)
            if level.period_id != current:
                state.levels[name] = level.next_period(current)
        state.levels_roll_at = self._roll_time(state)

    def _roll_month(self, state: TenantCosts) -> None:
        month = month_of(self.clock())
        if state.budget.month < month:
            state.budget = state.budget.next_month(month, sum(r.amount for r in state.reservations.values()))

    async def _write(self, pending: list[Pending[LedgerChange]]) -> None:
        merged = LedgerWrites()
        for item in pending:
            merged.merge(item.writes.rows)
            state = self.tenants.peek(item.tenant)
            if state is not None:
                merged.budgets[(item.tenant, state.budget.month)] = state.budget.row(item.tenant)
                for name in item.writes.levels:
                    level = state.levels.get(name)
                    merged.levels[(item.tenant, *name)] = level.row(item.tenant) if level else None
        await self.store.write(merged)

    async def _commit(self, tenant: str, writes: LedgerWrites, undo: Callable[[], None],
                      levels: tuple[tuple[str, str], ...] = ()) -> None:
        await self._commits.commit(tenant, LedgerChange(writes, levels), undo)

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
        """The tenant's own monthly budget (costs:admin), inside the operator's cap."""
        state = await self._state(tenant)
        before = state.budget
        amount = round(amount_usd * NANOS)
        if before.cap is not None and amount > before.cap:
            raise LedgerError(422, "budget_above_cap", "the budget is above the monthly cap the operator set",
                              operator_cap=usd(before.cap), requested=usd(amount))
        return await self._change_budget(tenant, state, replace(before, amount=amount, threshold=threshold))

    async def set_cap(self, tenant: str, cap_usd: float | None) -> dict[str, Any]:
        """The operator's hard monthly cap (None lifts it). No tenant token reaches this."""
        state = await self._state(tenant)
        cap = None if cap_usd is None else round(cap_usd * NANOS)
        return await self._change_budget(tenant, state, replace(state.budget, cap=cap))

    async def _change_budget(self, tenant: str, state: TenantCosts, budget: Budget) -> dict[str, Any]:
        before, state.budget = state.budget, budget
        alert = self._check_alert(state)

        def undo() -> None:
            state.budget = before

        await self._commit(tenant, LedgerWrites(), undo)
        self._publish_alert(tenant, alert)
        return state.budget.view()

    async def get_budget(self, tenant: str) -> dict[str, Any]:
        state = await self._state(tenant)
        if state.budget.limit is None:
            raise LedgerError(404, "budget_not_set", "no budget and no operator cap is set for this tenant")
        return state.budget.view()

    async def month(self, tenant: str) -> dict[str, Any]:
        """The month's budget view for the operator, set or not."""
        return (await self._state(tenant)).budget.view()

    def _check_alert(self, state: TenantCosts) -> dict[str, Any] | None:
        budget = state.budget
        limit = budget.limit
        if budget.alert_sent or not limit:
            return None
        if budget.used < budget.threshold * limit:
            return None
        budget.alert_sent = True
        return {**budget.view(), "message": f"LLM spend reached {budget.used / limit:.0%} of the monthly budget"}

    def _publish_alert(self, tenant: str, alert: dict[str, Any] | None) -> None:
        """After the commit that set alert_sent: the flag is durable, so the alert goes out once."""
        if alert is None or self.notify is None:
            return
        self.alerts_sent += 1
        self._alerts.send(tenant, alert)

    def _publish_level_alerts(self, tenant: str, alerts: list[tuple[Level, float]]) -> None:
        """After the commit that stored the levels' alerted thresholds: each goes out once a period."""
        for level, threshold in alerts:
            self._publish_alert(tenant, level.alert(threshold))

    # -- budget levels ----------------------------------------------------------------------------
    async def set_level(self, tenant: str, scope: str, key: str, settings: LevelSettings) -> dict[str, Any]:
        """A budget under the tenant (costs:admin), inside the operator's cap. A new level, or one
        whose period changes, counts the period's recorded usage: whenever it is set, what the
        period already spent counts against it."""
        name = (scope, key)
        with self._commits.in_flight.hold(tenant):  # the tenant stays in memory while its spend is read
            state = await self._state(tenant)
            cap = state.budget.cap
            if cap is not None and settings.amount is not None and settings.amount > cap:
                raise LedgerError(422, "budget_above_cap", "the budget is above the monthly cap the operator set",
                                  operator_cap=usd(cap), requested=usd(settings.amount))
            self._refuse_new_level(state, name)
            current = state.levels.get(name)
            if current is not None and current.settings.period == settings.period:
                level = current  # changed in place: operations in flight undo onto this object
            else:
                level = await self._count_period(tenant, name, settings)
                state = await self._state(tenant)
                self._refuse_new_level(state, name)  # concurrent sets may have filled the quota meanwhile
                current = state.levels.get(name)
                if current is not None:
                    level.window = current.window
            before = (current.settings, current.alerted) if current is not None else None
            level.settings = settings
            state.levels[name] = level
            state.levels_roll_at = self._roll_time(state)
            alerts = [(level, t) for t in level.crossed()]
            added = {t for _, t in alerts}

            def undo() -> None:
                if current is None:
                    if state.levels.get(name) is level:
                        del state.levels[name]
                elif current is level:  # in place: revert only what this set changed and is still its
                    if level.settings is settings:
                        level.settings = before[0]
                    level.alerted = tuple(t for t in level.alerted if t not in added or t in before[1])
                elif state.levels.get(name) is level:
                    state.levels[name] = current  # kept current meanwhile: it was being counted
                state.levels_roll_at = 0.0  # a restored level may belong to a period that has ended

            replaced = current if current is not None and current is not level else None
            with self._counting(state, name, replaced):
                await self._commit(tenant, LedgerWrites(), undo, levels=(name,))
        self._publish_level_alerts(tenant, alerts)
        return state.level(name).view(self.clock()) if name in state.levels else level.view(self.clock())

    def _refuse_new_level(self, state: TenantCosts, name: tuple[str, str]) -> None:
        if name not in state.levels and len(state.levels) >= self.options.max_levels:
            raise LedgerError(429, "quota_exceeded", f"the tenant has {len(state.levels)} budget levels of "
                              f"{self.options.max_levels}; delete one first", limit="budget_levels")

    @contextmanager
    def _counting(self, state: TenantCosts, name: tuple[str, str], level: Level | None) -> Iterator[None]:
        """While a commit that replaced or removed `level` is in flight, usage keeps counting on
        it too: if the commit fails, the level put back has missed nothing."""
        if level is None:
            yield
            return
        counting = state.counting.setdefault(name, [])
        counting.append(level)
        try:
            yield
        finally:
            counting.remove(level)
            if not counting:
                state.counting.pop(name, None)

    async def _count_period(self, tenant: str, name: tuple[str, str], settings: LevelSettings) -> Level:
        """A level with its period's spend: usage stored up to now, read from SQL once every
        commit in flight has finished, plus what is recorded meanwhile (counted as it happens)."""
        state = await self._state(tenant)
        until = self._stamp()  # usage before this is in SQL once the commits in flight end; after it, counted here
        now = until.timestamp()
        level = Level(*name, settings, period_id(settings.period, now))
        counting = state.counting.setdefault(name, [])
        counting.append(level)
        try:
            await self._commits.committed(tenant)
            start = period_bounds(settings.period, now)[0]
            [(used, overrun)] = await self.store.level_spend(tenant, [(COLUMNS.get(name[0]), name[1], start)], until=until)
        finally:
            counting.remove(level)
            if not counting:
                state.counting.pop(name, None)
        if level.period_id != period_id(settings.period, self.clock()):  # a new period began meanwhile
            return await self._count_period(tenant, name, settings)
        level.used += used
        level.overrun += overrun
        return level

    async def delete_level(self, tenant: str, scope: str, key: str) -> None:
        state = await self._state(tenant)
        name = (scope, key)
        if name not in state.levels:
            raise LedgerError(404, "level_not_found", f"no budget level for {scope} {key!r}")
        before = state.levels.pop(name)
        state.levels_roll_at = self._roll_time(state)

        def undo() -> None:
            if name not in state.levels:  # unless a later set put another there
                state.levels[name] = before
            state.levels_roll_at = 0.0

        with self._counting(state, name, before):
            await self._commit(tenant, LedgerWrites(), undo, levels=(name,))

    async def levels(self, tenant: str, scope: str | None = None, key: str | None = None) -> list[dict[str, Any]]:
        state = await self._state(tenant)
        now = self.clock()
        if key is not None:
            if (scope, key) not in state.levels:
                raise LedgerError(404, "level_not_found", f"no budget level for {scope} {key!r}")
            return [state.level((scope, key)).view(now)]
        return [state.level(name).view(now) for name in sorted(state.levels) if scope is None or name[0] == scope]

    def _charge(self, state: TenantCosts, tags: Tags, cost: int, overrun: int = 0):
        """Recorded spend onto every level the tags fall under, and onto levels being counted.
        Returns the thresholds it crossed, its undo and the levels whose rows changed."""
        live = state.levels_of(tags)
        counting = [lv for name in level_keys(tags) for lv in state.counting.get(name, ()) if lv not in live]
        for level in live + counting:
            level.used += cost
            level.overrun += overrun
        alerts = [(level, t) for level in live for t in level.crossed()]

        def undo() -> None:
            for level in live + counting:
                level.used -= cost
                level.overrun -= overrun
            for level, threshold in alerts:  # only what this operation alerted
                level.alerted = tuple(t for t in level.alerted if t != threshold)

        return alerts, undo, tuple({level.name for level, _ in alerts})

    def _refuse_levels(self, state: TenantCosts, amounts: dict[tuple[str, str], int]) -> None:
        """402 naming the first hard level an amount does not fit."""
        for name, amount in amounts.items():
            level = state.level(name) if name in state.levels else None
            if level is not None and level.refuses(amount):
                self.metrics.inc("raytenant_reservations_refused", reason="level_budget_exceeded")
                raise LedgerError(402, "budget_exceeded", f"this does not fit the {level.settings.period}ly budget of "
                                  f"{level.scope} {level.key!r}", level={"scope": level.scope, "key": level.key},
                                  remaining=usd(max(0, level.remaining)), requested=usd(amount))

    def _check_rates(self, levels: list[Level], now: float, tokens: int) -> None:
        for level in levels:
            tpm, rpm = level.settings.tpm, level.settings.rpm
            named = {"level": {"scope": level.scope, "key": level.key}}
            if tpm is not None and tokens > tpm:
                raise LedgerError(422, "exceeds_rate_limit", f"this call reserves {tokens} tokens, more than the "
                                  f"{tpm} tokens per minute of {level.scope} {level.key!r}", limit="tpm", **named)
            wait = level.window.wait_for(now, tokens, tpm, rpm)
            if wait is not None:
                limit, seconds = wait
                self.metrics.inc("raytenant_reservations_refused", reason="rate_limited")
                raise LedgerError(429, "rate_limited", f"over the {limit} of {level.scope} {level.key!r}; retry after "
                                  f"{seconds:.3f} s", limit=limit, retry_after=round(seconds, 3), **named)

    # -- usage ------------------------------------------------------------------------------------
    async def record_usage(self, tenant: str, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Record a batch (all or nothing). A retried idempotency key returns its first result.

        A key this shard does not remember (recorded before the tenant was activated, or forgotten)
        may be in the database. Looking every unknown key up first cost a database round trip
        before each group commit, a quarter of the one-record-per-request rate. So the records
        are written assuming their keys are new, and the usage table's unique key decides: when
        the batch is refused, the keys are looked up and the records run again. A tenant found
        re-sending a stored key looks its keys up first from then on (while it is in memory), so
        its retries do not make other tenants' batches run twice."""
        state = await self._state(tenant)
        keys = [r["idempotency_key"] for r in records if r.get("idempotency_key")]
        unknown = [k for k in keys if k not in state.keys]
        if not unknown or state.look_up_keys or SOLO.get():
            return await self._record_usage(tenant, records, unknown)
        try:
            return await self._record_usage(tenant, records, [])
        except (Refused, LedgerError):
            # Refused by the database (this batch alone, 422, or the batch it joined), or by a
            # budget or a limit: a stored key among these would have answered its first result
            # instead, uncharged. Run again with the keys looked up; the retry joins a new batch.
            return await self._record_usage(tenant, records, unknown)

    async def _record_usage(self, tenant: str, records: list[dict[str, Any]],
                            look_up: list[str]) -> list[dict[str, Any]]:
        state = await self._state(tenant)
        look_up = [k for k in look_up if k not in state.keys]
        if look_up:
            if await self._recall_keys(tenant, state, look_up):
                state.look_up_keys = True
            state = await self._state(tenant)  # a period may have ended during the lookup: roll first
        # From here to the commit nothing awaits: the check and the change are one step.
        priced = [(r, self.price(state, r["model"])) for r in records]
        stamp = self._stamp()
        results: list[dict[str, Any] | None] = []
        waits: list[asyncio.Future] = []
        rows, new_keys, total = [], [], 0
        commit_done = asyncio.get_running_loop().create_future()
        for record, price in priced:
            key = record.get("idempotency_key")
            if key and key in state.keys:
                first, done, said = state.keys[key]
                if said != _fingerprint(record):
                    raise LedgerError(409, "idempotency_mismatch", "this idempotency_key was used with a different "
                                      "record; nothing was recorded", idempotency_key=key)
                results.append({**first, "duplicate": True})
                waits.append(done)
                continue
            cost = price.cost_nanos(record["input_tokens"], record["output_tokens"], record.get("cached_tokens", 0))
            total += cost
            row = _usage_row(tenant, record, cost, stamp)
            rows.append(row)
            result = _usage_result(row, duplicate=False)
            results.append(result)
            if key:
                state.keys[key] = (result, commit_done, _fingerprint(record))
                new_keys.append(key)
        budget = state.budget
        per_level: dict[tuple[str, str], int] = {}
        for row in rows:
            for name in level_keys(_row_tags(row)):
                per_level[name] = per_level.get(name, 0) + row["cost_nanos"]
        try:
            if rows and not budget.admits(total):
                raise LedgerError(402, "budget_exceeded", "this usage would exceed the monthly budget",
                                  remaining=usd(max(0, budget.remaining)), requested=usd(total))
            self._refuse_levels(state, per_level)
        except LedgerError:
            for key in new_keys:
                del state.keys[key]
            raise
        budget.used += total
        alert = self._check_alert(state)
        charges = [self._charge(state, _row_tags(row), row["cost_nanos"]) for row in rows]
        level_alerts = [a for alerts, _, _ in charges for a in alerts]
        self._forget_old_keys(state)

        def undo() -> None:
            budget.used -= total
            if alert is not None:
                budget.alert_sent = False
            for _, undo_charge, _ in reversed(charges):
                undo_charge()
            for key in new_keys:
                state.keys.pop(key, None)

        try:
            if rows:
                await self._commit(tenant, LedgerWrites(usage=rows), undo,
                                   levels=tuple({name for _, _, names in charges for name in names}))
            commit_done.set_result(None)
        except BaseException as error:
            commit_done.set_exception(error)
            commit_done.exception()  # mark retrieved; duplicates waiting on it get the error
            raise
        self._measure(rows, budget)
        for wait in waits:
            await wait  # a duplicate is answered only once its first record is committed
        self._publish_alert(tenant, alert)
        self._publish_level_alerts(tenant, level_alerts)
        return results

    async def _recall_keys(self, tenant: str, state: TenantCosts, keys: list[str]) -> int:
        """Keys recorded before this activation (or forgotten), from SQL into memory, each with
        its first result and what its record said. Returns how many were stored."""
        if not keys:
            return 0
        found = await self._key_lookups.submit((tenant, keys))
        for key, row in found.items():
            if key not in state.keys:
                done = asyncio.get_running_loop().create_future()
                done.set_result(None)
                state.keys[key] = (_usage_result(row, duplicate=True), done, _fingerprint(row))
        return len(found)

    def _measure(self, rows: list[dict[str, Any]], budget: Budget | None) -> None:
        """Metrics of stored usage: records and cost by model, and where the budget stands."""
        for row in rows:
            self.metrics.inc("raytenant_ledger_records", model=row["model"])
            self.metrics.inc("raytenant_ledger_cost_usd", row["cost_nanos"] / NANOS, model=row["model"])
        if rows and budget.limit:
            self.metrics.observe("raytenant_budget_utilisation", budget.used / budget.limit)

    def _forget_old_keys(self, state: TenantCosts) -> None:
        while len(state.keys) > self.options.remembered_keys:
            key, (_, done, _) = next(iter(state.keys.items()))
            if not done.done():
                break
            del state.keys[key]

    # -- reservations -----------------------------------------------------------------------------
    async def reserve(self, tenant: str, model: str, input_tokens: int, max_output_tokens: int,
                      ttl: float | None = None, tags: Tags | None = None) -> dict[str, Any]:
        """Hold the worst case of one call: `input_tokens` (the caller's count of its prompt) and
        `max_output_tokens` (which the caller passes to the provider as max_tokens). It must fit
        the tenant's month and every level its tags fall under, budgets and rates, all or nothing."""
        state = await self._state(tenant)
        tags = {name: (tags or {}).get(name) for name in ("engagement", "user", "agent")}
        amount = self.price(state, model).cost_nanos(input_tokens, max_output_tokens)
        budget = state.budget
        if not budget.admits(amount):
            self.metrics.inc("raytenant_reservations_refused", reason="budget_exceeded")
            raise LedgerError(402, "budget_exceeded", "the reservation does not fit in the remaining budget",
                              remaining=usd(max(0, budget.remaining)), requested=usd(amount))
        levels = state.levels_of(tags)
        now = self.clock()
        self._refuse_levels(state, {level.name: amount for level in levels})
        tokens = input_tokens + max_output_tokens
        self._check_rates(levels, now, tokens)
        reservation = Reservation(uuid.uuid4().hex, month_of(now), model, amount, now + (ttl or self.options.reservation_ttl),
                                  now, "open", input_tokens, max_output_tokens, tags)
        state.reservations[reservation.id] = reservation
        state.hold(reservation)
        budget.reserved += amount
        reservation.rate_entries = [(level.window, level.window.add(now, tokens)) for level in levels
                                    if level.settings.tpm is not None or level.settings.rpm is not None]

        def undo() -> None:
            if state.reservations.pop(reservation.id, None) is not None:
                state.hold(reservation, -1)
            budget.reserved -= amount
            for window, entry in reservation.rate_entries:
                window.remove(entry)

        await self._commit(tenant, LedgerWrites(reservations={reservation.id: reservation.row(tenant)}), undo)
        return {
            "reservation_id": reservation.id,
            "model": model,
            "amount": usd(amount),
            "input_tokens": input_tokens,
            "max_output_tokens": max_output_tokens,
            "expires_at": datetime.fromtimestamp(reservation.expires_at, timezone.utc).isoformat(),
            "remaining": usd(budget.remaining) if budget.remaining is not None else None,
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
        undo_closed = self._remember_closed(state, reservation.id, final)
        budget = state.budget
        counted = reservation.month <= budget.month
        if counted:
            budget.reserved -= reservation.amount
        state.hold(reservation, -1)

        def undo() -> None:
            reservation.state = "open"
            state.reservations[reservation.id] = reservation
            undo_closed()
            if counted:
                budget.reserved += reservation.amount
            state.hold(reservation)

        return undo

    def _remember_closed(self, state: TenantCosts, reservation_id: str, final: str) -> Callable[[], None]:
        before = state.closed.get(reservation_id)
        state.closed[reservation_id] = final
        while len(state.closed) > self.options.remembered_keys:
            state.closed.popitem(last=False)

        def undo() -> None:
            if before is None:
                state.closed.pop(reservation_id, None)
            else:
                state.closed[reservation_id] = before

        return undo

    async def _expired(self, tenant: str, state: TenantCosts, reservation_id: str) -> Reservation:
        """A reservation that expired before its settle came: from storage (its bounds and model)."""
        closed = state.closed.get(reservation_id)
        if closed not in (None, "expired"):
            raise LedgerError(409, "reservation_closed", f"the reservation is already {closed}", state=closed)
        row = await self.store.reservation(tenant, reservation_id)
        state = await self._state(tenant)  # the await may have let a concurrent settle close it
        closed = state.closed.get(reservation_id) or (row["state"] if row else None)
        if reservation_id in state.reservations:
            return state.reservations[reservation_id]
        if row is None:
            raise LedgerError(404, "reservation_not_found", "no reservation with this id")
        if closed != "expired":
            raise LedgerError(409, "reservation_closed", f"the reservation is already {closed}", state=closed)
        return Reservation.from_row({**row, "state": "expired"})

    async def settle(self, tenant: str, reservation_id: str, usage: dict[str, Any], *, enforce_bound: bool = True,
                     idempotency_key: str | None = None, request_hash: str | None = None,
                     reply: dict[str, Any] | None = None) -> dict[str, Any]:
        """Record what the call really used. Output beyond the reservation's bound is refused (the
        provider was told max_tokens, so only a false report exceeds it); input beyond the estimate
        is recorded as an overrun. A settle after expiry records the real usage, flagged late."""
        state = await self._state(tenant)
        reservation = state.reservations.get(reservation_id)
        if reservation is None:
            reservation = await self._expired(tenant, state, reservation_id)
            state = await self._state(tenant)
        late = reservation.state == "expired"
        bound = reservation.max_output_tokens
        if enforce_bound and bound is not None and usage["output_tokens"] > bound:
            raise LedgerError(422, "usage_exceeds_reservation", "output_tokens exceed the reservation's max_output_tokens; "
                              "nothing was recorded", max_output_tokens=bound, output_tokens=usage["output_tokens"])
        price = self.price(state, reservation.model)
        cost = price.cost_nanos(usage["input_tokens"], usage["output_tokens"], usage.get("cached_tokens", 0))
        overrun = max(0, cost - reservation.amount)
        if late:
            reservation.state = "settled"
            undo_close = self._remember_closed(state, reservation.id, "settled")
        else:
            undo_close = self._close(state, reservation, "settled")
        budget = state.budget
        budget.used += cost
        budget.overrun += overrun
        alert = self._check_alert(state)
        # Charged to the levels it was reserved under (a tag the reservation lacks may come with the usage).
        tags = {**{k: usage.get(k) for k in ("engagement", "user", "agent")}, **{k: v for k, v in reservation.tags.items() if v}}
        level_alerts, undo_levels, changed = self._charge(state, tags, cost, overrun)
        reserved_tokens = (reservation.input_tokens or 0) + (reservation.max_output_tokens or 0)
        reservation.correct_rates(usage["input_tokens"] + usage["output_tokens"])
        row = _usage_row(tenant, {**usage, **tags, "model": reservation.model, "idempotency_key": idempotency_key},
                         cost, self._stamp(), reservation_id, overrun=overrun, late=late)
        row.update(request_hash=request_hash, reply=reply)
        commit_done = asyncio.get_running_loop().create_future()
        if idempotency_key:
            state.keys[idempotency_key] = ({**_usage_result(row, duplicate=False), "reply": reply}, commit_done,
                                           ("gateway", request_hash))

        def undo() -> None:
            budget.used -= cost
            budget.overrun -= overrun
            if alert is not None:
                budget.alert_sent = False
            if late:
                reservation.state = "expired"
            if idempotency_key:
                state.keys.pop(idempotency_key, None)
            undo_levels()
            reservation.correct_rates(reserved_tokens)
            undo_close()

        try:
            await self._commit(tenant, LedgerWrites(usage=[row], reservations={reservation.id: reservation.row(tenant)}),
                               undo, levels=changed)
            commit_done.set_result(None)
        except BaseException as error:
            commit_done.set_exception(error)
            commit_done.exception()  # retrieved: a retry waiting on it gets the error
            raise
        self._measure([row], budget)
        if overrun:
            self.metrics.inc("raytenant_ledger_overruns", model=reservation.model)
        self._publish_alert(tenant, alert)
        self._publish_level_alerts(tenant, level_alerts)
        return {
            **_usage_result(row, duplicate=False),
            "reservation_id": reservation.id,
            "reserved": usd(reservation.amount),
            "released": usd(max(0, reservation.amount - cost)) if not late else 0.0,
            "overrun": usd(overrun),
            "late": late,
        }

    # -- gateway ----------------------------------------------------------------------------------
    async def gateway_begin(self, tenant: str, model: str, input_tokens: int, max_output_tokens: int,
                            key: str | None, request_hash: str, tags: Tags | None = None) -> dict[str, Any]:
        """Reserve one gateway call. With an idempotency key: a finished call's stored answer
        (`{"reply": ...}`), 409 while the same key is in flight or was used for another request."""
        state = await self._state(tenant)
        said = ("gateway", request_hash)
        if key:
            if key not in state.keys and key not in state.pending_keys:
                await self._recall_keys(tenant, state, [key])
            if key in state.pending_keys:
                raise LedgerError(409, "idempotency_in_progress", "a call with this Idempotency-Key is in flight")
            if key in state.keys:
                first, done, fingerprint = state.keys[key]
                if fingerprint != said:
                    raise LedgerError(409, "idempotency_mismatch", "this Idempotency-Key was used for another request")
                try:
                    await done
                except Exception as error:  # the first call's record did not commit: nothing to replay
                    raise LedgerError(503, "ledger_unavailable", "the first call with this key was not recorded; "
                                      "retry") from error
                return {"reply": first.get("reply"), "duplicate": True}
            state.pending_keys[key] = request_hash
        try:
            return await self.reserve(tenant, model, input_tokens, max_output_tokens, tags=tags)
        except BaseException:
            if key:
                state.pending_keys.pop(key, None)
            raise

    async def gateway_finish(self, tenant: str, reservation_id: str, usage: dict[str, Any], key: str | None,
                             request_hash: str, reply: dict[str, Any] | None) -> dict[str, Any]:
        """Settle a gateway call with the provider's usage and keep its answer for retries. The
        provider enforced max_tokens; if it still reports more, that is recorded as an overrun."""
        try:
            return await self.settle(tenant, reservation_id, usage, enforce_bound=False, idempotency_key=key,
                                     request_hash=request_hash, reply=reply)
        finally:
            if key:
                (await self._state(tenant)).pending_keys.pop(key, None)

    async def gateway_abort(self, tenant: str, reservation_id: str, key: str | None) -> dict[str, Any]:
        """A provider call that failed costs nothing: its hold is released."""
        try:
            return await self.release(tenant, reservation_id)
        finally:
            if key:
                (await self._state(tenant)).pending_keys.pop(key, None)

    async def release(self, tenant: str, reservation_id: str) -> dict[str, Any]:
        state = await self._state(tenant)
        reservation = self._open(state, reservation_id)
        undo_close = self._close(state, reservation, "released")
        reservation.correct_rates(0)  # a released call used no tokens: its TPM share is freed

        def undo() -> None:
            reservation.correct_rates((reservation.input_tokens or 0) + (reservation.max_output_tokens or 0))
            undo_close()

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
            "overrun_cost": usd(raw["total"]["overrun_nanos"]),
            "overrun_records": raw["total"]["overrun_records"],
            "late_records": raw["total"]["late_records"],
            **{
                name: {key: {"cost": usd(m["cost_nanos"]), "tokens": m["tokens"], "requests": m["requests"]}
                       for key, m in raw[name].items()}
                for name in ("by_model", "by_agent", "by_flow", "by_day", "by_engagement", "by_user")
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
        limit = budget.limit
        if limit is not None:
            moment = datetime.fromtimestamp(now, timezone.utc)
            first = month_start(now)
            next_month = (first + timedelta(days=32)).replace(day=1)
            elapsed = max((moment - first).total_seconds(), 3600.0)
            projected = budget.used * (next_month - first).total_seconds() / elapsed
            advice.append({
                "type": "burn_rate", "month": budget.month, "spent": usd(budget.used),
                "projected_month_end": usd(round(projected)), "budget": usd(limit),
                "projected_utilization": round(projected / limit, 3) if limit else None,
                "priority": "high" if projected > limit else "low",
            })
        return {"window_days": 30, "recommendations": advice}

    async def forget(self, tenant: str) -> bool:
        """Drop the tenant from this shard's memory (its data was purged, or imported): its next
        use loads what storage holds."""
        return self.tenants.forget(tenant)

    def stats(self) -> dict[str, Any]:
        return {"active_tenants": len(self.tenants), "commits": self._commits.flushes, "isolated_commits": self._commits.isolations, "alerts_sent": self.alerts_sent}


def _fingerprint(record: dict[str, Any]) -> tuple:
    """What an idempotent retry must repeat: the same call, counted the same way (for a gateway
    call, the same request)."""
    if record.get("request_hash"):
        return ("gateway", record["request_hash"])
    return tuple(record.get(name) or 0 if name.endswith("tokens") else record.get(name)
                 for name in ("model", "input_tokens", "output_tokens", "cached_tokens", "agent", "task", "flow_id"))


def _row_tags(row: dict[str, Any]) -> Tags:
    return {"engagement": row["engagement"], "user": row["user_id"], "agent": row["agent"]}


def _usage_row(tenant: str, record: dict[str, Any], cost: int, ts: datetime, reservation_id: str | None = None, *,
               overrun: int = 0, late: bool = False):
    return {
        "request_hash": None, "reply": None,
        "overrun_nanos": overrun, "late": late, "user_id": record.get("user"), "engagement": record.get("engagement"),
        "tenant": tenant, "model": record["model"], "input_tokens": record["input_tokens"],
        "output_tokens": record["output_tokens"], "cached_tokens": record.get("cached_tokens", 0), "cost_nanos": cost,
        "agent": record.get("agent"), "task": record.get("task"), "flow_id": record.get("flow_id"),
        "idempotency_key": record.get("idempotency_key"), "reservation_id": reservation_id,
        "ts": ts,
    }


def _usage_result(row: dict[str, Any], *, duplicate: bool) -> dict[str, Any]:
    return {
        "model": row["model"], "cost": usd(row["cost_nanos"]), "input_tokens": row["input_tokens"],
        "output_tokens": row["output_tokens"], "cached_tokens": row["cached_tokens"],
        "idempotency_key": row["idempotency_key"], "duplicate": duplicate,
        "overrun": bool(row.get("overrun_nanos")), "late": bool(row.get("late")),
        **({"reply": row["reply"]} if row.get("reply") is not None else {}),
    }
