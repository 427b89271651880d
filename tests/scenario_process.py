"""Running a scenario module (tests/*_scenario.py) in a process of its own and reading its result.

A scenario holds its own Ray session (often a multi-node `ray.cluster_utils.Cluster`) or stops a
service the test run shares, so it cannot run in the test run's process. It prints its result as
the last JSON line of its output.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def run_scenario_process(module: str, *args: str, timeout: float) -> dict[str, Any]:
    """`python -m <module> <args>` from the repository root, bounded by `timeout` seconds; the
    assertion message on failure is the end of the scenario's stderr."""
    done = subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PYTHONPATH": str(ROOT)})
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    assert done.returncode == 0 and lines, done.stderr[-3000:]
    return json.loads(lines[-1])


async def stored_records(database_url: str, tenants: list[str]) -> tuple[set[tuple[str, int]], list[tuple[str, str]]]:
    """What the database holds for the scenario's tenants: their `flow_update` events as
    (tenant, seq), and their usage records' (tenant, idempotency key), one per row (so a key
    counted twice shows twice)."""
    from sqlalchemy import select

    from storage.engine import create_engine
    from storage.models import EventRow, UsageRow

    engine = create_engine(database_url)
    try:
        async with engine.connect() as conn:
            events = {(r.tenant, r.seq) for r in await conn.execute(
                select(EventRow.tenant, EventRow.seq).where(EventRow.tenant.in_(tenants),
                                                            EventRow.type == "flow_update"))}
            usage = [(r.tenant, r.idempotency_key) for r in await conn.execute(
                select(UsageRow.tenant, UsageRow.idempotency_key).where(UsageRow.tenant.in_(tenants),
                                                                        UsageRow.idempotency_key.is_not(None)))]
    finally:
        await engine.dispose()
    return events, usage
