"""Input-transform defences: parsing, BPDA and plain gradients, EOT, the adaptive attack, and ART's transforms."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dermadv.attacks.gradient import PGD
from dermadv.defences.transforms import (
    EOT,
    BitDepth,
    GaussianNoise,
    Jpeg,
    MedianSmoothing,
    attack_defence,
    parse_defence,
)
from dermadv.errors import ConfigError


def _input_gradient(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    x = images.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(model(x), labels), x)
    return grad


def _logit_vjp(model: torch.nn.Module, images: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``weights``ᵀ · d logits / d images: the derivative of the logits, whatever loss is put on them."""
    x = images.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad((model(x) * weights).sum(), x)
    return grad


@pytest.mark.parametrize(
    ("spec", "cls", "value"),
    [
        ("jpeg:75", Jpeg, 75),
        ("bits:5", BitDepth, 5),
        ("median:3", MedianSmoothing, 3),
        ("gauss:0.05", GaussianNoise, 0.05),
    ],
)
def test_parse_defence_builds_the_wrapper(spec: str, cls: type, value: float, tiny) -> None:
    wrapped = parse_defence(spec)(tiny.model)
    assert isinstance(wrapped, cls) and wrapped.spec == spec and wrapped.bpda
    assert str(parse_defence(spec.upper())) == spec
    assert not parse_defence(spec)(tiny.model, bpda=False).bpda


@pytest.mark.parametrize(
    "spec", ["jpeg", "jpeg:0", "jpeg:99", "bits:9", "bits:4.5", "median:4", "gauss:-1", "blur:3", "x"]
)
def test_bad_specs_are_one_line_config_errors(spec: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_defence(spec)
    message = str(info.value)
    assert "\n" not in message and "write" in message and spec.split(":")[0] in message


@pytest.mark.parametrize("spec", ["jpeg:75", "bits:5", "median:3"])
def test_bpda_gradient_is_the_model_gradient_at_the_transformed_image(spec: str, texture) -> None:
    images, labels = texture.test_images[:16], texture.test_labels[:16]
    defended = parse_defence(spec)(texture.model, bpda=True)
    transformed = defended.transform(images)
    assert not torch.equal(transformed, images)
    grad = _input_gradient(defended, images, labels)
    assert grad.abs().sum() > 0  # gradients flow through the non-differentiable transform
    torch.testing.assert_close(grad, _input_gradient(texture.model, transformed, labels))
    with torch.no_grad():
        torch.testing.assert_close(defended(images), texture.model(transformed))


@pytest.mark.parametrize("spec", ["jpeg:75", "median:3"])
def test_plain_gradient_is_the_undefended_one_and_the_forward_pass_is_defended(spec: str, texture) -> None:
    images = texture.test_images[:16]
    weights = torch.randn(16, 4, generator=torch.Generator().manual_seed(0))
    plain = parse_defence(spec)(texture.model, bpda=False)
    torch.testing.assert_close(_logit_vjp(plain, images, weights), _logit_vjp(texture.model, images, weights))
    x = images.clone().requires_grad_(True)
    with torch.no_grad():
        expected = texture.model(plain.transform(images))
    torch.testing.assert_close(plain(x).detach(), expected)


def test_eot_gradient_approaches_the_expected_gradient(texture) -> None:
    """The EOT gradient over 16 noise draws points closer to a 256-draw reference than a one-draw gradient does."""
    images, labels = texture.test_images[:32], texture.test_labels[:32]
    noisy = GaussianNoise(texture.model, 0.1)
    torch.manual_seed(0)
    reference = _input_gradient(EOT(noisy, 256), images, labels).flatten(1)
    single = _input_gradient(EOT(noisy, 1), images, labels).flatten(1)
    averaged = _input_gradient(EOT(noisy, 16), images, labels).flatten(1)
    assert F.cosine_similarity(averaged, reference).mean() > F.cosine_similarity(single, reference).mean() + 0.1


def test_gaussian_noise_is_random_and_in_range() -> None:
    images = torch.full((2, 3, 8, 8), 0.98)
    noisy = GaussianNoise(torch.nn.Identity(), 0.05)
    a, b = noisy.transform(images), noisy.transform(images)
    assert not torch.equal(a, b) and a.max() <= 1 and noisy.randomised


@pytest.mark.parametrize("eps", [8 / 255, 16 / 255])
def test_adaptive_attack_succeeds_at_least_as_often_as_the_plain_one(eps: float, texture) -> None:
    images, labels = texture.test_images, texture.test_labels
    result = attack_defence(texture.model, "median:3", PGD(eps, steps=10, seed=0), images, labels=labels)
    rates = result.rates()
    # median filtering is close to the identity on these gratings, where BPDA is at its best
    assert rates["bpda"] >= rates["plain"]
    assert bool((result.adaptive >= result.plain).all()) and rates["adaptive"] >= rates["bpda"]
    assert ((result.adv_images - images).abs().max()) <= eps + 1e-6


def test_attack_defence_with_eot_on_a_randomised_defence(texture) -> None:
    images, labels = texture.test_images[:64], texture.test_labels[:64]
    result = attack_defence(texture.model, "gauss:0.05", PGD(8 / 255, steps=5, seed=0), images, labels=labels)
    assert result.defence == "gauss:0.05" and result.plain.shape == (64,)
    assert result.rates()["adaptive"] >= max(result.rates()["plain"], result.rates()["bpda"])


# --- cross-checks with the Adversarial Robustness Toolbox's preprocessors ---


def _images(n: int = 6, size: tuple[int, int] = (20, 28)) -> torch.Tensor:
    """8-bit images a quarter step above the grid, so ART's truncation to uint8 and our rounding agree."""
    g = torch.Generator().manual_seed(0)
    smooth = F.interpolate(torch.rand(n, 3, 5, 7, generator=g), size=size, mode="bilinear", align_corners=False)
    levels = (0.7 * smooth + 0.3 * torch.rand(n, 3, *size, generator=g)).mul(254).round()
    return (levels + 0.25) / 255


@pytest.mark.parametrize("quality", [75, 30])
def test_jpeg_matches_art(quality: int) -> None:
    from art.defences.preprocessor import JpegCompression

    images = _images()
    art = JpegCompression(clip_values=(0.0, 1.0), quality=quality, channels_first=True)(images.numpy())[0]
    ours = Jpeg(torch.nn.Identity(), quality).transform(images)
    np.testing.assert_allclose(ours.numpy(), art, atol=1e-6)


@pytest.mark.parametrize("window", [3, 5])
def test_median_matches_art_spatial_smoothing(window: int) -> None:
    from art.defences.preprocessor import SpatialSmoothing

    images = torch.rand(4, 3, 13, 17, generator=torch.Generator().manual_seed(1))
    art = SpatialSmoothing(window_size=window, channels_first=True, clip_values=(0.0, 1.0))(images.numpy())[0]
    ours = MedianSmoothing(torch.nn.Identity(), window).transform(images)
    np.testing.assert_allclose(ours.numpy(), art, atol=1e-6)


@pytest.mark.parametrize("bits", [1, 3, 5])
def test_bit_depth_matches_art_feature_squeezing(bits: int) -> None:
    from art.defences.preprocessor import FeatureSqueezing

    images = torch.rand(4, 3, 9, 9, generator=torch.Generator().manual_seed(2))
    art = FeatureSqueezing(clip_values=(0.0, 1.0), bit_depth=bits)(images.numpy())[0]
    ours = BitDepth(torch.nn.Identity(), bits).transform(images)
    np.testing.assert_allclose(ours.numpy(), art, atol=1e-6)
