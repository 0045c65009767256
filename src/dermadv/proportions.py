"""A share of images, ``k`` of ``n``, with its confidence interval where computed, and the worst class among
per-class shares (shared by every stage)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

#: the JSON forms of a :class:`Proportion`: counts ``{k, n}`` (defence results), interval
#: ``{estimate, low, high, method}`` (evaluation metrics), both ``{k, n, estimate, low, high, method}`` (observer)
ProportionForm = Literal["counts", "interval", "both"]


def _missing(x: float) -> bool:
    return math.isnan(x)


@dataclass(frozen=True, eq=False)
class Proportion:
    """A share: its ``estimate``, a confidence interval (``low``, ``high`` by ``method``; ``None``: none computed)
    and, where counted, ``k`` of ``n``.

    Made by :func:`dermadv.evaluation.stats.proportion_ci` (interval and counts) or :meth:`counted` (counts only:
    a reader can put any interval on them). Two proportions are equal when every field is, NaN equal to NaN.
    """

    estimate: float
    low: float = math.nan
    high: float = math.nan
    method: str | None = None
    k: int | None = None
    n: int | None = None

    @classmethod
    def counted(cls, k: int, n: int) -> Proportion:
        """``k`` of ``n``, without an interval."""
        return cls(k / n if n else math.nan, k=int(k), n=int(n))

    @classmethod
    def of(cls, mask: Any) -> Proportion:
        """The share of true values in a boolean array or tensor, without an interval."""
        return cls.counted(int(mask.sum()), int(mask.numel() if hasattr(mask, "numel") else len(mask)))

    @property
    def counts(self) -> tuple[int, int] | None:
        return (self.k, self.n) if self.k is not None and self.n is not None else None

    def _key(self) -> tuple[Any, ...]:
        floats = tuple(None if _missing(x) else x for x in (self.estimate, self.low, self.high))
        return (*floats, self.method, self.k, self.n)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Proportion) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def to_dict(self, form: ProportionForm | None = None) -> dict[str, Any]:
        """The JSON form ``form``; ``None``: the interval, or the counts where it has no interval."""
        if form is None:
            form = "counts" if self.method is None else "interval"
        counts = {"k": self.k, "n": self.n}
        interval = {"estimate": self.estimate, "low": self.low, "high": self.high, "method": self.method}
        return counts if form == "counts" else interval if form == "interval" else counts | interval

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Proportion:
        """Read any form of :meth:`to_dict` back from JSON, where an undefined (NaN) value is null."""
        k, n = (None if d.get(key) is None else int(d[key]) for key in ("k", "n"))
        if "estimate" not in d and k is not None and n is not None:
            return cls.counted(k, n)
        low, high, estimate = (math.nan if d.get(key) is None else float(d[key]) for key in ("low", "high", "estimate"))
        return cls(estimate, low, high, str(d.get("method", "")), k, n)

    def __str__(self) -> str:
        if self.n == 0:
            return "–"
        if self.method is None and self.counts is not None:
            return f"{self.k}/{self.n}"
        return format_interval(self, counts=self.counts)


def format_interval(
    interval: Proportion, *, percent: bool = True, digits: int = 1, counts: tuple[int, int] | None = None
) -> str:
    """``84.0% (82.1–85.9)``, with ``counts`` (k, n) ``84.0% (82.1–85.9) 42/50``; ``n/a`` when the interval is
    undefined (no observations)."""
    if _missing(interval.estimate):
        return "n/a"
    scale, unit = (100.0, "%") if percent else (1.0, "")
    text = (
        f"{interval.estimate * scale:.{digits}f}{unit} "
        f"({interval.low * scale:.{digits}f}–{interval.high * scale:.{digits}f})"
    )
    return f"{text} {counts[0]}/{counts[1]}" if counts is not None else text


def worst_class(fooled: Mapping[str, Proportion]) -> str | None:
    """The class with the smallest share fooled among the classes with images (the first such, in order); the
    paper's worst-class fooling ratio. None when no class has images."""
    present = [c for c, share in fooled.items() if share.n]
    return min(present, key=lambda c: fooled[c].estimate) if present else None
