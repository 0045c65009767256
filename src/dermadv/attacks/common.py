"""Pieces shared by the attack implementations: attack objectives, success and frozen weights.

Kept apart from the attack modules (which register themselves on import) so that they can import
each other's helpers without import cycles through the registry.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from fractions import Fraction
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dermadv.config import parse_eps
from dermadv.errors import ConfigError

LossName = Literal["ce", "margin"]


def parse_budget(eps: float | str, norm: str) -> float:
    """An L∞ budget through :func:`~dermadv.config.parse_eps` (in (0, 1]); any other norm's only needs to be > 0."""
    if norm in ("linf", "inf"):
        return parse_eps(eps)
    try:
        value = float(Fraction(eps.strip())) if isinstance(eps, str) else float(eps)
    except (ValueError, ZeroDivisionError):
        raise ConfigError(f"eps {eps!r} is not a number; write it like 0.5 or 128/255") from None
    if not value > 0:
        raise ConfigError(f"eps must be positive for the {norm} norm; got {eps}")
    return value


@contextmanager
def frozen_parameters(model: nn.Module) -> Iterator[None]:
    """Stop tracking gradients of the model's weights while attacking (inputs only: less autograd work)."""
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def class_tensor(images: torch.Tensor, *, labels: torch.Tensor | None, target: int | None) -> torch.Tensor:
    """The class each image is pushed towards (``target``) or away from (``labels``), as an N int64 tensor."""
    n = images.shape[0]
    if target is not None:
        return torch.full((n,), int(target), dtype=torch.long, device=images.device)
    if labels is None:
        raise ValueError("an untargeted attack needs the true labels")
    return labels.to(device=images.device, dtype=torch.long).reshape(n)


def attack_goal(images: torch.Tensor, *, labels: torch.Tensor | None, target: int | None) -> tuple[torch.Tensor, bool]:
    """The :func:`class_tensor` of the images, and whether the attack aims at it (targeted) or away from it."""
    return class_tensor(images, labels=labels, target=target), target is not None


def attack_gain(logits: torch.Tensor, classes: torch.Tensor, *, targeted: bool, loss: LossName) -> torch.Tensor:
    """Per-image quantity an attack maximises: toward ``classes`` if targeted, away from them if not.

    ``"ce"``: ∓ cross-entropy; ``"margin"``: the logit margin of Carlini & Wagner (2017).
    """
    if loss == "ce":
        ce = F.cross_entropy(logits, classes, reduction="none")
        return -ce if targeted else ce
    chosen = logits.gather(1, classes[:, None]).squeeze(1)
    best_other = logits.scatter(1, classes[:, None], float("-inf")).amax(1)
    return chosen - best_other if targeted else best_other - chosen


def is_success(logits: torch.Tensor, classes: torch.Tensor, *, targeted: bool) -> torch.Tensor:
    """Per image: predicted as ``classes`` (targeted) or as anything else (untargeted)."""
    pred = logits.argmax(1)
    return pred == classes if targeted else pred != classes


@contextmanager
def numpy_seed(seed: int | None) -> Iterator[None]:
    """Seed numpy's global generator (ART draws its random starts and directions there) and restore its state
    afterwards; ``None`` leaves it alone."""
    if seed is None:
        yield
        return
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)
