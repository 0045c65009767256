"""``dermadv defend …``: input-transform defences, randomized smoothing, detection and robustness cards
(:mod:`dermadv.pipeline.defences`); the tables are the report's (:mod:`dermadv.report.defences`)."""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

from dermadv.cli.data import AllowIncompleteOpt

app = typer.Typer(
    help="Defences and their honest evaluation: transforms (plain vs BPDA/EOT), smoothing, detection, cards.",
    no_args_is_help=True,
)

#: the options every defence command takes (the fields of pipeline.defences.DefenceConfig)
SHARED: tuple[tuple[str, Any, Any], ...] = (
    (
        "checkpoint",
        Path,
        typer.Option(..., "--model", "--checkpoint", help="Classifier model.safetensors (from `dermadv train`)."),
    ),
    ("out", Path, typer.Option(..., "--out", help="Run folder to write.")),
    ("data", str | None, typer.Option(None, "--data", help="Data the classifier was trained on.")),
    ("split", str | None, typer.Option(None, help="train, val or test [default: test; detect: val].")),
    ("split_file", str | None, typer.Option(None, "--split-file", help="Default: the one beside the checkpoint.")),
    ("limit", int | None, typer.Option(None, help="A class-stratified sample of this many [detect: 350].")),
    ("seed", int, typer.Option(0)),
    ("batch_size", int, typer.Option(64, "--batch-size")),
    ("allow_incomplete", bool, AllowIncompleteOpt),
)


def command(name: str, config: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Register ``dermadv defend <name>``: its options and :data:`SHARED` become the fields of ``config``.

    The decorated function declares its own options (named as the config's fields) after a first
    parameter ``cfg``, and receives the built config (``pipeline.defences.<config>``) there; repeatable
    options arrive as tuples, and one given no value (None, or no repetition) keeps the config's default.
    """

    def register(function: Callable[..., None]) -> Callable[..., None]:
        hints = typing.get_type_hints(function)
        own = [
            p.replace(annotation=hints[p.name], kind=inspect.Parameter.KEYWORD_ONLY)
            for p in list(inspect.signature(function).parameters.values())[1:]
        ]
        shared = [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=o, annotation=t) for n, t, o in SHARED]

        @functools.wraps(function)
        def run(**options: Any) -> None:
            from dermadv.pipeline import defences

            values = {k: tuple(v) if isinstance(v, list) else v for k, v in options.items()}
            function(getattr(defences, config)(**{k: v for k, v in values.items() if v is not None and v != ()}))

        run.__signature__ = inspect.Signature([*shared, *own])  # type: ignore[attr-defined]
        run.__annotations__ = {p.name: p.annotation for p in [*shared, *own]}
        return app.command(name)(run)

    return register


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


@command("transforms", "TransformsConfig")
def transforms(
    cfg: Any,
    defences: list[str] = typer.Option(
        [], "--defence", help="jpeg:75, bits:5, median:3 or gauss:0.05 (repeatable; default: all four)."
    ),
    target: str = typer.Option("nv", help="Class every image should be called (dx code)."),
    eps: str = typer.Option("2/255,8/255", help="Comma-separated L∞ budgets."),
    steps: int = typer.Option(20, help="PGD steps."),
    eot_samples: int = typer.Option(8, "--eot-samples", help="Samples of a randomised defence per EOT gradient."),
) -> None:
    """Targeted PGD on each transform defence, plain and adaptive (BPDA, EOT); writes transforms.json."""
    from dermadv.pipeline.defences import transforms_split
    from dermadv.report.defences import transforms_context

    _print("transforms", transforms_context(transforms_split(cfg)), cfg.out)


@command("certify", "CertifyConfig")
def certify(
    cfg: Any,
    sigma: float = typer.Option(0.25, help="Noise standard deviation on [0, 1] images."),
    n: int = typer.Option(1000, help="Noise samples that estimate the top class's probability."),
    n0: int = typer.Option(100, help="Noise samples that choose the class."),
    alpha: float = typer.Option(0.001, help="Failure probability of each certificate."),
    radii: str = typer.Option("0.25,0.5", help="Comma-separated L2 radii."),
) -> None:
    """Randomized smoothing (Cohen et al. 2019): certified accuracy at L2 radii; writes certify.json."""
    from dermadv.pipeline.defences import certify_split
    from dermadv.report.defences import certify_context

    context = certify_context(certify_split(cfg))
    _print("certify", context, cfg.out)
    typer.echo(f"base classifier accuracy {context['base']}; abstained {context['abstained']}")


@command("detect", "DetectConfig")
def detect(
    cfg: Any,
    attack_folder: Path = typer.Option(..., "--attack-folder", help="Output folder of `dermadv attack run`."),
    detector: str = typer.Option("mahalanobis", help="mahalanobis or logistic (fitted on PGD images)."),
    fit_limit: int = typer.Option(700, "--fit-limit", help="Clean training images the detector is fitted on."),
    eps: str = typer.Option("8/255", help="Budget of the detector-aware attack if the folder has none."),
    steps: int = typer.Option(20, help="Steps of the detector-aware PGD."),
) -> None:
    """Detector AUC and TPR at 5% FPR against an attack folder and against the detector-aware attack.

    --split and --limit choose the clean images that set the threshold (5% of them flagged).
    """
    from dermadv.pipeline.defences import detect_split
    from dermadv.report.defences import detect_context

    _print("detect", detect_context(detect_split(cfg)), cfg.out)


@command("card", "CardConfig")
def card(
    cfg: Any,
    defences: list[str] = typer.Option([], "--defence", help="A defence to card beside the undefended model."),
    target: str = typer.Option("nv", help="Class every image should be called (dx code)."),
    eps: str = typer.Option("1/255,2/255,4/255,8/255", help="Comma-separated L∞ budgets, ascending."),
    steps: int = typer.Option(20, help="PGD steps."),
    adaptive: bool = typer.Option(True, "--adaptive/--no-adaptive", help="BPDA/EOT attack on a defence."),
) -> None:
    """Per class, the smallest budget moving ≥ 50% and ≥ 99% to the target; writes card.json and card.csv."""
    from dermadv.pipeline.defences import card_split
    from dermadv.report.defences import card_context

    _print("card", card_context(card_split(cfg)), cfg.out)
