"""Statistics of an observer study: detection rates, agreement, forced choice, and human diagnosis.

Plain functions on arrays (``detection_rates``, ``cohen_kappa``, ``fleiss_kappa``, ``forced_choice``,
``diagnosis_accuracy``) and one study-level entry point, :func:`analyze_study`, that joins the answers with the
key. Combined figures pool every rating, as the paper does (2 observers x 50 images = 100 ratings); ratings of the
same item by different observers are not independent, so the pooled intervals are somewhat too narrow.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from dermadv.errors import ConfigError, RunError
from dermadv.evaluation.stats import DEFAULT_CI, CIMethod, proportion_ci
from dermadv.observer.storage import ANSWERS, StudyDB
from dermadv.observer.study import load_answer_key, load_study
from dermadv.proportions import Proportion
from dermadv.runs import Run, write_csv, write_json

if TYPE_CHECKING:
    from rich.table import Table


def proportion(k: int, n: int, *, ci_method: CIMethod = DEFAULT_CI) -> Proportion:
    """``k`` of ``n`` with its confidence interval."""
    return replace(proportion_ci(int(k), int(n), method=ci_method), k=int(k), n=int(n))


@dataclass(frozen=True)
class DetectionRates:
    sensitivity: Proportion  # altered images called altered
    specificity: Proportion  # clean images called clean
    accuracy: Proportion


def _bools(name: str, values: Any) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ConfigError(f"{name} must be one-dimensional; got shape {arr.shape}")
    return arr.astype(bool)


def detection_rates(altered: Any, called_altered: Any, *, ci_method: CIMethod = DEFAULT_CI) -> DetectionRates:
    """Sensitivity, specificity and accuracy of yes/no "altered?" ratings, each with a CI."""
    truth, called = _bools("altered", altered), _bools("called_altered", called_altered)
    if truth.shape != called.shape:
        raise ConfigError(f"altered and called_altered differ in length: {truth.size} vs {called.size}")
    return DetectionRates(
        sensitivity=proportion(int(np.sum(truth & called)), int(truth.sum()), ci_method=ci_method),
        specificity=proportion(int(np.sum(~truth & ~called)), int((~truth).sum()), ci_method=ci_method),
        accuracy=proportion(int(np.sum(truth == called)), truth.size, ci_method=ci_method),
    )


def _number(value: Any) -> float:
    """A float read from JSON, where an undefined value (NaN) was written as null."""
    return math.nan if value is None else float(value)


@dataclass(frozen=True)
class Agreement:
    """Chance-corrected agreement between raters; ``low``/``high`` only for Cohen's kappa."""

    method: Literal["cohen", "fleiss"]
    kappa: float
    low: float | None
    high: float | None
    n_items: int
    n_raters: int

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("method", "kappa", "low", "high", "n_items", "n_raters")}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Agreement:
        """Read :meth:`as_dict` back from JSON (an undefined kappa, NaN, was written as null)."""
        method = d["method"]
        if method not in ("cohen", "fleiss"):
            raise ValueError(f"agreement method must be cohen or fleiss; got {method!r}")
        low, high = (None if d[k] is None else float(d[k]) for k in ("low", "high"))
        return cls(method, _number(d["kappa"]), low, high, int(d["n_items"]), int(d["n_raters"]))

    def __str__(self) -> str:
        name = "Cohen's kappa" if self.method == "cohen" else "Fleiss' kappa"
        ci = "" if self.low is None or self.high is None else f" ({self.low:.2f} to {self.high:.2f})"
        return f"{name} {self.kappa:.2f}{ci}, {self.n_raters} observers x {self.n_items} items"


def _categories(values: np.ndarray, categories: Sequence[Any] | None) -> list[Any]:
    return list(categories) if categories is not None else sorted(set(values.ravel().tolist()))


def cohen_kappa(
    ratings_a: Any, ratings_b: Any, *, categories: Sequence[Any] | None = None, alpha: float = 0.05
) -> Agreement:
    """Cohen's (1960) kappa of two raters with a large-sample CI (Fleiss, Cohen & Everitt 1969 SE).

    Computed by :func:`statsmodels.stats.inter_rater.cohens_kappa`; the interval is clipped to [-1, 1] (small
    samples overshoot); ``nan`` when chance agreement is 1.
    """
    from scipy.stats import norm
    from statsmodels.stats.inter_rater import cohens_kappa as sm_cohens_kappa

    a, b = np.asarray(ratings_a), np.asarray(ratings_b)
    if a.shape != b.shape or a.ndim != 1:
        raise ConfigError(f"two equal-length rating vectors needed; got shapes {a.shape} and {b.shape}")
    cats = _categories(np.concatenate([a, b]), categories)
    index = {c: i for i, c in enumerate(cats)}
    table = np.zeros((len(cats), len(cats)))
    for x, y in zip(a.tolist(), b.tolist(), strict=True):
        table[index[x], index[y]] += 1
    n = int(table.sum())
    rows, cols = table.sum(1) / max(n, 1), table.sum(0) / max(n, 1)
    if n == 0 or math.isclose(float(rows @ cols), 1.0):
        return Agreement("cohen", float("nan"), None, None, n, 2)
    res = sm_cohens_kappa(table)
    z = float(norm.ppf(1 - alpha / 2))
    kappa, se = float(res["kappa"]), float(res["std_kappa"])
    return Agreement("cohen", kappa, max(kappa - z * se, -1.0), min(kappa + z * se, 1.0), n, 2)


def fleiss_kappa(ratings: Any, *, categories: Sequence[Any] | None = None) -> Agreement:
    """Fleiss' (1971) kappa for items x raters (three or more raters), via statsmodels."""
    from statsmodels.stats.inter_rater import fleiss_kappa as sm_fleiss_kappa

    data = np.asarray(ratings)
    if data.ndim != 2 or data.shape[1] < 2:
        raise ConfigError(f"ratings must be items x raters with at least 2 raters; got shape {data.shape}")
    cats = _categories(data, categories)
    counts = np.stack([(data == c).sum(axis=1) for c in cats], axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        kappa = float(sm_fleiss_kappa(counts, method="fleiss")) if data.shape[0] else float("nan")
    return Agreement("fleiss", kappa, None, None, data.shape[0], data.shape[1])


@dataclass(frozen=True)
class ForcedChoice:
    """2AFC: share of trials where the altered image was chosen, exact binomial test against 50%."""

    correct: Proportion
    p_value: float


def forced_choice(correct: Any, *, ci_method: CIMethod = DEFAULT_CI) -> ForcedChoice:
    """Share correct with a CI and a two-sided exact binomial test against chance (scipy ``binomtest``)."""
    from scipy.stats import binomtest

    hits = _bools("correct", correct)
    k, n = int(hits.sum()), hits.size
    p_value = float(binomtest(k, n, 0.5).pvalue) if n else float("nan")
    return ForcedChoice(proportion(k, n, ci_method=ci_method), p_value)


def diagnosis_accuracy(
    labels: Sequence[str | None],
    diagnoses: Sequence[str | None],
    altered: Any,
    *,
    ci_method: CIMethod = DEFAULT_CI,
) -> dict[str, Proportion]:
    """Human diagnostic accuracy on clean vs altered images, over ratings that gave a diagnosis."""
    shown_altered = _bools("altered", altered)
    if not len(labels) == len(diagnoses) == shown_altered.size:
        raise ConfigError(f"labels, diagnoses and altered differ in length: {len(labels)}, {len(diagnoses)}, ...")
    result = {}
    for name, flag in (("clean", False), ("altered", True)):
        pairs = [
            (lab, dx)
            for lab, dx, alt in zip(labels, diagnoses, shown_altered, strict=True)
            if alt == flag and lab is not None and dx is not None
        ]
        result[name] = proportion(sum(lab == dx for lab, dx in pairs), len(pairs), ci_method=ci_method)
    return result


@dataclass(frozen=True)
class Rating:
    """One answer joined with the key."""

    observer: str
    item_id: str
    position: int
    image_id: str
    label: str | None
    condition: str | None
    altered_side: str | None
    answer: str
    correct: bool
    confidence: int
    diagnosis: str | None
    answered_at: str


def load_ratings(study_dir: str | os.PathLike[str]) -> list[Rating]:
    """All answers of a study with the truth about each item."""
    study = load_study(study_dir)
    key = load_answer_key(study_dir)
    ratings = []
    for a in StudyDB(study.db_path).answers():
        entry = key.get(a.item_id)
        if entry is None:
            raise RunError(f"answer for item {a.item_id} has no entry in the answer key of {study.path}")
        truth = ("yes" if entry.altered else "no") if study.design == "single" else entry.altered_side
        ratings.append(
            Rating(
                a.observer,
                a.item_id,
                a.position + 1,
                entry.image_id,
                entry.label,
                entry.condition,
                entry.altered_side,
                a.answer,
                a.answer == truth,
                a.confidence,
                a.diagnosis,
                a.answered_at,
            )
        )
    return ratings


_DETECTION = ("sensitivity", "specificity", "accuracy")


@dataclass(frozen=True)
class ObserverResult:
    observer: str  # "combined" for the pooled row
    n_ratings: int
    mean_confidence: float
    detection: DetectionRates | None  # single design
    forced_choice: ForcedChoice | None  # 2AFC design
    diagnosis: dict[str, Proportion] | None  # single design, when diagnoses and labels exist

    def as_dict(self) -> dict[str, Any]:
        """One observer's row of ``analysis.json``: only the measures of the study's design."""
        out: dict[str, Any] = {
            "observer": self.observer,
            "n_ratings": self.n_ratings,
            "mean_confidence": self.mean_confidence,
        }
        if self.detection is not None:
            out.update({k: getattr(self.detection, k).to_dict(form="both") for k in _DETECTION})
        if self.forced_choice is not None:
            out["altered_chosen"] = self.forced_choice.correct.to_dict(form="both")
            out["binomial_p_value"] = self.forced_choice.p_value
        if self.diagnosis is not None:
            out["diagnosis_accuracy"] = {k: v.to_dict(form="both") for k, v in self.diagnosis.items()}
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ObserverResult:
        """Read :meth:`as_dict` back from JSON; a measure the row lacks is one the design does not have."""
        detection = None
        if "sensitivity" in d:
            detection = DetectionRates(*(Proportion.from_dict(d[k]) for k in _DETECTION))
        forced_choice = None
        if "altered_chosen" in d:
            forced_choice = ForcedChoice(Proportion.from_dict(d["altered_chosen"]), _number(d["binomial_p_value"]))
        diagnosis = None
        if "diagnosis_accuracy" in d:
            diagnosis = {str(k): Proportion.from_dict(v) for k, v in d["diagnosis_accuracy"].items()}
        return cls(
            str(d["observer"]), int(d["n_ratings"]), _number(d["mean_confidence"]), detection, forced_choice, diagnosis
        )


@dataclass(frozen=True)
class StudyAnalysis:
    study_id: str
    design: str
    ci_method: str
    n_items: int
    observers: list[ObserverResult]
    combined: ObserverResult
    agreement: Agreement | None

    def as_dict(self) -> dict[str, Any]:
        """The JSON form (``analysis.json``; NaN becomes null through :func:`dermadv.runs.write_json`)."""
        return {
            "study_id": self.study_id,
            "design": self.design,
            "ci_method": self.ci_method,
            "n_items": self.n_items,
            "observers": [r.as_dict() for r in self.observers],
            "combined": self.combined.as_dict(),
            "agreement": None if self.agreement is None else self.agreement.as_dict(),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> StudyAnalysis:
        """Read :meth:`as_dict` back (``analysis.json``)."""
        agreement = d["agreement"]
        return cls(
            study_id=str(d["study_id"]),
            design=str(d["design"]),
            ci_method=str(d["ci_method"]),
            n_items=int(d["n_items"]),
            observers=[ObserverResult.from_dict(r) for r in d["observers"]],
            combined=ObserverResult.from_dict(d["combined"]),
            agreement=None if agreement is None else Agreement.from_dict(agreement),
        )


def _observer_result(name: str, ratings: Sequence[Rating], design: str, ci_method: CIMethod) -> ObserverResult:
    confidence = float(np.mean([r.confidence for r in ratings]))
    if design == "2afc":
        fc = forced_choice([r.correct for r in ratings], ci_method=ci_method)
        return ObserverResult(name, len(ratings), confidence, None, fc, None)
    altered = [r.condition == "perturbed" for r in ratings]
    detection = detection_rates(altered, [r.answer == "yes" for r in ratings], ci_method=ci_method)
    diagnosis = None
    if any(r.diagnosis is not None and r.label is not None for r in ratings):
        labels, diagnoses = [r.label for r in ratings], [r.diagnosis for r in ratings]
        diagnosis = diagnosis_accuracy(labels, diagnoses, altered, ci_method=ci_method)
    return ObserverResult(name, len(ratings), confidence, detection, None, diagnosis)


def _agreement(ratings: Sequence[Rating], design: str) -> Agreement | None:
    by_observer: dict[str, dict[str, str]] = {}
    for r in ratings:
        by_observer.setdefault(r.observer, {})[r.item_id] = r.answer
    if len(by_observer) < 2:
        return None
    answers = list(by_observer.values())
    common = sorted(set.intersection(*(set(a) for a in answers)))
    matrix = np.array([[a[item] for a in answers] for item in common], dtype=object).reshape(len(common), len(answers))
    categories = ANSWERS[design]
    if len(answers) == 2:
        return cohen_kappa(matrix[:, 0], matrix[:, 1], categories=categories)
    return fleiss_kappa(matrix, categories=categories)


def analyze_study(study_dir: str | os.PathLike[str], *, ci_method: CIMethod = DEFAULT_CI) -> StudyAnalysis:
    """The paper's observer table for a study: per observer and combined, plus agreement."""
    if ci_method not in ("wald", "wilson", "exact"):
        raise ConfigError(f"CI method must be one of wald, wilson, exact; got {ci_method!r}")
    study = load_study(study_dir)
    ratings = load_ratings(study_dir)
    if not ratings:
        raise RunError(f"no answers yet in {study.db_path}; invite observers and serve the study first")
    names = list(dict.fromkeys(r.observer for r in ratings))
    per_observer = [
        _observer_result(name, [r for r in ratings if r.observer == name], study.design, ci_method) for name in names
    ]
    combined = _observer_result("combined", ratings, study.design, ci_method)
    return StudyAnalysis(
        study.study_id,
        study.design,
        ci_method,
        study.n_items,
        per_observer,
        combined,
        _agreement(ratings, study.design),
    )


def analysis_rows(analysis: StudyAnalysis) -> list[dict[str, Any]]:
    """One row per observer and measure: the CSV form of the analysis."""
    rows: list[dict[str, Any]] = []
    for r in [*analysis.observers, analysis.combined]:
        measures: list[tuple[str, Proportion, float | None]] = []
        if r.detection is not None:
            measures += [(m, getattr(r.detection, m), None) for m in ("sensitivity", "specificity", "accuracy")]
        if r.forced_choice is not None:
            measures.append(("altered_chosen", r.forced_choice.correct, r.forced_choice.p_value))
        for condition, p in (r.diagnosis or {}).items():
            measures.append((f"diagnosis_accuracy_{condition}", p, None))
        for measure, p, p_value in measures:
            rows.append({"observer": r.observer, "measure": measure, **p.to_dict(form="both"), "p_value": p_value})
    if analysis.agreement is not None:
        a = analysis.agreement
        rows.append(
            {
                "observer": "agreement",
                "measure": f"{a.method}_kappa",
                "k": None,
                "n": a.n_items,
                "estimate": a.kappa,
                "low": a.low,
                "high": a.high,
                "method": "large-sample" if a.method == "cohen" else "",
                "p_value": None,
            }
        )
    return rows


def write_analysis(study_dir: str | os.PathLike[str], out: str | os.PathLike[str], analysis: StudyAnalysis) -> Path:
    """Write ``analysis.json``, ``analysis.csv`` and ``ratings.csv`` (answers joined with the key) into ``out``."""
    out = Path(out)
    run = Run(out, command="observer analyze", config={"study": str(study_dir), "ci_method": analysis.ci_method})
    write_json(out / "analysis.json", analysis.as_dict())
    fields = ["observer", "measure", "k", "n", "estimate", "low", "high", "method", "p_value"]
    write_csv(out / "analysis.csv", analysis_rows(analysis), fieldnames=fields)
    ratings = [r.__dict__ for r in load_ratings(study_dir)]
    write_csv(out / "ratings.csv", ratings, fieldnames=list(Rating.__dataclass_fields__))
    run.finish(study_id=analysis.study_id)
    return out


def analysis_tables(analysis: StudyAnalysis) -> list[Table]:
    """The analysis as rich tables (the terminal form of the paper's observer table)."""
    from rich.table import Table

    method = {"wald": "Wald", "wilson": "Wilson", "exact": "Clopper-Pearson"}[analysis.ci_method]
    title = f"Observer study {analysis.study_id} ({analysis.design}, {analysis.n_items} items; 95% CI {method})"
    notes = []
    if analysis.design == "single":
        notes.append("sensitivity: altered images called altered; specificity: clean images called clean")
    if analysis.agreement is not None:
        notes.append(str(analysis.agreement))
    table = Table(title=title, caption="\n".join(notes) or None)
    table.add_column("observer")
    table.add_column("ratings", justify="right")
    results = [*analysis.observers, analysis.combined]
    if analysis.design == "single":
        for name in ("sensitivity", "specificity", "accuracy"):
            table.add_column(name, justify="right")
    else:
        table.add_column("altered image chosen", justify="right")
        table.add_column("p (exact binomial vs 50%)", justify="right")
    table.add_column("confidence", justify="right")
    for r in results:
        cells = [r.observer, str(r.n_ratings)]
        if r.detection is not None:
            cells += [str(r.detection.sensitivity), str(r.detection.specificity), str(r.detection.accuracy)]
        if r.forced_choice is not None:
            cells += [str(r.forced_choice.correct), f"{r.forced_choice.p_value:.3g}"]
        table.add_row(*cells, f"{r.mean_confidence:.1f}", end_section=r is analysis.observers[-1])
    tables = [table]
    if any(r.diagnosis for r in results):
        dx = Table(title="Human diagnosis accuracy (ratings with a diagnosis)")
        dx.add_column("observer")
        dx.add_column("clean images", justify="right")
        dx.add_column("altered images", justify="right")
        for r in results:
            if r.diagnosis:
                dx.add_row(r.observer, str(r.diagnosis["clean"]), str(r.diagnosis["altered"]))
        tables.append(dx)
    return tables
