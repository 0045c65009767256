"""Two-process gloo runs under torchrun give the single-process results: train, attack fit, attack run, evaluate.

The 2-process runs go through ``python -m torch.distributed.run --nproc-per-node 2 -m dermadv …``, the
launcher a user would call, on a small subset of the built-in synthetic set (resnet18 at 16 px).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

from dermadv.data.load import prepare
from dermadv.data.splits import stratified_sample
from dermadv.models.checkpoints import load_checkpoint
from dermadv.models.inference import predict_logits
from dermadv.pipeline.attack import AttackRunConfig, attack_split
from dermadv.pipeline.train import fit
from dermadv.runs import read_json, run_complete
from dermadv.training.classifier import TrainConfig

pytestmark = pytest.mark.timeout(600)

LIMIT = 70  # attacked test images (class-stratified)
TRAIN_CONFIG = """\
arch: resnet18
image_size: 16
epochs: 2
batch_size: 32
max_train_images: 256
patience: 0  # stop after the first epoch: every rank must break there, or DDP's next all-reduce hangs
"""


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("WORLD_SIZE", None)
    if sys.platform == "linux":
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")  # loopback, whatever the host name resolves to
    return env


def torchrun(*args: str | Path, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """``torchrun --standalone --nproc-per-node 2 -m dermadv ARGS`` (gloo on CPU)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    cmd += ["-m", "dermadv", *map(str, args)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc


@dataclass(frozen=True)
class Runs:
    classifier: Path  # 2-process train run folder
    generator: Path  # 2-process generator fit
    adv_two: Path  # 2-process attack run (evaluated)
    adv_one: Path  # 1-process attack run of the same checkpoint and generator


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Runs:
    root = tmp_path_factory.mktemp("ddp")
    (root / "train.yaml").write_text(TRAIN_CONFIG)
    clf, gen, adv_two, adv_one = root / "clf", root / "gen", root / "adv-2", root / "adv-1"
    torchrun("train", "--out", clf, "--config", root / "train.yaml")
    checkpoint = clf / "model.safetensors"
    torchrun(
        "attack",
        "fit",
        "--checkpoint",
        checkpoint,
        "--out",
        gen,
        "--epochs",
        "1",
        "--batch-size",
        "32",
        "--fit-on",
        "val",
    )
    generator = gen / "generator.safetensors"
    torchrun(
        "attack",
        "run",
        "--checkpoint",
        checkpoint,
        "--generator",
        generator,
        "--out",
        adv_two,
        "--limit",
        str(LIMIT),
        "--batch-size",
        "16",
    )
    attack_split(
        AttackRunConfig(
            checkpoint=checkpoint, out=adv_one, generator=generator, limit=LIMIT, batch_size=16, progress=False
        )
    )
    return Runs(clf, gen, adv_two, adv_one)


def test_train_stops_on_the_same_epoch_and_writes_once(runs: Runs) -> None:
    history = pd.read_csv(runs.classifier / "history.csv")
    assert history["epoch"].tolist() == [0]  # patience 0: both ranks stopped after epoch 0 (no hang)
    assert run_complete(runs.classifier)
    assert read_json(runs.classifier / "train_metrics.json")["epochs_run"] == 1
    assert run_complete(runs.generator)
    assert (runs.generator / "generator.safetensors").exists()


def test_evaluation_equals_single_process(runs: Runs) -> None:
    two = read_json(runs.adv_two / "attack_metrics.json")
    one = read_json(runs.adv_one / "attack_metrics.json")
    assert two["n"] == one["n"] == LIMIT
    assert two["mcnemar"]["table"] == one["mcnemar"]["table"]
    for key in ("accuracy_clean", "accuracy_adv", "fooling_ratio", "flip_rate", "confusion_adv", "confusion_clean"):
        assert two[key] == one[key], key
    pd.testing.assert_frame_equal(
        pd.read_csv(runs.adv_two / "predictions.csv"), pd.read_csv(runs.adv_one / "predictions.csv")
    )


def test_predictions_cover_every_image_once(runs: Runs) -> None:
    meta = load_checkpoint(runs.classifier / "model.safetensors")[1]
    prep = prepare(None, image_size=meta.image_size, split_file=runs.classifier / "split.csv", progress=False)
    expected = stratified_sample(prep.dataset.labels, prep.indices("test"), LIMIT, 0)
    ids = pd.read_csv(runs.adv_two / "predictions.csv")["image_id"].astype(str)
    assert ids.is_unique
    assert sorted(ids) == sorted(prep.dataset.image_ids[i] for i in expected)
    assert len(list((runs.adv_two / "images" / "adv").glob("*.png"))) == LIMIT


def test_checkpoint_loads_in_one_process(runs: Runs) -> None:
    model, meta = load_checkpoint(runs.classifier / "model.safetensors")
    prep = prepare(None, image_size=meta.image_size, split_file=runs.classifier / "split.csv", progress=False)
    val = prep.indices("val")
    accuracy = float(
        (predict_logits(model, prep.images, indices=val).argmax(1).numpy() == prep.dataset.labels[val]).mean()
    )
    # validation under DDP used rank 0's weights and batch-norm statistics: the ones saved
    assert accuracy == json.loads(meta.extra)["val"]["val_acc"]


def test_two_process_state_resumes_in_one_process(runs: Runs, tmp_path: Path) -> None:
    out = tmp_path / "clf"
    shutil.copytree(runs.classifier, out)
    cfg = TrainConfig(
        out=out,
        arch="resnet18",
        image_size=16,
        epochs=2,
        batch_size=32,
        max_train_images=256,
        patience=0,
        resume=True,
        split_file=str(out / "split.csv"),
        progress=False,
    )
    fit(cfg)
    assert pd.read_csv(out / "history.csv")["epoch"].tolist() == [0, 1]


def test_fitted_attack_equals_single_process(runs: Runs, tmp_path: Path) -> None:
    # the universal perturbation is fitted on every rank, then rank 0's is broadcast
    checkpoint = runs.classifier / "model.safetensors"
    common = ["--method", "uap", "--eps", "4/255", "--limit", "35", "--param", "epochs=1"]
    torchrun("attack", "run", "--checkpoint", checkpoint, "--out", tmp_path / "two", *common)
    attack_split(
        AttackRunConfig(
            checkpoint=checkpoint,
            out=tmp_path / "one",
            method="uap",
            eps="4/255",
            limit=35,
            params={"epochs": 1},
            evaluate=False,
            progress=False,
        )
    )
    pd.testing.assert_frame_equal(
        pd.read_csv(tmp_path / "two" / "predictions.csv"), pd.read_csv(tmp_path / "one" / "predictions.csv")
    )


def test_existing_run_is_refused_on_every_rank(runs: Runs) -> None:
    proc = torchrun("train", "--out", runs.classifier, "--config", runs.classifier.parent / "train.yaml", check=False)
    assert proc.returncode != 0
    # both ranks raise (no rank left waiting in a collective) and print the one-line error
    assert proc.stderr.count("already holds a training run") == 2


def test_gather_rows_deduplicates_padded_shards(tmp_path: Path) -> None:
    script = tmp_path / "gather.py"
    script.write_text(
        textwrap.dedent(
            """
            import json, sys
            import numpy as np
            from dermadv import distributed as dd

            dd.init_from_env()
            # a DistributedSampler-like padded split: rank 1 repeats index 0
            idx = np.array([0, 2, 4]) if dd.rank() == 0 else np.array([1, 3, 0])
            order, values = dd.gather_rows(idx, idx * 10.0)
            json.dump({"order": order.tolist(), "values": values.tolist(), "shard": dd.shard_indices(5).tolist()},
                      open(sys.argv[1] + f".{dd.rank()}", "w"))
            dd.cleanup()
            """
        )
    )
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(script)]
    subprocess.run([*cmd, str(tmp_path / "out")], check=True, capture_output=True, env=_env(), timeout=120)
    results = [json.loads((tmp_path / f"out.{r}").read_text()) for r in (0, 1)]
    for r, res in enumerate(results):
        assert res["order"] == [0, 1, 2, 3, 4]
        assert res["values"] == [0.0, 10.0, 20.0, 30.0, 40.0]
        assert res["shard"] == list(range(r, 5, 2))
