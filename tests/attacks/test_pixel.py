"""The few-pixel attack: at most ``pixels`` changed positions, black-box, and it does find successes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dermadv.attacks.pixel import PixelAttack
from dermadv.errors import ConfigError


class _NoGradients(nn.Module):
    """Refuses to be differentiated: a black-box attack only reads outputs."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        assert not torch.is_grad_enabled() and not images.requires_grad
        return self.model(images)


def _changed_pixels(clean: torch.Tensor, adv: torch.Tensor) -> torch.Tensor:
    return (adv != clean).any(1).flatten(1).sum(1)


@pytest.mark.parametrize("pixels", [1, 3, 5])
def test_changes_at_most_the_requested_pixels(tiny, pixels: int) -> None:
    images = tiny.test_images[:24]
    result = PixelAttack(pixels, popsize=20, maxiter=4, seed=0)(_NoGradients(tiny.model), images, target=0)
    assert _changed_pixels(images, result.adv_images).max() <= pixels
    # colours are 8-bit, so the saved PNG is the image that was scored
    assert torch.equal((result.adv_images * 255).round() / 255, result.adv_images)


def test_finds_successes_on_a_weak_image(tiny) -> None:
    # the images nearest the decision boundary are the ones a few pixels can flip
    with torch.no_grad():
        margin = tiny.model(tiny.test_images).softmax(1).amax(1)
    weakest = margin.argsort()[:16]
    images, labels = tiny.test_images[weakest], tiny.test_labels[weakest]
    result = PixelAttack(5, popsize=40, maxiter=15, seed=0)(tiny.model, images, labels=labels)
    assert result.success.any()
    assert _changed_pixels(images, result.adv_images).max() <= 5


def test_seeded_runs_repeat(tiny) -> None:
    images = tiny.test_images[:8]
    a = PixelAttack(1, popsize=10, maxiter=3, seed=3)(tiny.model, images, target=1).adv_images
    b = PixelAttack(1, popsize=10, maxiter=3, seed=3)(tiny.model, images, target=1).adv_images
    assert torch.equal(a, b)


@pytest.mark.parametrize("kwargs", [{"pixels": 0}, {"popsize": 3}, {"mutation": 0.0}])
def test_bad_hyperparameters(kwargs) -> None:
    with pytest.raises(ConfigError):
        PixelAttack(**kwargs)
