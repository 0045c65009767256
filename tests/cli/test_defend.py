"""``dermadv defend …`` and ``--defence`` as a user runs them: subprocesses on the synthetic set, tiny settings."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from dermadv.defences.results import CardResult, CertifyResult, DetectResult, TransformsResult, from_dict
from dermadv.runs import read_json, run_complete

SCRIPT = Path(sys.executable).parent / "dermadv"


def dermadv(*args: str | Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, OMP_NUM_THREADS="1")  # DERMADV_CACHE: the session's private cache (tests/conftest.py)
    return subprocess.run(
        [str(SCRIPT), *map(str, args)], capture_output=True, text=True, env=env, timeout=300, check=False
    )


def ok(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@pytest.fixture(scope="module")
def model_options(pipeline) -> list[str | Path]:
    return ["--checkpoint", pipeline.checkpoint, "--data", pipeline.data, "--limit", "14"]


def test_transforms(model_options, tmp_path: Path) -> None:
    out = tmp_path / "transforms"
    options = ["--defence", "bits:5", "--defence", "gauss:0.05", "--eps", "8/255", "--steps", "3"]
    printed = ok(dermadv("defend", "transforms", *model_options, "--out", out, *options, "--eot-samples", "2"))
    assert "bits:5" in printed and "gauss:0.05" in printed
    assert run_complete(out)
    result = from_dict(TransformsResult, read_json(out / "transforms.json"))
    assert [r.defence for r in result.rows] == ["none", "bits:5", "gauss:0.05"]
    assert result.rows[0].adaptive is None
    for row in result.rows[1:]:
        assert row.adaptive is not None
        for cls, plain in row.plain.fooled.items():  # the adaptive attacker also tries the plain attack
            assert row.adaptive.fooled[cls].n == plain.n and row.adaptive.fooled[cls].k >= plain.k


def test_certify(model_options, tmp_path: Path) -> None:
    out = tmp_path / "certify"
    printed = ok(dermadv("defend", "certify", *model_options, "--out", out, "--n", "40", "--n0", "8"))
    assert "certified accuracy" in printed
    result = from_dict(CertifyResult, read_json(out / "certify.json"))
    assert result.certified.radii == (0.0, 0.25, 0.5) and result.certified.n_samples == 40
    assert list(result.certified.accuracy) == sorted(result.certified.accuracy, reverse=True)
    certificates = pd.read_csv(out / "certificates.csv")
    assert len(certificates) == result.certified.n_images == result.abstained.n
    assert (certificates["prediction"] == "abstain").sum() == result.abstained.k


def test_detect(model_options, adv_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "detect"
    args = ["--attack-folder", adv_folder, "--steps", "3", "--fit-limit", "60"]
    printed = ok(dermadv("defend", "detect", *model_options, "--out", out, *args))  # threshold: 14 val images
    assert "TPR at 5% FPR" in printed
    result = from_dict(DetectResult, read_json(out / "detect.json"))
    assert [o.attack.split()[0] for o in result.outcomes] == ["advgan", "detector-aware"]
    n = len(pd.read_csv(adv_folder / "predictions.csv"))
    for outcome in result.outcomes:
        assert 0 <= outcome.scores.auc <= 1 and outcome.scores.n_adversarial == n
        assert outcome.fooled_undetected.k <= outcome.fooled.k
    assert len(pd.read_csv(out / "detect_scores.csv")) == n


def test_card(model_options, tmp_path: Path) -> None:
    out = tmp_path / "card"
    args = ["--defence", "jpeg:75", "--eps", "2/255,8/255", "--steps", "3"]
    printed = ok(dermadv("defend", "card", *model_options, "--out", out, *args))
    assert "≥ 99% moved at" in printed
    result = from_dict(CardResult, read_json(out / "card.json"))
    assert [(c.defence, c.adaptive) for c in result.cards] == [("none", False), ("jpeg:75", True)]
    for card in result.cards:
        assert card.card.target == "nv" and card.card.eps == (2 / 255, 8 / 255)
        assert "nv" not in [row.label for row in card.card.classes]
        for row in card.card.classes:
            if row.eps_99 is not None:
                assert row.eps_50 is not None and row.eps_50 <= row.eps_99
    assert set(pd.read_csv(out / "card.csv")["defence"]) == {"none", "jpeg:75"}


def test_attack_run_through_a_defence(model_options, tmp_path: Path) -> None:
    out = tmp_path / "adv"
    args = ["--method", "pgd", "--steps", "2", "--defence", "bits:5", "--no-adaptive"]
    ok(dermadv("attack", "run", *model_options, "--out", out, *args))
    info = read_json(out / "attack.json")
    assert info["defence"] == "bits:5" and info["adaptive"] is False


def test_an_unknown_defence_is_one_error_line(model_options, tmp_path: Path) -> None:
    proc = dermadv("defend", "transforms", *model_options, "--out", tmp_path / "out", "--defence", "blur:3")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "unknown defence 'blur:3'; write one of jpeg:75" in errors[0], proc.stderr


def test_options_left_out_keep_each_configs_default(monkeypatch, tmp_path: Path) -> None:
    """The config a defence command builds: repeated options as a tuple, an option left out at the default."""
    from typer.testing import CliRunner

    from dermadv import cli
    from dermadv.pipeline import defences

    built: list[Any] = []

    def capture(cfg: object) -> None:
        built.append(cfg)
        raise SystemExit(0)  # instead of the defence's work

    for name in ("transforms_split", "certify_split", "detect_split", "card_split"):
        monkeypatch.setattr(defences, name, capture)
    model = ["--model", tmp_path / "model.safetensors", "--out", tmp_path / "out"]
    for args in (
        ["transforms"],
        ["transforms", "--defence", "bits:5", "--defence", "jpeg:75", "--split", "val", "--limit", "7"],
        ["detect", "--attack-folder", tmp_path / "adv"],
        ["card", "--no-adaptive", "--seed", "3"],
    ):
        result = CliRunner().invoke(cli.app, ["defend", *map(str, args), *map(str, model)])
        assert result.exit_code == 0, result.output
    default, given, detect, card = built
    assert default == defences.TransformsConfig(tmp_path / "model.safetensors", tmp_path / "out")
    assert given.defences == ("bits:5", "jpeg:75") and (given.split, given.limit) == ("val", 7)
    assert (detect.split, detect.limit, detect.attack_folder) == ("val", 350, tmp_path / "adv")
    assert card.defences == () and card.adaptive is False and card.seed == 3
