"""Batched dermoscopy augmentation on the device: one affine warp plus colour jitter per batch.

Dermoscopy has no canonical orientation, so flips and full rotations are label-preserving;
random resized crops and mild colour jitter model zoom and device/illumination differences.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from dermadv.training.config import AugmentConfig


def augment(images: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    """Augment N×3×H×W images in [0, 1]. Random numbers come from ``generator`` (on the images' device)."""
    n, dev = images.shape[0], images.device

    def rand(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=generator, device=dev)

    angle = (rand(n) * 2 - 1) * math.radians(cfg.rotation)
    area = cfg.scale[0] + rand(n) * (cfg.scale[1] - cfg.scale[0])
    zoom = area.sqrt()  # side share kept
    flip_x = torch.where(rand(n) < 0.5, -1.0, 1.0) if cfg.flips else torch.ones(n, device=dev)
    flip_y = torch.where(rand(n) < 0.5, -1.0, 1.0) if cfg.flips else torch.ones(n, device=dev)
    max_shift = (1 - zoom) + cfg.translate
    tx = (rand(n) * 2 - 1) * max_shift
    ty = (rand(n) * 2 - 1) * max_shift
    cos, sin = torch.cos(angle) * zoom, torch.sin(angle) * zoom
    theta = torch.stack(
        [
            torch.stack([cos * flip_x, -sin * flip_y, tx], 1),
            torch.stack([sin * flip_x, cos * flip_y, ty], 1),
        ],
        1,
    )
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    # Reflection padding: rotated corners are filled with skin, not black bars.
    out = F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    if cfg.brightness:
        out = out * (1 + (rand(n, 1, 1, 1) * 2 - 1) * cfg.brightness)
    if cfg.contrast:
        mean = out.mean(dim=(1, 2, 3), keepdim=True)
        out = (out - mean) * (1 + (rand(n, 1, 1, 1) * 2 - 1) * cfg.contrast) + mean
    if cfg.saturation:
        grey = 0.299 * out[:, 0:1] + 0.587 * out[:, 1:2] + 0.114 * out[:, 2:3]
        out = (out - grey) * (1 + (rand(n, 1, 1, 1) * 2 - 1) * cfg.saturation) + grey
    return out.clamp_(0, 1)


__all__ = ["AugmentConfig", "augment"]
