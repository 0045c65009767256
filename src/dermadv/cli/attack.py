"""``dermadv attack …`` (fit a generator, run any attack on a split, sweep budgets, test transfer) and
``dermadv evaluate-attack``."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from dermadv.cli.data import (
    AllowIncompleteOpt,
    AllowTrainingImagesOpt,
    ModelCardOpt,
    ModelOpt,
    ThreatModelOpt,
    WeightsOpt,
)
from dermadv.config import config_options

app = typer.Typer(
    help="Fit and run adversarial attacks (advgan, pgd, fgsm, cw, uap, pixel, art:<Name>).",
    no_args_is_help=True,
    rich_markup_mode=None,
)

DataOpt = typer.Option(None, "--data", help="Data the classifier was trained on; default: built-in synthetic set.")
CheckpointOpt = typer.Option(
    ..., "--model", "--checkpoint", help="Classifier model.safetensors (from `dermadv train`)."
)


def _params(pairs: list[str]) -> dict[str, object]:
    import yaml

    from dermadv.errors import ConfigError

    out: dict[str, object] = {}
    for p in pairs:
        if "=" not in p:
            raise ConfigError(f"--param takes key=value; got {p!r}")
        k, v = p.split("=", 1)
        out[k] = yaml.safe_load(v)
    return out


@app.command("fit")
def fit(
    checkpoint: str = ModelOpt,
    weights: str | None = WeightsOpt,
    model_card: str | None = ModelCardOpt,
    out: Path = typer.Option(..., "--out", help="Run folder for generator.safetensors."),
    data: str | None = DataOpt,
    target: str = typer.Option("nv", help="Class every image should be called (dx code)."),
    eps: str = typer.Option("8/255", help="L∞ budget on [0,1] images, e.g. 2/255; must be in (0, 1]."),
    fit_on: str = typer.Option("train", "--fit-on", help="train (judge on unseen test images) or test (the paper)."),
    max_fit_images: int | None = typer.Option(
        None, "--max-fit-images", help="Fit on a class-stratified sample of this many images of --fit-on."
    ),
    attack_size: str = typer.Option("model", "--attack-size", help="model (classifier input) or stored (file size)."),
    epochs: int = typer.Option(6),
    batch_size: int = typer.Option(64, "--batch-size"),
    lr: float = typer.Option(1e-3),
    kappa: float = typer.Option(5.0, help="Logit margin the target must win by."),
    gan_weight: float = typer.Option(0.05, "--gan-weight", help="Weight of the least-squares GAN loss."),
    hinge_weight: float = typer.Option(1.0, "--hinge-weight", help="Weight of the L2 hinge."),
    condition: str = typer.Option(
        "gradient",
        help="gradient (image + the classifier's input gradient; stronger), gradient-half (that gradient at half "
        "resolution; faster) or image (AdvGAN's original).",
    ),
    channels: int = typer.Option(16, help="Width of the generator."),
    steps: int = typer.Option(
        1,
        help="Generator applications per attack, each on a fresh gradient (gradient conditions; 2 generalises "
        "better to unseen images, at twice the cost).",
    ),
    stop_at: float | None = typer.Option(
        None,
        "--stop-at",
        help="Stop before --epochs once every class of the fit images is called --target at this share (e.g. 1.0), "
        "judged on 8-bit outputs as an attack saves them.",
    ),
    seed: int = typer.Option(0),
    split_file: str | None = typer.Option(None, "--split-file"),
    resume: bool = typer.Option(False, "--resume/--no-resume", help="Continue an interrupted fit in --out."),
    allow_incomplete: bool = AllowIncompleteOpt,
) -> None:
    """Fit an AdvGAN-style generator that makes the classifier predict --target."""
    options = dict(locals())  # by name, before any other name is bound
    from dermadv.pipeline.generator import fit_generator
    from dermadv.training.generator import GeneratorConfig

    cfg = GeneratorConfig(**config_options(GeneratorConfig, options))
    typer.echo(f"generator: {fit_generator(cfg)}")


@app.command("run")
def run(
    checkpoint: str = ModelOpt,
    out: Path = typer.Option(..., "--out", help="Attack output folder."),
    method: str = typer.Option(
        "advgan", help="advgan, pgd, fgsm, cw, uap, pixel, colour, rotation, translation, art:<Name>."
    ),
    generator: Path | None = typer.Option(None, "--generator", help="generator.safetensors for advgan."),
    data: str | None = DataOpt,
    split: str = typer.Option("test"),
    target: str | None = typer.Option("nv", help="Target class; 'none' for an untargeted attack."),
    eps: str | None = typer.Option(
        None, help="L∞ budget, e.g. 2/255. Default: 8/255, or a --generator's own (refused if it differs)."
    ),
    steps: int = typer.Option(20, help="Iterations of gradient attacks."),
    pixels: int = typer.Option(1, help="Pixels changed by the few-pixel attack."),
    attack_size: str = typer.Option("model", "--attack-size"),
    batch_size: int = typer.Option(64, "--batch-size"),
    limit: int | None = typer.Option(None, help="Attack a class-stratified sample of this many images."),
    param: list[str] = typer.Option([], "--param", help="Extra hyperparameter key=value (repeatable)."),
    seed: int = typer.Option(0),
    split_file: str | None = typer.Option(None, "--split-file"),
    defence: str | None = typer.Option(None, "--defence", help="Attack the model behind jpeg:75, bits:5, median:3 …"),
    adaptive: bool = typer.Option(
        True,
        "--adaptive/--no-adaptive",
        help="With --defence: BPDA/EOT gradients, or the plain attack that ignores it.",
    ),
    allow_incomplete: bool = AllowIncompleteOpt,
    weights: str | None = WeightsOpt,
    model_card: str | None = ModelCardOpt,
    threat_model: str | None = ThreatModelOpt,
    queries: int | None = typer.Option(None, "--queries", help="Per-image query budget of a query-based attack."),
    resume: bool = typer.Option(
        False,
        "--resume/--no-resume",
        help="Continue an interrupted run in --out (same settings): what a black-box model answered it is read back "
        "from its query journal, not asked again.",
    ),
    allow_training_images: bool = AllowTrainingImagesOpt,
) -> None:
    """Attack a split; save 8-bit PNGs; score the saved images; print the paper's table.

    A used --out is emptied first: no image of an earlier run stays beside the new ones (with --resume, all but
    the query journal of a run with the same settings)."""
    options = dict(locals())  # by name, before any other name is bound
    from dermadv.evaluation.attack_eval import format_attack_table
    from dermadv.pipeline.attack import AttackRunConfig, attack_split

    target = None if target in (None, "none") else target
    cfg = AttackRunConfig(**config_options(AttackRunConfig, options, target=target, params=_params(param)))
    metrics = attack_split(cfg)
    if metrics is not None:
        Console().print(format_attack_table(metrics))
    typer.echo(f"wrote {out}")


@app.command("sweep")
def sweep_cmd(
    checkpoint: Path = CheckpointOpt,
    out: Path = typer.Option(..., "--out"),
    methods: str = typer.Option("pgd,fgsm,uap", help="Comma-separated methods."),
    eps: str = typer.Option("1/255,2/255,4/255,8/255", help="Comma-separated budgets."),
    data: str | None = DataOpt,
    split: str = typer.Option("test"),
    target: str = typer.Option("nv"),
    steps: int = typer.Option(20),
    limit: int | None = typer.Option(None, help="Class-stratified sample size per run."),
    fit_limit: int | None = typer.Option(None, "--fit-limit", help="Train images a universal perturbation fits on."),
    generators: Path | None = typer.Option(
        None, "--generators", help="Folder of generator fits <protocol>-eps<k>_255/ (reproduce's sweep/generators)."
    ),
    seed: int = typer.Option(0),
    allow_incomplete: bool = AllowIncompleteOpt,
) -> None:
    """Run several methods × budgets; write sweep.csv (one row per method and eps) and a manifest."""
    options = dict(locals())  # by name, before any other name is bound
    from dermadv.pipeline.attack import AttackRunConfig
    from dermadv.pipeline.sweep import attack_sweep

    # --eps lists the sweep's budgets: each run's, not the config's one
    cfg = AttackRunConfig(**config_options(AttackRunConfig, options, eps=None))
    methods_list = [m.strip() for m in methods.split(",") if m.strip()]
    eps_list = [e.strip() for e in eps.split(",") if e.strip()]
    _print_sweep(attack_sweep(cfg, methods=methods_list, eps_values=eps_list, generators=generators))


def _print_sweep(rows: list[dict[str, object]]) -> None:
    from rich.table import Table

    t = Table(title="sweep")
    for col in ("method", "eps", "accuracy_adv", "worst_class_fooling", "fooling_nv", "psnr_mean"):
        t.add_column(col)
    for r in rows:
        t.add_row(
            *[
                f"{r.get(c):.3f}" if isinstance(r.get(c), float) else str(r.get(c))
                for c in ("method", "eps", "accuracy_adv", "worst_class_fooling", "fooling_nv", "psnr_mean")
            ]
        )
    Console().print(t)


@app.command("transfer")
def transfer_cmd(
    source: Path = typer.Option(..., "--from", help="Attack output folder made against another model."),
    to: Path = typer.Option(..., "--to", help="Classifier model.safetensors to score the images on."),
    out: Path = typer.Option(..., "--out"),
    defence: str | None = typer.Option(
        None, "--defence", help="Score through jpeg:75, bits:5, median:3 or gauss:0.05."
    ),
    allow_incomplete: bool = AllowIncompleteOpt,
) -> None:
    """Black-box transfer: score saved adversarial images on another classifier (or on a defence of it)."""
    from dermadv.evaluation.attack_eval import format_attack_table
    from dermadv.pipeline.attack import transfer

    Console().print(format_attack_table(transfer(source, to, out, defence=defence, allow_incomplete=allow_incomplete)))


@app.command("list")
def list_cmd() -> None:
    """List the registered attacks."""
    from dermadv.attacks.registry import list_attacks

    for name in list_attacks():
        typer.echo(name)
    typer.echo("art:<ClassName>  (any evasion attack of the Adversarial Robustness Toolbox)")


def evaluate_attack(
    folder: Path = typer.Argument(..., help="Output folder of `dermadv attack run`."),
    ci: str = typer.Option("wald", "--ci", help="wald (as the paper), wilson or exact."),
    allow_incomplete: bool = AllowIncompleteOpt,
) -> None:
    """Accuracy clean/adversarial with CIs, McNemar, fooling ratio per class, imperceptibility."""
    from dermadv.errors import ConfigError
    from dermadv.evaluation.attack_eval import evaluate_attack_folder, format_attack_table
    from dermadv.evaluation.stats import CI_METHODS

    if ci not in CI_METHODS:
        raise ConfigError(f"--ci must be one of {', '.join(CI_METHODS)}; got {ci!r}")
    metrics = evaluate_attack_folder(folder, ci_method=ci, allow_incomplete=allow_incomplete)  # type: ignore[arg-type]
    Console().print(format_attack_table(metrics))
    typer.echo(f"wrote {folder}/attack_metrics.json, attack_metrics.csv, per_image.csv")
