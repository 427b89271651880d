"""The HTTP contract: one way to validate a body (serve_app/schemas/, parse_body), the OpenAPI 3.1
document generated from the routes' declarations, /docs served from shipped files, and
schemathesis against a live service on PostgreSQL (no 500s; every answer conforms)."""
from __future__ import annotations

import asyncio
import inspect
import json
import os
import re
import sys
import uuid
from pathlib import Path
from typing import Annotated, Any

import httpx
import pytest
from pydantic import Field, model_validator
from starlette.routing import Route

from serve_app.app import AREAS
from serve_app.contract import openapi
from serve_app.runtime import Runtime
from serve_app.schemas import costs, events, flows
from serve_app.schemas.base import Body, BodyError, Code, one_or_many, refusal, validate
from tests.conftest import LiveServer, settings_for
from tests.http_support import CHROMIUM, LATENCY, MODEL, providers_json

ROOT = Path(__file__).resolve().parent.parent
ROUTES = [route for area in AREAS for route in area.ROUTES]


def refused(annotation: Any, payload: Any) -> str:
    with pytest.raises(BodyError) as error:
        validate(annotation, payload)
    assert error.value.message
    return error.value.code


class Inner(Body):
    body_code = "invalid_inner"
    size: Annotated[int, Field(ge=0), Code("invalid_size")]


class Outer(Body):
    name: Annotated[str, Field(min_length=1), Code("invalid_name")]
    inner: Inner | None = None
    raised_codes = ("too_big",)

    @model_validator(mode="after")
    def _small(self) -> "Outer":
        if self.inner is not None and self.inner.size > 10:
            raise refusal("too_big", "inner.size over 10")
        return self


def test_a_refused_body_answers_with_the_code_of_the_deepest_field_that_names_one():
    assert refused(Outer, {"name": ""}) == "invalid_name"
    assert refused(Outer, {"name": "a", "inner": {"size": -1}}) == "invalid_size"
    assert refused(Outer, {"name": "a", "inner": {"size": True}}) == "invalid_size"  # strict: no bool for int
    assert refused(Outer, {"name": "a", "inner": {"size": 1.0}}) == "invalid_size"  # nor float
    assert refused(Outer, {"name": "a", "inner": 5}) == "invalid_inner"  # the nested model's own code
    assert refused(Outer, {"name": "a", "inner": {"size": 11}}) == "too_big"  # a cross-field check's code
    assert refused(Outer, {"name": "a", "extra": 1}) == "unknown_field"
    assert refused(Outer, [1]) == "invalid_body"
    assert validate(Outer, {"name": "a", "inner": {"size": 3}}).inner.size == 3


def test_one_or_many_takes_each_form_and_locates_the_bad_item():
    many = one_or_many(Inner, "items", most=2, code="invalid_items", bare_list=True)
    assert [i.size for i in validate(many, {"items": [{"size": 1}, {"size": 2}]}).items] == [1, 2]
    assert validate(many, {"size": 1}).size == 1
    assert [i.size for i in validate(many, [{"size": 1}])] == [1]
    assert refused(many, {"items": []}) == "invalid_items"
    assert refused(many, {"items": [{"size": 1}] * 3}) == "invalid_items"
    assert refused(many, {"items": [{"size": 1}, {"size": -1}]}) == "invalid_size"
    with pytest.raises(BodyError) as error:
        validate(many, {"items": [{"size": 1}, {"size": -1}]})
    assert error.value.message.startswith("items[1].size:")


def test_the_routes_bodies_keep_their_documented_codes():
    usage = {"model": MODEL, "input_tokens": 1, "output_tokens": 1}
    assert refused(costs.UsageBody, {**usage, "cached_tokens": 2}) == "invalid_tokens"
    assert refused(costs.UsageBody, {"records": [usage, {**usage, "agent": 7}]}) == "invalid_field"
    assert refused(costs.ReservationBody, {"model": MODEL, "estimated_input_tokens": 1,
                                           "estimated_output_tokens": -1}) == "invalid_tokens"
    assert refused(events.EventsBody, [{"type": "nope"}]) == "invalid_event_type"
    assert refused(events.EventsBody, {"events": [{"type": "flow_update", "flow_id": ""}]}) == "invalid_flow_id"
    assert refused(flows.FlowBody, {"name": "n", "data": [{"a": 1}], "source_schema": 5}) == "invalid_schema"
    assert refused(flows.CorrectionsBody, {"phase": "field_mapping", "item": "a", "corrected": {"x": 1}}) \
        == "invalid_correction"


def document() -> dict[str, Any]:
    return openapi(ROUTES, title="raytenant", version="test")


def test_every_route_is_in_the_contract_with_its_scope_and_answers():
    doc = document()
    assert doc["openapi"] == "3.1.0"
    served = {(re.sub(r"\{(\w+):path\}", r"{\1}", r.path), m.lower()) for r in ROUTES if isinstance(r, Route)
              for m in (r.methods or ()) if m != "HEAD"}
    unlisted = {("/", "get"), ("/openapi.json", "get"), ("/docs", "get"), ("/docs/init.js", "get")}
    listed = {(path, method) for path, ops in doc["paths"].items() for method in ops}
    assert served - unlisted == listed
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            if path.startswith("/v1/admin"):
                assert op["security"] == [{"operatorToken": []}], (path, method)
            elif op["security"]:
                assert op["x-scope"].split(":")[0] in {"events", "costs", "llm", "learning", "agents", "flows"}
            assert any(code.startswith("2") for code in op["responses"]), (path, method)


def test_each_route_declares_the_body_and_query_it_parses():
    """No drift between what a route reads and what the contract says it takes."""
    for route in ROUTES:
        operation = getattr(getattr(route, "endpoint", None), "operation", None)
        if operation is None:
            continue
        source = inspect.getsource(route.endpoint)
        assert ("parse_body(" in source) == (operation.body is not None), route.path
        assert ("parse_query(" in source) == (operation.query is not None), route.path


def test_every_code_a_route_raises_is_in_the_contract():
    """The codes the routes raise by hand must be declared too (the models' codes are by construction)."""
    text = json.dumps(document())
    listed = set(re.findall(r"`([a-z_]+)`", text))
    raised = set()
    for source in (ROOT / "serve_app" / "routes").glob("*.py"):
        raised |= set(re.findall(r'ApiError\(\d+, "([a-z_]+)"', source.read_text()))
    raised -= {"operator_token_required"} - listed  # listed through `operator=True`
    assert raised <= listed, sorted(raised - listed)


@pytest.mark.asyncio
async def test_the_service_serves_its_contract_and_docs_from_shipped_files(pg_live, tmp_path):
    live = pg_live
    async with httpx.AsyncClient(base_url=live.url) as client:
        doc = (await client.get("/openapi.json")).json()
        assert doc["openapi"] == "3.1.0" and "/v1/costs/usage" in doc["paths"]
        page = await client.get("/docs")
        assert page.status_code == 200 and "/docs/static/swagger-ui-bundle.js" in page.text
        script = await client.get("/docs/static/swagger-ui-bundle.js")
        assert script.status_code == 200 and len(script.content) > 100_000
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        if CHROMIUM is None:
            pytest.skip("Chromium is not installed (.ci/run installs Debian's chromium package where it can)")
        browser = await p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                          args=["--no-sandbox", "--disable-dev-shm-usage"])
        try:
            page = await browser.new_page()
            outside: list[str] = []
            page.on("request", lambda r: outside.append(r.url) if not r.url.startswith(live.url) else None)
            await page.goto(f"{live.url}/docs")
            await page.wait_for_selector(".opblock", timeout=30_000)
            assert await page.locator(".opblock").count() == sum(len(ops) for ops in doc["paths"].values())
            await page.screenshot(path=str(tmp_path / "docs.png"))
            assert outside == []  # nothing fetched from elsewhere
        finally:
            await browser.close()


# A request to an agent that nobody answers ends, as documented, in 504 request_timeout; any other
# 5xx is a failure.
CONFIG = """
[[operations]]
include-path = "/v1/agents/{agent}/requests"
checks.not_a_server_error.expected-statuses = ["2XX", "3XX", "4XX", "504"]
"""


async def _schemathesis(url: str, token: str, paths: str, seconds: int, report: Path) -> tuple[int, str]:
    report.mkdir(parents=True)
    (report / "schemathesis.toml").write_text(CONFIG)
    command = [str(Path(sys.executable).parent / "schemathesis"), "--config-file", str(report / "schemathesis.toml"),
               "run", f"{url}/openapi.json",
               "--checks", "not_a_server_error,status_code_conformance,content_type_conformance,"
                           "response_schema_conformance",
               "--include-path-regex", paths, "-H", f"Authorization: Bearer {token}",
               "--workers", "1", "--max-examples", "10", "--max-time", str(seconds), "--request-timeout", "40",
               "--seed", "7", "--no-color", "--report", "junit", "--report-dir", str(report)]
    process = await asyncio.create_subprocess_exec(*command, stdout=asyncio.subprocess.PIPE,
                                                   stderr=asyncio.subprocess.STDOUT, cwd=str(report),  # its cache too
                                                   env={**os.environ, "SCHEMATHESIS_HOOKS": "tests.schemathesis_hooks",
                                                        "PYTHONPATH": str(ROOT)})
    out, _ = await asyncio.wait_for(process.communicate(), seconds + 240)
    text = out.decode(errors="replace")
    (report / "output.txt").write_text(text)
    start = text.find("FAILURES")
    return process.returncode or 0, text[start:start + 8000] if start >= 0 else text[-4000:]


@pytest.mark.asyncio
async def test_schemathesis_finds_no_500_and_no_answer_outside_the_contract(ray_session, pg_url, provider, tmp_path):
    """Every route, fuzzed on PostgreSQL: tenant routes with an all-scopes token, then the operator's."""
    # pg_flows' shards (same prefix and settings): a set of its own would hold more database
    # connections than the suite's PostgreSQL allows beside the others'
    settings = settings_for(pg_url, "postgresql", actor_prefix="test-postgresql-fl-", flow_limit=3,
                            llm_latency=LATENCY, llm_providers=providers_json(provider.base_url, timeout=2.0),
                            llm_tenant_models=json.dumps({"*": [MODEL]}))
    async with LiveServer(Runtime(settings)) as live, httpx.AsyncClient(base_url=live.url) as client:
        tenant = f"contract-{uuid.uuid4().hex[:8]}"
        operator = live.operator_auth()
        assert (await client.post("/v1/admin/tenants", headers=operator, json={"tenant": tenant})).status_code == 201
        # the flows the fuzzer starts stay few, and are parked at the end, so later tests get the runner
        limits = {"running_flows": 1, "queued_flows": 2}
        assert (await client.put(f"/v1/admin/tenants/{tenant}/limits", headers=operator, json=limits)).status_code == 200
        try:
            code, out = await _schemathesis(live.url, live.token(tenant, scopes=["*"]),
                                            r"^/(v1/(?!admin)|healthz|readyz)", 150, tmp_path / "tenant")
        finally:
            await client.post(f"/v1/admin/tenants/{tenant}/suspend", headers=operator)
        assert code == 0, out
        code, out = await _schemathesis(live.url, live.runtime.settings.operator_token, r"^/v1/admin", 60,
                                        tmp_path / "operator")
        assert code == 0, out
