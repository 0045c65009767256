"""The paper's evaluation of one attack output folder: accuracy, McNemar, fooling ratios, imperceptibility."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from rich.table import Table

from dermadv.errors import RunError
from dermadv.evaluation.attack_info import AttackInfo
from dermadv.evaluation.attack_metrics import AttackMetrics, attack_metrics
from dermadv.evaluation.attack_run import METRICS_FILE, AttackRun, read_png
from dermadv.evaluation.imperceptibility import MEASURES, PerturbationSizes, measure_perturbations
from dermadv.evaluation.stats import DEFAULT_CI, CIMethod
from dermadv.runs import write_csv, write_json

log = logging.getLogger(__name__)


def _measure_folder(run: AttackRun, *, chunk: int = 256) -> PerturbationSizes:
    run.check_images()
    image_ids, parts = run.image_ids, []
    for start in range(0, len(image_ids), chunk):
        ids = image_ids[start : start + chunk]
        clean = [read_png(run.image_path(i, "clean")) for i in ids]
        adv = [read_png(run.image_path(i, "adv")) for i in ids]
        for i, c, a in zip(ids, clean, adv, strict=True):
            if c.shape != a.shape:
                raise RunError(
                    f"clean and adversarial PNGs of {i} differ in size ({c.shape[:2]} vs {a.shape[:2]}) in "
                    f"{run.folder}; run `dermadv attack run --out {run.folder}` first"
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


def per_class_rows(metrics: AttackMetrics) -> list[dict[str, Any]]:
    """Rows of ``attack_metrics.csv``: one per class."""
    rows = []
    for c, pc in metrics.per_class.items():
        row: dict[str, Any] = {"class": c, "n": pc.n}
        for key in ("accuracy_clean", "accuracy_adv", "fooling_ratio"):
            iv = getattr(pc, key)
            row.update({key: iv.estimate, f"{key}_low": iv.low, f"{key}_high": iv.high})
        for key in ("linf_255_max", "l2_mean", "l0_mean", "psnr_mean", "ssim_mean"):
            row[key] = getattr(pc, key)
        rows.append(row)
    return rows


def evaluate_attack_folder(
    folder: str | Path,
    *,
    ci_method: CIMethod = DEFAULT_CI,
    write: bool = True,
    in_run: bool = False,
    allow_incomplete: bool = False,
) -> AttackMetrics:
    """Evaluate an attack output folder (see docs/DESIGN.md) and, with ``write``, save the results beside it.

    Writes ``attack_metrics.json`` (with a ``definitions`` block), ``attack_metrics.csv`` (per class)
    and ``per_image.csv`` atomically. ``in_run``: called by the run that writes the folder, before it
    marks itself complete. Otherwise the folder of an unfinished run is refused, or read with a warning under
    ``allow_incomplete``.
    """
    run = AttackRun.read(folder, in_run=in_run, allow_incomplete=allow_incomplete)
    folder, classes, table = run.folder, run.classes, run.predictions
    sizes = _measure_folder(run)

    def indices(col: str) -> np.ndarray:
        return np.array([classes.index(str(v)) for v in table[col]], dtype=np.int64)

    metrics = attack_metrics(
        indices("label"),
        indices("clean_pred"),
        indices("adv_pred"),
        classes=classes,
        target=run.target,
        sizes=sizes,
        inmem_adv_preds=indices("inmem_adv_pred") if "inmem_adv_pred" in table.columns else None,
        eps=run.eps,
        ci_method=ci_method,
    )
    metrics = replace(metrics, attack=run.info)
    if write:
        write_json(folder / METRICS_FILE, metrics.as_dict())
        class_rows = per_class_rows(metrics)
        write_csv(folder / "attack_metrics.csv", class_rows, fieldnames=list(class_rows[0]) if class_rows else None)
        write_csv(
            folder / "per_image.csv",
            per_image_rows(table, sizes),
            fieldnames=["image_id", "label", "clean_pred", "adv_pred", *MEASURES],
        )
    return metrics


def format_attack_table(metrics: AttackMetrics) -> Table:
    """The paper's table for this run: measure | value (95% CI)."""
    eps = metrics.eps_255
    info = metrics.attack or AttackInfo()
    threat = info.threat_model
    title = (
        f"{info.method or 'attack'}{f' ({threat})' if threat else ''}, "
        f"target {metrics.target or 'none (untargeted)'}"
        f"{f', eps {eps:g}/255' if eps is not None else ''}, n = {metrics.n}"
    )
    table = Table(title=title)
    table.add_column("measure")
    table.add_column(f"value (95% CI, {metrics.ci_method})", justify="right")
    for m in metrics.measures():
        table.add_row(m.label, m.text, style="red" if m.name == "n_over_budget" and m.value else None)
    return table
