"""Application discovery: find the applications, their servers, technologies and dependencies in a
flow's records.

Inventory exports name the same things many ways (`app`, `application_name`, `AppName`); a column is
recognised by its normalised words, and an application's dependencies are resolved against the
applications found, so what is left over is reported as external.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from crews.field_matcher import normalise
from crews.profiling import Records

ROLES: dict[str, tuple[str, ...]] = {
    "application": ("application", "application name", "app", "app name", "service", "service name", "system",
                    "system name", "component", "workload"),
    "server": ("hostname", "host", "server", "server name", "host name", "vm", "node", "machine"),
    "os": ("os", "operating system", "platform", "os version"),
    "technology": ("technology", "tech", "tech stack", "stack", "language", "framework", "runtime", "middleware"),
    "database": ("database", "db", "database engine", "datastore", "db engine"),
    "dependencies": ("dependencies", "depends on", "dependency", "upstream", "calls", "integrations"),
    "environment": ("environment", "env", "tier", "stage"),
    "criticality": ("criticality", "business criticality", "priority", "importance", "tier level"),
    "users": ("users", "user count", "active users", "number users"),
    "cpu": ("cpu", "cpus", "cores", "vcpu", "cpu cores"),
    "memory_gb": ("memory", "memory gb", "ram", "ram gb", "mem"),
    "storage_gb": ("storage", "storage gb", "disk", "disk gb"),
    "monthly_cost": ("monthly cost", "cost", "cost month", "run cost", "monthly spend"),
    "utilisation": ("cpu utilization", "utilization", "cpu util", "utilisation", "cpu usage"),
    "owner": ("owner", "business owner", "app owner", "contact"),
}
INVENTORY_ROLES = {"server", "os", "technology", "database", "dependencies"}
LEGACY = ("cobol", "mainframe", "as400", "as/400", "vb6", "visual basic 6", "windows server 2003", "windows server 2008",
          "windows 2008", "rhel 5", "rhel 6", "centos 6", "solaris", "aix", "hp-ux", "java 6", "java 1.6", "java 7",
          "oracle 10", "oracle 11", "sql server 2008", "sql server 2005", "php 5", "python 2", ".net framework 2",
          ".net framework 3", "websphere 7", "weblogic 10")
_SPLIT = re.compile(r"\s*[,;|]\s*")


def column_roles(columns: list[str]) -> dict[str, str]:
    """role -> column, for the columns whose normalised name is one of a role's known names."""
    found: dict[str, str] = {}
    for column in columns:
        words = " ".join(normalise(column))
        for role, names in ROLES.items():
            if role not in found and any(words == " ".join(normalise(n)) for n in names):
                found[role] = column
                break
    return found


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return float(value)
    match = re.search(r"-?\d+(\.\d+)?", str(value).replace(",", ""))
    return float(match.group()) if match else None


def _list(value: Any) -> list[str]:
    if value is None:
        return []
    items = value if isinstance(value, (list, tuple)) else _SPLIT.split(str(value))
    return [str(i).strip() for i in items if str(i).strip()]


def criticality_of(value: Any) -> str:
    text = str(value or "").strip().lower()
    if text in ("1", "critical", "mission critical", "mission-critical", "tier 1", "tier1", "p1"):
        return "critical"
    if text in ("2", "high", "tier 2", "tier2", "p2", "important"):
        return "high"
    if text in ("4", "low", "tier 4", "p4", "non-critical"):
        return "low"
    return "medium"


@dataclass
class Application:
    name: str
    records: int = 0
    servers: set[str] = field(default_factory=set)
    os: set[str] = field(default_factory=set)
    technologies: set[str] = field(default_factory=set)
    databases: set[str] = field(default_factory=set)
    environments: set[str] = field(default_factory=set)
    depends_on: set[str] = field(default_factory=set)
    criticality: str = "medium"
    owner: str | None = None
    users: float = 0.0
    cpu: float = 0.0
    memory_gb: float = 0.0
    storage_gb: float = 0.0
    monthly_cost: float | None = None
    utilisation: list[float] = field(default_factory=list)

    def legacy(self) -> list[str]:
        stack = " ".join(sorted(self.os | self.technologies | self.databases)).lower()
        return [marker for marker in LEGACY if marker in stack]

    def complexity(self, dependents: int) -> float:
        """0-1: more servers, dependencies, dependents, technologies and legacy parts weigh more."""
        score = (0.15 * min(len(self.servers), 10) / 10 + 0.25 * min(len(self.depends_on), 5) / 5
                 + 0.2 * min(dependents, 5) / 5 + 0.15 * min(len(self.technologies | self.databases), 5) / 5
                 + 0.25 * min(len(self.legacy()), 2) / 2)
        return round(min(1.0, score), 4)


def discover(named: dict[str, Records]) -> dict[str, Any]:
    """Applications with their servers, stacks and dependencies; external dependencies; the graph."""
    apps: dict[str, Application] = {}
    sources: dict[str, str] = {}
    for dataset, records in named.items():
        columns = list(dict.fromkeys(k for r in records for k in r))
        roles = column_roles(columns)
        if "application" not in roles and "name" in columns and INVENTORY_ROLES & set(roles):
            roles["application"] = "name"
        if "application" not in roles:  # a plain data set: it is the data of one application
            app = apps.setdefault(dataset, Application(dataset))
            app.records += len(records)
            sources[dataset] = "dataset"
            continue
        sources[dataset] = roles["application"]
        for record in records:
            name = str(record.get(roles["application"]) or "").strip()
            if not name:
                continue
            _absorb(apps.setdefault(name, Application(name)), record, roles)
    by_lower = {name.lower(): name for name in apps}
    external: set[str] = set()
    for app in apps.values():
        resolved = set()
        for dep in app.depends_on:
            if (known := by_lower.get(dep.lower())) and known != app.name:
                resolved.add(known)
            elif dep.lower() != app.name.lower():
                external.add(dep)
                resolved.add(dep)
        app.depends_on = resolved
    dependents = {name: sum(1 for a in apps.values() if name in a.depends_on) for name in apps}
    listed = [_view(app, dependents[app.name], external) for app in sorted(apps.values(), key=lambda a: a.name)]
    return {
        "applications": listed,
        "application_count": len(listed),
        "server_count": len({s for a in apps.values() for s in a.servers}),
        "external_dependencies": sorted(external),
        "dependency_edges": sum(len(a.depends_on) for a in apps.values()),
        "source_columns": sources,
        "legacy_applications": [a["name"] for a in listed if a["legacy"]],
    }


def _absorb(app: Application, record: dict[str, Any], roles: dict[str, str]) -> None:
    app.records += 1
    get = lambda role: record.get(roles[role]) if role in roles else None  # noqa: E731 - local shorthand
    for role, target in (("server", app.servers), ("os", app.os), ("technology", app.technologies),
                         ("database", app.databases), ("environment", app.environments)):
        target.update(_list(get(role)))
    app.depends_on.update(_list(get("dependencies")))
    if get("criticality") is not None:
        level = criticality_of(get("criticality"))
        order = ["low", "medium", "high", "critical"]
        app.criticality = max(app.criticality, level, key=order.index)
    if get("owner") and not app.owner:
        app.owner = str(get("owner"))
    for role in ("users", "cpu", "memory_gb", "storage_gb"):
        setattr(app, role, max(getattr(app, role), _number(get(role)) or 0.0))
    if (cost := _number(get("monthly_cost"))) is not None:
        app.monthly_cost = (app.monthly_cost or 0.0) + cost
    if (util := _number(get("utilisation"))) is not None:
        app.utilisation.append(util / 100 if util > 1 else util)


def _view(app: Application, dependents: int, external: set[str]) -> dict[str, Any]:
    return {
        "name": app.name, "records": app.records, "servers": sorted(app.servers), "os": sorted(app.os),
        "technologies": sorted(app.technologies), "databases": sorted(app.databases),
        "environments": sorted(app.environments), "depends_on": sorted(app.depends_on),
        "external_dependencies": sorted(app.depends_on & external), "dependents": dependents,
        "criticality": app.criticality, "owner": app.owner, "users": app.users, "cpu": app.cpu,
        "memory_gb": app.memory_gb, "storage_gb": app.storage_gb, "monthly_cost": app.monthly_cost,
        "utilisation": round(sum(app.utilisation) / len(app.utilisation), 4) if app.utilisation else None,
        "legacy": app.legacy(), "complexity": app.complexity(dependents),
    }
