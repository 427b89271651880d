"""`raytenant loadtest` on a real multi-node Ray cluster on this machine (ray.cluster_utils.Cluster).

Run by tests/test_loadtest.py in its own process (a process holds one Ray session, and the test
run's session is a single node):

    python -m tests.cluster_loadtest_scenario DATABASE_URL

A head and two worker nodes; the ingress serves on loopback from this process; the load tester's
client workers are Ray tasks, which it spreads over the cluster's nodes. Prints one JSON line: the
cluster's nodes and the load test's report (without its per-second timeline).
"""
from __future__ import annotations

from tests.local_cluster import run_scenario  # first: Ray's addresses stay on loopback

import asyncio  # noqa: E402
import json  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from tests.conftest import LiveServer  # noqa: E402 - also sets the crewai and Serve environment

import ray  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402

from serve_app.cli.loadtest import LoadConfig, run  # noqa: E402
from serve_app.runtime import Runtime  # noqa: E402
from serve_app.settings import Settings  # noqa: E402

OPERATOR = "cluster-loadtest"
WORKERS = 3


async def scenario(database_url: str, cluster: Cluster, workers: list[Any]) -> dict[str, Any]:
    settings = Settings.from_env(database_url=database_url, operator_token=OPERATOR, actor_prefix="clt-")
    async with LiveServer(Runtime(settings)) as server:
        config = LoadConfig(url=server.url, operator_token=OPERATOR, workers=WORKERS, tenants=6, connections=12,
                            rate=90, duration=5, mix={"usage": 0.4, "publish": 0.4, "recommend": 0.2})
        with tempfile.TemporaryDirectory() as folder:
            out = Path(folder) / "report.json"
            report = await asyncio.to_thread(run, config, str(out), None, show=lambda line: None)
            assert json.loads(out.read_text()) == report
    alive = sorted(n["NodeID"] for n in ray.nodes() if n["Alive"])
    return {"cluster_nodes": alive, **{k: v for k, v in report.items() if k != "timeline"}}


if __name__ == "__main__":
    run_scenario(scenario)
