"""``dermadv attack run --resume`` against a real HTTP endpoint: a run killed with SIGKILL and resumed spends, as the
server counts, at most one batch more than a run that was never stopped, and writes the same predictions."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from torch import nn

pytest.importorskip("onnxruntime")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

import httpx  # noqa: E402

from dermadv.data.classes import CLASSES  # noqa: E402
from dermadv.errors import RunError  # noqa: E402
from dermadv.models.serve import make_app  # noqa: E402
from dermadv.pipeline.attack import AttackRunConfig, attack_split  # noqa: E402
from dermadv.pipeline.audit import AuditConfig, audit  # noqa: E402
from dermadv.pipeline.models import ModelSpec  # noqa: E402

LIMIT = 6  # images attacked: every square iteration sends them in one call, one request
QUERIES = 40  # per image; the model below is never fooled, so every image spends them all
BATCH = 8  # the card's http.batch_size: at least LIMIT, so one model call is one request
RATE = 25  # requests per second (the card's http.rate_limit): slow enough to be killed in the middle


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny 32×32 classifier that favours akiec by far and nv least: no 4/255 attack makes it say nv, but its
    scores move with every pixel, so the search's path depends on each answer."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 7)
    ).eval()
    with torch.no_grad():
        net[-1].bias.zero_()
        net[-1].bias[CLASSES.index("akiec")] = 6.0
        net[-1].bias[CLASSES.index("nv")] = -6.0
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
def card(tmp_path_factory: pytest.TempPathFactory) -> Path:
    http = {"model_name": "tiny", "batch_size": BATCH, "concurrency": 1, "rate_limit": RATE}
    path = tmp_path_factory.mktemp("card") / "tiny.card.yaml"
    path.write_text(yaml.safe_dump({"input_size": [32, 32], "output": "logits", "http": http}))
    return path


def served_queries(root: str, *, reset: bool = False) -> int:
    if reset:
        httpx.post(f"{root}/stats/reset").raise_for_status()
    return int(httpx.get(f"{root}/stats").json()["queries"])


def command(root: str, card: Path, data: Path, out: Path, *extra: str) -> list[str]:
    args = ["attack", "run", "--model", root, "--model-card", card, "--method", "square", "--queries", QUERIES]
    args += ["--eps", "4/255", "--target", "nv", "--limit", LIMIT, "--data", data, "--out", out, *extra]
    return [sys.executable, "-m", "dermadv", *map(str, args)]


def env(cache: Path) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "DERMADV_CACHE": str(cache)}


def run(args: list[str], cache: Path) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(args, capture_output=True, text=True, env=env(cache), timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def queries_of(out: Path) -> dict:
    return json.loads((out / "attack.json").read_text())["queries"]


def in_process(root: str, card: Path, data: Path, out: Path, **changes: object) -> None:
    """``attack run`` as the command above builds it, in this process (no second start of Python and torch)."""
    settings: dict = dict(method="square", queries=QUERIES, eps="4/255", target="nv", limit=LIMIT, data=str(data))
    attack_split(AttackRunConfig(root, out, model_card=str(card), progress=False, **{**settings, **changes}))  # type: ignore[arg-type]


def test_a_run_killed_and_resumed_respends_at_most_one_batch(
    onnx_file: Path, card: Path, synthetic_root: Path, session_cache: Path, tmp_path: Path, serve_app
):
    with serve_app(make_app(onnx_file, name="tiny")) as root:
        # a run never stopped: what the whole attack costs
        served_queries(root, reset=True)
        in_process(root, card, synthetic_root, tmp_path / "whole")
        whole = served_queries(root)
        assert queries_of(tmp_path / "whole") == {**queries_of(tmp_path / "whole"), "queries": whole, "replayed": 0}
        assert whole >= LIMIT * QUERIES

        # the same run, killed with SIGKILL once the server has answered about a third of it
        out = tmp_path / "killed"
        served_queries(root, reset=True)
        proc = subprocess.Popen(
            command(root, card, synthetic_root, out), env=env(session_cache), stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 90
            while served_queries(root) < whole // 3 and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.005)
            proc.send_signal(signal.SIGKILL)
        finally:
            _, stderr = proc.communicate(timeout=30)
        assert proc.returncode == -signal.SIGKILL, stderr[-3000:]  # killed, not finished
        before = served_queries(root)
        assert whole // 3 <= before < whole
        assert (out / "queries.journal").is_file() and not (out / "predictions.csv").exists()

        # changed settings are refused before anything is sent or removed
        with pytest.raises(RunError, match=r"other settings \(queries: 40 there, 41 now\)") as exc:
            in_process(root, card, synthetic_root, out, queries=QUERIES + 1, resume=True)
        assert "\n" not in str(exc.value) and served_queries(root) == before

        resumed = run(command(root, card, synthetic_root, out, "--resume"), session_cache)
        total = served_queries(root)
        spent = queries_of(out)
        print(f"uninterrupted {whole}, killed after {before}, resumed {total - before}: {total - whole} re-spent")
        # at most the one call in flight when the process died is asked again; a little less where the resumed run
        # repeats a query (scoring the best image found) that the killed one had been answered
        assert total <= whole + BATCH
        assert spent["queries"] == total - before and spent["queries"] + spent["replayed"] == whole
        assert spent["replayed"] >= whole // 3 - BATCH
        assert "replayed" in resumed.stderr  # the progress bar shows what the journal answered
        a, b = (pd.read_csv(folder / "predictions.csv") for folder in (tmp_path / "whole", out))
        pd.testing.assert_frame_equal(a, b)
        assert (a["queries"] == QUERIES).all()

        # a complete run resumed again asks the server nothing
        in_process(root, card, synthetic_root, out, resume=True)
        assert served_queries(root) == total
        assert queries_of(out)["replayed"] == whole and queries_of(out)["queries"] == 0
        pd.testing.assert_frame_equal(a, pd.read_csv(out / "predictions.csv"))


def test_audit_resume_refuses_other_settings_before_any_query(tmp_path: Path, card: Path, free_port):
    root = f"http://127.0.0.1:{free_port()}"  # nothing listens: the refusal must come before any query
    out = tmp_path / "audit"
    out.mkdir()
    (out / "manifest.json").write_text(
        json.dumps({"command": "audit", "status": "interrupted", "config": {"queries": 5}})
    )
    cfg = AuditConfig(ModelSpec(root, card=str(card)), out, queries=50, progress=False, resume=True)
    with pytest.raises(RunError, match=r"other settings \(queries: 5 there, 50 now\)"):
        audit(cfg)
