"""Transfer attacks: made on surrogates only; the target is queried just to score (mi-di), or only where the
transfer did not already succeed (transfer-square)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from dermadv.attacks.registry import create_attack
from dermadv.attacks.transfer import MIDI, TransferSquare

pytest.importorskip("torchattacks")


class Counting(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.rows = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.rows += x.shape[0]
        return self.inner(x)


def _setup(tiny, n: int = 24):
    images, labels = tiny.test_images[:n], tiny.test_labels[:n]
    target = int(torch.bincount(tiny.train_labels).argmin())  # a rare class: far to move
    keep = labels != target
    return images[keep], labels[keep], target


def test_mi_di_on_the_model_itself_succeeds_and_queries_the_target_only_to_score(tiny) -> None:
    images, labels, target = _setup(tiny)
    surrogate = copy.deepcopy(tiny.model).eval()
    target_model = Counting(tiny.model).eval()
    result = MIDI("8/255", surrogates=[surrogate], steps=10)(target_model, images, labels=labels, target=target)
    assert target_model.rows == len(images)  # the base class's one scoring call, nothing else
    assert (result.adv_images - images).abs().max() <= 8 / 255 + 1e-6
    # on an identical copy, transfer is a white-box attack: close to PGD with as many steps (diversity costs some)
    pgd = create_attack("pgd", eps="8/255", steps=10)(tiny.model, images, target=target).success.float().mean()
    with torch.no_grad():
        already = (tiny.model(images).argmax(1) == target).float().mean()
    assert result.success.float().mean() >= max(pgd - 0.3, already + 0.2), (result.success.float().mean(), pgd)


def test_transfer_square_spends_one_query_where_transfer_already_succeeded(tiny) -> None:
    images, labels, target = _setup(tiny)
    target_model = Counting(tiny.model).eval()
    attack = TransferSquare("8/255", surrogates=[copy.deepcopy(tiny.model).eval()], steps=10, queries=50)
    result = attack(target_model, images, labels=labels, target=target)
    assert result.queries is not None and (result.queries <= 50).all()
    moved = MIDI("8/255", surrogates=[copy.deepcopy(tiny.model).eval()], steps=10)(
        tiny.model, images, labels=labels, target=target
    ).success
    assert (result.queries[moved] == 1).all()  # no query spent after success
    assert result.success.float().mean() >= moved.float().mean()
    assert target_model.rows == int(result.queries.sum()) + len(images)


def test_registry_builds_transfer_attacks_from_specs(tiny, tmp_path) -> None:
    with pytest.raises(Exception, match="at least one surrogate"):
        create_attack("mi-di", eps="8/255")
    attack = create_attack("mi-di", eps="4/255", surrogates=[tiny.model], steps=5)
    assert attack.needs == "surrogate" and "steps=5" in repr(attack)
