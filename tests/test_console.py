"""The web console in headless Chromium (Debian's package, driven by Playwright): start a flow,
watch it reach 100 %, see the spend rise, correct a mapping and see the recommendation change."""
from __future__ import annotations

import httpx
import pytest

from tests.http_support import CHROMIUM


pytestmark = pytest.mark.integration


async def test_console_page_and_sample_are_served(pg_flows):
    flows = pg_flows  # the page does not depend on the database
    async with httpx.AsyncClient(base_url=flows.url) as client:
        page = await client.get("/")
        script = await client.get("/console/console.js")
        sample = await client.get("/v1/samples/inventory")
        missing = await client.get("/console/nope.js")
    assert page.status_code == 200 and "<title>raytenant console</title>" in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert script.status_code == 200 and "subscribe_flow" in script.text
    assert sample.json()["data"]["inventory"][0]["application"] == "customer-portal"
    assert missing.status_code == 404


async def test_console_in_headless_chromium(pg_flows, tenant, tmp_path):
    flows = pg_flows  # one database is enough for the browser test
    if CHROMIUM is None:
        pytest.skip("Chromium is not installed (.ci/run installs Debian's chromium package where it can)")
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                                   args=["--no-sandbox", "--disable-dev-shm-usage"])
        # The page's CSP forbids eval; Playwright's string predicates need it, so the test context bypasses it.
        context = await browser.new_context(viewport={"width": 1280, "height": 1000}, bypass_csp=True)
        page = await context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        await page.goto(flows.url + "/")
        # A wrong token is refused with a message; the right one signs in and goes live.
        await page.get_by_label("Tenant token").fill("not-a-token")
        await page.get_by_role("button", name="Connect").click()
        await page.get_by_text("That token was not accepted.").wait_for()
        await page.get_by_label("Tenant token").fill(flows.token(tenant))
        await page.get_by_label("Tenant token").press("Enter")  # the form works from the keyboard
        await page.wait_for_function("document.getElementById('status').textContent.startsWith('Live')")
        spend_before = await page.locator("#spend-total").text_content()

        await page.get_by_role("button", name="Start discovery flow (sample inventory)").click()
        # The last phase's flow_update brings the bar to 100 % just before flow_completed: wait for both.
        await page.wait_for_function("document.querySelector('#flows progress')?.value === 100", timeout=90_000)
        await page.wait_for_function(
            "document.querySelector('#flows .flow-status')?.textContent.startsWith('completed')", timeout=30_000)
        feed = await page.locator("#feed").text_content()
        assert "started data_validation" in feed and "risk_assessment done" in feed
        await page.wait_for_function(f"document.getElementById('spend-total').textContent !== '{spend_before}'",
                                     timeout=30_000)
        assert float((await page.locator("#spend-total").text_content()).lstrip("$")) > float(spend_before.lstrip("$"))
        assert "gpt-4o-mini" in await page.locator("#chart-model svg").get_attribute("aria-label")
        assert await page.locator("#mailbox li").count() >= 3  # the agents' handoffs

        # Correct a mapping: the recommendation for that field changes to what was taught.
        row = page.locator("tr[data-source='storage_gb']")
        await row.wait_for()
        assert (await row.locator(".recommendation").text_content()) == "—"
        await page.get_by_label("Correct target for storage_gb").select_option("disk_gb")
        await page.get_by_role("button", name="Correct storage_gb").click()
        await page.wait_for_function(
            "document.querySelector(\"tr[data-source='storage_gb'] .recommendation\").textContent.startsWith('disk_gb')")
        assert "(yours)" in await row.locator(".proposed").text_content()
        await page.get_by_role("button", name="Accept application").click()
        await page.get_by_text("Learned: application → application_name").wait_for()
        await page.get_by_label("Correct target for cpu_utilization").select_option(label="no counterpart")
        await page.get_by_role("button", name="Correct cpu_utilization").click()
        await page.get_by_text("Learned: cpu_utilization has no counterpart").wait_for()
        assert await page.locator("tr[data-source='cpu_utilization'] .proposed").text_content() == "no counterpart"
        # Correct a risk level as a mapping: the row says the decision is yours now.
        await page.locator("tr[data-phase='risk_assessment'][data-item='hr-payroll']").wait_for()
        await page.get_by_label("Correct risk level of hr-payroll", exact=True).select_option("critical")
        await page.get_by_role("button", name="Correct risk level of hr-payroll: save", exact=True).click()
        await page.wait_for_function("document.querySelector(\"tr[data-phase='risk_assessment'][data-item='hr-payroll']"
                                     " .now\").textContent === 'critical (yours)'")
        await page.screenshot(path=str(tmp_path / "console.png"), full_page=True)

        # The socket drops: the console says so, reconnects and resumes.
        await page.evaluate("state.ws.close()")
        await page.wait_for_function("document.getElementById('status').textContent.startsWith('Disconnected')")
        await page.wait_for_function("document.getElementById('status').textContent.startsWith('Live')",
                                     timeout=20_000)

        # A reload keeps the session (no second sign-in) and rebuilds a flow's feed from the stream.
        await page.reload()
        await page.wait_for_function("document.getElementById('status').textContent.startsWith('Live')")
        assert await page.locator("#sign-in").is_hidden()
        assert await page.locator("#feed li").count() == 0
        await page.locator("#flows button").first.click()
        await page.wait_for_function("document.getElementById('feed').textContent.includes('risk_assessment done')")
        rebuilt = await page.locator("#feed").text_content()
        assert "started data_validation" in rebuilt and "mapping corrected" in rebuilt and "Flow completed" in rebuilt

        # Readable on a narrow screen: nothing wider than the viewport.
        await page.set_viewport_size({"width": 375, "height": 800})
        assert await page.evaluate("document.documentElement.scrollWidth") <= 376
        await page.screenshot(path=str(tmp_path / "console-narrow.png"), full_page=True)

        # An optimisation flow: correct a 6R strategy the same way.
        await page.get_by_role("button", name="Start optimisation flow (sample inventory)").click()
        strategy = "tr[data-phase='migration_strategy'][data-item='hr-payroll']"
        await page.locator(strategy).wait_for(timeout=90_000)
        await page.get_by_label("Correct 6R strategy of hr-payroll", exact=True).select_option("retire")
        await page.get_by_role("button", name="Correct 6R strategy of hr-payroll: save", exact=True).click()
        await page.wait_for_function(f"document.querySelector(\"{strategy} .now\").textContent === 'retire (yours)'")
        assert errors == []
        await browser.close()
    assert (tmp_path / "console.png").stat().st_size > 10_000
