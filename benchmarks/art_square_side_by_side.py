"""dermadv's Square Attack beside ART's SquareAttack on the same ONNX model, images and budget (L∞, targeted).

    python benchmarks/art_square_side_by_side.py --model runs/sources-recipe/model.onnx \
        --data ../shared/data/HAM10000 --split-file runs/recipe/split.csv --n 42 --eps 4/255 --queries 1000 \
        --out art_square.json

Both attack one model object: ``load_model(MODEL, threat_model="score-based")`` (onnxruntime for an ONNX file, every
input rounded to 8 bits). dermadv's ``square`` calls it directly; ART's ``SquareAttack`` (Andriushchenko et al. 2020,
as implemented in the Adversarial Robustness Toolbox) goes through a ``BlackBoxClassifierNeuralNetwork`` whose
predict function calls the same module under ``torch.no_grad`` and counts the images it is asked about. Both start
from the same p (``default_p_init`` of dermadv for the image size), on a class-stratified sample of the test split
less the target class. Success is judged alike for both, afterwards, on the returned images rounded to 8 bits.

Differences that the numbers carry (ART 1.20):

- ART's SquareAttack has no targeted mode (no ``targeted`` argument; its default criterion and loss are
  untargeted): it is made targeted here with ``adv_criterion`` (argmax = target) and ``loss`` (the targeted margin
  max_{j≠t} z_j − z_t, the loss dermadv minimises), with one-hot targets as ``y``.
- ART runs ``max_iter`` iterations over the batch and keeps no per-image query count. Each iteration it scores every
  image of the batch (to find those still searching) and then each searching image twice (current point and
  candidate), so it spends up to about three queries per image and iteration; its queries are reported as the
  total over the images. dermadv stops each image at its first success and reports per-image queries.
- ART draws one square position per iteration for the whole batch; dermadv draws one per image.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dermadv.attacks.registry import create_attack
from dermadv.attacks.square import default_p_init
from dermadv.config import parse_eps
from dermadv.data.load import prepare, to_float
from dermadv.data.splits import stratified_sample
from dermadv.models.sources import label_map, load_model
from dermadv.pipeline.attack import model_target


class CountingPredict:
    """The model's scores on a numpy batch (N×3×H×W in [0, 1]), counting every image asked about."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.queries = 0
        self.calls = 0

    def __call__(self, x: np.ndarray) -> np.ndarray:
        self.queries += len(x)
        self.calls += 1
        with torch.no_grad():
            return self.model(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))).numpy()


def targeted_margin(predict: Callable[[np.ndarray], np.ndarray]) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """ART ``loss(x, y)`` to minimise: max_{j≠t} z_j − z_t for one-hot targets ``y`` (negative once at the target)."""

    def loss(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        scores = predict(x)
        target = y.argmax(1)
        at_target = scores[np.arange(len(scores)), target]
        others = scores.copy()
        others[np.arange(len(scores)), target] = -np.inf
        return others.max(1) - at_target

    return loss


def outcome(
    model: nn.Module, clean: torch.Tensor, adv: torch.Tensor, labels: np.ndarray, target: int, classes: tuple[str, ...]
) -> dict[str, Any]:
    """Targeted success on the 8-bit adversarial images, overall and per true class, and the L∞ actually used."""
    adv_u8 = torch.round(adv.clamp(0, 1) * 255)
    with torch.no_grad():
        preds = model(adv_u8 / 255).argmax(1).numpy()
    success = preds == target
    per_class = {
        classes[c]: round(float(success[labels == c].mean()), 4) for c in np.unique(labels) if (labels == c).any()
    }
    worst = min(per_class, key=lambda c: per_class[c])
    return {
        "success_rate": round(float(success.mean()), 4),
        "per_class": per_class,
        "worst_class": worst,
        "worst_class_success": per_class[worst],
        "linf_255_max": int((adv_u8 - torch.round(clean * 255)).abs().max()),
        "success": success,
    }


def run_dermadv(model: nn.Module, images: torch.Tensor, labels: np.ndarray, target: int, args: Any) -> dict[str, Any]:
    attack = create_attack("square", eps=args.eps, queries=args.queries, seed=args.seed)
    start = time.perf_counter()
    result = attack(model, images, labels=torch.from_numpy(labels), target=target)
    wall = time.perf_counter() - start
    assert result.queries is not None
    return {"adv": result.adv_images, "wall_s": wall, "queries": result.queries.numpy(), "params": repr(attack)}


def run_art(
    model: nn.Module, images: torch.Tensor, target: int, num_classes: int, p_init: float, args: Any
) -> dict[str, Any]:
    from art.attacks.evasion import SquareAttack
    from art.estimators.classification import BlackBoxClassifierNeuralNetwork

    predict = CountingPredict(model)
    # SquareAttack needs a NeuralNetworkMixin estimator; BlackBoxClassifier alone is refused by ART
    classifier = BlackBoxClassifierNeuralNetwork(
        predict, input_shape=tuple(images.shape[1:]), nb_classes=num_classes, channels_first=True, clip_values=(0, 1)
    )
    attack = SquareAttack(
        classifier,
        norm=np.inf,
        eps=parse_eps(args.eps),
        max_iter=args.queries,
        p_init=p_init,
        nb_restarts=1,
        batch_size=args.batch_size,
        adv_criterion=lambda scores, y: scores.argmax(1) == y.argmax(1),
        loss=targeted_margin(lambda x: classifier.predict(x, batch_size=args.batch_size)),
        verbose=False,
    )
    one_hot = np.eye(num_classes, dtype=np.float32)[np.full(len(images), target)]
    np.random.seed(args.seed)  # ART draws its squares and signs from numpy's global generator
    start = time.perf_counter()
    adv = attack.generate(x=images.numpy().astype(np.float32), y=one_hot)
    wall = time.perf_counter() - start
    return {"adv": torch.from_numpy(np.asarray(adv, dtype=np.float32)), "wall_s": wall, "queries": predict.queries}


def main(args: argparse.Namespace) -> dict[str, Any]:
    model = load_model(args.model, threat_model="score-based")
    info = model.info
    prep = prepare(args.data, image_size=info.image_size, split_file=args.split_file, progress=False)
    idx = stratified_sample(prep.dataset.labels, prep.indices("test"), args.n, args.seed)
    labels = label_map(info, prep.dataset.classes)[prep.dataset.labels[idx]]
    target = model_target(info, args.target)
    assert target is not None
    keep = labels != target
    images = to_float(torch.from_numpy(np.asarray(prep.images[idx])))[torch.from_numpy(keep)]
    labels = labels[keep]
    h, w = images.shape[-2:]
    p_init = default_p_init(h, w)
    with torch.no_grad():
        clean_target = float((model(images).argmax(1).numpy() == target).mean())
    print(
        f"{len(images)} images ({h}x{w}), targeted to {args.target}, eps {args.eps}, {args.queries} queries per "
        f"image, p_init {p_init:.3f}; {clean_target:.1%} already predicted {args.target} when clean"
    )
    report: dict[str, Any] = {
        "model": info.spec,
        "n_images": len(images),
        "image_size": [h, w],
        "target": args.target,
        "eps": args.eps,
        "queries_per_image": args.queries,
        "p_init": round(p_init, 4),
        "clean_target_rate": round(clean_target, 4),
        "seed": args.seed,
        "threads": torch.get_num_threads(),
        "results": {},
    }
    runs = {
        "dermadv": lambda: run_dermadv(model, images, labels, target, args),
        "art": lambda: run_art(model, images, target, len(info.classes), p_init, args),
    }
    for name, run in runs.items():
        out = run()
        res = outcome(model, images, out["adv"], labels, target, info.classes)
        success = res.pop("success")
        if name == "dermadv":
            spent = out["queries"]
            res["median_queries_among_successes"] = float(np.median(spent[success])) if success.any() else None
            res["queries_per_image_mean"] = round(float(spent.mean()), 1)
            res["queries_counted"] = "per image; each image stops at its first success"
            res["params"] = out["params"]
        else:
            res["median_queries_among_successes"] = None
            res["queries_per_image_mean"] = round(out["queries"] / len(images), 1)
            res["queries_counted"] = "total images asked about / images: ART keeps no per-image count"
            res["params"] = (
                f"SquareAttack(norm=inf, eps={args.eps}, max_iter={args.queries}, p_init={p_init:.4f}, "
                f"nb_restarts=1, batch_size={args.batch_size}, targeted by adv_criterion and loss)"
            )
        res["wall_s"] = round(out["wall_s"], 2)
        report["results"][name] = res
        median = res["median_queries_among_successes"]
        print(
            f"{name:8s} success {res['success_rate']:.1%}, worst class {res['worst_class']} "
            f"{res['worst_class_success']:.1%}, median queries among successes "
            f"{'n/a' if median is None else f'{median:g}'}, {res['queries_per_image_mean']:g} queries per image "
            f"(mean), L∞ {res['linf_255_max']}/255, {res['wall_s']:.1f} s"
        )
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    return report


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--model", required=True, help="an ONNX file (or any model spec dermadv loads)")
    parser.add_argument("--data", default=None)
    parser.add_argument("--split-file", default=None)
    parser.add_argument("--n", type=int, default=42, help="class-stratified test images (the target's then dropped)")
    parser.add_argument("--eps", default="4/255")
    parser.add_argument("--queries", type=int, default=1000, help="per image (dermadv) and max_iter (ART)")
    parser.add_argument("--target", default="nv")
    parser.add_argument("--batch-size", type=int, default=64, help="ART's batch size for model calls")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    return parser.parse_args(argv)


if __name__ == "__main__":
    main(parse_args())
