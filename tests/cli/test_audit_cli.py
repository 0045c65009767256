"""``dermadv audit`` through the real entry point, on a model dermadv did not train.

The model is ``benchmarks/third_party_classifier.py``'s ONNX export with its card (BGR, ImageNet mean/std outside
the network, ISIC class order), audited white-box (through onnx2torch), score-based (onnxruntime) and served over
HTTP by a real uvicorn server whose own count of answered images is compared with what the audit recorded.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
import yaml

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx2torch")

from dermadv.pipeline.audit import AuditConfig  # noqa: E402

# the `third_party` fixture (tests/conftest.py): well above chance on the synthetic set, so the model check says "ok"
QUERIES = 50  # per-image budget of the square attack
LIMIT = 14  # images attacked
# the shortest audit: 14 attacked images, PGD-5 or 50 square queries per image
SHORT = ("--limit", LIMIT, "--steps", 5, "--queries", QUERIES)
USER, PASSWORD, TOKEN = "someone", "pa55word", "s3cret-t0ken"


def subprocess_env(cache: Path) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "DERMADV_CACHE": str(cache)}


def dermadv(*args: object, cache: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dermadv", *map(str, args)],
        capture_output=True,
        text=True,
        env=subprocess_env(cache),
        timeout=300,
    )


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def onnx_model(third_party: Path) -> Path:
    """model.onnx with model.onnx.card.yaml beside it."""
    return third_party / "model.onnx"


@pytest.mark.parametrize("threat_model", ["white-box", "score-based"])
def test_audit_of_a_third_party_onnx_model(
    onnx_model: Path, synthetic_root: Path, session_cache: Path, tmp_path: Path, threat_model: str
):
    out = tmp_path / "audit"
    cap = ("--threat-model", threat_model) if threat_model != "white-box" else ()  # white-box: the default
    proc = dermadv("audit", onnx_model, "--out", out, "--data", synthetic_root, *SHORT, *cap, cache=session_cache)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith(f"threat model: {threat_model}")
    audit = read_json(out / "audit.json")
    attack = read_json(out / "attack" / "attack.json")
    assert audit["threat_model"] == attack["threat_model"] == threat_model
    assert audit["model"]["kind"] == "onnx" and audit["model"]["card"]["channel_order"] == "BGR"
    assert audit["check"]["verdict"].startswith("ok")
    predictions = pd.read_csv(out / "attack" / "predictions.csv")
    assert len(predictions) == attack["n_images"] == LIMIT
    queries = attack["queries"]
    if threat_model == "score-based":
        assert audit["attack"]["method"] == "square"
        assert predictions["queries"].between(1, QUERIES).all()
        assert queries["attack_queries"] == predictions["queries"].sum()
        # the search, then each image judged in memory and from its saved clean and adversarial PNGs
        assert queries["queries"] >= queries["attack_queries"] + 3 * LIMIT
    else:
        assert audit["attack"]["method"] == "pgd"
        assert "queries" not in predictions.columns and queries["attack_queries"] is None
        assert queries["queries"] >= 5 * LIMIT  # a gradient per step and image
    assert audit["attack"]["queries"] == queries
    clean = read_json(out / "clean" / "manifest.json")["queries"]["queries"]
    assert audit["timing"]["queries"] >= clean + queries["queries"]


# --- served over HTTP ---


@dataclass(frozen=True)
class HttpAudit:
    out: Path
    proc: subprocess.CompletedProcess[str]
    stats: dict  # the server's GET /stats after the audit


@pytest.fixture(scope="module")
def http_audit(
    onnx_model: Path, synthetic_root: Path, session_cache: Path, tmp_path_factory: pytest.TempPathFactory, serve_app
) -> HttpAudit:
    """One audit of the ONNX model served over HTTP, its URL carrying a user, a password and a token."""
    import httpx

    folder = tmp_path_factory.mktemp("http-audit")
    card = yaml.safe_load(Path(f"{onnx_model}.card.yaml").read_text())
    card["http"] = {"model_name": "third-party", "batch_size": 16}
    (folder / "http.yaml").write_text(yaml.safe_dump(card, sort_keys=False))
    out = folder / "audit"
    from dermadv.models.serve import make_app

    with serve_app(make_app(onnx_model, name="third-party")) as root:
        url = root.replace("http://", f"http://{USER}:{PASSWORD}@") + f"?token={TOKEN}"
        proc = dermadv(
            "audit", url, "--model-card", folder / "http.yaml", "--out", out, "--data", synthetic_root, *SHORT,
            cache=session_cache,
        )  # fmt: skip
        stats = httpx.get(f"{root}/stats").json()
    assert proc.returncode == 0, proc.stderr[-3000:]
    return HttpAudit(out, proc, stats)


def test_audit_over_http_records_every_query_the_server_answered(http_audit: HttpAudit):
    out, stats = http_audit.out, http_audit.stats
    audit = read_json(out / "audit.json")
    attack = read_json(out / "attack" / "attack.json")
    assert audit["threat_model"] == attack["threat_model"] == "score-based"
    assert audit["model"]["kind"] == "http" and stats["auth_seen"]  # the URL's credentials reached the server
    assert pd.read_csv(out / "attack" / "predictions.csv")["queries"].between(1, QUERIES).all()
    assert stats["queries"] == audit["timing"]["queries"] > 0
    # Stage by stage: the model check classifies its sample once per preprocessing it tries (the card's and the
    # usual mistakes but other sizes: an endpoint resizes for itself), the clean evaluation and the attack record
    # their queries, and the reliability checks score their sample three times on a black box (twice to see
    # whether the model is randomised, once to see whether its outputs are the declared logits).
    check = read_json(out / "check.json")
    assert check["verdict"].startswith("ok")
    stages = audit["timing"]["queries_by_stage"]
    assert sum(stages.values()) == stats["queries"]
    assert stages["check"] == check["n_images"] * (1 + len(check["variants"]))
    assert stages["clean"] == read_json(out / "clean" / "manifest.json")["queries"]["queries"]
    assert stages["attack"] == attack["queries"]["queries"]
    assert stages["checks"] == 3 * AuditConfig.checks_sample


def test_audit_over_http_writes_no_credentials(http_audit: HttpAudit):
    texts = [p.read_text(errors="replace") for p in http_audit.out.rglob("*") if p.suffix in (".json", ".csv", ".md")]
    texts += [http_audit.proc.stdout, http_audit.proc.stderr]
    for secret in (PASSWORD, TOKEN, USER):
        assert not [t for t in texts if secret in t], secret


def test_audit_with_another_seed_attacks_images_of_the_split_it_evaluates(
    onnx_model: Path, synthetic_root: Path, session_cache: Path, tmp_path: Path
):
    out = tmp_path / "audit"
    proc = dermadv(
        "audit", onnx_model, "--out", out, "--data", synthetic_root, "--threat-model", "score-based",
        "--limit", LIMIT, "--queries", 5, "--seed", 1, cache=session_cache,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    evaluated = set(pd.read_csv(out / "clean" / "predictions.csv", dtype={"image_id": str})["image_id"])
    attacked = set(pd.read_csv(out / "attack" / "predictions.csv", dtype={"image_id": str})["image_id"])
    assert attacked <= evaluated
