"""``dermadv data …``: inspect, split and download data."""

from __future__ import annotations

from pathlib import Path

import typer

from dermadv.errors import DermadvError

app = typer.Typer(help="Inspect, split and download data.", no_args_is_help=True, rich_markup_mode=None)

DataOpt = typer.Option(
    None,
    "--data",
    help="HAM10000 folder, ISIC 2018/2019 set, DermaMNIST .npz, class-folder tree; default: synthetic set.",
)
AllowIncompleteOpt = typer.Option(
    False,
    "--allow-incomplete/--no-allow-incomplete",
    help="Use the outputs of an unfinished run (a warning says so) instead of refusing them.",
)
AllowTrainingImagesOpt = typer.Option(
    False,
    "--allow-training-images/--no-allow-training-images",
    help="Score a dermadv checkpoint on images it was trained on (a warning says so) instead of refusing.",
)

#: ``--model`` (alias ``--checkpoint``) and its companions, on every command that audits a model
ModelOpt = typer.Option(
    ...,
    "--model",
    "--checkpoint",
    help="The model: a dermadv .safetensors, torchvision:<arch>|timm:<arch>|python:<module>:<factory> (with "
    "--weights), a TorchScript, torch.export .pt2 or .onnx file, or an http(s):// endpoint.",
)
WeightsOpt = typer.Option(None, "--weights", help="State dict (.pt/.pth/.safetensors) for an architecture --model.")
ModelCardOpt = typer.Option(
    None, "--model-card", help="YAML model card (size, value range, mean/std, RGB/BGR, layout, outputs, classes)."
)
ThreatModelOpt = typer.Option(
    None, "--threat-model", help="white-box, score-based or decision-based; default: the strongest the model allows."
)


@app.command("info")
def data_info(data: str | None = DataOpt) -> None:
    """Print source, size, class counts and fingerprint of a data set."""
    from dermadv.data.cache import stored_size
    from dermadv.data.load import load_dataset

    ds = load_dataset(data)
    typer.echo(f"source: {ds.source}\nroot: {ds.root}\nimages: {len(ds)}\nlesions: {len(set(ds.lesion_ids))}")
    typer.echo(f"stored size (HxW): {stored_size(ds)}\nfingerprint: {ds.fingerprint}")
    for c, n in ds.class_counts().items():
        typer.echo(f"  {c:6s} {n:6d}  {100 * n / len(ds):5.1f}%")


@app.command("split")
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


@app.command("download")
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
