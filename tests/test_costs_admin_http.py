"""Who may set what in the ledger, over HTTP against the real shards: tenant tokens minted without
scopes cannot touch budgets or prices, the operator's cap and negotiated prices bind every tenant
token, and a hostile settle cannot spend past its reservation."""
from __future__ import annotations

import httpx
import pytest

from actors.ledger.prices import NANOS, default_catalog
from storage.models import BudgetRow, UsageRow
from tests.http_support import assert_error, stored

pytestmark = pytest.mark.integration
MODEL = "gpt-4o-mini"


async def minted(client: httpx.AsyncClient, live, tenant: str, **body) -> dict[str, str]:
    response = await client.post("/v1/admin/tokens", json={"tenant": tenant, **body}, headers=live.operator_auth())
    assert response.status_code == 201, response.text
    return {"Authorization": f"Bearer {response.json()['token']}"}


async def test_default_tokens_cannot_set_budgets_or_prices(live, tenant, db_url):
    async with httpx.AsyncClient(base_url=live.url) as client:
        auth = await minted(client, live, tenant)
        assert_error(await client.put("/v1/costs/budget", headers=auth, json={"monthly_budget": 1e6}), 403, "forbidden")
        for method in ("PUT", "DELETE"):
            response = await client.request(method, f"/v1/costs/prices/{MODEL}", headers=auth,
                                            json={"input_per_token": 0, "output_per_token": 0})
            assert response.status_code in (404, 405)
        for path in (f"/v1/admin/tenants/{tenant}/budget", f"/v1/admin/tenants/{tenant}/prices/{MODEL}"):
            assert_error(await client.put(path, headers=auth, json={"monthly_cap": 1e6, "input_per_token": 0,
                                                                    "output_per_token": 0}), 401, "operator_token_required")
        admin = await minted(client, live, tenant, scopes=["*"])
        assert_error(await client.put(f"/v1/admin/tenants/{tenant}/budget", headers=admin, json={"monthly_cap": None}),
                     401, "operator_token_required")
        used = await client.post("/v1/costs/usage", headers=auth, json={"model": MODEL, "input_tokens": 1, "output_tokens": 1})
        assert used.status_code == 201  # the tenant's applications still work
    assert await stored(db_url, BudgetRow, tenant) != [] and len(await stored(db_url, UsageRow, tenant)) == 1


async def test_operator_cap_and_prices_bind_the_tenant(live, tenant):
    operator = live.operator_auth()
    budget_path = f"/v1/admin/tenants/{tenant}/budget"
    async with httpx.AsyncClient(base_url=live.url) as client:
        for body, code in (({}, "invalid_cap"), ({"monthly_cap": -1}, "invalid_cap"), ({"monthly_cap": "5"}, "invalid_cap"),
                           ({"monthly_cap": 1e12}, "invalid_cap"), ([], "invalid_body")):
            assert_error(await client.put(budget_path, headers=operator, json=body), 422, code)
        assert_error(await client.put("/v1/admin/tenants/bad%0A/budget", headers=operator, json={"monthly_cap": 1}),
                     422, "invalid_tenant")
        capped = await client.put(budget_path, headers=operator, json={"monthly_cap": 0.01})
        assert capped.status_code == 200 and capped.json()["limit"] == 0.01
        admin = await minted(client, live, tenant, scopes=["costs:admin", "costs:read", "costs:write"])
        assert_error(await client.put("/v1/costs/budget", headers=admin, json={"monthly_budget": 5}), 422, "budget_above_cap")
        assert (await client.put("/v1/costs/budget", headers=admin, json={"monthly_budget": 0.005})).json()["limit"] == 0.005
        view = (await client.get(budget_path, headers=operator)).json()
        assert (view["operator_cap"], view["monthly_budget"]) == (0.01, 0.005)
        # A negotiated price set by the operator is what the tenant is charged; the tenant cannot change it.
        price = await client.put(f"/v1/admin/tenants/{tenant}/prices/{MODEL}", headers=operator,
                                 json={"input_per_token": 1e-6, "output_per_token": 1e-6})
        assert price.status_code == 200 and price.json()["source"] == "override"
        used = await client.post("/v1/costs/usage", headers=admin, json={"model": MODEL, "input_tokens": 500, "output_tokens": 500})
        assert used.json()["cost"] == 0.001
        held = await client.post("/v1/costs/reservations", headers=admin,
                                 json={"model": MODEL, "input_tokens": 2000, "max_output_tokens": 2500})
        assert_error(held, 402, "budget_exceeded")  # 0.0045 more would pass the tenant's 0.005
        assert (await client.delete(f"/v1/admin/tenants/{tenant}/prices/{MODEL}", headers=operator)).status_code == 204
        assert_error(await client.delete(f"/v1/admin/tenants/{tenant}/prices/{MODEL}", headers=operator), 404,
                     "override_not_found")


async def test_hostile_settle_cannot_spend_past_the_reservation(live, tenant, db_url):
    auth = live.auth(tenant)
    async with httpx.AsyncClient(base_url=live.url) as client:
        await client.put(f"/v1/admin/tenants/{tenant}/budget", headers=live.operator_auth(), json={"monthly_cap": 1})
        held = (await client.post("/v1/costs/reservations", headers=auth,
                                  json={"model": MODEL, "input_tokens": 1, "max_output_tokens": 1})).json()
        assert held["max_output_tokens"] == 1
        path = f"/v1/costs/reservations/{held['reservation_id']}/settle"
        refused = await client.post(path, headers=auth, json={"input_tokens": 10**9, "output_tokens": 10**9})
        assert_error(refused, 422, "usage_exceeds_reservation")
        assert await stored(db_url, UsageRow, tenant) == []
        # Input beyond the estimate is the provider's count of a prompt: recorded, flagged, and the
        # month admits nothing more once it is over its limit.
        overrun = await client.post(path, headers=auth, json={"input_tokens": 10**7, "output_tokens": 1})
        assert overrun.status_code == 201 and overrun.json()["overrun"] > 0
        budget = (await client.get("/v1/costs/budget", headers=auth)).json()
        assert budget["over_limit"] is True and budget["overrun"] > 0
        again = await client.post("/v1/costs/reservations", headers=auth,
                                  json={"model": MODEL, "input_tokens": 0, "max_output_tokens": 0})
        assert_error(again, 402, "budget_exceeded")
        summary = (await client.get("/v1/costs/summary", headers=auth)).json()
        assert summary["overrun_records"] == 1
    [row] = await stored(db_url, UsageRow, tenant)
    expected = default_catalog().lookup(MODEL).cost_nanos(10**7, 1)
    assert row["cost_nanos"] == expected and row["overrun_nanos"] == expected - round(held["amount"] * NANOS)
