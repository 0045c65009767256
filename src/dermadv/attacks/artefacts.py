"""Dermoscopy artefacts at five severities: hair, ruler, ink, black corners, air bubbles, JPEG, blur, colour cast.

Natural perturbations like those of :mod:`dermadv.attacks.natural`: no gradients, the target is ignored.
Each takes ``severity`` 1 (mild) … 5 (severe). Sizes are fractions of the image's shorter side, so one
severity looks alike at 32 and at 450 pixels. The drawn ones (hair, ruler, ink, bubbles) draw a different
artefact per image from a generator seeded at each call, so the same call gives the same images. Which
artefacts matter follows the dermoscopy-artefact studies of Bissoto et al. (2019) and Maron et al. (2021).
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image, ImageDraw
from torch import nn

from dermadv.attacks.base import Attack
from dermadv.attacks.natural import ColourShift
from dermadv.attacks.registry import register_attack
from dermadv.errors import ConfigError

SEVERITIES = (1, 2, 3, 4, 5)
JPEG_QUALITY = (80, 60, 40, 20, 10)  # per severity
BLUR_SIGMA = (0.004, 0.008, 0.012, 0.018, 0.025)  # Gaussian sigma per severity, as a share of the shorter side
CAST_GAINS = (0.04, 0.08, 0.12, 0.16, 0.2)  # warmer white balance: red × (1 + g), blue × (1 - g)
SUPERSAMPLE = 4  # drawn at this multiple of the image size, then downsampled: smooth edges at 32 px too

Painter = Callable[[ImageDraw.ImageDraw, int, int, np.random.Generator], None]


def check_severity(severity: int) -> int:
    if severity not in SEVERITIES:
        raise ConfigError(f"severity must be a whole number from 1 (mild) to 5 (severe); got {severity!r}")
    return int(severity)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """N×3×H×W floats in [0, 1] → N×H×W×3 uint8 (rounded, as an 8-bit file would hold them)."""
    return (images.detach().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def jpeg_roundtrip(images: torch.Tensor, quality: int) -> torch.Tensor:
    """Encode each image as a JPEG of ``quality`` (1–95) with Pillow and decode it again (no gradient)."""
    if not 1 <= int(quality) <= 95:
        raise ConfigError(f"JPEG quality must be a whole number from 1 to 95; got {quality!r}")
    decoded = []
    for array in to_uint8(images):
        buffer = io.BytesIO()
        Image.fromarray(array, mode="RGB").save(buffer, format="JPEG", quality=int(quality))
        decoded.append(np.asarray(Image.open(buffer).convert("RGB")))
    out = torch.from_numpy(np.stack(decoded)).permute(0, 3, 1, 2)
    return out.to(device=images.device, dtype=images.dtype) / 255


def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur of ``sigma`` pixels (kernel ±3 sigma, reflected borders)."""
    radius = max(1, math.ceil(3 * sigma))
    size = min(2 * radius + 1, 2 * (min(images.shape[-2:]) // 2) - 1)  # reflection needs kernel < image
    return TF.gaussian_blur(images, [size, size], [sigma, sigma])


def _overlay(images: torch.Tensor, paint: Painter, rng: np.random.Generator) -> torch.Tensor:
    """Paint an RGBA layer per image (supersampled) and alpha-blend it over the image."""
    h, w = images.shape[-2:]
    layers = []
    for _ in range(images.shape[0]):
        canvas = Image.new("RGBA", (w * SUPERSAMPLE, h * SUPERSAMPLE), (0, 0, 0, 0))
        paint(ImageDraw.Draw(canvas), h * SUPERSAMPLE, w * SUPERSAMPLE, rng)
        layers.append(np.asarray(canvas.resize((w, h), Image.Resampling.BOX)))
    rgba = torch.from_numpy(np.stack(layers)).permute(0, 3, 1, 2).to(images.device, images.dtype) / 255
    alpha = rgba[:, 3:]
    return images * (1 - alpha) + rgba[:, :3] * alpha


class Artefact(Attack):
    """An artefact of ``severity`` 1–5; subclasses implement :meth:`apply`."""

    def __init__(self, severity: int = 3, *, seed: int = 0) -> None:
        self.severity = check_severity(severity)
        self.seed = int(seed)

    def perturb(
        self, model: nn.Module, images: torch.Tensor, *, labels: torch.Tensor | None, target: int | None
    ) -> torch.Tensor:
        return self.apply(images, np.random.default_rng(self.seed)).clamp(0, 1)

    def apply(self, images: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        raise NotImplementedError


class DrawnArtefact(Artefact):
    """An artefact drawn on a transparent layer: ``counts[severity - 1]`` calls of :meth:`draw_one` per image."""

    counts: tuple[int, ...] = (1, 1, 1, 1, 1)

    def apply(self, images: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        return _overlay(images, self._paint, rng)

    def _paint(self, draw: ImageDraw.ImageDraw, h: int, w: int, rng: np.random.Generator) -> None:
        for _ in range(self.counts[self.severity - 1]):
            self.draw_one(draw, h, w, rng)

    def draw_one(self, draw: ImageDraw.ImageDraw, h: int, w: int, rng: np.random.Generator) -> None:
        raise NotImplementedError


@register_attack("hair")
class Hair(DrawnArtefact):
    """Dark curved hairs (quadratic Bézier strokes): 3 to 32 per image."""

    counts = (3, 6, 12, 20, 32)

    def draw_one(self, draw: ImageDraw.ImageDraw, h: int, w: int, rng: np.random.Generator) -> None:
        side = min(h, w)
        start = rng.uniform((0, 0), (w, h))
        angle = rng.uniform(0, 2 * np.pi)
        length = rng.uniform(0.3, 0.9) * side
        end = start + length * np.array([np.cos(angle), np.sin(angle)])
        bend = (start + end) / 2 + rng.normal(0, 0.15 * length, 2)
        t = np.linspace(0, 1, 24)[:, None]
        points = (1 - t) ** 2 * start + 2 * (1 - t) * t * bend + t**2 * end
        shade = int(rng.integers(10, 60))
        width = max(1, round(rng.uniform(0.005, 0.012) * side))
        draw.line([tuple(p) for p in points], fill=(shade, shade * 3 // 4, shade // 2, 235), width=width)


@register_attack("ruler")
class Ruler(DrawnArtefact):
    """A translucent ruler band with tick marks along one random edge; wider and denser with severity."""

    def draw_one(self, draw: ImageDraw.ImageDraw, h: int, w: int, rng: np.random.Generator) -> None:
        s = self.severity
        band = round((0.04 + 0.03 * s) * min(h, w))
        edge = int(rng.integers(4))  # top, bottom, left, right
        horizontal = edge < 2
        length = w if horizontal else h
        at = 0 if edge in (0, 2) else (h if horizontal else w) - band
        box = (0, at, w, at + band) if horizontal else (at, 0, at + band, h)
        draw.rectangle(box, fill=(235, 230, 200, round(255 * (0.25 + 0.1 * s))))
        step = length / (10 + 3 * s)
        width = max(1, round(0.006 * min(h, w)))
        for k, pos in enumerate(np.arange(rng.uniform(0, step), length, step)):
            tick = band * (0.9 if k % 5 == 0 else 0.5)
            inner = at if edge in (0, 2) else at + band - tick
            line = [(pos, inner), (pos, inner + tick)] if horizontal else [(inner, pos), (inner + tick, pos)]
            draw.line(line, fill=(20, 20, 20, 230), width=width)


@register_attack("ink")
class InkMarks(DrawnArtefact):
    """Gentian-violet skin-marker strokes (arcs and dots), 1 to 8 per image."""

    counts = (1, 2, 3, 5, 8)

    def draw_one(self, draw: ImageDraw.ImageDraw, h: int, w: int, rng: np.random.Generator) -> None:
        colour = (int(rng.integers(90, 140)), int(rng.integers(30, 70)), int(rng.integers(130, 180)), 200)
        cx, cy = rng.uniform((0, 0), (w, h))
        r = rng.uniform(0.05, 0.2) * min(h, w)
        width = max(1, round(rng.uniform(0.015, 0.03) * min(h, w)))
        if rng.random() < 0.3:
            draw.ellipse((cx - width, cy - width, cx + width, cy + width), fill=colour)
        else:
            start = rng.uniform(0, 360)
            draw.arc((cx - r, cy - r, cx + r, cy + r), start, start + rng.uniform(40, 200), colour, width)


@register_attack("bubbles")
class Bubbles(DrawnArtefact):
    """Air bubbles in the immersion fluid: faint discs with a bright rim and a highlight, 1 to 12 per image."""

    counts = (1, 2, 4, 7, 12)

    def draw_one(self, draw: ImageDraw.ImageDraw, h: int, w: int, rng: np.random.Generator) -> None:
        cx, cy = rng.uniform((0, 0), (w, h))
        r = rng.uniform(0.03, 0.12) * min(h, w)
        box = (cx - r, cy - r, cx + r, cy + r)
        draw.ellipse(box, fill=(255, 255, 255, 40), outline=(250, 250, 250, 200), width=max(1, round(0.15 * r)))
        hr, hx, hy = 0.25 * r, cx - 0.4 * r, cy - 0.4 * r
        draw.ellipse((hx - hr, hy - hr, hx + hr, hy + hr), fill=(255, 255, 255, 170))


@register_attack("vignette")
class Vignette(Artefact):
    """Black corners of the dermatoscope's round field of view: a circle of 95% to 66% of the half-diagonal."""

    radii = (0.95, 0.87, 0.8, 0.73, 0.66)

    def apply(self, images: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        h, w = images.shape[-2:]
        y = torch.arange(h, device=images.device, dtype=images.dtype) + 0.5 - h / 2
        x = torch.arange(w, device=images.device, dtype=images.dtype) + 0.5 - w / 2
        distance = (y[:, None] ** 2 + x[None, :] ** 2).sqrt() / math.hypot(h / 2, w / 2)
        edge = 0.02  # a soft rim, as the lens's edge is not a sharp step
        keep = ((self.radii[self.severity - 1] - distance) / edge + 0.5).clamp(0, 1)
        return images * keep


@register_attack("jpeg")
class JpegArtefact(Artefact):
    """JPEG compression at quality 80, 60, 40, 20 or 10 (Pillow's encoder)."""

    def apply(self, images: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        return jpeg_roundtrip(images, JPEG_QUALITY[self.severity - 1])


@register_attack("blur")
class Blur(Artefact):
    """Defocus as a Gaussian blur of 0.4% to 2.5% of the shorter side."""

    def apply(self, images: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        return gaussian_blur(images, BLUR_SIGMA[self.severity - 1] * min(images.shape[-2:]))


@register_attack("colour-cast")
class ColourCast(ColourShift):
    """A colour-constancy shift of ``severity`` 1–5: the :class:`ColourShift` gains (1 + g, 1, 1 - g), g = 4%…20%."""

    def __init__(self, severity: int = 3, *, seed: int = 0) -> None:
        self.severity = check_severity(severity)
        self.seed = int(seed)  # unused: accepted so that every artefact is built alike
        g = CAST_GAINS[self.severity - 1]
        super().__init__((1 + g, 1.0, 1 - g))


ARTEFACTS: tuple[str, ...] = ("hair", "ruler", "ink", "vignette", "bubbles", "jpeg", "blur", "colour-cast")
