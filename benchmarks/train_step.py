"""Training images per second of dermadv's loop against a plain torchvision-style loop, measured in one run.

    python benchmarks/train_step.py                          # synthetic images, resnet18 at 64 px, ~1-2 min on 2 cores
    python benchmarks/train_step.py --data ../shared/data/HAM10000 --arch resnet18 --size 64 --n 1024

Both loops train the same architecture from the same initial weights, with the same images, batch size,
optimizer (AdamW) and a dermoscopy augmentation of similar cost, for whole epochs:
  - dermadv: ``dermadv.training.classifier.train_one_epoch`` (uint8 set in memory, batches gathered by
    index and made float on the fly, one batched affine warp + colour jitter, channels_last, a
    class-weighted label-smoothed loss, cosine schedule step, one host sync per epoch);
  - plain: ``DataLoader(TensorDataset(float images, labels), shuffle=True)`` and a
    ``torchvision.transforms.v2`` pipeline (flips, rotation, random resized crop, colour jitter) applied per
    batch, then forward, cross-entropy, backward, AdamW step, reading the loss each step.
Epochs alternate between the loops so that a change in machine load hits both; the median epoch is
reported, in wall-clock and in process CPU time (images per CPU-second, steadier when other jobs share
the cores). No timed asserts.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import torchvision
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torchvision.transforms import v2


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=None, help="HAM10000-layout folder; default: a synthetic set drawn in a tmp dir")
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--size", type=int, default=64, help="square image size in pixels")
    p.add_argument("--n", type=int, default=256, help="training images per epoch")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--epochs", type=int, default=3, help="timed epochs per loop (after one warm-up epoch each)")
    p.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads")
    return p.parse_args()


def load_images(data: str | None, n: int, size: int, workdir: Path) -> tuple[np.ndarray, np.ndarray]:
    from dermadv.data.cache import decoded_images
    from dermadv.data.ham10000 import load_ham10000
    from dermadv.data.synthetic import generate_synthetic

    root = Path(data) if data else generate_synthetic(workdir / "synthetic", n_images=n, seed=0, size=(size, size))
    ds = load_ham10000(root)
    images = decoded_images(ds, (size, size), progress=False)
    return np.array(images[:n]), ds.labels[:n]  # a writable in-memory copy


def dermadv_epochs(
    arch: str,
    images: np.ndarray,
    labels: np.ndarray,
    batch: int,
    epochs: int,
    workdir: Path,
    *,
    channels_last: bool | None = None,
) -> Iterator[tuple[float, float]]:
    """Per-epoch (wall, CPU) images/s of ``train_one_epoch``; yields after each epoch so the loops can alternate."""
    from dermadv.models.classifier import build_classifier
    from dermadv.training.classifier import TrainConfig, class_weights, lr_lambda, train_one_epoch, use_channels_last

    cfg = TrainConfig(
        out=workdir / "run",
        arch=arch,
        image_size=images.shape[1],
        batch_size=batch,
        channels_last=channels_last,
        progress=False,
    )
    torch.manual_seed(0)
    model = build_classifier(arch, 7)
    if use_channels_last(cfg, torch.device("cpu")):  # as fit() does
        model = model.to(memory_format=torch.channels_last)
    criterion = nn.CrossEntropyLoss(weight=class_weights(labels, 7, cfg.class_balance), label_smoothing=0.1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = -(-len(images) // batch) * (epochs + 1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_lambda(s, total=steps, warmup=steps // 10))
    images_t, labels_t = torch.from_numpy(images), torch.from_numpy(labels)
    gen = torch.Generator().manual_seed(0)
    device = torch.device("cpu")
    for epoch in range(epochs + 1):
        order = torch.randperm(len(images), generator=gen)
        start, cpu = time.perf_counter(), time.process_time()
        train_one_epoch(
            model, criterion, optimizer, scheduler, images_t, labels_t, order, cfg, device, gen, None, epoch
        )
        yield len(images) / (time.perf_counter() - start), len(images) / (time.process_time() - cpu)


def plain_epochs(
    arch: str, images: np.ndarray, labels: np.ndarray, batch: int, epochs: int
) -> Iterator[tuple[float, float]]:
    """Per-epoch (wall, CPU) images/s of a textbook torchvision loop."""
    size = images.shape[1]
    torch.manual_seed(0)
    model = torchvision.models.get_model(arch, num_classes=7)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    transform = v2.Compose(
        [
            v2.RandomHorizontalFlip(),
            v2.RandomVerticalFlip(),
            v2.RandomRotation(180),
            v2.RandomResizedCrop(size, scale=(0.7, 1.0), antialias=True),
            v2.ColorJitter(brightness=0.15, contrast=0.15, saturation=0.15),
            v2.Normalize(mean, std),
        ]
    )
    dataset = TensorDataset(torch.from_numpy(images).permute(0, 3, 1, 2).float().div(255), torch.from_numpy(labels))
    loader = DataLoader(dataset, batch_size=batch, shuffle=True, generator=torch.Generator().manual_seed(0))
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    model.train()
    for _ in range(epochs + 1):
        start, cpu = time.perf_counter(), time.process_time()
        for x, y in loader:
            loss = criterion(model(transform(x)), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            loss.item()
        yield len(images) / (time.perf_counter() - start), len(images) / (time.process_time() - cpu)


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="dermadv-bench-") as tmp:
        os.environ["DERMADV_CACHE"] = str(Path(tmp) / "cache")
        images, labels = load_images(args.data, args.n, args.size, Path(tmp))
        print(
            f"data: {args.data or 'synthetic (generated)'}  images/epoch: {len(images)}  {args.arch} at {args.size}px  "
            f"batch: {args.batch}  torch threads: {torch.get_num_threads()}"
        )
        loops = {
            "dermadv train_one_epoch (default)": dermadv_epochs(
                args.arch, images, labels, args.batch, args.epochs, Path(tmp)
            ),
            "dermadv, channels_last forced on": dermadv_epochs(
                args.arch, images, labels, args.batch, args.epochs, Path(tmp), channels_last=True
            ),
            "plain DataLoader + transforms.v2": plain_epochs(args.arch, images, labels, args.batch, args.epochs),
        }
        rates: dict[str, list[tuple[float, float]]] = {name: [] for name in loops}
        for i, epoch_rates in enumerate(zip(*loops.values(), strict=True)):
            if i > 0:  # epoch 0 warms every loop up
                for name, rate in zip(loops, epoch_rates, strict=True):
                    rates[name].append(rate)
    medians = {
        name: (statistics.median(r[0] for r in rows), statistics.median(r[1] for r in rows))
        for name, rows in rates.items()
    }
    print(f"{'':36s} {'wall img/s':>11s} {'CPU img/s':>10s}  wall per epoch")
    for name, rows in rates.items():
        print(f"{name:36s} {medians[name][0]:11.1f} {medians[name][1]:10.1f}  {', '.join(f'{r[0]:.1f}' for r in rows)}")
    plain = medians["plain DataLoader + transforms.v2"]
    for name in list(loops)[:2]:
        wall, cpu = (medians[name][k] / plain[k] for k in (0, 1))
        print(f"{name} / plain: wall {wall:.2f}x, CPU time {cpu:.2f}x  (goal >= 1.0x)")
    print("(medians over epochs; on a shared machine the CPU-time ratio is the steadier one)")


if __name__ == "__main__":
    main()
