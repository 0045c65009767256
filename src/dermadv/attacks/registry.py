"""Attack registry: ``@register_attack(name)`` on a class, ``create_attack(name, **kwargs)`` to build one.

The registry imports no attack module; :mod:`dermadv.attacks` imports them all, and each registers itself.
A name ending in ``:`` registers a family: ``@register_attack("art:")`` on the ART adapter makes
``create_attack("art:SquareAttack", eps=...)`` build ``ArtAttack("SquareAttack", eps=...)``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, TypeVar

from dermadv.attacks.base import Attack
from dermadv.errors import ConfigError

_REGISTRY: dict[str, type[Attack]] = {}

A = TypeVar("A", bound=type[Attack])


def register_attack(name: str) -> Callable[[A], A]:
    """Class decorator: make ``create_attack(name)`` build this attack and set its ``name``."""
    key = name.lower()

    def decorator(cls: A) -> A:
        existing = _REGISTRY.get(key)
        if existing is not None and existing is not cls:
            raise ValueError(f"attack name {key!r} is already registered by {existing.__qualname__}")
        cls.name = key
        _REGISTRY[key] = cls
        return cls

    return decorator


def list_attacks() -> list[str]:
    """Names of the registered attacks (families such as ``art:<ClassName>`` are accepted too but not listed)."""
    return sorted(name for name in _REGISTRY if not name.endswith(":"))


def get_attack_class(name: str) -> type[Attack]:
    """The class registered under ``name``; ``ConfigError`` listing the valid names if there is none."""
    family, colon, _ = name.lower().partition(":")
    cls = _REGISTRY.get(family + colon)
    if cls is None:
        raise ConfigError(
            f"unknown attack {name!r}; choose one of {', '.join(list_attacks())}, or art:<ClassName> for an evasion "
            "attack of the Adversarial Robustness Toolbox (e.g. art:SquareAttack)"
        )
    return cls


def create_attack(name: str, **kwargs: Any) -> Attack:
    """Build the attack registered as ``name`` with its hyperparameters, e.g. ``create_attack("pgd", eps=2/255)``."""
    cls = get_attack_class(name)
    args = [name.partition(":")[2]] if ":" in name else []  # a family member: its class name comes first
    try:
        inspect.signature(cls).bind(*args, **kwargs)
    except TypeError as exc:
        accepted = ", ".join(p for p in inspect.signature(cls).parameters if p not in ("args", "kwargs"))
        raise ConfigError(f"bad hyperparameters for attack {name!r} ({exc}); it accepts {accepted}") from None
    return cls(*args, **kwargs)
