"""The head's GCS killed and restarted under traffic with GCS fault tolerance (an external Redis;
tests/gcs_restart_scenario.py, in its own process): the detached shards keep serving, sockets
stay open, nothing acknowledged is lost, and the restarted GCS creates actors again."""
from __future__ import annotations

import pytest

from tests.scenario_process import run_scenario_process

pytestmark = pytest.mark.integration


def test_gcs_restart_under_traffic(pg_url):
    result = run_scenario_process("tests.gcs_restart_scenario", pg_url, timeout=280)
    assert result["new_actor_after_restart"], result  # without Redis the new GCS knows nothing
    assert result["fault_tolerant"] and result["down_s"] >= 8
    # The shards served while the GCS was down, none refused, and after it restarted. How many
    # depends on the machine's load (a quiet machine served 252 requests in those 8 s, loaded CI
    # machines 97 and 17): the count is a figure (docs/operations.md), not an assertion.
    assert result["requests_while_down"] > 0 and result["refused_while_down"] == 0
    # After the restart the shards serve again; a CI run saw one of ~200 requests refused there (an
    # answer, retried by a client; what was acknowledged is checked below), so a refusal in fifty
    # is tolerated, not a stall.
    assert result["requests_after_restart"] > 0
    assert result["refused_after_restart"] <= max(1, result["requests_after_restart"] // 50), result
    assert result["acked_events"] > 10 and result["lost_events"] == 0
    assert result["acked_usage"] > 10 and result["lost_usage"] == 0 and result["duplicated_usage"] == 0
    assert result["socket_reconnects"] == 0 and result["gaps"] == 0 and result["duplicated_deliveries"] == 0
    assert result["delivered"] > 0
