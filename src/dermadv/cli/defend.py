"""``dermadv defend …``: input-transform defences, randomized smoothing, detection and robustness cards
(:mod:`dermadv.pipeline.defences`); the tables are the report's (:mod:`dermadv.report.defences`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from dermadv.cli.data import AllowIncompleteOpt
from dermadv.config import config_options, given_options

app = typer.Typer(
    help="Defences and their honest evaluation: transforms (plain vs BPDA/EOT), smoothing, detection, cards.",
    no_args_is_help=True,
)

# The options every defence command takes: the fields of pipeline.defences.DefenceConfig. A command builds its config
# from the options given (config.given_options), so one left unset keeps that config's default (detect's --split: val).
CheckpointOpt = typer.Option(
    ..., "--model", "--checkpoint", help="Classifier model.safetensors (from `dermadv train`)."
)
OutOpt = typer.Option(..., "--out", help="Run folder to write.")
DataOpt = typer.Option(None, "--data", help="Data the classifier was trained on.")
SplitOpt = typer.Option(None, help="train, val or test [default: test; detect: val].")
SplitFileOpt = typer.Option(None, "--split-file", help="Default: the one beside the checkpoint.")
LimitOpt = typer.Option(None, help="A class-stratified sample of this many [detect: 350].")
SeedOpt = typer.Option(0)
BatchSizeOpt = typer.Option(64, "--batch-size")


def _print(section: str, context: dict[str, Any], out: Path) -> None:
    """The report's table of ``section`` on the console, then where its JSON went."""
    from rich.console import Console
    from rich.table import Table

    from dermadv.report.defences import COLUMNS

    table = Table(title=context["title"])
    for header in COLUMNS[section].values():
        table.add_column(header)
    for row in context["rows"]:
        table.add_row(*(row[key] for key in COLUMNS[section]))
    Console().print(table)
    typer.echo(f"wrote {out}/{section}.json")


@app.command("transforms")
def transforms(
    checkpoint: Path = CheckpointOpt,
    out: Path = OutOpt,
    data: str | None = DataOpt,
    split: str | None = SplitOpt,
    split_file: str | None = SplitFileOpt,
    limit: int | None = LimitOpt,
    seed: int = SeedOpt,
    batch_size: int = BatchSizeOpt,
    allow_incomplete: bool = AllowIncompleteOpt,
    defences: list[str] = typer.Option(
        [], "--defence", help="jpeg:75, bits:5, median:3 or gauss:0.05 (repeatable; default: all four)."
    ),
    target: str = typer.Option("nv", help="Class every image should be called (dx code)."),
    eps: str = typer.Option("2/255,8/255", help="Comma-separated L∞ budgets."),
    steps: int = typer.Option(20, help="PGD steps."),
    eot_samples: int = typer.Option(8, "--eot-samples", help="Samples of a randomised defence per EOT gradient."),
) -> None:
    """Targeted PGD on each transform defence, plain and adaptive (BPDA, EOT); writes transforms.json."""
    options = dict(locals())  # by name, before any other name is bound
    from dermadv.pipeline.defences import TransformsConfig, transforms_split
    from dermadv.report.defences import transforms_context

    cfg = TransformsConfig(**given_options(config_options(TransformsConfig, options)))
    _print("transforms", transforms_context(transforms_split(cfg)), cfg.out)


@app.command("certify")
def certify(
    checkpoint: Path = CheckpointOpt,
    out: Path = OutOpt,
    data: str | None = DataOpt,
    split: str | None = SplitOpt,
    split_file: str | None = SplitFileOpt,
    limit: int | None = LimitOpt,
    seed: int = SeedOpt,
    batch_size: int = BatchSizeOpt,
    allow_incomplete: bool = AllowIncompleteOpt,
    sigma: float = typer.Option(0.25, help="Noise standard deviation on [0, 1] images."),
    n: int = typer.Option(1000, help="Noise samples that estimate the top class's probability."),
    n0: int = typer.Option(100, help="Noise samples that choose the class."),
    alpha: float = typer.Option(0.001, help="Failure probability of each certificate."),
    radii: str = typer.Option("0.25,0.5", help="Comma-separated L2 radii."),
) -> None:
    """Randomized smoothing (Cohen et al. 2019): certified accuracy at L2 radii; writes certify.json."""
    options = dict(locals())  # by name, before any other name is bound
    from dermadv.pipeline.defences import CertifyConfig, certify_split
    from dermadv.report.defences import certify_context

    cfg = CertifyConfig(**given_options(config_options(CertifyConfig, options)))
    context = certify_context(certify_split(cfg))
    _print("certify", context, cfg.out)
    typer.echo(f"base classifier accuracy {context['base']}; abstained {context['abstained']}")


@app.command("detect")
def detect(
    checkpoint: Path = CheckpointOpt,
    out: Path = OutOpt,
    data: str | None = DataOpt,
    split: str | None = SplitOpt,
    split_file: str | None = SplitFileOpt,
    limit: int | None = LimitOpt,
    seed: int = SeedOpt,
    batch_size: int = BatchSizeOpt,
    allow_incomplete: bool = AllowIncompleteOpt,
    attack_folder: Path = typer.Option(..., "--attack-folder", help="Output folder of `dermadv attack run`."),
    detector: str = typer.Option("mahalanobis", help="mahalanobis or logistic (fitted on PGD images)."),
    fit_limit: int = typer.Option(700, "--fit-limit", help="Clean training images the detector is fitted on."),
    eps: str = typer.Option("8/255", help="Budget of the detector-aware attack if the folder has none."),
    steps: int = typer.Option(20, help="Steps of the detector-aware PGD."),
) -> None:
    """Detector AUC and TPR at 5% FPR against an attack folder and against the detector-aware attack.

    --split and --limit choose the clean images that set the threshold (5% of them flagged).
    """
    options = dict(locals())  # by name, before any other name is bound
    from dermadv.pipeline.defences import DetectConfig, detect_split
    from dermadv.report.defences import detect_context

    cfg = DetectConfig(**given_options(config_options(DetectConfig, options)))
    _print("detect", detect_context(detect_split(cfg)), cfg.out)


@app.command("card")
def card(
    checkpoint: Path = CheckpointOpt,
    out: Path = OutOpt,
    data: str | None = DataOpt,
    split: str | None = SplitOpt,
    split_file: str | None = SplitFileOpt,
    limit: int | None = LimitOpt,
    seed: int = SeedOpt,
    batch_size: int = BatchSizeOpt,
    allow_incomplete: bool = AllowIncompleteOpt,
    defences: list[str] = typer.Option([], "--defence", help="A defence to card beside the undefended model."),
    target: str = typer.Option("nv", help="Class every image should be called (dx code)."),
    eps: str = typer.Option("1/255,2/255,4/255,8/255", help="Comma-separated L∞ budgets, ascending."),
    steps: int = typer.Option(20, help="PGD steps."),
    adaptive: bool = typer.Option(True, "--adaptive/--no-adaptive", help="BPDA/EOT attack on a defence."),
) -> None:
    """Per class, the smallest budget moving ≥ 50% and ≥ 99% to the target; writes card.json and card.csv."""
    options = dict(locals())  # by name, before any other name is bound
    from dermadv.pipeline.defences import CardConfig, card_split
    from dermadv.report.defences import card_context

    cfg = CardConfig(**given_options(config_options(CardConfig, options)))
    _print("card", card_context(card_split(cfg)), cfg.out)
