"""Every agent's decisions (crews/decisions.py), without Ray: what each phase decides per item,
the guidance that reaches the prompt its LLM sees, applying what fits, successes, corrections'
schemas and the planners' learned factors."""
from __future__ import annotations

import pytest

from crews.crew_builder import build_crew
from crews.decisions import (BY_PHASE, CorrectionError, Guidance, contexts_of, decision_for, guidance_for,
                             successes)
from serve_app.schemas.base import BodyError as FlowRequestError
from serve_app.schemas.flows import parse_corrections
from crews.offline_llm import OfflineLLM
from crews.phases import DISCOVERY, OPTIMIZATION, apps_of, phase_result
from tests.crew_support import context

PHASES = [p.name for p in DISCOVERY + OPTIMIZATION]


class RecordingLLM(OfflineLLM):
    """The OfflineLLM, keeping every message it was sent."""

    seen: list = []

    def call(self, messages, *args, **kwargs):
        self.seen.append(messages if isinstance(messages, str) else " ".join(str(m.get("content")) for m in messages))
        return super().call(messages, *args, **kwargs)


@pytest.mark.parametrize("kind", ["discovery", "optimization"])
def test_what_the_tenant_taught_reaches_the_prompt_each_agent_sees(kind):
    flow = context(kind)
    phases = DISCOVERY if kind == "discovery" else OPTIMIZATION
    for phase in phases:
        flow.prompts[phase.name] = f"\n\nWhat this tenant taught: TAUGHT-{phase.name}"
    seen: dict[str, list[str]] = {}

    def llm_for(key: str) -> RecordingLLM:
        llm = RecordingLLM()
        llm.seen = seen.setdefault(key, [])
        return llm

    def finished(name, _output):
        flow.results[name] = flow.output(name, next(p for p in phases if p.name == name).primary.name)

    build_crew(flow, llm_for, on_phase_done=finished).kickoff()
    for phase in phases:  # each agent's LLM saw its own lines, and no other agent's
        assert any(f"TAUGHT-{phase.name}" in m for m in seen[phase.name]), phase.name
        assert not any(f"TAUGHT-{other.name}" in m for other in phases if other is not phase for m in seen[phase.name])


def _rec(decision: str, value, pattern: str = "p1", confidence: float = 0.9, kind: str = "correction") -> dict:
    return {"type": f"{kind}_recommendation", "recommendation": {decision: value}, "confidence": confidence,
            "similarity": 0.95, "reasoning": f"Based on previous user {kind}", "pattern_id": pattern}


def _run(flow, phases, recommend):
    """Run the phases' tools as the runner does: guidance first (from `recommend(decision, item)`,
    standing in for the learning engine's `decide`), then the result with it applied."""
    for phase in phases:
        items = contexts_of(phase.name, phase.primary.compute(flow), apps_of(flow, phase.name))
        flow.guidance[phase.name] = guidance_for(items, [recommend(d.name, item) for d, item, _, _ in items])
        flow.results[phase.name] = phase_result(phase, flow)
    return flow.results


def test_every_phase_applies_what_fits_and_learns_successes():
    taught = {("personal_data", "inventory.hostname"): True, ("legacy", "crm"): True,
              ("dependency", "crm->identity"): "external", ("risk_level", "crm"): "critical",
              ("issue_accepted", "inventory.owner_email:sensitive_data"): True}
    flow = context("discovery")
    results = _run(flow, [p for p in DISCOVERY if p.name != "field_mapping"][:2], lambda d, i: (
        _rec(d, taught[(d, i)]) if (d, i) in taught else None))
    flow.results["field_mapping"] = phase_result(DISCOVERY[2], flow)
    results.update(_run(flow, DISCOVERY[3:], lambda d, i: _rec(d, taught[(d, i)]) if (d, i) in taught else None))
    validation = results["data_validation"]
    assert "inventory.hostname" in validation["pii_columns"]
    assert {(a["decision"], a["item"]) for a in validation["learned"]} <= set(taught)
    assert "crm" in results["application_discovery"]["legacy_applications"]
    crm = next(a for a in results["application_discovery"]["applications"] if a["name"] == "crm")
    assert "identity" in crm["external_dependencies"] and "identity" in results["application_discovery"]["external_dependencies"]
    risk = next(r for r in results["risk_assessment"]["applications"] if r["application"] == "crm")
    assert risk["level"] == "critical" and "crm" in results["risk_assessment"]["high_risk_applications"]
    # A recommendation about another decision, or with a value the decision cannot take, does not fit.
    items = contexts_of("risk_assessment", results["risk_assessment"], apps_of(flow, "risk_assessment"))
    assert guidance_for(items, [_rec("strategy", "retire"), _rec("risk_level", "apocalyptic")] +
                        [None for _ in items[2:]]).applies == {}
    assert guidance_for(items[:1], [_rec("risk_level", "critical", "c", 0.7)]).value("risk_level", items[0][1]) == "critical"
    # Successes: every decision of every item, as the rules left it.
    learned = successes("application_discovery", results["application_discovery"], apps_of(flow, "application_discovery"))
    assert learned and all(i["type"] == "success" and set(i["result"]) <= {"legacy", "dependency"} for i in learned)
    assert all(i["context"]["agent"] == "application_discovery" for i in learned)


def test_strategy_cost_and_timeline_apply_taught_values_and_factors():
    flow = context("optimization")
    base = _run(context("optimization"), OPTIMIZATION, lambda d, i: None)
    taught = {("strategy", "crm"): "retire", ("target_factor", "ledger-db"): 0.25,
              ("duration_factor", "ledger-db"): 2.0, ("min_wave", "crm"): 4}
    results = _run(flow, OPTIMIZATION, lambda d, i: _rec(d, taught[(d, i)]) if (d, i) in taught else None)
    strategy = {s["application"]: s["strategy"] for s in results["migration_strategy"]["strategies"]}
    assert strategy["crm"] == "retire" and results["migration_strategy"]["counts"]["retire"] >= 1
    ledger = next(r for r in results["cost_optimization"]["applications"] if r["application"] == "ledger-db")
    assert ledger["target_monthly"] == round(ledger["current_monthly"] * 0.25, 2)
    assert results["cost_optimization"]["target_factors"] == {"ledger-db": 0.25}
    weeks = {s["application"]: s["end_week"] - s["start_week"] for s in results["timeline_planning"]["schedule"]}
    before = {s["application"]: s["end_week"] - s["start_week"] for s in base["timeline_planning"]["schedule"]}
    assert weeks["ledger-db"] == pytest.approx(round(before["ledger-db"] * 2.0, 1), abs=0.11)
    crm = next(s for s in results["timeline_planning"]["schedule"] if s["application"] == "crm")
    assert crm["wave"] >= 4
    earlier = [s for s in results["timeline_planning"]["schedule"] if s["wave"] < crm["wave"]]
    assert crm["start_week"] >= max(s["end_week"] for s in earlier)  # held back until earlier waves end
    assert {"target_factor", "unit_rate"} == {next(iter(i["result"])) for i in successes(
        "cost_optimization", results["cost_optimization"], apps_of(flow, "cost_optimization"))}
    # Nothing taught: the rules' results, nothing listed as learned.
    assert all(not r["learned"] for r in base.values())


def test_taught_unit_rates_price_the_plan():
    """A corrected unit rate is tenant-wide: every rate is an item with the same context in every
    flow, and the cost model prices the inventory with the taught rates."""
    base = _run(context("optimization"), OPTIMIZATION, lambda d, i: None)
    assert base["cost_optimization"]["rates"]["engineer_week"] == 4000.0
    taught = {("unit_rate", "engineer_week"): 5000.0, ("unit_rate", "vcpu_month"): 40.0}
    results = _run(context("optimization"), OPTIMIZATION,
                   lambda d, i: _rec(d, taught[(d, i)]) if (d, i) in taught else None)
    cost = results["cost_optimization"]
    assert cost["rates"]["engineer_week"] == 5000.0 and cost["rates"]["vcpu_month"] == 40.0
    assert cost["rates"]["gb_ram_month"] == base["cost_optimization"]["rates"]["gb_ram_month"]
    assert cost["unit_rates"] == {"engineer_week": 5000.0, "vcpu_month": 40.0}
    for row, before in zip(cost["applications"], base["cost_optimization"]["applications"]):
        assert row["migration_cost"] == round(row["effort_weeks"] * 5000.0, 2)
        assert before["migration_cost"] == round(before["effort_weeks"] * 4000.0, 2)
    assert {(a["decision"], a["item"]) for a in cost["learned"]} >= set(taught)
    rate = decision_for("cost_optimization", {"rate": 1})
    assert rate.name == "unit_rate" and rate.parse({"rate": 5000}, 4000.0, {}) == 5000.0
    for bad in ({"rate": -1}, {"rate": True}, {"rate": "5"}, {"rate": float("inf")}, {"rate": 2e6},
                {"rate": 5, "weeks": 1}):
        with pytest.raises(CorrectionError):
            rate.parse(bad, 4000.0, {})


def test_guidance_lines_and_correction_schemas():
    assert Guidance({}).prompt() == ""
    lines = Guidance({("strategy", "crm"): _rec("strategy", "retire")}).prompt()
    assert "crm: strategy = retire" in lines and "confidence 0.90" in lines
    assert set(BY_PHASE) | {"field_mapping"} == set(PHASES)
    assert decision_for("migration_strategy", {"strategy": "retire"}).name == "strategy"
    assert decision_for("timeline_planning", {"wave": 2}).name == "min_wave"
    for phase, corrected, code in (("nope", {"strategy": "retire"}, "unknown_phase"),
                                   ("migration_strategy", {"level": "high"}, "invalid_correction"),
                                   ("migration_strategy", {}, "invalid_correction"),
                                   ("migration_strategy", "retire", "invalid_correction")):
        with pytest.raises(CorrectionError) as refused:
            decision_for(phase, corrected)
        assert refused.value.code == code
    strategy = decision_for("migration_strategy", {"strategy": "x"})
    with pytest.raises(CorrectionError):
        strategy.parse({"strategy": "x"}, "rehost", {})
    cost = decision_for("cost_optimization", {"target_monthly": 1})
    assert cost.parse({"target_monthly": 50}, 0.8, {"current_monthly": 200}) == 0.25
    assert decision_for("timeline_planning", {"weeks": 3}).parse({"weeks": 3.1}, 1.0, {"weeks": 2.1}) == 1.5
    for bad in (-1, True, "5", float("inf")):
        with pytest.raises(CorrectionError):
            cost.parse({"target_monthly": bad}, 0.8, {"current_monthly": 200})
    with pytest.raises(CorrectionError) as nothing:
        cost.parse({"target_monthly": 5}, 0.8, {"current_monthly": 0})
    assert nothing.value.code == "uncorrectable_item"
    wave = decision_for("timeline_planning", {"wave": 1})
    for bad in (0, 1.5, True):
        with pytest.raises(CorrectionError):
            wave.parse({"wave": bad}, 1, {})


def test_corrections_parse_both_forms_strictly():
    assert parse_corrections({"phase": "risk_assessment", "item": "crm", "corrected": {"level": "high"}}) == [
        {"phase": "risk_assessment", "item": "crm", "corrected": {"level": "high"}}]
    assert parse_corrections({"phase": "field_mapping", "item": "a", "corrected": {"target_field": "b"}}) == [
        {"source_field": "a", "target_field": "b"}]
    for body in ({"phase": "x", "item": "", "corrected": {}}, {"phase": "x", "item": "i"},
                 {"phase": "x", "item": "i", "corrected": [], },
                 {"phase": "field_mapping", "item": "a", "corrected": {"strategy": "b"}},
                 {"corrections": [{"phase": "x", "item": "i", "corrected": {"a": 1}},
                                  {"source_field": "a", "target_field": "b"}]},
                 {"corrections": [{"phase": "x", "item": "i", "corrected": {"a": 1}},
                                  {"phase": "x", "item": "i", "corrected": {"a": 2}}]}):
        with pytest.raises(FlowRequestError):
            parse_corrections(body)


def test_the_decision_model_learns_a_policy_from_a_few_corrections():
    from actors.learning.decision_model import KEEP, Example, decide

    def profile(name: str, users: str, stack: str) -> str:
        return f"context_agent migration_strategy context_decision strategy {name} {users} {stack}"

    examples = [Example(profile(f"app{i} svc", "users_5_50", s), KEEP, None, f"s{i}", 0.8)
                for i, s in enumerate(["java", "python", "node", "go", "java", "php"])]
    examples += [Example(profile("old crm", "users_lt5", "java"), repr("retire"), "retire", "c1", 0.95),
                 Example(profile("tiny wiki", "users_lt5", "python"), repr("retire"), "retire", "c2", 0.95)]
    found = decide(examples, [profile("fresh api", "users_lt5", "go"), profile("big api", "users_5_50", "java"),
                              profile("old crm", "users_lt5", "java")])
    assert found[0][0] == "retire" and found[0][1] >= 0.5  # unseen, but it has what the corrected ones share
    assert found[1] is None  # like the kept ones
    assert found[2] == ("retire", 1.0, "c1")  # its own correction
    assert decide(examples[:6], [profile("x", "users_lt5", "go")]) == [None]  # nothing corrected: the rules
    only = [Example("a b", repr(1.5), 1.5, "c", 0.95)]
    assert decide(only, ["a b", "a c"]) == [(1.5, 1.0, "c"), None]  # one class: only the very item
