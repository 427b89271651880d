"""The chaos soak's 60 s version (bench/chaos.py, in its own process): shard kills, ingress
replica kills, a worker node cycled and PostgreSQL restarted under mixed load, and afterwards
nothing acknowledged lost or duplicated, no cap exceeded, every flow ended."""
from __future__ import annotations

import pytest

from bench.common import postgres
from tests.scenario_process import run_scenario_process

pytestmark = pytest.mark.integration


@pytest.mark.timeout(600)  # a minute of load, the cluster's start, and up to three minutes for the flows to end
def test_a_minute_of_chaos_keeps_every_invariant(pg_url):
    try:
        result = run_scenario_process("bench.chaos", "--duration", "60", "--database-url", pg_url, timeout=560)
    finally:  # the soak starts PostgreSQL again itself; this covers a soak killed mid-restart
        postgres("start")
    assert result["bench"] == "chaos" and result["duration_s"] >= 60
    assert set(result["faults"]) == {"shard_kill", "replica_kill", "node_cycle", "db_restart"}, result
    acknowledged = result["acknowledged"]
    assert acknowledged["events"] > 100 and acknowledged["usage"] > 100 and acknowledged["messages"] > 100, result
    assert acknowledged["settles"] > 50 and acknowledged["flows"] >= 1, result  # a flow every 10 s; faults refuse some
    assert result["lost"] == 0, result
    assert result["duplicated"] == 0, result
    assert result["overspend_usd"] == 0 and result["stuck_flows"] == 0, result
    assert result["socket_gaps"] == 0 and result["socket_duplicates"] == 0, result
