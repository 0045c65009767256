"""Classifier checkpoints and backbone weights: round trip, refusals, and ImageNet weights offline and over HTTP."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import http.server
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torchvision
from safetensors.torch import save_file

from dermadv.data.classes import CLASSES
from dermadv.errors import CheckpointError, ConfigError
from dermadv.models.checkpoints import CheckpointMeta, check_fits, load_checkpoint, save_checkpoint, save_state
from dermadv.models.classifier import IMAGENET_MEAN, IMAGENET_STD, Classifier, build_backbone, build_classifier

ARCH = "resnet18"


def trained_looking(model: Classifier, *, seed: int = 0) -> Classifier:
    """Random weights, non-trivial batch-norm statistics and a non-zero logit bias."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
        model.logit_bias.copy_(torch.randn(model.logit_bias.shape, generator=g))
    model.train()
    with torch.no_grad():
        model(torch.rand(8, 3, 32, 32, generator=g))  # fills the running statistics
    return model.eval()


def test_round_trip_keeps_metadata_and_logits(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = trained_looking(build_classifier(ARCH, len(CLASSES)))
    mean, std = (0.6, 0.5, 0.4), (0.2, 0.25, 0.3)
    model.mean.copy_(torch.tensor(mean).view(1, 3, 1, 1))
    model.std.copy_(torch.tensor(std).view(1, 3, 1, 1))
    meta = CheckpointMeta(
        arch=ARCH,
        classes=CLASSES,
        image_size=(32, 48),
        mean=mean,
        std=std,
        data_fingerprint="abc123",
        extra=json.dumps({"epoch": 3}),
    )
    path = tmp_path / "model.safetensors"
    save_checkpoint(path, model, meta)
    loaded, loaded_meta = load_checkpoint(path)
    assert loaded_meta == meta
    assert not loaded.training
    torch.testing.assert_close(loaded.logit_bias, model.logit_bias, rtol=0, atol=0)
    images = torch.rand(4, 3, 32, 48, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(loaded(images), model(images))
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_classifier_normalises_inside() -> None:
    backbone = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 2))
    model = Classifier(backbone, 2).eval()
    model.logit_bias.copy_(torch.tensor([0.5, -1.0]))
    images = torch.rand(3, 3, 4, 4)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    expected = backbone((images - mean) / std) + torch.tensor([0.5, -1.0])
    torch.testing.assert_close(model(images), expected)


def test_check_fits_refuses_other_classes() -> None:
    meta = CheckpointMeta(arch=ARCH, classes=("benign", "malignant"), image_size=(32, 32))
    check_fits(meta, ("benign", "malignant"))
    with pytest.raises(CheckpointError) as excinfo:
        check_fits(meta, CLASSES, path="runs/x/model.safetensors")
    message = str(excinfo.value)
    assert "runs/x/model.safetensors was trained on classes benign,malignant" in message
    assert ",".join(CLASSES) in message and "\n" not in message


def test_files_that_are_not_checkpoints(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist; train one"):
        load_checkpoint(tmp_path / "missing.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00\x01 this is not a safetensors file" * 20)
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_checkpoint(junk)
    other = tmp_path / "generator.safetensors"
    save_state(other, {"w": torch.zeros(2)}, {"kind": json.dumps("generator")})
    with pytest.raises(CheckpointError, match="not a dermadv classifier checkpoint"):
        load_checkpoint(other)


def test_truncated_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    save_checkpoint(path, build_classifier(ARCH, 7), CheckpointMeta(arch=ARCH, classes=CLASSES, image_size=(32, 32)))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_checkpoint(path)


BROKEN_METADATA = {
    "not JSON": ({"classes": '["akiec", "bcc'}, "'classes' is not JSON: '[\"akiec\", \"bcc'"),
    "no arch": ({"arch": None}, "no 'arch'"),
    "no image_size": ({"image_size": None}, "no 'image_size'"),
    "image_size a word": ({"image_size": '"large"'}, "'image_size' must be a list of 2 int; got \"large\""),
    "image_size of 3": ({"image_size": "[32, 32, 3]"}, "'image_size' must be a list of 2 int"),
    "image_size 0": ({"image_size": "[0, 32]"}, "'image_size' must be positive; got [0, 32]"),
    "classes empty": ({"classes": "[]"}, "'classes' is empty"),
    "classes numbers": ({"classes": "[1, 2]"}, "'classes' must be a list of any number of str"),
    "mean of 2": ({"mean": "[0.5, 0.5]"}, "'mean' must be a list of 3 float"),
    "arch a number": ({"arch": "18"}, "'arch' must be a non-empty string"),
    "arch empty": ({"arch": '""'}, "'arch' must be a non-empty string"),
}


@pytest.mark.parametrize("name", BROKEN_METADATA)
def test_broken_metadata_is_one_line_naming_the_file_and_key(tmp_path: Path, name: str) -> None:
    """A valid safetensors file whose metadata was edited (or written by another tool): refused, key named."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = tmp_path / "model.safetensors"
    save_checkpoint(path, build_classifier(ARCH, 7), CheckpointMeta(arch=ARCH, classes=CLASSES, image_size=(32, 32)))
    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata())
    edit, said = BROKEN_METADATA[name]
    meta = {k: v for k, v in {**meta, **edit}.items() if v is not None}
    broken = tmp_path / "broken.safetensors"
    save_file(load_file(str(path)), str(broken), metadata=meta)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(broken)
    message = str(info.value)
    assert message.startswith(f"checkpoint {broken} has broken metadata ({said}"), message
    assert "\n" not in message


def test_a_folder_is_not_a_checkpoint(tmp_path: Path) -> None:
    save_checkpoint(
        tmp_path / "model.safetensors",
        build_classifier(ARCH, 7),
        CheckpointMeta(arch=ARCH, classes=CLASSES, image_size=(32, 32)),
    )
    with pytest.raises(CheckpointError, match="is a folder; pass the .safetensors file in it") as info:
        load_checkpoint(tmp_path)
    assert str(tmp_path / "model.safetensors") in str(info.value)


def test_a_generator_with_broken_metadata_is_one_line(tmp_path: Path) -> None:
    from dermadv.attacks.generator import GeneratorSpec, PerturbationGenerator, load_generator, save_generator

    path = tmp_path / "generator.safetensors"
    save_generator(
        path, PerturbationGenerator(8 / 255, channels=8, res_blocks=1), GeneratorSpec(channels=8, res_blocks=1)
    )
    load_generator(path)  # the control
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata())
    for edit, said in (
        ({"image_size": "[64]"}, "'image_size' must be a list of 2 int"),
        ({"channels": "16"}, "size mismatch"),
        ({"eps": "{"}, "'eps' is not JSON"),
    ):
        save_file(load_file(str(path)), str(tmp_path / "broken.safetensors"), metadata={**meta, **edit})
        with pytest.raises(CheckpointError, match="has broken metadata") as info:
            load_generator(tmp_path / "broken.safetensors")
        assert said in str(info.value) and "\n" not in str(info.value)


def test_checkpoint_of_another_architecture(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    meta = CheckpointMeta(arch="resnet34", classes=CLASSES, image_size=(32, 32))
    save_checkpoint(path, build_classifier(ARCH, 7), meta)
    with pytest.raises(CheckpointError, match="does not match architecture resnet34"):
        load_checkpoint(path)


# ----------------------------------------------------------------------------------- backbone weights


@pytest.fixture(scope="module")
def imagenet_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    return torchvision.models.resnet18(weights=None).state_dict()


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_weights_from_a_path(tmp_path: Path, imagenet_state: dict[str, torch.Tensor], suffix: str) -> None:
    path = tmp_path / f"resnet18{suffix}"
    if suffix == ".pth":
        torch.save(imagenet_state, path)
    else:
        save_file({k: v.contiguous() for k, v in imagenet_state.items()}, str(path))
    model = build_backbone(ARCH, 7, weights=path)
    state = model.state_dict()
    assert state["fc.weight"].shape == (7, 512)
    for name, value in imagenet_state.items():
        if not name.startswith("fc."):
            assert torch.equal(state[name], value), name


def test_weights_that_do_not_fit(tmp_path: Path) -> None:
    path = tmp_path / "resnet34.pth"
    torch.save(torchvision.models.resnet34(weights=None).state_dict(), path)
    with pytest.raises(CheckpointError, match="do not fit resnet18"):
        build_backbone(ARCH, 7, weights=path)
    with pytest.raises(CheckpointError, match="does not exist"):
        build_backbone(ARCH, 7, weights=tmp_path / "none.pth")


def test_random_init_and_unknown_architecture() -> None:
    assert build_backbone(ARCH, 3, weights="none").fc.out_features == 3  # type: ignore[union-attr]
    assert build_backbone("densenet121", 3).classifier.out_features == 3  # type: ignore[union-attr]
    with pytest.raises(ConfigError, match="unknown architecture 'resnet19'"):
        build_backbone("resnet19", 7)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_imagenet_weights_offline_is_one_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    enum = torchvision.models.get_model_weights(ARCH).DEFAULT
    filename = enum.url.rsplit("/", 1)[-1]
    monkeypatch.setattr(enum.value, "url", f"http://127.0.0.1:{closed_port()}/{filename}")
    with pytest.raises(CheckpointError) as excinfo:
        build_backbone(ARCH, 7, weights="imagenet")
    message = str(excinfo.value)
    assert "\n" not in message
    assert f"not in {tmp_path / 'torch' / 'hub' / 'checkpoints'}" in message
    assert filename in message and "--weights PATH" in message and "--weights none" in message


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@contextlib.contextmanager
def serve(folder: Path) -> Iterator[str]:
    """A local HTTP server for ``folder``; yields its base URL."""
    handler = functools.partial(_QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_imagenet_weights_download_from_a_local_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The whole download path: fetch, hash check, cache, load; then the cache serves without the network."""
    arch = "shufflenet_v2_x0_5"  # small: 1.4 M parameters
    torch.manual_seed(2)
    state = torchvision.models.get_model(arch, weights=None).state_dict()
    served = tmp_path / "served"
    served.mkdir()
    tmp_file = served / "weights.pth"
    torch.save(state, tmp_file)
    digest = hashlib.sha256(tmp_file.read_bytes()).hexdigest()
    filename = f"{arch}-{digest[:10]}.pth"  # torch.hub checks the hash prefix in the name
    tmp_file.rename(served / filename)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    enum = torchvision.models.get_model_weights(arch).DEFAULT
    with serve(served) as base:
        monkeypatch.setattr(enum.value, "url", f"{base}/{filename}")
        model = build_backbone(arch, 7, weights="imagenet")
    assert (tmp_path / "torch" / "hub" / "checkpoints" / filename).is_file()
    got = model.state_dict()
    assert got["fc.weight"].shape[0] == 7
    for name, value in state.items():
        if not name.startswith("fc."):
            assert torch.equal(got[name], value), name
    # server gone: the cached file is used
    monkeypatch.setattr(enum.value, "url", f"http://127.0.0.1:{closed_port()}/{filename}")
    again = build_backbone(arch, 7, weights="imagenet")
    assert torch.equal(again.state_dict()["conv1.0.weight"], state["conv1.0.weight"])


def test_imagenet_weights_with_a_wrong_hash_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    arch = "shufflenet_v2_x0_5"
    served = tmp_path / "served"
    served.mkdir()
    filename = f"{arch}-0123456789.pth"
    torch.save(torchvision.models.get_model(arch, weights=None).state_dict(), served / filename)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    enum = torchvision.models.get_model_weights(arch).DEFAULT
    with serve(served) as base:
        monkeypatch.setattr(enum.value, "url", f"{base}/{filename}")
        with pytest.raises(CheckpointError, match="cannot be downloaded"):
            build_backbone(arch, 7, weights="imagenet")
    assert not (tmp_path / "torch" / "hub" / "checkpoints" / filename).exists()


def test_a_checkpoint_with_nan_weights_is_refused(tmp_path: Path) -> None:
    from dermadv.models.checkpoints import CheckpointMeta, load_checkpoint, save_checkpoint
    from dermadv.models.classifier import build_classifier

    model = build_classifier("resnet18", 7)
    with torch.no_grad():
        model.backbone.fc.weight[0, 0] = float("nan")
    path = tmp_path / "model.safetensors"
    save_checkpoint(path, model, CheckpointMeta(arch="resnet18", classes=CLASSES, image_size=(32, 32)))
    with pytest.raises(CheckpointError, match="NaN or infinite weights"):
        load_checkpoint(path)
