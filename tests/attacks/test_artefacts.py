"""Dermoscopy artefacts: every severity in range, reproducible, stronger with severity, any image size."""

from __future__ import annotations

import pytest
import torch

from dermadv.attacks.artefacts import ARTEFACTS, SEVERITIES, ColourCast, gaussian_blur, jpeg_roundtrip
from dermadv.attacks.natural import ColourShift
from dermadv.attacks.registry import create_attack, list_attacks
from dermadv.errors import ConfigError

DRAWN = ("hair", "ruler", "ink", "bubbles")


def _lesions(n: int = 6, size: tuple[int, int] = (48, 64)) -> torch.Tensor:
    """Skin-coloured images with a dark oval, on the 8-bit grid."""
    h, w = size
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    inside = ((yy / 0.5) ** 2 + (xx / 0.4) ** 2 < 1).float()
    skin, lesion = torch.tensor([0.85, 0.65, 0.6]), torch.tensor([0.45, 0.3, 0.2])
    base = skin[:, None, None] * (1 - inside) + lesion[:, None, None] * inside
    noise = 0.02 * torch.randn(n, 3, h, w, generator=torch.Generator().manual_seed(0))
    return ((base + noise).clamp(0, 1) * 255).round() / 255


def _apply(name: str, images: torch.Tensor, **params: object) -> torch.Tensor:
    return create_attack(name, **params).perturb(torch.nn.Identity(), images, labels=None, target=None)


def test_all_artefacts_are_registered() -> None:
    assert set(ARTEFACTS) <= set(list_attacks())


@pytest.mark.parametrize("name", ARTEFACTS)
def test_every_severity_stays_in_range_and_changes_the_image(name: str) -> None:
    images = _lesions()
    for severity in SEVERITIES:
        out = _apply(name, images, severity=severity)
        assert out.shape == images.shape and out.min() >= 0 and out.max() <= 1
        assert (out - images).abs().mean() > 0


@pytest.mark.parametrize("name", ARTEFACTS)
def test_stronger_with_severity(name: str) -> None:
    """The mean change over a batch grows from severity 1 to 3 to 5."""
    images = _lesions(8)
    change = [float((_apply(name, images, severity=s) - images).abs().mean()) for s in (1, 3, 5)]
    assert change[0] < change[1] < change[2], change


@pytest.mark.parametrize("name", DRAWN)
def test_drawn_artefacts_are_reproducible_and_differ_per_image_and_seed(name: str) -> None:
    images = _lesions(2)
    first, again = _apply(name, images, seed=1), _apply(name, images, seed=1)
    assert torch.equal(first, again)
    assert not torch.equal(first, _apply(name, images, seed=2))
    assert not torch.equal(first[0] - images[0], first[1] - images[1])


@pytest.mark.parametrize("size", [(16, 16), (33, 50), (150, 200)])
def test_any_image_size(size: tuple[int, int]) -> None:
    images = _lesions(1, size)
    for name in ARTEFACTS:
        assert _apply(name, images, severity=5).shape == images.shape


def test_vignette_blackens_the_corners_and_keeps_the_centre() -> None:
    images = _lesions(1)
    out = _apply("vignette", images, severity=5)
    assert out[..., 0, 0].max() == 0 and torch.equal(out[..., 24, 32], images[..., 24, 32])


def test_colour_cast_is_a_colour_shift_with_graded_gains() -> None:
    cast = ColourCast(severity=5)
    assert isinstance(cast, ColourShift) and cast.gains == pytest.approx((1.2, 1.0, 0.8))


def test_jpeg_and_blur_helpers() -> None:
    images = _lesions(2)
    assert (jpeg_roundtrip(images, 90) - images).abs().mean() < (jpeg_roundtrip(images, 10) - images).abs().mean()
    flat = torch.full((1, 3, 20, 20), 0.3)
    torch.testing.assert_close(gaussian_blur(flat, 2.0), flat)
    with pytest.raises(ConfigError, match="quality"):
        jpeg_roundtrip(images, 0)


@pytest.mark.parametrize("severity", [0, 6, 2.5])
def test_bad_severity_is_a_config_error(severity: float) -> None:
    with pytest.raises(ConfigError, match="severity"):
        create_attack("hair", severity=severity)
    with pytest.raises(ConfigError, match="severity"):
        ColourCast(severity=severity)  # type: ignore[arg-type]
