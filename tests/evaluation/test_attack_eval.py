"""The paper's evaluation on a hand-made attack output folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from rich.console import Console

from dermadv.errors import RunError
from dermadv.evaluation.attack_eval import evaluate_attack_folder, format_attack_table
from dermadv.evaluation.attack_metrics import AttackMetrics, attack_metrics
from dermadv.evaluation.stats import proportion_ci

CLASSES = ["akiec", "mel", "nv"]
# image_id: (label, clean_pred, adv_pred, inmem_adv_pred)
ROWS = {
    "a1": ("akiec", "akiec", "nv", "nv"),
    "a2": ("akiec", "akiec", "nv", "nv"),
    "a3": ("akiec", "mel", "nv", "nv"),
    "a4": ("akiec", "akiec", "akiec", "nv"),  # the saved PNG and the in-memory image disagree
    "m1": ("mel", "mel", "nv", "nv"),
    "m2": ("mel", "mel", "mel", "mel"),
    "m3": ("mel", "nv", "nv", "nv"),
    "n1": ("nv", "nv", "nv", "nv"),  # left unperturbed: identical images
    "n2": ("nv", "nv", "nv", "nv"),
    "n3": ("nv", "mel", "nv", "nv"),
}


def _make_folder(root: Path, *, target: str | None = "nv") -> Path:
    rng = np.random.default_rng(0)
    for sub in ("clean", "adv"):
        (root / "images" / sub).mkdir(parents=True)
    for k, image_id in enumerate(ROWS):
        clean = rng.integers(10, 240, (8, 8, 3), dtype=np.uint8)
        adv = clean.copy()
        if image_id == "a1":
            adv[2, 3, :2] += 3  # one pixel, two channels, +3: L∞ 3, L0 1
        elif image_id != "n1":
            adv[k % 8, (k + 1) % 8, 0] += 2
            adv[(k + 3) % 8, k % 8, 2] -= 1
        Image.fromarray(clean).save(root / "images" / "clean" / f"{image_id}.png")
        Image.fromarray(adv).save(root / "images" / "adv" / f"{image_id}.png")
    attack = {
        "method": "generator",
        "params": {},
        "eps": 2 / 255,
        "target": target,
        "target_index": CLASSES.index(target) if target else None,
        "classes": CLASSES,
        "image_size": [8, 8],
    }
    (root / "attack.json").write_text(json.dumps(attack))
    table = pd.DataFrame(
        [
            {"image_id": i, "label": r[0], "clean_pred": r[1], "adv_pred": r[2], "inmem_adv_pred": r[3]}
            for i, r in ROWS.items()
        ]
    )
    table.to_csv(root / "predictions.csv", index=False)
    return root


@pytest.fixture
def folder(tmp_path):
    return _make_folder(tmp_path / "adv-test")


def test_hand_computed_targeted_measures(folder):
    typed = evaluate_attack_folder(folder)
    assert typed.n == 10 and typed.accuracy_clean.estimate == pytest.approx(0.7)
    assert typed.mcnemar.p_value == pytest.approx(0.625) and typed.worst_class == "mel"
    m = typed.as_dict()  # the JSON form, as attack_metrics.json holds it
    assert m == json.loads((folder / "attack_metrics.json").read_text(), parse_constant=lambda _: None)
    assert m["n"] == 10
    assert m["accuracy_clean"]["estimate"] == pytest.approx(0.7)
    assert m["accuracy_adv"]["estimate"] == pytest.approx(0.5)
    assert m["mcnemar"]["table"] == [[4, 3], [1, 2]]
    assert m["mcnemar"]["exact"]["p_value"] == pytest.approx(0.625)
    assert m["mcnemar"]["chi2"]["statistic"] == pytest.approx(0.25)
    fr = {c: m["fooling_ratio"][c]["estimate"] for c in CLASSES}
    assert fr == pytest.approx({"akiec": 3 / 4, "mel": 2 / 3, "nv": 1.0})
    mel = m["fooling_ratio"]["mel"]
    expected = proportion_ci(2, 3, method="wald")
    assert (mel["low"], mel["high"]) == pytest.approx((expected.low, expected.high))
    assert m["worst_class_fooling_ratio"]["class"] == "mel"
    assert m["worst_class_fooling_ratio"]["estimate"] == pytest.approx(2 / 3)
    assert m["fooling_ratio_all"]["estimate"] == pytest.approx(0.8)
    assert m["targeted_success"]["estimate"] == pytest.approx(3 / 5)
    assert m["untargeted_success"]["estimate"] == pytest.approx(3 / 7)
    assert m["flip_rate"]["estimate"] == pytest.approx(5 / 10)
    assert m["confusion_adv"] == [[1, 0, 3], [0, 1, 2], [0, 0, 3]]
    assert m["inmem_agreement"] == {"n_differ": 1, "share_differ": pytest.approx(0.1)}
    imp = m["imperceptibility"]
    assert imp["linf_255"]["max"] == 3
    assert imp["psnr"]["n_identical"] == 1
    assert imp["l0"]["min"] == 0
    assert m["eps_255"] == pytest.approx(2.0)
    assert m["n_over_budget"] == 1  # a1 moved 3 steps under a 2-step budget
    assert m["per_class"]["akiec"]["linf_255_max"] == 3


def test_json_form_reads_back_to_the_same_measures(folder):
    metrics = evaluate_attack_folder(folder)
    again = AttackMetrics.from_dict(json.loads((folder / "attack_metrics.json").read_text()))
    assert again == metrics
    assert [(m.name, m.text) for m in again.measures()] == [(m.name, m.text) for m in metrics.measures()]
    names = [m.name for m in metrics.measures()]
    assert names[:3] == ["accuracy_clean", "accuracy_adv", "mcnemar_p"]
    assert {"fooling_ratio.mel", "worst_class_fooling_ratio", "inmem_n_differ", "psnr_mean"} <= set(names)
    pointers = {m.name: m.pointer for m in metrics.measures()}
    assert pointers["mcnemar_p"] == ("mcnemar", "exact", "p_value")
    assert pointers["fooling_ratio.mel"] == ("fooling_ratio", "mel")


def test_definitions_are_written_in_words(folder):
    m = evaluate_attack_folder(folder).as_dict()
    keys = {
        "accuracy_clean", "accuracy_adv", "mcnemar", "fooling_ratio", "worst_class_fooling_ratio",
        "targeted_success", "untargeted_success", "flip_rate", "confusion_adv", "inmem_agreement",
        "linf_255", "l2", "l0", "psnr", "ssim",
    }  # fmt: skip
    assert keys <= set(m["definitions"])
    assert "predicted as the target class 'nv'" in m["definitions"]["fooling_ratio"]
    assert "McNemar (1947)" in m["definitions"]["mcnemar"]
    saved = json.loads((folder / "attack_metrics.json").read_text())
    assert saved["definitions"] == m["definitions"]
    assert saved["attack"]["method"] == "generator"


def test_untargeted_fooling_is_misclassification(tmp_path):
    folder = _make_folder(tmp_path / "untargeted", target=None)
    m = evaluate_attack_folder(folder).as_dict()
    fr = {c: m["fooling_ratio"][c]["estimate"] for c in CLASSES}
    assert fr == pytest.approx({"akiec": 3 / 4, "mel": 2 / 3, "nv": 0.0})
    assert m["worst_class_fooling_ratio"]["class"] == "nv"
    assert m["targeted_success"] is None
    assert "untargeted" in m["definitions"]["fooling_ratio"]


def test_written_files(folder):
    evaluate_attack_folder(folder)
    per_class = pd.read_csv(folder / "attack_metrics.csv")
    assert per_class["class"].tolist() == CLASSES
    assert per_class["n"].tolist() == [4, 3, 3]
    assert per_class["fooling_ratio"].tolist() == pytest.approx([3 / 4, 2 / 3, 1.0])
    assert {"fooling_ratio_low", "fooling_ratio_high", "accuracy_clean", "accuracy_adv", "psnr_mean"} <= set(
        per_class.columns
    )
    per_image = pd.read_csv(folder / "per_image.csv", dtype={"image_id": str})
    assert per_image.columns.tolist() == [
        "image_id", "label", "clean_pred", "adv_pred", "linf_255", "l2", "l0", "psnr", "ssim",
    ]  # fmt: skip
    row = per_image.set_index("image_id")
    assert (row.loc["a1", "linf_255"], row.loc["a1", "l0"]) == (3, 1)
    assert row.loc["a1", "l2"] == pytest.approx(np.sqrt(18) / 255)
    assert np.isinf(row.loc["n1", "psnr"]) and row.loc["n1", "l0"] == 0
    assert row.loc["a4", "adv_pred"] == "akiec"
    assert not list(folder.glob(".*.tmp"))


def test_no_write_leaves_folder_untouched(folder):
    evaluate_attack_folder(folder, write=False)
    assert not (folder / "attack_metrics.json").exists()


def test_table_is_the_papers_table(folder):
    console = Console(record=True, width=160)
    console.print(format_attack_table(evaluate_attack_folder(folder)))
    text = console.export_text()
    assert "accuracy, clean images" in text and "70.0%" in text
    assert "P = 0.6250" in text
    assert "fooling ratio, mel" in text and "66.7%" in text
    assert "worst-class fooling ratio (mel)" in text


def test_no_discordant_pairs_gives_p_one():
    labels = np.array([0, 1, 2, 2])
    m = attack_metrics(labels, labels, labels, classes=CLASSES, target="nv").as_dict()
    assert m["mcnemar"]["chi2"] == {"statistic": None, "p_value": 1.0}
    assert m["mcnemar"]["exact"]["p_value"] == pytest.approx(1.0)
    assert "imperceptibility" not in m  # no sizes measured, no summary


@pytest.mark.parametrize("missing", ["attack.json", "predictions.csv"])
def test_missing_file_names_the_file_and_the_fix(folder, missing):
    (folder / missing).unlink()
    with pytest.raises(RunError, match=rf"{missing}.*run `dermadv attack run") as err:
        evaluate_attack_folder(folder)
    assert "\n" not in str(err.value)


def test_missing_png_and_missing_folder(folder, tmp_path):
    (folder / "images" / "adv" / "m2.png").unlink()
    with pytest.raises(RunError, match=r"1 image\(s\).*first: m2.*dermadv attack run"):
        evaluate_attack_folder(folder)
    with pytest.raises(RunError, match="does not exist"):
        evaluate_attack_folder(tmp_path / "nowhere")


def test_foreign_class_codes_and_columns_are_refused(folder):
    table = pd.read_csv(folder / "predictions.csv")
    table.loc[0, "adv_pred"] = "bcc"
    table.to_csv(folder / "predictions.csv", index=False)
    with pytest.raises(RunError, match="adv_pred has class code"):
        evaluate_attack_folder(folder)
    table.drop(columns=["clean_pred"]).to_csv(folder / "predictions.csv", index=False)
    with pytest.raises(RunError, match="lacks column"):
        evaluate_attack_folder(folder)
