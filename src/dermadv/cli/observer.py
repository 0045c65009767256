"""``dermadv observer …``: create a study, invite observers, serve it, follow it, analyse and export it."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import typer

from dermadv.errors import DermadvError

app = typer.Typer(help="Observer study: can people see the perturbations?", no_args_is_help=True, rich_markup_mode=None)


@contextlib.contextmanager
def _errors() -> Iterator[None]:
    """Turn a DermadvError into a one-line message and exit code 1."""
    try:
        yield
    except DermadvError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from None


def _minute(timestamp: str) -> str:
    return timestamp[:16].replace("T", " ")


@app.command()
def create(
    attack_dir: Path = typer.Argument(..., help="Attack output folder (images/clean, images/adv, predictions.csv)."),
    out: Path = typer.Option(..., "--out", help="New study folder."),
    n: int = typer.Option(50, "--n", help="Number of items."),
    perturbed_share: float = typer.Option(0.6, help="Share of items shown perturbed (single design)."),
    seed: int = typer.Option(0, help="Seed of the sample and the plan."),
    design: Literal["single", "2afc"] = typer.Option("single", help="single: altered yes/no; 2afc: which of two."),
    allow_incomplete: bool = typer.Option(
        False,
        "--allow-incomplete/--no-allow-incomplete",
        help="Sample from the folder of an unfinished attack run (a warning says so) instead of refusing it.",
    ),
) -> None:
    """Sample images from an attack output folder into a new study folder."""
    from dermadv.observer.study import create_study

    with _errors():
        study = create_study(
            attack_dir,
            out,
            n=n,
            perturbed_share=perturbed_share,
            seed=seed,
            design=design,
            allow_incomplete=allow_incomplete,
        )
    typer.echo(f"study {study.study_id}: {study.n_items} items ({study.design}) in {out}")
    typer.echo(f"next: dermadv observer invite {out} --name 'Observer A'")


@app.command()
def invite(
    study_dir: Path = typer.Argument(..., help="Study folder."),
    name: str = typer.Option(..., "--name", help="Observer's name as it will appear in the analysis."),
    reissue: bool = typer.Option(
        False, "--reissue/--no-reissue", help="Give an invited observer a new link (the old one stops working)."
    ),
    host: str = typer.Option("127.0.0.1", help="Host to put in the printed link."),
    port: int = typer.Option(8000, help="Port to put in the printed link."),
) -> None:
    """Invite an observer; prints their personal link (shown once: the study keeps only a hash)."""
    from dermadv.observer.study import invite_observer

    with _errors():
        invitation = invite_observer(study_dir, name, reissue=reissue)
    typer.echo(invitation.link(host, port))


@app.command()
def serve(
    study_dir: Path = typer.Argument(..., help="Study folder."),
    host: str = typer.Option("127.0.0.1", help="Interface to bind; anything but loopback exposes the study."),
    port: int = typer.Option(8000, help="Port."),
    allowed_host: list[str] = typer.Option(
        [], "--allowed-host", help="Another host name the links use (repeatable); needed with --host 0.0.0.0."
    ),
) -> None:
    """Run the study's web app (uvicorn); it answers only requests for --host (and --allowed-host)."""
    from dermadv.observer.app import LOOPBACK, allowed_hosts, create_app
    from dermadv.observer.app import serve as serve_app

    with _errors():
        web_app = create_app(study_dir, hosts=allowed_hosts(host, allowed_host))
    if host not in LOOPBACK:
        typer.echo(f"warning: binding {host}: the study is reachable from other machines (plain HTTP)", err=True)
    serve_app(web_app, host=host, port=port)


@app.command()
def status(study_dir: Path = typer.Argument(..., help="Study folder.")) -> None:
    """Who has answered how many."""
    from rich.console import Console
    from rich.table import Table

    from dermadv.observer.storage import StudyDB
    from dermadv.observer.study import load_study

    with _errors():
        study = load_study(study_dir)
        observers = StudyDB(study.db_path).observers()
    table = Table(title=f"Study {study.study_id} ({study.design}, {study.n_items} items)")
    for column in ("observer", "answered", "invited (UTC)", "last answer (UTC)"):
        table.add_column(column)
    for o in observers:
        last = _minute(o.last_answer_at) if o.last_answer_at else "–"
        table.add_row(o.name, f"{o.answered}/{o.total}", _minute(o.invited_at), last)
    Console().print(table if observers else f"no observers yet; run `dermadv observer invite {study_dir} --name …`")


@app.command()
def analyze(
    study_dir: Path = typer.Argument(..., help="Study folder."),
    out: Path | None = typer.Option(None, help="Output folder [default: <study>/analysis]."),
    ci: Literal["wald", "wilson", "exact"] = typer.Option("wald", help="Confidence interval method."),
) -> None:
    """Sensitivity, specificity, accuracy, kappa (or 2AFC share correct): JSON, CSV and a table."""
    from rich.console import Console

    from dermadv.observer.analysis import analysis_tables, analyze_study, write_analysis

    with _errors():
        analysis = analyze_study(study_dir, ci_method=ci)
        folder = write_analysis(study_dir, out or study_dir / "analysis", analysis)
    console = Console()
    for table in analysis_tables(analysis):
        console.print(table)
    console.print(f"written to {folder}")


@app.command()
def export(
    study_dir: Path = typer.Argument(..., help="Study folder."),
    out: Path | None = typer.Option(None, help="CSV file [default: <study>/answers.csv]."),
) -> None:
    """Write every answer as CSV."""
    from dermadv.observer.storage import StudyDB
    from dermadv.observer.study import load_study

    with _errors():
        path = out or study_dir / "answers.csv"
        n_rows = StudyDB(load_study(study_dir).db_path).export_csv(path)
    typer.echo(f"{n_rows} answers written to {path}")
