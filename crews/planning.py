"""Migration planning: risk scoring, 6R strategy rules, a cost model and a timeline with its
critical path.

Each function takes what the earlier phases found (plain dicts) and returns plain dicts, so a phase
can be re-run on resume from what was stored, and a test can check a figure by hand.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

STRATEGIES = ("retire", "retain", "repurchase", "rehost", "replatform", "refactor")
COMMODITY = ("crm", "email", "mail", "hr", "payroll", "helpdesk", "ticketing", "wiki", "intranet", "erp", "expenses",
             "timesheet", "chat")
MANAGED_DATABASES = ("postgres", "mysql", "mariadb", "sql server", "oracle", "mongodb", "redis")
MODERN = ("python", "java", "node", "go", "kotlin", ".net core", ".net 6", ".net 8", "typescript", "spring")
LEVELS = ((0.75, "critical"), (0.5, "high"), (0.25, "medium"), (0.0, "low"))


def level(score: float) -> str:
    return next(name for floor, name in LEVELS if score >= floor)


def assess_risk(validation: dict[str, Any], discovery: dict[str, Any], mapping: dict[str, Any]) -> dict[str, Any]:
    """Per application and overall: data, technical and mapping risks with mitigations."""
    quality = float(validation.get("quality_score", 1.0))
    pii = bool(validation.get("pii_columns"))
    sensitive = any(i.get("issue") == "sensitive_data" and not i.get("accepted") for i in validation.get("issues", []))
    mappings = mapping.get("mappings", [])
    # a field the tenant says has no counterpart is decided, not a mapping risk
    decided = set(mapping.get("no_counterpart") or ())
    unmapped = [f for f in mapping.get("unmapped_source_fields", []) if f not in decided]
    low_confidence = [m["source_field"] for m in mappings if m.get("confidence", 1) < 0.6]
    mapped_share = len(mappings) / max(1, len(mappings) + len(unmapped))
    data_risk = min(1.0, (1 - quality) * 0.6 + (0.2 if pii else 0) + (0.2 if sensitive else 0))
    mapping_risk = min(1.0, (1 - mapped_share) * 0.7 + 0.3 * len(low_confidence) / max(1, len(mappings)))
    apps = []
    for app in discovery.get("applications", []):
        technical = min(1.0, app["complexity"] + (0.15 if app["external_dependencies"] else 0))
        weight = {"critical": 1.0, "high": 0.8, "medium": 0.6, "low": 0.4}[app["criticality"]]
        score = round(min(1.0, (0.5 * technical + 0.3 * data_risk + 0.2 * mapping_risk) * (0.6 + 0.4 * weight) * 1.25), 4)
        apps.append({"application": app["name"], "score": score, "level": level(score),
                     "factors": _factors(app, pii, sensitive), "mitigations": _mitigations(app, pii, sensitive)})
    apps.sort(key=lambda a: (-a["score"], a["application"]))
    overall = round(max([a["score"] for a in apps] + [0.6 * data_risk + 0.4 * mapping_risk]), 4)
    return {
        "overall_score": overall, "overall_level": level(overall),
        "data_risk": round(data_risk, 4), "mapping_risk": round(mapping_risk, 4),
        "applications": apps,
        "high_risk_applications": [a["application"] for a in apps if a["level"] in ("high", "critical")],
        "low_confidence_mappings": low_confidence, "unmapped_fields": unmapped,
    }


def _factors(app: dict[str, Any], pii: bool, sensitive: bool) -> list[str]:
    factors = [f"legacy technology: {', '.join(app['legacy'])}"] if app["legacy"] else []
    if app["dependents"] >= 2:
        factors.append(f"{app['dependents']} applications depend on it")
    if app["external_dependencies"]:
        factors.append(f"external dependencies: {', '.join(app['external_dependencies'])}")
    if app["criticality"] in ("high", "critical"):
        factors.append(f"business criticality {app['criticality']}")
    if sensitive:
        factors.append("sensitive personal data in scope")
    elif pii:
        factors.append("personal data in scope")
    return factors


def _mitigations(app: dict[str, Any], pii: bool, sensitive: bool) -> list[str]:
    steps = []
    if app["legacy"]:
        steps.append("Run a proof of concept on the target platform before committing the wave.")
    if app["dependents"] >= 2:
        steps.append("Migrate with its dependents in one move group, or keep a hybrid link during cut-over.")
    if app["external_dependencies"]:
        steps.append("Confirm network paths and credentials to external systems before cut-over.")
    if app["criticality"] in ("high", "critical"):
        steps.append("Plan a rehearsed cut-over with a tested rollback and a freeze window.")
    if pii or sensitive:
        steps.append("Encrypt personal data in transit and at rest; keep an audit trail of access.")
    return steps or ["Standard migration runbook."]


def choose_strategy(app: dict[str, Any], rates: "CostRates | None" = None) -> dict[str, Any]:
    """The 6R rules, first that applies wins, each with its reason. A commodity application is
    repurchased only when the SaaS seats cost no more than half again what it costs to run now."""
    rates = rates or CostRates()
    name = app["name"].lower()
    stack = " ".join(app["technologies"] + app["databases"] + app["os"]).lower()
    if app.get("users") == 0 and app.get("records", 0) > 0 and app["dependents"] == 0 and app.get("utilisation") == 0:
        return _strategy(app, "retire", 0.8, "no users, no dependents and no load")
    if any(marker in stack for marker in ("mainframe", "cobol", "as400", "as/400")):
        return _strategy(app, "retain", 0.75, "mainframe workload: keep it until a rewrite is funded")
    commodity = any(word in name.replace("_", "-").split("-") for word in COMMODITY)
    seats = max(1.0, app.get("users") or 10) * rates.saas_user_month
    if commodity and seats <= 1.5 * current_cost(app, rates):
        return _strategy(app, "repurchase", 0.7, f"commodity capability; SaaS seats at ~${seats:,.0f}/month")
    if app["complexity"] >= 0.6 and app["criticality"] in ("high", "critical") and any(m in stack for m in MODERN):
        return _strategy(app, "refactor", 0.65, "complex, critical and on a modern stack: worth re-architecting")
    if app["databases"] and any(db in stack for db in MANAGED_DATABASES) and app["complexity"] >= 0.25:
        return _strategy(app, "replatform", 0.7, "move its database to a managed service on the way")
    if app["legacy"]:
        return _strategy(app, "replatform", 0.6, f"legacy parts to upgrade: {', '.join(app['legacy'])}")
    return _strategy(app, "rehost", 0.8, "simple, supported stack: lift and shift")


def _strategy(app: dict[str, Any], strategy: str, confidence: float, reason: str) -> dict[str, Any]:
    return {"application": app["name"], "strategy": strategy, "confidence": confidence, "rationale": reason}


def plan_strategies(discovery: dict[str, Any], rates: "CostRates | None" = None) -> dict[str, Any]:
    chosen = [choose_strategy(app, rates) for app in discovery.get("applications", [])]
    counts = {s: sum(1 for c in chosen if c["strategy"] == s) for s in STRATEGIES}
    return {"strategies": chosen, "counts": {s: n for s, n in counts.items() if n}}


@dataclass(frozen=True)
class CostRates:
    """Monthly unit prices (USD) for estimating what an inventory does not state, and migration
    labour. Deliberately simple: the point is comparing strategies, not quoting a cloud bill."""

    vcpu_month: float = 25.0
    gb_ram_month: float = 3.5
    gb_storage_month: float = 0.1
    engineer_week: float = 4_000.0
    saas_user_month: float = 4.0


RATE_NAMES = ("vcpu_month", "gb_ram_month", "gb_storage_month", "engineer_week", "saas_user_month")


def rates_with(taught: dict[str, float] | None) -> CostRates:
    """The default rates with what the tenant taught (crews/decisions.py `unit_rate`) in their place."""
    known = {name: float(value) for name, value in (taught or {}).items() if name in RATE_NAMES and value is not None}
    return replace(CostRates(), **known)


RUN_FACTOR = {"retire": 0.0, "retain": 1.0, "repurchase": 0.0, "rehost": 0.85, "replatform": 0.7, "refactor": 0.55}
EFFORT_WEEKS = {"retire": 1, "retain": 0, "repurchase": 4, "rehost": 2, "replatform": 5, "refactor": 12}


def current_cost(app: dict[str, Any], rates: CostRates) -> float:
    if app.get("monthly_cost") is not None:
        return float(app["monthly_cost"])
    cpu, memory, storage = app.get("cpu") or 2, app.get("memory_gb") or 4, app.get("storage_gb") or 50
    return round(cpu * rates.vcpu_month + memory * rates.gb_ram_month + storage * rates.gb_storage_month, 2)


def effort_weeks(strategy: str, complexity: float) -> float:
    base = EFFORT_WEEKS[strategy]
    return round(base * (1 + complexity), 1) if base else 0.0


def cost_model(discovery: dict[str, Any], strategies: dict[str, Any], rates: CostRates = CostRates(),
               target_factors: dict[str, float] | None = None) -> dict[str, Any]:
    """Run cost now and after, one-time migration cost, payback and optimisation advice.
    `target_factors` (what the tenant taught, crews/decisions.py) set an application's target run
    cost as a share of its current one, instead of the rules'."""
    target_factors = target_factors or {}
    chosen = {s["application"]: s["strategy"] for s in strategies.get("strategies", [])}
    rows, advice = [], []
    for app in discovery.get("applications", []):
        strategy = chosen.get(app["name"], "rehost")
        now = current_cost(app, rates)
        after = now * RUN_FACTOR[strategy]
        if strategy == "repurchase":
            after = max(1.0, app.get("users") or 10) * rates.saas_user_month
        utilisation = app.get("utilisation")
        if utilisation is not None and utilisation < 0.3 and strategy in ("rehost", "replatform"):
            after *= 0.7
            advice.append({"application": app["name"], "advice": "rightsize: average CPU use is "
                           f"{utilisation:.0%}; start on a smaller instance", "monthly_saving": round(now * RUN_FACTOR[strategy] * 0.3, 2)})
        if app["name"] in target_factors:
            after = now * target_factors[app["name"]]
        weeks = effort_weeks(strategy, app["complexity"])
        one_time = weeks * rates.engineer_week
        saving = now - after
        rows.append({"application": app["name"], "strategy": strategy, "current_monthly": round(now, 2),
                     "target_monthly": round(after, 2), "monthly_saving": round(saving, 2), "effort_weeks": weeks,
                     "migration_cost": round(one_time, 2),
                     "payback_months": round(one_time / saving, 1) if saving > 0 else None})
    steady = [r for r in rows if r["strategy"] in ("rehost", "replatform", "refactor") and r["target_monthly"] > 500]
    for row in steady:
        advice.append({"application": row["application"], "advice": "commit to reserved capacity for steady load",
                       "monthly_saving": round(row["target_monthly"] * 0.3, 2)})
    totals = {key: round(sum(r[key] for r in rows), 2)
              for key in ("current_monthly", "target_monthly", "monthly_saving", "migration_cost")}
    totals["payback_months"] = (round(totals["migration_cost"] / totals["monthly_saving"], 1)
                                if totals["monthly_saving"] > 0 else None)
    return {"applications": rows, "totals": totals, "optimisations": advice, "rates": rates.__dict__}


def planned_weeks(app: dict[str, Any], strategy: str, test_weeks: float = 1.0) -> float:
    return effort_weeks(strategy, app["complexity"]) + (test_weeks if strategy != "retain" else 0)


def plan_timeline(discovery: dict[str, Any], strategies: dict[str, Any], *, test_weeks: float = 1.0,
                  duration_factors: dict[str, float] | None = None,
                  min_waves: dict[str, int] | None = None) -> dict[str, Any]:
    """Schedule: an application starts when the applications it depends on are migrated; mutual
    dependencies (cycles) move together as one group. The critical path is the longest chain.
    What the tenant taught (crews/decisions.py) scales an application's duration
    (`duration_factors`) and holds it back to a wave (`min_waves`: it starts once every earlier
    wave has finished)."""
    duration_factors, min_waves = duration_factors or {}, min_waves or {}
    chosen = {s["application"]: s["strategy"] for s in strategies.get("strategies", [])}
    apps = {a["name"]: a for a in discovery.get("applications", [])}
    duration = {name: round(planned_weeks(app, chosen.get(name, "rehost"), test_weeks) * duration_factors.get(name, 1.0), 1)
                for name, app in apps.items()}
    edges = {name: [d for d in app["depends_on"] if d in apps] for name, app in apps.items()}
    groups = strongly_connected(edges)
    group_of = {name: i for i, group in enumerate(groups) for name in group}
    group_deps = {i: sorted({group_of[d] for n in g for d in edges[n]} - {i}) for i, g in enumerate(groups)}
    group_weeks = {i: max(duration[n] for n in g) for i, g in enumerate(groups)}
    finish: dict[int, float] = {}
    before: dict[int, int | None] = {}
    wave: dict[int, int] = {}
    held = {i: max((min_waves.get(n, 1) for n in g), default=1) for i, g in enumerate(groups)}
    for i in _held_last(topological(group_deps), held, group_deps):
        start = max((finish[d] for d in group_deps[i]), default=0.0)
        before[i] = max(group_deps[i], key=lambda d: finish[d], default=None)
        wave[i] = max(held[i], 1 + max((wave[d] for d in group_deps[i]), default=0))
        if held[i] > 1:  # held back: it starts once every earlier wave has finished
            earlier = [j for j in finish if wave[j] < wave[i]]
            if earlier:
                start = max(start, max(finish[j] for j in earlier))
                before[i] = max(earlier, key=lambda j: finish[j])
        finish[i] = start + group_weeks[i]
    schedule = []
    for i, group in enumerate(groups):
        for name in sorted(group):
            schedule.append({"application": name, "strategy": chosen.get(name, "rehost"), "wave": wave[i],
                             "start_week": round(finish[i] - group_weeks[i], 1), "end_week": round(finish[i], 1),
                             "move_group": sorted(group) if len(group) > 1 else None})
    schedule.sort(key=lambda s: (s["start_week"], s["application"]))
    path: list[str] = []
    last = max(finish, key=lambda i: (finish[i], -i), default=None)
    while last is not None:
        path[:0] = sorted(groups[last])
        last = before[last]
    total = round(max(finish.values(), default=0.0), 1)
    waves = max(wave.values(), default=0)
    milestones = [{"name": f"wave {w} complete", "week": round(max(finish[i] for i in wave if wave[i] == w), 1)}
                  for w in range(1, waves + 1)]
    return {"schedule": schedule, "critical_path": path, "total_weeks": total, "waves": waves,
            "milestones": milestones, "move_groups": [sorted(g) for g in groups if len(g) > 1]}


def _held_last(order: list[int], held: dict[int, int], deps: dict[int, list[int]]) -> list[int]:
    """The topological order with held-back groups, and what depends on them, after the rest (a
    held group waits for every earlier wave, so those are scheduled first); dependencies still
    come before their dependents."""
    if all(h <= 1 for h in held.values()):
        return order
    effective: dict[int, int] = {}
    for i in order:
        effective[i] = max([held[i]] + [effective[d] for d in deps[i]])
    position = {i: n for n, i in enumerate(order)}
    return sorted(order, key=lambda i: (effective[i], position[i]))


def strongly_connected(edges: dict[str, list[str]]) -> list[set[str]]:
    """Tarjan's algorithm, iterative (inventories can be deep), in a deterministic order."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []
    counter = 0
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                group = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.add(member)
                    if member == node:
                        break
                groups.append(group)
    return groups


def topological(deps: dict[int, list[int]]) -> list[int]:
    """Dependencies first (the graph is acyclic: cycles were grouped)."""
    done: set[int] = set()
    order: list[int] = []
    for root in sorted(deps):
        work = [(root, iter(deps[root]))]
        if root in done:
            continue
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in done:
                    work.append((child, iter(deps[child])))
                continue
            work.pop()
            if node not in done:
                done.add(node)
                order.append(node)
    return order
