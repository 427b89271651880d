"""A worker node is lost under traffic: shards restart elsewhere, nothing acknowledged is lost,
sockets resume without gaps, flows resume. The cluster runs in its own process
(tests/node_loss_scenario.py)."""
from __future__ import annotations

import pytest

from tests.scenario_process import run_scenario_process

pytestmark = pytest.mark.integration


def test_node_loss_under_traffic(pg_url):
    result = run_scenario_process("tests.node_loss_scenario", pg_url, timeout=280)
    every = ["flows-0", "hub-0", "hub-1", "learning-0", "ledger-0", "ledger-1", "mailbox-0"]
    assert len(result["nodes_before"]) == 1 and result["placed_on_doomed"] == every
    assert result["moved"] == result["placed_on_doomed"] and result["still_on_doomed"] == []
    assert result["doomed_node"] not in result["nodes_after"]
    assert result["acked_events"] > 100 and result["acked_records"] > 100
    assert result["lost_events"] == 0 and result["lost_records"] == 0 and result["duplicated_records"] == 0
    assert result["gaps"] == 0 and result["duplicated_deliveries"] == 0 and result["delivered"] > 0
    # The flows mid-flight on the lost runner were resumed on a surviving node and completed.
    assert [f["status"] for f in result["flows"]] == ["completed"] * 2, result["flows"]
    assert all(f["attempts"] >= 2 and f["progress"] == 100 for f in result["flows"]), result["flows"]
