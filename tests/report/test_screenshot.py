"""``dermadv report --screenshot``: a PNG of the rendered page, through the system Chromium."""

from __future__ import annotations

from pathlib import Path

import pytest

from dermadv.report.build import build_report
from dermadv.report.screenshot import find_chromium, screenshot

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(find_chromium() is None, reason="no chromium on PATH: apt-get install chromium"),
]


def test_screenshot_is_a_tall_png_without_console_errors(run_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("playwright", reason="playwright (python) is not installed")
    page = build_report(run_dir)
    out = tmp_path / "shot.png"
    errors = screenshot(page, out, width=1000)
    assert errors == []
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width = int.from_bytes(data[16:20], "big")
    height = int.from_bytes(data[20:24], "big")
    assert width >= 1000 and height > 2000  # the whole page (wide tables may widen it), not just the first screen
