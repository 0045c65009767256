"""``dermadv train`` and ``dermadv evaluate``: a classifier from options, a YAML config or a preset."""

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


def train(
    out: Path = typer.Option(..., "--out", help="Run folder to write."),
    data: str | None = DataOpt,
    config: Path | None = typer.Option(None, "--config", help="YAML file of training options (see recipes/)."),
    preset: str | None = typer.Option(None, "--preset", help="demo, cpu-64 or paper."),
    arch: str | None = typer.Option(None, help="torchvision architecture name [default: densenet201]."),
    image_size: int | None = typer.Option(None, "--image-size", help="Square input size in pixels [default: 224]."),
    epochs: int | None = typer.Option(None),
    batch_size: int | None = typer.Option(None, "--batch-size"),
    lr: float | None = typer.Option(None),
    optimizer: str | None = typer.Option(None, help="adamw or sgd."),
    class_balance: str | None = typer.Option(None, "--class-balance", help="none, sqrt or inverse loss weights."),
    weights: str | None = typer.Option(
        None, help="'imagenet', a path to ImageNet weights, or 'none' (random init, the default)."
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
