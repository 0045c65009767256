"""``dermadv report RUN_DIR [--open]``: wiring to :func:`dermadv.report.build.build_report`."""

from __future__ import annotations

from pathlib import Path

import typer

from dermadv.cli.data import AllowIncompleteOpt


def report(
    run_dir: Path = typer.Argument(
        ..., metavar="RUN_DIR", help="Run folder: from `dermadv reproduce`, `attack run` or `train`."
    ),
    open_browser: bool = typer.Option(False, "--open/--no-open", help="Open the page in the default browser."),
    shot: bool = typer.Option(
        False,
        "--screenshot/--no-screenshot",
        help="Also save report/screenshot.png (headless Chromium, needs playwright).",
    ),
    allow_incomplete: bool = AllowIncompleteOpt,
) -> None:
    """Write RUN_DIR/report/: index.html, report.md, summary.json, figures/ (readable offline)."""
    from dermadv.report.build import build_report

    page = build_report(run_dir, open_browser=open_browser, allow_incomplete=allow_incomplete)
    typer.echo(f"report: {page}")
    if shot:
        from dermadv.report.screenshot import screenshot

        png = page.parent / "screenshot.png"
        errors = screenshot(page, png)
        typer.echo(f"screenshot: {png}" + (f" ({len(errors)} console errors: {errors[:3]})" if errors else ""))
