"""``evaluate`` and ``attack run`` on images a checkpoint was trained on: refused by default,
counted when allowed, not checked for a checkpoint without the record."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest

from dermadv.errors import ConfigError
from dermadv.models.checkpoints import load_state, save_state
from dermadv.pipeline.attack import AttackRunConfig, attack_split
from dermadv.pipeline.evaluate import evaluate_checkpoint
from dermadv.runs import read_json


def _leaky_split(checkpoint: Path, out: Path) -> tuple[Path, int]:
    """The checkpoint's split with train and test swapped, and how many images its test part then holds."""
    split = pd.read_csv(checkpoint.parent / "split.csv", dtype=str, keep_default_na=False)
    split["split"] = split["split"].replace({"train": "test", "test": "train"})
    split.to_csv(out, index=False)
    return out, int((split["split"] == "test").sum())


def test_evaluate_refuses_training_images_counts_them_when_allowed(pipeline, tmp_path: Path) -> None:
    leaky, n = _leaky_split(pipeline.checkpoint, tmp_path / "leaky.csv")
    data = str(pipeline.data)
    with pytest.raises(ConfigError) as info:
        evaluate_checkpoint(pipeline.checkpoint, data=data, split_file=str(leaky), out=tmp_path / "refused")
    assert str(info.value).startswith(f"{n} of the {n} test images were in the classifier's training split")
    assert "--allow-training-images" in str(info.value) and not (tmp_path / "refused").exists()

    out = tmp_path / "allowed"
    evaluate_checkpoint(pipeline.checkpoint, data=data, split_file=str(leaky), out=out, allow_training_images=True)
    manifest = read_json(out / "manifest.json")
    assert manifest["training_images_evaluated"] == n and manifest["config"]["allow_training_images"] is True

    # --split train asks for training images by name; the checkpoint's own test split holds none of them
    train = evaluate_checkpoint(pipeline.checkpoint, data=data, split="train", out=tmp_path / "train")
    assert read_json(tmp_path / "train" / "manifest.json")["training_images_evaluated"] == train.n
    evaluate_checkpoint(pipeline.checkpoint, data=data, out=tmp_path / "test")
    assert read_json(tmp_path / "test" / "manifest.json")["training_images_evaluated"] == 0


def test_a_checkpoint_without_the_record_is_not_checked(pipeline, tmp_path: Path) -> None:
    """A checkpoint of an older dermadv records no training images: nothing to check it against."""
    state, meta = load_state(pipeline.checkpoint)
    old = tmp_path / "old" / "model.safetensors"
    old.parent.mkdir()
    save_state(old, state, {k: v for k, v in meta.items() if not k.startswith("training_images")})
    (old.parent / "split.csv").write_bytes((pipeline.checkpoint.parent / "split.csv").read_bytes())
    leaky, n = _leaky_split(pipeline.checkpoint, tmp_path / "leaky.csv")
    report = evaluate_checkpoint(old, data=str(pipeline.data), split_file=str(leaky), out=tmp_path / "eval")
    assert report.n == n and read_json(tmp_path / "eval" / "manifest.json")["training_images_evaluated"] == 0


def test_attack_run_refuses_training_images_and_records_them_when_allowed(pipeline, tmp_path: Path) -> None:
    leaky, _ = _leaky_split(pipeline.checkpoint, tmp_path / "leaky.csv")
    cfg = AttackRunConfig(
        pipeline.checkpoint,
        tmp_path / "adv",
        method="fgsm",
        data=str(pipeline.data),
        split_file=str(leaky),
        eps="2/255",
        limit=7,
        evaluate=False,
        progress=False,
    )
    with pytest.raises(ConfigError, match="7 of the 7 test images were in the classifier's training split"):
        attack_split(cfg)
    assert not (tmp_path / "adv").exists()
    attack_split(replace(cfg, allow_training_images=True))
    info = json.loads((tmp_path / "adv" / "attack.json").read_text())
    assert info["training_images_attacked"] == 7
