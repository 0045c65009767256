"""Reliable evaluation after AutoAttack (Croce & Hein 2020): APGD-CE, APGD-DLR, Square and their worst case.

APGD (step size adapted per image, momentum, restarts) is ART's ``AutoProjectedGradientDescent``; it takes a
given target class, which torchattacks' and AutoAttack's own APGD-T (that cycle through the top classes)
do not. Square (Andriushchenko et al. 2020) is torchattacks' ``Square``: random square-shaped updates
and model queries only, so it is blind to the gradient masking that fools the others. Both libraries are
imported when an attack runs. :func:`worst_case` runs a list of attacks as AutoAttack does — each on the
images the earlier ones left unfooled — and keeps per image the first success.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from dermadv.attacks.base import Attack, AttackResult
from dermadv.attacks.common import attack_gain, class_tensor, numpy_seed, parse_budget
from dermadv.attacks.registry import register_attack
from dermadv.errors import ConfigError


def _budget(eps: float | str, norm: str, **counts: int) -> float:
    """Check the norm and the iteration counts; return the budget as a number."""
    if norm not in ("linf", "l2"):
        raise ConfigError(f"norm must be 'linf' or 'l2'; got {norm!r}")
    for name, value in counts.items():
        if value < 1:
            raise ConfigError(f"{name} must be a whole number of at least 1; got {value}")
    return parse_budget(eps, norm)


@register_attack("apgd-ce")
class APGD(Attack):
    """Auto-PGD (Croce & Hein 2020) on the cross-entropy, targeted or not; AutoAttack's first attack.

    The initial step is ``2·eps`` as in AutoAttack; ``steps`` iterations per restart.
    """

    loss_type = "cross_entropy"

    def __init__(self, eps: float | str, *, steps: int = 100, restarts: int = 1, norm: str = "linf", seed: int = 0):
        self.eps, self.norm, self.seed = _budget(eps, norm, steps=steps, restarts=restarts), norm, int(seed)
        self.steps, self.restarts = int(steps), int(restarts)

    def perturb(
        self, model: nn.Module, images: torch.Tensor, *, labels: torch.Tensor | None, target: int | None
    ) -> torch.Tensor:
        from dermadv.attacks.art import ArtAttack

        art = ArtAttack(
            "AutoProjectedGradientDescent",
            eps=self.eps,
            norm=self.norm,
            eps_step=2 * self.eps,
            max_iter=self.steps,
            nb_random_init=self.restarts,
            loss_type=self.loss_type,
        )
        with numpy_seed(self.seed):
            return art.perturb(model, images, labels=labels, target=target)


@register_attack("apgd-dlr")
class APGDDLR(APGD):
    """Auto-PGD on the difference-of-logits ratio, invariant to the logits' scale (AutoAttack's APGD-T loss)."""

    loss_type = "difference_logits_ratio"


@register_attack("square-torchattacks")
class Square(Attack):
    """Square attack (Andriushchenko et al. 2020) as torchattacks runs it, kept to cross-check dermadv's ``square``."""

    needs = "scores"

    def __init__(
        self, eps: float | str, *, queries: int = 5000, p_init: float = 0.8, norm: str = "linf", seed: int = 0
    ) -> None:
        if not 0 < p_init <= 1:
            raise ConfigError(f"p_init (the first square's share of the image) must be in (0, 1]; got {p_init}")
        self.eps, self.norm, self.seed = _budget(eps, norm, queries=queries), norm, int(seed)
        self.queries, self.p_init = int(queries), float(p_init)

    def perturb(
        self, model: nn.Module, images: torch.Tensor, *, labels: torch.Tensor | None, target: int | None
    ) -> torch.Tensor:
        try:
            import torchattacks
        except ImportError:
            raise ConfigError(
                "the square attack needs torchattacks; install it with pip install torchattacks"
            ) from None
        attack = torchattacks.Square(
            model,
            norm="Linf" if self.norm == "linf" else "L2",
            eps=self.eps,
            n_queries=self.queries,
            p_init=self.p_init,
            loss="margin",
            seed=self.seed,
        )
        if target is not None:
            attack.set_mode_targeted_by_label(quiet=True)
        classes = class_tensor(images, labels=labels, target=target)
        # torchattacks reseeds torch's global generator; keep the caller's random stream untouched
        with torch.random.fork_rng(devices=[images.device] if images.is_cuda else []):
            return attack(images, classes)


@dataclass
class WorstCaseResult(AttackResult):
    """Per image the first attack that succeeded: ``fooled_by[i]`` indexes ``names``, -1 where none did."""

    fooled_by: torch.Tensor
    names: tuple[str, ...]


def worst_case(
    model: nn.Module,
    images: torch.Tensor,
    attacks: Sequence[Attack],
    *,
    labels: torch.Tensor | None = None,
    target: int | None = None,
) -> WorstCaseResult:
    """Run ``attacks`` in turn, each on the images not yet fooled; success if any attack succeeds.

    Where none succeeds, the image whose margin to success was smallest is kept. After AutoAttack
    (Croce & Hein 2020), whose robust accuracy is this per-image worst case.
    """
    if not attacks:
        raise ConfigError("worst_case needs at least one attack")
    classes = class_tensor(images, labels=labels, target=target)
    targeted = target is not None
    adv = images.clone()
    success = torch.zeros(len(images), dtype=torch.bool, device=images.device)
    fooled_by = torch.full((len(images),), -1, dtype=torch.long, device=images.device)
    best_gain = torch.full((len(images),), float("-inf"), device=images.device)
    for k, attack in enumerate(attacks):
        todo = (~success).nonzero().squeeze(1)
        if todo.numel() == 0:
            break
        result = attack(model, images[todo], labels=None if labels is None else labels[todo], target=target)
        with torch.no_grad():
            gain = attack_gain(model(result.adv_images), classes[todo], targeted=targeted, loss="margin")
        better = result.success | (gain > best_gain[todo])
        adv[todo[better]] = result.adv_images[better]
        best_gain[todo] = torch.maximum(best_gain[todo], gain)
        success[todo] = result.success
        fooled_by[todo[result.success]] = k
    return WorstCaseResult(adv, success, fooled_by, tuple(repr(a) for a in attacks))


@register_attack("autoattack")
class AutoAttack(Attack):
    """AutoAttack's standard ensemble (Croce & Hein 2020) as one attack: APGD-CE, APGD-DLR, then Square."""

    def __init__(
        self, eps: float | str, *, steps: int = 100, queries: int = 5000, norm: str = "linf", seed: int = 0
    ) -> None:
        self.eps, self.norm, self.seed = _budget(eps, norm, steps=steps, queries=queries), norm, int(seed)
        self.steps, self.queries = int(steps), int(queries)

    def attacks(self) -> list[Attack]:
        norm, seed = self.norm, self.seed
        return [
            APGD(self.eps, steps=self.steps, norm=norm, seed=seed),
            APGDDLR(self.eps, steps=self.steps, norm=norm, seed=seed),
            Square(self.eps, queries=self.queries, norm=norm, seed=seed),
        ]

    def perturb(
        self, model: nn.Module, images: torch.Tensor, *, labels: torch.Tensor | None, target: int | None
    ) -> torch.Tensor:
        return worst_case(model, images, self.attacks(), labels=labels, target=target).adv_images
