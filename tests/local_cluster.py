"""A multi-node Ray cluster on this machine for one scenario process (ray.cluster_utils.Cluster).

The scenarios (tests/node_loss_scenario.py, tests/cluster_loadtest_scenario.py) run in their own
process, because a process holds one Ray session and the test run's session is a single node.
Import this module first: Ray must see RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 before it is imported,
or the nodes' (and the metrics') addresses leave loopback.
"""
from __future__ import annotations

import os

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"

import tests.conftest  # noqa: E402,F401 - the crewai and Serve environment, before Ray is imported
import asyncio  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
from typing import Any, Awaitable, Callable  # noqa: E402

import ray  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402

from serve_app.cli.launcher import metrics_enabled  # noqa: E402
from storage.migrate import upgrade  # noqa: E402

Scenario = Callable[[str, Cluster, list[Any]], Awaitable[dict[str, Any]]]


def run_scenario(scenario: Scenario, *, workers: int = 2, head_args: dict[str, Any] | None = None) -> None:
    """`python -m tests.<scenario> DATABASE_URL`: migrate the database, start a head (with
    `head_args`) and `workers` worker nodes (one CPU each), run `scenario(database_url, cluster,
    worker_nodes)` connected to it, stop everything and print the scenario's result as one JSON line."""
    database_url = sys.argv[1]
    upgrade(database_url)
    with metrics_enabled():
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, **(head_args or {})})
        nodes = [cluster.add_node(num_cpus=1) for _ in range(workers)]
        cluster.wait_for_nodes()
    ray.init(address=cluster.address, namespace="raytenant", log_to_driver=False)
    try:
        result = asyncio.run(scenario(database_url, cluster, nodes))
    finally:
        ray.shutdown()
        cluster.shutdown()
    print(json.dumps(result), flush=True)
