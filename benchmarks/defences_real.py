"""Defences of a real classifier, measured cheaply on a class-stratified sample of its test split.

    nice -n 19 env OMP_NUM_THREADS=1 python benchmarks/defences_real.py \
        --checkpoint ../main/runs/recipe/model.safetensors --data ../shared/data/HAM10000 \
        --out runs/defences-real --limit 140

Writes one folder per measurement under ``--out`` (each with its manifest; a complete one is kept on a
rerun) and ``summary.json`` beside them; ``dermadv report <out>`` shows them. Measured:

* ``transforms/`` — each transform defence's clean accuracy and the worst-class targeted (→ nv) fooling of
  PGD-20 at 2/255 and 8/255, plain and adaptive (BPDA; EOT for gauss), scored on 8-bit images;
* ``certify/`` — randomized smoothing (sigma 0.25): certified accuracy at L2 radii 0.25 and 0.5 (n noise
  samples stated in the output);
* ``pgd-2_255/`` and ``detect/`` — a Mahalanobis detector against PGD-20 images and the detector-aware attack;
* ``card/`` — the per-class robustness card without and with one defence.

Adversarial training is not run here: it needs a full training run of the classifier per setting.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dermadv.pipeline.attack import AttackRunConfig, attack_split
from dermadv.pipeline.defences import (
    CardConfig,
    CertifyConfig,
    DetectConfig,
    TransformsConfig,
    card_split,
    certify_split,
    detect_split,
    transforms_split,
)
from dermadv.runs import read_json, run_complete, write_json


def _stage(out: Path, name: str, run: Callable[[], Any]) -> dict[str, Any]:
    """Run a stage into ``out/name`` unless a complete run is there; return its result file's JSON."""
    folder = out / name
    t0 = time.time()
    if not run_complete(folder):
        logging.info("stage %s …", name)
        run()
    files = {"transforms": "transforms.json", "certify": "certify.json", "detect": "detect.json", "card": "card.json"}
    manifest = read_json(folder / "manifest.json")
    logging.info("stage %s done (%.0f s this call)", name, time.time() - t0)
    return {
        "seconds": manifest.get("timings_s", {}).get("total"),
        "result": read_json(folder / files[name]) if name in files else None,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--split-file", default=None, help="default: the split.csv beside the checkpoint")
    parser.add_argument("--out", type=Path, default=Path("runs/defences-real"))
    parser.add_argument("--limit", type=int, default=140, help="test images, class-stratified")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--eot-samples", type=int, default=4)
    parser.add_argument("--n", type=int, default=500, help="smoothing: noise samples per certificate")
    parser.add_argument("--n0", type=int, default=50, help="smoothing: noise samples that choose the class")
    parser.add_argument("--detect-eps", default="2/255")
    parser.add_argument("--calibrate-limit", type=int, default=350, help="val images that set the detector threshold")
    parser.add_argument("--card-defence", default="jpeg:75")
    parser.add_argument("--card-eps", default="1/255,2/255,4/255,8/255")
    parser.add_argument("--batch-size", type=int, default=70)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")

    out: Path = args.out
    common: dict[str, Any] = {
        "checkpoint": args.checkpoint,
        "data": args.data,
        "split_file": args.split_file,
        "limit": args.limit,
        "seed": 0,
        "batch_size": args.batch_size,
    }
    stages: dict[str, Callable[[], Any]] = {
        "transforms": lambda: transforms_split(
            TransformsConfig(out=out / "transforms", steps=args.steps, eot_samples=args.eot_samples, **common)
        ),
        "certify": lambda: certify_split(CertifyConfig(out=out / "certify", n=args.n, n0=args.n0, **common)),
        "pgd-2_255": lambda: attack_split(
            AttackRunConfig(
                out=out / "pgd-2_255", method="pgd", eps=args.detect_eps, steps=args.steps, progress=False, **common
            )
        ),
        "detect": lambda: detect_split(
            DetectConfig(
                out=out / "detect",
                attack_folder=out / "pgd-2_255",
                steps=args.steps,
                **{**common, "limit": args.calibrate_limit},
            )
        ),
        "card": lambda: card_split(
            CardConfig(out=out / "card", defences=(args.card_defence,), eps=args.card_eps, steps=args.steps, **common)
        ),
    }
    summary = {
        "command": "python benchmarks/defences_real.py " + " ".join(argv or []),
        "args": {k: str(v) for k, v in vars(args).items()},
        "stages": {name: _stage(out, name, run) for name, run in stages.items()},
    }
    write_json(out / "summary.json", summary)
    print(json.dumps({k: v["seconds"] for k, v in summary["stages"].items()}, indent=2))
    return summary


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
