"""Per-class robustness card: the smallest L∞ budget at which a targeted attack moves half, and nearly all, of a class.

For each true class other than the target, the share of its images that the attack moves to the target at
each budget of a list, and the first budget reaching 50% and 99%. Run it on a model and on its defended
wrappers to compare them class by class (the threshold curves of Carlini et al. 2019's evaluation advice).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from dermadv.attacks.base import Attack
from dermadv.attacks.gradient import PGD
from dermadv.config import format_eps
from dermadv.errors import ConfigError

THRESHOLDS = (0.5, 0.99)


@dataclass(frozen=True)
class ClassRobustness:
    label: str
    n_images: int
    fooling: tuple[float, ...]  # share moved to the target at each budget of the card
    eps_50: float | None  # smallest budget moving ≥ 50%; None if none of the budgets does
    eps_99: float | None  # the same for ≥ 99%


@dataclass(frozen=True)
class RobustnessCard:
    target: str
    eps: tuple[float, ...]  # ascending
    attack: str  # the attack at the largest budget, e.g. "PGD(eps=0.0313, steps=20, …)"
    classes: tuple[ClassRobustness, ...]

    def rows(self) -> list[dict[str, object]]:
        """One row per class: ``label, n_images, eps_50, eps_99, fooling_<eps>…`` (budgets as ``2/255``)."""
        return [
            {
                "label": c.label,
                "n_images": c.n_images,
                "eps_50": c.eps_50,
                "eps_99": c.eps_99,
                **{f"fooling_{format_eps(e)}": f for e, f in zip(self.eps, c.fooling, strict=True)},
            }
            for c in self.classes
        ]


def pgd20(eps: float) -> Attack:
    """The card's default attack: L∞ PGD with 20 steps and a seeded random start (Madry et al. 2018)."""
    return PGD(eps, steps=20, seed=0)


def _first_reaching(eps: Sequence[float], fooling: Sequence[float], threshold: float) -> float | None:
    return next((e for e, f in zip(eps, fooling, strict=True) if f >= threshold), None)


def robustness_card(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    target: int,
    eps: Sequence[float],
    make_attack: Callable[[float], Attack] = pgd20,
    class_names: Sequence[str] | None = None,
    batch_size: int = 64,
) -> RobustnessCard:
    """Attack every non-target image toward ``target`` at each budget of ``eps``; summarise per true class."""
    budgets = tuple(sorted(float(e) for e in eps))
    if not budgets:
        raise ConfigError("the robustness card needs at least one budget, e.g. 1/255,2/255,4/255,8/255")
    labels = labels.to(torch.long).cpu()
    keep = labels != target
    images, labels = images[keep], labels[keep]
    device = next(iter(model.parameters()), torch.empty(0)).device
    moved = torch.zeros(len(budgets), len(images), dtype=torch.bool)
    for k, e in enumerate(budgets):
        attack = make_attack(e)
        for start in range(0, len(images), batch_size):
            chunk = images[start : start + batch_size].to(device)
            moved[k, start : start + batch_size] = attack(model, chunk, target=target).success.cpu()
    num_classes = max([target, *labels.tolist()]) + 1
    names = list(class_names) if class_names is not None else [str(c) for c in range(num_classes)]
    rows = []
    for c in sorted(set(labels.tolist())):
        mine = labels == c
        fooling = tuple(float(moved[k, mine].float().mean()) for k in range(len(budgets)))
        reach = [_first_reaching(budgets, fooling, t) for t in THRESHOLDS]
        rows.append(ClassRobustness(names[c], int(mine.sum()), fooling, reach[0], reach[1]))
    return RobustnessCard(names[target], budgets, repr(make_attack(budgets[-1])), tuple(rows))
