"""Bundled sample data: a fictional retailer's application inventory (no real people or systems),
used by `raytenant run`'s demo, the console, the tests and the benchmarks."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def sample_inventory() -> dict[str, Any]:
    """{name, description, data, target_schema}"""
    return json.loads((Path(__file__).parent / "inventory.json").read_text())
