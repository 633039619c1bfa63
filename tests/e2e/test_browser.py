"""A real browser on the Dagster UI: Debian's Chromium, driven by Playwright, opens the asset
graph of the running `dagster dev`, finds the sync's assets and saves a screenshot."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlparse

import pytest

from .conftest import REPO_ROOT, DagsterDev

CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOT = REPO_ROOT / "test-artifacts" / "asset-graph.png"
GRAPH_PATH = "/locations/dynsync/asset-groups/dynsync"  # the dynsync group's lineage graph
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
UI_TIMEOUT_MS = 60_000
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",  # CI runs as root, where Chromium's sandbox cannot start
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    # Nothing but loopback: no update checks, field trials, component or sync traffic.
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def debian_chromium() -> Path:
    """Debian's Chromium, or a failure (CI) / skip (elsewhere) that says how to install it."""
    if CHROMIUM.exists():
        return CHROMIUM
    message = f"{CHROMIUM} is missing: run `bash scripts/install-browser.sh` (Debian's chromium)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)  # CI must run the browser test, never skip it quietly
    pytest.skip(message)


def test_asset_graph_in_chromium(request: pytest.FixtureRequest) -> None:
    chromium = debian_chromium()
    # Started only once the browser is known to be there: a missing browser fails in 0 s.
    dagster_dev: DagsterDev = request.getfixturevalue("dagster_dev")
    from playwright.sync_api import Route, expect, sync_playwright
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    blocked: list[str] = []

    def loopback_only(route: Route) -> None:
        url = route.request.url
        if url.startswith(("data:", "blob:")) or urlparse(url).hostname in LOOPBACK:
            route.continue_()
        else:
            blocked.append(url)
            route.abort()

    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        # executable_path: Playwright drives the system browser and never downloads its own.
        browser = pw.chromium.launch(
            executable_path=str(chromium), headless=True, args=CHROMIUM_ARGS
        )
        try:
            context = browser.new_context(viewport={"width": 1600, "height": 1000})
            context.route("**/*", loopback_only)
            page = context.new_page()
            page.set_default_timeout(UI_TIMEOUT_MS)
            page.goto(f"{dagster_dev.url}{GRAPH_PATH}", wait_until="domcontentloaded")

            # The first visit may open a "Join the Dagster community" dialog over the graph.
            skip = page.get_by_role("button", name="Skip")
            try:
                skip.wait_for(state="visible", timeout=5_000)
                skip.click()
            except PlaywrightTimeout:
                pass  # no dialog this time

            for asset in ("accounts", "contacts", "activity_log", "sync_fields", "sync_runs"):
                expect(page.get_by_text(asset, exact=True).first).to_be_visible()
            # The two Dynamics sources are drawn as the graph's inputs.
            for source in ("account", "contact"):
                expect(page.get_by_text(source, exact=True).first).to_be_visible()
            # Not "networkidle": the UI polls live data every 2 s. Let the edges finish drawing.
            page.wait_for_timeout(1_500)
            page.screenshot(path=str(SCREENSHOT), full_page=False)
        finally:
            browser.close()

    assert SCREENSHOT.stat().st_size > 10_000, "the screenshot is suspiciously small"
    assert not blocked, f"the UI tried to leave loopback: {blocked}"
