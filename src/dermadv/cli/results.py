"""``dermadv results RUN... --out FILE.md``: wiring to :func:`dermadv.report.results.write_results`."""

from __future__ import annotations

import shlex
from pathlib import Path

import typer

from dermadv.cli.data import AllowIncompleteOpt


def results(
    runs: list[Path] = typer.Argument(
        ..., metavar="RUN...", help="Run folders any dermadv command wrote (train, evaluate, attack run, audit, …)."
    ),
    out: Path = typer.Option(..., "--out", help="The Markdown file to write, e.g. docs/results.md."),
    allow_incomplete: bool = AllowIncompleteOpt,
) -> None:
    """Write a results page: per run folder its headline figures and provenance (command, commit, data, machine)."""
    from dermadv.report.results import write_results

    generated_by = shlex.join(["dermadv", "results", *map(str, runs), "--out", str(out)])
    if allow_incomplete:
        generated_by += " --allow-incomplete"
    page = write_results(runs, out, generated_by=generated_by, allow_incomplete=allow_incomplete)
    typer.echo(f"results: {page} ({len(runs)} run folders)")
