"""The cost ledger's state logic on the real databases, without Ray: budgets under concurrency,
idempotency, commit failures, month rollover on a controlled clock, alerts, summaries, advice."""
from __future__ import annotations

import asyncio
import json
from datetime import datetime, timezone

import pytest

from actors.ledger.core import LedgerError, LedgerOptions, month_of
from actors.ledger.prices import NANOS, Price
from storage.models import BudgetRow
from tests.ledger_support import CATALOG, Clock, Ledger, record

# A small catalog in LiteLLM's format, so every expected cost below is computed by hand.
@pytest.fixture
async def ledger(db_url):
    clock = Clock(datetime(2026, 3, 15, 12, tzinfo=timezone.utc))
    found = Ledger(db_url, clock)
    yield found
    await asyncio.sleep(0)  # let alert tasks finish
    await found.engine.dispose()


async def test_a_stored_key_resent_after_a_restart_costs_other_tenants_nothing(ledger, tenant):
    """Unknown keys are written assuming they are new; a key stored before the restart makes the
    shared commit refuse, and every record of that batch runs again: the re-sent one answers its
    first result without being charged twice, the other tenant's is stored once, and the tenant
    that re-sent a key looks its keys up first from then on."""
    from actors.ledger.actor import PUBLIC_METHODS
    from actors.substrate.operations import run_many

    other = tenant + "-other"
    for who in (tenant, other):
        await ledger.core.set_budget(who, 100.0, 0.8)
    first = await ledger.core.record_usage(tenant, [record(idempotency_key="kept")])
    core = ledger.restart()
    answers = await run_many(core, PUBLIC_METHODS, [
        ("record_usage", tenant, ([record(idempotency_key="kept")],)),
        ("record_usage", other, ([record(idempotency_key="fresh")],)),
        ("record_usage", tenant, ([record(idempotency_key="new-one")],)),
    ])
    assert all("ok" in a for a in answers), answers
    assert answers[0]["ok"][0] == {**first[0], "duplicate": True}
    assert answers[1]["ok"][0]["duplicate"] is False and answers[2]["ok"][0]["duplicate"] is False
    assert sorted(r["idempotency_key"] for r in await ledger.rows(tenant)) == ["kept", "new-one"]
    assert [r["idempotency_key"] for r in await ledger.rows(other)] == ["fresh"]
    assert (await core.get_budget(tenant))["used"] == pytest.approx(2 * first[0]["cost"])
    assert core.tenants.peek(tenant).look_up_keys and not core.tenants.peek(other).look_up_keys
    # A stored key re-sent when the budget has no room left answers its first result, uncharged
    # (the budget refuses the record as new; the lookup then finds it).
    await core.set_budget(tenant, 2 * first[0]["cost"], 0.8)
    full = ledger.restart()
    [late] = await full.record_usage(tenant, [record(idempotency_key="kept")])
    assert late == {**first[0], "duplicate": True}
    with pytest.raises(LedgerError) as over:
        await full.record_usage(tenant, [record(idempotency_key="brand-new")])
    assert over.value.code == "budget_exceeded"
    # A mismatch on a stored key is still refused, found by the lookup after the refusal.
    again = ledger.restart()
    with pytest.raises(LedgerError) as mismatch:
        await again.record_usage(tenant, [record(inp=7, idempotency_key="kept")])
    assert mismatch.value.code == "idempotency_mismatch"


async def test_concurrent_reservations_never_overspend(ledger, tenant):
    core = ledger.core
    one = CATALOG.lookup("big-model").cost_nanos(1000, 500)  # 0.025 USD
    await core.set_budget(tenant, 100 * one / NANOS, 1.0)
    outcomes = await asyncio.gather(
        *(core.reserve(tenant, "big-model", 1000, 500) for _ in range(500)), return_exceptions=True
    )
    accepted = [o for o in outcomes if isinstance(o, dict)]
    refused = [o for o in outcomes if isinstance(o, LedgerError)]
    assert len(accepted) == 100 and len(refused) == 400
    assert {e.code for e in refused} == {"budget_exceeded"} and refused[0].status == 402
    assert refused[0].details["remaining"] == 0
    # Settle half with real usage below the estimate: the rest of each reservation is freed.
    settled = await asyncio.gather(
        *(core.settle(tenant, a["reservation_id"], {"input_tokens": 500, "output_tokens": 250}) for a in accepted[:50])
    )
    assert all(s["released"] == pytest.approx(one / NANOS / 2) for s in settled)
    budget = await core.get_budget(tenant)
    assert budget["used"] + budget["reserved"] <= budget["monthly_budget"]
    rows = await ledger.rows(tenant, BudgetRow)
    assert rows[0]["used_nanos"] == 50 * (one // 2) and rows[0]["reserved_nanos"] == 50 * one
    assert rows[0]["used_nanos"] + rows[0]["reserved_nanos"] <= rows[0]["amount_nanos"]
    assert len(await ledger.rows(tenant)) == 50


async def test_concurrent_direct_usage_never_overspends(ledger, tenant):
    core = ledger.core
    one = CATALOG.lookup("small-model").cost_nanos(1000, 1000)
    await core.set_budget(tenant, 30 * one / NANOS, 0.5)
    outcomes = await asyncio.gather(*(core.record_usage(tenant, [record("small-model", 1000, 1000)]) for _ in range(200)),
                                    return_exceptions=True)
    assert sum(isinstance(o, list) for o in outcomes) == 30
    rows = await ledger.rows(tenant)
    assert len(rows) == 30 and sum(r["cost_nanos"] for r in rows) == 30 * one
    assert (await ledger.rows(tenant, BudgetRow))[0]["used_nanos"] == 30 * one


async def test_idempotent_retries_count_once(ledger, tenant):
    core = ledger.core
    first = await core.record_usage(tenant, [record(idempotency_key="k1"), record(idempotency_key="k2")])
    assert [r["duplicate"] for r in first] == [False, False]
    # Concurrent retries of the same key and a retry mixed with a new record.
    again = await asyncio.gather(*(core.record_usage(tenant, [record(idempotency_key="k3")]) for _ in range(20)))
    assert sum(not r[0]["duplicate"] for r in again) == 1
    mixed = await core.record_usage(tenant, [record(idempotency_key="k1"), record(inp=10, idempotency_key="k4")])
    assert mixed[0] == {**first[0], "duplicate": True} and mixed[1]["duplicate"] is False
    # After a restart (memory gone) the first results come from the database.
    restarted = ledger.restart()
    late = await restarted.record_usage(tenant, [record(idempotency_key="k2")])
    assert late[0]["cost"] == first[1]["cost"] and late[0]["duplicate"] is True
    # The same key with a different record is refused, from memory and from the database alike.
    for core_now, key in ((restarted, "k2"), (ledger.restart(), "k1")):
        with pytest.raises(LedgerError) as mismatch:
            await core_now.record_usage(tenant, [record(inp=999_999, idempotency_key=key)])
        assert (mismatch.value.status, mismatch.value.code) == (409, "idempotency_mismatch")
        with pytest.raises(LedgerError):
            await core_now.record_usage(tenant, [record(agent="other", idempotency_key=key)])
    rows = await ledger.rows(tenant)
    assert sorted(r["idempotency_key"] for r in rows) == ["k1", "k2", "k3", "k4"]


async def test_batch_is_all_or_nothing(ledger, tenant):
    core = ledger.core
    with pytest.raises(LedgerError) as refused:
        await core.record_usage(tenant, [record(idempotency_key="a"), record("gpt-imaginary-9", idempotency_key="b")])
    assert refused.value.status == 422 and refused.value.code == "unknown_model"
    await core.set_budget(tenant, CATALOG.lookup("big-model").cost_nanos(1000, 500) * 1.5 / NANOS, 1.0)
    with pytest.raises(LedgerError) as over:
        await core.record_usage(tenant, [record(idempotency_key="a"), record(idempotency_key="c")])
    assert over.value.code == "budget_exceeded"
    assert await ledger.rows(tenant) == []
    assert (await core.get_budget(tenant))["used"] == 0
    # The refused keys were not remembered: they can be recorded later.
    assert (await core.record_usage(tenant, [record(idempotency_key="a")]))[0]["duplicate"] is False


async def test_failed_commit_changes_nothing(ledger, tenant):
    core = ledger.core
    await core.set_budget(tenant, 10.0, 0.5)
    await core.record_usage(tenant, [record()])
    before = await core.get_budget(tenant)
    real_write = core.store.write

    async def broken(writes):
        raise ConnectionError("database went away")

    core.store.write = broken
    for attempt in (
        core.record_usage(tenant, [record(idempotency_key="x")]),
        core.reserve(tenant, "big-model", 10, 10),
        core.set_budget(tenant, 20.0, 0.9),
        core.set_override(tenant, "mine", Price(1e-6, 1e-6)),
    ):
        with pytest.raises(LedgerError) as error:
            await attempt
        assert error.value.status == 503 and error.value.code == "storage_unavailable"
    assert await core.get_budget(tenant) == before
    assert "mine" not in core.tenants.peek(tenant).overrides
    assert not core.tenants.peek(tenant).reservations
    core.store.write = real_write
    assert (await core.record_usage(tenant, [record(idempotency_key="x")]))[0]["duplicate"] is False
    assert len(await ledger.rows(tenant)) == 2


async def test_month_rollover_and_alert_once(ledger, tenant):
    core, clock = ledger.core, ledger.clock
    one = CATALOG.lookup("big-model").cost_nanos(1000, 500)
    await core.set_budget(tenant, 10 * one / NANOS, 0.5)
    for _ in range(4):
        await core.record_usage(tenant, [record()])
    assert ledger.alerts == []
    open_res = await core.reserve(tenant, "big-model", 1000, 500)
    await core.record_usage(tenant, [record()])  # 5 of 10: the threshold is crossed
    await core.record_usage(tenant, [record()])
    await asyncio.sleep(0.05)
    assert len(ledger.alerts) == 1
    alert_tenant, alert = ledger.alerts[0]
    assert alert_tenant == tenant and alert["month"] == "2026-03" and alert["utilization"] == 0.5
    # A restart does not resend this month's alert.
    core = ledger.restart()
    await core.record_usage(tenant, [record()])
    await asyncio.sleep(0.05)
    assert len(ledger.alerts) == 1
    march = await core.get_budget(tenant)
    assert march["used"] == pytest.approx(7 * one / NANOS) and march["reserved"] == pytest.approx(one / NANOS)
    # April: usage starts at zero with the same settings; the open reservation is carried.
    clock.set(datetime(2026, 4, 1, 0, 0, 1, tzinfo=timezone.utc))
    april = await core.get_budget(tenant)
    assert april["month"] == "2026-04" and april["used"] == 0 and april["alert_sent"] is False
    assert april["monthly_budget"] == march["monthly_budget"] and april["alert_threshold"] == 0.5
    assert april["reserved"] == pytest.approx(one / NANOS)
    await core.settle(tenant, open_res["reservation_id"], {"input_tokens": 1000, "output_tokens": 500})
    for _ in range(4):
        await core.record_usage(tenant, [record()])
    await asyncio.sleep(0.05)
    assert [a["month"] for _, a in ledger.alerts] == ["2026-03", "2026-04"]
    months = {r["month"]: r for r in await ledger.rows(tenant, BudgetRow)}
    assert months["2026-03"]["used_nanos"] == 7 * one and months["2026-03"]["alert_sent"]
    assert months["2026-04"]["used_nanos"] == 5 * one and months["2026-04"]["reserved_nanos"] == 0
    # After a restart in April the state is rebuilt from the April row.
    assert (await ledger.restart().get_budget(tenant))["used"] == pytest.approx(5 * one / NANOS)


async def test_reservations_settle_release_expire(ledger, tenant):
    core, clock = ledger.core, ledger.clock
    await core.set_budget(tenant, 1.0, 1.0)
    a = await core.reserve(tenant, "big-model", 10_000, 10_000)  # 0.4 USD
    b = await core.reserve(tenant, "big-model", 10_000, 10_000, 5.0)
    with pytest.raises(LedgerError) as refused:
        await core.reserve(tenant, "big-model", 10_000, 10_000)
    assert refused.value.details == {"remaining": pytest.approx(0.2), "requested": pytest.approx(0.4)}
    released = await core.release(tenant, a["reservation_id"])
    assert released == {"reservation_id": a["reservation_id"], "state": "released", "released": pytest.approx(0.4)}
    with pytest.raises(LedgerError) as closed:
        await core.release(tenant, a["reservation_id"])
    assert closed.value.status == 409 and closed.value.details == {"state": "released"}
    with pytest.raises(LedgerError) as unknown:
        await core.settle(tenant, "nope", {"input_tokens": 1, "output_tokens": 1})
    assert unknown.value.status == 404
    clock.now += 6
    assert await core.expire() == 1
    assert (await core.get_budget(tenant))["reserved"] == 0
    # A settle after expiry records the call's real cost, flagged late; expiry only freed the hold.
    late = await core.settle(tenant, b["reservation_id"], {"input_tokens": 1000, "output_tokens": 0})
    assert late["late"] is True and late["cost"] == pytest.approx(0.01) and late["released"] == 0
    assert (await core.get_budget(tenant))["used"] == pytest.approx(0.01)
    with pytest.raises(LedgerError) as again:
        await core.settle(tenant, b["reservation_id"], {"input_tokens": 1, "output_tokens": 1})
    assert (again.value.status, again.value.details) == (409, {"state": "settled"})
    # Overrun: real usage above the estimate is recorded (the provider charged it) and reported.
    c = await core.reserve(tenant, "big-model", 100, 100)
    settled = await core.settle(tenant, c["reservation_id"], {"input_tokens": 1000, "output_tokens": 0})
    assert settled["cost"] == pytest.approx(0.01) and settled["overrun"] == pytest.approx(0.006)
    budget = await core.get_budget(tenant)
    assert budget["used"] == pytest.approx(0.02) and budget["overrun"] == pytest.approx(0.006)
    # A restart rebuilds open reservations from the database.
    d = await core.reserve(tenant, "small-model", 1000, 1000)
    restarted = ledger.restart()
    assert (await restarted.get_budget(tenant))["reserved"] == pytest.approx(0.003)
    assert (await restarted.settle(tenant, d["reservation_id"], {"input_tokens": 1000, "output_tokens": 0}))["released"] == pytest.approx(0.002)


async def test_reservation_without_budget_and_overrides(ledger, tenant):
    core = ledger.core
    with pytest.raises(LedgerError) as missing:
        await core.get_budget(tenant)
    assert missing.value.code == "budget_not_set"
    with pytest.raises(LedgerError) as unknown:
        await core.reserve(tenant, "in-house-llm", 10, 10)
    assert unknown.value.code == "unknown_model"
    assert await core.set_override(tenant, "In-House-LLM", Price(2e-6, 4e-6)) == {
        "model": "in-house-llm", "source": "override", "input_per_token": 2e-6, "output_per_token": 4e-6,
        "cached_per_token": None}
    reservation = await core.reserve(tenant, "in-house-llm", 1000, 1000)
    assert reservation["amount"] == pytest.approx(0.006) and reservation["remaining"] is None
    # An override also wins over the catalog's price, and survives a restart.
    await core.set_override(tenant, "big-model", Price(0, 0))
    assert (await core.record_usage(tenant, [record()]))[0]["cost"] == 0
    restarted = ledger.restart()
    assert (await restarted.estimate(tenant, "big-model", 10, 10))["source"] == "override"
    await restarted.delete_override(tenant, "big-model")
    assert (await restarted.estimate(tenant, "big-model", 10, 10))["source"] == "catalog"
    with pytest.raises(LedgerError):
        await restarted.delete_override(tenant, "big-model")
    prices = await restarted.prices(tenant, "model")
    assert [p["model"] for p in prices] == ["big-model", "small-model"]
    assert [p["source"] for p in await restarted.prices(tenant)][:1] == ["override"]


async def test_summary_matches_hand_computed_data(ledger, tenant):
    core, clock = ledger.core, ledger.clock
    # Day 1: two calls of big-model by agent A in flow f1; day 2: small-model by B (no flow), big by A in f2.
    data = [
        (datetime(2026, 3, 1, 9, tzinfo=timezone.utc), record("big-model", 1000, 500, agent="A", flow_id="f1")),
        (datetime(2026, 3, 1, 23, 59, tzinfo=timezone.utc), record("big-model", 2000, 0, cached_tokens=1000, agent="A", flow_id="f1")),
        (datetime(2026, 3, 2, 0, 0, tzinfo=timezone.utc), record("small-model", 5000, 5000, agent="B")),
        (datetime(2026, 3, 2, 10, tzinfo=timezone.utc), record("big-model", 100, 100, agent="A", flow_id="f2")),
        (datetime(2026, 3, 5, 10, tzinfo=timezone.utc), record("big-model", 100, 100, agent="A", flow_id="f3")),
    ]
    for when, item in data:
        clock.set(when)
        await core.record_usage(tenant, [item])
    # Hand computed, in nano-dollars: big = 10/30 per 1k in/out, cached 1 per 1k; small = 1/2 per 1k.
    c1 = 1000 * 10_000 + 500 * 30_000          # 25,000,000
    c2 = 1000 * 10_000 + 1000 * 1_000          # 11,000,000
    c3 = 5000 * 1_000 + 5000 * 2_000           # 15,000,000
    c4 = 100 * 10_000 + 100 * 30_000           # 4,000,000
    got = await core.summary(tenant, datetime(2026, 3, 1, tzinfo=timezone.utc), datetime(2026, 3, 3, tzinfo=timezone.utc))
    assert got["total_cost"] == (c1 + c2 + c3 + c4) / NANOS == 0.055
    assert got["total_requests"] == 4 and got["total_tokens"] == 1500 + 2000 + 10000 + 200
    assert (got["input_tokens"], got["output_tokens"], got["cached_tokens"]) == (8100, 5600, 1000)
    assert got["by_model"] == {
        "big-model": {"cost": (c1 + c2 + c4) / NANOS, "tokens": 3700, "requests": 3},
        "small-model": {"cost": c3 / NANOS, "tokens": 10000, "requests": 1},
    }
    assert got["by_agent"] == {"A": {"cost": 0.04, "tokens": 3700, "requests": 3},
                               "B": {"cost": 0.015, "tokens": 10000, "requests": 1}}
    assert got["by_flow"] == {"f1": {"cost": 0.036, "tokens": 3500, "requests": 2},
                              "f2": {"cost": 0.004, "tokens": 200, "requests": 1},
                              "none": {"cost": 0.015, "tokens": 10000, "requests": 1}}
    assert got["by_day"] == {"2026-03-01": {"cost": 0.036, "tokens": 3500, "requests": 2},
                             "2026-03-02": {"cost": 0.019, "tokens": 10200, "requests": 2}}
    empty = await core.summary("nobody-" + tenant, datetime(2026, 1, 1, tzinfo=timezone.utc), datetime(2026, 2, 1, tzinfo=timezone.utc))
    assert empty["total_cost"] == 0 and empty["by_model"] == {}


async def test_estimate_and_model_selection(ledger, tenant):
    core = ledger.core
    estimate = await core.estimate(tenant, "big-model", 2000, 1000, 500)
    assert estimate["input_cost"] == 0.015 and estimate["cached_input_cost"] == 0.0005
    assert estimate["output_cost"] == 0.03 and estimate["total_cost"] == 0.0455
    assert estimate["cost_per_1k_tokens"] == pytest.approx(0.0455 / 3)
    assert (await core.estimate(tenant, "acme/big-model", 1, 0))["total_cost"] == 1e-5
    chosen = await core.select_model(tenant, "simple", None, None)
    assert chosen["model"] == "small-model" and chosen["meets_quality"] and "cheapest" in chosen["reason"]
    assert (await core.select_model(tenant, "medium", 0.89, None))["model"] == "big-model"
    too_much = await core.select_model(tenant, "complex", 0.99, None)
    assert too_much["model"] == "big-model" and too_much["meets_quality"] is False
    tight = await core.select_model(tenant, "medium", 0.89, 0.001)
    assert tight["model"] == "big-model" and tight["within_cost_constraint"] is False
    assert "none fits the cost constraint" in tight["reason"]


async def test_recommendations(ledger, tenant):
    core, clock = ledger.core, ledger.clock
    small = LedgerOptions(substitution_min_cost=0.01, batching_min_requests=20, cache_min_input_tokens=10_000)
    core.options = small
    await core.set_budget(tenant, 5.0, 0.9)
    # 100 small big-model requests on 2026-03-15 by noon: substitution, batching, caching, burn rate.
    await core.record_usage(tenant, [record("big-model", 300, 100) for _ in range(100)])
    advice = {a["type"]: a for a in (await core.recommendations(tenant))["recommendations"]}
    sub = advice["model_substitution"]
    assert sub["current_model"] == "big-model" and sub["recommended_model"] == "small-model"
    big_cost, small_cost = 100 * (300 * 10_000 + 100 * 30_000), 100 * (300 * 1_000 + 100 * 2_000)
    assert sub["potential_monthly_savings"] == (big_cost - small_cost) / NANOS
    assert sub["quality_impact"] == -0.02
    assert advice["request_batching"]["current_requests"] == 100
    assert advice["prompt_caching"]["potential_monthly_savings"] == 100 * 150 * (10_000 - 1_000) / NANOS
    burn = advice["burn_rate"]
    elapsed = (datetime(2026, 3, 15, 12, tzinfo=timezone.utc) - datetime(2026, 3, 1, tzinfo=timezone.utc)).total_seconds()
    assert burn["projected_month_end"] == pytest.approx(big_cost / NANOS * 31 * 86400 / elapsed)
    assert burn["priority"] == "low"
    # A strict margin removes the substitution (small-model is 0.02 below big-model).
    core.options = LedgerOptions(substitution_margin=0.01, substitution_min_cost=0.01)
    types = [a["type"] for a in (await core.recommendations(tenant))["recommendations"]]
    assert "model_substitution" not in types and "burn_rate" in types


def test_price_catalog_reads_crewai_catalog():
    from actors.ledger.prices import catalog_path, default_catalog

    catalog = default_catalog()
    raw = json.loads(catalog_path().read_text())
    assert len(catalog) > 500
    entry = raw["gpt-4o-mini"]
    price = catalog.lookup("gpt-4o-mini")
    assert price.input == entry["input_cost_per_token"] and price.output == entry["output_cost_per_token"]
    assert price.cached == entry.get("cache_read_input_token_cost")
    assert catalog.lookup("openai/gpt-4o-mini") == price and catalog.lookup("GPT-4O-MINI") == price
    assert catalog.lookup("embedder-of-nothing") is None
    assert Price(1e-6, 3e-6).cost_nanos(1, 1) == 4000
    assert Price(1e-10, 0).cost_nanos(1, 0) == 1  # rounded up: never under-charged
    assert month_of(datetime(2026, 12, 31, 23, 59, 59, tzinfo=timezone.utc).timestamp()) == "2026-12"


def test_model_quality_extension(monkeypatch):
    from actors.ledger.model_quality import model_quality

    monkeypatch.setenv("RAYTENANT_MODEL_QUALITY", json.dumps({"in-house": 0.5}))
    table = model_quality()
    assert table["in-house"] == 0.5 and table["gpt-4o"] == 0.9


async def test_settle_beyond_the_output_bound_is_refused_and_writes_nothing(ledger, tenant):
    core = ledger.core
    await core.set_budget(tenant, 1.0, 1.0)
    held = await core.reserve(tenant, "big-model", 1, 1)
    assert (held["input_tokens"], held["max_output_tokens"]) == (1, 1)
    with pytest.raises(LedgerError) as refused:
        await core.settle(tenant, held["reservation_id"], {"input_tokens": 10**9, "output_tokens": 10**9})
    assert (refused.value.status, refused.value.code) == (422, "usage_exceeds_reservation")
    assert await ledger.rows(tenant) == []
    budget = await core.get_budget(tenant)
    assert budget["used"] == 0 and budget["reserved"] == held["amount"]
    # Still open: the real usage can be settled.
    assert (await core.settle(tenant, held["reservation_id"], {"input_tokens": 1, "output_tokens": 1}))["late"] is False


async def test_input_overrun_is_flagged_and_stops_new_reservations(ledger, tenant):
    core = ledger.core
    one = CATALOG.lookup("big-model").cost_nanos(1000, 0)  # 0.01 USD
    await core.set_budget(tenant, 2 * one / NANOS, 1.0)
    held = await core.reserve(tenant, "big-model", 1000, 0)
    settled = await core.settle(tenant, held["reservation_id"], {"input_tokens": 3000, "output_tokens": 0})
    assert settled["overrun"] == pytest.approx(2 * one / NANOS)
    [row] = await ledger.rows(tenant)
    assert row["overrun_nanos"] == 2 * one and row["cost_nanos"] == 3 * one
    budget = await core.get_budget(tenant)
    assert budget["over_limit"] is True and budget["overrun"] == pytest.approx(0.02) and budget["remaining"] < 0
    with pytest.raises(LedgerError) as refused:
        await core.reserve(tenant, "big-model", 0, 0)  # nothing is admitted at or over the limit
    assert refused.value.code == "budget_exceeded"
    summary = await core.summary(tenant, datetime(2026, 3, 1, tzinfo=timezone.utc), datetime(2026, 4, 1, tzinfo=timezone.utc))
    assert summary["overrun_records"] == 1 and summary["overrun_cost"] == pytest.approx(0.02)


async def test_month_to_date_spend_counts_whenever_the_budget_was_set(ledger, tenant):
    core = ledger.core
    cost = CATALOG.lookup("big-model").cost_nanos(350_000, 0)  # 3.50 USD
    await core.record_usage(tenant, [record("big-model", 350_000, 0)])
    budget = await core.set_budget(tenant, 5.0, 1.0)
    assert budget["used"] == pytest.approx(3.5)
    with pytest.raises(LedgerError):
        await core.record_usage(tenant, [record("big-model", 350_000, 0)])
    # Spend of a month with no budget row yet is read from the usage table on activation.
    other = tenant + "-r"
    await core.record_usage(other, [record("big-model", 350_000, 0)])
    async with ledger.engine.begin() as conn:  # as an earlier version left it: usage, no month row
        await conn.execute(BudgetRow.__table__.delete().where(BudgetRow.tenant == other))
    restarted = ledger.restart()
    assert (await restarted.set_budget(other, 5.0, 1.0))["used"] == cost / NANOS
    with pytest.raises(LedgerError):
        await restarted.reserve(other, "big-model", 350_000, 0)


async def test_late_settle_after_a_restart_records_the_real_usage(ledger, tenant):
    core, clock = ledger.core, ledger.clock
    held = await core.reserve(tenant, "big-model", 1000, 100, 5.0)
    clock.now += 6
    assert await core.expire() == 1
    restarted = ledger.restart()
    late = await restarted.settle(tenant, held["reservation_id"], {"input_tokens": 500, "output_tokens": 100})
    assert late["late"] is True and late["cost"] == pytest.approx(0.008)
    [row] = await ledger.rows(tenant)
    assert row["late"] is True and row["reservation_id"] == held["reservation_id"]
    with pytest.raises(LedgerError) as bound:
        await ledger.restart().settle(tenant, held["reservation_id"], {"input_tokens": 1, "output_tokens": 1})
    assert bound.value.details == {"state": "settled"}


async def test_operator_cap_bounds_the_tenant_budget(ledger, tenant):
    core = ledger.core
    capped = await core.set_cap(tenant, 5.0)
    assert (capped["operator_cap"], capped["monthly_budget"], capped["limit"]) == (5.0, None, 5.0)
    with pytest.raises(LedgerError) as above:
        await core.set_budget(tenant, 10.0, 0.8)
    assert (above.value.status, above.value.code) == (422, "budget_above_cap")
    assert (await core.set_budget(tenant, 3.0, 0.8))["limit"] == 3.0
    assert (await core.set_cap(tenant, 2.0))["limit"] == 2.0  # the lower of the two holds
    with pytest.raises(LedgerError):
        await core.reserve(tenant, "big-model", 100_000, 40_000)  # 2.20 USD
    assert (await ledger.restart().get_budget(tenant))["operator_cap"] == 2.0
