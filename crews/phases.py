"""The phases of each flow kind and what each phase's tools compute from the flow's input.

A phase is named after the agent that runs it (as the original's events were: `data_validation`,
`application_discovery`, ...). Each tool is a plain function of the FlowContext returning a dict
with a one-line `summary`; a phase's result is its primary tool's output.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from crews.decisions import Guidance, apply_guidance
from crews.field_mapping import map_fields_sync
from crews.flow_context import FlowContext
from crews.inventory import discover
from crews.planning import assess_risk, cost_model, plan_strategies, plan_timeline, rates_with
from crews.profiling import columns_of, scan_pii, validate

DEFAULT_TARGET_SCHEMA = {"fields": [
    {"name": "application_name", "type": "string"}, {"name": "host_name", "type": "string"},
    {"name": "operating_system", "type": "string"}, {"name": "tech_stack", "type": "string"},
    {"name": "database_engine", "type": "string"}, {"name": "depends_on", "type": "string"},
    {"name": "environment", "type": "string"}, {"name": "business_criticality", "type": "string"},
    {"name": "owner_contact", "type": "email"}, {"name": "user_count", "type": "integer"},
    {"name": "vcpu", "type": "integer"}, {"name": "ram_gb", "type": "number"}, {"name": "disk_gb", "type": "number"},
    {"name": "run_cost_monthly", "type": "number"}, {"name": "avg_cpu_percent", "type": "number"},
]}


def profile_data(ctx: FlowContext) -> dict[str, Any]:
    report = validate(ctx.data)
    report["summary"] = (f"{report['records']} records in {len(report['datasets'])} dataset(s); quality "
                         f"{report['quality_score']:.2f} ({report['status']}); {len(report['issues'])} issue(s); "
                         f"personal data in {len(report['pii_columns'])} column(s)")
    return report


def pii_scan(ctx: FlowContext) -> dict[str, Any]:
    found = {name: scan_pii(records) for name, records in ctx.data.items()}
    columns = sorted(f"{d}.{c} ({f['kind']})" for d, scan in found.items() for c, f in scan["columns"].items())
    return {"datasets": found, "summary": "personal data: " + (", ".join(columns) or "none found")}


def applications(ctx: FlowContext) -> dict[str, Any]:
    """The discovery phase's result, or (in an optimisation flow, which has no discovery phase)
    the same discovery computed from the flow's records."""
    if "application_discovery" in ctx.results:
        return ctx.results["application_discovery"]
    found = discover(ctx.data)
    found["summary"] = (f"{found['application_count']} application(s) on {found['server_count']} server(s), "
                        f"{found['dependency_edges']} dependencies, "
                        f"{len(found['external_dependencies'])} external; legacy: "
                        + (", ".join(found["legacy_applications"]) or "none"))
    return found


def dependency_graph(ctx: FlowContext) -> dict[str, Any]:
    apps = applications(ctx)["applications"]
    edges = [[a["name"], d] for a in apps for d in a["depends_on"]]
    hubs = sorted((a for a in apps if a["dependents"]), key=lambda a: (-a["dependents"], a["name"]))[:5]
    return {"edges": edges, "most_depended_on": [{"application": a["name"], "dependents": a["dependents"]} for a in hubs],
            "summary": f"{len(edges)} edges; most depended on: "
                       + (", ".join(f"{a['name']} ({a['dependents']})" for a in hubs) or "none")}


def field_mapping(ctx: FlowContext) -> dict[str, Any]:
    if ctx.learning is None:
        raise RuntimeError("field mapping needs the tenant's learning engine")
    source = ctx.source_schema or columns_of(ctx.data)
    target = ctx.target_schema or DEFAULT_TARGET_SCHEMA
    found = map_fields_sync(ctx.learning, ctx.tenant, source, target, ctx.source_name)
    found["source_schema"] = source
    found["target_schema"] = target
    unmapped = [f for f in found["unmapped_source_fields"] if f not in found["no_counterpart"]]
    found["summary"] = (f"mapped {len(found['mappings'])} of {len(found['mappings']) + len(found['unmapped_source_fields'])}"
                        f" source fields; {found['recommendations_applied']} from what this tenant taught; unmapped: "
                        + (", ".join(unmapped) or "none")
                        + (f"; no counterpart: {', '.join(found['no_counterpart'])}" if found["no_counterpart"] else ""))
    return found


def risk_scores(ctx: FlowContext) -> dict[str, Any]:
    found = assess_risk(ctx.result("data_validation"), applications(ctx), ctx.result("field_mapping"))
    found["summary"] = (f"overall risk {found['overall_level']} ({found['overall_score']:.2f}); high-risk: "
                        + (", ".join(found["high_risk_applications"]) or "none"))
    return found


def strategies(ctx: FlowContext) -> dict[str, Any]:
    found = plan_strategies(applications(ctx))
    found["summary"] = "6R: " + ", ".join(f"{k} {v}" for k, v in found["counts"].items())
    return found


def _taught(ctx: FlowContext, phase: str, decision: str) -> dict[str, Any]:
    """Per application, the value of `decision` the tenant taught for this flow's phase."""
    guidance: Guidance | None = ctx.guidance.get(phase)
    if guidance is None:
        return {}
    return {item: guidance.value(name, item) for name, item in guidance.applies if name == decision}


def costs(ctx: FlowContext) -> dict[str, Any]:
    found = cost_model(applications(ctx), ctx.result("migration_strategy"),
                       rates=rates_with(_taught(ctx, "cost_optimization", "unit_rate")),
                       target_factors=_taught(ctx, "cost_optimization", "target_factor"))
    totals = found["totals"]
    found["summary"] = (f"run cost ${totals['current_monthly']:,.0f}/month -> ${totals['target_monthly']:,.0f}/month; "
                        f"migration ${totals['migration_cost']:,.0f}; payback "
                        + (f"{totals['payback_months']} months" if totals["payback_months"] else "none"))
    return found


def timeline(ctx: FlowContext) -> dict[str, Any]:
    found = plan_timeline(applications(ctx), ctx.result("migration_strategy"),
                          duration_factors=_taught(ctx, "timeline_planning", "duration_factor"),
                          min_waves=_taught(ctx, "timeline_planning", "min_wave"))
    found["summary"] = (f"{found['total_weeks']} weeks in {found['waves']} wave(s); critical path: "
                        + " -> ".join(found["critical_path"]))
    return found


@dataclass(frozen=True)
class ToolSpec:
    name: str
    description: str
    compute: Callable[[FlowContext], dict[str, Any]]


@dataclass(frozen=True)
class Phase:
    name: str  # also the key of the agent that runs it
    task: str
    expected_output: str
    tools: tuple[ToolSpec, ...]  # the first is the primary: its output is the phase's result

    @property
    def primary(self) -> ToolSpec:
        return self.tools[0]


DISCOVERY = (
    Phase("data_validation",
          "Validate the imported data set: assess its quality, scan it for personal and sensitive data, check "
          "formats and consistency, and recommend fixes.",
          "A validation report: quality score, issues, personal-data columns and recommendations.",
          (ToolSpec("profile_data", "Profile every column of the flow's records: types, fill rates, duplicates, "
                    "issues and a quality score.", profile_data),
           ToolSpec("scan_pii", "Scan the flow's records for personal data (e-mails, phones, IDs, cards, addresses).",
                    pii_scan))),
    Phase("application_discovery",
          "Based on the validation results, discover the applications in the records, their servers and technology "
          "stacks, and map their dependencies.",
          "An application inventory with dependency mapping and complexity.",
          (ToolSpec("discover_applications", "Find applications, servers, technologies and dependencies in the "
                    "flow's records.", applications),
           ToolSpec("dependency_graph", "List the dependency edges and the most depended-on applications.",
                    dependency_graph))),
    Phase("field_mapping",
          "Map the source schema's fields to the target schema, applying what this tenant has taught, and list "
          "what stays unmapped.",
          "A field mapping specification with confidences.",
          (ToolSpec("map_fields", "Map source fields to target fields with the field matcher and this tenant's "
                    "learned corrections.", field_mapping),)),
    Phase("risk_assessment",
          "Assess migration risks from the validation, discovery and mapping findings and recommend mitigations.",
          "A risk assessment with per-application scores and mitigations.",
          (ToolSpec("score_risks", "Score data, technical and mapping risk per application, with mitigations.",
                    risk_scores),)),
)
OPTIMIZATION = (
    Phase("migration_strategy",
          "Choose a 6R migration strategy (retire, retain, repurchase, rehost, replatform, refactor) for each "
          "application, with its rationale.",
          "Migration strategy recommendations per application.",
          (ToolSpec("recommend_6r", "Apply the 6R rules to every application found in the flow's records.",
                    strategies),)),
    Phase("cost_optimization",
          "Estimate run costs before and after migration and the one-time migration cost for the chosen "
          "strategies, and recommend optimisations.",
          "A cost plan with totals, payback and optimisations.",
          (ToolSpec("estimate_costs", "Compute current and target monthly cost, migration cost and payback per "
                    "application.", costs),)),
    Phase("timeline_planning",
          "Plan the migration timeline: waves over the dependencies, testing, milestones and the critical path.",
          "A migration timeline with waves, milestones and the critical path.",
          (ToolSpec("plan_timeline", "Schedule the migrations over their dependencies and find the critical path.",
                    timeline),)),
)
KINDS: dict[str, tuple[Phase, ...]] = {"discovery": DISCOVERY, "optimization": OPTIMIZATION}


def phases_of(kind: str) -> tuple[Phase, ...]:
    return KINDS[kind]


def apps_of(ctx: FlowContext, phase: str) -> dict[str, dict[str, Any]]:
    """The flow's applications by name, for the profiles of a phase's decisions (none needed for
    data validation, whose items are columns)."""
    if phase == "data_validation":
        return {}
    return {a["name"]: a for a in applications(ctx)["applications"]}


def phase_result(phase: Phase, ctx: FlowContext) -> dict[str, Any]:
    """The phase's result: its primary tool's output with what the tenant taught applied to it,
    listed under `learned` (each with the pattern it came from)."""
    result = phase.primary.compute(ctx)
    learned = apply_guidance(phase.name, result, ctx.guidance.get(phase.name), apps_of(ctx, phase.name))
    result["learned"] = learned
    if learned:
        result["summary"] = f"{result.get('summary', '')}; {len(learned)} decision(s) from what this tenant taught"
    return result
