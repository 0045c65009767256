"""Reliability checks: each flags the failure it is named after and passes a sound model."""

from __future__ import annotations

import torch
from torch import nn

from dermadv.evaluation.reliability import (
    check_black_beats_white,
    check_conversion,
    check_gradients,
    check_probabilities,
    check_randomised,
)


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 7)).eval()


class Noisy(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x) + 0.1 * torch.randn(x.shape[0], 7)


class Masked(nn.Module):
    """Rounds its input to 8 levels first: zero gradient almost everywhere (gradient masking)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(torch.round(x * 7) / 7)


images = torch.rand(6, 3, 8, 8)
labels = torch.arange(6) % 7


def test_randomised_model_is_flagged() -> None:
    assert check_randomised(_model(), images).status == "pass"
    assert check_randomised(Noisy(_model()), images).status == "warn"


def test_probabilities_where_logits_are_declared() -> None:
    softmaxed = nn.Sequential(_model(), nn.Softmax(1))
    assert check_probabilities(softmaxed, images, declared="logits").status == "warn"
    assert check_probabilities(_model(), images, declared="logits").status == "pass"


def test_vanishing_gradients_are_flagged() -> None:
    assert check_gradients(_model(), images, labels, white_box=True).status == "pass"
    masked = check_gradients(Masked(_model()), images, labels, white_box=True)
    assert masked.status == "warn" and masked.figure.startswith("6/6")
    assert check_gradients(_model(), images, labels, white_box=False).status == "skip"


def test_black_box_beating_white_box_is_flagged() -> None:
    assert check_black_beats_white(0.5, 0.9, n=10).status == "warn"
    assert check_black_beats_white(0.9, 0.5, n=10).status == "pass"
    assert check_black_beats_white(None, 0.5, n=10).status == "skip"


def test_conversion_notes() -> None:
    bad = ("onnx2torch disagrees with onnxruntime by max |Δlogit| = 3.00e-02 > 0.0001: white-box refused",)
    assert check_conversion(bad, kind="onnx").status == "warn"
    good = ("onnx2torch agrees with onnxruntime: max |Δlogit| = 2.00e-06 on 14 images",)
    assert check_conversion(good, kind="onnx").status == "pass"
    assert check_conversion((), kind="torchscript").status == "skip"
