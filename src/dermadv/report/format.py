"""Number formatting shared by the HTML and Markdown reports (intervals in %, P values, budgets)."""

from __future__ import annotations

import math
from typing import Any


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
    """An interval dict (estimate, low, high on [0, 1]) as ``84.0% (82.1–85.9)``."""
    if not isinstance(iv, dict) or _missing(iv.get("estimate")):
        return "n/a"
    text = f"{100 * iv['estimate']:.1f}%"
    if not _missing(iv.get("low")) and not _missing(iv.get("high")):
        text += f" ({100 * iv['low']:.1f}–{100 * iv['high']:.1f})"
    if iv.get("k") is not None and iv.get("n") is not None:
        text += f" {iv['k']}/{iv['n']}"
    return text


def p_text(p: Any) -> str:
    """P value in the paper's journal style: ``P < .0001`` below 1e-4, else four decimals."""
    if _missing(p):
        return "n/a"
    return "P < .0001" if p < 1e-4 else f"P = {p:.4f}"


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


FILTERS = {"md": md_cell, "iv": interval_text, "num": num, "p": p_text, "eps": eps_text, "pct": percent}
