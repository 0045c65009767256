"""Dermoscopy artefacts as natural perturbations: accuracy and the share called ``nv`` per class, 5 severities.

    python benchmarks/artefacts_real.py --checkpoint runs/recipe/model.safetensors \
        --data ../shared/data/HAM10000 --limit 288 --out runs/artefacts.csv

Each artefact of :mod:`dermadv.attacks.artefacts` (hair, ruler, ink, vignette, bubbles, jpeg, blur, colour-cast)
is applied at severities 1–5 to a class-stratified sample of the test split (the sweep's sample, seed 0) at the
classifier's input size, rounded to 8 bits and classified: the same evaluation as the attacks, in one process
(``dermadv attack run --method hair --param severity=3`` writes one such run as a folder). No timed asserts.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
import torch

import dermadv.attacks  # noqa: F401  (registers every attack)
from dermadv.attacks.artefacts import SEVERITIES
from dermadv.attacks.registry import create_attack
from dermadv.data.classes import class_index
from dermadv.data.load import prepare, to_float
from dermadv.data.splits import stratified_sample
from dermadv.models.checkpoints import load_checkpoint

ARTEFACTS = ("hair", "ruler", "ink", "vignette", "bubbles", "jpeg", "blur", "colour-cast")


@torch.no_grad()
def predict(model: torch.nn.Module, images: torch.Tensor) -> np.ndarray:
    return torch.cat([model(images[i : i + 128]).argmax(1) for i in range(0, len(images), 128)]).numpy()


def row(name: str, severity: int, pred: np.ndarray, labels: np.ndarray, classes: tuple[str, ...], target: int) -> dict:
    out: dict[str, object] = {"artefact": name, "severity": severity, "accuracy": float((pred == labels).mean())}
    out["called_nv"] = float((pred == target).mean())
    for c, cls in enumerate(classes):
        if (labels == c).any():
            out[f"nv_share_{cls}"] = float((pred[labels == c] == target).mean())
    others = [v for k, v in out.items() if k.startswith("nv_share_") and k != f"nv_share_{classes[target]}"]
    out["largest_nv_share_other_class"] = max(others)  # type: ignore[type-var]
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--data", default=None, help="default: the built-in synthetic set")
    parser.add_argument("--limit", type=int, default=288, help="class-stratified test sample (seed 0)")
    parser.add_argument("--target", default="nv")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None, help="CSV of every row")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model, meta = load_checkpoint(args.checkpoint)
    target = class_index(args.target, meta.classes)
    prep = prepare(args.data, image_size=meta.image_size, split_file=Path(args.checkpoint).parent / "split.csv")
    idx = stratified_sample(prep.dataset.labels, prep.indices("test"), args.limit, 0)
    images = to_float(torch.from_numpy(np.asarray(prep.images[idx])))
    labels = prep.dataset.labels[idx]
    rows = [row("none", 0, predict(model, images), labels, tuple(meta.classes), target)]
    for name in ARTEFACTS:
        for severity in SEVERITIES:
            attack = create_attack(name, severity=severity)
            adv = torch.cat([attack.perturb(model, x, labels=None, target=None) for x in images.split(128)])
            adv = (adv.clamp(0, 1) * 255).round() / 255
            rows.append(row(name, severity, predict(model, adv), labels, tuple(meta.classes), target))
    print(f"{len(idx)} test images; accuracy / share called {args.target} / largest share of another class called it")
    for r in rows:
        print(
            f"{r['artefact']:<12} {r['severity']}  acc {100 * r['accuracy']:5.1f}%  "
            f"{args.target} {100 * r['called_nv']:5.1f}%  other class max {100 * r['largest_nv_share_other_class']:5.1f}%"
        )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with args.out.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)


if __name__ == "__main__":
    main()
