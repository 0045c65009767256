"""The command line: thin wiring from options to library functions."""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any

import typer
import yaml

from dermadv.errors import DermadvError

app = typer.Typer(
    help="dermadv: audit dermatoscopic image classifiers against adversarial attacks "
    "(reproduces Allyn et al. 2020, Medicine 99(50):e23568).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
data_app = typer.Typer(help="Inspect, split and download data.", no_args_is_help=True)
app.add_typer(data_app, name="data")

DataOpt = typer.Option(
    None, "--data", help="HAM10000 folder, DermaMNIST .npz, class-folder tree; default: built-in synthetic set."
)


def _torchrun() -> bool:
    """Launched by torchrun with more than one process (checked without importing torch)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def _setup_logging(verbose: bool = False) -> None:
    main_process = True
    if _torchrun():
        from dermadv import distributed as dd

        main_process = dd.is_main()
    level = logging.INFO if verbose or main_process else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")


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


@data_app.command("info")
def data_info(data: str | None = DataOpt) -> None:
    """Print source, size, class counts and fingerprint of a data set."""
    from dermadv.data.cache import stored_size
    from dermadv.data.load import load_dataset

    ds = load_dataset(data)
    typer.echo(f"source: {ds.source}\nroot: {ds.root}\nimages: {len(ds)}\nlesions: {len(set(ds.lesion_ids))}")
    typer.echo(f"stored size (HxW): {stored_size(ds)}\nfingerprint: {ds.fingerprint}")
    for c, n in ds.class_counts().items():
        typer.echo(f"  {c:6s} {n:6d}  {100 * n / len(ds):5.1f}%")


@data_app.command("split")
def data_split(
    out: Path = typer.Option(..., "--out", help="CSV to write (image_id,lesion_id,dx,split)."),
    data: str | None = DataOpt,
    seed: int = typer.Option(0, help="Seed of the lesion shuffle."),
    fractions: str = typer.Option("0.70,0.15,0.15", help="train,val,test shares."),
) -> None:
    """Write a lesion-grouped, class-stratified train/val/test split."""
    from dermadv.data.load import load_dataset
    from dermadv.data.splits import make_splits, save_splits, split_summary

    try:
        fr = tuple(float(x) for x in fractions.split(","))
    except ValueError:
        raise DermadvError(f"--fractions must be three numbers such as 0.70,0.15,0.15; got {fractions!r}") from None
    ds = load_dataset(data)
    frame = make_splits(ds, fractions=fr, seed=seed)  # type: ignore[arg-type]
    save_splits(frame, out)
    typer.echo(split_summary(frame).to_string())
    typer.echo(f"wrote {out}")


@data_app.command("download")
def data_download(
    name: str = typer.Argument(..., help="Only 'dermamnist' can be fetched automatically."),
    size: int = typer.Option(28, "--size", help="28, 64, 128 or 224."),
    out: Path = typer.Option(Path("data"), "--out", help="Folder for the .npz."),
) -> None:
    """Download DermaMNIST through the medmnist package (needs internet)."""
    from dermadv.data.dermamnist import download_dermamnist

    if name != "dermamnist":
        raise DermadvError(
            f"cannot download {name!r}; only dermamnist (HAM10000 needs a manual download from Harvard Dataverse)"
        )
    typer.echo(f"wrote {download_dermamnist(size, out)}")


@app.command()
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


@app.command()
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
    from dermadv.evaluation.classifier_eval import evaluate_checkpoint, print_report

    report = evaluate_checkpoint(
        checkpoint, data=data, split=split, split_file=split_file, out=out, tta=tta, ci_method=ci
    )
    print_report(report)


#: Sub-apps that live beside the code they drive (``app.add_typer``), and modules that register commands.
_SUB_APPS = {"attack": "dermadv.attacks.cli", "observer": "dermadv.observer.cli"}
_REGISTERING = {
    "evaluate-attack": "dermadv.evaluation.cli",
    "reproduce": "dermadv.reproduce",
    "report": "dermadv.report.cli",
}


def _mount_optional(command: str | None = None) -> None:
    """Mount the sub-apps and registered commands that can be imported.

    Given the command about to run, mount only its module when it has one: ``observer serve`` then loads no
    torch (serving a study needs no model), and no command pays for the others' imports.
    """
    import importlib

    sub_apps, registering = _SUB_APPS, _REGISTERING
    if command in sub_apps or command in registering:
        sub_apps = {k: v for k, v in sub_apps.items() if k == command}
        registering = {k: v for k, v in registering.items() if k == command}
    for name, module in sub_apps.items():
        try:
            mod = importlib.import_module(module)
        except ImportError as exc:  # an optional dependency (e.g. fastapi) is missing
            logging.getLogger(__name__).debug("%s not available: %s", module, exc)
            continue
        app.add_typer(mod.app, name=name)
    for module in registering.values():
        try:
            mod = importlib.import_module(module)
        except ImportError:
            continue
        mod.register(app)


def _run_app() -> tuple[int, str]:
    """Run the typer app; returns the exit code and, for a failure, why."""
    try:
        code = app(standalone_mode=False)
    except DermadvError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        return 1, str(exc)
    except (typer.Abort, KeyboardInterrupt):
        return 130, "interrupted"
    except SystemExit as exc:  # sys.exit inside a command
        if exc.code is None or isinstance(exc.code, int):
            return exc.code or 0, f"exit code {exc.code}"
        typer.echo(exc.code, err=True)
        return 1, str(exc.code)
    except Exception as exc:  # click usage errors arrive here in non-standalone mode
        # Duck-typed: typer >= 0.23 raises its vendored click's exceptions (typer._click), older typer click's own.
        show, exit_code = getattr(exc, "show", None), getattr(exc, "exit_code", None)
        if callable(show) and isinstance(exit_code, int):
            show()
            return exit_code, str(exc)
        raise
    # typer returns the code of a typer.Exit it caught, and 130 for Ctrl-C; a command itself returns None.
    code = code if isinstance(code, int) and not isinstance(code, bool) else 0
    return code, "interrupted" if code == 130 else f"exit code {code}"


def main() -> None:
    """The ``dermadv`` console script: exit 0 on success, 1 on an error, 2 on a usage error, 130 on Ctrl-C.

    A run folder whose command stops early is marked ``interrupted`` or ``failed`` rather than left "running".
    """
    from dermadv.runs import abandon_runs, watch_runs

    torchrun = _torchrun()
    if torchrun:
        from dermadv import distributed as dd

        # Join the process group first so that logging knows which rank this is.
        dd.init_from_env()
    _setup_logging()
    _mount_optional(sys.argv[1] if len(sys.argv) > 1 else None)
    with watch_runs() as opened:
        try:
            code, reason = _run_app()
        except BaseException as exc:  # a bug: its traceback follows, and the runs it opened say failed
            abandon_runs(opened, "failed", f"{type(exc).__name__}: {exc}")
            raise
        finally:
            if torchrun:
                dd.cleanup()
    if code == 130:
        typer.secho("interrupted", err=True)
        abandon_runs(opened, "interrupted", "stopped by Ctrl-C (SIGINT)")
    elif code:
        abandon_runs(opened, "failed", reason)
    sys.exit(code)
