"""AutoAttack's ensemble: APGD and Square agree with the other library's version; the worst case is per image."""

from __future__ import annotations

import torch
from torch import nn

from dermadv.attacks.art import ArtAttack
from dermadv.attacks.base import Attack
from dermadv.attacks.reliable import APGD, AutoAttack, Square, worst_case

EPS = 8 / 255


def test_apgd_ce_agrees_with_torchattacks(tiny) -> None:
    import torchattacks

    images, labels = tiny.test_images[:100], tiny.test_labels[:100]
    ours = APGD(EPS, steps=20)(tiny.model, images, labels=labels).success.float().mean()
    reference = torchattacks.APGD(tiny.model, eps=EPS, steps=20, loss="ce")(images, labels)
    with torch.no_grad():
        theirs = (tiny.model(reference).argmax(1) != labels).float().mean()
    assert abs(float(ours - theirs)) <= 0.06


def test_square_agrees_with_art(tiny) -> None:
    images, labels = tiny.test_images[:100], tiny.test_labels[:100]
    ours = Square(EPS, queries=300)(tiny.model, images, labels=labels)
    art = ArtAttack("SquareAttack", eps=EPS, max_iter=300, norm="linf", nb_restarts=1)(
        tiny.model, images, labels=labels
    )
    assert abs(float(ours.success.float().mean() - art.success.float().mean())) <= 0.1
    assert (ours.adv_images - images).abs().max() <= EPS + 1e-6


def test_square_leaves_the_global_random_stream_alone(tiny) -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    Square(EPS, queries=5)(tiny.model, tiny.test_images[:4], target=0)
    assert torch.equal(torch.rand(3), expected)


def test_autoattack_fools_every_image_its_first_attack_fools(tiny) -> None:
    images, labels = tiny.test_images[:64], tiny.test_labels[:64]
    first = APGD(EPS, steps=10)(tiny.model, images, labels=labels).success
    ensemble = AutoAttack(EPS, steps=10, queries=100)(tiny.model, images, labels=labels).success
    assert bool((ensemble | ~first).all()) and ensemble.sum() >= first.sum()


class Marked(nn.Module):
    """Predicts class 1 for images whose first pixel is 1.0, else class 0."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        hit = (images[:, 0, 0, 0] == 1.0).float()
        return torch.stack([1 - hit, hit], 1)


class MarkSome(Attack):
    """Succeeds (sets the first pixel to 1) on the images whose id, kept in pixel (0, 1, 1), is a multiple of ``k``."""

    def __init__(self, k: int) -> None:
        self.k = k

    def perturb(self, model, images, *, labels, target):
        out = images.clone()
        ids = (images[:, 0, 1, 1] * 100).round().long()
        out[ids % self.k == 0, 0, 0, 0] = 1.0
        return out


def test_worst_case_is_the_union_and_names_the_first_success() -> None:
    images = torch.zeros(12, 3, 4, 4)
    images[:, 0, 1, 1] = torch.arange(12) / 100
    result = worst_case(Marked(), images, [MarkSome(2), MarkSome(3)], target=1)
    ids = torch.arange(12)
    assert torch.equal(result.success, (ids % 2 == 0) | (ids % 3 == 0))
    expected = torch.where(ids % 2 == 0, 0, torch.where(ids % 3 == 0, 1, -1))
    assert torch.equal(result.fooled_by, expected)
    assert result.names == ("MarkSome(k=2)", "MarkSome(k=3)")
    assert torch.equal(result.adv_images[:, 0, 0, 0] == 1.0, result.success)
