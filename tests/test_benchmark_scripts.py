"""The device script runs end to end on CPU with tiny settings (a dry run before a GPU is lent)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

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
