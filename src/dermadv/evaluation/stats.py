"""Plain statistics with named results: proportion CIs and McNemar's test (via statsmodels)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from statsmodels.stats.contingency_tables import mcnemar as _sm_mcnemar
from statsmodels.stats.proportion import proportion_confint

from dermadv.errors import ConfigError

CIMethod = Literal["wald", "wilson", "exact"]
CI_METHODS: tuple[CIMethod, ...] = ("wald", "wilson", "exact")
_SM_METHOD = {"wald": "normal", "wilson": "wilson", "exact": "beta"}

#: Wald is the default because the paper's intervals are Wald (84% (82-86) on ~1,500 images);
#: matching the paper's method keeps the side-by-side table comparable. Wilson is better near 0 or 1.
DEFAULT_CI: CIMethod = "wald"


@dataclass(frozen=True)
class Interval:
    estimate: float
    low: float
    high: float
    method: str

    def as_dict(self) -> dict[str, float | str]:
        return {"estimate": self.estimate, "low": self.low, "high": self.high, "method": self.method}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Interval:
        """Read :meth:`as_dict` back from JSON, where an undefined (NaN) bound is null."""
        low, high, estimate = (float("nan") if d.get(k) is None else float(d[k]) for k in ("low", "high", "estimate"))
        return cls(estimate, low, high, str(d.get("method", "")))


def proportion_ci(k: int, n: int, *, method: CIMethod = DEFAULT_CI, alpha: float = 0.05) -> Interval:
    """Share ``k/n`` with a (1-alpha) interval: Wald, Wilson or Clopper–Pearson ("exact")."""
    if method not in _SM_METHOD:
        raise ConfigError(f"CI method must be one of wald, wilson, exact; got {method!r}")
    if n <= 0:
        return Interval(float("nan"), float("nan"), float("nan"), method)
    low, high = proportion_confint(k, n, alpha=alpha, method=_SM_METHOD[method])
    low, high = float(np.clip(low, 0, 1)), float(np.clip(high, 0, 1))
    return Interval(k / n, low, high, method)


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


def format_interval(
    interval: Interval, *, percent: bool = True, digits: int = 1, counts: tuple[int, int] | None = None
) -> str:
    """``84.0% (82.1–85.9)``, with ``counts`` (k, n) ``84.0% (82.1–85.9) 42/50``; ``n/a`` when the interval is
    undefined (no observations)."""
    if np.isnan(interval.estimate):
        return "n/a"
    scale, unit = (100.0, "%") if percent else (1.0, "")
    text = (
        f"{interval.estimate * scale:.{digits}f}{unit} "
        f"({interval.low * scale:.{digits}f}–{interval.high * scale:.{digits}f})"
    )
    return f"{text} {counts[0]}/{counts[1]}" if counts is not None else text


def format_p_value(p: float | None) -> str:
    """P value in the journal style the paper uses: ``P < .0001`` below 1e-4, else 4 decimals."""
    if p is None or np.isnan(p):
        return "n/a"
    if p < 1e-4:
        return "P < .0001"
    return f"P = {p:.4f}"


def format_value(value: Any, fmt: str = "g") -> str:
    """A measure as printed: an :class:`Interval` as ``84.0% (82.1–85.9)``, a P value (``fmt="p"``), a number."""
    if isinstance(value, Interval):
        return format_interval(value)
    if fmt == "p":
        return format_p_value(value)
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "n/a"
    return value if isinstance(value, str) else format(value, fmt)
