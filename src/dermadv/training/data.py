"""Prepare data for training and evaluation: load, split, decode once, index."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from dermadv.data.cache import Size, decoded_images
from dermadv.data.dataset import ImageSet
from dermadv.data.load import load_dataset
from dermadv.data.splits import load_splits, make_splits, split_indices

log = logging.getLogger(__name__)


def split_beside(checkpoint: str | Path) -> str | None:
    """The ``split.csv`` a training run wrote beside its checkpoint, so later stages reuse its test split."""
    p = Path(checkpoint).parent / "split.csv"
    return str(p) if p.exists() else None


def start_fit(out: Path, state_name: str, *, seed: int, resume: bool, what: str) -> tuple[torch.device, Path]:
    """Common start of a resumable fit: join the process group, seed, pick the device, guard the run folder."""
    from dermadv import distributed as dd
    from dermadv.errors import RunError

    dd.init_from_env()
    torch.manual_seed(seed)
    device = dd.default_device()
    if device.type == "cuda":
        # one input size throughout: cuDNN times its convolution algorithms once and keeps the fastest
        torch.backends.cudnn.benchmark = True
    state_path = Path(out) / state_name
    # Rank 0 decides for all: a rank that looked later could see the state file rank 0 just wrote.
    if dd.broadcast_object(state_path.exists()) and not resume:
        raise RunError(f"{out} already holds {what}; pass --resume to continue it or choose another --out")
    return device, state_path


@dataclass
class Prepared:
    dataset: ImageSet
    frame: pd.DataFrame  # image_id, lesion_id, dx, split
    images: np.ndarray  # uint8 N×H×W×3 (memmap)
    size: Size

    def indices(self, split: str) -> np.ndarray:
        return split_indices(self.frame, split)


def parse_size(image_size: int | str | tuple[int, int] | None, dataset: ImageSet) -> Size | None:
    if image_size is None or image_size == "stored":
        return None
    if isinstance(image_size, tuple):
        return image_size
    if isinstance(image_size, str) and "x" in image_size:
        h, w = image_size.split("x")
        return int(h), int(w)
    s = int(image_size)
    return s, s


def prepare(
    data: str | Path | None,
    *,
    image_size: int | str | tuple[int, int] | None,
    split_file: str | Path | None = None,
    seed: int = 0,
    fractions: tuple[float, float, float] = (0.70, 0.15, 0.15),
    progress: bool = True,
) -> Prepared:
    dataset = load_dataset(data)
    frame = load_splits(split_file, dataset) if split_file else make_splits(dataset, fractions=fractions, seed=seed)
    size = parse_size(image_size, dataset)
    images = decoded_images(dataset, size, progress=progress)
    return Prepared(dataset, frame, images, (int(images.shape[1]), int(images.shape[2])))


def device_images(images: np.ndarray, device: torch.device, *, share: float = 0.3) -> torch.Tensor:
    """The uint8 N×H×W×3 set as a tensor, on the GPU when it takes under ``share`` of the GPU's memory.

    On the GPU, a training step gathers its batch there and copies nothing from the host; otherwise
    the set stays in host memory, pinned when a GPU is used so batch copies can overlap compute.
    """
    tensor = torch.from_numpy(np.require(images, requirements=["C", "W"]))  # a copy of a read-only memmap
    if device.type != "cuda":
        return tensor
    if tensor.numel() < share * torch.cuda.get_device_properties(device).total_memory:
        return tensor.to(device)
    return tensor.pin_memory()
