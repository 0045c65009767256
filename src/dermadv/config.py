"""Option parsing shared by the CLI and the library (eps fractions, sizes, presets)."""

from __future__ import annotations

from fractions import Fraction

from dermadv.errors import ConfigError


def parse_eps(value: str | float) -> float:
    """Parse an L-inf budget such as ``2/255`` or ``0.0078``; refuse values outside (0, 1]."""
    if isinstance(value, str):
        text = value.strip()
        try:
            eps = float(Fraction(text)) if "/" in text else float(text)
        except (ValueError, ZeroDivisionError):
            raise ConfigError(f"eps {value!r} is not a number; write it like 2/255 or 0.0078") from None
    else:
        eps = float(value)
    if not 0.0 < eps <= 1.0:
        hint = f" — did you mean {value}/255?" if eps > 1.0 else ""
        raise ConfigError(f"eps must be in (0, 1] for images scaled to [0, 1]; got {value}{hint}")
    return eps


def parse_eps_list(value: str) -> list[float]:
    return [parse_eps(v) for v in value.split(",") if v.strip()]


def format_eps(eps: float) -> str:
    """``2/255`` when eps is a whole number of 8-bit steps, else a decimal."""
    k = eps * 255
    if abs(k - round(k)) < 1e-6:
        return f"{round(k)}/255"
    return f"{eps:.4g}"
