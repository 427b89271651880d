"""Budget levels under a tenant, on the real databases without Ray: all-or-nothing admission across
levels under concurrency, hard and soft modes, thresholds alerting once per period, day and month
periods on a controlled clock, spend counted whenever a level is set, TPM/RPM windows, restarts."""
from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone

import pytest

from actors.ledger.levels import LevelSettings, RateWindow
from serve_app.schemas.base import validate
from serve_app.schemas.costs import LevelBody


def validate_settings(body: dict) -> LevelSettings:
    return validate(LevelBody, body).settings()
from actors.ledger.core import LedgerError
from actors.ledger.prices import NANOS
from storage.models import BudgetLevelRow, ReservationRow
from tests.ledger_support import Clock, Ledger, record

# big-model: 1e-5 USD per input token, 3e-5 per output token.
ALICE = {"user": "alice", "engagement": "acme-audit", "agent": "mapper"}


def settings(amount: float | None = None, **extra) -> LevelSettings:
    return validate_settings({**({"amount": amount} if amount is not None else {}), **extra})


@pytest.fixture
async def ledger(db_url):
    found = Ledger(db_url, Clock(datetime(2026, 3, 15, 12, tzinfo=timezone.utc)))
    yield found
    await asyncio.sleep(0)
    await found.engine.dispose()


async def test_a_reservation_must_fit_every_level_all_or_nothing(ledger, tenant):
    core = ledger.core
    await core.set_level(tenant, "engagement", "acme-audit", settings(1.0))
    await core.set_level(tenant, "agent", "mapper", settings(0.05))
    # 1000 in + 1000 out = $0.04 each: one fits the agent's $0.05, a second does not.
    first = await core.reserve(tenant, "big-model", 1000, 1000, tags=ALICE)
    with pytest.raises(LedgerError) as refused:
        await core.reserve(tenant, "big-model", 1000, 1000, tags=ALICE)
    assert (refused.value.status, refused.value.code) == (402, "budget_exceeded")
    assert refused.value.details["level"] == {"scope": "agent", "key": "mapper"}
    # Nothing of the refused call is held anywhere: not on the engagement, not on the month.
    levels = {(v["scope"], v["key"]): v for v in await core.levels(tenant)}
    assert levels[("engagement", "acme-audit")]["reserved"] == 0.04
    assert levels[("agent", "mapper")]["reserved"] == 0.04
    assert (await core.month(tenant))["reserved"] == 0.04
    # Another agent of the same engagement is not limited by the mapper's level.
    other = await core.reserve(tenant, "big-model", 1000, 1000, tags={**ALICE, "agent": "planner"})
    await core.settle(tenant, first["reservation_id"], {"input_tokens": 500, "output_tokens": 100, **ALICE})
    await core.release(tenant, other["reservation_id"])
    levels = {(v["scope"], v["key"]): v for v in await core.levels(tenant)}
    assert levels[("agent", "mapper")]["used"] == 0.008 and levels[("agent", "mapper")]["reserved"] == 0
    assert levels[("engagement", "acme-audit")]["used"] == 0.008
    stored = await ledger.rows(tenant, ReservationRow)
    assert {(r["agent"], r["user_id"], r["engagement"]) for r in stored} == {
        ("mapper", "alice", "acme-audit"), ("planner", "alice", "acme-audit")}


async def test_concurrent_reservations_never_overspend_a_level(ledger, tenant):
    core = ledger.core
    await core.set_level(tenant, "user", "alice", settings(0.4))  # fits exactly 10 calls of $0.04

    async def attempt():
        try:
            return await core.reserve(tenant, "big-model", 1000, 1000, tags=ALICE)
        except LedgerError as error:
            assert error.code == "budget_exceeded"
            return None

    admitted = [r for r in await asyncio.gather(*(attempt() for _ in range(60))) if r]
    assert len(admitted) == 10
    [view] = await core.levels(tenant, "user", "alice")
    assert view["reserved"] == 0.4 and view["remaining"] == 0


async def test_a_soft_level_alerts_at_each_threshold_once_per_period(ledger, tenant):
    core = ledger.core
    await core.set_level(tenant, "user", "alice", settings(0.1, period="day", mode="soft", thresholds=[0.5, 0.8, 1.0]))
    for _ in range(3):  # 3 x $0.04: 40 %, 80 %, 120 % of $0.10 -- never refused, being soft
        await core.record_usage(tenant, [record(inp=1000, out=1000, user="alice")])
    await asyncio.sleep(0.05)
    alerts = [a for t, a in ledger.alerts if t == tenant and "level" in a]
    assert [a["threshold"] for a in alerts] == [0.5, 0.8, 1.0]
    assert alerts[0]["level"] == {"scope": "user", "key": "alice"} and alerts[0]["period_id"] == "2026-03-15"
    [view] = await core.levels(tenant, "user", "alice")
    assert view["over_limit"] and view["used"] == 0.12 and view["alerted"] == [0.5, 0.8, 1.0]
    # A restart keeps what was alerted this period: no alert goes out twice.
    core = ledger.restart()
    await core.record_usage(tenant, [record(inp=100, out=0, user="alice")])
    await asyncio.sleep(0.05)
    assert len([a for t, a in ledger.alerts if t == tenant and "level" in a]) == 3
    # The next UTC day starts at zero and alerts again.
    ledger.clock.set(datetime(2026, 3, 16, 0, 0, 1, tzinfo=timezone.utc))
    await core.record_usage(tenant, [record(inp=1000, out=2000, user="alice")])  # $0.07: 70 %
    await asyncio.sleep(0.05)
    [view] = await core.levels(tenant, "user", "alice")
    assert view["period_id"] == "2026-03-16" and view["used"] == 0.07
    assert [a["threshold"] for t, a in ledger.alerts if t == tenant and "level" in a] == [0.5, 0.8, 1.0, 0.5]


async def test_a_hard_day_level_refuses_until_the_next_day_and_a_month_level_does_not_roll(ledger, tenant):
    core = ledger.core
    await core.set_level(tenant, "engagement", "acme-audit", settings(0.05, period="day"))
    await core.set_level(tenant, "user", "alice", settings(1.0, period="month"))
    await core.record_usage(tenant, [record(inp=1000, out=1000, user="alice", engagement="acme-audit")])
    with pytest.raises(LedgerError) as refused:
        await core.record_usage(tenant, [record(inp=1000, out=1000, user="alice", engagement="acme-audit")])
    assert refused.value.details["level"] == {"scope": "engagement", "key": "acme-audit"}
    held = await core.reserve(tenant, "big-model", 100, 100, tags=ALICE)  # $0.004 still fits today
    ledger.clock.set(datetime(2026, 3, 16, 9, tzinfo=timezone.utc))
    await core.record_usage(tenant, [record(inp=1000, out=1000, user="alice", engagement="acme-audit")])
    levels = {(v["scope"], v["key"]): v for v in await core.levels(tenant)}
    assert levels[("engagement", "acme-audit")]["used"] == 0.04  # today's only
    assert levels[("engagement", "acme-audit")]["reserved"] == 0.004  # the open reservation is carried
    assert levels[("user", "alice")]["used"] == 0.08  # the month's
    await core.settle(tenant, held["reservation_id"], {"input_tokens": 100, "output_tokens": 100, **ALICE})
    assert (await core.levels(tenant, "engagement", "acme-audit"))[0]["reserved"] == 0


async def test_a_level_set_later_counts_the_periods_spend_exactly(ledger, tenant):
    core = ledger.core
    await core.record_usage(tenant, [record(inp=1000, out=1000, agent="mapper")])  # $0.04 before any level
    ledger.clock.now += 1
    # Spend recorded while the level's period spend is being read is counted once, not lost, not twice.
    setting = asyncio.ensure_future(core.set_level(tenant, "agent", "mapper", settings(0.1)))
    racing = [core.record_usage(tenant, [record(inp=100, out=0, agent="mapper")]) for _ in range(20)]
    await asyncio.gather(setting, *racing)
    [view] = await core.levels(tenant, "agent", "mapper")
    expected = 0.04 + 20 * 0.001
    assert view["used"] == pytest.approx(expected)
    [reloaded] = await ledger.restart().levels(tenant, "agent", "mapper")  # recomputed from SQL alone
    assert reloaded["used"] == pytest.approx(expected)
    # Usage whose commit is still in flight when a level is set is in neither SQL nor the count
    # yet: the level waits for it. (Commits are slowed so the read would otherwise come first.)
    write = core.store.write

    async def slow_write(writes):
        await asyncio.sleep(0.2)
        await write(writes)

    core.store.write = slow_write
    in_flight = [asyncio.ensure_future(core.record_usage(tenant, [record(inp=100, out=0, user="zed")])) for _ in range(5)]
    await asyncio.sleep(0.01)
    await core.set_level(tenant, "user", "zed", settings(1.0))
    await asyncio.gather(*in_flight)
    core.store.write = write
    assert (await core.levels(tenant, "user", "zed"))[0]["used"] == pytest.approx(0.005)
    # A hard level already spent past admits nothing more.
    await core.set_level(tenant, "agent", "mapper", settings(0.05))
    with pytest.raises(LedgerError):
        await core.reserve(tenant, "big-model", 10, 10, tags={"agent": "mapper"})


async def test_restart_recounts_used_and_held_from_storage(ledger, tenant):
    core = ledger.core
    await core.set_level(tenant, "tenant", "all", settings(1.0, thresholds=[0.5]))
    await core.set_level(tenant, "user", "alice", settings(1.0))
    held = await core.reserve(tenant, "big-model", 1000, 1000, tags=ALICE)
    await core.record_usage(tenant, [record(inp=2000, out=0, user="alice")])
    before = {(v["scope"], v["key"]): (v["used"], v["reserved"]) for v in await core.levels(tenant)}
    core = ledger.restart()
    after = {(v["scope"], v["key"]): (v["used"], v["reserved"]) for v in await core.levels(tenant)}
    assert before == after == {("tenant", "all"): (0.02, 0.04), ("user", "alice"): (0.02, 0.04)}
    await core.settle(tenant, held["reservation_id"], {"input_tokens": 10, "output_tokens": 10, **ALICE})
    assert (await core.levels(tenant, "user", "alice"))[0]["reserved"] == 0


async def test_rpm_and_tpm_limit_reservations_with_a_retry_time(ledger, tenant):
    core = ledger.core
    await core.set_level(tenant, "agent", "mapper", settings(rpm=2))
    await core.set_level(tenant, "user", "alice", settings(tpm=5000))
    tags = {"agent": "mapper", "user": "bob"}
    a = await core.reserve(tenant, "big-model", 100, 100, tags=tags)
    ledger.clock.now += 10
    await core.reserve(tenant, "big-model", 100, 100, tags=tags)
    with pytest.raises(LedgerError) as limited:
        await core.reserve(tenant, "big-model", 100, 100, tags=tags)
    assert (limited.value.status, limited.value.code, limited.value.details["limit"]) == (429, "rate_limited", "rpm")
    assert limited.value.details["retry_after"] == pytest.approx(50.0)
    await core.release(tenant, a["reservation_id"])  # still a request in the window
    with pytest.raises(LedgerError):
        await core.reserve(tenant, "big-model", 100, 100, tags=tags)
    ledger.clock.now += 50.001
    await core.reserve(tenant, "big-model", 100, 100, tags=tags)
    # TPM counts the reserved worst case until the settle says what was used.
    alice = {"user": "alice"}
    big = await core.reserve(tenant, "big-model", 1000, 3000, tags=alice)
    with pytest.raises(LedgerError) as over:
        await core.reserve(tenant, "big-model", 500, 1000, tags=alice)
    assert over.value.details["limit"] == "tpm" and over.value.details["level"] == {"scope": "user", "key": "alice"}
    await core.settle(tenant, big["reservation_id"], {"input_tokens": 1000, "output_tokens": 200})
    await core.reserve(tenant, "big-model", 500, 1000, tags=alice)  # 1200 + 1500 of 5000
    with pytest.raises(LedgerError) as never:
        await core.reserve(tenant, "big-model", 5000, 1, tags=alice)
    assert (never.value.status, never.value.code) == (422, "exceeds_rate_limit")
    [view] = await core.levels(tenant, "user", "alice")
    assert view["last_minute"] == {"requests": 2, "tokens": 2700}


async def test_level_settings_are_bounded_by_the_operator_cap_and_a_quota(db_url, tenant):
    ledger = Ledger(db_url, Clock(datetime(2026, 3, 15, 12, tzinfo=timezone.utc)), max_levels=2)
    try:
        core = ledger.core
        await core.set_cap(tenant, 5.0)
        with pytest.raises(LedgerError) as above:
            await core.set_level(tenant, "user", "alice", settings(6.0))
        assert above.value.code == "budget_above_cap"
        await core.set_level(tenant, "user", "alice", settings(5.0))
        await core.set_level(tenant, "user", "bob", settings(1.0))
        with pytest.raises(LedgerError) as quota:
            await core.set_level(tenant, "user", "carol", settings(1.0))
        assert (quota.value.status, quota.value.code, quota.value.details["limit"]) == (429, "quota_exceeded", "budget_levels")
        await core.set_level(tenant, "user", "bob", settings(2.0, mode="soft"))  # changing one is not a new one
        await core.delete_level(tenant, "user", "bob")
        with pytest.raises(LedgerError) as gone:
            await core.delete_level(tenant, "user", "bob")
        assert gone.value.code == "level_not_found"
        async with ledger.engine.connect() as conn:
            from sqlalchemy import select
            rows = (await conn.execute(select(BudgetLevelRow.key, BudgetLevelRow.amount_nanos)
                                       .where(BudgetLevelRow.tenant == tenant))).all()
        assert [tuple(r) for r in rows] == [("alice", 5 * NANOS)]
    finally:
        await ledger.engine.dispose()


def test_settings_refuse_bad_input():
    for body, code in (({}, "invalid_budget"), ({"amount": -1}, "invalid_budget"), ({"amount": float("nan")}, "invalid_budget"),
                       ({"amount": True}, "invalid_budget"), ({"amount": 1, "period": "week"}, "invalid_period"),
                       ({"amount": 1, "mode": "maybe"}, "invalid_mode"), ({"amount": 1, "thresholds": [0, 0.5]}, "invalid_threshold"),
                       ({"amount": 1, "thresholds": 0.5}, "invalid_threshold"), ({"tpm": 1.5}, "invalid_limit"),
                       ({"rpm": 0}, "invalid_limit"), ({"amount": 1, "extra": 1}, "unknown_field")):
        with pytest.raises(ValueError) as refused:
            validate_settings(body)
        assert refused.value.code == code, body
    assert validate_settings({"rpm": 5}).amount is None


def test_rate_window_slides():
    window = RateWindow()
    for ts in (0.0, 10.0, 20.0):
        window.add(ts, 100)
    assert window.wait_for(30.0, 1, None, 3) == ("rpm", 30.0)
    assert window.wait_for(30.0, 1, None, 2) == ("rpm", 40.0)
    assert window.wait_for(60.0, 1, None, 3) is None  # the first left at 60 s
    assert window.wait_for(60.0, 150, 300, None) == ("tpm", 10.0)
    assert window.tokens == 200 and len(window.entries) == 2


def test_periods_are_utc_calendar():
    from actors.ledger.levels import period_bounds, period_id
    ts = datetime(2026, 12, 31, 23, 59, tzinfo=timezone.utc).timestamp()
    assert period_id("day", ts) == "2026-12-31" and period_id("month", ts) == "2026-12"
    start, end = period_bounds("month", ts)
    assert (start.day, end) == (1, datetime(2027, 1, 1, tzinfo=timezone.utc))
    assert period_bounds("day", ts)[1] - period_bounds("day", ts)[0] == timedelta(days=1)


async def test_a_failed_commit_leaves_every_level_as_it_was(ledger, tenant):
    core = ledger.core
    await core.set_level(tenant, "user", "alice", settings(1.0, thresholds=[0.01], rpm=100))
    await core.set_level(tenant, "agent", "mapper", settings(0.5, period="day"))
    held = await core.reserve(tenant, "big-model", 1000, 1000, tags=ALICE)
    await asyncio.sleep(0.05)
    before = await core.levels(tenant)
    real_write = core.store.write

    async def broken(writes):
        raise ConnectionError("database went away")

    core.store.write = broken
    for attempt in (
        core.reserve(tenant, "big-model", 1000, 1000, tags=ALICE),
        core.record_usage(tenant, [record(inp=10000, out=0, **ALICE)]),  # would cross alice's threshold
        core.settle(tenant, held["reservation_id"], {"input_tokens": 1000, "output_tokens": 10, **ALICE}),
        core.release(tenant, held["reservation_id"]),
        core.set_level(tenant, "user", "alice", settings(0.9, thresholds=[0.5])),
        core.set_level(tenant, "agent", "mapper", settings(0.5, period="month")),  # a new period: recounted
        core.set_level(tenant, "engagement", "new", settings(1.0)),
        core.delete_level(tenant, "agent", "mapper"),
    ):
        with pytest.raises(LedgerError) as error:
            await attempt
        assert error.value.code == "storage_unavailable"
    assert await core.levels(tenant) == before
    with pytest.raises(LedgerError) as missing:
        await core.levels(tenant, "engagement", "new")
    assert missing.value.code == "level_not_found"
    core.store.write = real_write
    await core.settle(tenant, held["reservation_id"], {"input_tokens": 1000, "output_tokens": 10, **ALICE})
    [alice] = await core.levels(tenant, "user", "alice")
    assert alice["reserved"] == 0 and alice["used"] == 0.0103 and alice["last_minute"]["tokens"] == 1010
    await asyncio.sleep(0.05)
    assert [a["threshold"] for t, a in ledger.alerts if t == tenant and "level" in a] == [0.01]


async def test_operations_in_flight_behind_a_failing_level_change_leave_no_drift(ledger, tenant):
    """A delete (or a set that changes the period) fails while a reservation and usage of the same
    level wait for the next commit: whether that commit fails too or succeeds, the level put back
    holds exactly the open reservations and the period's recorded usage."""
    core = ledger.core
    write = core.store.write
    for later_fails in (True, False):
        name = f"mapper-{later_fails}"
        await core.set_level(tenant, "agent", name, settings(1.0))
        calls = {"n": 0}

        async def failing_first(writes, later_fails=later_fails):
            calls["n"] += 1
            first = calls["n"] == 1
            await asyncio.sleep(0.1)  # the next operations join the following batch meanwhile
            if first or later_fails:
                raise ConnectionError("database went away")
            await write(writes)

        core.store.write = failing_first
        tags = {"agent": name}
        change = asyncio.ensure_future(core.delete_level(tenant, "agent", name))
        await asyncio.sleep(0.02)
        held = asyncio.ensure_future(core.reserve(tenant, "big-model", 1000, 1000, tags=tags))
        used = asyncio.ensure_future(core.record_usage(tenant, [record(inp=1000, out=0, agent=name)]))
        results = await asyncio.gather(change, held, used, return_exceptions=True)
        core.store.write = write
        assert isinstance(results[0], LedgerError)
        [view] = await core.levels(tenant, "agent", name)
        open_held = sum(r.amount for r in core.tenants.peek(tenant).reservations.values() if r.tags.get("agent") == name)
        assert view["reserved"] == open_held / NANOS
        assert view["used"] == (0.0 if later_fails else 0.01)
        [reloaded] = await ledger.restart().levels(tenant, "agent", name)
        assert (reloaded["used"], reloaded["reserved"]) == (view["used"], view["reserved"])
        core = ledger.core
