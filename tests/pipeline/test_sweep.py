"""``attack sweep`` and the sweep of ``reproduce``: one row per method, budget and protocol, one folder naming."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest

from dermadv.errors import ConfigError, RunError
from dermadv.pipeline.attack import AttackRunConfig
from dermadv.pipeline.sweep import attack_sweep, plan_sweep, sweep
from dermadv.runs import read_json, run_complete


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


def test_attack_sweep_is_a_run_folder_of_one_classifier(pipeline, tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    cfg = AttackRunConfig(
        checkpoint=pipeline.checkpoint, out=out, data=str(pipeline.data), target="nv", limit=7, progress=False
    )
    attack_sweep(cfg, methods=["fgsm"], eps_values=["2/255"])
    manifest = read_json(out / "manifest.json")
    assert manifest["command"] == "attack sweep" and manifest["status"] == "complete"
    assert manifest["config"]["methods"] == ["fgsm"] and manifest["classifier_fingerprint"]
    # more budgets for the same classifier: the same run, one more folder
    attack_sweep(cfg, methods=["fgsm"], eps_values=["4/255"])
    assert len(pd.read_csv(out / "sweep.csv")) == 2
    # another classifier would mix two models' rows in one sweep.csv
    before = (out / "manifest.json").read_bytes()
    with pytest.raises(RunError, match="classifier: '[0-9a-f]+' there, '[0-9a-f]+' now"):
        attack_sweep(replace(cfg, checkpoint=pipeline.other_checkpoint), methods=["fgsm"], eps_values=["2/255"])
    assert (out / "manifest.json").read_bytes() == before


def test_a_sweep_with_nothing_to_run_is_refused(tmp_path: Path, caplog) -> None:
    """advgan without a generator must fail, not run nothing and exit 0."""
    with pytest.raises(ConfigError, match="--methods advgan has no generator to run .no --generators folder given."):
        plan_sweep(["advgan"], ["2/255"], None)
    with pytest.raises(ConfigError, match=f"has no generator to run in {tmp_path}"):
        plan_sweep(["pgd", "advgan"], ["2/255"], tmp_path)  # pgd alone would silently drop the method asked for
    fitted = tmp_path / "held-out-eps2_255" / "generator.safetensors"
    fitted.parent.mkdir()
    fitted.touch()
    planned = plan_sweep(["advgan", "pgd"], ["2/255", "4/255"], tmp_path)
    assert planned == [
        ("advgan", "2/255", "held-out", fitted),
        ("pgd", "2/255", None, None),
        ("pgd", "4/255", None, None),
    ]
    assert "no generator fitted at eps 4/255" in caplog.text
