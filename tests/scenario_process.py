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
