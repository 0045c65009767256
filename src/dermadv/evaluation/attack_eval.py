"""The paper's evaluation of one attack output folder: accuracy, McNemar, fooling ratios, imperceptibility."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image
from rich.table import Table

from dermadv.data.classes import CLASSES
from dermadv.errors import RunError
from dermadv.evaluation.imperceptibility import MEASURES, PerturbationSizes, measure_perturbations, summarise_sizes
from dermadv.evaluation.stats import (
    DEFAULT_CI,
    CIMethod,
    Interval,
    format_interval,
    format_p_value,
    mcnemar_test,
    proportion_ci,
)
from dermadv.runs import read_json, write_csv, write_json

log = logging.getLogger(__name__)

_REQUIRED_COLUMNS = ("image_id", "label", "clean_pred", "adv_pred")
_RUN_FIRST = "run `dermadv attack run --out {folder}` first"


def _definitions(target: str | None, ci_method: str) -> dict[str, str]:
    if target is None:
        fooling = (
            "untargeted attack (no target): per true class, the share of that class's adversarial images "
            "whose prediction differs from the true class"
        )
        targeted = "not applicable: the attack has no target class"
    else:
        fooling = (
            f"per true class, the share of that class's adversarial images predicted as the target class "
            f"{target!r} (for the target class itself: the share still predicted as {target!r})"
        )
        targeted = (
            f"among images correctly classified when clean and whose true class is not {target!r}: "
            f"the share of adversarial images predicted as {target!r}"
        )
    return {
        "scoring": "all predictions are made on the saved 8-bit PNGs (images/clean, images/adv)",
        "intervals": f"95% {ci_method} intervals for proportions",
        "accuracy_clean": "share of clean images predicted as their true class",
        "accuracy_adv": "share of adversarial images predicted as their true class",
        "mcnemar": (
            "McNemar (1947) test of paired per-image correctness, clean vs adversarial; table rows: clean "
            "correct / wrong, columns: adversarial correct / wrong; 'exact' is the two-sided binomial test on the "
            "discordant pairs, 'chi2' the chi-square with continuity correction (Edwards 1948); "
            "with no discordant pairs the chi-square is undefined and reported as statistic null, P = 1"
        ),
        "fooling_ratio": fooling,
        "fooling_ratio_all": "the fooling ratio over all images, whatever their true class",
        "worst_class_fooling_ratio": "the smallest per-class fooling ratio among classes with at least one image",
        "targeted_success": targeted,
        "untargeted_success": "among images correctly classified when clean: the share misclassified after the attack",
        "flip_rate": "share of images whose adversarial prediction differs from their clean prediction",
        "confusion_adv": "counts; rows: true class, columns: prediction on the adversarial image",
        "confusion_clean": "counts; rows: true class, columns: prediction on the clean image",
        "inmem_agreement": (
            "images whose prediction on the saved 8-bit adversarial PNG differs from the prediction on the "
            "in-memory (floating-point) adversarial image"
        ),
        "linf_255": "max absolute change of any pixel channel, in 8-bit steps (1/255)",
        "l2": "Euclidean norm of adv - clean over all H×W×3 values on the [0, 1] scale",
        "l0": "number of pixel positions where at least one channel changed",
        "psnr": "10·log10(255² / MSE) in dB; infinite for identical images, which summaries leave out (n_identical)",
        "ssim": "structural similarity (Wang et al. 2004), scikit-image, 7×7 window, averaged over channels",
        "n_over_budget": "images whose L∞ exceeds eps by more than half an 8-bit step (rounding)",
    }


def _eps_255(eps: Any) -> float | None:
    if eps is None:
        return None
    try:
        return float(Fraction(str(eps))) * 255.0 if isinstance(eps, str) else float(eps) * 255.0
    except (ValueError, ZeroDivisionError):
        return None


def _mcnemar(correct_clean: np.ndarray, correct_adv: np.ndarray) -> dict[str, Any]:
    exact = mcnemar_test(correct_clean, correct_adv, exact=True)
    table = exact.table
    discordant = table[0][1] + table[1][0]
    if discordant == 0:
        chi2: dict[str, Any] = {"statistic": None, "p_value": 1.0}
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            res = mcnemar_test(correct_clean, correct_adv, exact=False)
        chi2 = {"statistic": res.statistic, "p_value": res.p_value}
    return {
        "table": table,
        "table_rows": ["clean correct", "clean wrong"],
        "table_columns": ["adv correct", "adv wrong"],
        "exact": {"statistic": exact.statistic, "p_value": exact.p_value},
        "chi2": chi2,
    }


def _mean_finite(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else float("nan")


def attack_metrics(
    labels: np.ndarray,
    clean_preds: np.ndarray,
    adv_preds: np.ndarray,
    *,
    classes: Sequence[str] = CLASSES,
    target: str | None,
    sizes: PerturbationSizes | None = None,
    inmem_adv_preds: np.ndarray | None = None,
    eps: float | str | None = None,
    ci_method: CIMethod = DEFAULT_CI,
) -> dict[str, Any]:
    """The paper's measures for one attacked set, from class indices; see the returned ``definitions``.

    Args:
        labels, clean_preds, adv_preds: true class and predictions on the clean and adversarial images (indices).
        target: the target dx code, or ``None`` for an untargeted attack.
        sizes: per-image perturbation sizes (:func:`measure_perturbations`), if measured.
        inmem_adv_preds: predictions on the in-memory adversarial images, to compare with the saved ones.
        eps: the attack's L∞ budget on the [0, 1] scale, to count images over budget.
    """
    classes = tuple(classes)
    labels, clean_preds, adv_preds = (np.asarray(a, dtype=np.int64) for a in (labels, clean_preds, adv_preds))
    n = int(labels.shape[0])
    target_index = classes.index(target) if target is not None else None
    correct_clean = clean_preds == labels
    correct_adv = adv_preds == labels
    fooled = adv_preds == target_index if target_index is not None else adv_preds != labels

    def ci(k: int | np.integer, m: int | np.integer) -> Interval:
        return proportion_ci(int(k), int(m), method=ci_method)

    per_class: dict[str, dict[str, Any]] = {}
    for i, c in enumerate(classes):
        mask = labels == i
        m = int(mask.sum())
        row: dict[str, Any] = {
            "n": m,
            "accuracy_clean": ci(correct_clean[mask].sum(), m).as_dict(),
            "accuracy_adv": ci(correct_adv[mask].sum(), m).as_dict(),
            "fooling_ratio": ci(fooled[mask].sum(), m).as_dict(),
        }
        if sizes is not None:
            row.update(
                linf_255_max=int(sizes.linf_255[mask].max()) if m else None,
                l2_mean=_mean_finite(sizes.l2[mask]),
                l0_mean=_mean_finite(sizes.l0[mask].astype(np.float64)),
                psnr_mean=_mean_finite(sizes.psnr[mask]),
                ssim_mean=_mean_finite(sizes.ssim[mask]),
            )
        per_class[c] = row

    present = [c for c in classes if per_class[c]["n"] > 0]
    worst = min(present, key=lambda c: per_class[c]["fooling_ratio"]["estimate"]) if present else None
    if target_index is not None:
        eligible = correct_clean & (labels != target_index)
        targeted: dict[str, Any] | None = ci((adv_preds[eligible] == target_index).sum(), eligible.sum()).as_dict()
    else:
        targeted = None
    num_classes = len(classes)
    confusion_adv = np.zeros((num_classes, num_classes), dtype=np.int64)
    confusion_clean = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(confusion_adv, (labels, adv_preds), 1)
    np.add.at(confusion_clean, (labels, clean_preds), 1)

    metrics: dict[str, Any] = {
        "n": n,
        "classes": list(classes),
        "target": target,
        "targeted": target is not None,
        "ci_method": ci_method,
        "accuracy_clean": ci(correct_clean.sum(), n).as_dict(),
        "accuracy_adv": ci(correct_adv.sum(), n).as_dict(),
        "mcnemar": _mcnemar(correct_clean, correct_adv),
        "fooling_ratio": {c: per_class[c]["fooling_ratio"] for c in classes},
        "fooling_ratio_all": ci(fooled.sum(), n).as_dict(),
        "worst_class_fooling_ratio": (
            {"class": worst, **per_class[worst]["fooling_ratio"]} if worst is not None else None
        ),
        "targeted_success": targeted,
        "untargeted_success": ci((~correct_adv[correct_clean]).sum(), correct_clean.sum()).as_dict(),
        "flip_rate": ci((adv_preds != clean_preds).sum(), n).as_dict(),
        "confusion_adv": confusion_adv.tolist(),
        "confusion_clean": confusion_clean.tolist(),
        "per_class": per_class,
    }
    if inmem_adv_preds is not None:
        differ = int((np.asarray(inmem_adv_preds, dtype=np.int64) != adv_preds).sum())
        metrics["inmem_agreement"] = {"n_differ": differ, "share_differ": differ / n if n else float("nan")}
    else:
        metrics["inmem_agreement"] = None
    if sizes is not None:
        metrics["imperceptibility"] = summarise_sizes(sizes)
        budget = _eps_255(eps)
        metrics["eps_255"] = budget
        metrics["n_over_budget"] = int((sizes.linf_255 > budget + 0.5).sum()) if budget is not None else None
    metrics["definitions"] = _definitions(target, ci_method)
    return metrics


def _read_attack(folder: Path, *, in_run: bool = False) -> dict[str, Any]:
    path = folder / "attack.json"
    if not folder.is_dir():
        raise RunError(f"attack output folder {folder} does not exist; {_RUN_FIRST.format(folder=folder)}")
    if not path.exists():
        raise RunError(f"{path} not found: not an attack output folder; {_RUN_FIRST.format(folder=folder)}")
    manifest = folder / "manifest.json"
    if not in_run and manifest.exists() and read_json(manifest).get("status") != "complete":
        log.warning("%s does not say complete: the attack run may not have finished", manifest)
    attack = read_json(path)
    if not isinstance(attack, dict):
        raise RunError(f"{path} must hold a JSON object; rerun `dermadv attack run --out {folder}`")
    return attack


def _read_predictions(folder: Path, classes: Sequence[str]) -> pd.DataFrame:
    path = folder / "predictions.csv"
    if not path.exists():
        raise RunError(f"{path} not found; {_RUN_FIRST.format(folder=folder)}")
    table = pd.read_csv(path, dtype={"image_id": str})
    missing = [c for c in _REQUIRED_COLUMNS if c not in table.columns]
    if missing:
        raise RunError(f"{path} lacks column(s) {', '.join(missing)}; rerun `dermadv attack run --out {folder}`")
    if table["image_id"].duplicated().any():
        dup = table.loc[table["image_id"].duplicated(), "image_id"].iloc[0]
        raise RunError(f"{path} lists image {dup!r} twice; rerun `dermadv attack run --out {folder}`")
    pred_cols = [c for c in ("label", "clean_pred", "adv_pred", "inmem_adv_pred") if c in table.columns]
    for col in pred_cols:
        unknown = sorted(set(table[col].astype(str)) - set(classes))
        if unknown:
            raise RunError(
                f"{path} column {col} has class code(s) {', '.join(unknown)} not among the attack's classes "
                f"({', '.join(classes)}); was it written by another run?"
            )
    return table


def _load_png(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8)


def _measure_folder(folder: Path, image_ids: Sequence[str], *, chunk: int = 256) -> PerturbationSizes:
    clean_dir, adv_dir = folder / "images" / "clean", folder / "images" / "adv"
    missing = [i for i in image_ids if not (clean_dir / f"{i}.png").exists() or not (adv_dir / f"{i}.png").exists()]
    if missing:
        raise RunError(
            f"{len(missing)} image(s) listed in {folder / 'predictions.csv'} have no PNG under {clean_dir} or "
            f"{adv_dir} (first: {', '.join(missing[:3])}); {_RUN_FIRST.format(folder=folder)}"
        )
    parts = []
    for start in range(0, len(image_ids), chunk):
        ids = image_ids[start : start + chunk]
        clean = [_load_png(clean_dir / f"{i}.png") for i in ids]
        adv = [_load_png(adv_dir / f"{i}.png") for i in ids]
        for i, c, a in zip(ids, clean, adv, strict=True):
            if c.shape != a.shape:
                raise RunError(
                    f"clean and adversarial PNGs of {i} differ in size ({c.shape[:2]} vs {a.shape[:2]}) in {folder}; "
                    f"{_RUN_FIRST.format(folder=folder)}"
                )
        parts.append(measure_perturbations(clean, adv))
    return PerturbationSizes.concat(parts)


def per_image_rows(table: pd.DataFrame, sizes: PerturbationSizes) -> list[dict[str, Any]]:
    """Rows of ``per_image.csv``; PSNR of identical images is written as ``inf`` (pandas reads it back)."""
    rows = []
    for k, size in enumerate(sizes.rows()):
        psnr = size["psnr"]
        rows.append(
            {
                "image_id": table["image_id"].iloc[k],
                "label": table["label"].iloc[k],
                "clean_pred": table["clean_pred"].iloc[k],
                "adv_pred": table["adv_pred"].iloc[k],
                **size,
                "psnr": "inf" if np.isinf(psnr) else psnr,
            }
        )
    return rows


def per_class_rows(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows of ``attack_metrics.csv``: one per class."""
    rows = []
    for c, pc in metrics["per_class"].items():
        row: dict[str, Any] = {"class": c, "n": pc["n"]}
        for key in ("accuracy_clean", "accuracy_adv", "fooling_ratio"):
            iv = pc[key]
            row.update({key: iv["estimate"], f"{key}_low": iv["low"], f"{key}_high": iv["high"]})
        for key in ("linf_255_max", "l2_mean", "l0_mean", "psnr_mean", "ssim_mean"):
            row[key] = pc.get(key)
        rows.append(row)
    return rows


def evaluate_attack_folder(
    folder: str | Path, *, ci_method: CIMethod = DEFAULT_CI, write: bool = True, in_run: bool = False
) -> dict[str, Any]:
    """Evaluate an attack output folder (see docs/DESIGN.md) and, with ``write``, save the results beside it.

    Writes ``attack_metrics.json`` (with a ``definitions`` block), ``attack_metrics.csv`` (per class)
    and ``per_image.csv`` atomically; returns the content of ``attack_metrics.json``. ``in_run``: called
    by the run that writes the folder, before it marks itself complete (no "unfinished" warning).
    """
    folder = Path(folder)
    attack = _read_attack(folder, in_run=in_run)
    classes = tuple(attack.get("classes") or CLASSES)
    target = attack.get("target")
    if target is not None and target not in classes:
        raise RunError(f"{folder / 'attack.json'} names target {target!r}, not one of {', '.join(classes)}")
    table = _read_predictions(folder, classes)
    image_ids = table["image_id"].tolist()
    sizes = _measure_folder(folder, image_ids)

    def indices(col: str) -> np.ndarray:
        return np.array([classes.index(str(v)) for v in table[col]], dtype=np.int64)

    metrics = attack_metrics(
        indices("label"),
        indices("clean_pred"),
        indices("adv_pred"),
        classes=classes,
        target=target,
        sizes=sizes,
        inmem_adv_preds=indices("inmem_adv_pred") if "inmem_adv_pred" in table.columns else None,
        eps=attack.get("eps"),
        ci_method=ci_method,
    )
    metrics = {"attack": attack, **metrics}
    if write:
        write_json(folder / "attack_metrics.json", metrics)
        class_rows = per_class_rows(metrics)
        write_csv(folder / "attack_metrics.csv", class_rows, fieldnames=list(class_rows[0]) if class_rows else None)
        write_csv(
            folder / "per_image.csv",
            per_image_rows(table, sizes),
            fieldnames=["image_id", "label", "clean_pred", "adv_pred", *MEASURES],
        )
    return metrics


def _iv(d: dict[str, Any] | None) -> str:
    if d is None:
        return "n/a"
    return format_interval(Interval(float(d["estimate"]), float(d["low"]), float(d["high"]), str(d["method"])))


def _num(x: Any, fmt: str) -> str:
    return "n/a" if x is None or (isinstance(x, float) and np.isnan(x)) else format(x, fmt)


def format_attack_table(metrics: dict[str, Any]) -> Table:
    """The paper's table for this run: measure | value (95% CI)."""
    attack = metrics.get("attack", {})
    eps = metrics.get("eps_255")
    title = (
        f"{attack.get('method', 'attack')}, target {metrics['target'] or 'none (untargeted)'}"
        f"{f', eps {eps:g}/255' if eps is not None else ''}, n = {metrics['n']}"
    )
    table = Table(title=title)
    table.add_column("measure")
    table.add_column(f"value (95% CI, {metrics['ci_method']})", justify="right")
    table.add_row("accuracy, clean images", _iv(metrics["accuracy_clean"]))
    table.add_row("accuracy, adversarial images", _iv(metrics["accuracy_adv"]))
    mc = metrics["mcnemar"]
    table.add_row("McNemar test, exact", format_p_value(float(mc["exact"]["p_value"])))
    table.add_row("McNemar test, chi-square (corrected)", format_p_value(float(mc["chi2"]["p_value"])))
    t = mc["table"]
    table.add_row("  clean correct → adv wrong / wrong → correct", f"{t[0][1]} / {t[1][0]}")
    label = f"→ {metrics['target']}" if metrics["target"] else "misclassified"
    for c, iv in metrics["fooling_ratio"].items():
        if metrics["per_class"][c]["n"]:
            table.add_row(f"fooling ratio, {c} ({label})", _iv(iv))
    worst = metrics["worst_class_fooling_ratio"]
    if worst is not None:
        table.add_row(f"worst-class fooling ratio ({worst['class']})", _iv(worst))
    if metrics["targeted_success"] is not None:
        table.add_row("targeted success (correct, not target)", _iv(metrics["targeted_success"]))
    table.add_row("untargeted success (correct → wrong)", _iv(metrics["untargeted_success"]))
    table.add_row("flip rate (adv ≠ clean prediction)", _iv(metrics["flip_rate"]))
    agree = metrics.get("inmem_agreement")
    if agree is not None:
        table.add_row("saved PNG vs in-memory prediction differ", f"{agree['n_differ']} ({agree['share_differ']:.1%})")
    imp = metrics.get("imperceptibility")
    if imp is not None:
        table.add_row(
            "L∞ (1/255), median / max", f"{_num(imp['linf_255']['median'], 'g')} / {_num(imp['linf_255']['max'], 'g')}"
        )
        table.add_row("L2 ([0, 1] scale), mean", _num(imp["l2"]["mean"], ".3f"))
        table.add_row("L0 (changed pixels), mean", _num(imp["l0"]["mean"], ".0f"))
        psnr = imp["psnr"]
        identical = f" ({psnr['n_identical']} identical left out)" if psnr["n_identical"] else ""
        table.add_row("PSNR (dB), mean / min" + identical, f"{_num(psnr['mean'], '.1f')} / {_num(psnr['min'], '.1f')}")
        table.add_row("SSIM, mean / min", f"{_num(imp['ssim']['mean'], '.4f')} / {_num(imp['ssim']['min'], '.4f')}")
        if metrics.get("n_over_budget"):
            table.add_row("images over the eps budget", str(metrics["n_over_budget"]), style="red")
    return table
