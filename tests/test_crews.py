"""The agents' tools, the OfflineLLM and the crews' structure, without Ray."""
from __future__ import annotations


import pytest
from crewai import Process

from actors.flows.core import apply_corrections
from crews.agents import REGISTRY, FlowTool, build_agent, observation
from crews.crew_builder import build_crew
from serve_app.schemas.base import BodyError as FlowRequestError
from serve_app.schemas.flows import parse_corrections, parse_flow_request
from crews.inventory import column_roles, criticality_of, discover
from crews.offline_llm import OfflineLLM, llm_for
from crews.phases import DISCOVERY, OPTIMIZATION, phases_of
from crews.planning import (assess_risk, choose_strategy, cost_model, plan_strategies, plan_timeline,
                            strongly_connected)
from crews.profiling import datasets, luhn_ok, pii_kind, profile_columns, scan_pii, validate
from crews.samples import sample_inventory
from tests.crew_support import context

SAMPLE = sample_inventory()


def app(name: str, **fields):
    base = {"name": name, "technologies": [], "databases": [], "os": [], "depends_on": [], "external_dependencies": [],
            "dependents": 0, "criticality": "medium", "complexity": 0.1, "legacy": [], "users": 10, "records": 1,
            "utilisation": 0.5, "monthly_cost": 100.0}
    return {**base, **fields}


def test_profiling_and_pii_by_hand():
    records = [{"id": 1, "email": "a@b.co", "card": "4111 1111 1111 1111", "note": ""},
               {"id": "2", "email": "c@d.org", "card": "4111-1111-1111-1111", "note": None},
               {"id": 1, "email": "a@b.co", "card": "4111 1111 1111 1111", "note": ""}]
    profile = profile_columns(records)
    assert profile["id"]["type"] == "integer" and profile["id"]["distinct"] == 2
    assert profile["note"]["fill_rate"] == 0 and profile["email"]["type"] == "email"
    pii = scan_pii(records, profile)
    assert pii["columns"]["email"]["kind"] == "email" and pii["sensitive"] == ["card"]
    report = validate({"people": records})
    assert report["datasets"]["people"]["duplicates"] == 1
    issues = {i["issue"] for i in report["issues"]}
    assert {"duplicate_records", "sensitive_data", "mostly_empty"} <= issues
    assert report["status"] == "passed" and 0 < report["quality_score"] < 1
    assert luhn_ok("4111111111111111") and not luhn_ok("4111111111111112")
    assert pii_kind("123-45-6789") == "ssn" and pii_kind("10.0.0.1") == "ip_address"
    assert pii_kind("+44 20 7946 0958") == "phone" and pii_kind("hello") is None and pii_kind(True) is None
    empty = validate([{"a": None}, {"a": ""}])
    assert empty["status"] == "failed" and empty["quality_score"] == 0
    for bad in ([], {}, {"x": []}, {"x": [1]}, "text"):
        with pytest.raises(ValueError):
            datasets(bad)


def test_discovery_resolves_dependencies_and_plain_datasets():
    found = discover(datasets(SAMPLE["data"]))
    apps = {a["name"]: a for a in found["applications"]}
    assert found["application_count"] == 11 and found["server_count"] == 12
    assert apps["customer-portal"]["servers"] == ["web-01", "web-02"]
    assert apps["orders-api"]["depends_on"] == ["billing-batch", "inventory-service"]
    assert apps["crm"]["external_dependencies"] == ["email-gateway"] and found["external_dependencies"] == ["email-gateway"]
    assert apps["identity"]["dependents"] == 3 and apps["warehouse-mainframe"]["legacy"] == ["cobol"]
    assert apps["customer-portal"]["monthly_cost"] == 4800 and apps["billing-batch"]["utilisation"] == 0.15
    plain = discover({"customers": [{"id": 1, "name": "Jo"}, {"id": 2, "name": "Al"}]})
    assert [a["name"] for a in plain["applications"]] == ["customers"] and plain["applications"][0]["records"] == 2
    named = discover({"x": [{"name": "svc", "os": "Ubuntu", "depends_on": ["db", "svc"]}, {"name": ""}]})
    assert named["applications"][0]["depends_on"] == ["db"] and named["external_dependencies"] == ["db"]
    assert column_roles(["AppName", "Host_Name", "CPU"]) == {"application": "AppName", "server": "Host_Name", "cpu": "CPU"}
    assert [criticality_of(v) for v in ("Tier 1", "high", "p4", None)] == ["critical", "high", "low", "medium"]


def test_six_r_rules_cost_and_timeline():
    assert choose_strategy(app("old", users=0, utilisation=0))["strategy"] == "retire"
    assert choose_strategy(app("mf", technologies=["COBOL"]))["strategy"] == "retain"
    assert choose_strategy(app("hr-portal", users=10, monthly_cost=500))["strategy"] == "repurchase"
    assert choose_strategy(app("crm", users=10_000, monthly_cost=500))["strategy"] != "repurchase"
    assert choose_strategy(app("core", complexity=0.7, criticality="critical", technologies=["Java 17"]))["strategy"] == "refactor"
    assert choose_strategy(app("shop", complexity=0.3, databases=["MySQL 8"]))["strategy"] == "replatform"
    assert choose_strategy(app("api", legacy=["java 7"]))["strategy"] == "replatform"
    assert choose_strategy(app("web"))["strategy"] == "rehost"
    discovery = {"applications": [app("a", depends_on=["b"]), app("b", depends_on=["c"]), app("c", depends_on=["b"]),
                                  app("d", monthly_cost=None, cpu=4, memory_gb=8, storage_gb=100, utilisation=0.1)]}
    strategies = plan_strategies(discovery)
    assert strategies["counts"] == {"rehost": 4}
    costs = cost_model(discovery, strategies)
    d = next(r for r in costs["applications"] if r["application"] == "d")
    assert d["current_monthly"] == 4 * 25 + 8 * 3.5 + 100 * 0.1  # from its size at the default rates
    assert d["target_monthly"] == round(d["current_monthly"] * 0.85 * 0.7, 2)  # rehosted and rightsized
    assert any(o["application"] == "d" and o["advice"].startswith("rightsize") for o in costs["optimisations"])
    assert costs["totals"]["migration_cost"] == sum(r["migration_cost"] for r in costs["applications"])
    timeline = plan_timeline(discovery, strategies)
    assert timeline["move_groups"] == [["b", "c"]]  # the cycle moves together
    weeks = {s["application"]: (s["start_week"], s["end_week"]) for s in timeline["schedule"]}
    assert weeks["b"] == weeks["c"] and weeks["a"][0] == weeks["b"][1]  # a starts after its dependency
    assert timeline["critical_path"] == ["b", "c", "a"] and timeline["total_weeks"] == weeks["a"][1]
    assert timeline["waves"] == 2 and len(timeline["milestones"]) == 2
    assert strongly_connected({"x": ["y"], "y": ["x"], "z": []}) == [{"x", "y"}, {"z"}]


def test_risk_scores_weigh_data_mapping_and_technology():
    validation = {"quality_score": 0.5, "pii_columns": ["t.email"], "issues": [{"issue": "sensitive_data"}]}
    mapping = {"mappings": [{"source_field": "a", "confidence": 0.5}], "unmapped_source_fields": ["b"]}
    risky = app("legacy", complexity=0.8, legacy=["cobol"], dependents=3, criticality="critical",
                external_dependencies=["x"])
    risk = assess_risk(validation, {"applications": [app("calm"), risky]}, mapping)
    assert [a["application"] for a in risk["applications"]] == ["legacy", "calm"]
    assert risk["applications"][0]["level"] in ("high", "critical") and risk["high_risk_applications"][0] == "legacy"
    assert risk["low_confidence_mappings"] == ["a"] and risk["unmapped_fields"] == ["b"]
    assert any("Encrypt" in m for m in risk["applications"][0]["mitigations"])
    clean = assess_risk({"quality_score": 1.0}, {"applications": [app("calm")]}, {"mappings": [{"source_field": "a"}]})
    assert clean["overall_level"] == "low" and clean["applications"][0]["mitigations"] == ["Standard migration runbook."]
    decided = assess_risk(validation, {"applications": [risky]}, {**mapping, "no_counterpart": ["b"]})
    assert decided["unmapped_fields"] == []  # a field with no counterpart is decided, not a risk


def test_tools_compute_from_the_flow_and_record_it():
    flow = context()
    tool = FlowTool.bind(DISCOVERY[0].tools[0], "data_validation", flow)
    text = tool.run()
    assert text.splitlines()[0].startswith("12 records in 1 dataset(s)")
    assert flow.output("data_validation", "profile_data")["pii_columns"] == ["inventory.owner_email"]
    long = observation({"summary": "s", "data": "x" * 10_000})
    assert len(long) <= 3_000 and long.endswith("(truncated)")
    with pytest.raises(LookupError):
        flow.result("data_validation")


def test_offline_llm_drives_tools_then_answers():
    llm = OfflineLLM()
    system = {"role": "system", "content": "Tool Name: profile_data\nTool Arguments: {}\nTool Name: scan_pii\n"}
    user = {"role": "user", "content": "Current Task: validate\n\nThis is the expected criteria for your final answer: x"}
    first = llm.call([system, user])
    assert first.endswith("Action: profile_data\nAction Input: {}")
    step = {"role": "assistant", "content": first + "\nObservation: 12 records\n{}"}
    assert "Action: scan_pii" in llm.call([system, user, step])
    step2 = {"role": "assistant", "content": "Action: scan_pii\nAction Input: {}\nObservation: personal data: none\n{}"}
    final = llm.call([system, user, step, step2])
    assert final.endswith("Final Answer: - 12 records\n- personal data: none")
    usage = llm.get_token_usage_summary()
    assert llm.calls == 3 and usage.prompt_tokens > 0 and usage.completion_tokens > 0
    assert llm.call("Current Task: nothing").endswith("No tools were needed for: nothing")
    manager = {"role": "system", "content": "Tool Name: delegate_work_to_coworker\nTool Description: Delegate a "
               "specific task to one of the following coworkers: Field Mapping Specialist\nThe input..."}
    delegated = llm.call([manager, user])
    assert '"coworker": "Field Mapping Specialist"' in delegated and '"task": "validate"' in delegated
    done = llm.call([manager, user, {"role": "assistant", "content": delegated + "\nObservation: the mapping"}])
    assert done.endswith("Final Answer: the mapping")
    assert isinstance(llm_for(""), OfflineLLM) and llm_for("offline:gpt-4o").model == "gpt-4o"
    assert type(llm_for("openai/gpt-4o-mini")).__name__ != "OfflineLLM"


def test_crew_structure_context_links_and_resume():
    flow = context()
    crew = build_crew(flow, lambda key: OfflineLLM(), process="hierarchical")
    assert len(crew.agents) == 4 and len(crew.tasks) == 4 and crew.process == Process.hierarchical
    assert [t.name for t in crew.tasks] == [p.name for p in DISCOVERY]
    assert [a.role for a in crew.agents] == [REGISTRY[p.name].role for p in DISCOVERY]
    for i, task in enumerate(crew.tasks):
        assert task.context == crew.tasks[:i] and task.agent is crew.agents[i]
        assert [t.name for t in task.agent.tools] == [t.name for t in DISCOVERY[i].tools]
    assert crew.manager_llm is not None
    optimisation = build_crew(context("optimization"), lambda key: OfflineLLM())
    assert [t.name for t in optimisation.tasks] == [p.name for p in OPTIMIZATION]
    assert optimisation.process == Process.sequential and optimisation.tasks[2].context == optimisation.tasks[:2]
    resumed = context(results={"data_validation": {"summary": "stored validation"}})
    again = build_crew(resumed, lambda key: OfflineLLM())
    assert [t.name for t in again.tasks] == ["application_discovery", "field_mapping", "risk_assessment"]
    assert again.tasks[0].context[0].output.raw == "stored validation" and len(again.agents) == 4
    with pytest.raises(ValueError):
        build_crew(context(results={p.name: {} for p in DISCOVERY}), lambda key: OfflineLLM())
    with pytest.raises(ValueError):
        build_crew(flow, lambda key: OfflineLLM(), process="parallel")
    agent = build_agent("timeline_planning", context("optimization"), OfflineLLM())
    assert agent.role == "Migration Timeline Planner" and not agent.allow_delegation
    assert len(phases_of("discovery")) == 4 and len(REGISTRY) == 7


def test_a_crew_run_offline_fills_every_phase():
    flow = context("optimization")
    done = []

    def finished(name, output):
        flow.results[name] = {**flow.output(name, next(p for p in OPTIMIZATION if p.name == name).primary.name)}
        done.append((name, output.raw.splitlines()[0]))

    build_crew(flow, lambda key: OfflineLLM(), on_phase_done=finished).kickoff()
    assert [d[0] for d in done] == [p.name for p in OPTIMIZATION]
    assert done[0][1].startswith("- 6R: ") and "critical path" in done[2][1]
    assert flow.results["timeline_planning"]["critical_path"][0] == "ledger-db"


def test_flow_requests_and_corrections_parse_strictly():
    spec = parse_flow_request({"name": " n ", "data": [{"a": 1}]})
    assert spec == {"name": "n", "kind": "discovery", "process": "sequential", "data": {"records": [{"a": 1}]}}
    with pytest.raises(FlowRequestError) as error:
        parse_flow_request({"name": "n", "data": [{"a": 1}], "source_schema": 5})
    assert error.value.code == "invalid_schema"
    assert parse_corrections({"source_field": "a", "target_field": "b"}) == [{"source_field": "a", "target_field": "b"}]
    for bad in ({"corrections": [{"source_field": "a", "target_field": "b"}] * 2}, {"corrections": "x"},
                {"source_field": "a", "target_field": ""}, {"source_field": "a", "target_field": "b", "x": 1}):
        with pytest.raises(FlowRequestError):
            parse_corrections(bad)


def test_apply_corrections_keeps_the_mapping_one_to_one():
    mapping = {"mappings": [{"source_field": "a", "target_field": "x", "confidence": 0.9, "method": "matcher"},
                            {"source_field": "b", "target_field": "y", "confidence": 0.8, "method": "matcher"}],
               "unmapped_source_fields": ["c"], "unmapped_target_fields": ["z"]}
    fixed = apply_corrections(mapping, [{"source_field": "c", "target_field": "x"}], ["a", "b", "c"], ["x", "y", "z"])
    assert [(m["source_field"], m["target_field"]) for m in fixed["mappings"]] == [("b", "y"), ("c", "x")]
    assert fixed["unmapped_source_fields"] == ["a"] and fixed["unmapped_target_fields"] == ["z"]
    assert fixed["match_rate"] == round(2 / 3, 4)
