"""Budget levels under a tenant: per engagement, per user, per agent (and tenant-wide), each with a
period (`month` or `day`, UTC calendar), a mode (`hard` refuses, `soft` only alerts), alert
thresholds that fire once per period, and TPM/RPM limits on reservations.

Plain state, no I/O: the ledger shard owns a tenant's levels and changes them in the same
no-await step as the tenant's budget, so a reservation is admitted against every level it falls
under, all or nothing, and one shard per tenant makes every limit cluster-wide.

Invariants the ledger keeps: a level's `used` is the period's recorded usage whose tags match the
level (so it is recomputed from SQL on activation), and its `reserved` is the sum of the open
reservations whose tags match it. Rate windows live only in memory: when a tenant's shard moves,
its windows start empty.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from actors.ledger.prices import usd

SCOPES = ("tenant", "engagement", "user", "agent")
TENANT_KEY = "all"  # the tenant-wide level's key: it covers every call
PERIODS = ("month", "day")
MODES = ("hard", "soft")
WINDOW_SECONDS = 60.0
# Which usage column a scope's key is matched against (the tenant scope matches every row).
COLUMNS = {"engagement": "engagement", "user": "user_id", "agent": "agent"}

Tags = dict[str, str | None]  # {"engagement": ..., "user": ..., "agent": ...}


def period_id(period: str, ts: float) -> str:
    moment = datetime.fromtimestamp(ts, timezone.utc)
    return moment.strftime("%Y-%m-%d" if period == "day" else "%Y-%m")


def period_bounds(period: str, ts: float) -> tuple[datetime, datetime]:
    """The UTC period holding `ts`: [start, end)."""
    moment = datetime.fromtimestamp(ts, timezone.utc)
    start = moment.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "day":
        return start, start + timedelta(days=1)
    start = start.replace(day=1)
    return start, (start + timedelta(days=32)).replace(day=1)


def level_keys(tags: Tags) -> list[tuple[str, str]]:
    """Every level a call with these tags falls under, whether or not it is configured."""
    keys = [("tenant", TENANT_KEY)]
    keys += [(scope, tags[scope]) for scope in ("engagement", "user", "agent") if tags.get(scope)]
    return keys


@dataclass(frozen=True)
class LevelSettings:
    amount: int | None  # nanos per period; None: only rate limits
    period: str = "month"
    mode: str = "hard"
    thresholds: tuple[float, ...] = (0.8,)
    tpm: int | None = None  # tokens reserved per minute
    rpm: int | None = None  # reservations per minute

    def to_dict(self) -> dict[str, Any]:
        return {
            "amount": usd(self.amount) if self.amount is not None else None, "period": self.period,
            "mode": self.mode, "thresholds": list(self.thresholds), "tpm": self.tpm, "rpm": self.rpm,
        }


@dataclass
class WindowEntry:
    ts: float
    tokens: int
    live: bool = True


@dataclass
class RateWindow:
    """Reservations and their tokens in the last minute, with running totals. A settle corrects
    its entry's tokens from the reserved worst case to what the call really used."""

    entries: deque[WindowEntry] = field(default_factory=deque)
    tokens: int = 0

    def evict(self, now: float) -> None:
        while self.entries and self.entries[0].ts <= now - WINDOW_SECONDS:
            entry = self.entries.popleft()
            entry.live = False
            self.tokens -= entry.tokens

    def wait_for(self, now: float, tokens: int, tpm: int | None, rpm: int | None) -> tuple[str, float] | None:
        """None if one more reservation of `tokens` fits; else (limit, seconds until it would)."""
        self.evict(now)
        if rpm is not None and len(self.entries) + 1 > rpm:
            leaving = self.entries[len(self.entries) - rpm]  # once it leaves, one more fits
            return "rpm", leaving.ts + WINDOW_SECONDS - now
        if tpm is not None and self.tokens + tokens > tpm:
            excess = self.tokens + tokens - tpm
            for entry in self.entries:
                excess -= entry.tokens
                if excess <= 0:
                    return "tpm", entry.ts + WINDOW_SECONDS - now
            return "tpm", WINDOW_SECONDS
        return None

    def add(self, now: float, tokens: int) -> WindowEntry:
        entry = WindowEntry(now, tokens)
        self.entries.append(entry)
        self.tokens += tokens
        return entry

    def remove(self, entry: WindowEntry) -> None:
        if entry.live:
            entry.live = False
            self.entries.remove(entry)
            self.tokens -= entry.tokens

    def correct(self, entry: WindowEntry, tokens: int) -> None:
        if entry.live:
            self.tokens += tokens - entry.tokens
        entry.tokens = tokens


@dataclass
class Level:
    scope: str
    key: str
    settings: LevelSettings
    period_id: str
    used: int = 0
    reserved: int = 0  # set from the tenant's tally of open reservations whenever it is read
    overrun: int = 0
    alerted: tuple[float, ...] = ()  # thresholds already alerted this period (durable)
    window: RateWindow = field(default_factory=RateWindow)

    @property
    def name(self) -> tuple[str, str]:
        return self.scope, self.key

    @property
    def remaining(self) -> int | None:
        amount = self.settings.amount
        return None if amount is None else amount - self.used - self.reserved

    def refuses(self, amount: int) -> bool:
        """A hard level at or over its amount admits nothing more (an overrun can take it there)."""
        limit = self.settings.amount
        if self.settings.mode != "hard" or limit is None:
            return False
        return self.used >= limit or amount > limit - self.used - self.reserved

    def crossed(self) -> list[float]:
        """Thresholds reached and not alerted yet this period; marks them alerted."""
        amount = self.settings.amount
        if not amount:
            return []
        new = [t for t in self.settings.thresholds if t not in self.alerted and self.used >= t * amount]
        if new:
            self.alerted = tuple(sorted({*self.alerted, *new}))
        return new

    def next_period(self, pid: str) -> "Level":
        return Level(self.scope, self.key, self.settings, pid, 0, self.reserved, 0, (), self.window)

    def row(self, tenant: str) -> dict[str, Any]:
        s = self.settings
        return {
            "tenant": tenant, "scope": self.scope, "key": self.key, "amount_nanos": s.amount, "period": s.period,
            "mode": s.mode, "thresholds": list(s.thresholds), "tpm": s.tpm, "rpm": s.rpm,
            "alert_period": self.period_id, "alerted": list(self.alerted),
        }

    @classmethod
    def from_row(cls, row: dict[str, Any], now: float) -> "Level":
        settings = LevelSettings(row["amount_nanos"], row["period"], row["mode"], tuple(row["thresholds"]),
                                 row["tpm"], row["rpm"])
        pid = period_id(settings.period, now)
        alerted = tuple(row["alerted"] or ()) if row["alert_period"] == pid else ()
        return cls(row["scope"], row["key"], settings, pid, alerted=alerted)

    def view(self, now: float) -> dict[str, Any]:
        amount, remaining = self.settings.amount, self.remaining
        self.window.evict(now)
        return {
            "scope": self.scope, "key": self.key, **self.settings.to_dict(), "period_id": self.period_id,
            "used": usd(self.used), "reserved": usd(self.reserved),
            "remaining": usd(remaining) if remaining is not None else None,
            "utilization": round(self.used / amount, 6) if amount else None,
            "overrun": usd(self.overrun), "over_limit": amount is not None and self.used >= amount,
            "alerted": list(self.alerted),
            "last_minute": {"requests": len(self.window.entries), "tokens": self.window.tokens},
        }

    def alert(self, threshold: float) -> dict[str, Any]:
        amount = self.settings.amount or 0
        return {
            "level": {"scope": self.scope, "key": self.key}, "period": self.settings.period,
            "period_id": self.period_id, "mode": self.settings.mode, "threshold": threshold,
            "amount": usd(amount), "used": usd(self.used), "utilization": round(self.used / amount, 6) if amount else None,
            "message": f"LLM spend of {self.scope} {self.key!r} reached {threshold:.0%} of its {self.settings.period}ly budget",
        }
