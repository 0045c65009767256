"""dermadv's Square Attack beside torchattacks' on the same model, images and query budget (score-based, targeted).

    python benchmarks/square_vs_torchattacks.py --model runs/sources-recipe/model.onnx \
        --data ../shared/data/HAM10000 --split-file runs/recipe/split.csv --n 42 --eps 8/255 --queries 300

The model is used black-box (``--threat-model score-based``: onnxruntime for an ONNX file); the images are a
class-stratified sample of the test split, less those of the target class.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from dermadv.attacks.registry import create_attack
from dermadv.data.load import prepare, to_float
from dermadv.data.splits import stratified_sample
from dermadv.models.sources import load_model

RUNS = [
    ("square", {"loss": "margin"}),
    ("square", {"loss": "ce"}),
    ("square", {"p_init": 0.05}),
    ("square-torchattacks", {"p_init": 0.05}),
    ("square-torchattacks", {}),
]


def main(args: argparse.Namespace) -> None:
    model = load_model(args.model, threat_model="score-based")
    prep = prepare(args.data, image_size=model.info.image_size, split_file=args.split_file, progress=False)
    idx = stratified_sample(prep.dataset.labels, prep.indices("test"), args.n, 0)
    images = to_float(torch.from_numpy(np.asarray(prep.images[idx])))
    labels = torch.from_numpy(prep.dataset.labels[idx])
    target = prep.dataset.classes.index(args.target)
    keep = labels != target
    images, labels = images[keep], labels[keep]
    print(f"{len(images)} images, target {args.target}, {args.eps}, {args.queries} queries per image")
    for name, params in RUNS:
        start = time.time()
        result = create_attack(name, eps=args.eps, queries=args.queries, seed=0, **params)(
            model, images, labels=labels, target=target
        )
        median = (
            f"median {result.queries[result.success].float().median().item():.0f} queries among successes"
            if result.queries is not None and bool(result.success.any())
            else "queries per image not reported"
        )
        print(f"{name} {params}: success {result.success.float().mean():.3f}, {median}, {time.time() - start:.0f} s")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", default=None)
    parser.add_argument("--split-file", default=None)
    parser.add_argument("--n", type=int, default=42)
    parser.add_argument("--eps", default="8/255")
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--target", default="nv")
    main(parser.parse_args())
