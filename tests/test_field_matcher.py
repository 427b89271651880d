"""FieldMatcher: name normalisation, signals, learned synonyms and exact corrections, schemas."""
from __future__ import annotations

import json

import pytest

from bench.learning_eval import DATA, schema, score
from crews.field_matcher import (
    Field, FieldMatcher, Learned, SchemaError, align_words, field_context, normalise, parse_schema, sample_kind,
    split_name, type_score,
)


def test_names_are_split_and_expanded():
    assert split_name("custAddrLine1") == ["cust", "addr", "line", "1"]
    assert split_name("CUST_NM") == ["cust", "nm"]
    assert split_name("HTTPStatusCode") == ["http", "status", "code"]
    assert split_name("addr:postcode") == ["addr", "postcode"]
    assert normalise("cust_nm") == ["customer", "name"]
    assert normalise("dob") == ["birth", "date"]
    assert normalise("xref_cd", {"xref": "legacy reference"}) == ["legacy", "reference", "code"]


def test_types_and_samples():
    assert type_score("varchar(20)", "text") == 1.0
    assert type_score("int", "decimal") == 0.8
    assert type_score("date", "boolean") == 0.1
    assert type_score("string", "integer") == 0.4
    assert type_score(None, "text") == 0.6
    assert sample_kind(["a@b.com", "c@d.org"]) == "email"
    assert sample_kind(["2024-01-31", "2023-12-01"]) == "date"
    assert sample_kind(["hello", "world"]) is None


def test_schema_forms_and_errors():
    assert parse_schema({"a": "int", "b": {"type": "text", "samples": ["x"]}}, "s") == [
        Field("a", "int"), Field("b", "text", ("x",))]
    assert parse_schema({"fields": [{"name": "a"}, "b"]}, "s") == [Field("a"), Field("b")]
    for bad in ({}, [], "a", [{"type": "x"}], ["a", "a"], [""], 5):
        with pytest.raises(SchemaError):
            parse_schema(bad, "s")


def test_matching_is_one_to_one_and_explained():
    result = FieldMatcher().match(
        [{"name": "CUST_NM", "type": "varchar"}, {"name": "custEmail", "samples": ["a@b.com"]},
         {"name": "zzz_qqq", "type": "int"}],
        {"customer_name": "text", "email_address": "text", "created_at": "timestamp"})
    got = {m["source_field"]: m for m in result["mappings"]}
    assert got["CUST_NM"]["target_field"] == "customer_name" and got["CUST_NM"]["signals"]["name"] == 1.0
    assert got["custEmail"]["target_field"] == "email_address" and got["custEmail"]["signals"]["samples"] == 1.0
    assert result["unmapped_source_fields"] == ["zzz_qqq"] and result["unmapped_target_fields"] == ["created_at"]
    assert result["match_rate"] == pytest.approx(2 / 3, abs=1e-4)


def test_learning_from_corrections():
    assert align_words("xref_code", "legacy_reference") == {"xref": "legacy reference"}
    assert align_words("emp_qq_nm", "employee_title_name") == {"qq": "title"}
    assert align_words("cust_nm", "customer_name") == {}
    learned = Learned.from_corrections([
        {"corrected": {"source_field": "xref_code", "target_field": "legacy_reference"}, "confidence": 0.9},
        {"corrected": "not a mapping"}, {"corrected": {"source_field": 1}},
    ])
    assert learned.exact == {"xref code": ("legacy_reference", 0.9)} and learned.synonyms == {"xref": "legacy reference"}
    matcher = FieldMatcher()
    taught = matcher.match(["xref_code"], ["legacy_reference", "code_name"], learned=learned)
    assert taught["mappings"][0]["target_field"] == "legacy_reference" and taught["recommendations_applied"] == 1
    similar = matcher.match(["ext_key"], ["partner_key", "name"], recommendations=[[
        {"type": "correction_recommendation", "recommendation": {"target_field": "partner_key"}, "confidence": 0.9},
        {"type": "success_recommendation", "recommendation": {"target_field": "name"}, "confidence": 0.99},
        {"type": "correction_recommendation", "recommendation": "free text", "confidence": 0.99},
    ]])
    assert similar["mappings"][0]["target_field"] == "partner_key" and similar["mappings"][0]["method"] == "learned_similar"
    assert field_context(Field("cust_nm", "varchar"), "crm") == {
        "source_field": "cust_nm", "source_words": "customer name", "source_type": "varchar", "source_schema": "crm"}


def test_evaluation_data_set_is_consistent():
    pairs = json.loads(DATA.read_text())["pairs"]
    assert len(pairs) >= 8
    for pair in pairs:
        sources = {f["name"] for f in schema(pair["source_fields"])}
        targets = {f["name"] for f in schema(pair["target_fields"])}
        assert set(pair["matches"]) <= sources and set(pair["matches"].values()) <= targets
        assert pair["source"]["licence"] and pair["target"]["url"].startswith("https://")
    assert score({"a": "x", "b": "y"}, {"a": "x", "c": "z"}) == {
        "tp": 1, "predicted": 2, "gold": 2, "precision": 0.5, "recall": 0.5, "f1": 0.5}
