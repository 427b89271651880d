"""FieldMatcher: map a source schema's fields to a target schema's, and apply what a tenant taught.

Scores combine four signals, each explainable:
- names: their words (crews/field_words.py: split, segmented, abbreviations expanded, lemmatised)
  compared word by word, each word weighed by its rarity among the schemas' fields, blended with
  the character 3-grams of the run-together words; a path's last segment decides most of it;
- type compatibility (`varchar` and `text` agree; integers and decimals mostly do);
- sample-value hints (values that look like e-mails, dates, phone numbers, ... point to fields
  whose names or samples say the same);
- the tenant's lessons: an exact taught mapping (or "no counterpart") wins; word synonyms are
  learned from every correction (teaching `xref_code -> legacy_reference` teaches `xref` =
  legacy reference for every later schema); a field much like one corrected or accepted for a
  target of this schema gets that target; and corrections of similar contexts, found by the
  learning engine, are applied as recommendations.

Assignment is one-to-one, best score first, above `min_score`.

Pure logic with no crewai or Ray import: the ingress, the crews' field-mapping tool and the
evaluation bench all use it.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Iterable

from crews.field_words import ABBREVIATIONS, NAME_CACHE, STOP_WORDS, name_parts, words_of
from crews.name_similarity import path_similarity, rarity, similarity_table

MAX_FIELDS = 1_000  # per schema
MAX_PAIRS = 100_000  # source x target fields of one mapping: every pair is compared (about 3 s of CPU)
KNOWN_WORDS = {w for expansion in ABBREVIATIONS.values() for w in expansion.split()}

TYPE_GROUPS = {
    "text": {"string", "str", "text", "varchar", "char", "nvarchar", "nchar", "character", "clob", "enum", "uuid"},
    "integer": {"int", "integer", "bigint", "smallint", "tinyint", "long", "int32", "int64", "serial"},
    "number": {"float", "double", "decimal", "numeric", "real", "money", "currency", "number"},
    "date": {"date"},
    "datetime": {"datetime", "timestamp", "timestamptz", "datetimeoffset", "time"},
    "boolean": {"bool", "boolean", "bit", "flag"},
}
CLOSE_TYPES = {frozenset({"integer", "number"}), frozenset({"date", "datetime"})}
SAMPLE_KINDS: list[tuple[str, re.Pattern[str], set[str]]] = [
    ("email", re.compile(r"^[^@\s]+@[^@\s]+\.[a-z]{2,}$", re.I), {"email"}),
    ("url", re.compile(r"^https?://", re.I), {"url", "website", "link", "homepage"}),
    ("date", re.compile(r"^\d{4}-\d{2}-\d{2}([ t]\d{2}:\d{2}.*)?$", re.I), {"date", "time", "timestamp", "birth", "created", "updated"}),
    ("phone", re.compile(r"^\+?[\d\s().-]{7,20}$"), {"phone", "telephone", "mobile", "fax"}),
    ("postal", re.compile(r"^\d{5}(-\d{4})?$|^[A-Z]{1,2}\d[A-Z\d]? ?\d[A-Z]{2}$", re.I), {"postal", "zip", "code"}),
    ("money", re.compile(r"^[$€£]\s?\d[\d,]*(\.\d+)?$"), {"amount", "price", "salary", "balance", "total", "cost"}),
    ("country", re.compile(r"^[A-Z]{2}$"), {"country"}),
]


@dataclass(frozen=True)
class Field:
    name: str
    type: str | None = None
    samples: tuple[str, ...] = ()
    description: str | None = None


class SchemaError(ValueError):
    """A schema the matcher cannot use (empty, unnamed or duplicate fields, wrong shape)."""


def parse_schema(schema: Any, label: str) -> list[Field]:
    """Accepts {"fields": [{name, type?, samples?}]}, a list of such objects, of names or of parsed
    Fields, or {name: type} / {name: {type?, samples?}}."""
    if isinstance(schema, dict) and isinstance(schema.get("fields"), list):
        schema = schema["fields"]
    fields: list[Field] = []
    if isinstance(schema, list):
        for item in schema:
            if isinstance(item, Field):
                fields.append(item)
            elif isinstance(item, str):
                fields.append(Field(item))
            elif isinstance(item, dict) and isinstance(item.get("name"), str):
                fields.append(_field(item["name"], item))
            else:
                raise SchemaError(f"{label}: each field needs a name")
    elif isinstance(schema, dict):
        for name, spec in schema.items():
            fields.append(_field(name, spec if isinstance(spec, dict) else {"type": spec}))
    else:
        raise SchemaError(f"{label} must be an object or a list of fields")
    if not fields:
        raise SchemaError(f"{label} has no fields")
    if len(fields) > MAX_FIELDS:
        raise SchemaError(f"{label} has more than {MAX_FIELDS} fields")
    names = [f.name for f in fields]
    if any(not 0 < len(n) <= 200 for n in names):
        raise SchemaError(f"{label}: field names must be 1-200 characters")
    if len(set(names)) != len(names):
        raise SchemaError(f"{label}: field names must be unique")
    return fields


def check_size(sources: list[Field], targets: list[Field]) -> None:
    """Refuses a mapping whose field pairs would cost more than MAX_PAIRS comparisons."""
    if len(sources) * len(targets) > MAX_PAIRS:
        raise SchemaError(f"source x target fields must be at most {MAX_PAIRS:,} "
                          f"({len(sources)} x {len(targets)} given)")


def _field(name: str, spec: dict[str, Any]) -> Field:
    kind = spec.get("type")
    samples = spec.get("samples") or spec.get("examples") or ()
    if not isinstance(samples, (list, tuple)):
        samples = (samples,)
    return Field(str(name), str(kind) if kind is not None else None, tuple(str(s) for s in samples[:20]),
                 spec.get("description") if isinstance(spec.get("description"), str) else None)


def normalise(name: str, synonyms: dict[str, str] | None = None) -> list[str]:
    """Words of a field name as the matcher compares them (crews/field_words.py)."""
    return list(words_of(name, synonyms))


def type_group(kind: str | None) -> str | None:
    if not kind:
        return None
    base = re.split(r"[\s(\[]", kind.strip().lower(), maxsplit=1)[0]
    for group, names in TYPE_GROUPS.items():
        if base in names:
            return group
    return None


def type_score(a: str | None, b: str | None) -> float:
    ga, gb = type_group(a), type_group(b)
    if ga is None or gb is None:
        return 0.6
    if ga == gb:
        return 1.0
    if frozenset({ga, gb}) in CLOSE_TYPES:
        return 0.8
    if "text" in (ga, gb):
        return 0.4
    return 0.1


def sample_kind(samples: Iterable[str]) -> str | None:
    votes = Counter()
    for value in samples:
        value = value.strip()
        for kind, pattern, _ in SAMPLE_KINDS:
            if pattern.search(value):
                votes[kind] += 1
                break
    if not votes:
        return None
    kind, count = votes.most_common(1)[0]
    return kind if count * 2 >= len(list(samples)) else None


@dataclass(frozen=True)
class Taught:
    """One correction as the matcher uses it: this source field maps to `target` (None: it has no
    counterpart in any target schema)."""

    source: str
    target: str | None
    confidence: float


@dataclass
class Learned:
    """What a tenant taught, in the matcher's terms."""

    exact: dict[str, tuple[str | None, float]] = field(default_factory=dict)  # normalised source -> (target, confidence)
    synonyms: dict[str, str] = field(default_factory=dict)  # source word -> target word(s)
    taught: list[Taught] = field(default_factory=list)  # for carry-over to similar source fields

    @classmethod
    def from_corrections(cls, corrections: list[dict[str, Any]]) -> "Learned":
        """From the learning engine's corrections of field mappings ({source_field, target_field},
        target_field null for "no counterpart"), most trusted first: the first word of a source
        field seen keeps its synonym."""
        learned = cls()
        seen: set[str] = set()
        for item in corrections:
            corrected = item.get("corrected")
            if not isinstance(corrected, dict) or "target_field" not in corrected:
                continue
            source, target = corrected.get("source_field"), corrected["target_field"]
            if not isinstance(source, str) or not (target is None or isinstance(target, str)):
                continue
            confidence = float(item.get("confidence", 0.95))
            key = source_key(source)
            if not key or key in seen:  # the most trusted lesson of a source field decides it
                continue
            seen.add(key)
            learned.exact[key] = (target, confidence)
            learned.taught.append(Taught(source, target, confidence))
            if target is not None and item.get("type", "correction") == "correction":
                for word, meaning in align_words(source, target).items():
                    learned.synonyms.setdefault(word, meaning)
        return learned

    @staticmethod
    def keys_of(source: str, target: str | None) -> set[str]:
        """What one correction `source -> target` teaches, as lookup keys: the exact mapping of
        the source's normalised words, each word synonym it implies, the target it names (so a
        later schema with that target finds it, for similar source fields), or `none` for a
        field taught to have no counterpart. The learning engine indexes corrections by them."""
        if target is None:
            return _exact_keys(source) | {"none"}
        return Learned.keys_of_accepted(source, target) | {"word:" + w for w in align_words(source, target)}

    @staticmethod
    def keys_of_accepted(source: str, target: str) -> set[str]:
        """What an accepted mapping teaches: its exact mapping and the target it names (an accepted
        source field is another name of that target for similar fields later)."""
        return _exact_keys(source) | {"target:" + source_key(target)}


def source_key(name: str) -> str:
    """A field name's normalised words, joined: what an exact lesson is keyed by."""
    return " ".join(normalise(name))


def exact_key(source: str) -> str | None:
    """The exact-lesson key of a source field, None for a name with no words."""
    return "exact:" + key if (key := source_key(source)) else None


def _exact_keys(source: str) -> set[str]:
    return {key} if (key := exact_key(source)) else set()


def align_words(source: str, target: str) -> dict[str, str]:
    """Word synonyms implied by a correct mapping: source words that abbreviations do not explain,
    paired in order with target words nothing in the source explains."""
    return dict(_align_words(source, target))


@lru_cache(maxsize=NAME_CACHE)
def _align_words(source: str, target: str) -> tuple[tuple[str, str], ...]:
    src_words = name_parts(source)
    tgt_words = [w for w in name_parts(target) if w not in STOP_WORDS]
    explained = set()
    for word in src_words:
        explained.update(ABBREVIATIONS.get(word, word).split())
    # Words the matcher already knows (an abbreviation or a word abbreviations expand to) keep
    # their meaning: one correction must not redefine "code" or "name" for every schema.
    unknown_src = [w for w in src_words if w not in ABBREVIATIONS and w not in KNOWN_WORDS and not w.isdigit()
                   and w not in tgt_words]
    free_tgt = [w for w in tgt_words if w not in explained]
    if not unknown_src or not free_tgt:
        return ()
    if len(unknown_src) == 1:
        return ((unknown_src[0], " ".join(free_tgt)),)
    return tuple(zip(unknown_src, free_tgt)) if len(unknown_src) == len(free_tgt) else ()


def field_context(source: Field | str, source_schema: str | None = None) -> dict[str, Any]:
    """The learning context of a source field: what recommendations are matched on."""
    found = source if isinstance(source, Field) else Field(source)
    context: dict[str, Any] = {"source_field": found.name, "source_words": " ".join(normalise(found.name))}
    if found.type:
        context["source_type"] = found.type
    if source_schema:
        context["source_schema"] = source_schema
    return context


# Taught names compared per target (most trusted first): bounds a mapping's work however many
# times a tenant taught the same targets.
ALIASES_PER_TARGET = 20


@dataclass
class Mapping:
    source: str
    target: str
    confidence: float
    method: str
    signals: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return {"source_field": self.source, "target_field": self.target, "confidence": round(self.confidence, 4),
                "method": self.method, "signals": {k: round(v, 4) for k, v in self.signals.items()}}


class FieldMatcher:
    """`carry_over` is the similarity a source field needs to a taught one for the taught target
    to apply to it; `no_counterpart` the same for a field taught to have none (stricter, as it
    hides a field)."""

    def __init__(self, min_score: float = 0.45, weights: tuple[float, float, float] = (0.7, 0.15, 0.15),
                 carry_over: float = 0.7, no_counterpart: float = 0.85) -> None:
        self.min_score = min_score
        self.weights = weights
        self.carry_over, self.no_counterpart = carry_over, no_counterpart

    def score(self, source: Field, target: Field, synonyms: dict[str, str] | None = None,
              weight: dict[str, float] | None = None, name: float | None = None) -> dict[str, float]:
        """`name`: the names' path_similarity when already known (a mapping computes them all at once)."""
        tgt_words = words_of(target.name, synonyms)
        if name is None:
            name = path_similarity(source.name, target.name, synonyms, weight)
        kind = sample_kind(source.samples)
        if kind is None:
            hint = 0.5
        else:
            target_kind = sample_kind(target.samples)
            keywords = next(k for n, _, k in SAMPLE_KINDS if n == kind)
            hint = 1.0 if target_kind == kind or keywords & set(tgt_words) else 0.3 if target_kind else 0.5
        types = type_score(source.type, target.type)
        w_name, w_type, w_hint = self.weights
        return {"name": name, "type": types, "samples": hint, "total": w_name * name + w_type * types + w_hint * hint}

    def match(self, source_schema: Any, target_schema: Any, *, learned: Learned | None = None,
              recommendations: list[list[dict[str, Any]]] | None = None) -> dict[str, Any]:
        """`recommendations[i]` are the learning engine's recommendations for source field i's
        `field_context`. Returns mappings, unmapped fields (with those the tenant taught to have no
        counterpart) and how many learned items were applied."""
        sources = parse_schema(source_schema, "source_schema")
        targets = parse_schema(target_schema, "target_schema")
        check_size(sources, targets)
        learned = learned or Learned()
        synonyms = learned.synonyms
        weight = rarity(words_of(f.name, synonyms) for f in sources + targets)
        by_norm = {source_key(t.name): t.name for t in targets}
        by_norm.update({t.name.lower(): t.name for t in targets})
        renamed_targets = {t.name for t in targets if normalise(t.name, synonyms) != normalise(t.name)}
        aliases: dict[str | None, list[tuple[str, float]]] = {}  # target -> taught source names
        for taught in learned.taught:
            target = None if taught.target is None else self._resolve(taught.target, by_norm)
            if taught.target is not None and target is None:
                continue  # taught for a target this schema does not have
            known = aliases.setdefault(target, [])
            if len(known) < ALIASES_PER_TARGET:
                known.append((taught.source, taught.confidence))
        source_names, target_names = [s.name for s in sources], [t.name for t in targets]
        taught_names = list(dict.fromkeys(alias for known in aliases.values() for alias, _ in known))
        alike = similarity_table(source_names, taught_names, synonyms, weight,
                                 min(self.carry_over, self.no_counterpart))
        named = similarity_table(source_names, target_names, synonyms, weight, 0.0)
        named_plain: list[list[float]] | None = None  # without the learned synonyms, when one changed a name
        candidates: list[tuple[float, str, str | None, str, dict[str, float]]] = []
        for i, source in enumerate(sources):
            boosts = self._carried(dict(zip(taught_names, alike[i])), aliases)
            taught = learned.exact.get(source_key(source.name))
            if taught and taught[0] is None:
                boosts[None] = (0.5 + 0.5 * taught[1], "learned_no_counterpart")
            elif taught and (target := self._resolve(taught[0], by_norm)):
                boosts[target] = (0.5 + 0.5 * taught[1], "learned")
            for rec in (recommendations[i] if recommendations and i < len(recommendations) else []):
                corrected = rec.get("recommendation")
                if rec.get("type") != "correction_recommendation" or not isinstance(corrected, dict):
                    continue
                target = self._resolve(corrected.get("target_field"), by_norm)
                if target and rec.get("confidence", 0) > boosts.get(target, (0, ""))[0]:
                    boosts[target] = (float(rec["confidence"]), "learned_similar")
            if None in boosts:
                candidates.append((boosts[None][0], source.name, None, boosts[None][1], {}))
            source_changed = normalise(source.name, synonyms) != normalise(source.name)
            for j, target in enumerate(targets):
                signals = self.score(source, target, synonyms, weight, named[i][j])
                total, method = signals["total"], "matcher"
                # Only when a synonym changed a name's words can it have changed the score.
                if source_changed or target.name in renamed_targets:
                    if named_plain is None:
                        named_plain = similarity_table(source_names, target_names, None, weight, 0.0)
                    if signals["total"] > self.score(source, target, None, weight, named_plain[i][j])["total"] + 1e-9:
                        method = "learned_synonyms"
                if target.name in boosts and boosts[target.name][0] > total:
                    total, method = boosts[target.name]
                    signals = {**signals, "learned": total}
                candidates.append((total, source.name, target.name, method, signals))
        # on a tie a real target goes before "no counterpart"
        candidates.sort(key=lambda c: (-c[0], c[1], c[2] is None, c[2] or ""))
        mapped_sources: dict[str, Mapping] = {}
        no_counterpart: set[str] = set()
        used_targets: set[str] = set()
        applied_for: set[str] = set()
        for total, source, target, method, signals in candidates:
            if total < self.min_score:
                break
            if source in mapped_sources or source in no_counterpart or target in used_targets:
                continue
            if target is None:
                no_counterpart.add(source)
                applied_for.add(source)
                continue
            mapped_sources[source] = Mapping(source, target, min(1.0, total), method, signals)
            used_targets.add(target)
            if method != "matcher":
                applied_for.add(source)
        mappings = [mapped_sources[s.name].to_dict() for s in sources if s.name in mapped_sources]
        return {
            "mappings": mappings,
            "unmapped_source_fields": [s.name for s in sources if s.name not in mapped_sources],
            "unmapped_target_fields": [t.name for t in targets if t.name not in used_targets],
            "no_counterpart": [s.name for s in sources if s.name in no_counterpart],
            "match_rate": round(len(mappings) / len(sources), 4),
            "recommendations_applied": len(applied_for),
        }

    def _carried(self, alike: dict[str, float], aliases: dict[str | None, list[tuple[str, float]]]
                 ) -> dict[str | None, tuple[float, str]]:
        """Corrections carried over by similarity: a source field much like one the tenant
        corrected gets that correction's target (or its "no counterpart"), scaled by how alike
        the two names are (`alike`: the source field's similarity to each taught name)."""
        boosts: dict[str | None, tuple[float, str]] = {}
        for target, taught in aliases.items():
            needed = self.no_counterpart if target is None else self.carry_over
            best = 0.0
            for alias, confidence in taught:
                similarity = alike[alias]
                if similarity >= needed:
                    best = max(best, confidence * similarity)
            if best:
                boosts[target] = (best, "learned_no_counterpart" if target is None else "learned_similar")
        return boosts

    @staticmethod
    def _resolve(name: Any, by_norm: dict[str, str]) -> str | None:
        if not isinstance(name, str):
            return None
        return by_norm.get(name.lower()) or by_norm.get(source_key(name))
