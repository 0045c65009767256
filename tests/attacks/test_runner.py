"""``attack transfer`` and ``attack sweep`` on the real pipeline (fixtures in conftest.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from dermadv.attacks.apply import read_png
from dermadv.attacks.runner import AttackRunConfig, sweep, transfer
from dermadv.data.classes import CLASSES
from dermadv.errors import RunError
from dermadv.models.checkpoints import load_checkpoint
from dermadv.runs import read_json, run_complete
from dermadv.training.augment import to_float


def _predict(checkpoint: Path, folder: Path, kind: str, ids: list[str]) -> list[str]:
    model, _ = load_checkpoint(checkpoint)
    images = torch.from_numpy(np.stack([read_png(folder / "images" / kind / f"{i}.png") for i in ids]))
    with torch.no_grad():
        return [CLASSES[i] for i in model(to_float(images)).argmax(1).tolist()]


def test_transfer_scores_saved_images_on_another_model(pipeline, adv_folder: Path, tmp_path: Path, caplog) -> None:
    out = tmp_path / "transfer"
    metrics = transfer(adv_folder, pipeline.other_checkpoint, out)
    assert "does not say complete" not in caplog.text  # the run evaluating its own folder is not "unfinished"

    source = pd.read_csv(adv_folder / "predictions.csv")
    preds = pd.read_csv(out / "predictions.csv")
    ids = source["image_id"].tolist()
    assert run_complete(out)
    for name in ("attack.json", "attack_metrics.json", "attack_metrics.csv", "per_image.csv"):
        assert (out / name).is_file(), name
    for kind in ("clean", "adv", "perturbation"):
        assert sorted(p.stem for p in (out / "images" / kind).glob("*.png")) == sorted(ids)
    info = read_json(out / "attack.json")
    assert info["transfer_from"] == str(adv_folder)
    assert info["checkpoint"] == str(pipeline.other_checkpoint)
    assert info["source_checkpoint"] == str(pipeline.checkpoint)
    assert metrics["n"] == len(ids) == len(preds)
    assert preds["image_id"].tolist() == ids and preds["label"].tolist() == source["label"].tolist()
    # scored by the other model, from the copied PNGs
    assert preds["clean_pred"].tolist() == _predict(pipeline.other_checkpoint, out, "clean", ids)
    assert preds["adv_pred"].tolist() == _predict(pipeline.other_checkpoint, out, "adv", ids)
    assert metrics["imperceptibility"]["linf_255"]["max"] <= 8  # the same images, the same budget


def test_transfer_onto_the_source_model_reproduces_its_predictions(pipeline, adv_folder: Path, tmp_path: Path) -> None:
    transfer(adv_folder, pipeline.checkpoint, tmp_path / "same")
    source = pd.read_csv(adv_folder / "predictions.csv")
    again = pd.read_csv(tmp_path / "same" / "predictions.csv")
    for column in ("clean_pred", "adv_pred"):
        assert again[column].tolist() == source[column].tolist()


def test_transfer_from_a_folder_that_is_not_an_attack_run(pipeline, tmp_path: Path) -> None:
    with pytest.raises(RunError, match="not an attack output folder"):
        transfer(tmp_path, pipeline.other_checkpoint, tmp_path / "out")


def test_sweep_writes_one_row_per_method_and_eps(pipeline, tmp_path: Path, caplog) -> None:
    cfg = AttackRunConfig(
        checkpoint=pipeline.checkpoint,
        out=tmp_path / "sweep",
        data=str(pipeline.data),
        target="nv",
        steps=3,
        limit=8,
        progress=False,
    )
    rows = sweep(cfg, methods=["fgsm", "pgd"], eps_values=["1/255", "2/255"])

    assert "does not say complete" not in caplog.text
    table = pd.read_csv(tmp_path / "sweep" / "sweep.csv")
    assert len(rows) == len(table) == 4
    assert sorted(zip(table["method"], table["eps"], strict=True)) == [
        ("fgsm", "1/255"),
        ("fgsm", "2/255"),
        ("pgd", "1/255"),
        ("pgd", "2/255"),
    ]
    expected = {"method", "eps", "eps_255", "protocol", "n", "accuracy_clean", "accuracy_adv"}
    expected |= {"worst_class_fooling", "psnr_mean", "ssim_mean", "linf_255_max", "folder"}
    assert expected <= set(table.columns)
    labels = set(pd.read_csv(tmp_path / "sweep" / table["folder"][0] / "predictions.csv")["label"])
    assert {f"fooling_{c}" for c in labels - {"nv"}} <= set(table.columns)
    assert (table["n"] == 7).all()  # limit 8 over 7 classes: one image per class
    assert (table["linf_255_max"] <= table["eps_255"]).all()
    assert table[["accuracy_clean", "accuracy_adv", "psnr_mean", "ssim_mean"]].notna().all().all()
    for folder in table["folder"]:
        assert run_complete(tmp_path / "sweep" / folder)
        assert (tmp_path / "sweep" / folder / "attack_metrics.json").is_file()
