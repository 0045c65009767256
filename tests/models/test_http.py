"""HttpBackend against a real uvicorn server (dermadv.models.serve) running a tiny ONNX model."""

from __future__ import annotations

import logging
import math
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("onnxruntime")
pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")

import onnxruntime as ort  # noqa: E402
from fastapi import FastAPI, Request  # noqa: E402

from dermadv.errors import ConfigError, ModelError  # noqa: E402
from dermadv.models.card import HttpSettings  # noqa: E402
from dermadv.models.http import HttpBackend, dig, display_url, infer_url  # noqa: E402
from dermadv.models.serve import make_app, parse_faults, serve  # noqa: E402

NUM_CLASSES = 7
SECRET = "Bearer s3cret-token-do-not-print"


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, NUM_CLASSES),
    ).eval()
    path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    torch.onnx.export(
        net,
        (torch.rand(2, 3, 32, 32),),
        str(path),
        dynamo=False,
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
    )
    return path


@pytest.fixture(scope="module")
def reference(onnx_file: Path):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(onnx_file), options, providers=["CPUExecutionProvider"])
    return lambda images: session.run(None, {"input": images.astype(np.float32)})[0]


@pytest.fixture(scope="module")
def url(onnx_file: Path, serve_app) -> Iterator[str]:
    with serve_app(make_app(onnx_file, name="tiny")) as root:
        yield root


def stats(root: str, *, reset: bool = False) -> dict:
    if reset:
        httpx.post(f"{root}/stats/reset").raise_for_status()
    return httpx.get(f"{root}/stats").json()


def images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 3, 32, 32), dtype=np.float32)


def backend(root: str, **kw) -> HttpBackend:
    options = {"model_name": "tiny", "batch_size": 8, "concurrency": 3, "retries": 3, "timeout": 5.0}
    return HttpBackend(root, HttpSettings(**{**options, **kw}), num_classes=NUM_CLASSES, output="logits", backoff=0.01)


def one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message and message
    return message


def test_v2_scores_equal_onnxruntime_and_every_query_is_counted(url, reference):
    stats(url, reset=True)
    x = images(37)
    with backend(url) as model:
        scores = model(x)
        # at most 8 per request, in a multiple of the 3 connections: 6 requests of 7 (or fewer) images
        assert model.requests == 6 >= math.ceil(37 / 8)
        assert model.queries == 37 and model.retried == 0 and model.seconds > 0
    np.testing.assert_allclose(scores, reference(x), atol=1e-5)
    assert scores.shape == (37, NUM_CLASSES) and scores.dtype == np.float32
    assert stats(url) == {"requests": 6, "queries": 37, "auth_seen": False}


def test_a_url_ending_in_infer_is_used_as_is_and_uint8_inputs_are_rounded_pixels(url, reference):
    stats(url, reset=True)
    x = images(5) * 255
    with HttpBackend(
        f"{url}/v2/models/tiny/infer", HttpSettings(datatype="UINT8"), num_classes=NUM_CLASSES, output="logits"
    ) as model:
        scores = model(x)
    np.testing.assert_allclose(scores, reference(np.rint(x) / 255), atol=1e-4)  # the server scales 8-bit pixels
    assert stats(url)["queries"] == 5


def test_metadata_and_health_describe_the_onnx_graph(url):
    assert httpx.get(f"{url}/v2/health/ready").status_code == 200
    meta = httpx.get(f"{url}/v2/models/tiny").json()
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 3, 32, 32]}]
    assert meta["outputs"][0]["shape"] == [-1, NUM_CLASSES]


def test_plain_json_and_png_requests(url, reference):
    stats(url, reset=True)
    x = images(6, seed=1)
    with HttpBackend(
        f"{url}/predict",
        HttpSettings(protocol="plain", response_path="predictions", batch_size=4),
        num_classes=NUM_CLASSES,
        output="logits",
    ) as model:
        np.testing.assert_allclose(model(x), reference(x), atol=1e-5)
        assert model.requests == 2
    with HttpBackend(
        f"{url}/predict",
        HttpSettings(protocol="plain", request="image", response_path="predictions.0", concurrency=2),
        num_classes=NUM_CLASSES,
        output="logits",
    ) as model:
        scores = model(x)
        assert model.requests == 6 and model.queries == 6  # one PNG per request
    np.testing.assert_allclose(scores, reference(np.rint(x * 255) / 255), atol=1e-5)
    assert stats(url) == {"requests": 8, "queries": 12, "auth_seen": False}


def test_429_is_retried_after_retry_after(onnx_file, serve_app):
    with serve_app(make_app(onnx_file, name="tiny", fail="429:2")) as root, backend(root) as model:
        start = time.monotonic()
        model(images(3))
        assert time.monotonic() - start >= 0.2  # two answers of Retry-After: 0.1
        assert (model.retried, model.requests, model.queries) == (2, 3, 3)
        assert stats(root) == {"requests": 3, "queries": 3, "auth_seen": False}


def test_500_is_retried_and_too_many_are_refused_in_one_line(onnx_file, serve_app):
    with serve_app(make_app(onnx_file, name="tiny", fail="500:3")) as root:
        with backend(root, retries=1) as model, pytest.raises(ModelError) as exc:
            model(images(3))
        message = one_line(exc)
        assert f"{root}/v2/models/tiny/infer answered 500" in message and "after 1 retries" in message
        with backend(root, retries=2) as model:
            model(images(3))  # the third request fails, the fourth gets through
            assert model.retried == 1


def test_timeouts_are_retried_then_refused(onnx_file, serve_app):
    with serve_app(make_app(onnx_file, name="tiny", fail="slow:3:1")) as root:
        with backend(root, retries=1, timeout=0.3) as model, pytest.raises(ModelError) as exc:
            model(images(2))
        assert "did not answer within 0.3 s after 1 retries; raise http.timeout" in one_line(exc)
        with backend(root, retries=1, timeout=0.3) as model:
            model(images(2))
            assert model.retried == 1 and model.queries == 2


@pytest.mark.parametrize(
    ("fault", "words"), [("html", "text/html"), ("shape", "answered shape [2, 6] for 2 images"), ("nan", "NaN")]
)
def test_malformed_answers_are_refused_without_retrying(onnx_file, serve_app, fault, words):
    with serve_app(make_app(onnx_file, name="tiny", fail=f"{fault}:1")) as root:
        with backend(root) as model, pytest.raises(ModelError) as exc:
            model(images(2))
        assert words in one_line(exc)
        assert model.requests == 1 and model.retried == 0 and model.queries == 0


def test_failure_in_one_batch_stops_the_others(onnx_file, serve_app):
    with (
        serve_app(make_app(onnx_file, name="tiny", fail="html:1")) as root,
        backend(root, batch_size=2, concurrency=4) as model,
        pytest.raises(ModelError),
    ):
        model(images(20))


def test_auth_header_reaches_the_server_but_no_message_or_repr(url, monkeypatch, caplog):
    monkeypatch.setenv("DERMADV_TEST_TOKEN", SECRET)
    stats(url, reset=True)
    caplog.set_level(logging.DEBUG)
    settings = HttpSettings(model_name="tiny", headers_env={"Authorization": "DERMADV_TEST_TOKEN"}, retries=0)
    with HttpBackend(url, settings, num_classes=NUM_CLASSES, output="logits") as model:
        model(images(2))
        assert SECRET not in repr(model) and "DERMADV_TEST_TOKEN" in repr(model)
    assert stats(url)["auth_seen"] is True
    wrong = HttpSettings(model_name="nope", headers_env={"Authorization": "DERMADV_TEST_TOKEN"})
    with HttpBackend(url, wrong, num_classes=NUM_CLASSES, output="logits") as model, pytest.raises(ModelError) as exc:
        model(images(2))
    assert "answered 404" in one_line(exc) and "http.model_name" in str(exc.value)
    assert SECRET not in str(exc.value) and "s3cret" not in caplog.text


def test_credentials_and_query_never_printed(url):
    with HttpBackend(
        url.replace("http://", "http://user:pa55word@") + "/v2/models/nope/infer?key=k3y-value",
        HttpSettings(),
        num_classes=NUM_CLASSES,
        output="logits",
    ) as model:
        with pytest.raises(ModelError) as exc:
            model(images(1))
        text = one_line(exc) + repr(model)
    assert "pa55word" not in text and "k3y-value" not in text and "user" not in text


def test_unreachable_endpoint_is_refused_in_one_line(free_port):
    root = f"http://127.0.0.1:{free_port()}"
    with backend(root, retries=1) as model, pytest.raises(ModelError) as exc:
        model(images(1))
    assert "could not be reached" in one_line(exc) and model.retried == 1


def test_rate_limit_spaces_requests(url):
    with backend(url, batch_size=1, rate_limit=20.0) as model:
        start = time.monotonic()
        model(images(5))
        assert time.monotonic() - start >= 4 / 20


def test_label_output(url):
    stats(url, reset=True)
    with (
        HttpBackend(url, HttpSettings(model_name="tiny"), num_classes=NUM_CLASSES, output="label") as model,
        pytest.raises(ModelError) as exc,
    ):
        model(images(2))  # the endpoint returns 7 scores, not one label
    assert "14 labels for 2 images" in one_line(exc)


def test_urls_and_paths():
    assert infer_url("http://h:8000/", HttpSettings(model_name="m")) == "http://h:8000/v2/models/m/infer"
    assert infer_url("http://h/v2/models/m", HttpSettings()) == "http://h/v2/models/m/infer"
    assert infer_url("https://h/x/infer?k=1", HttpSettings()) == "https://h/x/infer?k=1"
    with pytest.raises(ConfigError, match="model_name"):
        infer_url("http://h:8000", HttpSettings())
    with pytest.raises(ConfigError, match="http://"):
        infer_url("ftp://h", HttpSettings())
    assert display_url("https://u:p@h:81/a?k=v#f") == "https://h:81/a"
    assert dig({"outputs": [{"data": [1, 2]}]}, "outputs.0.data") == [1, 2]
    with pytest.raises(KeyError, match="found: outputs"):
        dig({"outputs": []}, "predictions")


def test_faults_parse_and_bad_ports_are_one_line(onnx_file):
    assert [f.kind for f in parse_faults("429:2,slow:1:3")] == ["429", "429", "slow"]
    assert parse_faults("slow:1:3")[0].arg == 3.0
    with pytest.raises(ConfigError, match="kind:count"):
        parse_faults("teapot:1")
    for port in (0, 70000):
        with pytest.raises(ConfigError, match="1..65535"):
            serve(onnx_file, port=port)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        with pytest.raises(ConfigError, match="already in use") as exc:
            serve(onnx_file, port=busy.getsockname()[1])
        one_line(exc)
    with pytest.raises(ModelError, match="does not exist"):
        make_app(onnx_file.with_name("missing.onnx"))


@pytest.mark.parametrize(
    ("n", "batch_size", "concurrency", "step"),
    [(288, 64, 2, 48), (256, 64, 2, 64), (10, 64, 2, 64), (1, 64, 2, 64), (65, 64, 1, 33), (300, 64, 4, 38)],
)
def test_requests_fill_every_connection_in_each_round(n: int, batch_size: int, concurrency: int, step: int) -> None:
    from dermadv.models.http import balanced_step

    got = balanced_step(n, batch_size, concurrency)
    assert got == step
    requests = -(-n // got)
    assert got <= batch_size and (requests <= concurrency or requests % concurrency == 0)


# --- endpoints that name classes instead of indexing them ---

NAMES = ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")


def named_app(reference):
    """A plain JSON endpoint answering as hand-written and Hugging Face servers do: ``/hf`` a list per image of
    ``{"label", "score"}`` sorted by score (``?top_k=``), ``/dict`` name -> score per image, ``/label`` names."""
    app = FastAPI()

    def softmax(batch: list) -> np.ndarray:
        logits = reference(np.asarray(batch, dtype=np.float32)).astype(np.float64)
        e = np.exp(logits - logits.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    @app.post("/hf")
    async def hf(request: Request, top_k: int = NUM_CLASSES) -> list:
        rows = softmax(await request.json())
        ranked = [sorted(zip(NAMES, row.tolist(), strict=True), key=lambda p: -p[1])[:top_k] for row in rows]
        return [[{"label": name, "score": score} for name, score in row] for row in ranked]

    @app.post("/dict")
    async def as_dict(request: Request) -> list:
        return [dict(zip(NAMES, row.tolist(), strict=True)) for row in softmax(await request.json())]

    @app.post("/wrapped")
    async def wrapped(request: Request) -> dict:
        return {"predictions": softmax(await request.json()).tolist()}

    @app.post("/label")
    async def label(request: Request) -> list:
        return [NAMES[i] for i in softmax(await request.json()).argmax(1)]

    return app


def named(root: str, route: str, output: str = "probabilities", **kw) -> HttpBackend:
    settings = HttpSettings(protocol="plain", batch_size=4, concurrency=2, **kw)
    return HttpBackend(f"{root}/{route}", settings, num_classes=NUM_CLASSES, output=output, classes=NAMES)


def test_answers_that_name_classes_are_put_in_the_cards_order(reference, serve_app):
    x = images(10, seed=3)
    logits = reference(x).astype(np.float64)
    probabilities = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    with serve_app(named_app(reference)) as root:
        for route in ("hf", "dict"):
            with named(root, route) as model:
                np.testing.assert_allclose(model(x), probabilities, atol=1e-6, err_msg=route)
                np.testing.assert_allclose(model(x[:1]), probabilities[:1], atol=1e-6, err_msg=route)  # one image
        with named(root, "label", output="label") as model:
            assert model(x).tolist() == logits.argmax(1).tolist()
        with named(root, "hf?top_k=5") as model, pytest.raises(ModelError) as exc:
            model(x)
        assert "scores for 5 of 7 classes" in one_line(exc) and "top_k=7" in one_line(exc)
        for n in (1, 3):  # a wrapper is not an answer by class name, even for one image: set http.response_path
            with named(root, "wrapped") as model, pytest.raises(ModelError) as exc:
                model(x[:n])
            assert "set http.response_path" in one_line(exc), n
        with named(root, "wrapped", response_path="predictions") as model:
            np.testing.assert_allclose(model(x[:1]), probabilities[:1], atol=1e-6)
        renamed = HttpBackend(
            f"{root}/dict", HttpSettings(protocol="plain"), num_classes=NUM_CLASSES, output="probabilities",
            classes=("AKIEC", *NAMES[1:]),
        )  # fmt: skip
        with renamed as model, pytest.raises(ModelError) as exc:
            model(x)
        assert "class 'akiec', not one of the card's classes" in one_line(exc)
