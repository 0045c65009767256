"""``dermadv audit`` of a model that answers labels only: audited decision-based (HopSkipJump), not refused.

The model is the ``third_party`` fixture's TorchScript (tests/conftest.py) wrapped to return the argmax, with its
card saying ``output: label``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from torch import nn

QUERIES = 40  # per image: the start, a binary search and part of the first gradient estimate
LIMIT = 7  # images attacked


class LabelOnly(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).argmax(1)


@pytest.fixture(scope="module")
def label_model(third_party: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``labels.ts`` (the third-party network's argmax) with ``labels.ts.card.yaml`` (``output: label``)."""
    folder = tmp_path_factory.mktemp("label-only")
    card = yaml.safe_load((third_party / "model.ts.card.yaml").read_text())
    net = torch.jit.load(str(third_party / "model.ts"), map_location="cpu").eval()
    example = torch.zeros(1, 3, *card["input_size"])
    torch.jit.trace(LabelOnly(net).eval(), example).save(str(folder / "labels.ts"))
    (folder / "labels.ts.card.yaml").write_text(yaml.safe_dump({**card, "output": "label"}, sort_keys=False))
    return folder / "labels.ts"


def test_audit_of_a_label_only_model_runs_hopskipjump(
    label_model: Path, synthetic_root: Path, session_cache: Path, tmp_path: Path
):
    out = tmp_path / "audit"
    proc = subprocess.run(
        [
            sys.executable, "-m", "dermadv", "audit", str(label_model), "--out", str(out),
            "--data", str(synthetic_root), "--limit", str(LIMIT), "--queries", str(QUERIES),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", "DERMADV_CACHE": str(session_cache)},
        timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("threat model: decision-based")
    audit = json.loads((out / "audit.json").read_text())
    attack = json.loads((out / "attack" / "attack.json").read_text())
    assert audit["threat_model"] == attack["threat_model"] == "decision-based"
    assert audit["attack"]["method"] == "hopskipjump" and f"{QUERIES} queries per image" in audit["why"]
    predictions = pd.read_csv(out / "attack" / "predictions.csv")
    assert len(predictions) == attack["n_images"] == LIMIT
    assert predictions["queries"].between(1, QUERIES).all()
    queries = attack["queries"]
    assert queries["attack_queries"] == predictions["queries"].sum()
    # the start pool (at most 64 training images, scored once), the search, then each image judged: by the attack,
    # in memory and from its saved clean and adversarial PNGs
    assert queries["attack_queries"] + 3 * LIMIT < queries["queries"] <= queries["attack_queries"] + 4 * LIMIT + 64
