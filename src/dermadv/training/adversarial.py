"""Adversarial training: the attack that turns each clean training batch into the batch the classifier learns from.

* ``pgd`` — Madry et al. (2018): L∞ PGD from a uniform random start, ``steps`` steps of 2.5·eps/steps.
* ``fgsm-rs`` — Wong, Rice & Kolter (2020), "Fast is better than free": one signed step of 1.25·eps from a
  uniform random start in the eps-ball.
* ``generator`` — the images of a fitted AdvGAN generator (Xiao et al. 2018), fixed during training: one
  forward pass per batch, so nearly as cheap as clean training.

As in the reference implementations of Madry et al. and Wong et al., the examples are crafted with the
model in training mode on the labels of the batch; the weights are frozen while crafting.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from dermadv.attacks.base import Attack
from dermadv.attacks.gradient import PGD, GradientAttack
from dermadv.config import format_eps, parse_eps
from dermadv.errors import ConfigError
from dermadv.training.config import check_adversarial


@dataclass(frozen=True)
class TrainingAttack:
    """What the classifier was trained against, as recorded in its checkpoint's metadata."""

    method: str
    eps: float
    steps: int
    generator: str | None = None

    def describe(self) -> dict[str, object]:
        info: dict[str, object] = {"method": self.method, "eps": format_eps(self.eps)}
        if self.method == "pgd":
            info["steps"] = self.steps
        if self.generator:
            info["generator"] = self.generator
        return info


def fgsm_rs(eps: float) -> GradientAttack:
    """Wong et al. (2020)'s fast FGSM: uniform random start, one step of 1.25·eps, projected to the eps-ball."""
    return GradientAttack(eps, steps=1, step_size=1.25 * eps, random_start=True)


def training_attack(
    method: str,
    eps: float | str,
    steps: int = 10,
    *,
    generator: str | None = None,
    classes: tuple[str, ...] | None = None,
    device: torch.device | str = "cpu",
) -> tuple[Attack, TrainingAttack] | None:
    """The attack for ``method`` (``None`` for ``"none"``) and its record for the checkpoint."""
    check_adversarial(method, eps, steps, generator)
    budget = parse_eps(eps)
    if method == "none":
        return None
    if method == "pgd":
        return PGD(budget, steps=steps, random_start=True), TrainingAttack(method, budget, steps)
    if method == "fgsm-rs":
        return fgsm_rs(budget), TrainingAttack(method, budget, 1)
    from dermadv.attacks.generator import load_generator

    attack = load_generator(str(generator), device=device)
    if classes is not None and attack.spec.classes and tuple(attack.spec.classes) != tuple(classes):
        raise ConfigError(
            f"{generator} was fitted for classes {','.join(attack.spec.classes)} but the data has "
            f"{','.join(classes)}; fit a generator on this data with `dermadv attack fit`"
        )
    return attack, TrainingAttack(method, attack.eps, 1, str(generator))


def adversarial_batch(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, attack: Attack) -> torch.Tensor:
    """The adversarial version of a training batch (untargeted, away from ``labels``), detached and in [0, 1]."""
    module = getattr(model, "_orig_mod", model)  # torch.compile
    module = getattr(module, "module", module)  # DistributedDataParallel: craft on the local replica
    return attack.perturb(module, images, labels=labels, target=None).clamp(0, 1).detach()
