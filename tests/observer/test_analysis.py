"""Observer statistics against the paper, statsmodels, scikit-learn and scipy."""

from __future__ import annotations

import csv
import json
import math
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from rich.console import Console
from scipy.stats import binomtest
from sklearn.metrics import cohen_kappa_score
from statsmodels.stats.proportion import proportion_confint

from dermadv.errors import ConfigError, RunError
from dermadv.observer.analysis import (
    StudyAnalysis,
    analysis_tables,
    analyze_study,
    cohen_kappa,
    detection_rates,
    diagnosis_accuracy,
    fleiss_kappa,
    forced_choice,
    write_analysis,
)
from dermadv.observer.storage import StudyDB
from dermadv.observer.study import Study, invite_observer, load_answer_key


def _paper_ratings() -> tuple[np.ndarray, np.ndarray]:
    """The paper's implied counts: 35 of 60 altered ratings called altered, 17 of 40 clean ratings called clean."""
    altered = np.array([True] * 60 + [False] * 40)
    called = np.array([True] * 35 + [False] * 25 + [False] * 17 + [True] * 23)
    return altered, called


def test_paper_sensitivity_and_specificity_wald() -> None:
    rates = detection_rates(*_paper_ratings())
    sens, spec = rates.sensitivity, rates.specificity
    assert (sens.k, sens.n, spec.k, spec.n) == (35, 60, 17, 40)
    assert [round(100 * v, 1) for v in (sens.estimate, sens.low, sens.high)] == [58.3, 45.9, 70.8]
    assert [round(100 * v, 1) for v in (spec.estimate, spec.low, spec.high)] == [42.5, 27.2, 57.8]
    assert str(sens) == "58.3% (45.9–70.8) 35/60"
    assert rates.accuracy.k == 52 and rates.accuracy.n == 100


@pytest.mark.parametrize(("method", "sm_method"), [("wald", "normal"), ("wilson", "wilson"), ("exact", "beta")])
def test_ci_methods_match_statsmodels(method, sm_method) -> None:
    rng = np.random.default_rng(7)
    altered, called = rng.random(80) < 0.6, rng.random(80) < 0.5
    rates = detection_rates(altered, called, ci_method=method)
    for p in (rates.sensitivity, rates.specificity, rates.accuracy):
        low, high = proportion_confint(p.k, p.n, method=sm_method)
        assert p.method == method
        assert p.low == pytest.approx(max(low, 0.0)) and p.high == pytest.approx(min(high, 1.0))


def _fce_se(a: np.ndarray, b: np.ndarray) -> float:
    """Large-sample SE of Cohen's kappa, Fleiss, Cohen & Everitt (1969), written out independently."""
    cats = sorted(set(a) | set(b))
    n = len(a)
    p = np.array([[np.sum((a == i) & (b == j)) for j in cats] for i in cats]) / n
    row, col = p.sum(1), p.sum(0)
    po, pe = np.trace(p), float(row @ col)
    k = (po - pe) / (1 - pe)
    s = sum(p[i, i] * (1 - (row[i] + col[i]) * (1 - k)) ** 2 for i in range(len(cats)))
    s += (1 - k) ** 2 * sum(
        p[i, j] * (col[i] + row[j]) ** 2 for i in range(len(cats)) for j in range(len(cats)) if i != j
    )
    s -= (k - pe * (1 - k)) ** 2
    return math.sqrt(s / (n * (1 - pe) ** 2))


@pytest.mark.parametrize("seed", range(5))
def test_cohen_kappa_matches_sklearn_and_large_sample_se(seed) -> None:
    rng = np.random.default_rng(seed)
    a = rng.choice(["yes", "no"], size=50)
    b = np.where(rng.random(50) < 0.4, a, rng.choice(["yes", "no"], size=50))
    result = cohen_kappa(a, b)
    assert result.kappa == pytest.approx(cohen_kappa_score(a, b))
    half = 1.959963984540054 * _fce_se(a, b)
    assert result.low == pytest.approx(max(result.kappa - half, -1)) and result.high == pytest.approx(
        result.kappa + half
    )
    assert -1 <= result.low < result.kappa < result.high <= 1
    assert result.n_items == 50 and result.n_raters == 2


def test_cohen_kappa_interval_is_clipped_to_bounds() -> None:
    a = np.array(["yes", "yes", "no", "no", "yes", "no"])
    b = np.array(["yes", "yes", "no", "no", "yes", "yes"])  # kappa 2/3 on 6 items: the raw upper bound is 1.23
    result = cohen_kappa(a, b)
    assert result.kappa == pytest.approx(2 / 3) and result.kappa + 1.96 * _fce_se(a, b) > 1
    assert result.high == 1.0 and result.low == pytest.approx(result.kappa - 1.959963984540054 * _fce_se(a, b))


def test_cohen_kappa_degenerate_and_errors() -> None:
    same = cohen_kappa(["yes"] * 5, ["yes"] * 5, categories=("yes", "no"))
    assert math.isnan(same.kappa) and same.low is None
    with pytest.raises(ConfigError):
        cohen_kappa(["yes", "no"], ["yes"])


def _fleiss_reference(ratings: np.ndarray) -> float:
    """Fleiss (1971), written out independently."""
    cats = sorted(set(ratings.ravel()))
    n_items, n_raters = ratings.shape
    counts = np.array([[np.sum(row == c) for c in cats] for row in ratings], dtype=float)
    p_j = counts.sum(0) / (n_items * n_raters)
    p_i = ((counts**2).sum(1) - n_raters) / (n_raters * (n_raters - 1))
    pbar, pe = p_i.mean(), (p_j**2).sum()
    return float((pbar - pe) / (1 - pe))


@pytest.mark.parametrize(("seed", "n_raters"), [(0, 3), (1, 4), (2, 5)])
def test_fleiss_kappa_matches_reference(seed, n_raters) -> None:
    rng = np.random.default_rng(seed)
    truth = rng.choice(["yes", "no"], size=40)
    ratings = np.stack(
        [np.where(rng.random(40) < 0.5, truth, rng.choice(["yes", "no"], 40)) for _ in range(n_raters)], 1
    )
    result = fleiss_kappa(ratings)
    assert result.kappa == pytest.approx(_fleiss_reference(ratings))
    assert (result.n_items, result.n_raters, result.method) == (40, n_raters, "fleiss")


def test_forced_choice_exact_binomial() -> None:
    result = forced_choice([True] * 9 + [False])
    assert result.p_value == pytest.approx(2 * 11 / 1024)  # P(X >= 9) doubled, X ~ Bin(10, 1/2)
    assert result.correct.k == 9 and result.correct.n == 10
    rng = np.random.default_rng(3)
    hits = rng.random(37) < 0.6
    assert forced_choice(hits, ci_method="exact").p_value == pytest.approx(binomtest(int(hits.sum()), 37).pvalue)
    assert forced_choice([True] * 5 + [False] * 5).p_value == pytest.approx(1.0)


def test_diagnosis_accuracy_clean_vs_altered() -> None:
    labels = ["mel", "nv", "bcc", "mel", "nv", "bkl"]
    diagnoses = ["mel", "nv", None, "nv", "nv", "nv"]
    altered = [False, False, False, True, True, True]
    result = diagnosis_accuracy(labels, diagnoses, altered)
    assert (result["clean"].k, result["clean"].n) == (2, 2)  # the rating without a diagnosis is left out
    assert (result["altered"].k, result["altered"].n) == (1, 3)


def _answer_all(study: Study, name: str, decide) -> None:
    """Invite ``name`` and answer every item with ``decide(key_entry, index) -> (answer, diagnosis)``."""
    key = load_answer_key(study.path)
    db = StudyDB(study.db_path)
    observer_id = invite_observer(study.path, name).observer_id
    index = 0
    while (item_id := db.serve_next(observer_id)) is not None:
        answer, diagnosis = decide(key[item_id], index)
        db.record_answer(observer_id, item_id, answer=answer, confidence=1 + index % 5, diagnosis=diagnosis)
        index += 1


def _counted(n_yes_altered: int, n_no_clean: int):
    state = {"altered": 0, "clean": 0}

    def decide(entry, index):
        if entry.altered:
            state["altered"] += 1
            return ("yes" if state["altered"] <= n_yes_altered else "no"), None
        state["clean"] += 1
        return ("no" if state["clean"] <= n_no_clean else "yes"), entry.label

    return decide


def test_per_observer_and_combined_counts(make_study) -> None:
    study = make_study(n=20, perturbed_share=0.6)  # 12 altered + 8 clean items
    _answer_all(study, "Observer A", _counted(7, 4))
    _answer_all(study, "Observer B", _counted(5, 4))
    analysis = analyze_study(study.path)
    combined = analysis.combined.detection
    assert (combined.sensitivity.k, combined.sensitivity.n) == (12, 24)
    assert (combined.specificity.k, combined.specificity.n) == (8, 16)
    a, b = analysis.observers
    assert (a.observer, a.detection.sensitivity.k, b.detection.sensitivity.k) == ("Observer A", 7, 5)
    assert analysis.agreement.method == "cohen" and analysis.agreement.n_items == 20
    assert a.diagnosis["clean"].n == 8 and a.diagnosis["clean"].k == 8 and a.diagnosis["altered"].n == 0


def test_paper_counts_through_the_whole_pipeline(fake_attack_dir, tmp_path: Path) -> None:
    from dermadv.observer.study import create_study

    attack = fake_attack_dir(tmp_path / "adv", n_images=50, size=(8, 8))
    study = create_study(attack, tmp_path / "s", n=50, perturbed_share=0.6, seed=1)
    _answer_all(study, "Observer A", _counted(18, 9))  # 18/30 altered called altered, 9/20 clean called clean
    _answer_all(study, "Observer B", _counted(17, 8))
    analysis = analyze_study(study.path)
    sens, spec = analysis.combined.detection.sensitivity, analysis.combined.detection.specificity
    assert f"{sens}" == "58.3% (45.9–70.8) 35/60"
    assert f"{spec}" == "42.5% (27.2–57.8) 17/40"
    wilson = analyze_study(study.path, ci_method="wilson").combined.detection.sensitivity
    assert wilson.method == "wilson" and wilson.low != pytest.approx(sens.low)

    out = write_analysis(study.path, tmp_path / "analysis", analysis)
    data = json.loads((out / "analysis.json").read_text())
    assert data["combined"]["sensitivity"]["k"] == 35 and data["agreement"]["method"] == "cohen"
    with open(out / "analysis.csv") as f:
        rows = list(csv.DictReader(f))
    combined = {r["measure"]: r for r in rows if r["observer"] == "combined"}
    assert float(combined["specificity"]["low"]) == pytest.approx(0.2718, abs=1e-3)
    with open(out / "ratings.csv") as f:
        ratings = list(csv.DictReader(f))
    assert len(ratings) == 100 and {"image_id", "condition", "correct"} <= set(ratings[0])

    console = Console(record=True, width=200)
    for table in analysis_tables(analysis):
        console.print(table)
    text = console.export_text()
    assert "58.3% (45.9–70.8) 35/60" in text and "42.5% (27.2–57.8) 17/40" in text and "Cohen's kappa" in text


def test_three_observers_use_fleiss(make_study) -> None:
    study = make_study(n=10)
    for name in ("A", "B", "C"):
        _answer_all(study, name, lambda entry, i: (("yes" if i % 3 else "no"), None))
    agreement = analyze_study(study.path).agreement
    assert agreement.method == "fleiss" and agreement.n_raters == 3 and agreement.n_items == 10


def test_2afc_study_analysis(make_study) -> None:
    study = make_study(n=10, design="2afc")

    def decide(entry, i):  # right on the first 8 pairs, wrong on the last 2
        wrong = "right" if entry.altered_side == "left" else "left"
        return (entry.altered_side if i < 8 else wrong), None

    _answer_all(study, "A", decide)
    analysis = analyze_study(study.path)
    fc = analysis.observers[0].forced_choice
    assert (fc.correct.k, fc.correct.n) == (8, 10)
    assert fc.p_value == pytest.approx(2 * 56 / 1024)  # P(X >= 8) doubled, X ~ Bin(10, 1/2)
    assert analysis.observers[0].detection is None and analysis.agreement is None
    assert analysis.as_dict()["combined"]["binomial_p_value"] == pytest.approx(fc.p_value)


def test_no_answers_and_bad_method(make_study) -> None:
    study = make_study(n=4)
    with pytest.raises(RunError, match="no answers yet"):
        analyze_study(study.path)
    with pytest.raises(ConfigError, match="CI method"):
        analyze_study(study.path, ci_method="bootstrap")


def _assert_same(back: Any, original: Any, where: str = "analysis") -> None:
    """Field by field, down through the nested dataclasses; NaN equals NaN."""
    assert type(back) is type(original), where
    if is_dataclass(original):
        for f in fields(original):
            _assert_same(getattr(back, f.name), getattr(original, f.name), f"{where}.{f.name}")
    elif isinstance(original, (list, tuple)):
        assert len(back) == len(original), where
        for i, (b, o) in enumerate(zip(back, original, strict=True)):
            _assert_same(b, o, f"{where}[{i}]")
    elif isinstance(original, dict):
        assert list(back) == list(original), where
        for key in original:
            _assert_same(back[key], original[key], f"{where}[{key!r}]")
    else:
        np.testing.assert_equal(back, original, err_msg=where)


@pytest.mark.parametrize(
    ("design", "observers", "decide"),
    [
        ("single", ("A", "B"), lambda: _counted(7, 4)),  # diagnoses on clean items only: altered n = 0, NaN
        ("single", ("A", "B"), lambda: lambda entry, i: ("yes", None)),  # all "yes": kappa undefined, no interval
        ("single", ("A", "B", "C"), lambda: lambda entry, i: ("yes" if i % 3 else "no", None)),  # Fleiss
        ("2afc", ("A",), lambda: lambda entry, i: ("left", None)),  # forced choice, no agreement
    ],
    ids=["diagnosis", "degenerate-kappa", "fleiss", "2afc"],
)
def test_from_dict_reads_back_the_written_analysis(make_study, tmp_path: Path, design, observers, decide) -> None:
    study = make_study(n=20, perturbed_share=0.6, design=design)
    for name in observers:
        _answer_all(study, name, decide())
    analysis = analyze_study(study.path)
    out = write_analysis(study.path, tmp_path / "analysis", analysis)
    back = StudyAnalysis.from_dict(json.loads((out / "analysis.json").read_text()))
    _assert_same(back, analysis)
    assert back.as_dict().keys() == analysis.as_dict().keys()
