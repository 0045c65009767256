"""The attack interface: hyperparameters at construction, data at call time, a named result.

Every attack works on images in [0, 1] (N×3×H×W float tensors) against a model that maps such
images to logits (normalisation lives inside the model). ``target`` is a class index for targeted
attacks or ``None`` for untargeted ones (then ``labels`` are the true labels to move away from).
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import ClassVar, Literal, Protocol

import torch
from torch import nn

from dermadv.errors import CheckpointError

#: what an attack needs of a model, weakest last: gradients (white-box), scores (probabilities or logits, counted
#: queries), labels only (counted queries), or nothing but a surrogate (transfer: the target only scores)
Needs = Literal["gradients", "scores", "labels", "surrogate"]
#: the threat model under which an attack that needs this runs
THREAT_MODEL_OF: dict[str, str] = {
    "gradients": "white-box",
    "scores": "score-based",
    "labels": "decision-based",
    "surrogate": "transfer",
}


@dataclass
class AttackResult:
    adv_images: torch.Tensor  # N×3×H×W in [0, 1]
    success: torch.Tensor  # N bool: predicted target (targeted) or not the label (untargeted)
    queries: torch.Tensor | None = field(
        default=None, kw_only=True
    )  # N int64: model queries the search spent per image (query-based attacks)


class FitSpec(Protocol):
    """What a fitted attack was fitted for (the generator's :class:`~dermadv.attacks.generator.GeneratorSpec`)."""

    @property
    def eps(self) -> float: ...
    @property
    def target(self) -> str | None: ...
    @property
    def target_index(self) -> int | None: ...
    @property
    def classes(self) -> tuple[str, ...]: ...
    @property
    def image_size(self) -> tuple[int, int]: ...
    @property
    def attack_size(self) -> str: ...
    @property
    def classifier_fingerprint(self) -> str: ...


def check_fit_spec(
    spec: FitSpec,
    *,
    classes: tuple[str, ...],
    image_size: tuple[int, int],
    classifier_fingerprint: str,
    path: str | os.PathLike[str] = "the attack",
) -> None:
    """Refuse an attack fitted against another classifier, class list or image size."""
    if tuple(spec.classes) != tuple(classes):
        raise CheckpointError(
            f"{path} was fitted for classes {','.join(spec.classes)}, the classifier has "
            f"{','.join(classes)}; fit a generator for this classifier with `dermadv attack fit`"
        )
    if tuple(spec.image_size) != tuple(image_size):
        raise CheckpointError(
            f"{path} was fitted at {spec.image_size[0]}x{spec.image_size[1]} but the images here are "
            f"{image_size[0]}x{image_size[1]}; fit one at this size or pass the matching --attack-size"
        )
    if spec.classifier_fingerprint and classifier_fingerprint and spec.classifier_fingerprint != classifier_fingerprint:
        raise CheckpointError(
            f"{path} was fitted against another classifier (fingerprint {spec.classifier_fingerprint},"
            f" this one {classifier_fingerprint}); fit a generator for this checkpoint"
        )


class Attack(ABC):
    """Base class. Subclasses implement :meth:`perturb`; the base clips to [0, 1] and scores success."""

    name: str = "attack"
    #: what the attack needs of the model (ART's ``_estimator_requirements``); the pipeline refuses a model that
    #: cannot offer it and names the threat model in ``attack.json``
    needs: ClassVar[Needs] = "gradients"
    #: whether the attack fits once on a set of images (universal perturbation) before being applied
    needs_fit: bool = False
    #: set by an attack loaded already fitted (the generator): its budget, target and image size are fixed
    spec: FitSpec | None = None

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
            self._last_queries: torch.Tensor | None = None
            adv = self.perturb(model, images, labels=labels, target=target).clamp(0, 1).detach()
            with torch.no_grad():
                pred = model(adv).argmax(1)
        finally:
            model.train(was_training)
        success = pred == target if target is not None else pred != labels
        return AttackResult(adv_images=adv, success=success, queries=self._last_queries)

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
