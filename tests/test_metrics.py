"""Metrics: the state logic records them; through Ray they reach the Prometheus endpoint."""
from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import httpx
import pytest

from actors.ledger.core import LedgerCore, LedgerError
from actors.learning.core import LearningCore, LearningOptions
from actors.mailbox.core import MailboxCore, MailboxOptions
from actors.substrate.metrics import CATALOG, RayMetrics, RecordingSink
from storage.engine import create_engine
from storage.ledger import LedgerStore
from storage.mailbox import MailboxStore
from storage.patterns import PatternStore
from tests import conftest
from tests.http_support import flow_body, wait_flow
from tests.wsutil import connect, recv


async def test_cores_record_into_their_sink(sqlite_url, tenant):
    sink = RecordingSink()
    engine = create_engine(sqlite_url)
    core = LearningCore(PatternStore(engine), LearningOptions(), metrics=sink)
    item = {"type": "correction", "original": {"f": "a"}, "corrected": {"f": "b"}, "context": {"field": "cust_nm"}}
    await core.learn(tenant, [item, {**item, "context": {"field": "other"}}])
    await core.recommendations(tenant, {"field": "cust_nm"})
    await core.recommendations_many(tenant, [{"field": "x"}, {"field": "y"}])
    await engine.dispose()
    assert sink.total("raytenant_learning_patterns_learned") == 2
    assert len([r for r in sink.records if r[1] == "raytenant_recommendation_ms"]) == 3


async def test_ledger_and_mailbox_record_refusals_utilisation_redeliveries_and_dead_letters(sqlite_url, tenant):
    """The metrics the Prometheus test below does not wait for (they need refusals, budgets or
    expired visibility), recorded by the cores themselves."""
    engine = create_engine(sqlite_url)
    ledger_sink, mailbox_sink = RecordingSink(), RecordingSink()
    ledger = LedgerCore(LedgerStore(engine), metrics=ledger_sink)
    await ledger.set_budget(tenant, 0.001, 0.5)
    await ledger.record_usage(tenant, [{"model": "gpt-4o-mini", "input_tokens": 1000, "output_tokens": 100}])
    with pytest.raises(LedgerError):
        await ledger.reserve(tenant, "gpt-4o-mini", 100_000, 100_000)
    now = [1_800_000_000.0]
    box = MailboxCore(MailboxStore(engine), MailboxOptions(max_attempts=2, visibility_timeout=1),
                      clock=lambda: now[0], metrics=mailbox_sink)
    await box.send(tenant, [{"receiver": "a", "sender": "b", "type": "notification", "content": 1}])
    for _ in range(2):
        await box.receive(tenant, "a", 1)
        now[0] += 2
        await box.sweep()
    await engine.dispose()
    assert ledger_sink.total("raytenant_ledger_records", model="gpt-4o-mini") == 1
    assert ledger_sink.total("raytenant_reservations_refused", reason="budget_exceeded") == 1
    [utilisation] = [r for r in ledger_sink.records if r[1] == "raytenant_budget_utilisation"]
    assert 0 < utilisation[2] < 1
    assert mailbox_sink.total("raytenant_mailbox_redeliveries") == 1
    assert mailbox_sink.total("raytenant_mailbox_dead_letters") == 1
    assert [r[2] for r in mailbox_sink.records if r[1] == "raytenant_mailbox_depth"][-1] == 0


def test_the_grafana_dashboard_charts_every_metric_of_the_catalog():
    dashboard = json.loads((Path(__file__).resolve().parent.parent / "docs" / "grafana-dashboard.json").read_text())
    exprs = " ".join(t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", []))
    charted = {re.sub(r"_(bucket|total|count|sum)$", "", name) for name in re.findall(r"ray_(raytenant_\w+)", exprs)}
    assert charted == set(CATALOG)
    for name, (kind, *_rest) in CATALOG.items():  # Prometheus names: counters end in _total, histograms in _bucket
        suffix = {"counter": "_total", "histogram": "_bucket", "gauge": ""}[kind]
        assert f"ray_{name}{suffix}" in exprs, name


def test_every_metric_has_bounded_labels():
    for name, (kind, description, keys, boundaries) in CATALOG.items():
        assert name.startswith("raytenant_") and description
        assert not {"tenant", "flow_id", "message_id", "user"} & set(keys)
        assert (boundaries is not None) == (kind == "histogram")
    metrics = RayMetrics(shard="s-0")
    assert metrics._tags({"__name": "raytenant_ledger_records", "model": "m"}) == {"shard": "s-0", "model": "m"}


@pytest.mark.integration
async def test_metrics_reach_the_prometheus_endpoint(pg_flows, tenant):
    flows = pg_flows  # one database is enough to see the metrics exported
    if conftest.METRICS_PORT is None:
        pytest.skip("Ray was started outside this test run: its metrics port is unknown")
    ws = await connect(flows.ws_url, flows.token(tenant))
    await recv(ws)
    await ws.send(json.dumps({"type": "subscribe_flow", "flow_id": "*"}))
    async with flows.client(tenant) as rt, httpx.AsyncClient(timeout=30) as client:
        flow_id = (await rt.flows.create(**flow_body()))["flow_id"]
        assert (await wait_flow(rt, flow_id))["status"] == "completed"
        await rt.agents.send("a", "b", 1)
        wanted = {f"ray_{name}" for name in CATALOG} - {
            "ray_raytenant_reservations_refused", "ray_raytenant_budget_utilisation",
            "ray_raytenant_mailbox_redeliveries", "ray_raytenant_mailbox_dead_letters",
            "ray_raytenant_slow_consumer_disconnects", "ray_raytenant_learning_patterns_learned",
            "ray_raytenant_ledger_overruns", "ray_raytenant_limit_refusals"}  # not provoked here
        found: set[str] = set()
        text = ""
        for _ in range(60):  # Ray exports every few seconds
            text = (await client.get(f"http://127.0.0.1:{conftest.METRICS_PORT}/metrics")).text
            found = set(re.findall(r"^(ray_raytenant_\w+?)(?:_bucket|_count|_sum|_total)?\{", text, re.M))
            if wanted <= found:
                break
            await asyncio.sleep(1)
    await ws.close()
    assert wanted <= found, sorted(wanted - found)
    assert re.search(r'ray_raytenant_ledger_records\w*\{[^}]*model="gpt-4o-mini"', text)
    assert re.search(r'ray_raytenant_flow_phase_seconds_count\{[^}]*phase="risk_assessment"', text)
