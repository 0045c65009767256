#!/usr/bin/env bash
# The `paper` preset end to end on one GPU: classifier (DenseNet-201 at 224 px), AdvGAN generator, attack
# and evaluation of the test split. Prints per stage: wall time, images/s, peak GPU memory; then the paper's
# table. Meant for a machine with one GPU and only the packages it already has (nothing is fetched):
#
#     bash benchmarks/gpu_paper_scale.sh                 # HAM10000 from $DERMADV_HAM10000 or ../shared/data/HAM10000
#
# Sized for about 8 minutes on one H200 (paper preset: 12 classifier epochs, 3 generator epochs). Knobs
# (environment): DERMADV_HAM10000, RUN_DIR, CLF_EPOCHS, GEN_EPOCHS, ARCH, IMAGE_SIZE, ATTACK_SIZE
# (stored|model), LIMIT (attack a class-stratified sample), COMPILE=1, SKIP_INSTALL=1, and ALLOW_CPU=1 with
# DERMADV_HAM10000=synthetic for a dry run of this script without a GPU. A summary JSON lands in
# $SUMMARY (default: $OUT/gpu_paper_scale.json when $OUT is set, else $RUN_DIR/summary.json).
set -euo pipefail
cd "$(dirname "$0")/.."

export DERMADV_HAM10000="${DERMADV_HAM10000:-../shared/data/HAM10000}"
export RUN_DIR="${RUN_DIR:-/tmp/dermadv-gpu-paper}"
export DERMADV_CACHE="${DERMADV_CACHE:-$RUN_DIR/cache}"
export SUMMARY="${SUMMARY:-${OUT:+$OUT/gpu_paper_scale.json}}"
export PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"

if [[ "$DERMADV_HAM10000" != synthetic && ! -d "$DERMADV_HAM10000" ]]; then
    echo "error: no HAM10000 folder at $DERMADV_HAM10000; set DERMADV_HAM10000 to it" >&2
    exit 1
fi
if [[ "${SKIP_INSTALL:-0}" != 1 ]]; then
    # --no-build-isolation: build with the setuptools already there instead of fetching one
    "$PY" -m pip install --quiet --no-deps --no-build-isolation -e . \
        || { echo "pip install failed; using src/ on PYTHONPATH"; export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"; }
fi
rm -rf "$RUN_DIR/classifier" "$RUN_DIR/generator" "$RUN_DIR/adv-test"
mkdir -p "$RUN_DIR"

"$PY" - <<'PYTHON'
"""Drive the stages in one process, so that peak GPU memory can be read per stage."""

import gc
import json
import logging
import os
import sys
import time
from pathlib import Path

import torch
from rich.console import Console

from dermadv.data.load import prepare
from dermadv.evaluation.attack_eval import format_attack_table
from dermadv.pipeline.attack import AttackRunConfig, attack_split
from dermadv.presets import preset_attack_config, preset_train_config
from dermadv.runs import read_json
from dermadv.pipeline.generator import fit_generator
from dermadv.pipeline.train import fit
from dermadv.training.classifier import TrainConfig
from dermadv.training.generator import GeneratorConfig

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
T0 = time.perf_counter()
env = os.environ
run_dir = Path(env["RUN_DIR"])
data = env["DERMADV_HAM10000"]
cuda = torch.cuda.is_available()

# The web app, ART and torchattacks are optional: none may be imported on these paths.
optional = sorted({m.split(".")[0] for m in sys.modules} & {"fastapi", "uvicorn", "starlette", "art", "torchattacks"})
print(f"optional packages imported by train/attack/evaluate: {optional or 'none'}")
if optional:
    sys.exit(f"error: {optional} imported at import time")
if not cuda and env.get("ALLOW_CPU") != "1":
    sys.exit("error: no GPU visible to PyTorch (set ALLOW_CPU=1 for a CPU dry run)")
print(f"torch {torch.__version__}, device: {torch.cuda.get_device_name() if cuda else 'CPU'}")

train = preset_train_config("paper")
attack = preset_attack_config("paper")
train.update(progress=False)
for key, name, cast in [("arch", "ARCH", str), ("image_size", "IMAGE_SIZE", int), ("epochs", "CLF_EPOCHS", int)]:
    if env.get(name):
        train[key] = cast(env[name])
attack_size = env.get("ATTACK_SIZE") or attack.get("attack_size", "model")
gen_epochs = int(env.get("GEN_EPOCHS") or attack["epochs"])
limit = int(env["LIMIT"]) if env.get("LIMIT") else None
train["compile"] = env.get("COMPILE") == "1"

# ImageNet weights cannot be downloaded here: use them only if torchvision's cache holds them.
if train.get("weights") == "imagenet":
    import torchvision

    url = torchvision.models.get_model_weights(train["arch"]).DEFAULT.url
    cached = Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]
    if not cached.exists():
        print(f"NOTE: ImageNet weights for {train['arch']} are not in {cached.parent}; training FROM SCRATCH")
        train["weights"] = None

stages: dict[str, dict[str, object]] = {}


def stage(name: str, fn, images_of) -> object:  # type: ignore[no-untyped-def]
    """Run one stage; record wall time, images/s (from ``images_of(result, wall)``) and peak GPU memory."""
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    result = fn()
    wall = time.perf_counter() - start
    peak = round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None
    rate, note = images_of(result, wall)
    stages[name] = {"wall_s": round(wall, 1), "images_per_s": round(rate, 1), "peak_gpu_gib": peak, "note": note}
    print(
        f"[stage] {name:12s} wall {wall:7.1f} s   {rate:9.1f} images/s   peak GPU memory "
        f"{'n/a' if peak is None else f'{peak:.2f} GiB'}   {note}   (total {time.perf_counter() - T0:.0f} s)"
    )
    return result


def decode() -> int:
    n = len(prepare(data, image_size=train["image_size"], progress=False).images)
    if attack_size == "stored":
        prepare(data, image_size=None, progress=False)
        n *= 2
    return n


stage("decode", decode, lambda n, wall: (n / wall, f"{n} images decoded into the cache"))

clf_dir = run_dir / "classifier"


def history_rate(folder: Path) -> tuple[float, str]:
    import pandas as pd

    h = pd.read_csv(folder / "history.csv")
    steady = h[h["epoch"] > 0] if len(h) > 1 else h  # epoch 0 includes cuDNN autotuning (and compiling)
    return float(steady["images_per_s"].median()), f"{len(h)} epochs, epoch 0 at {h['images_per_s'].iloc[0]:.0f}/s"


stage(
    "classifier",
    lambda: fit(TrainConfig(out=clf_dir, data=data, **train)),
    lambda _, wall: history_rate(clf_dir),
)
checkpoint = clf_dir / "model.safetensors"
gen_dir = run_dir / "generator"
stage(
    "generator",
    lambda: fit_generator(
        GeneratorConfig(
            checkpoint=checkpoint,
            out=gen_dir,
            data=data,
            target="nv",
            eps=attack["eps"],
            fit_on="train",
            attack_size=attack_size,
            epochs=gen_epochs,
            batch_size=attack["batch_size"],
            split_file=str(clf_dir / "split.csv"),
            progress=False,
        )
    ),
    lambda _, wall: history_rate(gen_dir),
)
adv_dir = run_dir / "adv-test"


def attack_rate(metrics, wall: float) -> tuple[float, str]:  # type: ignore[no-untyped-def]
    timings = read_json(adv_dir / "manifest.json")["timings_s"]
    n = metrics.n
    return n / timings["attack"], f"{n} test images; attack {timings['attack']:.1f} s, evaluate {timings['evaluate']:.1f} s"


metrics = stage(
    "attack+eval",
    lambda: attack_split(
        AttackRunConfig(
            checkpoint=checkpoint,
            out=adv_dir,
            method="advgan",
            generator=gen_dir / "generator.safetensors",
            data=data,
            split="test",
            split_file=str(clf_dir / "split.csv"),
            target="nv",
            limit=limit,
            progress=False,
        )
    ),
    attack_rate,
)

Console(width=120).print(format_attack_table(metrics))  # type: ignore[arg-type]
try:  # the paper's figures beside this run's, where the reproduce command is installed
    from dermadv.pipeline.reproduce import paper_table

    for row in paper_table(run_dir):
        print(f"{row['measure']:<55} {row['paper']:<40} {row['this_run']}")
except Exception as exc:  # noqa: BLE001 - the table is a bonus; the measurements above stand
    print(f"(paper comparison table skipped: {exc.__class__.__name__}: {exc})")

total = time.perf_counter() - T0
print(f"[total] {total:.0f} s for decode, classifier, generator, attack and evaluation")
summary = {
    "device": torch.cuda.get_device_name() if cuda else "cpu",
    "torch": torch.__version__,
    "train": {k: v for k, v in train.items() if k != "augment_config"},
    "attack_size": attack_size,
    "generator_epochs": gen_epochs,
    "stages": stages,
    "total_s": round(total, 1),
    **{k: metrics.as_dict()[k] for k in ("accuracy_clean", "accuracy_adv", "mcnemar", "fooling_ratio")},  # type: ignore[union-attr]
}
path = Path(env.get("SUMMARY") or run_dir / "summary.json")
path.parent.mkdir(parents=True, exist_ok=True)
path.write_text(json.dumps(summary, indent=2, default=str) + "\n")
print(f"summary: {path}")
PYTHON
