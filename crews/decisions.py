"""What each agent decides about each item, so that it can learn from the tenant and apply what it
learned: the original's LearningAwareAgent, for every agent.

A phase's result holds decisions on items: whether a column is personal data, an application's
6R strategy, its risk level, ... Each `Decision` names the phase that makes it, lists the items of
a result with their current value and a *context* (the item's profile as words: stack, users,
criticality, column name, ...), and applies a value to a result. The learning engine stores a
user's correction as `{original: {decision: old}, corrected: {decision: new}, context}` (confidence
0.95) and a finished phase's decisions as successes (0.8); before a phase runs, the runner asks it
what the tenant's corrections teach for the contexts of the phase's items (a classifier over the
contexts' words: corrections against the successes, actors/learning/decision_model.py), puts the answers
in the agent's task (the prompt the LLM sees) and the phase's tool applies them. So a correction
carries over to the items that share what set the corrected ones apart.

Numbers generalise as ratios: a corrected run cost is learned as a factor of the application's
current run cost, a corrected duration as a factor of the computed one. Pure: no Ray, no crewai.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from crews.planning import RATE_NAMES, STRATEGIES

LEVEL_NAMES = ("low", "medium", "high", "critical")
MAX_SUCCESSES = 200  # items of one phase learned as successes (the first, in the result's order)
MAX_FACTOR = 100.0


class CorrectionError(ValueError):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def _words(*values: Any) -> str:
    """Lower-case words of names and lists: `badge_id` and `BadgeID` both give `badge id`."""
    out: list[str] = []
    for value in values:
        for part in value if isinstance(value, (list, tuple, set)) else [value]:
            if part is None:
                continue
            text = str(part)
            spaced = "".join(f" {c}" if c.isupper() and i and text[i - 1].islower() else c for i, c in enumerate(text))
            out.extend(w for w in "".join(c if c.isalnum() else " " for c in spaced.lower()).split() if w)
    return " ".join(out)


def _bucket(value: Any, edges: tuple[float, ...], name: str) -> str:
    """A number as a word, so that similar sizes share a token (`users_lt5`, `users_5_50`, ...)."""
    if value is None:
        return f"{name}_unknown"
    for low, high in zip((0.0, *edges), (*edges, None)):
        if high is None or value < high:
            return f"{name}_lt{high:g}" if low == 0 and high is not None else (
                f"{name}_{low:g}_{high:g}" if high is not None else f"{name}_ge{low:g}")
    return f"{name}_unknown"  # pragma: no cover - the loop always returns


def app_profile(app: dict[str, Any]) -> dict[str, str]:
    """An application's profile as words: what makes two applications alike for a migration."""
    utilisation = app.get("utilisation")
    return {
        "application": _words(app.get("name")),
        "stack": _words(app.get("technologies"), app.get("databases"), app.get("os")),
        "criticality": f"criticality_{app.get('criticality') or 'unknown'}",
        "users": _bucket(app.get("users"), (5, 50, 500), "users"),
        "load": _bucket(None if utilisation is None else utilisation * 100, (10, 30, 70), "load"),
        "dependents": _bucket(app.get("dependents"), (1, 3), "dependents"),
        "environment": _words(app.get("environments")),
    }


# -- the decisions ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Decision:
    """One kind of decision a phase makes about each of its items.

    `items(result, apps)` -> [(item id, current value, profile)]; `apply(result, item, value)` sets
    it in place (True when it changed something); `parse(corrected, current)` turns a user's
    `corrected` object into the value to learn (a factor for numbers), or raises CorrectionError."""

    phase: str
    name: str
    items: Callable[[dict[str, Any], dict[str, dict[str, Any]]], list[tuple[str, Any, dict[str, str]]]]
    apply: Callable[[dict[str, Any], str, Any], bool]
    parse: Callable[[dict[str, Any], Any, dict[str, Any]], Any]
    describe: str  # what a correction sends, for the error message and the docs
    numeric: bool = False  # a factor or a wave: applied by the phase's planner

    def context(self, profile: dict[str, str]) -> dict[str, str]:
        return {"agent": self.phase, "decision": self.name, **profile}


def _choice(field: str, values: tuple[str, ...]):
    def parse(corrected: dict[str, Any], _current: Any, _extra: dict[str, Any]) -> str:
        value = corrected.get(field)
        if set(corrected) != {field} or value not in values:
            raise CorrectionError("invalid_correction", f"corrected must be {{\"{field}\": one of {', '.join(values)}}}")
        return value
    return parse


def _flag(field: str):
    def parse(corrected: dict[str, Any], _current: Any, _extra: dict[str, Any]) -> bool:
        value = corrected.get(field)
        if set(corrected) != {field} or not isinstance(value, bool):
            raise CorrectionError("invalid_correction", f"corrected must be {{\"{field}\": true or false}}")
        return value
    return parse


def _factor(field: str, baseline_key: str, *, positive: bool, digits: int):
    """A corrected number, learned as a factor of the item's baseline (`extra[baseline_key]`),
    rounded to `digits`: corrections of several items meaning the same factor teach one value."""
    def parse(corrected: dict[str, Any], _current: Any, extra: dict[str, Any]) -> float:
        value = corrected.get(field)
        if set(corrected) != {field} or isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not (value > 0 if positive else value >= 0) or value > 1e9:
            raise CorrectionError("invalid_correction", f"corrected must be {{\"{field}\": a {'positive' if positive else 'non-negative'} number}}")
        baseline = extra.get(baseline_key) or 0
        if baseline <= 0:
            raise CorrectionError("uncorrectable_item", f"this item has no {baseline_key} to scale")
        return round(min(MAX_FACTOR, value / baseline), digits)
    return parse


# data_validation ---------------------------------------------------------------------------------
def _columns(result: dict[str, Any], _apps: dict[str, dict[str, Any]]) -> list[tuple[str, Any, dict[str, str]]]:
    pii = set(result.get("pii_columns", []))
    found = []
    for dataset, report in result.get("datasets", {}).items():
        for column, info in report.get("columns", {}).items():
            item = f"{dataset}.{column}"
            detected = report.get("pii", {}).get("columns", {}).get(column, {}).get("kind")
            found.append((item, item in pii, {"column": _words(column), "dataset": _words(dataset),
                                              "type": f"type_{info.get('type')}", "detected": f"detected_{detected or 'none'}"}))
    return found


def _set_personal(result: dict[str, Any], item: str, value: bool) -> bool:
    dataset, _, column = item.partition(".")
    report = result.get("datasets", {}).get(dataset)
    if report is None or column not in report.get("columns", {}):
        return False
    pii = set(result.get("pii_columns", []))
    if (item in pii) == value:
        return False
    columns = report.setdefault("pii", {}).setdefault("columns", {})
    if value:
        pii.add(item)
        columns[column] = {"kind": "taught", "evidence": "learned"}
    else:
        pii.discard(item)
        columns.pop(column, None)
    result["pii_columns"] = sorted(pii)
    return True


def _issue_id(issue: dict[str, Any]) -> str:
    return f"{issue.get('dataset')}.{issue.get('column') or '*'}:{issue.get('issue')}"


def _issues(result: dict[str, Any], _apps: dict[str, dict[str, Any]]) -> list[tuple[str, Any, dict[str, str]]]:
    return [(_issue_id(i), bool(i.get("accepted")), {"issue": _words(i.get("issue")), "column": _words(i.get("column")),
                                                      "severity": f"severity_{i.get('severity')}"})
            for i in result.get("issues", [])]


def _accept_issue(result: dict[str, Any], item: str, value: bool) -> bool:
    for issue in result.get("issues", []):
        if _issue_id(issue) == item and bool(issue.get("accepted")) != value:
            issue["accepted"] = value
            return True
    return False


# application_discovery ---------------------------------------------------------------------------
def _apps_of(result: dict[str, Any], apps: dict[str, dict[str, Any]]) -> list[tuple[str, Any, dict[str, str]]]:
    return [(a["name"], bool(a.get("legacy")), app_profile(a)) for a in result.get("applications", [])]


def _set_legacy(result: dict[str, Any], item: str, value: bool) -> bool:
    for app in result.get("applications", []):
        if app["name"] == item and bool(app.get("legacy")) != value:
            app["legacy"] = ["classified legacy by this tenant"] if value else []
            result["legacy_applications"] = sorted(a["name"] for a in result["applications"] if a.get("legacy"))
            return True
    return False


def _dependencies(result: dict[str, Any], _apps: dict[str, dict[str, Any]]) -> list[tuple[str, Any, dict[str, str]]]:
    return [(f"{a['name']}->{d}", "external" if d in a.get("external_dependencies", []) else "internal",
             {"application": _words(a["name"]), "stack": _words(a.get("technologies")), "target": _words(d)})
            for a in result.get("applications", []) for d in a.get("depends_on", [])]


def _set_dependency(result: dict[str, Any], item: str, value: str) -> bool:
    name, _, target = item.partition("->")
    for app in result.get("applications", []):
        if app["name"] == name and target in app.get("depends_on", []):
            external = set(app.get("external_dependencies", []))
            if (target in external) == (value == "external"):
                return False
            external.symmetric_difference_update({target})
            app["external_dependencies"] = sorted(external)
            result["external_dependencies"] = sorted({d for a in result["applications"] for d in a["external_dependencies"]})
            return True
    return False


# risk_assessment, migration_strategy -------------------------------------------------------------
def _per_app(key: str, value_key: str):
    def items(result: dict[str, Any], apps: dict[str, dict[str, Any]]) -> list[tuple[str, Any, dict[str, str]]]:
        return [(row["application"], row[value_key], app_profile(apps.get(row["application"], {"name": row["application"]})))
                for row in result.get(key, [])]
    return items


def _set_level(result: dict[str, Any], item: str, value: str) -> bool:
    for row in result.get("applications", []):
        if row["application"] == item and row["level"] != value:
            row["level"] = value
            result["high_risk_applications"] = [r["application"] for r in result["applications"]
                                                if r["level"] in ("high", "critical")]
            return True
    return False


def _set_strategy(result: dict[str, Any], item: str, value: str) -> bool:
    for row in result.get("strategies", []):
        if row["application"] == item and row["strategy"] != value:
            row.update(strategy=value, rationale="this tenant's choice for applications like it")
            counts = {s: sum(1 for r in result["strategies"] if r["strategy"] == s) for s in STRATEGIES}
            result["counts"] = {s: n for s, n in counts.items() if n}
            return True
    return False


# cost_optimization, timeline_planning: numbers as factors, applied by the planner -----------------
def _factors_of(key: str, value: Callable[[dict[str, Any]], float | None]):
    def items(result: dict[str, Any], apps: dict[str, dict[str, Any]]) -> list[tuple[str, Any, dict[str, str]]]:
        return [(row["application"], value(row), app_profile(apps.get(row["application"], {"name": row["application"]})))
                for row in result.get(key, [])]
    return items


def _recorded(store: str):
    """Factors are applied by the phase's planner (crews/phases.py), which reads them from the
    result's `learned_factors`; here they are only noted."""
    def apply(result: dict[str, Any], item: str, value: float) -> bool:
        factors = result.setdefault(store, {})
        if factors.get(item) == value:
            return False
        factors[item] = value
        return True
    return apply


def _rates(result: dict[str, Any], _apps: dict[str, dict[str, Any]]) -> list[tuple[str, Any, dict[str, str]]]:
    """The unit rates the cost model used: one item per rate, the same context in every flow of
    the tenant, so a corrected rate is applied to every later flow (decision_model's exact match)."""
    rates = result.get("rates") or {}
    return [(name, rates[name], {"rate": name}) for name in RATE_NAMES if name in rates]


MAX_RATE = 1e6  # USD per unit and month (or per engineer week)


def _rate(corrected: dict[str, Any], _current: Any, _extra: dict[str, Any]) -> float:
    value = corrected.get("rate")
    if set(corrected) != {"rate"} or isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not 0 <= value <= MAX_RATE:
        raise CorrectionError("invalid_correction", f"corrected must be {{\"rate\": USD from 0 to {MAX_RATE:g}}}")
    return round(float(value), 4)


DECISIONS: tuple[Decision, ...] = (
    Decision("data_validation", "personal_data", _columns, _set_personal, _flag("personal_data"),
             "{\"personal_data\": true|false} for a column \"dataset.column\""),
    Decision("data_validation", "issue_accepted", _issues, _accept_issue, _flag("accepted"),
             "{\"accepted\": true|false} for an issue \"dataset.column:issue\""),
    Decision("application_discovery", "legacy", _apps_of, _set_legacy, _flag("legacy"),
             "{\"legacy\": true|false} for an application"),
    Decision("application_discovery", "dependency", _dependencies, _set_dependency,
             _choice("dependency", ("internal", "external")),
             "{\"dependency\": \"internal\"|\"external\"} for an edge \"application->dependency\""),
    Decision("risk_assessment", "risk_level", _per_app("applications", "level"), _set_level,
             _choice("level", LEVEL_NAMES), "{\"level\": low|medium|high|critical} for an application"),
    Decision("migration_strategy", "strategy", _per_app("strategies", "strategy"), _set_strategy,
             _choice("strategy", STRATEGIES), "{\"strategy\": one of the 6R} for an application"),
    Decision("cost_optimization", "target_factor",
             _factors_of("applications", lambda r: round(r["target_monthly"] / r["current_monthly"], 6)
                         if r.get("current_monthly") else None),
             _recorded("target_factors"), _factor("target_monthly", "current_monthly", positive=False, digits=2),
             "{\"target_monthly\": USD} for an application (learned as a share of its current run cost)", True),
    Decision("cost_optimization", "unit_rate", _rates, _recorded("unit_rates"), _rate,
             "{\"rate\": USD} for a unit rate (" + ", ".join(RATE_NAMES) + "), used by the tenant's later flows", True),
    Decision("timeline_planning", "duration_factor",
             _factors_of("schedule", lambda r: 1.0), _recorded("duration_factors"),
             _factor("weeks", "weeks", positive=True, digits=1),
             "{\"weeks\": duration} for an application (learned as a factor of the planned duration)", True),
    Decision("timeline_planning", "min_wave",
             _factors_of("schedule", lambda r: r["wave"]), _recorded("min_waves"),
             lambda corrected, current, extra: _wave(corrected),
             "{\"wave\": n} for an application (it moves no earlier than wave n)", True),
)
BY_PHASE: dict[str, tuple[Decision, ...]] = {}
for _decision in DECISIONS:
    BY_PHASE[_decision.phase] = BY_PHASE.get(_decision.phase, ()) + (_decision,)
CORRECTION_FIELDS = {  # the field a correction sends -> its decision
    (d.phase, field): d for d, field in zip(DECISIONS, ("personal_data", "accepted", "legacy", "dependency", "level",
                                                         "strategy", "target_monthly", "rate", "weeks", "wave"))}


def _wave(corrected: dict[str, Any]) -> int:
    value = corrected.get("wave")
    if set(corrected) != {"wave"} or isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 1000:
        raise CorrectionError("invalid_correction", "corrected must be {\"wave\": an integer from 1}")
    return value


def decision_for(phase: str, corrected: Any) -> Decision:
    """The decision a correction `{phase, item, corrected}` is about, from the field it sends."""
    if phase not in BY_PHASE:
        known = ", ".join(sorted({*BY_PHASE, "field_mapping"}))
        raise CorrectionError("unknown_phase", f"phase must be one of {known}")
    if not isinstance(corrected, dict) or len(corrected) != 1:
        raise CorrectionError("invalid_correction", "corrected must be an object with one field: "
                              + "; ".join(d.describe for d in BY_PHASE[phase]))
    [field] = corrected
    decision = CORRECTION_FIELDS.get((phase, field))
    if decision is None:
        raise CorrectionError("invalid_correction", f"{phase} takes: " + "; ".join(d.describe for d in BY_PHASE[phase]))
    return decision


# -- learning and applying ---------------------------------------------------------------------------
def contexts_of(phase: str, result: dict[str, Any], apps: dict[str, dict[str, Any]]) -> list[tuple[Decision, str, Any, dict[str, str]]]:
    """(decision, item, current value, learning context) for every item of a phase's result."""
    return [(decision, item, value, decision.context(profile))
            for decision in BY_PHASE.get(phase, ()) for item, value, profile in decision.items(result, apps)]


def fitting(decision: Decision, recommendations: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The most trusted recommendation that is a value of this decision (others are about other
    decisions whose contexts happen to be alike)."""
    for rec in recommendations:  # best first
        value = (rec.get("recommendation") or {}).get(decision.name) if isinstance(rec.get("recommendation"), dict) else None
        if value is not None and _valid(decision, value):
            return rec
    return None


def _valid(decision: Decision, value: Any) -> bool:
    if decision.name in ("personal_data", "issue_accepted", "legacy"):
        return isinstance(value, bool)
    if decision.name == "dependency":
        return value in ("internal", "external")
    if decision.name == "risk_level":
        return value in LEVEL_NAMES
    if decision.name == "strategy":
        return value in STRATEGIES
    if decision.name == "min_wave":
        return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 1000
    if decision.name == "unit_rate":
        return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= MAX_RATE
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= MAX_FACTOR


@dataclass
class Guidance:
    """What the tenant taught that applies to one phase of one flow: per (decision, item) the
    recommendation to apply, found before the phase ran."""

    applies: dict[tuple[str, str], dict[str, Any]]

    def value(self, decision: str, item: str) -> Any:
        rec = self.applies.get((decision, item))
        return None if rec is None else rec["recommendation"][decision]

    def prompt(self) -> str:
        """The lines added to the agent's task: what it should know before it starts."""
        if not self.applies:
            return ""
        lines = [f"- {item}: {decision} = {rec['recommendation'][decision]} ({rec['reasoning']}, confidence "
                 f"{rec['confidence']:.2f})" for (decision, item), rec in sorted(self.applies.items())[:40]]
        more = len(self.applies) - len(lines)
        return ("\n\nWhat this tenant taught that applies here (your tools apply it; mention it in your answer):\n"
                + "\n".join(lines) + (f"\n- ... and {more} more" if more > 0 else ""))


def guidance_for(items: list[tuple[Decision, str, Any, dict[str, str]]],
                 decided: list[dict[str, Any] | None]) -> Guidance:
    """Per item, the value the tenant's corrections teach for it (the learning engine's `decide`,
    actors/learning/decision_model.py), when it is one this decision can take; None keeps the rules."""
    applies = {}
    for (decision, item, _value, _context), rec in zip(items, decided):
        if rec is not None and fitting(decision, [rec]) is not None:
            applies[(decision.name, item)] = rec
    return Guidance(applies)


def apply_guidance(phase: str, result: dict[str, Any], guidance: Guidance | None,
                   apps: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Apply what fits to the result in place; returns what changed, each with its pattern."""
    if guidance is None:
        return []
    applied = []
    for decision in BY_PHASE.get(phase, ()):
        for item, _value, _profile in decision.items(result, apps):
            rec = guidance.applies.get((decision.name, item))
            if rec is not None and decision.apply(result, item, rec["recommendation"][decision.name]):
                applied.append({"decision": decision.name, "item": item, "value": rec["recommendation"][decision.name],
                                "pattern_id": rec["pattern_id"], "confidence": rec["confidence"]})
    return applied


def successes(phase: str, result: dict[str, Any], apps: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """A finished phase's decisions as learning items (successes, confidence 0.8). A success is never
    applied: it votes for keeping the rules for items like it (guidance_for)."""
    items = []
    for decision, _item, value, context in contexts_of(phase, result, apps)[:MAX_SUCCESSES]:
        if value is not None:
            items.append({"type": "success", "result": {decision.name: value}, "context": context})
    return items
