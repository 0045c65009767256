"""Targeted universal adversarial perturbation: one perturbation, fitted once, added to every image."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dermadv.attacks.base import Attack
from dermadv.attacks.common import frozen_parameters, parse_budget
from dermadv.attacks.registry import register_attack
from dermadv.errors import ConfigError, RunError

log = logging.getLogger(__name__)

#: what ``fit`` accepts: float N×3×H×W in [0, 1], uint8 N×H×W×3 (tensor or array, e.g. the decoded-image
#: memmap), or an iterable of batches (tensors, or tuples/lists whose first item is the images)
ImageSource = torch.Tensor | np.ndarray | Iterable[Any]


def to_float_images(batch: torch.Tensor | np.ndarray) -> torch.Tensor:
    """A batch as float N×3×H×W in [0, 1]; uint8 batches may be N×H×W×3 (as stored) or N×3×H×W."""
    images = torch.from_numpy(np.ascontiguousarray(batch)) if isinstance(batch, np.ndarray) else batch
    if images.ndim != 4:
        raise ConfigError(f"image batches must have 4 dimensions (N×3×H×W or N×H×W×3); got {tuple(images.shape)}")
    if images.dtype == torch.uint8:
        if images.shape[1] != 3 and images.shape[-1] == 3:
            images = images.permute(0, 3, 1, 2)
        return images.float().div_(255)
    if images.shape[1] != 3:
        raise ConfigError(f"float image batches must be N×3×H×W in [0, 1]; got {tuple(images.shape)}")
    return images.float()


def iter_image_batches(
    data: ImageSource, *, batch_size: int, generator: torch.Generator | None = None
) -> Iterator[torch.Tensor]:
    """Float [0, 1] batches from an array/tensor (shuffled when ``generator`` is given) or from an iterable."""
    if isinstance(data, torch.Tensor | np.ndarray):
        n = len(data)
        order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
        for start in range(0, n, batch_size):
            index = order[start : start + batch_size]
            # sorted indices keep memmap reads sequential; the batch's content, not its order, matters
            rows = data[np.sort(index.numpy())] if isinstance(data, np.ndarray) else data[index]
            yield to_float_images(rows)
        return
    for batch in data:
        if isinstance(batch, tuple | list):
            batch = batch[0]
        elif isinstance(batch, dict):
            batch = batch["images"]
        yield to_float_images(batch)


def random_perturbation_like(eps: float, shape: Sequence[int], seed: int | None = None) -> torch.Tensor:
    """Random ±eps sign pattern of ``shape``: the L∞ baseline a universal perturbation must beat."""
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    signs = torch.randint(0, 2, tuple(shape), generator=generator).float().mul_(2).sub_(1)
    return signs.mul_(eps)


@register_attack("uap")
class UniversalPerturbation(Attack):
    """Targeted universal adversarial perturbation (Moosavi-Dezfooli et al. 2017; targeted as in Hirano &
    Takemoto 2020), fitted by Adam on batches with projection onto the eps-ball (the stochastic-gradient
    variant of Shafahi et al. 2020) instead of the original per-image DeepFool updates.

    ``fit`` stores :attr:`perturbation` (3×H×W); :meth:`perturb` adds it to every image.
    """

    needs_fit = True

    def __init__(
        self,
        eps: float | str,
        *,
        epochs: int = 5,
        lr: float | None = None,
        norm: Literal["linf", "l2"] = "linf",
        batch_size: int = 64,
        seed: int | None = None,
    ) -> None:
        if norm not in ("linf", "l2"):
            raise ConfigError(f"norm must be 'linf' or 'l2'; got {norm!r}")
        self.eps = parse_budget(eps, norm)
        if epochs < 1 or batch_size < 1:
            raise ConfigError(f"epochs and batch_size must be ≥ 1; got {epochs} and {batch_size}")
        self.epochs = int(epochs)
        # an Adam step moves each pixel by about lr, so eps/10 crosses the ball in ~10 batches
        self.lr = float(lr) if lr is not None else self.eps / 10
        self.norm = norm
        self.batch_size = int(batch_size)
        self.seed = seed
        self._perturbation: torch.Tensor | None = None

    @property
    def perturbation(self) -> torch.Tensor:
        if self._perturbation is None:
            raise RunError("the universal perturbation is not fitted; call fit(model, images, target=...) first")
        return self._perturbation

    @perturbation.setter
    def perturbation(self, value: torch.Tensor) -> None:
        if value.ndim != 3 or value.shape[0] != 3:
            raise ConfigError(f"a universal perturbation must be 3×H×W; got {tuple(value.shape)}")
        self._perturbation = self._project(value.detach().clone())

    def _project(self, delta: torch.Tensor) -> torch.Tensor:
        if self.norm == "linf":
            return delta.clamp_(-self.eps, self.eps)
        return delta.mul_((self.eps / delta.norm().clamp_min(1e-12)).clamp(max=1.0))

    def fit(self, model: nn.Module, images: ImageSource, *, target: int) -> UniversalPerturbation:
        """Fit the perturbation on ``images`` so that the model predicts ``target``; returns ``self``."""
        if target is None:
            raise ConfigError("the universal perturbation is targeted; pass target=<class index>")
        device = next(model.parameters()).device
        generator = torch.Generator().manual_seed(self.seed) if self.seed is not None else None
        # materialise one-shot iterators so that every epoch sees the data
        source: ImageSource = images
        if not isinstance(images, torch.Tensor | np.ndarray) and iter(images) is images:
            source = list(images)

        delta: torch.Tensor | None = None
        optimizer: torch.optim.Optimizer | None = None
        was_training = model.training
        model.eval()
        try:
            with frozen_parameters(model):
                for epoch in range(self.epochs):
                    total, count = 0.0, 0
                    for batch in iter_image_batches(source, batch_size=self.batch_size, generator=generator):
                        batch = batch.to(device)
                        if delta is None:
                            delta = torch.zeros_like(batch[0], requires_grad=True)
                            optimizer = torch.optim.Adam([delta], lr=self.lr)
                        assert optimizer is not None
                        if batch.shape[1:] != delta.shape:
                            raise ConfigError(
                                f"all fit images must share one size; got {tuple(batch.shape[2:])} after "
                                f"{tuple(delta.shape[1:])}"
                            )
                        logits = model((batch + delta).clamp(0, 1))
                        goal = torch.full((batch.shape[0],), int(target), dtype=torch.long, device=device)
                        loss = F.cross_entropy(logits, goal)
                        delta.grad = torch.autograd.grad(loss, delta)[0]
                        optimizer.step()
                        with torch.no_grad():
                            self._project(delta)
                        total += float(loss.detach()) * batch.shape[0]
                        count += batch.shape[0]
                    if count == 0:
                        raise ConfigError("no images to fit the universal perturbation on")
                    log.info("uap epoch %d/%d: target cross-entropy %.4f", epoch + 1, self.epochs, total / count)
        finally:
            model.train(was_training)
        assert delta is not None
        self._perturbation = delta.detach()
        return self

    def perturb(
        self,
        model: nn.Module,
        images: torch.Tensor,
        *,
        labels: torch.Tensor | None,
        target: int | None,
    ) -> torch.Tensor:
        delta = self.perturbation.to(device=images.device, dtype=images.dtype)
        if delta.shape != images.shape[1:]:
            raise ConfigError(
                f"the universal perturbation is {tuple(delta.shape[1:])} but the images are "
                f"{tuple(images.shape[2:])}; fit it at the attacked image size"
            )
        return (images + delta).clamp(0, 1)
