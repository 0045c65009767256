"""Number formatting shared by the HTML and Markdown reports (intervals in %, P values, budgets)."""

from __future__ import annotations

import math
from typing import Any

from dermadv.evaluation.stats import format_interval, format_p_value
from dermadv.proportions import Proportion


def _missing(x: Any) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def num(x: Any, fmt: str = "g", suffix: str = "") -> str:
    """``format(x, fmt) + suffix``, or ``n/a`` for null/NaN."""
    if _missing(x):
        return "n/a"
    try:
        return format(x, fmt) + suffix
    except (TypeError, ValueError):
        return str(x)


def interval_text(iv: Any) -> str:
    """An interval (a :class:`Proportion`, or its JSON form: estimate, low, high on [0, 1]; ``k`` of ``n``) as
    ``84.0% (82.1–85.9) 42/50``; ``n/a`` for anything else or an undefined estimate."""
    if isinstance(iv, Proportion):
        return "n/a" if _missing(iv.estimate) else format_interval(iv, counts=iv.counts)
    if not isinstance(iv, dict) or _missing(iv.get("estimate")):
        return "n/a"
    counts = (iv["k"], iv["n"]) if iv.get("k") is not None and iv.get("n") is not None else None
    return format_interval(Proportion.from_dict(iv), counts=counts)


def eps_text(eps_255: Any) -> str:
    """A budget in 8-bit steps as ``8/255``."""
    if _missing(eps_255):
        return "n/a"
    return f"{float(eps_255):g}/255"


def percent(x: Any, digits: int = 1) -> str:
    """A share on [0, 1] as a percentage."""
    return "n/a" if _missing(x) else f"{100 * float(x):.{digits}f}%"


def md_cell(text: Any) -> str:
    """Text safe inside a Markdown table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ")


FILTERS = {"md": md_cell, "iv": interval_text, "num": num, "p": format_p_value, "eps": eps_text, "pct": percent}
