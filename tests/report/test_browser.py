"""The report page in headless Chromium: no console errors, every image loads, a screenshot is written."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from dermadv.report import build_report
from dermadv.report.screenshot import CHROMIUM_ARGS as BROWSER_ARGS

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = BROWSER_ARGS  # one list of flags for this closed-network sandbox

pytestmark = [
    pytest.mark.browser,
    pytest.mark.timeout(120),
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} not found: apt-get install chromium"),
    pytest.mark.skipif(
        importlib.util.find_spec("playwright") is None, reason="python package playwright not installed"
    ),
]


def test_report_renders_in_chromium(run_dir: Path, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    page_path = build_report(run_dir)
    problems: list[str] = []
    shot = tmp_path / "report.png"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.on("console", lambda m: problems.append(m.text) if m.type in ("error", "warning") else None)
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url}"))
            page.goto(page_path.as_uri(), wait_until="load")
            broken = page.evaluate(
                "[...document.images].filter(i => !i.complete || i.naturalWidth === 0).map(i => i.src)"
            )
            headings = page.locator("h2").all_inner_texts()
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    assert not problems, problems
    assert not broken, f"images that did not load: {broken}"
    assert headings[0] == "1. Summary" and headings[-1].endswith("Reproducibility")
    assert shot.stat().st_size > 50_000
