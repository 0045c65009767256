"""Classification metrics against scikit-learn on random predictions."""

from __future__ import annotations

from dataclasses import fields

import numpy as np
import pandas as pd
import pytest
from rich.console import Console
from sklearn.metrics import (
    auc,
    balanced_accuracy_score,
    confusion_matrix,
    precision_score,
    recall_score,
    roc_auc_score,
)
from statsmodels.stats.proportion import proportion_confint

from dermadv.data.classes import CLASSES
from dermadv.errors import DataError
from dermadv.evaluation.metrics import (
    ClassificationReport,
    classification_metrics,
    format_classification_table,
    roc_curves,
    write_classification_outputs,
)
from dermadv.runs import read_json, write_json


def _random_case(seed: int, n: int = 400, num_classes: int = 7) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, n)
    labels[:num_classes] = np.arange(num_classes)  # every class present
    logits = rng.normal(size=(n, num_classes))
    logits[np.arange(n), labels] += rng.uniform(0, 2.5)  # better than chance, not perfect
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return labels, probs


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_equal_sklearn(seed):
    labels, probs = _random_case(seed)
    preds = probs.argmax(1)
    report = classification_metrics(labels, probs, classes=CLASSES)
    ks = np.arange(len(CLASSES))

    np.testing.assert_array_equal(report.confusion, confusion_matrix(labels, preds, labels=ks))
    assert report.balanced_accuracy == pytest.approx(balanced_accuracy_score(labels, preds))
    k = int((preds == labels).sum())
    low, high = proportion_confint(k, len(labels), method="normal")
    assert (report.accuracy.estimate, report.accuracy.low, report.accuracy.high) == pytest.approx((k / 400, low, high))

    sens = recall_score(labels, preds, labels=ks, average=None)
    ppv = precision_score(labels, preds, labels=ks, average=None, zero_division=np.nan)
    per_class_auc = roc_auc_score(labels, probs, multi_class="ovr", average=None, labels=ks)
    for i, c in enumerate(CLASSES):
        assert report.sensitivity[c] == pytest.approx(sens[i])
        assert report.ppv[c] == pytest.approx(ppv[i], nan_ok=True)
        assert report.auc[c] == pytest.approx(per_class_auc[i])
        negatives = labels != i
        assert report.specificity[c] == pytest.approx(np.mean(preds[negatives] != i))
        assert report.support[c] == int((labels == i).sum())
    assert report.macro_auc == pytest.approx(roc_auc_score(labels, probs, multi_class="ovr", average="macro"))


def test_absent_class_gives_nan_auc_and_says_so():
    labels, probs = _random_case(3)
    keep = labels != CLASSES.index("df")
    labels, probs = labels[keep], probs[keep]
    report = classification_metrics(labels, probs, classes=CLASSES)
    assert np.isnan(report.auc["df"])
    assert report.support["df"] == 0
    assert any("df" in note for note in report.notes)
    present = [report.auc[c] for c in CLASSES if c != "df"]
    assert report.macro_auc == pytest.approx(np.mean(present))
    with pytest.warns(UserWarning):  # sklearn warns about predicted classes absent from y_true
        ref = balanced_accuracy_score(labels, probs.argmax(1))
    assert report.balanced_accuracy == pytest.approx(ref)
    assert report.as_dict()["per_class"]["df"]["auc"] != report.as_dict()["per_class"]["df"]["auc"]  # NaN


def test_dx_code_labels_equal_indices():
    labels, probs = _random_case(4)
    by_code = classification_metrics(np.array([CLASSES[i] for i in labels]), probs)
    by_index = classification_metrics(labels, probs)
    np.testing.assert_array_equal(by_code.confusion, by_index.confusion)


@pytest.mark.parametrize(
    ("labels", "probs", "match"),
    [
        (np.zeros(5, int), np.full((5, 3), 1 / 3), "probs must be N×C"),
        (np.zeros(5, int), np.full((4, 7), 1 / 7), "probs must be N×C"),
        (np.full(5, 9), np.full((5, 7), 1 / 7), "class indices"),
        (np.zeros((5, 1), int), np.full((5, 7), 1 / 7), "1-D"),
    ],
)
def test_bad_inputs_raise_data_error(labels, probs, match):
    with pytest.raises(DataError, match=match):
        classification_metrics(labels, probs)


def test_roc_curves_integrate_to_auc():
    labels, probs = _random_case(5)
    report = classification_metrics(labels, probs)
    curves = roc_curves(labels, probs)
    assert set(curves) == set(CLASSES)
    for c, (fpr, tpr) in curves.items():
        assert auc(fpr, tpr) == pytest.approx(report.auc[c])
    keep = labels != 0
    assert "akiec" not in roc_curves(labels[keep], probs[keep])


def test_write_outputs(tmp_path):
    labels, probs = _random_case(6, n=50)
    ids = [f"ISIC_{i:07d}" for i in range(50)]
    report = classification_metrics(labels, probs)
    write_classification_outputs(report, tmp_path, image_ids=ids, labels=labels, probs=probs, classes=CLASSES)

    metrics = read_json(tmp_path / "metrics.json")
    assert metrics["accuracy"]["estimate"] == pytest.approx(report.accuracy.estimate)
    assert set(metrics["definitions"]) >= {"accuracy", "balanced_accuracy", "auc", "macro_auc"}
    per_class = pd.read_csv(tmp_path / "per_class.csv")
    assert per_class["class"].tolist() == list(CLASSES)
    assert per_class["support"].sum() == 50
    confusion = pd.read_csv(tmp_path / "confusion.csv", index_col="true")
    np.testing.assert_array_equal(confusion.to_numpy(), report.confusion)
    preds = pd.read_csv(tmp_path / "predictions.csv", dtype={"image_id": str})
    assert preds.columns.tolist() == ["image_id", "label", "pred", *[f"prob_{c}" for c in CLASSES]]
    assert preds["image_id"].tolist() == ids
    assert preds["label"].tolist() == [CLASSES[i] for i in labels]
    assert preds["pred"].tolist() == [CLASSES[i] for i in probs.argmax(1)]
    np.testing.assert_allclose(preds[[f"prob_{c}" for c in CLASSES]].to_numpy(), probs)
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temporaries

    with pytest.raises(DataError, match="image_ids"):
        write_classification_outputs(report, tmp_path, image_ids=ids[:3], labels=labels, probs=probs)


def test_table_shows_every_class_and_the_accuracy():
    labels, probs = _random_case(7)
    report = classification_metrics(labels, probs)
    console = Console(record=True, width=200)
    console.print(format_classification_table(report))
    text = console.export_text()
    for c in CLASSES:
        assert c in text
    assert f"{report.accuracy.estimate * 100:.1f}%" in text
    assert "macro" in text


@pytest.mark.parametrize("absent", [None, "df"])
def test_from_dict_reads_back_what_as_dict_wrote(tmp_path, absent):
    """Through a JSON file, where NaN (the absent class's AUC, PPV and sensitivity) is written as null."""
    labels, probs = _random_case(8)
    if absent is not None:
        keep = labels != CLASSES.index(absent)
        labels, probs = labels[keep], probs[keep]
    report = classification_metrics(labels, probs, classes=CLASSES)
    write_json(tmp_path / "metrics.json", report.as_dict())
    back = ClassificationReport.from_dict(read_json(tmp_path / "metrics.json"))
    for f in fields(ClassificationReport):
        np.testing.assert_equal(getattr(back, f.name), getattr(report, f.name), err_msg=f.name)  # NaN equals NaN
    assert isinstance(back.confusion, np.ndarray) and back.confusion.dtype.kind == "i"
    assert back.accuracy == report.accuracy and back.as_dict().keys() == report.as_dict().keys()
    if absent is not None:
        assert np.isnan(back.auc[absent]) and np.isnan(back.sensitivity[absent]) and back.support[absent] == 0
