"""The attack registry: names, errors, and ART imported only on demand."""

from __future__ import annotations

import subprocess
import sys

import pytest

from dermadv.attacks.base import Attack
from dermadv.attacks.gradient import PGD
from dermadv.attacks.registry import create_attack, list_attacks, register_attack
from dermadv.errors import ConfigError


def test_native_attacks_are_listed() -> None:
    names = list_attacks()
    for name in ("fgsm", "pgd", "cw", "uap", "pixel", "colour", "rotation", "translation"):
        assert name in names
    assert not any(name.startswith("art:") for name in names)


def test_create_passes_hyperparameters() -> None:
    attack = create_attack("PGD", eps="2/255", steps=3)
    assert isinstance(attack, PGD)
    assert attack.eps == pytest.approx(2 / 255) and attack.steps == 3
    assert attack.name == "pgd"
    assert "steps=3" in repr(attack)


def test_unknown_name_lists_valid_ones() -> None:
    with pytest.raises(ConfigError, match="pgd") as info:
        create_attack("pgdd")
    assert "art:" in str(info.value)


def test_unknown_hyperparameter_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="accepts"):
        create_attack("pgd", eps=2 / 255, stpes=3)


def test_duplicate_name_is_refused() -> None:
    with pytest.raises(ValueError):

        @register_attack("pgd")
        class Other(Attack):  # pragma: no cover - never instantiated
            def perturb(self, model, images, *, labels, target):
                return images


def test_importing_the_registry_does_not_import_art() -> None:
    code = (
        "import sys; from dermadv.attacks.registry import list_attacks; list_attacks(); "
        "print(any(m == 'art' or m.startswith('art.') for m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
