"""``dermadv reproduce``: the whole study (:mod:`dermadv.pipeline.reproduce`), then its paper table."""

from __future__ import annotations

import logging
from pathlib import Path

import typer

from dermadv.cli.data import AllowIncompleteOpt
from dermadv.config import config_options
from dermadv.paper import CITATION

log = logging.getLogger(__name__)


def reproduce(
    out: Path = typer.Option(Path("runs/repro"), "--out", help="Run folder."),
    data: str | None = typer.Option(None, "--data", help="HAM10000 folder etc.; default: built-in synthetic set."),
    preset: str = typer.Option(
        "demo", help="demo (synthetic, minutes), cpu (real data, 2 cores), cpu-64 (from-scratch baseline), paper (GPU)."
    ),
    checkpoint: Path | None = typer.Option(
        None, "--model", "--checkpoint", help="Reuse a trained dermadv classifier (skips training)."
    ),
    fit_on: str | None = typer.Option(
        None, "--fit-on", help="test (the paper's protocol; default, except cpu-64) or train (judged on unseen images)."
    ),
    eps: str | None = typer.Option(None, help="L∞ budget of the generator; default from the preset."),
    target: str = typer.Option("nv", help="Target class."),
    sweep: bool = typer.Option(
        False, "--sweep/--no-sweep", help="Also run robustness curves (eps × attack × protocol)."
    ),
    sweep_limit: int = typer.Option(350, "--sweep-limit", help="Class-stratified test sample per sweep run."),
    sweep_eps: str | None = typer.Option(None, "--sweep-eps", help="Budgets of the sweep, e.g. 1/255,2/255."),
    sweep_fit_images: int = typer.Option(1500, "--sweep-fit-images", help="Train images each sweep generator fits on."),
    sweep_only: bool = typer.Option(
        False, "--sweep-only/--no-sweep-only", help="Only the sweep (a second process can share --out)."
    ),
    report: bool = typer.Option(True, "--report/--no-report"),
    seed: int = typer.Option(0),
    allow_incomplete: bool = AllowIncompleteOpt,
) -> None:
    """Run the whole study (split → classifier → generator → attack → evaluation → kit → report)."""
    options = dict(locals())  # by name, before any other name is bound
    from rich.console import Console
    from rich.table import Table

    from dermadv import distributed as dd
    from dermadv.pipeline.reproduce import ReproduceConfig
    from dermadv.pipeline.reproduce import reproduce as run_study
    from dermadv.report.summary import Table as PaperTable
    from dermadv.runs import read_json

    if data is None and preset != "demo":
        log.info("no --data: using the built-in synthetic set")
    cfg = ReproduceConfig(**config_options(ReproduceConfig, options, sweep=sweep or sweep_only))
    run_study(cfg)
    if not dd.is_main() or sweep_only:
        return
    paper_table = PaperTable.from_records(read_json(out / "paper_table.json"), ("measure", "paper", "this_run"))
    table = Table(*paper_table.header, title=f"{CITATION} vs this run")
    for row in paper_table.rows:
        table.add_row(*(c.text for c in row.cells))
    Console().print(table)
    if report:
        typer.echo(f"report: {out / 'report' / 'index.html'}")
