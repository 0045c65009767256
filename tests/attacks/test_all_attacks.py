"""Every registered attack: shape, range, budget after 8-bit rounding, and the direction of its effect."""

from __future__ import annotations

import copy
import inspect

import pytest
import torch

from dermadv.attacks.artefacts import ARTEFACTS
from dermadv.attacks.base import Attack
from dermadv.attacks.generator import PerturbationGenerator
from dermadv.attacks.registry import create_attack, get_attack_class, list_attacks

EPS = 8 / 255
TARGET = 0

#: small, fast hyperparameters per attack; a newly registered attack needs an entry here
FAST_PARAMS: dict[str, dict[str, object]] = {
    "fgsm": {"eps": EPS},
    "pgd": {"eps": EPS, "steps": 5, "seed": 0},
    "cw": {"steps": 30, "binary_search_steps": 2, "lr": 0.05},
    "uap": {"eps": EPS, "epochs": 2, "seed": 0},
    # fitted by `dermadv attack fit` against a checkpoint, not here: an unfitted network checks the interface,
    # and tests/attacks/test_generator.py the effect of a fitted one on its classifier
    "advgan": {"generator": PerturbationGenerator(EPS, channels=8, res_blocks=1)},
    "pixel": {"pixels": 3, "popsize": 20, "maxiter": 5, "seed": 0},
    "colour": {},
    "rotation": {},
    "translation": {},
    "apgd-ce": {"eps": EPS, "steps": 10},
    "apgd-dlr": {"eps": EPS, "steps": 10},
    "square-torchattacks": {"eps": EPS, "queries": 200},
    "square": {"eps": EPS, "queries": 200},
    "simba": {"eps": EPS, "queries": 200},
    "hopskipjump": {"eps": EPS, "queries": 200},  # targeted: started from _start_pool (see _build)
    "autoattack": {"eps": EPS, "steps": 5, "queries": 100},
    # transfer attacks get the tiny model itself as their surrogate (see _build)
    "mi-di": {"eps": EPS, "steps": 5},
    "transfer-square": {"eps": EPS, "steps": 5, "queries": 100},
    **{name: {"severity": 3} for name in ARTEFACTS},
}
#: the budget each attack promises: ("linf", eps) or ("l0", pixels); others are unbounded
BUDGETS: dict[str, tuple[str, float]] = {
    "fgsm": ("linf", EPS),
    "pgd": ("linf", EPS),
    "uap": ("linf", EPS),
    "advgan": ("linf", EPS),
    "pixel": ("l0", 3),
    "apgd-ce": ("linf", EPS),
    "apgd-dlr": ("linf", EPS),
    "square-torchattacks": ("linf", EPS),
    "square": ("linf", EPS),
    "simba": ("linf", EPS),
    "hopskipjump": ("linf", EPS),
    "autoattack": ("linf", EPS),
    "mi-di": ("linf", EPS),
    "transfer-square": ("linf", EPS),
}


def _is_control(name: str) -> bool:
    """Attacks whose effect is not tested here: natural perturbations, artefacts, and the generator (fitted elsewhere)."""
    module = get_attack_class(name).__module__
    return module in ("dermadv.attacks.natural", "dermadv.attacks.artefacts", "dermadv.attacks.generator")


def _build(name: str, tiny, *, target: int | None) -> Attack:
    if name not in FAST_PARAMS:
        pytest.fail(f"attack {name!r} has no entry in FAST_PARAMS; add small hyperparameters for it")
    params = dict(FAST_PARAMS[name])
    if "surrogates" in inspect.signature(get_attack_class(name)).parameters:
        params["surrogates"] = [copy.deepcopy(tiny.model).eval()]
    attack = create_attack(name, **params)
    if hasattr(attack, "_start_pool") and target is not None:  # a decision-based attack starts from target images
        with torch.no_grad():
            pool = tiny.train_images[tiny.model(tiny.train_images).argmax(1) == target]
        attack._start_pool = pool[:32]  # type: ignore[attr-defined]
    if attack.needs_fit:
        if target is None:
            pytest.skip(f"{name} is fitted for a target only")
        attack.fit(tiny.model, tiny.train_images[:256], target=target)  # type: ignore[attr-defined]
    return attack


def _class_log_odds(model, images: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """Mean log-odds of ``classes``: it registers small moves even where a probability is near 0 or 1."""
    with torch.no_grad():
        log_prob = model(images).log_softmax(1)
    chosen = log_prob.gather(1, classes[:, None]).squeeze(1)
    others = log_prob.scatter(1, classes[:, None], float("-inf")).logsumexp(1)
    return (chosen - others).mean()


@pytest.mark.parametrize("name", list_attacks())
def test_targeted(name: str, tiny) -> None:
    images, labels = tiny.test_images[:48], tiny.test_labels[:48]
    keep = labels != TARGET
    images, labels = images[keep], labels[keep]
    attack = _build(name, tiny, target=TARGET)
    result = attack(tiny.model, images, labels=labels, target=TARGET)
    adv = result.adv_images

    assert adv.shape == images.shape and adv.dtype == images.dtype
    assert adv.min() >= 0 and adv.max() <= 1
    assert result.success.shape == (len(images),) and result.success.dtype == torch.bool
    _check_budget(name, images, adv)
    if not _is_control(name):
        goal = torch.full_like(labels, TARGET)
        before, after = _class_log_odds(tiny.model, images, goal), _class_log_odds(tiny.model, adv, goal)
        assert after > before + 0.1, f"{attack!r} did not raise the target probability"


@pytest.mark.parametrize("name", [n for n in list_attacks() if not get_attack_class(n).needs_fit])
def test_untargeted(name: str, tiny) -> None:
    images, labels = tiny.test_images[:48], tiny.test_labels[:48]
    attack = _build(name, tiny, target=None)
    result = attack(tiny.model, images, labels=labels)
    assert result.adv_images.shape == images.shape
    assert result.adv_images.min() >= 0 and result.adv_images.max() <= 1
    _check_budget(name, images, result.adv_images)
    if not _is_control(name):
        before = _class_log_odds(tiny.model, images, labels)
        after = _class_log_odds(tiny.model, result.adv_images, labels)
        assert after < before - 0.1, f"{attack!r} did not lower the true-class probability"


def _check_budget(name: str, images: torch.Tensor, adv: torch.Tensor) -> None:
    budget = BUDGETS.get(name)
    if budget is None:
        return
    kind, size = budget
    clean_8bit, adv_8bit = (images * 255).round(), (adv * 255).round()
    if kind == "linf":
        assert (adv_8bit - clean_8bit).abs().max() <= round(size * 255)
    else:
        changed = (adv_8bit != clean_8bit).any(1).flatten(1).sum(1)
        assert changed.max() <= size
