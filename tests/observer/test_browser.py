"""End to end in headless Chromium: two observers complete a 5-image study (mouse, keyboard); the page fits the window."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from dermadv.observer.analysis import analysis_tables, analyze_study
from dermadv.observer.storage import StudyDB
from dermadv.observer.study import create_study, invite_observer
from dermadv.report.screenshot import CHROMIUM_ARGS as BROWSER_ARGS

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = BROWSER_ARGS  # one list of flags for this closed-network sandbox
SCREENSHOT_COPY = Path("/tmp/observer_rating.png")

pytestmark = [
    pytest.mark.browser,
    pytest.mark.timeout(120),
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} not found: apt-get install chromium"),
    pytest.mark.skipif(
        importlib.util.find_spec("playwright") is None, reason="python package playwright not installed"
    ),
]


def test_observers_complete_a_study_in_chromium(fake_attack_dir, live_server, tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    attack = fake_attack_dir(tmp_path / "adv", n_images=8, size=(96, 128), seed=5)
    study = create_study(attack, tmp_path / "study", n=5, perturbed_share=0.6, seed=1)
    mouse = invite_observer(study.path, "Observer A (mouse)")
    keyboard = invite_observer(study.path, "Observer B (keyboard)")
    problems: list[str] = []

    with live_server(_app(study.path)) as url, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 1000})
            page.on("console", lambda m: _note_error(m, problems))
            page.on("pageerror", lambda e: problems.append(str(e)))

            # Observer A: mouse only.
            page.goto(mouse.link("127.0.0.1", int(url.rsplit(":", 1)[1])))
            expect(page.get_by_text("0 of 5 answered")).to_be_visible()
            page.get_by_role("link", name="Start").click()
            for i in range(5):
                expect(page.get_by_text(f"Image {i + 1} of 5")).to_be_visible()
                page.get_by_label("Yes, altered" if i % 2 == 0 else "No, not altered").check()
                page.get_by_label(f"{1 + i} –").check()
                page.locator("#diagnosis").select_option("mel" if i < 3 else "nv")
                if i == 0:
                    page.locator("#zoom-in").click()
                    expect(page.locator("#zoom-level")).not_to_have_text("×1")
                    shot = tmp_path / "observer_rating.png"
                    page.screenshot(path=str(shot), full_page=True)
                    shutil.copyfile(shot, SCREENSHOT_COPY)
                page.get_by_role("button", name="Send answer").click()
            expect(page.get_by_role("heading", name="Thank you")).to_be_visible()

            # Observer B: keyboard only, with a resume in the middle (a fresh page on the same link).
            link = keyboard.link("127.0.0.1", int(url.rsplit(":", 1)[1]))
            page.goto(link)
            expect(page.get_by_role("link", name="Start")).to_be_focused()
            page.keyboard.press("Enter")
            for i in range(5):
                expect(page.get_by_text(f"Image {i + 1} of 5")).to_be_visible()
                if i == 2:
                    page.goto(link)
                    expect(page.get_by_text("2 of 5 answered")).to_be_visible()
                    expect(page.get_by_role("link", name="Continue")).to_be_focused()
                    page.keyboard.press("Enter")
                    expect(page.get_by_text(f"Image {i + 1} of 5")).to_be_visible()
                width = page.locator("#img-main").evaluate("im => im.getBoundingClientRect().width")
                page.keyboard.press("+")
                assert page.locator("#img-main").evaluate("im => im.getBoundingClientRect().width") > width
                page.keyboard.press("Enter")  # incomplete: the browser's own validation keeps us here
                expect(page.get_by_text(f"Image {i + 1} of 5")).to_be_visible()
                page.keyboard.press("y" if i < 3 else "n")
                page.keyboard.press(str(5 - i))
                page.keyboard.press("Enter")
            expect(page.get_by_role("heading", name="Thank you")).to_be_visible()
        finally:
            browser.close()

    assert not problems, problems  # no script errors, no CSP violations
    answers = StudyDB(study.db_path).answers()
    by_observer = {name: [a for a in answers if a.observer == name] for name in (mouse.name, keyboard.name)}
    assert [a.answer for a in by_observer[mouse.name]] == ["yes", "no", "yes", "no", "yes"]
    assert [a.confidence for a in by_observer[mouse.name]] == [1, 2, 3, 4, 5]
    assert [a.diagnosis for a in by_observer[mouse.name]] == ["mel", "mel", "mel", "nv", "nv"]
    assert [a.answer for a in by_observer[keyboard.name]] == ["yes", "yes", "yes", "no", "no"]
    assert [a.confidence for a in by_observer[keyboard.name]] == [5, 4, 3, 2, 1]
    assert all(a.diagnosis is None for a in by_observer[keyboard.name])

    analysis = analyze_study(study.path)
    assert [r.n_ratings for r in analysis.observers] == [5, 5] and analysis.combined.n_ratings == 10
    assert analysis.agreement is not None and analysis.agreement.n_items == 5

    from rich.console import Console

    console = Console(record=True, width=160)
    for table in analysis_tables(analysis):
        console.print(table)
    (tmp_path / "analysis.txt").write_text(console.export_text())


def _note_error(message, problems: list[str]) -> None:
    # The browser asks for /favicon.ico on its own; nothing without a token is served, so that 404 is expected.
    if message.type == "error" and not message.location.get("url", "").endswith("/favicon.ico"):
        problems.append(f"{message.text} at {message.location}")


def _app(study_dir: Path):
    from dermadv.observer.app import create_app

    return create_app(study_dir)


@pytest.mark.parametrize(
    "design, width, height",
    [("single", 1366, 768), ("2afc", 1366, 768), ("2afc", 390, 844), ("single", 390, 844)],
    ids=["single-laptop", "2afc-laptop", "2afc-phone", "single-phone"],
)
def test_rating_page_fits_the_window(fake_attack_dir, live_server, tmp_path: Path, design, width, height) -> None:
    """Whole images, the confidence row and the Send button all in view at first sight; a hint when zoomed out of view."""
    from playwright.sync_api import expect, sync_playwright

    attack = fake_attack_dir(tmp_path / "adv", n_images=3, size=(450, 600), seed=2)  # HAM10000's stored size
    study = create_study(attack, tmp_path / "study", n=2, design=design, seed=1)
    link = invite_observer(study.path, "Observer A").link("127.0.0.1", 0)
    problems: list[str] = []
    with live_server(_app(study.path)) as url, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.goto(url + urlsplit(link).path + "/rate")
            page.wait_for_function("Array.from(document.images).every((im) => im.complete && im.naturalWidth)")
            expect(page.locator("#zoom-level")).not_to_have_text("×1")  # 600 px wide does not fit at ×1
            boxes = {
                "send": page.locator("#send").bounding_box(),
                "confidence": page.locator('input[name="confidence"][value="5"]').bounding_box(),
                **{
                    im: page.locator(f"#{im}").bounding_box()
                    for im in page.locator("#viewer img").evaluate_all("a => a.map(i => i.id)")
                },
            }
            for name, box in boxes.items():
                assert box is not None, name
                assert box["x"] >= 0 and box["y"] >= 0, (name, box)
                assert box["x"] + box["width"] <= width and box["y"] + box["height"] <= height, (name, box)
            assert len(boxes) == (3 if design == "single" else 4)
            expect(page.locator("#scroll-hint")).to_be_hidden()
            page.keyboard.press("0")  # actual pixels: 600 px per image do not fit
            expect(page.locator("#zoom-level")).to_have_text("×1")
            expect(page.locator("#scroll-hint")).to_be_visible()
        finally:
            browser.close()
    assert not problems, problems
