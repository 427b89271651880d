"""How a flow's agents learn from the tenant (crews/decisions.py), on the runner's side:

- before a phase runs, `prepare` asks the tenant's learning shard for recommendations for the
  contexts of the phase's items (one call), keeps those that fit for the phase's tool to apply, and
  returns the lines that go into the agent's task;
- when a phase finishes, `learn_successes` learns its decisions as successes (confidence 0.8);
- `correct` applies a user's corrections `{phase, item, corrected}` of a finished phase: each is
  learned as a correction (0.95), a recommendation that had been applied to that item gets
  feedback (accepted when the user kept its value), and the stored result changes.

Field mapping keeps its own path (crews/field_mapping.py); here it only gets its task lines.
"""
from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timezone
from typing import Any

from actors.substrate.operations import ActorError
from crews.decisions import CorrectionError, Decision, contexts_of, decision_for, guidance_for, successes
from crews.field_mapping import SIMILAR_THRESHOLD
from crews.field_matcher import field_context, parse_schema
from crews.flow_context import FlowContext
from crews.phases import applications, apps_of, phases_of
from crews.planning import cost_model, plan_timeline, planned_weeks, rates_with
from crews.profiling import columns_of

log = logging.getLogger("raytenant.flows")

MAX_ITEMS = 2_000  # items of one phase asked about (an inventory can be large; the first ones)
KEPT = ("answer", "handoffs", "learned", "corrections", "computed_by", "target_factors", "unit_rates", "duration_factors",
        "min_waves")


class CorrectionRefused(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


async def prepare(learning: Any, ctx: FlowContext, name: str) -> str:
    """Find what applies to phase `name` and return its task lines (empty when nothing does, or
    when the learning shard cannot be reached: the phase then runs on its rules alone)."""
    ctx.guidance.pop(name, None)
    try:
        if name == "field_mapping":
            return await _mapping_lines(learning, ctx)
        phase = next(p for p in phases_of(ctx.kind) if p.name == name)
        loop = asyncio.get_running_loop()
        base, apps = await loop.run_in_executor(None, lambda: (phase.primary.compute(ctx), apps_of(ctx, name)))
        items = contexts_of(name, base, apps)[:MAX_ITEMS]
        if not items:
            return ""
        found = await _read(learning, "decide", ctx.tenant, [c for *_, c in items])
    except ActorError as error:
        log.warning("no recommendations for flow %s phase %s: %s", ctx.flow_id, name, error.message)
        return ""
    except Exception:  # noqa: BLE001 - a phase whose inputs cannot be profiled runs on its rules
        log.exception("no recommendations for flow %s phase %s", ctx.flow_id, name)
        return ""
    guidance = guidance_for(items, found)
    ctx.guidance[name] = guidance
    return guidance.prompt()


async def _read(learning: Any, method: str, tenant: str, *args: Any, attempts: int = 4) -> Any:
    """A read of the learning shard, asked again while the shard restarts (reads change nothing)."""
    for attempt in range(attempts):
        try:
            return await learning.call(method, tenant, *args)
        except ActorError as error:
            if error.status != 503 or attempt == attempts - 1:
                raise
            await asyncio.sleep(0.5 * 2**attempt)


async def _mapping_lines(learning: Any, ctx: FlowContext) -> str:
    loop = asyncio.get_running_loop()
    fields = await loop.run_in_executor(None, lambda: parse_schema(ctx.source_schema or columns_of(ctx.data),
                                                                   "source_schema"))
    if not fields:
        return ""
    found = await _read(learning, "recommendations_many", ctx.tenant,
                        [field_context(f, ctx.source_name) for f in fields], SIMILAR_THRESHOLD, 1)
    lines = []
    for f, recs in zip(fields, found):
        rec = recs[0] if recs else None
        target = rec["recommendation"].get("target_field") if rec and isinstance(rec["recommendation"], dict) else None
        if target:
            lines.append(f"- {f.name}: map to {target} ({rec['reasoning']}, confidence {rec['confidence']:.2f})")
    if not lines:
        return ""
    return ("\n\nWhat this tenant taught that applies here (your tool applies it; mention it in your answer):\n"
            + "\n".join(lines[:40]))


async def learn_successes(learning: Any, ctx: FlowContext, name: str) -> int:
    """Learn a finished phase's decisions as successes; returns how many items were sent."""
    if name == "field_mapping":
        return 0
    items = successes(name, ctx.results[name], apps_of(ctx, name))
    if not items:
        return 0
    try:
        await learning.call("learn", ctx.tenant, items)
    except ActorError as error:  # the flow goes on; what it would have taught is lost, and logged
        log.warning("successes of flow %s phase %s not learned: %s", ctx.flow_id, name, error.message)
        return 0
    return len(items)


def _baseline(decision: Decision, result: dict[str, Any], item: str, ctx: FlowContext) -> dict[str, Any]:
    """What a corrected number is a factor of: the application's current run cost, or its planned
    duration before any learned factor."""
    if decision.name == "target_factor":
        row = next(r for r in result["applications"] if r["application"] == item)
        return {"current_monthly": row["current_monthly"]}
    if decision.name == "duration_factor":
        row = next(r for r in result["schedule"] if r["application"] == item)
        app = {a["name"]: a for a in applications(ctx)["applications"]}.get(item)
        return {"weeks": planned_weeks(app, row["strategy"]) if app else 0}
    return {}


def _replan(name: str, result: dict[str, Any], ctx: FlowContext) -> dict[str, Any]:
    """Cost and timeline results computed again with their (corrected) factors."""
    strategies = ctx.results.get("migration_strategy", {})
    if name == "cost_optimization":
        fresh = cost_model(applications(ctx), strategies, rates=rates_with(result.get("unit_rates")),
                           target_factors=result.get("target_factors"))
    else:
        fresh = plan_timeline(applications(ctx), strategies, duration_factors=result.get("duration_factors"),
                              min_waves=result.get("min_waves"))
    return {**fresh, "summary": result.get("summary"), **{k: result[k] for k in KEPT if k in result}}


async def correct(learning: Any, ctx: FlowContext, corrections: list[dict[str, Any]]) -> dict[str, Any]:
    """Check every correction first (nothing is learned or changed if one is refused), learn them
    in one call, give feedback on applied recommendations, then change ctx.results in place."""
    checked = []
    for item in corrections:
        try:
            decision = decision_for(item["phase"], item["corrected"])
        except CorrectionError as error:
            raise CorrectionRefused(422, error.code, str(error)) from error
        result = ctx.results.get(item["phase"])
        if result is None:
            raise CorrectionRefused(409, "phase_not_finished", f"phase {item['phase']} of this flow has not finished")
        found = {i: (value, profile) for i, value, profile in decision.items(result, apps_of(ctx, item["phase"]))}
        if item["item"] not in found:
            raise CorrectionRefused(422, "unknown_item", f"{item['item']!r} is not an item of {item['phase']}'s result")
        current, profile = found[item["item"]]
        try:
            value = decision.parse(item["corrected"], current, _baseline(decision, result, item["item"], ctx))
        except CorrectionError as error:
            raise CorrectionRefused(422, error.code, str(error)) from error
        checked.append((decision, item, current, value, decision.context(profile)))
    learned = await learning.call("learn", ctx.tenant, [
        {"type": "correction", "original": {d.name: current}, "corrected": {d.name: value}, "context": context}
        for d, _item, current, value, context in checked])
    feedback = []
    for decision, item, _current, value, _context in checked:
        applied = next((a for a in ctx.results[item["phase"]].get("learned", [])
                        if a["decision"] == decision.name and a["item"] == item["item"]), None)
        if applied is not None:  # the recommendation applied here was kept (accepted) or overruled
            try:
                view = await learning.call("feedback", ctx.tenant, applied["pattern_id"], applied["value"] == value)
                feedback.append({"pattern_id": applied["pattern_id"], "accepted": applied["value"] == value,
                                 "confidence": view["confidence"]})
            except ActorError as error:
                log.info("feedback on pattern %s not recorded: %s", applied["pattern_id"], error.message)
    now = datetime.now(timezone.utc).isoformat()
    replan = set()
    for decision, item, current, value, _context in checked:
        result = ctx.results[item["phase"]]
        decision.apply(result, item["item"], value)
        result.setdefault("corrections", []).append({"decision": decision.name, "item": item["item"], "was": current,
                                                     "value": value, "at": now})
        if decision.numeric:
            replan.add(item["phase"])
    for name in replan:
        ctx.results[name] = _replan(name, ctx.results[name], ctx)
    return {"corrected": [{"phase": i["phase"], "item": i["item"], "decision": d.name, "was": c, "value": v}
                          for d, i, c, v, _ in checked], "learned": learned, "feedback": feedback}

