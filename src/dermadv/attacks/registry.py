"""Attack registry: ``@register_attack(name)`` on a class, ``create_attack(name, **kwargs)`` to build one.

Names of the form ``art:<ClassName>`` build :class:`dermadv.attacks.art.ArtAttack`, which imports the
Adversarial Robustness Toolbox only then. Modules with heavy or optional parts (the generator attack)
register lazily: :data:`LAZY_MODULES` are tried on first use.
"""

from __future__ import annotations

import importlib
import inspect
import logging
from collections.abc import Callable
from typing import Any, TypeVar

from dermadv.attacks.base import Attack
from dermadv.errors import ConfigError

log = logging.getLogger(__name__)

ART_PREFIX = "art:"

#: modules imported on first use of the registry (not at import), each registering its attacks;
#: a module that does not exist yet is skipped silently
LAZY_MODULES: tuple[str, ...] = ("dermadv.attacks.generator",)

_REGISTRY: dict[str, type[Attack]] = {}
_lazy_loaded = False

A = TypeVar("A", bound=type[Attack])


def register_attack(name: str) -> Callable[[A], A]:
    """Class decorator: make ``create_attack(name)`` build this attack and set its ``name``."""
    key = name.lower()
    if key.startswith(ART_PREFIX):
        raise ValueError(f"attack names starting with {ART_PREFIX!r} are reserved for the ART adapter")

    def decorator(cls: A) -> A:
        existing = _REGISTRY.get(key)
        if existing is not None and existing is not cls:
            raise ValueError(f"attack name {key!r} is already registered by {existing.__qualname__}")
        cls.name = key
        _REGISTRY[key] = cls
        return cls

    return decorator


def _load_lazy_modules() -> None:
    global _lazy_loaded
    if _lazy_loaded:
        return
    _lazy_loaded = True
    for module in LAZY_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            # only "the module is not there yet" is fine; a missing dependency inside it is a real error
            if exc.name != module:
                raise
            log.debug("optional attack module %s is not available", module)


def list_attacks() -> list[str]:
    """Names of the registered attacks (``art:<ClassName>`` names are accepted too but not listed)."""
    _load_lazy_modules()
    return sorted(_REGISTRY)


def get_attack_class(name: str) -> type[Attack]:
    """The class registered under ``name``; ``ConfigError`` listing the valid names if there is none."""
    _load_lazy_modules()
    cls = _REGISTRY.get(name.lower())
    if cls is None:
        valid = ", ".join(sorted(_REGISTRY))
        raise ConfigError(
            f"unknown attack {name!r}; choose one of {valid}, or art:<ClassName> for an evasion attack "
            "of the Adversarial Robustness Toolbox (e.g. art:SquareAttack)"
        )
    return cls


def create_attack(name: str, **kwargs: Any) -> Attack:
    """Build the attack registered as ``name`` with its hyperparameters, e.g. ``create_attack("pgd", eps=2/255)``."""
    if name.lower().startswith(ART_PREFIX):
        from dermadv.attacks.art import ArtAttack

        return ArtAttack(name[len(ART_PREFIX) :], **kwargs)
    cls = get_attack_class(name)
    try:
        inspect.signature(cls).bind(**kwargs)
    except TypeError as exc:
        accepted = ", ".join(p for p in inspect.signature(cls).parameters if p not in ("args", "kwargs"))
        raise ConfigError(f"bad hyperparameters for attack {name!r} ({exc}); it accepts {accepted}") from None
    return cls(**kwargs)


# Importing the registry registers the native attacks. These imports come last because each module
# imports ``register_attack`` from here.
from dermadv.attacks import artefacts, gradient, natural, pixel, reliable, universal  # noqa: E402, F401
