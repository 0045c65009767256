"""Any model is a model: a classifier dermadv did not train, through every source dermadv loads.

The model comes from ``benchmarks/third_party_classifier.py`` run as a third party would: a torchvision ResNet-18
trained on its own split, fed BGR images normalised with ImageNet mean/std outside the network, answering in the
ISIC 2018 class order. Its card says so; these tests check that dermadv honours it everywhere.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch import nn

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx2torch")

from dermadv.attacks.registry import create_attack  # noqa: E402
from dermadv.data.classes import CLASSES  # noqa: E402
from dermadv.data.load import prepare, to_float  # noqa: E402
from dermadv.errors import ConfigError, ModelError  # noqa: E402
from dermadv.models.sources import SourceModel, label_map, load_model  # noqa: E402
from dermadv.pipeline.attack import model_target  # noqa: E402
from dermadv.pipeline.models import ModelSpec  # noqa: E402

ISIC = ("mel", "nv", "bcc", "akiec", "bkl", "df", "vasc")
MEAN_BGR, STD_BGR = (0.406, 0.456, 0.485), (0.225, 0.224, 0.229)
BINARY = {"benign": ["bkl", "df", "nv", "vasc"], "malignant": ["akiec", "bcc", "mel"]}


def one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert message and "\n" not in message, message
    return message


def subprocess_env(cache: Path) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "DERMADV_CACHE": str(cache)}


@pytest.fixture(scope="module")
def images(synthetic_root: Path, session_cache: Path) -> torch.Tensor:
    """50 synthetic images at the model's 32×32, in [0, 1]."""
    prep = prepare(str(synthetic_root), image_size=(32, 32), progress=False)
    return to_float(torch.from_numpy(np.array(prep.images[:50])))


def card_of(folder: Path, **changes: object) -> dict:
    return {**yaml.safe_load((folder / "model.card.yaml").read_text()), **changes}


def write_card(path: Path, card: dict) -> Path:
    path.write_text(yaml.safe_dump(card, sort_keys=False))
    return path


def manual_logits(folder: Path, images: torch.Tensor) -> torch.Tensor:
    """The TorchScript model run by hand as its authors do (BGR, ImageNet mean/std), columns in ISIC order."""
    net = torch.jit.load(str(folder / "model.ts")).eval()
    x = images.flip(1)
    x = (x - torch.tensor(MEAN_BGR).view(1, 3, 1, 1)) / torch.tensor(STD_BGR).view(1, 3, 1, 1)
    with torch.no_grad():
        return net(x)


def native(folder: Path, **kw: object) -> SourceModel:
    return load_model("torchvision:resnet18", weights=folder / "model_state.pt", card=folder / "model.card.yaml", **kw)


# --- a real uvicorn server on 127.0.0.1, as in tests/models/test_http.py ---


def server_stats(root: str) -> dict:
    import httpx

    return httpx.get(f"{root}/stats").json()


# --- one model, five sources ---


def test_every_source_gives_the_same_clean_predictions(
    third_party: Path, images: torch.Tensor, tmp_path: Path, serve_app
):
    http_card = write_card(
        tmp_path / "http.yaml", card_of(third_party, http={"model_name": "third-party", "batch_size": 16})
    )
    from dermadv.models.serve import make_app

    with serve_app(make_app(third_party / "model.onnx", name="third-party")) as root:
        sources = {
            "torchvision": native(third_party),
            "torchscript": load_model(third_party / "model.ts"),  # the card beside it
            "onnx": load_model(third_party / "model.onnx"),
            "onnx black-box": load_model(third_party / "model.onnx", threat_model="score-based"),
            "http": load_model(root, card=http_card),
        }
        with torch.no_grad():
            scores = {name: model(images) for name, model in sources.items()}
        sources["http"].backend.close()
        assert server_stats(root)["queries"] == len(images) == sources["http"].counter.queries
    threat = {name: model.info.threat_model for name, model in sources.items()}
    assert threat == {
        "torchvision": "white-box",
        "torchscript": "white-box",
        "onnx": "white-box",  # through onnx2torch
        "onnx black-box": "score-based",
        "http": "score-based",
    }
    assert {model.info.classes for model in sources.values()} == {CLASSES}
    reference = scores["torchvision"]
    assert len(set(reference.argmax(1).tolist())) >= 3  # agreement on a constant answer would say little
    for name, s in scores.items():
        assert s.shape == (len(images), len(CLASSES)), name
        assert torch.equal(s.argmax(1), reference.argmax(1)), name
    for name in ("torchscript", "onnx"):
        torch.testing.assert_close(scores[name], reference, atol=1e-4, rtol=0, msg=name)
    torch.testing.assert_close(scores["http"], scores["onnx black-box"], atol=1e-5, rtol=0)  # one runtime


def test_pgd_is_the_same_through_the_module_torchscript_and_onnx(third_party: Path, images: torch.Tensor):
    models = {
        "torchvision": native(third_party),
        "torchscript": load_model(third_party / "model.ts"),
        "onnx": load_model(third_party / "model.onnx"),
    }
    assert models["onnx"].info.kind == "onnx" and models["onnx"].gradients
    target = model_target(models["torchvision"].info, "nv")
    assert target == CLASSES.index("nv")
    pgd = create_attack("pgd", eps=8 / 255, steps=10, seed=0)  # a seeded random start: the same for every form
    results = {name: pgd(model, images, target=target) for name, model in models.items()}
    reference = results["torchvision"]
    assert float((reference.adv_images - images).abs().max()) == pytest.approx(8 / 255, abs=1e-6)
    assert bool(reference.success.any())
    for name in ("torchscript", "onnx"):
        torch.testing.assert_close(results[name].adv_images, reference.adv_images, atol=1e-4, rtol=0, msg=name)
        assert torch.equal(results[name].success, reference.success), name


# --- state dicts, files and URLs dermadv refuses or accepts ---


def test_a_state_dict_with_module_prefix_loads(third_party: Path, images: torch.Tensor, tmp_path: Path):
    state = torch.load(third_party / "model_state.pt", weights_only=True)
    torch.save({f"module.{k}": v for k, v in state.items()}, tmp_path / "dp.pt")  # as nn.DataParallel saves
    prefixed = load_model("torchvision:resnet18", weights=tmp_path / "dp.pt", card=third_party / "model.card.yaml")
    with torch.no_grad():
        torch.testing.assert_close(prefixed(images), native(third_party)(images), atol=0, rtol=0)


def test_a_head_of_the_wrong_size_is_one_model_error(third_party: Path, tmp_path: Path):
    binary = write_card(tmp_path / "binary.yaml", card_of(third_party, classes=list(BINARY), mapping=BINARY))
    with pytest.raises(ModelError) as exc:
        load_model("torchvision:resnet18", weights=third_party / "model_state.pt", card=binary)
    message = one_line(exc)
    assert "does not fit torchvision:resnet18" in message and "2 classes" in message
    assert "[7, 512]" in message and "set `classes` in the card" in message


def test_a_head_of_the_wrong_size_names_the_cards_classes(third_party: Path, tmp_path: Path):
    binary = write_card(tmp_path / "binary.yaml", card_of(third_party, classes=list(BINARY), mapping=BINARY))
    with pytest.raises(ModelError) as exc:
        load_model("torchvision:resnet18", weights=third_party / "model_state.pt", card=binary)
    assert "benign" in one_line(exc) and "malignant" in str(exc.value)


def test_missing_weights_are_refused(third_party: Path, tmp_path: Path):
    with pytest.raises(ConfigError) as exc:
        load_model("torchvision:resnet18", card=third_party / "model.card.yaml")
    assert "needs --weights FILE" in one_line(exc)
    with pytest.raises(ModelError) as exc:
        load_model("torchvision:resnet18", weights=tmp_path / "absent.pt", card=third_party / "model.card.yaml")
    assert f"--weights {tmp_path / 'absent.pt'} does not exist" in one_line(exc)


def test_a_state_dict_given_as_the_model_suggests_an_architecture(third_party: Path):
    path = third_party / "model_state.pt"
    with pytest.raises(ModelError) as exc:
        load_model(path)
    message = one_line(exc)
    assert (
        "is not a TorchScript file" in message and f"torchvision:<arch> (or timm:, python:) --weights {path}" in message
    )


def test_a_folder_is_refused(third_party: Path):
    with pytest.raises(ModelError) as exc:
        load_model(third_party)
    assert "is a folder; pass the model file in it" in one_line(exc)


def test_url_credentials_and_query_never_reach_the_recorded_spec(third_party: Path, tmp_path: Path):
    card = write_card(tmp_path / "http.yaml", card_of(third_party, http={"model_name": "m"}))
    url = "http://someone:pa55word@127.0.0.1:9/v2/models/m/infer?token=s3cret-t0ken"
    model = load_model(url, card=card)  # nothing is sent before the first query
    assert model.info.spec == "http://127.0.0.1:9/v2/models/m/infer"
    recorded = json.dumps(model.info.to_dict()) + json.dumps(ModelSpec(url).config()) + repr(model)
    model.backend.close()
    for secret in ("someone", "pa55word", "s3cret-t0ken", "token="):
        assert secret not in recorded


def test_an_ipv6_url_is_recorded_as_a_valid_url(third_party: Path, tmp_path: Path):
    card = write_card(tmp_path / "http.yaml", card_of(third_party, http={"model_name": "m"}))
    model = load_model("http://user:pw@[::1]:9/v2/models/m/infer?token=t0ken", card=card)
    model.backend.close()
    assert model.info.spec == "http://[::1]:9/v2/models/m/infer"


# --- the card ---


def test_isic_class_order_is_put_in_dermadvs_order(third_party: Path, images: torch.Tensor):
    model = load_model(third_party / "model.ts")
    assert model.info.classes == CLASSES and model.info.card.classes == ISIC
    expected = manual_logits(third_party, images)[:, [ISIC.index(c) for c in CLASSES]]
    with torch.no_grad():
        torch.testing.assert_close(model(images), expected, atol=1e-5, rtol=0)


def test_probabilities_output_gives_log_probabilities(third_party: Path, images: torch.Tensor, tmp_path: Path):
    net = nn.Sequential(torch.jit.load(str(third_party / "model.ts")), nn.Softmax(dim=1)).eval()
    path = tmp_path / "probs.ts"
    torch.jit.trace(net, torch.zeros(1, 3, 32, 32)).save(str(path))
    write_card(tmp_path / "probs.ts.card.yaml", card_of(third_party, output="probabilities"))
    model = load_model(path)
    assert model.info.threat_model == "white-box"
    expected = torch.log_softmax(manual_logits(third_party, images), 1)[:, [ISIC.index(c) for c in CLASSES]]
    with torch.no_grad():
        scores = model(images)
    torch.testing.assert_close(scores, expected, atol=1e-4, rtol=0)
    torch.testing.assert_close(scores.exp().sum(1), torch.ones(len(images)), atol=1e-5, rtol=0)


class Binary(nn.Module):
    """The third-party model made binary: benign and malignant scores as log-sum-exp over their ISIC logits."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.benign = [ISIC.index(c) for c in BINARY["benign"]]
        self.malignant = [ISIC.index(c) for c in BINARY["malignant"]]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.net(x)
        return torch.stack([logits[:, self.benign].logsumexp(1), logits[:, self.malignant].logsumexp(1)], 1)


def test_a_grouped_binary_card(third_party: Path, images: torch.Tensor, tmp_path: Path):
    path = tmp_path / "binary.ts"
    torch.jit.trace(Binary(torch.jit.load(str(third_party / "model.ts"))).eval(), torch.zeros(1, 3, 32, 32)).save(
        str(path)
    )
    card = write_card(tmp_path / "binary.yaml", card_of(third_party, classes=list(BINARY), mapping=BINARY))
    model = load_model(path, card=card)
    assert model.info.classes == ("benign", "malignant")
    to_model = label_map(model.info, CLASSES)
    assert to_model[CLASSES.index("mel")] == 1 and to_model[CLASSES.index("nv")] == 0
    assert [("benign", "malignant")[i] for i in to_model] == [
        "malignant" if c in BINARY["malignant"] else "benign" for c in CLASSES
    ]
    assert model_target(model.info, "nv") == 0
    logits = manual_logits(third_party, images)
    malignant = logits[:, [ISIC.index(c) for c in BINARY["malignant"]]].logsumexp(1)
    benign = logits[:, [ISIC.index(c) for c in BINARY["benign"]]].logsumexp(1)
    with torch.no_grad():
        torch.testing.assert_close(model(images), torch.stack([benign, malignant], 1), atol=1e-4, rtol=0)


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"colour_order": "BGR"}, "unknown key(s) colour_order"),
        (
            {"classes": list(BINARY), "mapping": {**BINARY, "malignant": ["akiec", "bcc", "mel", "nv"]}},
            "nv is mapped by both 'benign' and 'malignant'",
        ),
        (
            {"classes": list(BINARY), "mapping": {**BINARY, "benign": ["bkl", "df", "nv"]}},
            "no model class covers vasc",
        ),
    ],
    ids=["unknown-key", "code-mapped-twice", "code-missing"],
)
def test_an_invalid_card_is_one_config_error(third_party: Path, tmp_path: Path, change: dict, words: str):
    card = write_card(tmp_path / "bad.yaml", card_of(third_party, **change))
    with pytest.raises(ConfigError) as exc:
        load_model(third_party / "model.ts", card=card)
    assert words in one_line(exc)


# --- the command line, in a subprocess ---


def dermadv(*args: object, cache: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dermadv", *map(str, args)],
        capture_output=True,
        text=True,
        env=subprocess_env(cache),
        timeout=300,
    )


def test_model_check_names_the_channel_order_of_a_wrong_card(
    third_party: Path, synthetic_root: Path, session_cache: Path, tmp_path: Path
):
    model = third_party / "model.ts"
    # the whole set (a class-stratified 97 images) rather than its 24 test images: a steadier balanced accuracy
    right = dermadv("model", "check", model, "--data", synthetic_root, "--split", "all", cache=session_cache)
    assert right.returncode == 0, right.stderr[-2000:]
    assert right.stdout.splitlines()[-1].startswith("ok: balanced accuracy")
    wrong_card = write_card(tmp_path / "wrong.yaml", card_of(third_party, channel_order="RGB"))
    wrong = dermadv(
        "model", "check", model, "--model-card", wrong_card, "--data", synthetic_root, "--split", "all",
        cache=session_cache,
    )  # fmt: skip
    assert wrong.returncode == 0, wrong.stderr[-2000:]
    verdict = wrong.stdout.splitlines()[-1]
    assert verdict.startswith("near chance:"), wrong.stdout
    assert "likeliest preprocessing mismatch: channel order (BGR/RGB swapped)" in verdict


def test_a_black_box_model_refuses_a_white_box_attack(
    third_party: Path, synthetic_root: Path, session_cache: Path, tmp_path: Path
):
    proc = dermadv(
        "attack", "run", "--model", third_party / "model.onnx", "--threat-model", "score-based", "--method", "pgd",
        "--data", synthetic_root, "--out", tmp_path / "attack", cache=session_cache,
    )  # fmt: skip
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "white-box" in errors[0] and "--method square" in errors[0], proc.stderr
    assert not (tmp_path / "attack").exists()
