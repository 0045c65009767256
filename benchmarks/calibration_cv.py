"""Does a per-class logit bias tuned on validation help on images it was not tuned on? Validation only.

    python benchmarks/calibration_cv.py --checkpoint runs/recipe/model.safetensors --data ../shared/data/HAM10000

The validation split of the checkpoint's ``split.csv`` is cut into class-stratified halves 20 times; each
calibration is tuned on one half and scored (accuracy, balanced accuracy) on the other. No test image is read.
Calibrations: none; ``calibrate_logit_bias`` (the coordinate search of ``train --calibrate-bias``, 3 rounds and 1);
``tau``: one scalar times the log class prior of the train split (logit adjustment, Menon et al. 2021).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import balanced_accuracy_score

from dermadv.data.load import prepare
from dermadv.models.checkpoints import load_checkpoint
from dermadv.models.inference import predict_logits
from dermadv.training.classifier import calibrate_logit_bias


def _score(logits: torch.Tensor, labels: np.ndarray) -> tuple[float, float]:
    pred = logits.argmax(1).numpy()
    return float((pred == labels).mean()), float(balanced_accuracy_score(labels, pred))


def _tau(log_prior: torch.Tensor) -> Callable[[torch.Tensor, np.ndarray], torch.Tensor]:
    def fit(logits: torch.Tensor, labels: np.ndarray) -> torch.Tensor:
        best = max(np.linspace(-1, 1, 41), key=lambda t: sum(_score(logits - t * log_prior, labels)))
        return -float(best) * log_prior

    return fit


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--data", default=None)
    parser.add_argument("--split-file", default=None, help="default: split.csv beside the checkpoint")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--tta", action="store_true", help="flip test-time augmentation")
    args = parser.parse_args(argv)

    device = torch.device("cpu")
    model, meta = load_checkpoint(args.checkpoint, device=device)
    split_file = args.split_file or Path(args.checkpoint).parent / "split.csv"
    prep = prepare(args.data, image_size=meta.image_size, split_file=split_file, progress=False)
    idx = prep.indices("val")
    labels = prep.dataset.labels[idx]
    # the logits without the checkpoint's own bias
    raw = predict_logits(model, prep.images, indices=idx, device=device, tta=args.tta) - model.logit_bias.cpu()
    train = prep.dataset.labels[prep.indices("train")]
    log_prior = torch.tensor(np.log(np.bincount(train, minlength=len(meta.classes)) / len(train)), dtype=torch.float32)
    methods: dict[str, Callable[[torch.Tensor, np.ndarray], torch.Tensor]] = {
        "none": lambda logits, y: torch.zeros(logits.shape[1]),
        "coordinate search, 3 rounds (train --calibrate-bias)": calibrate_logit_bias,
        "coordinate search, 1 round": lambda logits, y: calibrate_logit_bias(logits, y, rounds=1),
        "tau x log prior": _tau(log_prior),
    }
    rng = np.random.default_rng(0)
    scores: dict[str, list[tuple[float, float]]] = {name: [] for name in methods}
    for _ in range(args.repeats):
        first = np.zeros(len(labels), bool)
        for c in np.unique(labels):
            members = rng.permutation(np.flatnonzero(labels == c))
            first[members[: len(members) // 2]] = True
        for name, fit in methods.items():
            bias = fit(raw[first], labels[first])
            scores[name].append(_score(raw[~first] + bias, labels[~first]))
    print(f"{args.checkpoint}: {len(labels)} validation images, {args.repeats} halvings, tta={args.tta}")
    width = max(map(len, methods))
    for name, rows in scores.items():
        a = np.array(rows)
        print(
            f"{name:<{width}}  accuracy {a[:, 0].mean():.4f} ± {a[:, 0].std():.4f}  "
            f"balanced {a[:, 1].mean():.4f} ± {a[:, 1].std():.4f}  sum {a.sum(1).mean():.4f}"
        )


if __name__ == "__main__":
    main()
