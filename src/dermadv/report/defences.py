"""The report's defence section: read what ``dermadv defend …`` wrote, and turn it into table rows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dermadv.config import format_eps
from dermadv.defences.results import (
    CardResult,
    CertifyResult,
    DetectResult,
    TargetedOutcome,
    TransformsResult,
    from_dict,
)
from dermadv.evaluation.stats import format_interval, proportion_ci
from dermadv.proportions import Proportion
from dermadv.report.data import READ_ERRORS, DefencesPart, Sources
from dermadv.report.readers import read_json_dict

#: each result: the file ``dermadv defend <name>`` writes and its dataclass
RESULTS: dict[str, tuple[str, type]] = {
    "transforms": ("transforms.json", TransformsResult),
    "certify": ("certify.json", CertifyResult),
    "detect": ("detect.json", DetectResult),
    "card": ("card.json", CardResult),
}
MISSING_NOTE = (
    "Defences: no defence results in this folder (`dermadv defend transforms|certify|detect|card` or "
    "benchmarks/defences_real.py write them)."
)


def find_defence_files(run_dir: Path, *, skip: str = "report") -> dict[str, Path]:
    """Each result file in the run folder itself, a subfolder, or a subfolder of one (the report's copies aside)."""
    found: dict[str, Path] = {}
    for name, (file, _) in RESULTS.items():
        for pattern in (file, f"*/{file}", f"*/*/{file}"):
            paths = sorted(p for p in run_dir.glob(pattern) if p.relative_to(run_dir).parts[0] != skip)
            if paths:
                found[name] = paths[0]
                break
    return found


def read_defences(files: dict[str, Path], sources: Sources) -> DefencesPart | None:
    if not files:
        return None
    results: dict[str, Any] = {}
    notes = []
    for name, path in files.items():
        try:
            results[name] = from_dict(RESULTS[name][1], read_json_dict(path))
        except READ_ERRORS as exc:
            notes.append(f"{name} left out: cannot read {path.name} ({type(exc).__name__}: {exc})")
    links = {name: sources.cite(path) for name, path in files.items() if name in results}
    return DefencesPart(**results, links=links, notes=notes)


def share_text(share: Proportion | None) -> str:
    """``70.0% (48.1–85.5) 14/20``: Wilson intervals, as the samples here are small."""
    if share is None or share.counts is None or not share.n:
        return "n/a"
    return format_interval(proportion_ci(*share.counts, method="wilson"), counts=share.counts)


def _worst(outcome: TargetedOutcome | None) -> str:
    if outcome is None:
        return "—"
    return f"{share_text(outcome.worst_class_fooling)} ({outcome.worst_class})"


def _budget(eps: float | None) -> str:
    return format_eps(eps) if eps is not None else "not reached"


#: each table's columns: row key -> header, shared by the report's templates and the command line
COLUMNS: dict[str, dict[str, str]] = {
    "transforms": {
        "defence": "defence",
        "eps": "ε",
        "accuracy_clean": "accuracy, clean",
        "plain": "worst-class fooling, plain",
        "adaptive": "worst-class fooling, adaptive",
        "ratio": "adaptive ÷ undefended",
    },
    "certify": {"radius": "L2 radius", "accuracy": "certified accuracy"},
    "detect": {
        "attack": "adversarial images",
        "auc": "ROC AUC",
        "tpr": "TPR at 5% FPR",
        "fooled": "fooled",
        "undetected": "fooled and undetected",
    },
    "card": {"defence": "defence", "class": "class", "n": "n", "eps_50": "≥ 50% moved at", "eps_99": "≥ 99% moved at"},
}


def transforms_context(result: TransformsResult) -> dict[str, Any]:
    undefended = {r.eps: r.plain.worst_class_fooling for r in result.rows if r.defence == "none"}
    rows = []
    for r in result.rows:
        adaptive = r.adaptive.worst_class_fooling if r.adaptive else None
        base = undefended.get(r.eps)
        ratio = adaptive.estimate / base.estimate if adaptive and base and base.estimate else None
        rows.append(
            {
                "defence": r.defence,
                "eps": format_eps(r.eps),
                "accuracy_clean": share_text(r.accuracy_clean),
                "plain": _worst(r.plain),
                "adaptive": _worst(r.adaptive),
                "ratio": f"{ratio:.2f}" if ratio is not None else "—",
            }
        )
    title = f"{result.attack} toward {result.target} on {result.n_images} test images"
    return {"title": title, "eot": result.eot_samples, "rows": rows}


def certify_context(result: CertifyResult) -> dict[str, Any]:
    c = result.certified
    settings = (
        f"σ = {c.sigma:g}, n = {c.n_samples} noise samples (n0 = {result.n0} to choose the class), "
        f"α = {c.alpha:g}, {c.n_images} images"
    )
    rows = [
        {"radius": f"{r:g}", "accuracy": share_text(Proportion.counted(round(a * c.n_images), c.n_images))}
        for r, a in zip(c.radii, c.accuracy, strict=True)
    ]
    base, abstained = share_text(result.accuracy_base), share_text(result.abstained)
    return {"title": settings, "base": base, "abstained": abstained, "rows": rows}


def detect_context(result: DetectResult) -> dict[str, Any]:
    rows = [
        {
            "attack": o.attack,
            "auc": f"{o.scores.auc:.3f}",
            "tpr": f"{100 * o.scores.tpr_at_5_fpr:.1f}%",
            "fooled": share_text(o.fooled),
            "undetected": share_text(o.fooled_undetected),
        }
        for o in result.outcomes
    ]
    title = f"{result.detector} detector, fitted on {result.fit_images} clean training images"
    return {"title": title, "threshold": f"{result.threshold:.4g}", "rows": rows}


def card_context(result: CardResult) -> dict[str, Any]:
    rows = [
        {
            "defence": c.defence + (" (adaptive)" if c.adaptive else ""),
            "class": row.label,
            "n": str(row.n_images),
            "eps_50": _budget(row.eps_50),
            "eps_99": _budget(row.eps_99),
        }
        for c in result.cards
        for row in c.card.classes
    ]
    attack = result.cards[0].card.attack if result.cards else ""
    return {
        "title": f"robustness card → {result.cards[0].card.target if result.cards else ''}",
        "attack": attack,
        "rows": rows,
    }


def defences_context(part: DefencesPart) -> dict[str, Any]:
    """Rows of strings for the templates (pure)."""
    sections = {
        "transforms": transforms_context(part.transforms) if part.transforms else None,
        "certify": certify_context(part.certify) if part.certify else None,
        "detect": detect_context(part.detect) if part.detect else None,
        "card": card_context(part.card) if part.card else None,
    }
    return {"links": part.links, "notes": part.notes, "columns": COLUMNS, **sections}
