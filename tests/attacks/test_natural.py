"""Natural perturbations: exact geometry, and the target is ignored."""

from __future__ import annotations

import pytest
import torch
import torchvision.transforms.functional as TF

from dermadv.attacks.natural import ColourShift, Rotation, Translation
from dermadv.errors import ConfigError


@pytest.mark.parametrize("size", [(20, 20), (20, 30)])
def test_rotation_matches_torchvision_inside_the_image(size: tuple[int, int]) -> None:
    images = torch.rand(2, 3, *size, generator=torch.Generator().manual_seed(0))
    ours = Rotation(30, padding="zeros").perturb(torch.nn.Identity(), images, labels=None, target=None)
    reference = TF.rotate(images, 30, interpolation=TF.InterpolationMode.BILINEAR)
    h, w = size
    centre = (..., slice(h // 2 - 4, h // 2 + 4), slice(w // 2 - 4, w // 2 + 4))
    assert torch.allclose(ours[centre], reference[centre], atol=1e-5)


def test_whole_pixel_translation_is_an_exact_shift() -> None:
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    shifted = Translation(3, 2).perturb(torch.nn.Identity(), images, labels=None, target=None)
    assert torch.allclose(shifted[..., 2:, 3:], images[..., :-2, :-3], atol=1e-6)


def test_colour_shift_scales_channels_and_clips(tiny) -> None:
    images = tiny.test_images[:4]
    result = ColourShift((1.2, 1.0, 0.5))(tiny.model, images, target=0)
    assert torch.allclose(result.adv_images[:, 1], images[:, 1])
    assert torch.allclose(result.adv_images[:, 2], images[:, 2] * 0.5)
    assert result.adv_images.max() <= 1
    assert ColourShift("1.2,1.0,0.5").gains == (1.2, 1.0, 0.5)  # as the CLI passes it


def test_bad_parameters() -> None:
    with pytest.raises(ConfigError):
        ColourShift((1.0, -1.0, 1.0))
    with pytest.raises(ConfigError):
        ColourShift("warm")
    with pytest.raises(ConfigError):
        Rotation(10, padding="wrap")  # type: ignore[arg-type]
