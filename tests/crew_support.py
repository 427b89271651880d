"""A flow context on the sample inventory, for tests that run one agent's tools."""
from __future__ import annotations

from crews.flow_context import FlowContext
from crews.profiling import datasets
from crews.samples import sample_inventory

SAMPLE = sample_inventory()


def no_learning(method, tenant, *args):
    """A learning call that knows nothing: no lessons, no recommendations."""
    return [] if method == "mapping_lessons" else [[] for _ in args[0]]


def context(kind: str = "discovery", **changes) -> FlowContext:
    values = dict(tenant="t", flow_id="f", kind=kind, data=datasets(SAMPLE["data"]),
                  target_schema=SAMPLE["target_schema"], learning=no_learning)
    return FlowContext(**{**values, **changes})
