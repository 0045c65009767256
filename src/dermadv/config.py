"""Option parsing and checking shared by the CLI and the library (eps fractions, config fields)."""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from collections.abc import Mapping
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal, Union

from dermadv.errors import ConfigError

#: The smallest L∞ budget that survives saving: adversarial images are 8-bit PNGs, so a budget under one 8-bit
#: step (1/255) leaves every saved pixel equal to the clean one.
MIN_EPS = 1 / 255


def parse_eps(value: str | float, *, saved: bool = False) -> float:
    """Parse an L∞ budget such as ``2/255`` or ``0.0078``; refuse values outside (0, 1].

    ``saved``: the budget of images saved as 8-bit PNGs (``attack run``, a generator fit), which must be at least
    one 8-bit step.
    """
    text = value.strip() if isinstance(value, str) else str(value)
    try:
        eps = float(Fraction(text)) if "/" in text else float(text)
    except (ValueError, ZeroDivisionError):
        raise ConfigError(f"eps {value!r} is not a number; write it like 2/255 or 0.0078") from None
    if not 0.0 < eps <= 1.0:
        # "8" was meant as 8/255; "300/255" is a fraction already and simply too large
        hint = f" — did you mean {text}/255?" if eps > 1.0 and "/" not in text else ""
        shown = f"{text} = {eps:.3g}" if "/" in text else text
        raise ConfigError(f"eps must be in (0, 1] for images scaled to [0, 1]; got {shown}{hint}")
    if saved and eps < MIN_EPS - 1e-12:
        raise ConfigError(
            f"eps {text} is less than one 8-bit step (1/255 ≈ 0.0039): the saved 8-bit adversarial images would "
            "equal the clean ones; use 1/255 or more"
        )
    return eps


def parse_eps_list(value: str, *, option: str = "--eps") -> list[str]:
    """Check every budget of a comma-separated list (``1/255,2/255``) before any work; returns the items."""
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise ConfigError(f"{option} needs at least one budget such as 2/255; got {value!r}")
    for item in items:
        try:
            parse_eps(item, saved=True)
        except ConfigError as exc:
            raise ConfigError(f"{option} {value}: {exc}") from None
    return items


def format_eps(eps: float) -> str:
    """``2/255`` when eps is a whole number of 8-bit steps, else a decimal."""
    k = eps * 255
    if abs(k - round(k)) < 1e-6:
        return f"{round(k)}/255"
    return f"{eps:.4g}"


# --- config dataclasses: every field checked when the config is made, so bad input fails before any work ---


_INT64 = 2**63


def check_types(config: Any) -> None:
    """Refuse a field whose value has the wrong type (a YAML ``lr: fast`` or ``augment: "no"``), naming it."""
    hints = typing.get_type_hints(type(config))
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{f.name} must be a finite number; got {value!r}")
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= _INT64:
            # seeds and counts go to numpy and torch as 64-bit integers: a larger one is an overflow traceback there
            raise ConfigError(f"{f.name} must be below 2**63 ({_INT64 - 1}); got {value}")
        if not _fits(value, hints[f.name]):
            raise ConfigError(f"{f.name} must be {_describe(hints[f.name])}; got {value!r}")


def _fits(value: Any, tp: Any) -> bool:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return any(value == a and type(value) is type(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return any(_fits(value, a) for a in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    if tp is Path:
        return isinstance(value, (str, os.PathLike))
    if origin is dict or tp is dict:
        return isinstance(value, Mapping)
    if origin is tuple:
        return isinstance(value, (tuple, list))
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return isinstance(value, tp)
    return True  # other annotations are not checked here


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(str(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        parts = [_describe(a) for a in typing.get_args(tp) if a is not type(None)]
        return " or ".join(parts) + (" (or null)" if type(None) in typing.get_args(tp) else "")
    names = {bool: "true or false", int: "a whole number", float: "a number", str: "text", Path: "a path"}
    if tp in names:
        return names[tp]
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return f"a mapping of {', '.join(f.name for f in dataclasses.fields(tp))}"
    return str(tp)


def check_budgets(config: Any, *names: str) -> None:
    """Each named field is ``None`` or a budget of saved images (:func:`parse_eps` with ``saved``)."""
    for name in names:
        if getattr(config, name) is not None:
            parse_eps(getattr(config, name), saved=True)


def check_at_least(config: Any, low: float, *names: str) -> None:
    """Each named field is ``None`` or at least ``low``."""
    for name in names:
        value = getattr(config, name)
        if value is not None and value < low:
            raise ConfigError(f"{name} must be at least {low:g}; got {value!r}")


def check_at_most(config: Any, high: float, *names: str, why: str = "") -> None:
    """Each named field is ``None`` or at most ``high`` (``why`` says where the limit comes from)."""
    for name in names:
        value = getattr(config, name)
        if value is not None and value > high:
            raise ConfigError(f"{name} must be at most {high:g}{why}; got {value!r}")


def check_positive(config: Any, *names: str) -> None:
    """Each named field is ``None`` or greater than 0."""
    for name in names:
        value = getattr(config, name)
        if value is not None and not value > 0:
            raise ConfigError(f"{name} must be greater than 0; got {value!r}")


def check_share(config: Any, *names: str) -> None:
    """Each named field is a share in [0, 1)."""
    for name in names:
        value = getattr(config, name)
        if not 0 <= value < 1:
            raise ConfigError(f"{name} must be in [0, 1); got {value!r}")


def config_from_mapping(cls: type, values: Mapping[str, Any], *, where: str) -> Any:
    """``cls(**values)`` after refusing unknown keys; a nested config dataclass may be given as a mapping."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(f"{where} has unknown key(s) {', '.join(unknown)}; valid: {', '.join(sorted(names))}")
    hints = typing.get_type_hints(cls)
    converted = dict(values)
    for name, value in values.items():
        nested = hints[name]
        if isinstance(nested, type) and dataclasses.is_dataclass(nested) and isinstance(value, Mapping):
            converted[name] = config_from_mapping(nested, value, where=f"{where}: {name}")
    return cls(**converted)


def config_options(cls: type, options: Mapping[str, Any], **changed: Any) -> dict[str, Any]:
    """The command's options that are fields of the config dataclass ``cls``, by name (pass the command's
    ``locals()`` before it binds other names), with ``changed`` replacing the ones the command converts."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in options.items() if k in names} | changed


def given_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """The options a user gave, a repeatable one's values as a tuple; one left unset (``None``, or a repeatable option
    given no value) is dropped, so the config's default (or a preset's, or a config file's) holds."""
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in options.items()}
    return {k: v for k, v in values.items() if v is not None and v != ()}


def read_config_file(path: Path) -> dict[str, Any]:
    """The options of a YAML config file (``key: value`` lines), with one-line errors for what is not one."""
    import yaml

    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist; see recipes/ for examples")
    try:
        loaded = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise ConfigError(
            f"config file {path} is not valid YAML{where}: {problem}; see recipes/ for examples"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(
            f"config file {path} must hold option: value lines (a YAML mapping such as `epochs: 10`); "
            f"it holds a {type(loaded).__name__}: {str(loaded)[:40]!r}"
        )
    return {str(k): v for k, v in loaded.items()}
