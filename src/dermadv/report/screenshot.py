"""A PNG of the rendered report, through headless Chromium (Debian's package) driven by Playwright."""

from __future__ import annotations

import shutil
from pathlib import Path

from dermadv.errors import DermadvError

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def screenshot(page: Path, out: Path, *, width: int = 1200) -> list[str]:
    """Render ``page`` and save a full-page PNG to ``out``; return the browser console's error messages."""
    chromium = find_chromium()
    if chromium is None:
        raise DermadvError("no chromium found for --screenshot; install Debian's chromium (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        raise DermadvError("--screenshot needs the playwright package: pip install 'dermadv[dev]'") from None
    errors: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, headless=True)
        try:
            tab = browser.new_page(viewport={"width": width, "height": 900})
            tab.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
            tab.goto(Path(page).resolve().as_uri())
            tab.wait_for_load_state("load")
            tab.screenshot(path=str(out), full_page=True)
        finally:
            browser.close()
    return errors
