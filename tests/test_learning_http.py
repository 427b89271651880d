"""The learning engine and field mapping over HTTP, with real Ray actors and both databases."""
from __future__ import annotations

import uuid

import httpx
import pytest
import ray

from actors.substrate.placement import NAMESPACE, shard_name
from serve_app.client import RaytenantError
from tests.http_support import assert_error, refused

pytestmark = pytest.mark.integration

CONTEXT = {"source_field": "cust_id", "table": "customers", "system": "crm"}
SOURCE = {"fields": [{"name": "cust_nm", "type": "varchar"}, {"name": "xref_code", "type": "varchar"},
                     {"name": "eml", "type": "string", "samples": ["ann@example.com"]}]}
TARGET = {"customer_name": "text", "email_address": "text", "legacy_reference": "text", "region": "text"}


async def test_corrections_recommendations_feedback(live, tenant):
    auth = live.auth(tenant)
    async with live.client(tenant) as rt, live.client(f"t-{uuid.uuid4().hex[:12]}") as other, \
            httpx.AsyncClient(base_url=live.url) as client:
        learned = await client.post("/v1/learning/corrections", headers=auth, json={
            "original": {"field_mapping": "cust_id -> customer_name"},
            "corrected": {"field_mapping": "cust_id -> customer_id"}, "context": CONTEXT})
        assert learned.status_code == 201 and learned.json()["confidence"] == 0.95
        batch = await rt.learning.successes([{"result": {"ok": True}, "context": {"table": "orders"}},
                                             {"result": {"ok": 2}, "context": {"table": "x"}}])
        assert len(batch["patterns"]) == 2
        again = await rt.learning.corrections([{
            "original": {"field_mapping": "cust_id -> customer_name"},
            "corrected": {"field_mapping": "cust_id -> customer_id"}, "context": CONTEXT}])
        assert again["patterns"][0]["merged"] is True and again["patterns"][0]["support"] == 2
        found = await rt.learning.recommend(CONTEXT)
        [rec] = found["recommendations"]
        assert rec["type"] == "correction_recommendation" and rec["confidence"] > 0.5
        assert rec["recommendation"] == {"field_mapping": "cust_id -> customer_id"}
        moved = await rt.learning.feedback(rec["pattern_id"], False)
        assert moved["rejected"] == 1 and moved["confidence"] < 0.95
        stats = await rt.learning.stats()
        assert stats["patterns"] == 3 and stats["corrections"] == 1
        # Another tenant sees nothing of this one, and cannot give feedback on its patterns.
        assert await other.learning.recommend(CONTEXT) == {"recommendations": []}
        await refused(other.learning.feedback(rec["pattern_id"], True), 404, "pattern_not_found")


async def test_learning_bad_input(live, tenant):
    auth = live.auth(tenant)
    async with live.client(tenant) as rt, live.client(tenant, scopes=["learning:read"]) as reader, \
            httpx.AsyncClient(base_url=live.url) as client:
        cases = [
            ("/v1/learning/corrections", {"original": 1, "corrected": 2, "context": "text"}, "invalid_context"),
            ("/v1/learning/corrections", {"original": 1, "corrected": 2, "context": {}}, "invalid_context"),
            ("/v1/learning/corrections", {"original": 1, "context": {"a": 1}}, "missing_corrected"),
            ("/v1/learning/corrections", {"corrections": []}, "invalid_corrections"),
            ("/v1/learning/corrections", [1], "invalid_body"),
            ("/v1/learning/successes", {"context": {"a": 1}}, "missing_result"),
            ("/v1/learning/recommendations", {"context": [1]}, "invalid_context"),
            ("/v1/learning/recommendations", {"context": {"a": 1}, "threshold": 0}, "invalid_threshold"),
            ("/v1/learning/recommendations", {"context": {"a": 1}, "limit": 99}, "invalid_limit"),
            ("/v1/learning/feedback", {"pattern_id": 5, "accepted": True}, "invalid_pattern_id"),
            ("/v1/learning/feedback", {"pattern_id": "p", "accepted": "yes"}, "invalid_accepted"),
            ("/v1/mappings", {"source_schema": {}, "target_schema": TARGET}, "invalid_schema"),
            ("/v1/mappings", {"source_schema": SOURCE, "target_schema": []}, "invalid_schema"),
            ("/v1/mappings", {"source_schema": [{"type": "x"}], "target_schema": TARGET}, "invalid_schema"),
            ("/v1/mappings", {"source_schema": ["a", "a"], "target_schema": TARGET}, "invalid_schema"),
            ("/v1/mappings", {"source_schema": "a", "target_schema": TARGET}, "invalid_schema"),
            ("/v1/mappings", {"source_schema": SOURCE, "target_schema": TARGET, "source_name": 3}, "invalid_source_name"),
            ("/v1/mappings/corrections", {"source_field": "", "target_field": "b"}, "invalid_source_field"),
            ("/v1/mappings/corrections", {"source_field": "a", "target_field": 1}, "invalid_target_field"),
            ("/v1/mappings/corrections", {"source_field": "a", "target_field": "b", "proposed_target": 1},
             "invalid_proposed_target"),
            ("/v1/mappings/corrections", {"source_field": "a", "target_field": "b", "source_type": 1}, "invalid_source_type"),
        ]
        for path, body, code in cases:
            assert_error(await client.post(path, headers=auth, json=body), 422, code)
        assert_error(await client.post("/v1/learning/corrections", headers=auth, content=b"{x"), 400, "malformed_json")
        await refused(rt.learning.correct("x" * (1024 * 1024), 1, {"a": 1}), 413, "payload_too_large")
        await refused(reader.learning.correct(1, 2, {"a": 1}), 403, "forbidden")
        assert (await rt.learning.stats())["patterns"] == 0


async def test_mapping_applies_what_the_tenant_taught(live, tenant):
    auth = live.auth(tenant)
    async with live.client(tenant) as rt, live.client(f"t-{uuid.uuid4().hex[:12]}") as stranger, \
            httpx.AsyncClient(base_url=live.url) as client:
        first = await rt.mappings.map(SOURCE, TARGET)
        proposed = {m["source_field"]: m["target_field"] for m in first["mappings"]}
        assert proposed["cust_nm"] == "customer_name" and proposed["eml"] == "email_address"
        assert proposed.get("xref_code") != "legacy_reference" and first["recommendations_applied"] == 0
        taught = await client.post("/v1/mappings/corrections", headers=auth, json={
            "source_field": "xref_code", "target_field": "legacy_reference",
            "proposed_target": proposed.get("xref_code"), "source_type": "varchar"})
        assert taught.status_code == 201
        second = await rt.mappings.map(SOURCE, TARGET)
        learned = {m["source_field"]: m for m in second["mappings"]}
        assert learned["xref_code"]["target_field"] == "legacy_reference"
        assert learned["xref_code"]["method"] == "learned" and second["recommendations_applied"] >= 1
        # The synonym learned from it carries to another schema: "xref" now means "legacy reference".
        other = await rt.mappings.map([{"name": "order_xref", "type": "varchar"}],
                                      {"order_legacy_reference": "text", "order_region": "text"})
        assert other["mappings"][0]["target_field"] == "order_legacy_reference"
        assert other["mappings"][0]["method"] == "learned_synonyms"
        # "No counterpart" is taught with a null target: the field stays unmapped from then on.
        none = await client.post("/v1/mappings/corrections", headers=auth, json={
            "source_field": "eml", "target_field": None, "proposed_target": "email_address"})
        assert none.status_code == 201 and none.json()["type"] == "correction"
        third = await rt.mappings.map(SOURCE, TARGET)
        assert "eml" not in {m["source_field"] for m in third["mappings"]} and third["no_counterpart"] == ["eml"]
        assert_error(await client.post("/v1/mappings/corrections", headers=auth, json={"source_field": "eml"}),
                     422, "invalid_target_field")
        # Another tenant's mappings are untouched by this tenant's teaching.
        assert await stranger.mappings.map(SOURCE, TARGET) == first


async def test_learning_shard_restart_rebuilds_from_storage(live, tenant):
    async with live.client(tenant) as rt:
        pattern = await rt.learning.correct({"v": 1}, {"v": 2}, CONTEXT)
        learning = live.runtime.learning
        handle = ray.get_actor(shard_name(learning.kind, learning.shard_of(tenant)), namespace=NAMESPACE)
        ray.kill(handle, no_restart=False)
        for _ in range(100):
            try:
                found = await rt.learning.recommend(CONTEXT)
                break
            except RaytenantError as error:
                assert error.code == "learning_unavailable", error
        else:
            raise AssertionError("the learning shard did not answer again")
        [rec] = found["recommendations"]
        assert rec["pattern_id"] == pattern["pattern_id"]
