"""The attack interface: hyperparameters at construction, data at call time, a named result.

Every attack works on images in [0, 1] (N×3×H×W float tensors) against a model that maps such
images to logits (normalisation lives inside the model). ``target`` is a class index for targeted
attacks or ``None`` for untargeted ones (then ``labels`` are the true labels to move away from).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class AttackResult:
    adv_images: torch.Tensor  # N×3×H×W in [0, 1]
    success: torch.Tensor  # N bool: predicted target (targeted) or not the label (untargeted)


class Attack(ABC):
    """Base class. Subclasses implement :meth:`perturb`; the base clips to [0, 1] and scores success."""

    name: str = "attack"
    #: whether the attack fits once on a set of images (universal, generator) before being applied
    needs_fit: bool = False

    def __call__(
        self,
        model: nn.Module,
        images: torch.Tensor,
        *,
        labels: torch.Tensor | None = None,
        target: int | None = None,
    ) -> AttackResult:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be N×3×H×W; got {tuple(images.shape)}")
        if images.min() < 0 or images.max() > 1:
            raise ValueError("images must be in [0, 1]; normalisation belongs inside the model")
        if target is None and labels is None:
            raise ValueError("an untargeted attack needs the true labels")
        was_training = model.training
        model.eval()
        try:
            adv = self.perturb(model, images, labels=labels, target=target).clamp(0, 1).detach()
            with torch.no_grad():
                pred = model(adv).argmax(1)
        finally:
            model.train(was_training)
        success = pred == target if target is not None else pred != labels
        return AttackResult(adv_images=adv, success=success)

    @abstractmethod
    def perturb(
        self,
        model: nn.Module,
        images: torch.Tensor,
        *,
        labels: torch.Tensor | None,
        target: int | None,
    ) -> torch.Tensor:
        """Return adversarial images (clipping to [0, 1] is done by the caller)."""

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({params})"
