"""Non-adversarial controls: colour-balance shift, rotation, translation (after Du-Harpur et al. 2020).

They use no gradients and ignore the target; they tell how much of an attack's effect an ordinary
change of acquisition conditions would already produce.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from dermadv.attacks.base import Attack
from dermadv.attacks.registry import register_attack
from dermadv.errors import ConfigError

Padding = Literal["reflection", "border", "zeros"]


def _affine(images: torch.Tensor, theta: torch.Tensor, padding: Padding) -> torch.Tensor:
    grid = F.affine_grid(theta.expand(images.shape[0], 2, 3), list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode=padding, align_corners=False)


def _check_padding(padding: str) -> None:
    if padding not in ("reflection", "border", "zeros"):
        raise ConfigError(f"padding must be 'reflection', 'border' or 'zeros'; got {padding!r}")


@register_attack("colour")
class ColourShift(Attack):
    """Colour-balance shift: multiply the R, G and B channels by fixed gains (e.g. a warmer white balance)."""

    def __init__(self, gains: tuple[float, float, float] | str = (1.1, 1.0, 0.9)) -> None:
        try:
            values = [float(g) for g in (gains.split(",") if isinstance(gains, str) else gains)]
        except ValueError:
            values = []
        if len(values) != 3 or any(not g > 0 for g in values):
            raise ConfigError(f"gains must be three positive numbers (R, G, B) such as 1.1,1.0,0.9; got {gains!r}")
        self.gains = (values[0], values[1], values[2])

    def perturb(
        self, model: nn.Module, images: torch.Tensor, *, labels: torch.Tensor | None, target: int | None
    ) -> torch.Tensor:
        gains = torch.tensor(self.gains, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
        return (images * gains).clamp(0, 1)


@register_attack("rotation")
class Rotation(Attack):
    """Rotation by ``degrees`` (counter-clockwise) about the image centre; corners filled by ``padding``."""

    def __init__(self, degrees: float = 15.0, *, padding: Padding = "reflection") -> None:
        _check_padding(padding)
        self.degrees = float(degrees)
        self.padding: Padding = padding

    def perturb(
        self, model: nn.Module, images: torch.Tensor, *, labels: torch.Tensor | None, target: int | None
    ) -> torch.Tensor:
        h, w = images.shape[2:]
        angle = math.radians(self.degrees)
        cos, sin = math.cos(angle), math.sin(angle)
        # affine_grid works in [-1, 1] per axis, so non-square images need the aspect ratio folded in
        theta = torch.tensor(
            [[cos, -sin * h / w, 0.0], [sin * w / h, cos, 0.0]], device=images.device, dtype=images.dtype
        )
        return _affine(images, theta[None], self.padding)


@register_attack("translation")
class Translation(Attack):
    """Shift by ``dx`` pixels right and ``dy`` pixels down; whole-pixel shifts are exact (no resampling blur)."""

    def __init__(self, dx: float = 4.0, dy: float = 0.0, *, padding: Padding = "reflection") -> None:
        _check_padding(padding)
        self.dx = float(dx)
        self.dy = float(dy)
        self.padding: Padding = padding

    def perturb(
        self, model: nn.Module, images: torch.Tensor, *, labels: torch.Tensor | None, target: int | None
    ) -> torch.Tensor:
        h, w = images.shape[2:]
        theta = torch.tensor(
            [[1.0, 0.0, -2 * self.dx / w], [0.0, 1.0, -2 * self.dy / h]], device=images.device, dtype=images.dtype
        )
        return _affine(images, theta[None], self.padding)
