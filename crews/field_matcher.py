"""FieldMatcher: map a source schema's fields to a target schema's, and apply what a tenant taught.

Scores combine four signals, each explainable:
- names, normalised: camelCase / snake_case / kebab / dotted names split into words, common
  abbreviations expanded (`cust_nm` -> customer name), compared as word sets and as character
  3-grams (so `telephone` still resembles `phone_number`);
- type compatibility (`varchar` and `text` agree; integers and decimals mostly do);
- sample-value hints (values that look like e-mails, dates, phone numbers, ... point to fields
  whose names or samples say the same);
- the tenant's corrections: an exact taught mapping wins; word synonyms are learned from every
  correction (teaching `cust_nm -> customer_name` teaches `nm` = name and `cust` = customer for
  every later schema), and corrections of similar fields, found by the learning engine, are
  applied as recommendations.

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

ABBREVIATIONS = {
    "acct": "account", "addr": "address", "amt": "amount", "avg": "average", "bal": "balance", "cd": "code",
    "cnt": "count", "ctry": "country", "cntry": "country", "cust": "customer", "desc": "description",
    "dept": "department", "dob": "birth date", "dt": "date", "emp": "employee", "eml": "email", "fname": "first name",
    "lname": "last name", "mname": "middle name", "ln": "line", "mgr": "manager", "msg": "message", "nbr": "number",
    "no": "number", "num": "number", "nm": "name", "org": "organization", "pct": "percent", "ph": "phone",
    "phn": "phone", "tel": "telephone", "prod": "product", "qty": "quantity", "ref": "reference", "st": "street",
    "str": "street", "zip": "postal code", "zipcode": "postal code", "postcode": "postal code", "ts": "timestamp",
    "tm": "time", "txn": "transaction", "trx": "transaction", "usr": "user", "yr": "year", "mo": "month",
    "id": "identifier", "ident": "identifier", "uid": "user identifier", "sku": "stock keeping unit",
    "e": "e", "mail": "email", "tstamp": "timestamp", "upd": "updated", "crt": "created", "loc": "location",
    "lat": "latitude", "lng": "longitude", "lon": "longitude", "inv": "invoice", "ord": "order", "pmt": "payment",
    "sal": "salary", "ssn": "social security number", "vnd": "vendor", "cat": "category", "img": "image",
    "url": "url", "uri": "url", "web": "website", "co": "company", "fax": "fax", "gender": "gender", "sex": "gender",
}
KNOWN_WORDS = {w for expansion in ABBREVIATIONS.values() for w in expansion.split()}
STOP_WORDS = {"the", "of", "a", "an", "tbl", "fld", "col", "field", "value", "val"}
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
    names = [f.name for f in fields]
    if any(not 0 < len(n) <= 200 for n in names):
        raise SchemaError(f"{label}: field names must be 1-200 characters")
    if len(set(names)) != len(names):
        raise SchemaError(f"{label}: field names must be unique")
    return fields


def _field(name: str, spec: dict[str, Any]) -> Field:
    kind = spec.get("type")
    samples = spec.get("samples") or spec.get("examples") or ()
    if not isinstance(samples, (list, tuple)):
        samples = (samples,)
    return Field(str(name), str(kind) if kind is not None else None, tuple(str(s) for s in samples[:20]),
                 spec.get("description") if isinstance(spec.get("description"), str) else None)


_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")
_SPLIT = re.compile(r"[^A-Za-z0-9]+|(?<=[A-Za-z])(?=\d)|(?<=\d)(?=[A-Za-z])")


# Field names recur (every mapping of a tenant reads its corrections' names again): their words
# are computed once per process, for this many names.
NAME_CACHE = 65_536


def split_name(name: str) -> list[str]:
    """`custAddrLine1` -> ["cust", "addr", "line", "1"]; `CUST_NM` -> ["cust", "nm"]."""
    return list(_split_name(name))


@lru_cache(maxsize=NAME_CACHE)
def _split_name(name: str) -> tuple[str, ...]:
    words = []
    for part in _SPLIT.split(_CAMEL.sub(" ", name)):
        words += [w.lower() for w in part.split() if w]
    return tuple(words)


def normalise(name: str, synonyms: dict[str, str] | None = None) -> list[str]:
    """Words of a field name with abbreviations (and the tenant's learned synonyms) expanded."""
    return list(_expand(name, synonyms) if synonyms else _normalise(name))


@lru_cache(maxsize=NAME_CACHE)
def _normalise(name: str) -> tuple[str, ...]:
    return _expand(name, None)


def _expand(name: str, synonyms: dict[str, str] | None) -> tuple[str, ...]:
    out: list[str] = []
    for word in _split_name(name):
        expanded = (synonyms or {}).get(word) or ABBREVIATIONS.get(word, word)
        out += [w for w in expanded.split() if w not in STOP_WORDS]
    return tuple(out) or _split_name(name)


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


def _trigrams(text: str) -> set[str]:
    padded = f"  {text} "
    return {padded[i : i + 3] for i in range(len(padded) - 2)}


def _dice(a: set, b: set) -> float:
    return 2 * len(a & b) / (len(a) + len(b)) if a and b else 0.0


@dataclass
class Learned:
    """What a tenant taught, in the matcher's terms."""

    exact: dict[str, tuple[str, float]] = field(default_factory=dict)  # normalised source -> (target, confidence)
    synonyms: dict[str, str] = field(default_factory=dict)  # source word -> target word(s)

    @classmethod
    def from_corrections(cls, corrections: list[dict[str, Any]]) -> "Learned":
        """From the learning engine's corrections of field mappings ({source_field, target_field}),
        most trusted first: the first word of a source field seen keeps its synonym."""
        learned = cls()
        for item in corrections:
            corrected = item.get("corrected")
            if not isinstance(corrected, dict):
                continue
            source, target = corrected.get("source_field"), corrected.get("target_field")
            if not isinstance(source, str) or not isinstance(target, str):
                continue
            key = " ".join(normalise(source))
            learned.exact.setdefault(key, (target, float(item.get("confidence", 0.95))))
            for word, meaning in align_words(source, target).items():
                learned.synonyms.setdefault(word, meaning)
        return learned

    @staticmethod
    def keys_of(source: str, target: str) -> set[str]:
        """What one correction `source -> target` teaches, as lookup keys: the exact mapping of
        the source's normalised words, and each word synonym it implies (the learning engine
        indexes corrections by them)."""
        return {"exact:" + " ".join(normalise(source))} | {"word:" + w for w in align_words(source, target)}

    @staticmethod
    def keys_for(sources: Iterable[str], names: Iterable[str]) -> list[str]:
        """The keys a mapping of these source fields can use: their exact mappings, and synonyms
        of any word of these field names (sources and targets). The corrections with one of these
        keys decide the mapping exactly as all of the tenant's corrections would."""
        return sorted({"exact:" + " ".join(normalise(s)) for s in sources}
                      | {"word:" + w for name in names for w in split_name(name)})


def align_words(source: str, target: str) -> dict[str, str]:
    """Word synonyms implied by a correct mapping: source words that abbreviations do not explain,
    paired in order with target words nothing in the source explains."""
    return dict(_align_words(source, target))


@lru_cache(maxsize=NAME_CACHE)
def _align_words(source: str, target: str) -> tuple[tuple[str, str], ...]:
    src_words = _split_name(source)
    tgt_words = [w for w in _split_name(target) if w not in STOP_WORDS]
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
    def __init__(self, min_score: float = 0.45, weights: tuple[float, float, float] = (0.7, 0.15, 0.15)) -> None:
        self.min_score = min_score
        self.weights = weights

    def score(self, source: Field, target: Field, synonyms: dict[str, str] | None = None) -> dict[str, float]:
        src_words, tgt_words = normalise(source.name, synonyms), normalise(target.name, synonyms)
        if src_words == tgt_words:
            name = 1.0
        else:
            words = _dice(set(src_words), set(tgt_words))
            chars = _dice(_trigrams(" ".join(src_words)), _trigrams(" ".join(tgt_words)))
            name = 0.6 * words + 0.4 * chars
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
        `field_context`. Returns mappings, unmapped fields and how many learned items were applied."""
        sources = parse_schema(source_schema, "source_schema")
        targets = parse_schema(target_schema, "target_schema")
        learned = learned or Learned()
        by_norm = {" ".join(normalise(t.name)): t.name for t in targets}
        by_norm.update({t.name.lower(): t.name for t in targets})
        renamed_targets = {t.name for t in targets if normalise(t.name, learned.synonyms) != normalise(t.name)}
        candidates: list[tuple[float, str, str, str, dict[str, float]]] = []
        applied_for: set[str] = set()
        for i, source in enumerate(sources):
            boosts: dict[str, tuple[float, str]] = {}
            taught = learned.exact.get(" ".join(normalise(source.name)))
            if taught and (target := self._resolve(taught[0], by_norm)):
                boosts[target] = (0.5 + 0.5 * taught[1], "learned")
            for rec in (recommendations[i] if recommendations and i < len(recommendations) else []):
                corrected = rec.get("recommendation")
                if rec.get("type") != "correction_recommendation" or not isinstance(corrected, dict):
                    continue
                target = self._resolve(corrected.get("target_field"), by_norm)
                if target and rec.get("confidence", 0) > boosts.get(target, (0, ""))[0]:
                    boosts[target] = (float(rec["confidence"]), "learned_similar")
            source_changed = normalise(source.name, learned.synonyms) != normalise(source.name)
            for target in targets:
                signals = self.score(source, target, learned.synonyms)
                total, method = signals["total"], "matcher"
                # Only when a synonym changed a name's words can it have changed the score.
                changed = source_changed or target.name in renamed_targets
                if changed and signals["total"] > self.score(source, target)["total"] + 1e-9:
                    method = "learned_synonyms"
                if target.name in boosts and boosts[target.name][0] > total:
                    total, method = boosts[target.name]
                    signals = {**signals, "learned": total}
                candidates.append((total, source.name, target.name, method, signals))
        candidates.sort(key=lambda c: (-c[0], c[1], c[2]))
        mapped_sources: dict[str, Mapping] = {}
        used_targets: set[str] = set()
        for total, source, target, method, signals in candidates:
            if total < self.min_score:
                break
            if source in mapped_sources or target in used_targets:
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
            "match_rate": round(len(mappings) / len(sources), 4),
            "recommendations_applied": len(applied_for),
        }

    @staticmethod
    def _resolve(name: Any, by_norm: dict[str, str]) -> str | None:
        if not isinstance(name, str):
            return None
        return by_norm.get(name.lower()) or by_norm.get(" ".join(normalise(name)))
