"""LearningModel: per-tenant patterns learned from user corrections and observed successes.

Behaviour kept from the original: a correction is learned with confidence 0.95, a success with 0.8;
recommendations for a context are the patterns whose TF-IDF cosine similarity to the context's
flattened text reaches the threshold (0.7), top 5 by confidence = similarity x pattern confidence,
typed `correction_recommendation` / `success_recommendation`, with the recommendation, reasoning
and pattern_id.

What changed: every pattern counts (not the latest 100) and vectors are kept incrementally
(actors/learning/pattern_index.py); identical patterns merge and raise `support`; feedback moves a
pattern's confidence; state is rebuilt from storage when a tenant is activated.

Confidence is a Bayesian average of the pattern's starting confidence (a prior worth
`prior_weight` observations) and its evidence: each accepted recommendation and each repeat of the
same correction counts for it, each rejection against it:

    confidence = (base * W + accepted + (support - 1)) / (W + accepted + rejected + (support - 1))

Patterns whose confidence falls below `min_confidence` are no longer recommended, as the original
only loaded patterns above its threshold.
"""
from __future__ import annotations

import hashlib
import json
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Iterable

from actors.learning.decision_model import KEEP, Example
from actors.learning.decision_model import decide as decide_values
from actors.learning.pattern_index import PatternIndex
from actors.substrate.activation import ActivationTable
from actors.substrate.group_commit import GroupCommit, Pending
from actors.substrate.limits import Limits, LimitsCache
from actors.substrate.metrics import NO_METRICS, MetricSink
from actors.substrate.operations import ActorError
from actors.substrate.stamps import Stamps
from actors.learning.mapping_lessons import MappingLessons
from crews.field_matcher import ALIASES_PER_TARGET
from storage.patterns import PatternStore

KIND = "learning"
CORRECTION, SUCCESS = "correction", "success"
BASE_CONFIDENCE = {CORRECTION: 0.95, SUCCESS: 0.8}
SOURCE = {CORRECTION: "user_feedback", SUCCESS: "system_observation"}


class LearningError(ActorError):
    """A refused learning operation (status, code, message, details)."""


@dataclass(frozen=True)
class LearningOptions:
    threshold: float = 0.7  # minimum similarity, as the original
    min_confidence: float = 0.7  # patterns below this are not recommended (the original's filter)
    limit: int = 5
    prior_weight: float = 4.0
    refit_growth: float = 1.25
    idle_seconds: float = 900.0
    max_tenants: int = 10_000
    limits: Limits = Limits()  # the deployment's defaults: stored patterns per tenant


def flatten(obj: Any, prefix: str = "", parts: list[str] | None = None) -> list[str]:
    """The original's pattern text: `key: value` for scalars, nested keys joined with `_`."""
    parts = [] if parts is None else parts
    if isinstance(obj, dict):
        for key, value in obj.items():
            if isinstance(value, (str, int, float)):
                parts.append(f"{prefix}{key}: {value}")
            elif isinstance(value, (dict, list)):
                flatten(value, f"{prefix}{key}_", parts)
    elif isinstance(obj, list):
        for i, item in enumerate(obj):
            flatten(item, f"{prefix}{i}_", parts)
    elif obj is not None:
        parts.append(str(obj))
    return parts


def pattern_text(body: dict[str, Any]) -> str:
    return " ".join(flatten(body))


def context_text(context: dict[str, Any]) -> str:
    return " ".join(flatten({"context": context}))


def _canonical(context: dict[str, Any]) -> str:
    """A context's text in key order: PostgreSQL's JSONB gives keys back in its own order."""
    return context_text(dict(sorted(context.items())))


def fingerprint(body: dict[str, Any]) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha1(canonical.encode()).hexdigest()


@dataclass
class Pattern:
    id: str
    type: str
    fingerprint: str
    data: dict[str, Any]
    text: str
    base: float
    created_at: float
    updated_at: float
    support: int = 1
    accepted: int = 0
    rejected: int = 0
    row: int | None = None  # position in the vector index once committed

    def confidence(self, prior: float) -> float:
        evidence = self.accepted + self.support - 1
        return round((self.base * prior + evidence) / (prior + evidence + self.rejected), 6)

    def to_row(self, tenant: str, prior: float) -> dict[str, Any]:
        return {
            "id": self.id, "tenant": tenant, "type": self.type, "fingerprint": self.fingerprint, "data": self.data,
            "text": self.text, "confidence": self.confidence(prior), "base_confidence": self.base,
            "source": SOURCE[self.type], "support": self.support, "accepted": self.accepted,
            "rejected": self.rejected, "created_at": _dt(self.created_at), "updated_at": _dt(self.updated_at),
        }

    def view(self, prior: float) -> dict[str, Any]:
        return {
            "pattern_id": self.id, "type": self.type, "confidence": self.confidence(prior), "support": self.support,
            "accepted": self.accepted, "rejected": self.rejected, "source": SOURCE[self.type],
        }


def _dt(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, timezone.utc)


@dataclass
class TenantPatterns:
    index: PatternIndex
    patterns: dict[str, Pattern] = field(default_factory=dict)
    by_fingerprint: dict[str, Pattern] = field(default_factory=dict)
    by_row: list[Pattern] = field(default_factory=list)
    # the tenant's field-mapping lessons by what each teaches; built on the tenant's first mapping
    # (activation stays as cheap for tenants that never map)
    lessons: MappingLessons[Pattern] | None = None
    # the patterns' contexts alone, indexed on the tenant's first recommendation by context (the
    # agents' decisions, crews/decisions.py: items are alike when their contexts are, whatever
    # was decided about them)
    context_index: PatternIndex | None = None
    by_context_row: list[Pattern] = field(default_factory=list)

    def contexts(self, refit_growth: float) -> PatternIndex:
        if self.context_index is None:
            self.context_index, self.by_context_row = PatternIndex(refit_growth), []
            self.index_contexts(self.by_row)
        return self.context_index

    def index_contexts(self, patterns: list[Pattern]) -> None:
        if self.context_index is None:
            return
        self.context_index.add([context_text(p.data.get("context") or {}) for p in patterns])
        self.by_context_row.extend(patterns)

    def mapping_lessons(self, options: LearningOptions) -> MappingLessons[Pattern]:
        if self.lessons is None:
            prior = options.prior_weight
            self.lessons = MappingLessons(
                trust=lambda p: (p.confidence(prior), p.support, p.updated_at, p.created_at, p.id),
                usable=lambda p: p.confidence(prior) >= options.min_confidence,
                mapping=_taught_mapping)
            self.lessons.add(self.by_row)
        return self.lessons

    def trust_moved(self, patterns: Iterable[Pattern]) -> None:
        if self.lessons is not None:
            self.lessons.changed(patterns)


def _taught_mapping(pattern: Pattern) -> tuple[str, str | None, bool] | None:
    """The field mapping a correction (or an accepted mapping) teaches: (source, target, accepted)."""
    mapping = pattern.data.get("corrected" if pattern.type == CORRECTION else "result")
    if not isinstance(mapping, dict) or not isinstance(mapping.get("source_field"), str) \
            or "target_field" not in mapping or not (mapping["target_field"] is None or isinstance(mapping["target_field"], str)):
        return None
    return mapping["source_field"], mapping["target_field"], pattern.type == SUCCESS


class LearningCore:
    def __init__(self, store: PatternStore, options: LearningOptions = LearningOptions(), *,
                 clock: Callable[[], float] = time.time, metrics: MetricSink = NO_METRICS,
                 limits: LimitsCache | None = None) -> None:
        self.store, self.options, self.clock, self.metrics = store, options, clock, metrics
        self.limits = limits or LimitsCache(None, options.limits)
        self._commits: GroupCommit[list[Pattern]] = GroupCommit(self._write, LearningError, whole_tenant=True)
        self.tenants: ActivationTable[TenantPatterns] = ActivationTable(
            self._load, idle_seconds=options.idle_seconds, max_tenants=options.max_tenants,
            busy=self._commits.in_flight.__contains__,
        )
        self.learned = 0
        # Each lesson's learning time is later than the one before: lessons of one batch otherwise
        # share their time and confidence, and which of two contrary lessons is the more trusted
        # fell to their random ids and changed when the shard reloaded them. Now the later lesson
        # of a batch is the newer one, in memory and after a reload alike.
        self._stamps = Stamps(clock)

    async def _load(self, tenants: list[str]) -> dict[str, TenantPatterns]:
        states = {}
        for tenant in tenants:
            state = TenantPatterns(PatternIndex(self.options.refit_growth))
            rows = await self.store.load(tenant)
            for row in rows:
                pattern = Pattern(
                    row["id"], row["type"], row["fingerprint"], row["data"], row["text"], row["base_confidence"],
                    _ts(row["created_at"]), _ts(row["updated_at"]), row["support"], row["accepted"], row["rejected"],
                )
                state.patterns[pattern.id] = pattern
                state.by_fingerprint[pattern.fingerprint] = pattern
            self._index(state, list(state.patterns.values()))
            states[tenant] = state
        return states

    @staticmethod
    def _index(state: TenantPatterns, patterns: list[Pattern]) -> None:
        rows = state.index.add([p.text for p in patterns])
        for pattern, row in zip(patterns, rows):
            pattern.row = row
            state.by_row.append(pattern)
        if state.lessons is not None:
            state.lessons.add(patterns)
        state.index_contexts(patterns)

    async def _write(self, pending: list[Pending[list[Pattern]]]) -> None:
        """Each pattern's row as it is now: a later change in the same batch wins."""
        rows: dict[str, dict[str, Any]] = {}
        for item in pending:
            for pattern in item.writes:
                rows[pattern.id] = pattern.to_row(item.tenant, self.options.prior_weight)
        await self.store.write(list(rows.values()))

    async def _state(self, tenant: str) -> TenantPatterns:
        return (await self.tenants.activate([tenant]))[tenant]

    # -- learning ---------------------------------------------------------------------------------
    async def learn(self, tenant: str, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Learn a batch of corrections and successes (all or nothing). Each item is
        {"type": "correction", "original", "corrected", "context"} or
        {"type": "success", "result", "context"}."""
        limits = await self.limits.of(tenant)
        state = await self._state(tenant)
        touched: dict[str, Pattern] = {}
        created: list[Pattern] = []
        merged: list[tuple[Pattern, float]] = []
        rejected: list[tuple[Pattern, float]] = []  # successes a correction overruled
        results = []
        for item in items:
            now = self._stamps.next() / 1_000_000
            kind = item["type"]
            body = ({"type": kind, "original": item["original"], "corrected": item["corrected"], "context": item["context"]}
                    if kind == CORRECTION else {"type": kind, "result": item["result"], "context": item["context"]})
            key = fingerprint(body)
            pattern = state.by_fingerprint.get(key)
            if pattern is None:
                pattern = Pattern(uuid.uuid4().hex, kind, key, body, pattern_text(body), BASE_CONFIDENCE[kind], now, now)
                state.by_fingerprint[key] = pattern
                state.patterns[pattern.id] = pattern
                created.append(pattern)
                results.append({**pattern.view(self.options.prior_weight), "merged": False})
            else:
                merged.append((pattern, pattern.updated_at))
                pattern.support += 1
                pattern.updated_at = now
                results.append({**pattern.view(self.options.prior_weight), "merged": True})
            touched[pattern.id] = pattern
            if kind == CORRECTION:  # the user overruled what was learned as a success here: it counts against it
                refuted = state.by_fingerprint.get(fingerprint({"type": SUCCESS, "result": item["original"],
                                                                "context": item["context"]}))
                if refuted is not None and refuted.id not in touched:
                    refuted.rejected += 1
                    rejected.append((refuted, refuted.updated_at))
                    refuted.updated_at = now
                    touched[refuted.id] = refuted

        state.trust_moved(touched.values())

        def undo() -> None:
            for pattern, updated_at in reversed(rejected):
                pattern.rejected -= 1
                pattern.updated_at = updated_at
            for pattern, updated_at in reversed(merged):
                pattern.support -= 1
                pattern.updated_at = updated_at
            for pattern in created:
                state.by_fingerprint.pop(pattern.fingerprint, None)
                state.patterns.pop(pattern.id, None)
            state.trust_moved(touched.values())

        if created and len(state.patterns) > limits.patterns:  # the new ones (and pending ones) included
            undo()
            held = len(state.patterns)
            self.metrics.inc("raytenant_limit_refusals", limit="patterns")
            raise LearningError(429, "quota_exceeded", f"the tenant stores {held} patterns of {limits.patterns}; "
                                f"{len(created)} more do not fit", limit="patterns", patterns=held, retry_after=3600)
        await self._commits.commit(tenant, list(touched.values()), undo)
        # Vectors join the index once stored; a pattern merged into a pending one is indexed once.
        self._index(state, [p for p in created if p.row is None])
        self.learned += len(created)
        self.metrics.inc("raytenant_learning_patterns_learned", len(created))
        return results

    async def learn_from_correction(self, tenant: str, original: Any, corrected: Any, context: dict[str, Any]):
        [result] = await self.learn(tenant, [{"type": CORRECTION, "original": original, "corrected": corrected,
                                              "context": context}])
        return result

    async def learn_from_success(self, tenant: str, result: Any, context: dict[str, Any]):
        [answer] = await self.learn(tenant, [{"type": SUCCESS, "result": result, "context": context}])
        return answer

    async def feedback(self, tenant: str, pattern_id: str, accepted: bool) -> dict[str, Any]:
        state = await self._state(tenant)
        pattern = state.patterns.get(pattern_id)
        if pattern is None:
            raise LearningError(404, "pattern_not_found", "no pattern with this id")
        field_name = "accepted" if accepted else "rejected"
        setattr(pattern, field_name, getattr(pattern, field_name) + 1)
        before, pattern.updated_at = pattern.updated_at, self._stamps.next() / 1_000_000
        state.trust_moved([pattern])

        def undo() -> None:
            setattr(pattern, field_name, getattr(pattern, field_name) - 1)
            pattern.updated_at = before
            state.trust_moved([pattern])

        await self._commits.commit(tenant, [pattern], undo)
        return pattern.view(self.options.prior_weight)

    # -- recommendations --------------------------------------------------------------------------
    def _recommend(self, state: TenantPatterns, contexts: list[dict[str, Any]], threshold: float, limit: int,
                   by: str = "pattern") -> list[list[dict[str, Any]]]:
        """Per context, its recommendations. `by="pattern"` compares the context with each
        pattern's whole text (the original's way); `by="context"` with each pattern's context
        alone, so that a correction and a success about alike items compare alike, whatever
        values they carry."""
        prior = self.options.prior_weight
        index, rows = ((state.contexts(self.options.refit_growth), state.by_context_row) if by == "context"
                       else (state.index, state.by_row))
        found = []
        for matches in index.query_many([context_text(c) for c in contexts], threshold, limit * 10):
            out = []
            for match in matches:
                pattern = rows[match.row]
                confidence = pattern.confidence(prior)
                if confidence < self.options.min_confidence:
                    continue
                correction = pattern.type == CORRECTION
                out.append({
                    "type": "correction_recommendation" if correction else "success_recommendation",
                    "recommendation": pattern.data["corrected"] if correction else pattern.data["result"],
                    "confidence": round(match.similarity * confidence, 6),
                    "similarity": round(match.similarity, 6),
                    "reasoning": (f"Based on previous {'user correction' if correction else 'successful operation'} "
                                  f"with {match.similarity:.2%} similarity (support {pattern.support})"),
                    "pattern_id": pattern.id,
                })
            # By context the nearest come first (the agents' decisions vote among neighbours, crews/decisions.py).
            out.sort(key=lambda r: r["similarity" if by == "context" else "confidence"], reverse=True)
            found.append(out[:limit])
        return found

    async def recommendations(self, tenant: str, context: dict[str, Any], threshold: float | None = None,
                              limit: int | None = None) -> list[dict[str, Any]]:
        state = await self._state(tenant)
        started = time.perf_counter()
        [found] = self._recommend(state, [context], self.options.threshold if threshold is None else threshold,
                                  limit or self.options.limit)
        self.metrics.observe("raytenant_recommendation_ms", (time.perf_counter() - started) * 1000)
        return found

    async def recommendations_many(self, tenant: str, contexts: list[dict[str, Any]], threshold: float | None = None,
                                   limit: int | None = None, by: str = "pattern") -> list[list[dict[str, Any]]]:
        if by not in ("pattern", "context"):
            raise LearningError(422, "invalid_by", "by must be pattern or context")
        state = await self._state(tenant)
        threshold = self.options.threshold if threshold is None else threshold
        started = time.perf_counter()
        found = self._recommend(state, contexts, threshold, limit or self.options.limit, by)
        elapsed = (time.perf_counter() - started) * 1000
        for _ in contexts:  # each context's share of the one pass over the index
            self.metrics.observe("raytenant_recommendation_ms", elapsed / len(contexts))
        return found

    async def decide(self, tenant: str, contexts: list[dict[str, Any]]) -> list[dict[str, Any] | None]:
        """For the agents' decisions (crews/decisions.py): per context, the corrected value the
        tenant's patterns of that agent and decision teach for it, or None (keep the rules), from a
        classifier fitted on those patterns now (actors/learning/decision_model.py)."""
        state = await self._state(tenant)
        prior = self.options.prior_weight
        groups: dict[tuple[str, str], list[int]] = {}
        for i, context in enumerate(contexts):
            groups.setdefault((str(context.get("agent")), str(context.get("decision"))), []).append(i)
        found: list[dict[str, Any] | None] = [None] * len(contexts)
        for (agent, decision), positions in groups.items():
            examples = []
            for pattern in state.patterns.values():
                context = pattern.data.get("context") or {}
                confidence = pattern.confidence(prior)
                if context.get("agent") != agent or context.get("decision") != decision \
                        or confidence < self.options.min_confidence:
                    continue
                if pattern.type == CORRECTION:
                    value = (pattern.data.get("corrected") or {}).get(decision)
                    if value is None:
                        continue
                    examples.append(Example(_canonical(context), repr(value), value, pattern.id, confidence))
                else:
                    examples.append(Example(_canonical(context), KEEP, None, pattern.id, confidence))
            answers = decide_values(examples, [_canonical(contexts[i]) for i in positions])
            for i, answer in zip(positions, answers):
                if answer is not None:
                    value, probability, pattern_id = answer
                    found[i] = {"type": "correction_recommendation", "recommendation": {decision: value},
                                "confidence": probability, "similarity": probability, "pattern_id": pattern_id,
                                "reasoning": f"Taught by this tenant's corrections of {decision} (p={probability:.2f})"}
        return found

    async def corrections(self, tenant: str, limit: int = 5_000) -> list[dict[str, Any]]:
        """The tenant's recommendable corrections, most trusted first."""
        state = await self._state(tenant)
        prior = self.options.prior_weight
        rated = [(c, p) for p in state.patterns.values()
                 if p.type == CORRECTION and (c := p.confidence(prior)) >= self.options.min_confidence]
        rated.sort(key=lambda cp: (cp[0], cp[1].support, cp[1].updated_at, cp[1].created_at, cp[1].id), reverse=True)
        return [self._lesson(p, c) for c, p in rated[:limit]]

    async def mapping_lessons(self, tenant: str, sources: list[str], targets: list[str]) -> list[dict[str, Any]]:
        """The lessons that decide a field mapping of these source fields to these target fields,
        most trusted first: given only these, the field matcher maps exactly as with every lesson of
        the tenant (actors/learning/mapping_lessons.py). Corrections of field mappings and accepted
        mappings (successes, `type` "success", their result as `corrected`)."""
        state = await self._state(tenant)
        lessons = state.mapping_lessons(self.options).select(sources, targets, ALIASES_PER_TARGET)
        return [self._lesson(p, p.confidence(self.options.prior_weight)) for p in lessons]

    @staticmethod
    def _lesson(p: Pattern, confidence: float) -> dict[str, Any]:
        return {"pattern_id": p.id, "type": p.type, "original": p.data.get("original"),
                "corrected": p.data["corrected"] if p.type == CORRECTION else p.data["result"],
                "context": p.data["context"], "confidence": confidence, "support": p.support}

    async def stats_for(self, tenant: str) -> dict[str, Any]:
        state = await self._state(tenant)
        kinds = [p.type for p in state.patterns.values()]
        return {"patterns": len(kinds), "corrections": kinds.count(CORRECTION), "successes": kinds.count(SUCCESS),
                "index_refits": state.index.refits}

    async def set_limits(self, tenant: str, overrides: dict[str, Any] | None) -> dict[str, Any]:
        return self.limits.put(tenant, overrides).to_dict()

    async def forget(self, tenant: str) -> bool:
        """Drop the tenant from this shard's memory (its data was purged, or imported): its next
        use loads what storage holds."""
        self.limits.forget(tenant)
        return self.tenants.forget(tenant)

    def stats(self) -> dict[str, Any]:
        return {"active_tenants": len(self.tenants), "learned": self.learned, "commits": self._commits.flushes, "isolated_commits": self._commits.isolations}


def _ts(value: datetime) -> float:
    return (value if value.tzinfo else value.replace(tzinfo=timezone.utc)).timestamp()
