"""The benchmark scripts: the device script end to end on CPU with tiny settings (a dry run before a GPU is lent),
and the pieces of the side-by-side and throughput scripts."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_paper_scale_dry_run_on_cpu(tmp_path: Path) -> None:
    env = dict(
        os.environ,
        DERMADV_HAM10000="synthetic",
        ALLOW_CPU="1",
        SKIP_INSTALL="1",
        PYTHON=sys.executable,
        ARCH="resnet18",
        IMAGE_SIZE="16",
        CLF_EPOCHS="1",
        GEN_EPOCHS="1",
        ATTACK_SIZE="model",
        LIMIT="35",
        RUN_DIR=str(tmp_path / "run"),
        SUMMARY=str(tmp_path / "summary.json"),
        OMP_NUM_THREADS="1",
    )
    proc = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_paper_scale.sh")], capture_output=True, text=True, env=env, timeout=600
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "optional packages imported by train/attack/evaluate: none" in proc.stdout
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert set(summary["stages"]) == {"decode", "classifier", "generator", "attack+eval"}
    assert summary["mcnemar"]["table"]


def _script(name: str) -> ModuleType:
    """A benchmark script imported as a module (``benchmarks/`` is no package)."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_art_square_defaults_and_targeted_margin() -> None:
    bench = _script("art_square_side_by_side")
    args = bench.parse_args(["--model", "m.onnx"])
    assert (args.eps, args.queries, args.target, args.n) == ("4/255", 1000, "nv", 42)
    scores = np.array([[1.0, 3.0, 0.5], [0.0, 1.0, 4.0]], dtype=np.float32)
    loss = bench.targeted_margin(lambda x: scores)(np.zeros((2, 1)), np.eye(3, dtype=np.float32)[[2, 2]])
    np.testing.assert_allclose(loss, [3.0 - 0.5, 1.0 - 4.0])  # max over the others minus the target's score


def test_art_square_runs_targeted_within_budget_and_counts_queries() -> None:
    bench = _script("art_square_side_by_side")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 3)).eval()
    images = torch.round(torch.rand(4, 3, 8, 8) * 255) / 255
    args = argparse.Namespace(eps="8/255", queries=20, batch_size=4, seed=0)
    out = bench.run_art(model, images, target=2, num_classes=3, p_init=0.3, args=args)
    assert out["queries"] >= len(images)  # at least the first check of every image, every one counted
    assert float((out["adv"] - images).abs().max()) <= 8 / 255 + 1e-6
    res = bench.outcome(model, images, out["adv"], np.array([0, 0, 1, 1]), 2, ("a", "b", "c"))
    assert res["linf_255_max"] <= 8 and set(res["per_class"]) == {"a", "b"}


@pytest.mark.parametrize("datatype", ["UINT8", "FP32"])
def test_load_generator_sends_what_dermadv_sends(datatype: str) -> None:
    """The load generator's request body is byte for byte the one dermadv's HTTP client posts for the same images."""
    import httpx

    from dermadv.models.card import HttpSettings, ModelCard
    from dermadv.models.sources import load_model

    bench = _script("endpoint_throughput")
    args = bench.parse_args(["--url", "http://x", "--card", "c.yaml"])
    assert (args.batch, args.concurrency, args.client_batch) == (None, None, 256)  # the card's by default
    settings = HttpSettings(datatype=datatype, batch_size=4, concurrency=1)  # type: ignore[arg-type]
    card = ModelCard(input_size=(8, 8), value_range=255, mean=(120.0, 110.0, 100.0), std=(50.0, 50.0, 50.0),
                     http=settings)  # fmt: skip
    sent: list[bytes] = []

    def answer(request: httpx.Request) -> httpx.Response:
        sent.append(request.content)
        n = json.loads(request.content)["inputs"][0]["shape"][0]
        return httpx.Response(200, json={"outputs": [{"name": "y", "shape": [n, 7], "datatype": "FP32",
                                                      "data": [0.0] * (7 * n)}]})  # fmt: skip

    model = load_model("http://bench.invalid/v2/models/m/infer", card=card, threat_model="score-based")
    model.backend._client = httpx.Client(transport=httpx.MockTransport(answer))  # type: ignore[attr-defined]
    images = bench.random_images(4, (8, 8), seed=3)
    model(images)
    assert sent == [bench.request_body(card, settings, images)]
    body = json.loads(sent[0])["inputs"][0]
    assert body["shape"] == [4, 3, 8, 8] and body["datatype"] == datatype
