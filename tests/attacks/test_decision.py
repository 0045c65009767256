"""HopSkipJump on labels only: every query counted and within budget, none after success, the L∞ budget, a
targeted success from a start pool, seeding, and the refusal of a targeted attack with nothing to start from."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from dermadv.attacks.decision import HopSkipJump
from dermadv.attacks.registry import create_attack
from dermadv.errors import ConfigError

EPS = 8 / 255
TARGET = 0


class Recording(nn.Module):
    """``model``, recording every batch it is sent and its labels."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits = self.model(images)
        self.calls.append((images.detach().clone(), logits.argmax(1)))
        return logits

    @property
    def rows(self) -> int:
        return sum(len(x) for x, _ in self.calls)


class Bright(nn.Module):
    """Class ``TARGET`` for images brighter than 0.5 on average, class 1 otherwise: the easiest decision boundary."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        margin = 100 * (images.mean((1, 2, 3)) - 0.5)
        logits = torch.zeros(len(images), 4, device=images.device)
        logits[:, TARGET], logits[:, 1] = margin, -margin
        return logits


def grey(n: int, level: float, *, seed: int = 0) -> torch.Tensor:
    """Noisy images of mean ``level`` on the 8-bit grid."""
    g = torch.Generator().manual_seed(seed)
    return ((level + 0.03 * torch.randn(n, 3, 16, 16, generator=g)).clamp(0, 1) * 255).round() / 255


def target_pool(tiny, target: int = TARGET) -> torch.Tensor:
    with torch.no_grad():
        return tiny.train_images[tiny.model(tiny.train_images).argmax(1) == target][:32]


def attack_with_pool(pool: torch.Tensor | None, **params: object) -> HopSkipJump:
    attack = create_attack("hopskipjump", **{"eps": EPS, **params})
    assert isinstance(attack, HopSkipJump)
    attack._start_pool = pool
    return attack


def linf(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a - b).abs().flatten(1).amax(1)


@pytest.mark.parametrize("targeted", [True, False])
def test_every_query_counted_and_within_budget(tiny, targeted: bool) -> None:
    images, labels = tiny.test_images[:8], tiny.test_labels[:8]
    keep = labels != TARGET
    images, labels = images[keep], labels[keep]
    budget = 150  # the second gradient estimate (141 images) is cut
    attack = attack_with_pool(target_pool(tiny) if targeted else None, queries=budget, batch_size=32)
    model = Recording(tiny.model)
    result = attack(model, images, labels=labels, target=TARGET if targeted else None)

    assert result.queries is not None and result.queries.dtype == torch.long
    assert (result.queries >= 1).all() and (result.queries <= budget).all()
    final = len(images)  # the base class classifies the result once per image
    assert int(result.queries.sum()) == model.rows - final
    assert max(len(x) for x, _ in model.calls[:-1]) <= 32  # ART's batches, never more than batch_size
    if targeted:  # every search starts (the pool is classified as the target) and a failed one spends it all
        assert (result.queries[~result.success] == budget).all()
    assert (linf(result.adv_images, images) <= EPS + 1e-6).all()
    assert ((result.adv_images * 255).round() - images * 255).abs().max() <= 8


def test_targeted_success_from_the_start_pool_and_no_query_after_it() -> None:
    images = grey(4, 0.5 - 3 / 255)  # within eps of the boundary, on the wrong side
    model = Bright()
    attack = attack_with_pool(grey(8, 0.8, seed=1), queries=500)
    for image in images:
        recording = Recording(model)
        result = attack(recording, image[None], labels=torch.ones(1, dtype=torch.long), target=TARGET)
        assert bool(result.success[0]) and int(result.queries[0]) < 500
        assert float(linf(result.adv_images, image[None])[0]) <= EPS + 1e-6
        search = recording.calls[:-1]  # the last call is the base class scoring the result
        assert int(result.queries[0]) == sum(len(x) for x, _ in search)
        won = [bool(((pred == TARGET) & (linf(x, image[None]) <= EPS)).any()) for x, pred in search]
        assert won.index(True) == len(search) - 1, "a query was sent after a point within eps was found"


def test_an_image_already_adversarial_costs_one_query() -> None:
    images = grey(2, 0.6)  # Bright calls these TARGET already
    attack = attack_with_pool(grey(4, 0.8, seed=1), queries=100)
    result = attack(Bright(), images, labels=torch.ones(2, dtype=torch.long), target=TARGET)
    assert result.success.all() and result.queries.tolist() == [1, 1]
    assert torch.equal(result.adv_images, images)


@pytest.mark.parametrize("targeted", [True, False])
def test_seeded_repeat_is_identical_and_independent_of_the_batch(tiny, targeted: bool) -> None:
    images, labels = tiny.test_images[1:5], tiny.test_labels[1:5]
    target = TARGET if targeted else None
    pool = target_pool(tiny) if targeted else None
    first = attack_with_pool(pool, queries=120, seed=3)(tiny.model, images, labels=labels, target=target)
    again = attack_with_pool(pool, queries=120, seed=3)(tiny.model, images, labels=labels, target=target)
    alone = attack_with_pool(pool, queries=120, seed=3)(tiny.model, images[2:3], labels=labels[2:3], target=target)
    assert torch.equal(first.adv_images, again.adv_images) and torch.equal(first.queries, again.queries)
    assert torch.equal(first.adv_images[2:3], alone.adv_images) and torch.equal(first.queries[2:3], alone.queries)


def test_numpy_global_state_is_left_as_it_was(tiny) -> None:
    np.random.seed(7)
    expected = np.random.rand()
    np.random.seed(7)
    attack_with_pool(None, queries=50)(tiny.model, tiny.test_images[:2], labels=tiny.test_labels[:2])
    assert np.random.rand() == expected


def test_targeted_without_a_start_pool_is_refused(tiny) -> None:
    attack = create_attack("hopskipjump", eps=EPS, queries=50)
    with pytest.raises(ConfigError, match="needs images the model classifies as the target"):
        attack(tiny.model, tiny.test_images[:2], labels=tiny.test_labels[:2], target=TARGET)
    attack._start_pool = torch.zeros(0, 3, 16, 16)  # type: ignore[attr-defined]
    with pytest.raises(ConfigError, match="needs images"):
        attack(tiny.model, tiny.test_images[:2], labels=tiny.test_labels[:2], target=TARGET)


@pytest.mark.parametrize(
    "params", [{"queries": 0}, {"queries": 2.5}, {"init_eval": 200, "max_eval": 100}, {"batch_size": 0}]
)
def test_bad_hyperparameters_are_refused(params: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        create_attack("hopskipjump", eps=EPS, **params)


def test_declares_labels_only() -> None:
    attack = create_attack("hopskipjump", eps="4/255", queries=300)
    assert attack.needs == "labels"
    assert repr(attack).startswith("HopSkipJump(eps=0.0156") and "queries=300" in repr(attack)
