"""Data validation: profile a flow's records and scan them for personal data.

Pure functions over plain records (lists of dicts), used by the data-validation agent's tools.
What they report is computed from the data, so the same input always gives the same report and a
test can check it by hand.
"""
from __future__ import annotations

import json
import re
from collections import Counter
from typing import Any

Records = list[dict[str, Any]]
MAX_RECORDS = 10_000  # per flow; larger imports belong in a batch pipeline, not a crew's context
FAIL_BELOW = 0.4  # a quality score under this fails validation: the flow stops there

PII_PATTERNS: dict[str, re.Pattern[str]] = {
    "email": re.compile(r"^[\w.+-]+@[\w-]+(\.[\w-]+)+$"),
    "phone": re.compile(r"^\+?[\d ()./-]{7,20}$"),
    "ssn": re.compile(r"^\d{3}-\d{2}-\d{4}$"),
    "credit_card": re.compile(r"^(?:\d[ -]?){13,19}$"),
    "ip_address": re.compile(r"^(?:(?:25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(?:25[0-5]|2[0-4]\d|1?\d?\d)$"),
}
PII_NAME_HINTS: dict[str, tuple[str, ...]] = {
    "person_name": ("first_name", "last_name", "full_name", "firstname", "lastname", "customer_name", "contact_name"),
    "birth_date": ("dob", "birth", "birthday"),
    "address": ("address", "street", "postal", "zip"),
    "government_id": ("ssn", "passport", "national_id", "tax_id"),
    "email": ("email", "e_mail"),
    "phone": ("phone", "mobile", "telephone"),
}
SENSITIVE = {"ssn", "credit_card", "government_id"}


def datasets(data: Any) -> dict[str, Records]:
    """A flow's `data`: a list of records, or an object of named lists of records. Raises
    ValueError with a message fit for a client when it is neither."""
    named = {"records": data} if isinstance(data, list) else data
    if not isinstance(named, dict) or not named:
        raise ValueError("data must be a non-empty list of records or an object of named record lists")
    total = 0
    for name, records in named.items():
        if not isinstance(records, list) or not records:
            raise ValueError(f"data.{name} must be a non-empty list of records")
        if not all(isinstance(r, dict) for r in records):
            raise ValueError(f"data.{name}: every record must be an object")
        total += len(records)
    if total > MAX_RECORDS:
        raise ValueError(f"data holds {total} records; the limit per flow is {MAX_RECORDS}")
    return named


def all_records(named: dict[str, Records]) -> Records:
    return [record for records in named.values() for record in records]


def _empty(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip()) or value == [] or value == {}


def value_kind(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, (list, tuple)):
        return "array"
    if isinstance(value, dict):
        return "object"
    text = str(value).strip()
    if re.fullmatch(r"-?\d+", text):
        return "integer"
    if re.fullmatch(r"-?\d+\.\d+", text):
        return "number"
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}([T ][\d:.]+Z?)?", text):
        return "date"
    if PII_PATTERNS["email"].match(text):
        return "email"
    return "string"


def luhn_ok(text: str) -> bool:
    digits = [int(c) for c in text if c.isdigit()]
    if not 13 <= len(digits) <= 19:
        return False
    total = 0
    for i, digit in enumerate(reversed(digits)):
        if i % 2:
            digit *= 2
            digit -= 9 if digit > 9 else 0
        total += digit
    return total % 10 == 0


def pii_kind(value: Any) -> str | None:
    """What kind of personal data one value looks like, if any."""
    if not isinstance(value, (str, int)) or isinstance(value, bool):
        return None
    text = str(value).strip()
    if PII_PATTERNS["email"].match(text):
        return "email"
    if PII_PATTERNS["ssn"].match(text):
        return "ssn"
    if PII_PATTERNS["ip_address"].match(text):
        return "ip_address"
    if PII_PATTERNS["credit_card"].match(text) and luhn_ok(text):
        return "credit_card"
    if isinstance(value, str) and PII_PATTERNS["phone"].match(text) and sum(c.isdigit() for c in text) >= 7 \
            and any(c in text for c in "+ -()."):
        return "phone"
    return None


def _name_hint(column: str) -> str | None:
    lowered = column.lower()
    for kind, hints in PII_NAME_HINTS.items():
        if any(hint in lowered for hint in hints):
            return kind
    return None


def profile_columns(records: Records) -> dict[str, dict[str, Any]]:
    """Per column: inferred type, fill rate, distinct values, mixed types, an example."""
    columns: dict[str, dict[str, Any]] = {}
    order: list[str] = []
    for record in records:
        for key in record:
            if key not in columns:
                columns[key] = {"kinds": Counter(), "filled": 0, "values": set(), "example": None}
                order.append(key)
    for record in records:
        for key, column in columns.items():
            value = record.get(key)
            if _empty(value):
                continue
            column["filled"] += 1
            column["kinds"][value_kind(value)] += 1
            column["values"].add(json.dumps(value, sort_keys=True, default=str)[:200])
            if column["example"] is None:
                column["example"] = value
    total = len(records) or 1
    profile = {}
    for key in order:
        column = columns[key]
        kinds = column["kinds"]
        main = kinds.most_common(1)[0][0] if kinds else "empty"
        numeric = set(kinds) <= {"integer", "number"}
        profile[key] = {
            "type": "number" if numeric and len(kinds) > 1 else main,
            "fill_rate": round(column["filled"] / total, 4),
            "distinct": len(column["values"]),
            "mixed_types": len(kinds) > 1 and not numeric,
            "example": column["example"],
        }
    return profile


def scan_pii(records: Records, profile: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """Columns holding personal data, found by value patterns and by column names."""
    found: dict[str, dict[str, Any]] = {}
    for column in (profile or profile_columns(records)):
        kinds = Counter(k for r in records if (k := pii_kind(r.get(column))))
        filled = sum(1 for r in records if not _empty(r.get(column)))
        by_value = kinds.most_common(1)[0] if kinds else None
        if by_value and by_value[1] >= max(1, filled // 2):
            found[column] = {"kind": by_value[0], "evidence": "values", "matches": by_value[1]}
        elif hint := _name_hint(column):
            found[column] = {"kind": hint, "evidence": "name", "matches": filled}
    return {
        "columns": found,
        "pii_found": bool(found),
        "sensitive": sorted(c for c, f in found.items() if f["kind"] in SENSITIVE),
    }


def validate(data: Any) -> dict[str, Any]:
    """The data-validation report: profile, PII, duplicates, issues, a quality score and a verdict."""
    named = datasets(data)
    report: dict[str, Any] = {"datasets": {}, "issues": []}
    scores: list[tuple[float, int]] = []
    for name, records in named.items():
        profile = profile_columns(records)
        pii = scan_pii(records, profile)
        keys = [json.dumps(r, sort_keys=True, default=str) for r in records]
        duplicates = len(keys) - len(set(keys))
        empty_rows = sum(1 for r in records if all(_empty(v) for v in r.values()))
        fill = sum(c["fill_rate"] for c in profile.values()) / len(profile) if profile else 0.0
        mixed = [c for c, p in profile.items() if p["mixed_types"]]
        sparse = [c for c, p in profile.items() if p["fill_rate"] < 0.5]
        score = fill * (1 - duplicates / len(records)) * (1 - empty_rows / len(records)) * (0.9 ** len(mixed))
        scores.append((score, len(records)))
        for column in mixed:
            report["issues"].append({"dataset": name, "column": column, "issue": "mixed_types", "severity": "medium"})
        for column in sparse:
            report["issues"].append({"dataset": name, "column": column, "issue": "mostly_empty", "severity": "low"})
        if duplicates:
            report["issues"].append({"dataset": name, "issue": "duplicate_records", "count": duplicates, "severity": "medium"})
        for column in pii["sensitive"]:
            report["issues"].append({"dataset": name, "column": column, "issue": "sensitive_data",
                                     "kind": pii["columns"][column]["kind"], "severity": "high"})
        report["datasets"][name] = {
            "records": len(records), "columns": profile, "pii": pii, "duplicates": duplicates, "empty_records": empty_rows,
            "quality_score": round(score, 4),
        }
    total = sum(n for _, n in scores)
    quality = sum(s * n for s, n in scores) / total
    report["records"] = total
    report["quality_score"] = round(quality, 4)
    report["pii_columns"] = sorted({f"{d}.{c}" for d, r in report["datasets"].items() for c in r["pii"]["columns"]})
    report["status"] = "passed" if quality >= FAIL_BELOW else "failed"
    report["recommendations"] = _recommendations(report)
    return report


def _recommendations(report: dict[str, Any]) -> list[str]:
    advice = []
    kinds = {i["issue"] for i in report["issues"]}
    if "sensitive_data" in kinds:
        advice.append("Mask or tokenise sensitive columns before they leave the source system.")
    if report["pii_columns"]:
        advice.append("Record a lawful basis and retention rule for each personal-data column.")
    if "duplicate_records" in kinds:
        advice.append("De-duplicate records before loading; pick a natural key per dataset.")
    if "mixed_types" in kinds:
        advice.append("Normalise mixed-type columns to one type during transformation.")
    if "mostly_empty" in kinds:
        advice.append("Confirm with owners whether mostly-empty columns are still needed.")
    if report["status"] == "failed":
        advice.append("Data quality is too low to continue: fix the source extract and import again.")
    return advice


def columns_of(named: dict[str, Records]) -> list[dict[str, Any]]:
    """A source schema derived from the data: one field per column, with its type and samples."""
    fields: dict[str, dict[str, Any]] = {}
    for records in named.values():
        for column, info in profile_columns(records).items():
            if column not in fields:
                samples = [str(r[column]) for r in records[:20] if not _empty(r.get(column))][:5]
                fields[column] = {"name": column, "type": info["type"], "samples": samples}
    return list(fields.values())

