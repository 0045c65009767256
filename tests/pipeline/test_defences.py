"""The defence pipeline: a budget only where the attack has one, scoring through the defence, 8-bit rounding."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from dermadv.data.classes import CLASSES
from dermadv.data.load import to_float
from dermadv.defences.transforms import parse_defence
from dermadv.errors import RunError
from dermadv.evaluation.attack_run import read_png
from dermadv.models.checkpoints import load_checkpoint
from dermadv.pipeline.attack import AttackRunConfig, attack_split
from dermadv.pipeline.defences import DetectConfig, detect_split, to_8bit
from dermadv.pipeline.evaluate import evaluate_checkpoint
from dermadv.runs import read_json


def _saved(folder: Path, kind: str) -> np.ndarray:
    ids = pd.read_csv(folder / "predictions.csv", dtype={"image_id": str})["image_id"]
    return np.stack([read_png(folder / "images" / kind / f"{i}.png") for i in ids]).astype(int)


def test_an_attack_without_a_budget_is_not_clipped_to_eps(pipeline, tmp_path: Path) -> None:
    out = tmp_path / "colour"
    cfg = AttackRunConfig(pipeline.checkpoint, out, method="colour", data=str(pipeline.data), eps="2/255", limit=7)
    attack_split(cfg)
    assert read_json(out / "attack.json")["eps"] is None
    # gains (1.1, 1.0, 0.9) move bright pixels by ~20 steps, far beyond the 2/255 that --eps would have allowed
    assert np.abs(_saved(out, "adv") - _saved(out, "clean")).max() > 10


def test_attack_run_scores_the_saved_images_through_the_defence(pipeline, tmp_path: Path) -> None:
    out = tmp_path / "adv"
    cfg = AttackRunConfig(pipeline.checkpoint, out, method="pgd", steps=2, data=str(pipeline.data), limit=7)
    attack_split(replace(cfg, defence="bits:1", adaptive=False))
    model, _ = load_checkpoint(pipeline.checkpoint)
    defended = parse_defence("bits:1")(model)
    preds = pd.read_csv(out / "predictions.csv")
    for kind in ("clean", "adv"):
        with torch.no_grad():
            expected = defended(to_float(torch.from_numpy(_saved(out, kind).astype(np.uint8)))).argmax(1)
        assert preds[f"{kind}_pred"].tolist() == [CLASSES[i] for i in expected]


def test_evaluate_through_a_defence_names_its_folder_after_it(pipeline, tmp_path: Path) -> None:
    for name in ("model.safetensors", "split.csv"):
        shutil.copy(pipeline.checkpoint.parent / name, tmp_path / name)
    plain = evaluate_checkpoint(tmp_path / "model.safetensors", data=str(pipeline.data))
    squeezed = evaluate_checkpoint(tmp_path / "model.safetensors", data=str(pipeline.data), defence="bits:1")
    assert read_json(tmp_path / "eval-test-bits1" / "manifest.json")["config"]["defence"] == "bits:1"
    assert read_json(tmp_path / "eval-test" / "manifest.json")["config"]["defence"] is None
    assert plain.n == squeezed.n


def test_to_8bit_keeps_the_budget_on_the_8bit_grid() -> None:
    clean = torch.randint(0, 256, (4, 3, 8, 8)).float() / 255
    adv = (clean + torch.empty_like(clean).uniform_(-0.1, 0.1)).clamp(0, 1)
    rounded = to_8bit(adv, clean, 2 / 255)
    steps = rounded * 255
    assert torch.allclose(steps, steps.round(), atol=1e-4)
    assert ((rounded - clean).abs() * 255).max() <= 2 + 1e-4


def test_detect_refuses_a_folder_that_is_not_an_attack_run(pipeline, tmp_path: Path) -> None:
    cfg = DetectConfig(pipeline.checkpoint, tmp_path / "out", data=str(pipeline.data), attack_folder=tmp_path)
    with pytest.raises(RunError, match="not an attack output folder"):
        detect_split(cfg)
    assert not (tmp_path / "out").exists()
