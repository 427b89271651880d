"""Does every agent learn a tenant's policy from its corrections? (issue 15 part 5)

Inventories are generated from a seed (12 applications each, names, stacks and sizes drawn at
random), and every tenant has the same hidden policy, which the rules do not know:

| agent | the tenant's policy | a policy item |
|---|---|---|
| data_validation | badge columns (`badge_id`, `staff_badge`, ...) are personal data | the badge column |
| application_discovery | anything on JBoss is legacy | an application on JBoss |
| field_mapping | `storage_gb` maps to `disk_gb` | the storage column |
| risk_assessment | an Oracle database makes an application high risk (or critical) | an application on Oracle |
| migration_strategy | fewer than 5 users: retire | an application with 1-4 users |
| cost_optimization | under 10 % CPU: run at 40 % of today's cost | an application under 10 % CPU |
| timeline_planning | business-critical applications take 1.5x the planned weeks | a critical application (not in a move group) |

For each k in --ks, a fresh tenant runs a discovery and an optimisation flow on each of k training
inventories, and a user corrects every decision that breaks the policy through the API, as the
console does (critical applications in a move group too, though agreement is measured on the
others: a group's weeks hide an application's own). Then the tenant runs --held-out inventories it never saw (other seeds, other names)
and the bench measures each agent's agreement: the share of policy items whose decision follows
the policy. A quiet tenant teaches nothing and runs the same held-out inventories before and after
every other tenant taught: its decisions must not change (isolation).

Agreement alone would reward a tenant's lesson spreading everywhere, so each line also says
`kept_elsewhere`: of the items the policy does not speak about, the share that nothing taught was
applied to (for the mapping, whose target is the quiet tenant's). A lesson reaching a later phase
through an earlier one (a retired application costs less) is the lesson working, not spreading.

It prints JSON lines `{"bench": "agent_learning", "agent", "k", "agreement", "items",
"kept_elsewhere"}` and one `{"bench": "agent_learning_summary", "agreement_before",
"agreement_after", "kept_elsewhere_after", "isolated", ...}`; `isolated` is true when nothing was
ever applied to the quiet tenant and its decisions after all the teaching equal those before it.

    python -m bench.agent_learning                    # k = 0, 1, 2, 5, 10; 4 held-out inventories
    python -m bench.agent_learning --ks 0,2 --held-out 2
"""
from __future__ import annotations

import argparse
import asyncio
import random
import time
from typing import Any


from bench.common import OPERATOR, bench_database, emit, raytenant_service
from crews.inventory import discover
from crews.planning import planned_weeks
from crews.profiling import datasets
from crews.samples import sample_inventory
from serve_app.auth import Tokens
from serve_app.client import AsyncClient, async_pool

AGENTS = ("data_validation", "application_discovery", "field_mapping", "risk_assessment", "migration_strategy",
          "cost_optimization", "timeline_planning")
WORDS = ("billing", "orders", "crm", "ledger", "portal", "search", "payments", "catalog", "reports", "identity",
         "shipping", "pricing", "loyalty", "claims", "assets", "booking", "tickets", "survey", "archive", "fleet")
SUFFIXES = ("api", "web", "svc", "batch", "db", "app", "hub", "engine")
STACKS = ("java 17, spring", "python 3.11, django", "node 20", "go 1.21", ".net 8", "jboss 6, java 8",
          "jboss eap 7, java 11", "php 8", "ruby 3, rails")
DATABASES = ("postgres 15", "mysql 8", "oracle 19c", "oracle 12c", "sql server 2019", "mongodb 6", "")
OSES = ("rhel 8", "ubuntu 22.04", "windows server 2019", "debian 12", "rhel 9")
BADGES = ("badge_id", "staff_badge", "badge_number", "employee_badge", "badge_no", "badge_code")
TARGET_SCHEMA = sample_inventory()["target_schema"]


def inventory(seed: int) -> dict[str, Any]:
    """Twelve applications drawn from `seed`, with a badge column named one of several ways."""
    rng = random.Random(seed)
    badge = BADGES[seed % len(BADGES)]
    names = rng.sample([f"{w}-{s}" for w in WORDS for s in SUFFIXES], 12)
    records = []
    for i, name in enumerate(names):
        users = rng.choice([rng.randint(1, 4), rng.randint(5, 80), rng.randint(100, 5000)])
        cpu_util = rng.choice([round(rng.uniform(0.02, 0.09), 2), round(rng.uniform(0.15, 0.85), 2)])
        records.append({
            "application": name, "hostname": f"srv{seed:03d}{i:02d}.corp.local", "os": rng.choice(OSES),
            "technology": rng.choice(STACKS), "database": rng.choice(DATABASES),
            "dependencies": ", ".join(rng.sample([n for n in names if n != name], rng.randint(0, 2))),
            "criticality": rng.choice(["low", "medium", "high", "critical"]),
            "owner_email": f"owner{i}@example.com", "users": users, "cpu_cores": rng.choice([2, 4, 8, 16]),
            "memory_gb": rng.choice([4, 8, 16, 32, 64]), "storage_gb": rng.choice([50, 100, 500, 1000]),
            "monthly_cost": rng.choice([150, 400, 900, 2500]), "cpu_utilization": cpu_util,
            badge: f"B-{rng.randint(10000, 99999)}",
        })
    return {"name": f"inventory {seed}", "data": {"inventory": records}, "target_schema": TARGET_SCHEMA, "badge": badge}


def policy_checks(inv: dict[str, Any], discovery: dict[str, Any], optimisation: dict[str, Any]) -> dict[str, list]:
    """Per agent: (item, follows the policy, the correction that would make it follow) for every
    policy item of one inventory's two flows."""
    apps = {a["name"]: a for a in discover(datasets(inv["data"]))["applications"]}
    records = {r["application"]: r for r in inv["data"]["inventory"]}
    d, o = discovery["results"], optimisation["results"]
    checks: dict[str, list] = {agent: [] for agent in AGENTS}
    column = f"inventory.{inv['badge']}"
    checks["data_validation"].append((column, column in d["data_validation"]["pii_columns"],
                                      {"phase": "data_validation", "item": column, "corrected": {"personal_data": True}}))
    mapped = {m["source_field"]: m["target_field"] for m in d["field_mapping"]["mappings"]}
    checks["field_mapping"].append(("storage_gb", mapped.get("storage_gb") == "disk_gb",
                                    {"source_field": "storage_gb", "target_field": "disk_gb"}))
    legacy = set(d["application_discovery"]["legacy_applications"])
    risk = {r["application"]: r["level"] for r in d["risk_assessment"]["applications"]}
    strategy = {s["application"]: s["strategy"] for s in o["migration_strategy"]["strategies"]}
    costs = {r["application"]: r for r in o["cost_optimization"]["applications"]}
    schedule = {s["application"]: s for s in o["timeline_planning"]["schedule"]}
    for name, record in records.items():
        if "jboss" in record["technology"]:
            checks["application_discovery"].append((name, name in legacy, {
                "phase": "application_discovery", "item": name, "corrected": {"legacy": True}}))
        if "oracle" in record["database"]:
            checks["risk_assessment"].append((name, risk.get(name) in ("high", "critical"), {
                "phase": "risk_assessment", "item": name, "corrected": {"level": "high"}}))
        if record["users"] < 5:
            checks["migration_strategy"].append((name, strategy.get(name) == "retire", {
                "phase": "migration_strategy", "item": name, "corrected": {"strategy": "retire"}}))
        row = costs.get(name)
        if record["cpu_utilization"] < 0.1 and row and row["current_monthly"] > 0:
            share = row["target_monthly"] / row["current_monthly"]
            checks["cost_optimization"].append((name, abs(share - 0.4) <= 0.02, {
                "phase": "cost_optimization", "item": name,
                "corrected": {"target_monthly": round(0.4 * row["current_monthly"], 2)}}))
        slot = schedule.get(name)
        if record["criticality"] == "critical" and slot and name in apps and not slot["move_group"]:
            # (in a move group, an application's weeks are the whole group's)
            planned = planned_weeks(apps[name], slot["strategy"])
            weeks = slot["end_week"] - slot["start_week"]
            if planned > 0:
                checks["timeline_planning"].append((name, abs(weeks / planned - 1.5) <= 0.1, {
                    "phase": "timeline_planning", "item": name, "corrected": {"weeks": round(1.5 * planned, 1)}}))
    return checks


def unmeasured_fixes(inv: dict[str, Any], optimisation: dict[str, Any]) -> list[dict[str, Any]]:
    """What the user also corrects, though agreement cannot be read off it: a critical application
    in a move group takes 1.5x its own planned weeks too (the group's weeks hide it, so only its
    learned factor says whether the plan follows the policy). Left uncorrected, these would teach
    that critical applications keep their planned weeks, against the tenant's own policy."""
    apps = {a["name"]: a for a in discover(datasets(inv["data"]))["applications"]}
    timeline = optimisation["results"]["timeline_planning"]
    factors = timeline.get("duration_factors") or {}
    fixes = []
    for record in inv["data"]["inventory"]:
        name = record["application"]
        slot = next((s for s in timeline["schedule"] if s["application"] == name), None)
        if record["criticality"] != "critical" or slot is None or name not in apps or not slot["move_group"]:
            continue
        planned = planned_weeks(apps[name], slot["strategy"])
        if planned > 0 and factors.get(name) != 1.5:
            fixes.append({"phase": "timeline_planning", "item": name, "corrected": {"weeks": round(1.5 * planned, 1)}})
    return fixes


class Tenant:
    """One tenant's flows and corrections, through the typed client."""

    def __init__(self, http: Any, url: str, tenant: str) -> None:
        self.rt = AsyncClient(url, Tokens(OPERATOR).mint(tenant, ttl=3600)[0], timeout=120.0, http=http)

    async def flow(self, inv: dict[str, Any], kind: str) -> dict[str, Any]:
        created = await self.rt.flows.create(inv["name"], inv["data"], kind=kind, target_schema=inv["target_schema"])
        for _ in range(3000):
            flow = await self.rt.flows.get(created["flow_id"])
            if flow["status"] in ("completed", "failed", "cancelled"):
                assert flow["status"] == "completed", flow
                missing = set(flow["phases"]) - set(flow["results"])
                assert not missing, f"flow {flow['flow_id']} completed without {sorted(missing)}: {flow}"
                return flow
            await asyncio.sleep(0.2)
        raise RuntimeError("a flow did not end")

    async def both(self, inv: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        return await asyncio.gather(self.flow(inv, "discovery"), self.flow(inv, "optimization"))

    async def correct(self, flow_id: str, corrections: list[dict[str, Any]]) -> None:
        await self.rt.flows.correct(flow_id, corrections)


async def teach(client: Tenant, seeds: list[int]) -> int:
    """Run the training inventories and correct what breaks the policy; returns corrections sent."""
    runs = await asyncio.gather(*(client.both(inventory(seed)) for seed in seeds))
    sent = 0
    for seed, (discovery, optimisation) in zip(seeds, runs):
        checks = policy_checks(inventory(seed), discovery, optimisation)
        wrong = [fix for agent in AGENTS for _, ok, fix in checks[agent] if not ok]
        wrong += unmeasured_fixes(inventory(seed), optimisation)
        mapping = [fix for fix in wrong if "source_field" in fix]
        for flow, fixes in ((discovery, [f for f in wrong if "phase" in f and f["phase"] in
                                         ("data_validation", "application_discovery", "risk_assessment")]),
                            (discovery, mapping),
                            (optimisation, [f for f in wrong if "phase" in f and f["phase"] in
                                            ("migration_strategy", "cost_optimization", "timeline_planning")])):
            if fixes:
                await client.correct(flow["flow_id"], fixes)
                sent += len(fixes)
    return sent


PHASE_OF = {"data_validation": "discovery", "application_discovery": "discovery", "risk_assessment": "discovery",
            "field_mapping": "discovery", "migration_strategy": "optimisation", "cost_optimization": "optimisation",
            "timeline_planning": "optimisation"}


def decisions(discovery: dict[str, Any], optimisation: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per agent, every item and whether something the tenant taught was applied to it (for the
    field mapping: its target, compared with the quiet tenant's). A lesson that changes a later
    phase through an earlier one (a retired application costs less) is not counted as applied."""
    flows = {"discovery": discovery["results"], "optimisation": optimisation["results"]}
    found: dict[str, dict[str, Any]] = {}
    for agent in AGENTS:
        result = flows[PHASE_OF[agent]][agent]
        if agent == "field_mapping":
            found[agent] = {m["source_field"]: m["target_field"] for m in result["mappings"]}
            continue
        taught = {entry["item"] for entry in result.get("learned", [])}
        if agent == "data_validation":
            items = [f"{n}.{c}" for n, report in result["datasets"].items() for c in report["columns"]]
        elif agent == "migration_strategy":
            items = [s["application"] for s in result["strategies"]]
        elif agent == "timeline_planning":
            items = [s["application"] for s in result["schedule"]]
        else:
            items = [a.get("name") or a.get("application") for a in result["applications"]]
        found[agent] = {item: item in taught for item in items}
    return found


async def measure(client: Tenant, seeds: list[int]) -> dict[str, Any]:
    """Per agent: agreement (policy items that follow the policy) and, per inventory, every item's
    decision and which items the policy speaks about."""
    runs = await asyncio.gather(*(client.both(inventory(seed)) for seed in seeds))
    totals = {agent: [0, 0] for agent in AGENTS}
    found: dict[str, Any] = {"decisions": [], "policy_items": []}
    for seed, (discovery, optimisation) in zip(seeds, runs):
        checks = policy_checks(inventory(seed), discovery, optimisation)
        for agent, items in checks.items():
            totals[agent][0] += sum(1 for _, ok, _ in items if ok)
            totals[agent][1] += len(items)
        found["decisions"].append(decisions(discovery, optimisation))
        found["policy_items"].append({agent: {item for item, _, _ in items} for agent, items in checks.items()})
    found["agreement"] = {agent: (round(ok / n, 4) if n else None, n) for agent, (ok, n) in totals.items()}
    return found


def kept(taught: dict[str, Any], quiet: dict[str, Any]) -> dict[str, float | None]:
    """Per agent, the share of items the policy does not speak about that nothing taught was
    applied to (for the mapping: whose target is the quiet tenant's): the lessons did not spread
    where they do not belong."""
    out = {}
    for agent in AGENTS:
        same = total = 0
        for mine, rules, policy in zip(taught["decisions"], quiet["decisions"], taught["policy_items"]):
            for item, value in mine[agent].items():
                if item in policy[agent]:
                    continue
                total += 1
                same += (value == rules[agent].get(item)) if agent == "field_mapping" else not value
        out[agent] = round(same / total, 4) if total else None
    return out


async def run(url: str, ks: list[int], held_out: int) -> None:
    stamp = int(time.time()) % 10**6
    held = [1000 + i for i in range(held_out)]
    found: dict[int, dict[str, Any]] = {}
    async with async_pool() as http:
        quiet = Tenant(http, url, f"al-{stamp}-quiet")
        rules = await measure(quiet, held)  # a tenant that never teaches: the rules alone
        for k in ks:
            client = Tenant(http, url, f"al-{stamp}-k{k}")
            started = time.perf_counter()
            corrections = await teach(client, list(range(k))) if k else 0
            found[k] = await measure(client, held)
            spread = kept(found[k], rules)
            for agent in AGENTS:
                agreement, items = found[k]["agreement"][agent]
                emit({"bench": "agent_learning", "agent": agent, "k": k, "agreement": agreement, "items": items,
                      "kept_elsewhere": spread[agent], "corrections_sent": corrections,
                      "seconds": round(time.perf_counter() - started, 1)})
        after_all = await measure(quiet, held)  # after every other tenant taught
    first, last = found[min(ks)]["agreement"], found[max(ks)]["agreement"]
    emit({"bench": "agent_learning_summary", "ks": ks, "held_out": held_out,
          "agreement_before": {a: first[a][0] for a in AGENTS}, "agreement_after": {a: last[a][0] for a in AGENTS},
          "kept_elsewhere_after": kept(found[max(ks)], rules),
          "quiet_tenant_agreement": {a: after_all["agreement"][a][0] for a in AGENTS},
          "isolated": after_all["decisions"] == rules["decisions"] and not any(
              v for d in after_all["decisions"] for a in AGENTS if a != "field_mapping" for v in d[a].values()),
          "target": "every agent from its k=0 value to at least 0.9 by k=10; a quiet tenant's decisions unchanged"})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ks", default="0,1,2,5,10")
    parser.add_argument("--held-out", type=int, default=4)
    parser.add_argument("--database-url")
    args = parser.parse_args()
    ks = sorted({int(k) for k in args.ks.split(",")})
    database = bench_database(args.database_url)
    with raytenant_service(database, settings={"flow_limit": 16}) as urls:
        asyncio.run(run(urls[0], ks, args.held_out))


if __name__ == "__main__":
    main()
