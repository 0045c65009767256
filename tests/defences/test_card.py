"""The per-class robustness card: exact thresholds on a constructed case, and a real PGD card on the tiny model."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dermadv.attacks.base import Attack
from dermadv.defences.card import robustness_card
from dermadv.defences.transforms import parse_defence
from dermadv.errors import ConfigError

TARGET = 0


class Brightness(nn.Module):
    """Class 0 (the target) once the mean brightness passes 0.5; otherwise the class in the red channel's first pixel."""

    def __init__(self) -> None:
        super().__init__()
        self.unused = nn.Parameter(torch.zeros(()))  # gives the model a device

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        own = nn.functional.one_hot((images[:, 0, 0, 0] * 10).round().long(), 3).float()
        bright = (images[:, 1:].mean((1, 2, 3)) > 0.5).float()[:, None]
        return own * (1 - bright) + nn.functional.one_hot(torch.zeros(len(images), dtype=torch.long), 3) * bright


class Brighten(Attack):
    """Adds ``eps`` to the green and blue channels: moves an image to the target once its gap is under eps."""

    def __init__(self, eps: float) -> None:
        self.eps = eps

    def perturb(self, model, images, *, labels, target):
        out = images.clone()
        out[:, 1:] += self.eps
        return out


def _images(gaps_by_class: dict[int, list[float]]) -> tuple[torch.Tensor, torch.Tensor]:
    rows, labels = [], []
    for label, gaps in gaps_by_class.items():
        for gap in gaps:
            image = torch.full((3, 4, 4), 0.5 - gap)
            image[0, 0, 0] = label / 10
            rows.append(image)
            labels.append(label)
    return torch.stack(rows), torch.tensor(labels)


def test_thresholds_on_a_constructed_case() -> None:
    # class 1: half the images need eps > 0.01, all need eps > 0.03; class 2 needs eps > 0.1
    images, labels = _images({0: [0.2], 1: [0.01, 0.01, 0.03, 0.03], 2: [0.1, 0.1]})
    card = robustness_card(
        Brightness(), images, labels, target=TARGET, eps=[0.04, 0.02, 0.08], make_attack=Brighten, class_names="xyz"
    )
    assert card.target == "x" and card.eps == (0.02, 0.04, 0.08) and card.attack.startswith("Brighten")
    one, two = card.classes
    assert (one.label, one.n_images, one.fooling, one.eps_50, one.eps_99) == ("y", 4, (0.5, 1.0, 1.0), 0.02, 0.04)
    assert (two.label, two.n_images, two.fooling, two.eps_50, two.eps_99) == ("z", 2, (0.0, 0.0, 0.0), None, None)
    rows = card.rows()
    assert rows[0]["label"] == "y" and rows[0]["eps_99"] == 0.04 and set(rows[0]) >= {"fooling_0.02", "fooling_0.04"}


def test_pgd_card_on_the_tiny_model_before_and_after_a_defence(tiny) -> None:
    images, labels = tiny.test_images[:80], tiny.test_labels[:80]
    budgets = [2 / 255, 8 / 255, 32 / 255]
    plain = robustness_card(tiny.model, images, labels, target=TARGET, eps=budgets, batch_size=32)
    defended = robustness_card(parse_defence("bits:5")(tiny.model), images, labels, target=TARGET, eps=budgets)
    for card in (plain, defended):
        assert [c.label for c in card.classes] == ["1", "2", "3"]
        assert sum(c.n_images for c in card.classes) == int((labels != TARGET).sum())
        for c in card.classes:
            assert c.eps_50 is None or c.eps_99 is None or c.eps_50 <= c.eps_99
    assert any(c.eps_50 is not None for c in plain.classes)  # 32/255 moves most of some class
    assert plain.rows()[0]["fooling_32/255"] >= plain.rows()[0]["fooling_2/255"]


def test_card_needs_budgets(tiny) -> None:
    with pytest.raises(ConfigError, match="budget"):
        robustness_card(tiny.model, tiny.test_images[:4], tiny.test_labels[:4], target=0, eps=[])
