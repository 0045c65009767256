"""Proportion intervals and McNemar's test against statsmodels and the paper's published intervals."""

from __future__ import annotations

import numpy as np
import pytest
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.proportion import proportion_confint

from dermadv.errors import ConfigError
from dermadv.evaluation.stats import format_interval, format_p_value, mcnemar_test, proportion_ci
from dermadv.proportions import Proportion


@pytest.mark.parametrize(("method", "sm_method"), [("wald", "normal"), ("wilson", "wilson"), ("exact", "beta")])
def test_proportion_ci_equals_statsmodels(method, sm_method):
    rng = np.random.default_rng(0)
    for _ in range(200):
        n = int(rng.integers(1, 3000))
        k = int(rng.integers(0, n + 1))
        low, high = proportion_confint(k, n, alpha=0.05, method=sm_method)
        iv = proportion_ci(k, n, method=method)
        assert iv.estimate == pytest.approx(k / n)
        assert iv.low == pytest.approx(max(0.0, low), abs=1e-12)
        assert iv.high == pytest.approx(min(1.0, high), abs=1e-12)
        assert iv.method == method


def test_proportion_ci_rejects_unknown_method():
    with pytest.raises(ConfigError, match="wald, wilson, exact"):
        proportion_ci(1, 2, method="agresti")  # type: ignore[arg-type]


@pytest.mark.parametrize(("share", "expected"), [(0.84, (82, 86)), (0.67, (65, 69))])
def test_paper_accuracy_intervals_are_wald_on_1503_images(share, expected):
    # Allyn et al. 2020: 84% (82-86) clean, 67% (65-69) perturbed, on a ~15% test split of 10,015 images
    n = 1503
    iv = proportion_ci(round(share * n), n, method="wald")
    assert (round(iv.low * 100), round(iv.high * 100)) == expected


@pytest.mark.parametrize("exact", [True, False])
def test_mcnemar_equals_statsmodels_on_random_paired_data(exact):
    rng = np.random.default_rng(1)
    for _ in range(50):
        n = int(rng.integers(20, 500))
        clean = rng.random(n) < rng.uniform(0.3, 0.95)
        adv = np.where(rng.random(n) < 0.5, clean, rng.random(n) < 0.4)
        table = np.array([[np.sum(clean & adv), np.sum(clean & ~adv)], [np.sum(~clean & adv), np.sum(~clean & ~adv)]])
        if table[0, 1] + table[1, 0] == 0:
            continue
        ref = mcnemar(table, exact=exact, correction=True)
        res = mcnemar_test(clean, adv, exact=exact)
        assert res.table == table.tolist()
        assert res.statistic == pytest.approx(ref.statistic)
        assert res.p_value == pytest.approx(ref.pvalue)


def test_mcnemar_table_orientation_and_hand_values():
    # rows: clean correct / wrong; columns: adversarial correct / wrong
    clean = np.array([1, 1, 1, 1, 1, 1, 1, 0, 0, 0], dtype=bool)
    adv = np.array([1, 1, 1, 1, 0, 0, 0, 1, 0, 0], dtype=bool)
    exact = mcnemar_test(clean, adv, exact=True)
    assert exact.table == [[4, 3], [1, 2]]
    assert exact.p_value == pytest.approx(2 * (1 + 4) / 16)  # two-sided binomial, 3 vs 1 discordant
    chi2 = mcnemar_test(clean, adv, exact=False)
    assert chi2.statistic == pytest.approx((abs(3 - 1) - 1) ** 2 / 4)


def test_format_helpers():
    assert format_interval(Proportion(0.84, 0.8215, 0.8585, "wald")) == "84.0% (82.2–85.9)"
    assert format_interval(Proportion(0.5, 0.25, 0.75, "wald"), percent=False, digits=2) == "0.50 (0.25–0.75)"
    assert format_interval(proportion_ci(0, 0)) == "n/a"
    assert format_p_value(3e-7) == "P < .0001"
    assert format_p_value(0.625) == "P = 0.6250"
