"""Images per second of dermadv's decode-once cache against decoding the JPEGs every epoch, and of a training step.

    python benchmarks/data_pipeline.py                       # ../shared/data/HAM10000 if present, else synthetic
    python benchmarks/data_pipeline.py --data ../shared/data/HAM10000 --size 64 --n 2000

Measured side by side in one run on the same images and batches:
  - JPEG every epoch: Pillow decode + antialiased resize of each file, stacked into a float batch
    (what a loader without a cache does in every epoch);
  - cached loader: random batches gathered from the memory-mapped uint8 cache, made float N×3×H×W
    (warm page cache: the second and later epochs of a run, and every later run);
  - one training step of ResNet-18 (forward, backward, AdamW) on such a batch, with dermadv's augmentation.
The loader is not the bottleneck when its rate is well above the training step's. No timed asserts.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]


def default_data() -> str | None:
    env = os.environ.get("DERMADV_HAM10000")
    path = Path(env) if env else REPO.parent / "shared" / "data" / "HAM10000"
    return str(path) if (path / "HAM10000_metadata.csv").is_file() else None


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=default_data(), help="HAM10000-layout folder; default: the real set or synthetic")
    p.add_argument("--size", type=int, default=64, help="square image size in pixels")
    p.add_argument("--n", type=int, default=2000, help="images used (the first n of the set)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=6, help="timed training steps")
    p.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads")
    return p.parse_args()


def load_subset(data: str | None, n: int, workdir: Path):  # type: ignore[no-untyped-def]
    """The first ``n`` images of ``data`` (or of a synthetic set drawn into ``workdir``) as an ImageSet."""
    from dermadv.data.dataset import fingerprint_of
    from dermadv.data.ham10000 import load_ham10000
    from dermadv.data.synthetic import generate_synthetic

    root = Path(data) if data else generate_synthetic(workdir / "synthetic", n_images=n, seed=0)
    ds = load_ham10000(root)
    n = min(n, len(ds))
    assert ds.paths is not None
    return replace(
        ds,
        image_ids=ds.image_ids[:n],
        labels=ds.labels[:n],
        lesion_ids=ds.lesion_ids[:n],
        paths=ds.paths[:n],
        fingerprint=fingerprint_of([ds.fingerprint, str(n)]),
    )


def jpeg_epoch_rate(paths: list[Path], order: np.ndarray, size: tuple[int, int], batch: int) -> float:
    from dermadv.data.cache import decode_image
    from dermadv.data.load import to_float

    start = time.perf_counter()
    for s in range(0, len(order), batch):
        chunk = np.stack([decode_image(paths[i], size) for i in order[s : s + batch]])
        to_float(torch.from_numpy(chunk))
    return len(order) / (time.perf_counter() - start)


def cached_epoch_rate(images: np.ndarray, order: np.ndarray, batch: int) -> float:
    from dermadv.data.load import to_float

    def epoch() -> None:
        for s in range(0, len(order), batch):
            idx = np.sort(order[s : s + batch])  # sorted reads are kinder to the page cache; the batch is a set
            to_float(torch.from_numpy(images[idx]))

    epoch()  # warm the page cache, as every epoch after the first sees it
    start = time.perf_counter()
    epoch()
    return len(order) / (time.perf_counter() - start)


def train_step_rate(images: np.ndarray, labels: np.ndarray, batch: int, steps: int) -> float:
    import torchvision

    from dermadv.data.load import to_float
    from dermadv.models.classifier import Classifier
    from dermadv.training.augment import AugmentConfig, augment

    torch.manual_seed(0)
    model = Classifier(torchvision.models.resnet18(num_classes=7), 7).to(memory_format=torch.channels_last).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    criterion = nn.CrossEntropyLoss()
    generator = torch.Generator().manual_seed(0)
    rng = np.random.default_rng(0)

    def step() -> None:
        idx = np.sort(rng.choice(len(images), size=min(batch, len(images)), replace=False))
        x = augment(to_float(torch.from_numpy(images[idx])), AugmentConfig(), generator)
        x = x.contiguous(memory_format=torch.channels_last)
        loss = criterion(model(x), torch.from_numpy(labels[idx]))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step()  # warm-up
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * min(batch, len(images)) / (time.perf_counter() - start)


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    size = (args.size, args.size)
    with tempfile.TemporaryDirectory(prefix="dermadv-bench-") as tmp:
        os.environ["DERMADV_CACHE"] = str(Path(tmp) / "cache")  # a cold, private cache for this run
        from dermadv.data.cache import decoded_images

        ds = load_subset(args.data, args.n, Path(tmp))
        assert ds.paths is not None
        order = np.random.default_rng(0).permutation(len(ds))
        print(
            f"data: {args.data or 'synthetic (generated)'}  images: {len(ds)}  size: {args.size}px  "
            f"batch: {args.batch}  torch threads: {torch.get_num_threads()}"
        )

        t0 = time.perf_counter()
        images = decoded_images(ds, size, progress=False)
        build = time.perf_counter() - t0
        jpeg = jpeg_epoch_rate(ds.paths, order, size, args.batch)
        cached = cached_epoch_rate(images, order, args.batch)
        train = train_step_rate(images, ds.labels, args.batch, args.steps)

    rows = [
        ("decode JPEGs every epoch (Pillow, 1 process)", jpeg),
        ("cached loader (memmap batches -> float)", cached),
        (f"training step (resnet18 {args.size}px, AdamW, augment)", train),
    ]
    print(f"{'':52s} {'images/s':>12s}")
    for name, rate in rows:
        print(f"{name:52s} {rate:12.1f}")
    print(f"one-time cache build ({len(ds)} images, {os.cpu_count()} threads max): {build:.1f} s")
    print(f"cached loader / JPEG decoding: {cached / jpeg:.1f}x  (goal >= 10x)")
    print(f"cached loader / training step: {cached / train:.1f}x  (> 1: the loader is not the bottleneck)")
    print(f"JPEG decoding / training step: {jpeg / train:.1f}x")


if __name__ == "__main__":
    main()
