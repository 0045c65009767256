"""Plain statistics with named results: proportion CIs and McNemar's test (via statsmodels)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from statsmodels.stats.contingency_tables import mcnemar as _sm_mcnemar
from statsmodels.stats.proportion import proportion_confint

from dermadv.errors import ConfigError
from dermadv.proportions import Proportion, format_interval

__all__ = [
    "CI_METHODS",
    "DEFAULT_CI",
    "CIMethod",
    "McNemarResult",
    "Proportion",
    "format_interval",
    "format_p_value",
    "format_value",
    "mcnemar_test",
    "paired_table",
    "proportion_ci",
]

CIMethod = Literal["wald", "wilson", "exact"]
CI_METHODS: tuple[CIMethod, ...] = ("wald", "wilson", "exact")
_SM_METHOD = {"wald": "normal", "wilson": "wilson", "exact": "beta"}

#: Wald is the default because the paper's intervals are Wald (84% (82-86) on ~1,500 images);
#: matching the paper's method keeps the side-by-side table comparable. Wilson is better near 0 or 1.
DEFAULT_CI: CIMethod = "wald"


def proportion_ci(k: int, n: int, *, method: CIMethod = DEFAULT_CI, alpha: float = 0.05) -> Proportion:
    """Share ``k/n`` with a (1-alpha) interval: Wald, Wilson or Clopper–Pearson ("exact"); without its counts, as
    the metrics' JSON holds intervals only (:meth:`Proportion.to_dict`)."""
    if method not in _SM_METHOD:
        raise ConfigError(f"CI method must be one of wald, wilson, exact; got {method!r}")
    if n <= 0:
        return Proportion(math.nan, math.nan, math.nan, method)
    low, high = proportion_confint(k, n, alpha=alpha, method=_SM_METHOD[method])
    low, high = float(np.clip(low, 0, 1)), float(np.clip(high, 0, 1))
    return Proportion(k / n, low, high, method)


@dataclass(frozen=True)
class McNemarResult:
    statistic: float
    p_value: float
    exact: bool
    table: list[list[int]]  # [[both correct, clean only], [adv only, both wrong]]

    def as_dict(self) -> dict[str, object]:
        return {"statistic": self.statistic, "p_value": self.p_value, "exact": self.exact, "table": self.table}


def paired_table(correct_a: np.ndarray, correct_b: np.ndarray) -> list[list[int]]:
    a = np.asarray(correct_a, dtype=bool)
    b = np.asarray(correct_b, dtype=bool)
    if a.shape != b.shape:
        raise ConfigError(f"paired arrays differ in length: {a.shape} vs {b.shape}")
    return [
        [int(np.sum(a & b)), int(np.sum(a & ~b))],
        [int(np.sum(~a & b)), int(np.sum(~a & ~b))],
    ]


def mcnemar_test(correct_clean: np.ndarray, correct_adv: np.ndarray, *, exact: bool = True) -> McNemarResult:
    """McNemar (1947) on paired per-image correctness.

    ``exact=True``: binomial test on the discordant pairs; ``exact=False``: chi-square with
    continuity correction. Both through :func:`statsmodels.stats.contingency_tables.mcnemar`.
    """
    table = paired_table(correct_clean, correct_adv)
    if table[0][1] + table[1][0] == 0:
        # No discordant pairs: no evidence of a difference (statsmodels' chi-square would divide by zero).
        return McNemarResult(0.0, 1.0, exact, table)
    res = _sm_mcnemar(np.array(table), exact=exact, correction=True)
    return McNemarResult(float(res.statistic), float(res.pvalue), exact, table)


def format_p_value(p: float | None) -> str:
    """P value in the journal style the paper uses: ``P < .0001`` below 1e-4, else 4 decimals."""
    if p is None or np.isnan(p):
        return "n/a"
    if p < 1e-4:
        return "P < .0001"
    return f"P = {p:.4f}"


def format_value(value: Any, fmt: str = "g") -> str:
    """A measure as printed: a :class:`Proportion` as ``84.0% (82.1–85.9)``, a P value (``fmt="p"``), a number."""
    if isinstance(value, Proportion):
        return format_interval(value)
    if fmt == "p":
        return format_p_value(value)
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "n/a"
    return value if isinstance(value, str) else format(value, fmt)
