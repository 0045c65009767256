"""``dermadv model …``: check, describe, export and serve a model; ``dermadv audit``: the study on it."""

from __future__ import annotations

from pathlib import Path

import typer

from dermadv.cli.data import AllowIncompleteOpt, DataOpt, ModelCardOpt, ThreatModelOpt, WeightsOpt
from dermadv.config import config_options

app = typer.Typer(help="Check, describe, export and serve a model.", no_args_is_help=True, rich_markup_mode=None)

ModelArg = typer.Argument(
    ...,
    help="A dermadv .safetensors, torchvision:<arch>|timm:<arch>|python:<module>:<factory> (with --weights), "
    "a TorchScript, torch.export .pt2 or .onnx file, or an http(s):// endpoint.",
)


@app.command("check")
def check(
    model: str = ModelArg,
    data: str | None = DataOpt,
    weights: str | None = WeightsOpt,
    model_card: str | None = ModelCardOpt,
    split: str = typer.Option("test", help="Split of --data to sample (train, val, test, all)."),
    sample: int = typer.Option(140, help="Class-stratified sample size."),
    allow_incomplete: bool = AllowIncompleteOpt,
) -> None:
    """Load the model, print its card and its accuracy per class on a labelled sample; name a preprocessing
    mismatch when it is near chance."""
    import yaml

    from dermadv.pipeline.model_check import check_model
    from dermadv.pipeline.models import ModelSpec

    result = check_model(
        ModelSpec(model, weights, model_card), data=data, split=split, sample=sample, allow_incomplete=allow_incomplete
    )
    info = result.model
    typer.echo(f"model: {info['spec']} ({info['kind']}), threat models: {', '.join(info['offers'])}")
    typer.echo(yaml.safe_dump({"card": info["card"]}, sort_keys=False).rstrip())
    for note in info["notes"]:
        typer.echo(f"note: {note}")
    for cls, c, n in zip(result.classes, result.correct, result.counts, strict=True):
        typer.echo(f"  {cls:>10}  {c:4d}/{n:<4d} {f'{c / n:6.1%}' if n else '     –  (no images of it)'}")
    for name, acc in result.variants.items():
        typer.echo(f"  tried {name}: balanced accuracy {acc:.1%}")
    typer.echo(result.verdict())


@app.command("card")
def card(
    model: str = ModelArg,
    out: Path | None = typer.Option(None, "--out", help="Where to write; default: <model>.card.yaml beside it."),
    weights: str | None = WeightsOpt,
    model_card: str | None = ModelCardOpt,
) -> None:
    """Write the model card dermadv uses for MODEL (its defaults, or the card given), to edit and pass back."""
    from dermadv.models.card import save_card
    from dermadv.pipeline.models import ModelSpec, open_model

    loaded = open_model(ModelSpec(model, weights, model_card))
    if out is None:
        if model.startswith(("http://", "https://", "torchvision:", "timm:", "python:")):
            from dermadv.errors import ConfigError

            raise ConfigError("pass --out for the card of a URL or an architecture name")
        out = Path(model + ".card.yaml")
    save_card(loaded.info.card, out)
    typer.echo(f"wrote {out}")


@app.command("export")
def export(
    model: str = ModelArg,
    out: Path = typer.Option(..., "--out", help="model.onnx (ONNX) or model.pt (TorchScript)."),
    weights: str | None = WeightsOpt,
    model_card: str | None = ModelCardOpt,
) -> None:
    """Export a model with gradients (a dermadv checkpoint, an architecture with weights) to ONNX or TorchScript."""
    from dermadv.errors import ConfigError
    from dermadv.models.export import export_model
    from dermadv.pipeline.models import ModelSpec, open_model

    loaded = open_model(ModelSpec(model, weights, model_card))
    if not loaded.gradients or loaded.info.image_size is None:
        raise ConfigError(f"{model} is not a PyTorch model; only those can be exported")
    export_model(loaded.net, out, image_size=loaded.info.image_size)
    typer.echo(f"wrote {out}")


@app.command("serve")
def serve(
    model: Path = typer.Argument(..., help="An .onnx file to serve over the Open Inference Protocol (KServe v2)."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on."),
    port: int = typer.Option(8000, help="Port (1–65535)."),
    name: str = typer.Option("model", help="The model's name in /v2/models/<name>/infer."),
) -> None:
    """Serve an ONNX model with onnxruntime over HTTP (KServe v2 and a plain /predict), counting queries."""
    from dermadv.models.serve import serve as run_server

    run_server(model, host=host, port=port, name=name)


def audit(
    model: str = ModelArg,
    out: Path = typer.Option(..., "--out", help="Run folder of the audit."),
    data: str | None = DataOpt,
    weights: str | None = WeightsOpt,
    model_card: str | None = ModelCardOpt,
    threat_model: str | None = ThreatModelOpt,
    split: str = typer.Option("test", help="Split of --data to evaluate and attack."),
    split_file: str | None = typer.Option(None, "--split-file", help="Split CSV (default: lesion-grouped, seed 0)."),
    target: str = typer.Option("nv", help="The class every lesion should be called (dx code)."),
    eps: str = typer.Option("8/255", help="L∞ budget, e.g. 4/255."),
    steps: int = typer.Option(20, help="PGD iterations (white-box)."),
    queries: int = typer.Option(1000, help="Per-image query budget (score-based)."),
    limit: int | None = typer.Option(None, help="Attack a class-stratified sample of this many images."),
    batch_size: int = typer.Option(32, "--batch-size"),
    seed: int = typer.Option(0),
    allow_incomplete: bool = AllowIncompleteOpt,
    resume: bool = typer.Option(
        False,
        "--resume/--no-resume",
        help="Continue an interrupted audit in --out (same settings): its attack reads what a black-box model "
        "answered back from its query journal instead of asking again.",
    ),
) -> None:
    """Audit any model: model check, clean accuracy, the paper's targeted table under the strongest threat model
    the model allows, reliability checks and a report page (audit.md)."""
    options = dict(locals())  # by name, before any other name is bound
    from dermadv.pipeline.audit import AuditConfig
    from dermadv.pipeline.audit import audit as run_audit
    from dermadv.pipeline.models import ModelSpec

    spec = ModelSpec(model, weights, model_card, threat_model)
    cfg = AuditConfig(**config_options(AuditConfig, options, model=spec))
    result = run_audit(cfg)
    a = result.attack
    typer.echo(f"threat model: {result.threat_model} — {result.why}")
    typer.echo(result.check.verdict())
    typer.echo(f"clean accuracy {result.clean.accuracy.estimate:.1%} (n = {result.clean.n})")
    worst, method = a.worst_class_fooling_ratio, a.attack.method if a.attack else None
    typer.echo(
        f"{method} → {a.target} at {a.eps_255:g}/255: all classes {a.fooling_ratio_all.estimate:.1%}, "
        f"worst class {a.worst_class} {worst.estimate if worst else float('nan'):.1%}"
    )
    for c in result.checks:
        typer.echo(c.line())
    t = result.timing
    typer.echo(f"wall {t['wall_s']:.1f} s (model {t['model_s']:.1f} s, dermadv {t['dermadv_share']:.1%}); wrote {out}")
