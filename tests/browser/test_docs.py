"""The interactive docs in a real browser: headless Chromium (Debian's `chromium`) driven by Playwright, with
no network but the app itself: Swagger UI's assets are served under /docs/static, not from a CDN."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.instances import Instance

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"
SESSIONS = "/api/v1/sessions"


def chromium_path() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None and Path("/usr/bin/chromium").exists():
        found = "/usr/bin/chromium"
    if found is None:
        message = "chromium is not installed (apt-get install chromium); .ci/run installs it"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return found


async def test_docs_render_and_try_it_out_works(shared_instance: Instance, api_key: str) -> None:
    executable = chromium_path()
    from playwright.async_api import async_playwright

    base = shared_instance.base_url
    outside: list[str] = []
    ARTIFACTS.mkdir(exist_ok=True)
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=executable, headless=True, args=["--no-sandbox", "--disable-gpu"]
        )
        try:
            page = await browser.new_page(viewport={"width": 1400, "height": 1800})
            page.on("request", lambda r: None if r.url.startswith((base, "data:")) else outside.append(r.url))
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))

            response = await page.goto(f"{base}/docs", wait_until="networkidle")
            assert response is not None
            assert response.status == 200
            await page.wait_for_selector(".opblock", timeout=20_000)
            sessions_get = page.locator(f".opblock-get:has(.opblock-summary-path[data-path='{SESSIONS}'])")
            await sessions_get.first.wait_for(timeout=10_000)
            assert await page.locator(".opblock").count() >= 10
            # The OpenAI-compatible /v1 routes have their own section.
            await page.locator(".opblock-tag[data-tag='OpenAI-compatible']").wait_for(timeout=10_000)
            assert (
                await page.locator(".opblock-post:has(.opblock-summary-path[data-path='/v1/chat/completions'])").count()
                == 1
            )
            assert "Agent API" in await page.title()
            await page.screenshot(path=str(ARTIFACTS / "docs.png"), full_page=True)

            # Authorize with the API key, then Try it out / Execute on GET /api/v1/sessions.
            await page.click("button.authorize")
            modal = page.locator(".modal-ux")
            await modal.wait_for()
            key_input = modal.locator(".auth-container").filter(has_text="ApiKey").locator("input").first
            await key_input.fill(api_key)
            await modal.locator(".auth-container").filter(has_text="ApiKey").locator("button.authorize").click()
            await modal.locator("button.btn-done").first.click()

            await sessions_get.first.locator(".opblock-summary").first.click()
            await sessions_get.first.locator("button.try-out__btn").click()
            async with page.expect_response(
                lambda r: r.url.split("?")[0] == f"{base}{SESSIONS}" and r.request.method == "GET"
            ) as info:
                await sessions_get.first.locator("button.execute").click()
            executed = await info.value
            assert executed.status == 200
            assert (await executed.request.all_headers()).get("x-api-key") == api_key
            body = await executed.json()
            assert {"items", "total", "limit", "offset"} <= body.keys()
            await sessions_get.first.locator(".live-responses-table").wait_for()
            await page.screenshot(path=str(ARTIFACTS / "docs-try-it-out.png"), full_page=True)

            # And straight from the page's context.
            status = await page.evaluate(
                "async ([url, key]) => (await fetch(url, {headers: {'X-API-Key': key}})).status",
                [f"{base}{SESSIONS}", api_key],
            )
            assert status == 200
            assert errors == []
        finally:
            await browser.close()
    assert outside == [], f"the docs page loaded from outside the app: {outside}"
