"""Several ingress replicas behind the balancer, one killed under load
(tests/replicas_scenario.py, in its own process).

Sockets spread over the three replicas; events published through any replica reach every
subscriber on every replica in seq order; the clients of the killed replica reconnect through the
balancer to another one, resume, and see no gap and no duplicate.
"""
from __future__ import annotations

import pytest

from tests.scenario_process import run_scenario_process

pytestmark = pytest.mark.integration


def test_three_replicas_one_killed_under_load(pg_url):
    result = run_scenario_process("tests.replicas_scenario", pg_url, timeout=280)
    spread = result["sockets_per_replica"]
    assert len(spread) == 3 and min(spread.values()) >= result["sockets"] // 3 - 1, spread
    assert result["acked_events"] > 300 and result["lost_events"] == 0
    assert result["delivered"] >= result["acked_events"] * 6  # six sockets per tenant saw every event
    assert result["gaps"] == 0 and result["duplicated"] == 0 and result["out_of_order"] == 0
    # The killed replica's clients (about a third) reconnected through the balancer and resumed.
    assert result["clients_reconnected"] >= result["sockets"] // 3 - 1
    assert result["publish_failures_after_5s"] == 0
