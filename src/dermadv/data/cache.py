"""Decode-once cache: images decoded and resized once into a memory-mapped uint8 array.

Keyed by the bytes of the files (``ImageSet.content_fingerprint``) and the size, so later epochs and runs read no
JPEG, and a replaced file is decoded again.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

from dermadv.data.dataset import ImageSet
from dermadv.errors import DataError
from dermadv.runs import atomic_path

log = logging.getLogger(__name__)

Size = tuple[int, int]  # (height, width)


def cache_root() -> Path:
    return Path(os.environ.get("DERMADV_CACHE", Path.home() / ".cache" / "dermadv"))


def stored_size(dataset: ImageSet) -> Size:
    """(H, W) of the first image as stored on disk."""
    if dataset.arrays is not None:
        return int(dataset.arrays.shape[1]), int(dataset.arrays.shape[2])
    assert dataset.paths is not None
    with Image.open(dataset.paths[0]) as im:
        return im.height, im.width


def decode_image(path: Path, size: Size | None) -> np.ndarray:
    """Decode one image to uint8 H×W×3, resized (antialiased bilinear) when ``size`` is given."""
    try:
        with Image.open(path) as im:
            rgb = im.convert("RGB")
            if size is not None and (rgb.height, rgb.width) != tuple(size):
                rgb = rgb.resize((size[1], size[0]), Image.Resampling.BILINEAR, reducing_gap=None)
            return np.asarray(rgb, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise DataError(f"cannot decode image {path}: {exc}; replace or remove the file and its metadata row") from None


def resize_array(images: np.ndarray, size: Size) -> np.ndarray:
    if images.shape[1:3] == tuple(size):
        return images
    out = np.empty((len(images), size[0], size[1], 3), dtype=np.uint8)
    for i, img in enumerate(images):
        out[i] = np.asarray(Image.fromarray(img).resize((size[1], size[0]), Image.Resampling.BILINEAR))
    return out


def cache_path(dataset: ImageSet, size: Size) -> Path:
    """Where the decoded set lives: one file per content (the bytes of every image, in order) and size."""
    key = dataset.content_fingerprint or dataset.fingerprint
    return cache_root() / "decoded" / f"{dataset.source}-{key}-{size[0]}x{size[1]}.npy"


def decoded_images(
    dataset: ImageSet, size: Size | None = None, *, cache: bool = True, progress: bool = True
) -> np.ndarray:
    """All images of ``dataset`` as uint8 N×H×W×3 at ``size`` (None: as stored), memory-mapped from the cache."""
    if size is None:
        size = stored_size(dataset)
    size = (int(size[0]), int(size[1]))
    if dataset.arrays is not None:
        return resize_array(dataset.arrays, size)
    assert dataset.paths is not None
    path = cache_path(dataset, size)
    if cache and path.exists():
        arr = np.load(path, mmap_mode="r")
        if arr.shape == (len(dataset), size[0], size[1], 3):
            return arr
        log.warning("cache %s has shape %s; rebuilding", path, arr.shape)
    paths = dataset.paths
    out = np.empty((len(paths), size[0], size[1], 3), dtype=np.uint8)

    def work(i: int) -> None:
        out[i] = decode_image(paths[i], size)

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        it = pool.map(work, range(len(paths)))
        for _ in tqdm(it, total=len(paths), desc=f"decode {size[0]}x{size[1]}", disable=not progress, leave=False):
            pass
    if not cache:
        return out
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, out)
    return np.load(path, mmap_mode="r")
