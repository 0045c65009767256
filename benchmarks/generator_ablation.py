"""Generator ablation: worst-class fooling (→ target) of generator variants beside per-image PGD-20, one classifier.

    python benchmarks/generator_ablation.py --checkpoint runs/demo/classifier/model.safetensors \
        --variants '[{"condition": "image", "epochs": 15}, {"condition": "gradient", "epochs": 10}]' --pgd

Each variant is fitted in memory with the library's own ``gan_step`` (the loss ``dermadv attack fit`` uses) on the
split named by ``fit_on`` and scored on the test split after rounding to the 8-bit grid. Keys of a variant:
condition, fit_on (train|val|test), epochs, batch_size, lr, channels, res_blocks, gan_weight, hinge_weight, kappa, steps.
It prints the ablation table (variant, worst-class fooling, seconds) as JSON. No timed asserts.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dermadv.attacks.generator import PatchDiscriminator, PerturbationGenerator, generate
from dermadv.attacks.gradient import PGD
from dermadv.config import parse_eps
from dermadv.data.classes import class_index
from dermadv.data.load import prepare, to_float
from dermadv.data.splits import stratified_sample
from dermadv.models.checkpoints import load_checkpoint
from dermadv.training.generator import LossWeights, gan_step

DEFAULTS: dict[str, Any] = dict(
    condition="gradient", fit_on="test", epochs=10, batch_size=16, lr=3e-3, channels=16, res_blocks=3,
    gan_weight=0.0, hinge_weight=0.0, kappa=5.0, steps=1,
)  # fmt: skip


def worst_class(pred: np.ndarray, labels: np.ndarray, target: int) -> tuple[float, dict[int, float]]:
    rates = {int(c): float((pred[labels == c] == target).mean()) for c in np.unique(labels)}
    return min(rates.values()), rates


@torch.no_grad()
def predict(model: torch.nn.Module, images: torch.Tensor) -> np.ndarray:
    return torch.cat([model(images[i : i + 256]).argmax(1) for i in range(0, len(images), 256)]).numpy()


def on_grid(images: torch.Tensor) -> torch.Tensor:
    return (images * 255).round() / 255


def fit_variant(model: torch.nn.Module, images: torch.Tensor, labels: np.ndarray, *, target: int, eps: float, v: dict):
    torch.manual_seed(0)
    counts = np.bincount(labels, minlength=int(labels.max()) + 1).astype(float)
    per_class = np.where(counts > 0, 1 / np.maximum(counts, 1), 0.0)
    weights = torch.tensor(per_class[labels] / per_class[labels].mean(), dtype=torch.float32)
    gen = PerturbationGenerator(eps, channels=v["channels"], res_blocks=v["res_blocks"], condition=v["condition"])
    disc = PatchDiscriminator()
    opt_g = torch.optim.Adam(gen.parameters(), lr=v["lr"], betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(disc.parameters(), lr=v["lr"], betas=(0.5, 0.999))
    steps = v["epochs"] * math.ceil(len(images) / v["batch_size"])
    sched = torch.optim.lr_scheduler.OneCycleLR(opt_g, max_lr=v["lr"], total_steps=steps, pct_start=0.1)
    loss = LossWeights(kappa=v["kappa"], gan_weight=v["gan_weight"], hinge_weight=v["hinge_weight"])
    rng = torch.Generator().manual_seed(0)
    for _ in range(v["epochs"]):
        for b in torch.randperm(len(images), generator=rng).split(v["batch_size"]):
            gan_step(
                gen,
                disc,
                opt_g,
                opt_d,
                model,
                images[b],
                target=target,
                eps=eps,
                weights=loss,
                sample_weights=weights[b],
                steps=v["steps"],
            )
            sched.step()
    return gen.eval()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--data", default=None, help="default: the built-in synthetic set")
    parser.add_argument("--eps", default="8/255")
    parser.add_argument("--target", default="nv")
    parser.add_argument("--variants", default="[{}]", help="JSON list of variant dicts (keys above)")
    parser.add_argument("--pgd", action="store_true", help="also per-image PGD-20 on the same test images")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--limit", type=int, default=None, help="a class-stratified test sample (the sweep's, seed 0); default: all"
    )
    parser.add_argument(
        "--fit-limit", type=int, default=None, help="a class-stratified sample of the train (and val) split"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model, meta = load_checkpoint(args.checkpoint)
    for p in model.parameters():
        p.requires_grad_(False)
    eps, target = parse_eps(args.eps), class_index(args.target, meta.classes)
    prep = prepare(args.data, image_size=meta.image_size, split_file=Path(args.checkpoint).parent / "split.csv")
    split = {s: prep.indices(s) for s in ("train", "val", "test")}
    for name, limit in (("test", args.limit), ("train", args.fit_limit), ("val", args.fit_limit)):
        if limit:
            split[name] = stratified_sample(prep.dataset.labels, split[name], limit, 0)
    images = {s: to_float(torch.from_numpy(np.asarray(prep.images[i]))) for s, i in split.items()}
    labels = {s: prep.dataset.labels[i] for s, i in split.items()}
    rows = []
    if args.pgd:
        start = time.time()
        x = images["test"]
        adv = torch.cat(
            [PGD(eps, steps=20)(model, x[i : i + 128], target=target).adv_images for i in range(0, len(x), 128)]
        )
        worst, _ = worst_class(predict(model, on_grid(adv)), labels["test"], target)
        rows.append({"variant": "PGD-20 (per image)", "worst_class": worst, "seconds": round(time.time() - start)})
        print(json.dumps(rows[-1]), flush=True)
    for given in json.loads(args.variants):
        v = {**DEFAULTS, **given}
        start = time.time()
        gen = fit_variant(model, images[v["fit_on"]], labels[v["fit_on"]], target=target, eps=eps, v=v)
        x = images["test"]
        with torch.no_grad():
            adv = torch.cat(
                [
                    generate(gen, model, x[i : i + 256], target=target, eps=eps, steps=v["steps"])
                    for i in range(0, len(x), 256)
                ]
            )
        worst, _ = worst_class(predict(model, on_grid(adv)), labels["test"], target)
        rows.append({"variant": given, "worst_class": worst, "seconds": round(time.time() - start)})
        print(json.dumps(rows[-1]), flush=True)


if __name__ == "__main__":
    main()
