"""CPU training throughput of a 2-process gloo run (torchrun) against a 1-process run, measured side by side.

    python benchmarks/distributed_scaling.py
    python benchmarks/distributed_scaling.py --arch resnet18 --image-size 32 --images 512 --epochs 3

Both runs are ``dermadv train`` on the same subset of the built-in synthetic set, with the same
per-process batch and CPU threads per process (so the 2-process run uses twice the cores and takes twice
the images per optimiser step, as DDP does on GPUs). Throughput is training images per second over the
epochs after the first (start-up, decoding and validation left out), read from each run's
``history.csv``. On a machine shared with other work the figures move; no timed asserts.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd


def train_rate(root: Path, name: str, *, processes: int, threads: int, config: Path) -> tuple[float, float]:
    """Run ``dermadv train`` with ``processes`` ranks of ``threads`` threads; return (images/s, wall seconds)."""
    out = root / name
    cmd = [sys.executable, "-m"]
    if processes > 1:
        cmd += ["torch.distributed.run", "--standalone", "--nproc-per-node", str(processes), "-m"]
    cmd += ["dermadv", "train", "--out", str(out), "--config", str(config)]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    env.pop("WORLD_SIZE", None)
    if sys.platform == "linux":
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    history = pd.read_csv(out / "history.csv")
    later = history[history["epoch"] > 0] if len(history) > 1 else history  # epoch 0 warms up
    return float((later["images_per_s"]).median()), wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--images", type=int, default=512, help="training images per epoch")
    parser.add_argument("--batch-size", type=int, default=32, help="per process")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads per process")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="dermadv-scaling-") as tmp:
        root = Path(tmp)
        config = root / "train.yaml"
        config.write_text(
            f"arch: {args.arch}\nimage_size: {args.image_size}\nepochs: {args.epochs}\n"
            f"batch_size: {args.batch_size}\nmax_train_images: {args.images}\npatience: {args.epochs + 1}\n"
            "progress: false\n"
        )
        rates = {}
        for processes in (1, 2):
            rates[processes], wall = train_rate(
                root, f"p{processes}", processes=processes, threads=args.threads, config=config
            )
            label = "1 process" if processes == 1 else "2 processes (gloo)"
            print(f"{label:18s} × {args.threads} thread(s): {rates[processes]:8.1f} images/s  (wall {wall:.1f} s)")

    print(f"\n{args.arch} at {args.image_size} px, {args.images} images/epoch, batch {args.batch_size} per process")
    print(f"2-process / 1-process throughput: {rates[2] / rates[1]:.2f}")


if __name__ == "__main__":
    main()
