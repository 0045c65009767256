"""The paper's evaluation of one attack output folder: accuracy, McNemar, fooling ratios, imperceptibility."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image
from rich.table import Table

from dermadv.data.classes import CLASSES
from dermadv.errors import RunError
from dermadv.evaluation.attack_metrics import AttackMetrics, attack_metrics
from dermadv.evaluation.imperceptibility import MEASURES, PerturbationSizes, measure_perturbations
from dermadv.evaluation.stats import DEFAULT_CI, CIMethod
from dermadv.runs import read_json, require_complete, write_csv, write_json

log = logging.getLogger(__name__)

_REQUIRED_COLUMNS = ("image_id", "label", "clean_pred", "adv_pred")
_RUN_FIRST = "run `dermadv attack run --out {folder}` first"


def _read_attack(folder: Path, *, in_run: bool = False, allow_incomplete: bool = False) -> dict[str, Any]:
    path = folder / "attack.json"
    if not folder.is_dir():
        raise RunError(f"attack output folder {folder} does not exist; {_RUN_FIRST.format(folder=folder)}")
    if not path.exists():
        raise RunError(f"{path} not found: not an attack output folder; {_RUN_FIRST.format(folder=folder)}")
    if not in_run:
        require_complete(folder, allow_incomplete=allow_incomplete)
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
    folder = Path(folder)
    attack = _read_attack(folder, in_run=in_run, allow_incomplete=allow_incomplete)
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
    metrics = replace(metrics, attack=attack)
    if write:
        write_json(folder / "attack_metrics.json", metrics.as_dict())
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
    threat = metrics.attack.get("threat_model")
    title = (
        f"{metrics.attack.get('method', 'attack')}{f' ({threat})' if threat else ''}, "
        f"target {metrics.target or 'none (untargeted)'}"
        f"{f', eps {eps:g}/255' if eps is not None else ''}, n = {metrics.n}"
    )
    table = Table(title=title)
    table.add_column("measure")
    table.add_column(f"value (95% CI, {metrics.ci_method})", justify="right")
    for m in metrics.measures():
        table.add_row(m.label, m.text, style="red" if m.name == "n_over_budget" and m.value else None)
    return table
