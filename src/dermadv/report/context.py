"""Turn :class:`ReportData` into the rows the templates print, so HTML and Markdown show the same tables."""

from __future__ import annotations

import json
import math
import shlex
from typing import Any

import pandas as pd

from dermadv.data.classes import CLASS_COLOURS, CLASS_NAMES
from dermadv.evaluation.attack_metrics import definitions
from dermadv.evaluation.stats import format_interval, format_p_value
from dermadv.observer.analysis import Agreement, ObserverResult
from dermadv.paper import CITATION, OBSERVER_KAPPA, OBSERVER_SENSITIVITY, OBSERVER_SPECIFICITY, REFERENCE
from dermadv.report.data import (
    AttackPart,
    ClassifierPart,
    DataPart,
    Link,
    ObserverPart,
    ReportData,
    Stage,
    SweepPart,
)
from dermadv.report.defences import defences_context
from dermadv.report.format import eps_text, interval_text, num, percent
from dermadv.report.summary import inmem_statement, split_method, tabulate_measures

Row = dict[str, Any]


def _fact(label: str, value: Any) -> Row:
    if isinstance(value, bool):
        value = "yes" if value else "no"
    return {"label": label, "value": "n/a" if value is None or value == "" else str(value)}


def _class_row(cls: str) -> Row:
    return {"code": cls, "name": CLASS_NAMES.get(cls, cls), "colour": CLASS_COLOURS.get(cls, "#999999")}


def _data(part: DataPart) -> Row:
    split = split_method(part)
    facts = [
        _fact("source", part.source),
        _fact("image size (classifier input)", part.image_size),
        _fact("images in the split file", part.n_images),
        _fact("split method", split),
        _fact("data fingerprint", part.fingerprint or ("differs between stages" if part.notes else None)),
    ]
    counts = None
    if part.split_counts is not None:
        table = part.split_counts
        counts = {
            "columns": [str(c) for c in table.columns],
            "rows": [
                {**_class_row(str(cls)), "counts": [int(v) for v in table.loc[cls]], "total": cls == "total"}
                for cls in table.index
            ],
        }
    return {"facts": facts, "counts": counts, "link": part.split_link, "notes": part.notes}


_TRAIN_SETTINGS = (
    ("arch", "architecture"),
    ("weights", "initial weights"),
    ("image_size", "input size (px)"),
    ("epochs", "epochs planned"),
    ("batch_size", "batch size"),
    ("optimizer", "optimizer"),
    ("lr", "peak learning rate"),
    ("weight_decay", "weight decay"),
    ("class_balance", "class-balanced loss weights"),
    ("label_smoothing", "label smoothing"),
    ("augment", "augmentation"),
    ("ema_decay", "weight average (EMA) decay"),
    ("select", "checkpoint chosen by (validation)"),
    ("calibrate_bias", "per-class bias tuned on validation"),
    ("seed", "seed"),
)


def _classifier(part: ClassifierPart) -> Row:
    cfg = part.config
    settings = []
    for key, label in _TRAIN_SETTINGS:
        if key in cfg:
            value = cfg[key]
            if key == "weights" and not value:
                value = "random (trained from scratch)"
            settings.append(_fact(label, value))
    if part.manifest is not None and "epochs_run" in part.manifest.extra:
        settings.append(_fact("epochs run", part.manifest.extra["epochs_run"]))
    best = None
    if part.history is not None and "val_balanced_acc" in part.history.columns and len(part.history):
        k = int(part.history["val_balanced_acc"].idxmax())
        best = (
            f"Best validation balanced accuracy {percent(part.history['val_balanced_acc'][k])} "
            f"at epoch {part.history['epoch'][k]}."
        )
    metrics, per_class = [], []
    m = part.metrics
    if m is not None:
        metrics = [
            _fact(f"accuracy (95% CI, {(m.accuracy.method or '').capitalize()})", interval_text(m.accuracy)),
            _fact("balanced accuracy (mean sensitivity)", percent(m.balanced_accuracy)),
            _fact("macro ROC AUC (one vs rest)", num(m.macro_auc, ".3f")),
            _fact("test images", m.n),
        ]
        per_class = [
            {
                **_class_row(cls),
                "support": m.support[cls],
                "sensitivity": percent(m.sensitivity[cls]),
                "specificity": percent(m.specificity[cls]),
                "ppv": percent(m.ppv[cls]),
                "auc": num(m.auc[cls], ".3f"),
            }
            for cls in m.classes
        ]
    notes = [*part.notes, *(m.notes if m is not None else [])]
    return {
        "folder": part.folder,
        "settings": settings,
        "best": best,
        "metrics": metrics,
        "per_class": per_class,
        "manifest_link": part.manifest_link,
        "history_link": part.history_link,
        "metrics_link": part.metrics_link,
        "per_class_link": part.per_class_link,
        "predictions_link": part.predictions_link,
        "notes": notes,
    }


def _sentence(text: Any) -> str:
    """Capitalised, with a full stop: definitions are stored as clauses."""
    if not text:
        return ""
    text = str(text)
    return text[0].upper() + text[1:] + ("" if text.endswith(".") else ".")


def _fit_on(value: Any) -> str:
    if value == "train":
        return "the training split (judged on unseen test images)"
    if value == "test":
        return "the test split itself (the paper's protocol: fitted on the images it attacks)"
    return str(value)


def _attack_settings(part: AttackPart) -> list[Row]:
    a = part.attack
    rows = [
        _fact("method", a.method),
        _fact("threat model", a.threat_model or "white-box"),
        _fact("model", a.model_spec),
        _fact("hyperparameters", a.params),
        _fact("budget ε (L∞, images on [0, 1])", eps_text(part.eps_255) if part.eps_255 else "none"),
        _fact(
            "target class",
            f"{a.target} ({CLASS_NAMES.get(a.target, '')})" if a.target else "none (untargeted)",
        ),
        _fact(
            "attacked images",
            f"{a.n_images if a.n_images is not None else 'n/a'} of the {a.split or '?'} split"
            + (" (class-stratified sample)" if a.sampled else ""),
        ),
        _fact(
            "image size attacked (px)",
            " × ".join(str(v) for v in a.image_size or ()) + f" ({a.attack_size or 'model'} size)",
        ),
    ]
    if a.attack_queries is not None:
        rows.append(
            _fact(
                "queries (counted)",
                f"{a.attack_queries} by the attack, {a.model_queries} answered by the model in all",
            )
        )
    g = part.generator
    if g:
        rows += [
            _fact("generator fitted on", _fit_on(g.get("fit_on"))),
            _fact("generator epochs × batch size", f"{g.get('epochs')} × {g.get('batch_size')}, lr {g.get('lr')}"),
            _fact(
                "generator loss (Xiao et al. 2018)",
                f"C&W margin (κ = {g.get('kappa')}) + {g.get('gan_weight')} × least-squares GAN + "
                f"{g.get('hinge_weight')} × L2 hinge "
                f"(bound {g.get('hinge_ratio')} × the largest L2 the ε box allows)",
            ),
            _fact("generator size", f"{g.get('channels')} channels, {g.get('res_blocks')} residual blocks"),
        ]
    return rows


def _attack(part: AttackPart) -> Row:
    m = part.metrics
    per_class = [
        {
            **_class_row(cls),
            "n": pc.n,
            "accuracy_clean": format_interval(pc.accuracy_clean),
            "accuracy_adv": format_interval(pc.accuracy_adv),
            "fooling_ratio": format_interval(pc.fooling_ratio),
            "psnr": num(pc.psnr_mean, ".1f"),
            "ssim": num(pc.ssim_mean, ".4f"),
        }
        for cls, pc in (m.per_class if m else {}).items()
        if pc.n
    ]
    return {
        "folder": part.folder,
        "settings": _attack_settings(part),
        "measures": [_fact(measure.label, measure.text) for measure in m.measures()] if m else [],
        "per_class": per_class,
        "mcnemar_table": m.mcnemar.table if m else None,
        "inmem": inmem_statement(m) if m else None,
        "fooling_definition": _sentence(definitions(m.target, m.ci_method)["fooling_ratio"]) if m else "",
        "target": m.target if m else part.attack.target,
        "eps_255": part.eps_255,
        "pixelated": max(part.attack.image_size or (0,)) < 180,  # upscaled: show pixels, not blur
        "grid": [
            {**_class_row(r.label), "image_id": r.image_id, "cells": [c.__dict__ for c in r.cells]} for r in part.grid
        ],
        "links": {
            "attack": part.attack_link,
            "generator": part.generator_link,
            "metrics": part.metrics_link,
            "per_class": part.per_class_link,
            "per_image": part.per_image_link,
            "predictions": part.predictions_link,
            "generator_history": part.generator_history_link,
        },
        "notes": part.notes,
    }


def _sweep(part: SweepPart, classes: tuple[str, ...]) -> Row:
    table = part.table
    fooling_cols = [c for c in classes if f"fooling_{c}" in table.columns]
    rows = []
    for _, r in table.sort_values(["method", "eps_255"], kind="stable").iterrows():

        def get(col: str, r: pd.Series = r) -> Any:
            v = r.get(col)
            return None if v is None or (isinstance(v, float) and math.isnan(v)) else v

        folder = str(get("folder") or "")
        rows.append(
            {
                "method": get("method"),
                "protocol": get("protocol") or "",
                "eps": eps_text(get("eps_255")),
                "n": num(get("n"), ".0f"),
                "accuracy_clean": percent(get("accuracy_clean")),
                "accuracy_adv": percent(get("accuracy_adv")),
                "worst": percent(get("worst_class_fooling")),
                "psnr": num(get("psnr_mean"), ".1f"),
                "ssim": num(get("ssim_mean"), ".4f"),
                "fooling": [percent(get(f"fooling_{c}")) for c in fooling_cols],
                "link": part.folder_links.get(folder),
            }
        )
    return {"rows": rows, "fooling_classes": [_class_row(c) for c in fooling_cols], "link": part.link}


_DESIGNS = {
    "single": "one image at a time; the observer answers whether it was altered",
    "2afc": "two versions side by side; the observer picks the altered one (two-alternative forced choice)",
}


def _observer_row(r: ObserverResult) -> Row:
    detection, forced_choice = r.detection, r.forced_choice
    return {
        "observer": r.observer,
        "n": r.n_ratings,
        "sensitivity": interval_text(detection.sensitivity if detection else None),
        "specificity": interval_text(detection.specificity if detection else None),
        "accuracy": interval_text(detection.accuracy if detection else None),
        "altered_chosen": interval_text(forced_choice.correct if forced_choice else None),
        "p": format_p_value(forced_choice.p_value if forced_choice else None),
        "confidence": num(r.mean_confidence, ".1f"),
        "combined": r.observer == "combined",
    }


def _kappa_text(ag: Agreement) -> str:
    name = "Cohen's kappa" if ag.method == "cohen" else "Fleiss' kappa"
    ci = f" (95% CI {num(ag.low, '.2f')} to {num(ag.high, '.2f')})" if ag.low is not None else ""
    return f"{name} {num(ag.kappa, '.2f')}{ci}, {ag.n_raters} observers × {ag.n_items} items; paper: {OBSERVER_KAPPA}"


def _observer(part: ObserverPart) -> Row:
    s = part.study
    a = part.analysis
    facts = [
        _fact("study", s.get("study_id")),
        _fact("design", _DESIGNS.get(str(s.get("design")), s.get("design"))),
        _fact("items", len(s.get("item_ids") or [])),
    ]
    if part.perturbed_share is not None:
        facts.append(_fact("share of items shown perturbed", percent(part.perturbed_share, 0)))
    rows = [_observer_row(r) for r in [*a.observers, a.combined]] if a is not None else []
    kappa = _kappa_text(a.agreement) if a is not None and a.agreement is not None else None
    return {
        "folder": part.folder,
        "facts": facts,
        "design": s.get("design"),
        "rows": rows,
        "kappa": kappa,
        "link": part.analysis_link,
        "notes": part.notes,
    }


def _command_line(argv: list[str]) -> str:
    if not argv:
        return "n/a"
    head = "dermadv" if str(argv[0]).endswith(("dermadv", "__main__.py")) else str(argv[0])
    return shlex.join([head, *map(str, argv[1:])])


def _repro(stages: list[Stage], paper_table: Link | None) -> Row:
    rows: list[Row] = []
    versions: dict[str, set[str]] = {}
    hardware: dict[str, list[str]] = {}
    for s in stages:
        m = s.manifest
        rows.append(
            {
                "name": s.name,
                "folder": s.folder,
                "command": _command_line(m.argv),
                "status": m.status if m.status is not None else "n/a",
                "seed": m.seed,
                "fingerprint": m.data_fingerprint,
                "git": m.git_commit,
                "started": m.started,
                "finished": m.finished,
                "timings": ", ".join(f"{k} {v:.1f} s" for k, v in m.timings_s.items()) or "n/a",
                "link": s.link,
                "config": json.dumps(m.config, indent=2, sort_keys=True, default=str),
            }
        )
        for pkg, version in m.versions.items():
            versions.setdefault(pkg, set()).add(version)
        hw = json.dumps(m.hardware, sort_keys=True)
        hardware.setdefault(hw, []).append(s.name)
    return {
        "stages": rows,
        "versions": [
            {"package": k, "version": ", ".join(sorted(v)), "differ": len(v) > 1} for k, v in versions.items()
        ],
        "hardware": [
            {"stages": ", ".join(names), "items": [_fact(k, v) for k, v in json.loads(hw).items()]}
            for hw, names in hardware.items()
        ],
        "paper_table": paper_table,
    }


def report_context(data: ReportData) -> dict[str, Any]:
    """Everything the templates print, as rows of strings and links (pure)."""
    sections: list[dict[str, Any]] = [{"id": "summary", "title": "Summary"}]
    optional = [
        ("data", "Data", data.data is not None and (data.data.split_counts is not None or data.data.source)),
        ("classifier", "Classifier", data.classifier is not None),
        ("attack", "Attack", data.attack is not None),
        ("robustness", "Robustness curves", data.sweep is not None),
        ("defences", "Defences", data.defences is not None),
        ("observer", "Observer study", data.observer is not None),
        ("reproducibility", "Reproducibility", bool(data.stages)),
    ]
    sections += [{"id": i, "title": t} for i, t, present in optional if present]
    for k, section in enumerate(sections, start=1):
        section["number"] = k
    present = {s["id"] for s in sections}
    return {
        "title": data.title,
        "generated": data.generated,
        "run_dir": str(data.run_dir),
        "kind": data.kind,
        "summary": data.summary,
        "measures": tabulate_measures(data.measures, paper_column=f"paper ({CITATION})"),
        "paper": {
            "reference": REFERENCE,
            "observer": f"sensitivity {OBSERVER_SENSITIVITY}, specificity {OBSERVER_SPECIFICITY}",
        },
        "notes": data.notes,
        "sections": sections,
        "number": {s["id"]: s["number"] for s in sections},
        "classes": [_class_row(c) for c in data.classes],
        "data": _data(data.data) if "data" in present and data.data else None,
        "classifier": _classifier(data.classifier) if data.classifier else None,
        "attack": _attack(data.attack) if data.attack else None,
        "sweep": _sweep(data.sweep, data.classes) if data.sweep else None,
        "observer": _observer(data.observer) if data.observer else None,
        "defences": defences_context(data.defences) if data.defences else None,
        "repro": _repro(data.stages, data.paper_table_link) if data.stages else None,
        "figures": data.figures,
    }
