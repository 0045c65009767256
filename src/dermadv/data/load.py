"""One entry point for every data source (HAM10000 layout, ISIC 2018/2019, DermaMNIST npz, image folders, synthetic), and
:func:`prepare`: load, split, decode once, index."""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from dermadv.data.cache import Size, decoded_images
from dermadv.data.classes import CLASSES
from dermadv.data.dataset import ImageSet, fingerprint_of
from dermadv.data.splits import load_splits, make_splits, split_indices, unsplit_frame
from dermadv.errors import DataError

if TYPE_CHECKING:  # the data package needs no torch until a tensor is handed to it
    import torch


def load_dataset(spec: str | os.PathLike[str] | None = None) -> ImageSet:
    """Load data from ``spec``.

    ``None`` or ``"synthetic"``: the built-in synthetic set (generated on first use). A folder with a
    ``HAM10000_metadata.csv``: HAM10000 layout. A folder with an ISIC 2018 Task 3 or 2019 ground-truth CSV: that set. A
    ``.npz``: DermaMNIST. A folder of class folders: image folder.
    """
    if spec is None or str(spec) == "synthetic":
        from dermadv.data.synthetic import ensure_synthetic

        root = ensure_synthetic()
        from dermadv.data.ham10000 import load_ham10000

        ds = load_ham10000(root)
        return _with_source(ds, "synthetic")
    path = Path(spec)
    if not path.exists():
        raise DataError(
            f"data path {path} does not exist; pass a HAM10000 folder, a DermaMNIST .npz or an image folder"
        )
    if path.is_file():
        if path.suffix == ".npz":
            from dermadv.data.dermamnist import load_dermamnist

            return load_dermamnist(path)
        raise DataError(f"{path} is a file but not a .npz; pass a folder (HAM10000 layout or class folders) or a .npz")
    from dermadv.data.ham10000 import METADATA_NAME, load_ham10000

    if (path / METADATA_NAME).exists() or any(path.glob(f"*/{METADATA_NAME}")):
        ds = _load_ham10000_once(str(path.resolve()), _stamp(path))
        if any(i.startswith("SYN_") for i in ds.image_ids[:1]):
            return _with_source(ds, "synthetic")
        return ds
    from dermadv.data.isic import find_ground_truth, load_isic

    if find_ground_truth(path) is not None:
        return load_isic(path)
    from dermadv.data.folders import folder_class, load_image_folder

    if any(folder_class(p.name) is not None for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")):
        return load_image_folder(path)  # names any folder that is not a class
    raise DataError(
        f"{path} holds neither {METADATA_NAME}, an ISIC ground-truth CSV nor one folder per class "
        f"({', '.join(CLASSES)}); pass the HAM10000 folder, an ISIC 2018/2019 set, a DermaMNIST .npz or a class-folder tree"
    )


def _stamp(root: Path) -> tuple[int, ...]:
    """Modification times of the folder, its sub-folders and every metadata file: a file added, removed or
    renamed below them, or a metadata edit, gives a new listing."""
    entries = [root, *(p for p in root.iterdir() if p.is_dir() or p.suffix == ".csv")]
    return tuple(p.stat().st_mtime_ns for p in sorted(entries))


@functools.lru_cache(maxsize=4)
def _load_ham10000_once(root: str, stamp: tuple[int, ...]) -> ImageSet:
    """One HAM10000 listing per process and metadata file version: a pipeline's stages each load the data (the
    listing walks every image path, about half a second for the 10,015 images)."""
    from dermadv.data.ham10000 import load_ham10000

    return load_ham10000(Path(root))


def _with_source(ds: ImageSet, source: str) -> ImageSet:
    from dataclasses import replace

    return replace(ds, source=source)


def split_beside(checkpoint: str | Path) -> str | None:
    """The ``split.csv`` a training run wrote beside its checkpoint, so later stages reuse its test split."""
    p = Path(checkpoint).parent / "split.csv"
    return str(p) if p.exists() else None


@dataclass
class Prepared:
    dataset: ImageSet
    frame: pd.DataFrame  # image_id, lesion_id, dx, split
    images: np.ndarray  # uint8 N×H×W×3 (memmap)
    size: Size

    def indices(self, split: str) -> np.ndarray:
        return split_indices(self.frame, split)

    @property
    def split_fingerprint(self) -> str:
        """Which image is in which split: a run resumed with another split file is refused."""
        return fingerprint_of([f"{i}:{s}" for i, s in zip(self.frame["image_id"], self.frame["split"], strict=True)])


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
    unsplit: bool = False,
) -> Prepared:
    """Load ``data``, split it (``split_file`` or a new seeded split) and decode it once at ``image_size``.

    ``unsplit``: make no split; every image is in split ``all`` (external data, evaluated as a whole).
    """
    dataset = load_dataset(data)
    if unsplit:
        frame = unsplit_frame(dataset)
    elif split_file:
        frame = load_splits(split_file, dataset)
    else:
        frame = make_splits(dataset, fractions=fractions, seed=seed)
    size = parse_size(image_size, dataset)
    images = decoded_images(dataset, size, progress=progress)
    return Prepared(dataset, frame, images, (int(images.shape[1]), int(images.shape[2])))


def to_float(images_uint8: torch.Tensor) -> torch.Tensor:
    """N×H×W×3 uint8 -> N×3×H×W float in [0, 1]."""
    return images_uint8.permute(0, 3, 1, 2).float().div_(255.0)
