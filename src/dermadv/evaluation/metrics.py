"""Classification metrics for a labelled test set: accuracy with CI, per-class rates, ROC AUC, confusion."""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.table import Table
from sklearn.metrics import confusion_matrix, roc_auc_score, roc_curve

from dermadv.data.classes import CLASSES, class_index
from dermadv.errors import DataError
from dermadv.evaluation.stats import DEFAULT_CI, CIMethod, format_interval, proportion_ci
from dermadv.proportions import Proportion
from dermadv.runs import write_csv, write_json


@dataclass(frozen=True)
class ClassificationReport:
    """Metrics of one prediction set. Undefined per-class values (no support, no predictions) are NaN."""

    classes: tuple[str, ...]
    n: int
    accuracy: Proportion
    balanced_accuracy: float
    sensitivity: dict[str, float]
    specificity: dict[str, float]
    ppv: dict[str, float]
    support: dict[str, int]
    auc: dict[str, float]
    macro_auc: float
    confusion: np.ndarray  # rows: true class, columns: predicted class (counts)
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready dict (NaN becomes null through :func:`dermadv.runs.write_json`)."""
        return {
            "n": self.n,
            "classes": list(self.classes),
            "accuracy": self.accuracy.to_dict(form="interval"),
            "balanced_accuracy": self.balanced_accuracy,
            "macro_auc": self.macro_auc,
            "per_class": {
                c: {
                    "support": self.support[c],
                    "sensitivity": self.sensitivity[c],
                    "specificity": self.specificity[c],
                    "ppv": self.ppv[c],
                    "auc": self.auc[c],
                }
                for c in self.classes
            },
            "confusion": {"rows": "true class", "columns": "predicted class", "matrix": self.confusion.tolist()},
            "definitions": {
                "accuracy": "share of images whose arg-max class equals the true class",
                "balanced_accuracy": "mean sensitivity over the classes present in the labels",
                "sensitivity": "per class: TP / (TP + FN) (recall)",
                "specificity": "per class: TN / (TN + FP), one class against the rest",
                "ppv": "per class: TP / (TP + FP) (precision); NaN when the class is never predicted",
                "auc": "one-vs-rest ROC AUC of the class probability; NaN when the class is absent or is every label",
                "macro_auc": "unweighted mean of the defined per-class AUCs",
            },
            "notes": list(self.notes),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ClassificationReport:
        """Read :meth:`as_dict` back (``metrics.json``): null becomes NaN, the confusion matrix an array again."""
        classes = tuple(str(c) for c in d["classes"])
        per_class = d["per_class"]

        def rates(key: str) -> dict[str, float]:
            return {c: _number(per_class[c][key]) for c in classes}

        return cls(
            classes=classes,
            n=int(d["n"]),
            accuracy=Proportion.from_dict(d["accuracy"]),
            balanced_accuracy=_number(d["balanced_accuracy"]),
            sensitivity=rates("sensitivity"),
            specificity=rates("specificity"),
            ppv=rates("ppv"),
            support={c: int(per_class[c]["support"]) for c in classes},
            auc=rates("auc"),
            macro_auc=_number(d["macro_auc"]),
            confusion=np.array(d["confusion"]["matrix"], dtype=np.int64).reshape(len(classes), len(classes)),
            notes=[str(note) for note in d.get("notes") or []],
        )


def _number(value: Any) -> float:
    """A float read from JSON, where an undefined value (NaN) was written as null."""
    return math.nan if value is None else float(value)


def _check_inputs(labels: np.ndarray, probs: np.ndarray, classes: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(labels)
    probs = np.asarray(probs, dtype=np.float64)
    if labels.dtype.kind in "UOS":  # dx codes rather than indices
        labels = np.array([class_index(str(c), classes) for c in labels], dtype=np.int64)
    if labels.ndim != 1:
        raise DataError(f"labels must be 1-D (one class index per image); got shape {labels.shape}")
    if probs.ndim != 2 or probs.shape != (labels.shape[0], len(classes)):
        raise DataError(
            f"probs must be N×C = {labels.shape[0]}×{len(classes)} (one column per class in `classes`); "
            f"got shape {probs.shape}"
        )
    if labels.size and (labels.min() < 0 or labels.max() >= len(classes)):
        raise DataError(f"labels must be class indices in [0, {len(classes) - 1}]; got {labels.min()}..{labels.max()}")
    return labels.astype(np.int64), probs


def _ratio(num: float, den: float) -> float:
    return float(num / den) if den > 0 else float("nan")


def classification_metrics(
    labels: np.ndarray,
    probs: np.ndarray,
    *,
    classes: Sequence[str] = CLASSES,
    ci_method: CIMethod = DEFAULT_CI,
) -> ClassificationReport:
    """Accuracy (with a 95% CI), balanced accuracy, per-class rates, one-vs-rest ROC AUC and confusion.

    Args:
        labels: true class indices (or dx codes), shape N.
        probs: class probabilities (or any monotone scores), shape N×C, columns in ``classes`` order.
        classes: the class codes, in column order.
        ci_method: interval for accuracy (Wald, as in the paper, by default).
    """
    classes = tuple(classes)
    labels, probs = _check_inputs(labels, probs, classes)
    num_classes = len(classes)
    preds = probs.argmax(axis=1)
    cm = confusion_matrix(labels, preds, labels=np.arange(num_classes))
    n = int(cm.sum())
    tp = np.diag(cm).astype(float)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    fn = support - tp
    fp = predicted - tp
    tn = n - tp - fn - fp

    sensitivity = {c: _ratio(tp[i], support[i]) for i, c in enumerate(classes)}
    specificity = {c: _ratio(tn[i], tn[i] + fp[i]) for i, c in enumerate(classes)}
    ppv = {c: _ratio(tp[i], predicted[i]) for i, c in enumerate(classes)}
    present = [c for i, c in enumerate(classes) if support[i] > 0]
    balanced = float(np.mean([sensitivity[c] for c in present])) if present else float("nan")

    notes: list[str] = []
    auc: dict[str, float] = {}
    for i, c in enumerate(classes):
        positives = labels == i
        if positives.all() or not positives.any():
            auc[c] = float("nan")
            notes.append(f"AUC for {c} is undefined: {'every' if positives.all() else 'no'} test image is {c}")
        else:
            auc[c] = float(roc_auc_score(positives, probs[:, i]))
    defined = [v for v in auc.values() if not np.isnan(v)]
    macro_auc = float(np.mean(defined)) if defined else float("nan")
    if len(defined) < num_classes and defined:
        notes.append(f"macro AUC averages the {len(defined)} classes with a defined AUC")
    absent = [c for c in classes if c not in present]
    if absent:
        notes.append(f"absent from the labels (excluded from balanced accuracy): {', '.join(absent)}")

    return ClassificationReport(
        classes=classes,
        n=n,
        accuracy=proportion_ci(int(tp.sum()), n, method=ci_method),
        balanced_accuracy=balanced,
        sensitivity=sensitivity,
        specificity=specificity,
        ppv=ppv,
        support={c: int(support[i]) for i, c in enumerate(classes)},
        auc=auc,
        macro_auc=macro_auc,
        confusion=cm,
        notes=notes,
    )


def roc_curves(
    labels: np.ndarray, probs: np.ndarray, *, classes: Sequence[str] = CLASSES
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """One-vs-rest ROC curve ``(fpr, tpr)`` per class; classes without both positives and negatives are left out."""
    classes = tuple(classes)
    labels, probs = _check_inputs(labels, probs, classes)
    curves: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for i, c in enumerate(classes):
        positives = labels == i
        if positives.all() or not positives.any():
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fpr, tpr, _ = roc_curve(positives, probs[:, i])
        curves[c] = (fpr, tpr)
    return curves


def write_classification_outputs(
    report: ClassificationReport,
    out_dir: str | Path,
    *,
    image_ids: Sequence[str],
    labels: np.ndarray,
    probs: np.ndarray,
    classes: Sequence[str] = CLASSES,
) -> None:
    """Write ``metrics.json``, ``per_class.csv``, ``confusion.csv`` and ``predictions.csv`` (atomically)."""
    out = Path(out_dir)
    classes = tuple(classes)
    labels, probs = _check_inputs(labels, probs, classes)
    if len(image_ids) != labels.shape[0]:
        raise DataError(f"image_ids has {len(image_ids)} entries but labels has {labels.shape[0]}")
    write_json(out / "metrics.json", report.as_dict())
    write_csv(
        out / "per_class.csv",
        [
            {
                "class": c,
                "support": report.support[c],
                "sensitivity": report.sensitivity[c],
                "specificity": report.specificity[c],
                "ppv": report.ppv[c],
                "auc": report.auc[c],
            }
            for c in classes
        ],
        fieldnames=["class", "support", "sensitivity", "specificity", "ppv", "auc"],
    )
    write_csv(
        out / "confusion.csv",
        [{"true": c, **{p: int(report.confusion[i, j]) for j, p in enumerate(classes)}} for i, c in enumerate(classes)],
        fieldnames=["true", *classes],
    )
    preds = probs.argmax(axis=1)
    prob_cols = [f"prob_{c}" for c in classes]
    rows = [
        {
            "image_id": image_ids[k],
            "label": classes[labels[k]],
            "pred": classes[preds[k]],
            **{col: float(probs[k, j]) for j, col in enumerate(prob_cols)},
        }
        for k in range(labels.shape[0])
    ]
    write_csv(out / "predictions.csv", rows, fieldnames=["image_id", "label", "pred", *prob_cols])


def _fmt(x: float, digits: int = 3) -> str:
    return "n/a" if np.isnan(x) else f"{x:.{digits}f}"


def format_classification_table(report: ClassificationReport) -> Table:
    """A rich table: accuracy, balanced accuracy and macro AUC in the title, one row per class."""
    table = Table(
        title=(
            f"accuracy {format_interval(report.accuracy)} [{report.accuracy.method}], "
            f"balanced accuracy {_fmt(report.balanced_accuracy)}, macro AUC {_fmt(report.macro_auc)}, n = {report.n}"
        )
    )
    for name in ("class", "n", "sensitivity", "specificity", "PPV", "AUC"):
        table.add_column(name, justify="left" if name == "class" else "right")
    for c in report.classes:
        table.add_row(
            c,
            str(report.support[c]),
            _fmt(report.sensitivity[c]),
            _fmt(report.specificity[c]),
            _fmt(report.ppv[c]),
            _fmt(report.auc[c]),
        )
    table.add_row("macro", str(report.n), _fmt(report.balanced_accuracy), "", "", _fmt(report.macro_auc), style="bold")
    return table
