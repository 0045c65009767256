"""Exporting dermadv's own classifiers: the ONNX file converts back through onnx2torch (white-box) and agrees."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dermadv.models.classifier import build_classifier
from dermadv.models.export import export_model, static_same_padding
from dermadv.models.sources import load_model, verify_onnx

pytest.importorskip("onnx2torch")
pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def lite0() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_classifier("timm:tf_efficientnet_lite0", 7).eval()


def test_static_padding_keeps_the_logits(lite0: torch.nn.Module) -> None:
    x = torch.rand(2, 3, 48, 48)
    static = static_same_padding(lite0, (48, 48)).eval()
    with torch.no_grad():
        assert torch.allclose(static(x), lite0(x), atol=1e-5)
    assert static is not lite0  # the model given is left as it was


def test_exported_tf_efficientnet_is_white_box(lite0: torch.nn.Module, tmp_path: Path) -> None:
    path = export_model(lite0, tmp_path / "lite0.onnx", image_size=(48, 48))
    model = load_model(path)
    assert model.info.threat_model == "white-box", model.info.notes
    x = torch.round(torch.rand(3, 3, 48, 48) * 255) / 255
    checked, diff = verify_onnx(model, x)
    assert checked is model and diff is not None and diff <= 1e-4
    with torch.no_grad():
        assert torch.allclose(model(x), lite0(x), atol=1e-4)
    # the black-box form (onnxruntime) gives the same scores on 8-bit images
    with torch.no_grad():
        assert torch.allclose(model.fallback(x), lite0(x), atol=1e-4)


def test_torchscript_export_matches(lite0: torch.nn.Module, tmp_path: Path) -> None:
    path = export_model(lite0, tmp_path / "lite0.pt", image_size=(48, 48))
    model = load_model(path)
    x = torch.rand(2, 3, 48, 48)
    with torch.no_grad():
        assert torch.allclose(model(x), lite0(x), atol=1e-5)
