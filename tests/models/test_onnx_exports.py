"""Model files as others export them. ONNX: a batch size fixed at export (``torch.onnx.export`` without
``dynamic_axes``), uint8 pixels as input, more than one input, a label output before the scores. TorchScript:
answers that are a tuple or a dict. Each is a real file written by torch's exporter (run by onnxruntime and
converted by onnx2torch), compared with the PyTorch module it came from."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
import yaml
from torch import nn

pytestmark = pytest.mark.filterwarnings(
    "ignore::UserWarning", "ignore::DeprecationWarning", "ignore:`torch.jit:FutureWarning"
)

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx2torch")

from dermadv.errors import ConfigError, ModelError  # noqa: E402
from dermadv.models.onnx_session import OnnxSession, padded_slices  # noqa: E402
from dermadv.models.sources import load_model, verify_onnx  # noqa: E402

SIZE = 32


@pytest.fixture(scope="module")
def net() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=7).eval()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    """11 images in [0, 1] on the 8-bit grid: not a multiple of the fixed batch sizes below."""
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 256, (11, 3, SIZE, SIZE), generator=g).float() / 255


def export(model: nn.Module, example: torch.Tensor, path: Path, *, dynamic: bool = False) -> Path:
    names = [f"input{i}" for i in range(len(example))] if isinstance(example, tuple) else ["input"]
    axes = {"input": {0: "batch"}, "logits": {0: "batch"}} if dynamic else None
    torch.onnx.export(
        model, example if isinstance(example, tuple) else (example,), str(path), input_names=names,
        output_names=["logits"], dynamic_axes=axes, opset_version=17, dynamo=False, do_constant_folding=False,
    )  # fmt: skip
    return path


def card(path: Path, **fields: object) -> Path:
    path.write_text(yaml.safe_dump({"input_size": [SIZE, SIZE], **fields}))
    return path


def assert_same_gradients(
    model: nn.Module, net: nn.Module, images: torch.Tensor, *, column: int, atol: float, rtol: float
) -> None:
    """The gradient of one class's score with respect to the images, through ``model`` and through ``net``."""
    grads = []
    for m in (model, net):
        x = images.clone().requires_grad_(True)
        m(x)[:, column].sum().backward()
        assert x.grad is not None and bool(x.grad.abs().sum() > 0)
        grads.append(x.grad)
    torch.testing.assert_close(grads[0], grads[1], atol=atol, rtol=rtol)


@pytest.mark.parametrize("batch", [1, 4])
def test_a_batch_fixed_at_export_is_run_in_slices(
    net: nn.Module, images: torch.Tensor, tmp_path: Path, batch: int
) -> None:
    path = export(net, torch.rand(batch, 3, SIZE, SIZE), tmp_path / "fixed.onnx")
    assert OnnxSession(path, threads=1).fixed_batch == batch
    white, black = load_model(path), load_model(path, threat_model="score-based")
    assert white.info.threat_model == "white-box" and black.info.threat_model == "score-based"
    checked, diff = verify_onnx(white, images)  # what an audit does before it attacks
    assert checked is white and diff is not None and diff <= 1e-4
    with torch.no_grad():
        reference = net(images)
        torch.testing.assert_close(white(images), reference, atol=1e-4, rtol=0)
        torch.testing.assert_close(black(images), reference, atol=1e-4, rtol=0)

    # gradients reach the real images through the slices, as through the module itself
    assert_same_gradients(white, net, images, column=3, atol=1e-4, rtol=1e-3)


def test_padded_slices_cover_every_row_once() -> None:
    x = np.arange(10)
    parts = list(padded_slices(x, 4, np.concatenate))
    assert [k for _, k in parts] == [4, 4, 2]
    assert all(len(part) == 4 for part, _ in parts)
    assert parts[-1][0].tolist() == [8, 9, 9, 9]
    assert np.concatenate([part[:k] for part, k in parts]).tolist() == x.tolist()


class Uint8Input(nn.Module):
    """Takes 8-bit pixels N×3×H×W and normalises them itself, as many deployed exports do."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.float() / 255)


def test_an_export_that_takes_uint8_pixels(net: nn.Module, images: torch.Tensor, tmp_path: Path) -> None:
    pixels = torch.randint(0, 256, (2, 3, SIZE, SIZE), dtype=torch.uint8)
    path = export(Uint8Input(net).eval(), pixels, tmp_path / "u8.onnx", dynamic=True)
    assert OnnxSession(path, threads=1).datatype == "UINT8"
    with pytest.raises(ConfigError, match="value_range: 255") as exc:
        load_model(path, threat_model="score-based")  # the default card sends [0, 1] floats
    assert "\n" not in str(exc.value)
    model = load_model(path, card=card(tmp_path / "u8.yaml", value_range=255), threat_model="score-based")
    with torch.no_grad():
        torch.testing.assert_close(model(images), net(images), atol=1e-4, rtol=0)
        off_grid = model((images + 0.3 / 255).clamp(0, 1))  # a black-box model sees what an 8-bit file holds
        torch.testing.assert_close(off_grid, model(images), atol=0, rtol=0)


class TwoInputs(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor, age: torch.Tensor) -> torch.Tensor:
        return self.net(x) + age


def test_a_model_of_two_inputs_is_one_model_error(net: nn.Module, tmp_path: Path) -> None:
    path = export(TwoInputs(net).eval(), (torch.rand(1, 3, SIZE, SIZE), torch.zeros(1, 1)), tmp_path / "two.onnx")
    with pytest.raises(ModelError, match="takes 2 inputs") as exc:
        load_model(path)
    assert "\n" not in str(exc.value) and "only input" in str(exc.value)


def test_a_fixed_batch_export_served_over_http(net: nn.Module, images: torch.Tensor, tmp_path: Path, serve_app):
    from dermadv.models.serve import make_app

    path = export(net, torch.rand(1, 3, SIZE, SIZE), tmp_path / "fixed.onnx")
    http_card = card(tmp_path / "http.yaml", http={"model_name": "fixed", "batch_size": 8})
    with serve_app(make_app(path, name="fixed")) as root:
        remote = load_model(root, card=http_card)
        with torch.no_grad():
            scores = remote(images)
        remote.backend.close()
    with torch.no_grad():
        torch.testing.assert_close(scores, net(images), atol=1e-4, rtol=0)


class LabelAndLogits(nn.Module):
    """Answers the predicted label first and the scores second, as some deployed exports do."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.net(x)
        return logits.argmax(1), logits


def test_the_scores_output_of_a_graph_with_several(net: nn.Module, images: torch.Tensor, tmp_path: Path) -> None:
    path = tmp_path / "two-outputs.onnx"
    torch.onnx.export(
        LabelAndLogits(net).eval(), (torch.rand(1, 3, SIZE, SIZE),), str(path), input_names=["input"],
        output_names=["label", "scores"], dynamic_axes={"input": {0: "batch"}}, opset_version=17, dynamo=False,
    )  # fmt: skip
    assert OnnxSession(path, threads=1).scores_at == 1  # the first float output
    white, black = load_model(path), load_model(path, threat_model="score-based")
    assert white.gradients
    with torch.no_grad():
        reference = net(images)
        torch.testing.assert_close(white(images), reference, atol=1e-4, rtol=0)
        torch.testing.assert_close(black(images), reference, atol=1e-4, rtol=0)


class Answers(nn.Module):
    """The same scores in the shapes models answer in: a tuple (scores, features) or a dict."""

    def __init__(self, net: nn.Module, shape: str) -> None:
        super().__init__()
        self.net = net
        self.shape = shape

    def forward(self, x: torch.Tensor) -> object:
        logits = self.net(x)
        if self.shape == "tuple":
            return logits, x.mean((1, 2, 3))
        if self.shape == "dict":
            return {"logits": logits, "features": x.mean((1, 2, 3))}
        return {"probs": logits}


@pytest.mark.parametrize("shape", ["tuple", "dict", "dict of one"])
def test_torchscript_models_that_answer_a_tuple_or_a_dict(
    net: nn.Module, images: torch.Tensor, tmp_path: Path, shape: str
) -> None:
    path = tmp_path / "answers.ts"
    torch.jit.trace(Answers(net, shape).eval(), torch.rand(1, 3, SIZE, SIZE), strict=False).save(str(path))
    model = load_model(path, card=card(tmp_path / "card.yaml"))
    with torch.no_grad():
        torch.testing.assert_close(model(images), net(images), atol=1e-5, rtol=0)


def test_a_dict_answer_without_logits_is_one_model_error(net: nn.Module, images: torch.Tensor, tmp_path: Path):
    class TwoHeads(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"a": self.net(x), "b": self.net(x.flip(1))}

    path = tmp_path / "heads.ts"
    torch.jit.trace(TwoHeads().eval(), torch.rand(1, 3, SIZE, SIZE), strict=False).save(str(path))
    model = load_model(path, card=card(tmp_path / "card.yaml"))
    with pytest.raises(ModelError, match="none named 'logits'") as exc, torch.no_grad():
        model(images)
    assert "\n" not in str(exc.value)


ISIC2019 = ("MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC")


def test_a_model_with_a_class_ham10000_lacks(images: torch.Tensor, tmp_path: Path) -> None:
    """ISIC 2019's eight classes: SCC maps to no HAM10000 code, so its column is kept and never a right answer."""
    from dermadv.data.classes import CLASSES
    from dermadv.models.sources import label_map

    torch.manual_seed(0)
    net8 = torchvision.models.resnet18(num_classes=8).eval()
    with torch.no_grad():
        net8.fc.bias[7] = 100.0  # it calls everything SCC
    path = export(net8, torch.rand(1, 3, SIZE, SIZE), tmp_path / "isic2019.onnx", dynamic=True)
    codes = ("mel", "nv", "bcc", "akiec", "bkl", "df", "vasc")
    mapping = {name: [code] for name, code in zip(ISIC2019[:7], codes, strict=True)}
    model = load_model(path, card=card(tmp_path / "card.yaml", classes=list(ISIC2019), mapping={**mapping, "SCC": []}))
    assert model.info.classes == ISIC2019
    columns = label_map(model.info, CLASSES)
    assert [ISIC2019[i] for i in columns] == ["AK", "BCC", "BKL", "DF", "MEL", "NV", "VASC"]
    with torch.no_grad():
        scores = model(images)
    assert scores.shape == (len(images), 8) and set(scores.argmax(1).tolist()) == {7}
    assert 7 not in columns.tolist()  # an SCC answer is wrong for every HAM10000 image


@pytest.mark.parametrize("dynamic", [False, True], ids=["batch fixed at export", "dynamic batch"])
def test_a_torch_export_program(net: nn.Module, images: torch.Tensor, tmp_path: Path, dynamic: bool) -> None:
    from dermadv.attacks.registry import create_attack

    shapes = ({0: torch.export.Dim("batch", min=1, max=1024)},) if dynamic else None
    program = torch.export.export(net, (torch.rand(2, 3, SIZE, SIZE),), dynamic_shapes=shapes)
    path = tmp_path / "model.pt2"
    torch.export.save(program, str(path))
    model = load_model(path)  # the size read from the program: no card
    assert model.info.kind == "torch.export" and model.info.image_size == (SIZE, SIZE)
    assert model.info.threat_model == "white-box"
    with torch.no_grad():
        torch.testing.assert_close(model(images), net(images), atol=1e-5, rtol=0)
    assert_same_gradients(model, net, images, column=5, atol=1e-5, rtol=1e-4)
    # an attack runs through it as through the module
    pgd = create_attack("pgd", eps=8 / 255, steps=3, seed=0)
    ours, theirs = pgd(model, images, target=5), pgd(net, images, target=5)
    torch.testing.assert_close(ours.adv_images, theirs.adv_images, atol=1e-4, rtol=0)


def test_a_pickled_model_is_refused_with_the_ways_to_save_it(net: nn.Module, tmp_path: Path) -> None:
    torch.save(net, tmp_path / "whole.pt")  # the whole module, pickled: loading it would run code
    with pytest.raises(ModelError, match=r"pickled model \(torch.save\(model\)\)") as exc:
        load_model(tmp_path / "whole.pt")
    assert "\n" not in str(exc.value) and "state_dict()" in str(exc.value) and ".pt2" in str(exc.value)
    torch.save({"model": net.state_dict()}, tmp_path / "state.pth")  # a state dict is named as one
    with pytest.raises(ModelError, match="if it is a state dict, pass --model torchvision:<arch>"):
        load_model(tmp_path / "state.pth")


def test_a_float16_export_is_white_box_within_its_precision(net: nn.Module, images: torch.Tensor, tmp_path: Path):
    path = export(_Half(net).eval(), torch.rand(2, 3, SIZE, SIZE).half(), tmp_path / "fp16.onnx", dynamic=True)
    assert OnnxSession(path, threads=1).datatype == "FP16"
    model, diff = verify_onnx(load_model(path), images)
    assert model.info.threat_model == "white-box" and diff is not None and 0 < diff <= 1e-2
    with torch.no_grad():
        scores = model(images)
    assert scores.dtype == torch.float32
    torch.testing.assert_close(scores, net(images), atol=5e-2, rtol=0)  # float16 against float32
    assert_same_gradients(model, net, images, column=3, atol=5e-3, rtol=5e-2)


class _Half(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = copy.deepcopy(net).half()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def test_no_images_through_a_fixed_batch(net: nn.Module, images: torch.Tensor, tmp_path: Path) -> None:
    path = export(net, torch.rand(4, 3, SIZE, SIZE), tmp_path / "fixed.onnx")
    for model in (load_model(path), load_model(path, threat_model="score-based")):
        with torch.no_grad():
            assert model(images[:0]).shape == (0, 7)


def test_a_uint8_export_served_over_http_takes_uint8_and_float_requests(
    net: nn.Module, images: torch.Tensor, tmp_path: Path, serve_app
) -> None:
    from dermadv.models.serve import make_app

    path = export(Uint8Input(net).eval(), torch.randint(0, 256, (2, 3, SIZE, SIZE), dtype=torch.uint8),
                  tmp_path / "u8.onnx", dynamic=True)  # fmt: skip
    with torch.no_grad():
        reference = net(images)
    with serve_app(make_app(path, name="u8")) as root:
        for datatype in ("UINT8", "FP32"):
            http = {"model_name": "u8", "datatype": datatype, "batch_size": 8}
            remote = load_model(root, card=card(tmp_path / f"{datatype}.yaml", value_range=255, http=http))
            with torch.no_grad():
                scores = remote(images)
            remote.backend.close()
            torch.testing.assert_close(scores, reference, atol=1e-4, rtol=0, msg=datatype)
