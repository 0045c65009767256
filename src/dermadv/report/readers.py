"""Read each part of a run folder into its dataclass; a part that cannot be read becomes notes, not an error."""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pandas as pd

from dermadv.data.classes import CLASSES
from dermadv.errors import DermadvError
from dermadv.evaluation.attack_info import AttackInfo
from dermadv.evaluation.attack_run import (
    IMAGE_KINDS,
    INFO_FILE,
    METRICS_FILE,
    PREDICTIONS_FILE,
    image_path,
    read_attack_metrics,
    read_predictions,
    saved_images,
)
from dermadv.evaluation.metrics import ClassificationReport
from dermadv.observer.analysis import StudyAnalysis, analyze_study
from dermadv.report.data import (
    READ_ERRORS,
    AttackPart,
    ClassifierPart,
    DataPart,
    GridCell,
    GridRow,
    Link,
    ObserverPart,
    Sources,
    Stage,
    SweepPart,
)
from dermadv.runs import RunManifest, read_run_manifest

log = logging.getLogger(__name__)


def read_json_dict(path: Path) -> dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        obj = json.load(f)
    if not isinstance(obj, dict):
        raise ValueError(f"{path} holds {type(obj).__name__}, not a JSON object")
    return obj


def read_table(path: Path, required: tuple[str, ...] = ()) -> pd.DataFrame:
    table = pd.read_csv(path, dtype={"image_id": str})
    missing = [c for c in required if c not in table.columns]
    if missing:
        raise ValueError(f"{path.name} lacks column(s) {', '.join(missing)}")
    return table


def _short(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def read_stage(name: str, folder: Path, sources: Sources) -> Stage | None:
    path = folder / "manifest.json"
    if not path.is_file():
        return None
    try:
        manifest = RunManifest.from_dict(read_json_dict(path))
    except READ_ERRORS as exc:
        log.warning("cannot read %s: %s", path, exc)
        return None
    rel = folder.relative_to(sources.run_dir).as_posix()
    return Stage(name, "." if rel == "." else rel, manifest, sources.cite(path))


def _eval_dir(clf_dir: Path) -> Path | None:
    candidates = [clf_dir / "test", *sorted(clf_dir.glob("eval-test*")), *sorted(clf_dir.glob("eval-*")), clf_dir]
    return next((d for d in candidates if (d / "metrics.json").is_file()), None)


def read_classifier(clf_dir: Path, sources: Sources) -> ClassifierPart:
    """Training history and manifest of a ``dermadv train`` folder, with its test-set evaluation if present."""
    notes: list[str] = []
    manifest = None
    manifest_path = clf_dir / "manifest.json"
    if manifest_path.is_file():
        try:
            manifest = RunManifest.from_dict(read_json_dict(manifest_path))
        except READ_ERRORS as exc:
            notes.append(f"cannot read {manifest_path.name}: {_short(exc)}")
    rel = clf_dir.relative_to(sources.run_dir).as_posix()
    prefix = "" if rel == "." else f"{rel}/"
    history = history_link = None
    if (clf_dir / "history.csv").is_file():
        try:
            history = read_table(clf_dir / "history.csv", ("epoch",))
            history_link = sources.cite(clf_dir / "history.csv")
        except READ_ERRORS as exc:
            notes.append(f"training curves left out: cannot read {prefix}history.csv ({_short(exc)})")
    elif manifest is None or manifest.command != "evaluate":
        notes.append(f"training curves left out: no {prefix}history.csv")
    metrics = metrics_link = predictions = predictions_link = per_class_link = None
    eval_dir = _eval_dir(clf_dir)
    if eval_dir is None:
        notes.append(
            f"test-set evaluation left out: no {prefix}test/metrics.json; run `dermadv evaluate --checkpoint "
            f"{prefix}model.safetensors --out {prefix}test`"
        )
    else:
        try:
            metrics = ClassificationReport.from_dict(read_json_dict(eval_dir / "metrics.json"))
            metrics_link = sources.cite(eval_dir / "metrics.json")
        except READ_ERRORS as exc:
            notes.append(f"test-set evaluation left out: cannot read metrics.json ({_short(exc)})")
        per_class_link = sources.cite_if(eval_dir / "per_class.csv")
        if (eval_dir / "predictions.csv").is_file():
            try:
                predictions = read_table(eval_dir / "predictions.csv", ("image_id", "label"))
                predictions_link = sources.cite(eval_dir / "predictions.csv")
            except READ_ERRORS as exc:
                notes.append(f"ROC curves left out: cannot read predictions.csv ({_short(exc)})")
        else:
            notes.append("ROC curves left out: no predictions.csv beside metrics.json")
    return ClassifierPart(
        folder="." if rel == "." else rel,
        config=manifest.config if manifest is not None else {},
        manifest=manifest,
        manifest_link=sources.cite_if(manifest_path),
        history=history,
        history_link=history_link,
        metrics=metrics,
        metrics_link=metrics_link,
        per_class_link=per_class_link,
        predictions=predictions,
        predictions_link=predictions_link,
        notes=notes,
    )


def _prediction(row: pd.Series, prefix: str) -> str:
    """``predicted nv (87%) ✗``: the class, the classifier's probability for it, right (✓) or wrong (✗)."""
    pred = str(row[f"{prefix}_pred"])
    col = f"{prefix}_prob_{pred}"
    confidence = f" ({100 * float(row[col]):.0f}%)" if col in row.index and pd.notna(row[col]) else ""
    return f"predicted {pred}{confidence} {'✓' if pred == str(row['label']) else '✗'}"


def sample_grid(
    attack_dir: Path, predictions: pd.DataFrame, classes: tuple[str, ...], eps_255: float | None
) -> list[GridRow]:
    """One image per true class: the first (by image id) the classifier got right when clean, else the first.

    The rule ignores the attack's outcome, so the grid shows typical cases, not its successes.
    """
    rows: list[GridRow] = []
    table = predictions.sort_values("image_id", kind="stable")
    amplification = f"×{127.5 / eps_255:.0f}" if eps_255 else "scaled to its largest change"
    for cls in classes:
        of_class = table[table["label"].astype(str) == cls]
        if of_class.empty:
            continue
        right = of_class[of_class["clean_pred"].astype(str) == cls]
        row = (right if not right.empty else of_class).iloc[0]
        image_id = str(row["image_id"])
        cells = []
        captions = (_prediction(row, "clean"), _prediction(row, "adv"), f"adv − clean, amplified {amplification}")
        for kind, sub, caption in zip(("clean", "adversarial", "perturbation"), IMAGE_KINDS, captions, strict=True):
            src = image_path(attack_dir, image_id, sub)
            if src.is_file():
                cells.append(GridCell(kind, src, f"images/{sub}/{quote(image_id)}.png", caption))
        if cells:
            rows.append(GridRow(image_id, cls, cells))
    return rows


def read_attack(attack_dir: Path, sources: Sources, *, generator_dir: Path | None) -> AttackPart:
    """An attack output folder with its evaluation (``evaluate-attack``) and, for AdvGAN, the generator's fit."""
    notes: list[str] = []
    rel = attack_dir.relative_to(sources.run_dir).as_posix()
    prefix = "" if rel == "." else f"{rel}/"
    attack = AttackInfo.read(attack_dir)
    classes = attack.classes or CLASSES
    metrics = metrics_link = None
    if (attack_dir / METRICS_FILE).is_file():
        try:
            metrics = read_attack_metrics(attack_dir)
            metrics_link = sources.cite(attack_dir / METRICS_FILE)
        except READ_ERRORS as exc:
            notes.append(f"attack measures left out: cannot read attack_metrics.json ({_short(exc)})")
    else:
        notes.append(f"attack measures left out: no {prefix}attack_metrics.json; run `dermadv evaluate-attack {rel}`")
    per_image = per_image_link = None
    if (attack_dir / "per_image.csv").is_file():
        try:
            per_image = read_table(attack_dir / "per_image.csv", ("image_id",))
            per_image_link = sources.cite(attack_dir / "per_image.csv")
        except READ_ERRORS as exc:
            notes.append(f"size distributions left out: cannot read per_image.csv ({_short(exc)})")
    elif metrics is not None:
        notes.append("size distributions left out: no per_image.csv")
    grid: list[GridRow] = []
    predictions_link = None
    try:
        predictions = read_predictions(attack_dir)
        predictions_link = sources.cite(attack_dir / PREDICTIONS_FILE)
        grid = sample_grid(
            attack_dir, predictions, classes, float(attack.eps) * 255 if attack.eps is not None else None
        )
        if not grid:
            notes.append(f"image grid left out: no PNGs under {prefix}images/")
    except READ_ERRORS as exc:
        notes.append(f"image grid left out: cannot read predictions.csv ({_short(exc)})")
    generator = generator_link = generator_history = generator_history_link = None
    if generator_dir is not None:
        try:
            generator = RunManifest.from_dict(read_json_dict(generator_dir / "manifest.json")).config
            generator_link = sources.cite(generator_dir / "manifest.json")
        except READ_ERRORS as exc:
            notes.append(f"generator settings left out: cannot read generator/manifest.json ({_short(exc)})")
        if (generator_dir / "history.csv").is_file():
            try:
                generator_history = read_table(generator_dir / "history.csv", ("epoch",))
                generator_history_link = sources.cite(generator_dir / "history.csv")
            except READ_ERRORS as exc:
                notes.append(f"generator curves left out: cannot read generator/history.csv ({_short(exc)})")
    elif attack.method == "advgan":
        notes.append("generator settings left out: the generator's fit folder is not in this run folder")
    manifest = read_run_manifest(attack_dir)
    status = str(manifest.status) if manifest is not None else None
    if status not in (None, "complete"):
        notes.append(f"the attack run did not finish ({prefix}manifest.json says {status}): its outputs are partial")
    return AttackPart(
        folder="." if rel == "." else rel,
        attack=attack,
        attack_link=sources.cite(attack_dir / INFO_FILE),
        metrics=metrics,
        metrics_link=metrics_link,
        per_class_link=sources.cite_if(attack_dir / "attack_metrics.csv"),
        per_image=per_image,
        per_image_link=per_image_link,
        predictions_link=predictions_link,
        generator=generator,
        generator_link=generator_link,
        generator_history=generator_history,
        generator_history_link=generator_history_link,
        grid=grid,
        notes=notes,
        status=status,
        images_saved=len(saved_images(attack_dir, "adv")),
    )


def read_sweep(path: Path, sources: Sources) -> SweepPart:
    """``sweep.csv`` (one row per method × eps × protocol), with links to each run's ``attack_metrics.json``."""
    table = read_table(path, ("method", "eps_255", "accuracy_adv"))
    links: dict[str, Link] = {}
    if "folder" in table.columns:
        for folder in table["folder"].dropna().astype(str):
            link = sources.cite_if(path.parent / folder / METRICS_FILE)
            if link is not None:
                links[folder] = link
    return SweepPart(table, sources.cite(path), links)


def _analysis_file(study_dir: Path) -> Path | None:
    for path in (study_dir / "analysis.json", study_dir / "analysis" / "analysis.json"):
        if path.is_file():
            return path
    return None


def read_observer(study_dir: Path, sources: Sources) -> ObserverPart:
    """A study folder; its saved analysis, else the analysis of its answers made now (read-only)."""
    notes: list[str] = []
    rel = study_dir.relative_to(sources.run_dir).as_posix()
    study = read_json_dict(study_dir / "study.json")
    perturbed_share = None
    if (study_dir / "answer_key.json").is_file():
        with contextlib.suppress(*READ_ERRORS):  # the share is a detail; the study reads without it
            perturbed_share = read_json_dict(study_dir / "answer_key.json").get("perturbed_share")
    analysis: StudyAnalysis | None = None
    analysis_link = None
    saved = _analysis_file(study_dir)
    if saved is not None:
        try:
            analysis = StudyAnalysis.from_dict(read_json_dict(saved))
            analysis_link = sources.cite(saved)
        except READ_ERRORS as exc:
            notes.append(f"cannot read {saved.name}: {_short(exc)}")
    if analysis is None and (study_dir / "answers.sqlite").is_file():
        try:
            analysis = analyze_study(study_dir)
            analysis_link = sources.generate("observer_analysis.json", analysis.as_dict())
        except DermadvError as exc:
            notes.append(f"no results yet: {exc}")
        except (ImportError, sqlite3.Error, *READ_ERRORS) as exc:  # e.g. a read-only copy of the study
            notes.append(f"cannot analyse the answers: {_short(exc)}")
    elif analysis is None:
        notes.append("no answers database (answers.sqlite) in the study folder")
    return ObserverPart(
        folder="." if rel == "." else rel,
        study=study,
        study_link=sources.cite(study_dir / "study.json"),
        perturbed_share=perturbed_share,
        analysis=analysis,
        analysis_link=analysis_link,
        notes=notes,
    )


def read_data(
    run_dir: Path,
    sources: Sources,
    *,
    split_path: Path | None,
    stages: list[Stage],
    attack: AttackInfo | None,
) -> DataPart:
    """Source, size, split counts per class and fingerprints, from ``split.csv`` and the manifests."""
    notes: list[str] = []
    fingerprints = {s.folder: s.manifest.data_fingerprint for s in stages if s.manifest.data_fingerprint}
    distinct = sorted(set(fingerprints.values()))
    if len(distinct) > 1:
        listing = "; ".join(f"{folder}: {fp}" for folder, fp in fingerprints.items())
        notes.append(f"the stages ran on different data (fingerprints differ: {listing})")
    source = None
    size = None
    if attack is not None:
        source = attack.data_source or attack.data
        image_size = attack.classifier_input_size or attack.image_size
        if image_size:
            size = " × ".join(str(v) for v in image_size) + " px"
    for stage in stages:
        config = stage.manifest.config
        if source is None and "data" in config:
            source = config.get("data") or "synthetic (built-in)"
        if size is None and config.get("image_size"):
            size = f"{config['image_size']} × {config['image_size']} px"
    counts = n_images = n_lesions = shared = None
    split_link = None
    if split_path is not None:
        try:
            frame = read_table(split_path, ("dx", "split"))
            split_link = sources.cite(split_path)
            order = [s for s in ("train", "val", "test") if s in set(frame["split"])]
            order += sorted(set(frame["split"]) - set(order))
            counts = pd.crosstab(frame["dx"], frame["split"]).reindex(columns=order, fill_value=0)
            known = [c for c in CLASSES if c in counts.index]
            counts = counts.reindex([*known, *sorted(set(counts.index) - set(known))])
            counts["total"] = counts.sum(axis=1)
            counts.loc["total"] = counts.sum(axis=0)
            n_images = len(frame)
            if "lesion_id" in frame.columns:
                per_lesion = frame.groupby("lesion_id")["split"].nunique()
                n_lesions, shared = int(per_lesion.size), int((per_lesion > 1).sum())
        except READ_ERRORS as exc:
            notes.append(f"split counts left out: cannot read {split_path.name} ({_short(exc)})")
    else:
        notes.append("split counts left out: no split.csv in this run folder")
    return DataPart(
        source=str(source) if source else None,
        image_size=size,
        fingerprint=distinct[0] if len(distinct) == 1 else None,
        split_link=split_link,
        split_counts=counts,
        n_images=n_images,
        n_lesions=n_lesions,
        shared_lesions=shared,
        notes=notes,
    )
