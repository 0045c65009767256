"""The ART adapter: any evasion attack by class name, end to end on the tiny classifier."""

from __future__ import annotations

import pytest
import torch

from dermadv.attacks.registry import create_attack
from dermadv.errors import ConfigError

EPS = 8 / 255


def test_fast_gradient_method_end_to_end(tiny) -> None:
    images = tiny.test_images[:64]
    attack = create_attack("art:FastGradientMethod", eps=EPS)
    assert attack.name == "art:FastGradientMethod"
    result = attack(tiny.model, images, target=0)
    assert result.adv_images.shape == images.shape
    assert ((result.adv_images * 255).round() - (images * 255).round()).abs().max() <= round(EPS * 255)
    assert result.success.float().mean() > (tiny.test_labels[:64] == 0).float().mean()


def test_black_box_square_attack_end_to_end(tiny) -> None:
    images, labels = tiny.test_images[:32], tiny.test_labels[:32]
    attack = create_attack("art:SquareAttack", eps=16 / 255, max_iter=20, norm="linf")
    result = attack(tiny.model, images, labels=labels)
    assert ((result.adv_images - images).abs().max()) <= 16 / 255 + 1e-6
    assert result.success.any()


def test_unknown_art_attack_lists_the_valid_ones() -> None:
    with pytest.raises(ConfigError, match="ProjectedGradientDescent"):
        create_attack("art:NoSuchAttack")


def test_unknown_parameter_and_missing_targeted_mode(tiny) -> None:
    with pytest.raises(ConfigError, match="accepts"):
        create_attack("art:FastGradientMethod", eps=EPS, steps=3)
    with pytest.raises(ConfigError, match="targeted"):
        create_attack("art:SquareAttack", eps=EPS, max_iter=1)(tiny.model, tiny.test_images[:2], target=0)


def test_untargeted_uses_true_labels(tiny) -> None:
    images, labels = tiny.test_images[:64], tiny.test_labels[:64]
    result = create_attack("art:ProjectedGradientDescent", eps=EPS, eps_step=EPS / 4, max_iter=5)(
        tiny.model, images, labels=labels
    )
    with torch.no_grad():
        clean_correct = (tiny.model(images).argmax(1) == labels).float().mean()
    assert 1 - result.success.float().mean() < clean_correct
