"""Who may set what in the ledger, over HTTP against the real shards: tenant tokens minted without
scopes cannot touch budgets or prices, the operator's cap and negotiated prices bind every tenant
token, and a hostile settle cannot spend past its reservation."""
from __future__ import annotations

import httpx
import pytest

from actors.ledger.prices import NANOS, default_catalog
from serve_app.client import AsyncClient
from storage.models import BudgetRow, UsageRow
from tests.http_support import assert_error, refused, stored

pytestmark = pytest.mark.integration
MODEL = "gpt-4o-mini"


async def minted(operator: AsyncClient, tenant: str, **claims) -> str:
    """A tenant token minted over HTTP by the operator."""
    return (await operator.tokens.mint(tenant, **claims))["token"]


async def test_default_tokens_cannot_set_budgets_or_prices(live, tenant, db_url):
    async with live.client() as operator, httpx.AsyncClient(base_url=live.url) as client:
        token = await minted(operator, tenant)
        auth = {"Authorization": f"Bearer {token}"}
        async with AsyncClient(live.url, token) as rt:
            await refused(rt.costs.set_budget(1e6), 403, "forbidden")
            for method in ("PUT", "DELETE"):
                response = await client.request(method, f"/v1/costs/prices/{MODEL}", headers=auth,
                                                json={"input_per_token": 0, "output_per_token": 0})
                assert response.status_code in (404, 405)
            for path in (f"/v1/admin/tenants/{tenant}/budget", f"/v1/admin/tenants/{tenant}/prices/{MODEL}"):
                assert_error(await client.put(path, headers=auth, json={"monthly_cap": 1e6, "input_per_token": 0,
                                                                        "output_per_token": 0}), 401,
                             "operator_token_required")
            admin = {"Authorization": f"Bearer {await minted(operator, tenant, scopes=['*'])}"}
            assert_error(await client.put(f"/v1/admin/tenants/{tenant}/budget", headers=admin,
                                          json={"monthly_cap": None}), 401, "operator_token_required")
            # the tenant's applications still work
            await rt.costs.record({"model": MODEL, "input_tokens": 1, "output_tokens": 1})
    assert await stored(db_url, BudgetRow, tenant) != [] and len(await stored(db_url, UsageRow, tenant)) == 1


async def test_operator_cap_and_prices_bind_the_tenant(live, tenant):
    budget_path = f"/v1/admin/tenants/{tenant}/budget"
    async with live.client() as operator, httpx.AsyncClient(base_url=live.url) as client:
        for body, code in (({}, "invalid_cap"), ({"monthly_cap": -1}, "invalid_cap"), ({"monthly_cap": "5"}, "invalid_cap"),
                           ({"monthly_cap": 1e12}, "invalid_cap"), ([], "invalid_body")):
            assert_error(await client.put(budget_path, headers=live.operator_auth(), json=body), 422, code)
        assert_error(await client.put("/v1/admin/tenants/bad%0A/budget", headers=live.operator_auth(),
                                      json={"monthly_cap": 1}), 422, "invalid_tenant")
        assert (await operator.admin.set_cap(tenant, 0.01))["limit"] == 0.01
        token = await minted(operator, tenant, scopes=["costs:admin", "costs:read", "costs:write"])
        async with AsyncClient(live.url, token) as admin:
            await refused(admin.costs.set_budget(5), 422, "budget_above_cap")
            assert (await admin.costs.set_budget(0.005))["limit"] == 0.005
            view = await operator.admin.month(tenant)
            assert (view["operator_cap"], view["monthly_budget"]) == (0.01, 0.005)
            # A negotiated price set by the operator is what the tenant is charged; the tenant cannot change it.
            price = await operator.admin.set_price(tenant, MODEL, 1e-6, 1e-6)
            assert price["source"] == "override"
            used = await admin.costs.record({"model": MODEL, "input_tokens": 500, "output_tokens": 500})
            assert used["cost"] == 0.001
            # 0.0045 more would pass the tenant's 0.005
            await refused(admin.costs.reserve(MODEL, 2000, 2500), 402, "budget_exceeded")
        assert await operator.admin.delete_price(tenant, MODEL) is None  # 204
        await refused(operator.admin.delete_price(tenant, MODEL), 404, "override_not_found")


async def test_hostile_settle_cannot_spend_past_the_reservation(live, tenant, db_url):
    async with live.client(tenant) as rt:
        await rt.admin.set_cap(tenant, 1)
        held = await rt.costs.reserve(MODEL, 1, 1)
        assert held["max_output_tokens"] == 1
        rid = held["reservation_id"]
        await refused(rt.costs.settle(rid, 10**9, 10**9), 422, "usage_exceeds_reservation")
        assert await stored(db_url, UsageRow, tenant) == []
        # Input beyond the estimate is the provider's count of a prompt: recorded, flagged, and the
        # month admits nothing more once it is over its limit.
        overrun = await rt.costs.settle(rid, 10**7, 1)
        assert overrun["overrun"] > 0
        budget = await rt.costs.budget()
        assert budget["over_limit"] is True and budget["overrun"] > 0
        await refused(rt.costs.reserve(MODEL, 0, 0), 402, "budget_exceeded")
        summary = await rt.costs.summary()
        assert summary["overrun_records"] == 1
    [row] = await stored(db_url, UsageRow, tenant)
    expected = default_catalog().lookup(MODEL).cost_nanos(10**7, 1)
    assert row["cost_nanos"] == expected and row["overrun_nanos"] == expected - round(held["amount"] * NANOS)
