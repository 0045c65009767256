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


#: The decoder's version, part of every cache file's name: a change in how files become pixels (16-bit grey
#: scaled rather than clipped) decodes again instead of reading pixels the old decoder wrote.
DECODER = 2


def cache_root() -> Path:
    return Path(os.environ.get("DERMADV_CACHE", Path.home() / ".cache" / "dermadv"))


#: What Pillow raises for a file it cannot decode: not an image, truncated or corrupt (OSError, SyntaxError), or
#: too many pixels for a safe decode: the bomb error beyond twice Pillow's limit, the bomb warning beyond the limit
#: (an exception where warnings are errors, as the CLI makes this one).
_UNDECODABLE = (
    UnidentifiedImageError,
    OSError,
    SyntaxError,
    Image.DecompressionBombError,
    Image.DecompressionBombWarning,
)


def _decode_error(path: Path, exc: Exception) -> DataError:
    fix = "replace or remove the file and its metadata row"
    if isinstance(exc, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        return DataError(f"image {path} is too large to decode safely ({str(exc).rstrip('.')}); downscale it, or {fix}")
    return DataError(f"cannot decode image {path}: {exc}; {fix}")


def stored_size(dataset: ImageSet) -> Size:
    """(H, W) of the first image as stored on disk."""
    if dataset.arrays is not None:
        return int(dataset.arrays.shape[1]), int(dataset.arrays.shape[2])
    assert dataset.paths is not None
    path = dataset.paths[0]
    try:
        with Image.open(path) as im:
            return im.height, im.width
    except _UNDECODABLE as exc:
        raise _decode_error(path, exc) from None


def decode_image(path: Path, size: Size | None) -> np.ndarray:
    """Decode one image to uint8 H×W×3, resized (antialiased bilinear) when ``size`` is given.

    A truncated or corrupt file is refused (``DataError`` naming it), never decoded in part: Pillow's
    ``LOAD_TRUNCATED_IMAGES`` stays off, so the missing rows are not filled with grey.
    """
    try:
        with Image.open(path) as im:
            rgb = _rgb(im, path)
            if size is not None and (rgb.height, rgb.width) != tuple(size):
                rgb = rgb.resize((size[1], size[0]), Image.Resampling.BILINEAR, reducing_gap=None)
            return np.asarray(rgb, dtype=np.uint8)
    except _UNDECODABLE as exc:
        raise _decode_error(path, exc) from None


def _rgb(im: Image.Image, path: Path) -> Image.Image:
    """8-bit RGB of any mode Pillow opens. 16-bit grey (``I;16*``, or ``I`` within 0..65535) is scaled by 1/257,
    not clipped at 255 as ``convert("RGB")`` would; float images are refused (their range is unknown)."""
    if im.mode.startswith("I;16") or im.mode == "I":
        values = np.asarray(im, dtype=np.int64)
        if values.min(initial=0) < 0 or values.max(initial=0) > 65535:
            raise DataError(f"{path} is a 32-bit integer image beyond 16 bits; save it as 8- or 16-bit PNG or JPEG")
        grey = np.rint(values / 257).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    if im.mode == "F":
        raise DataError(f"{path} is a floating-point image, whose value range is unknown; save it as 8-bit PNG or JPEG")
    return im.convert("RGB")


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
    return cache_root() / "decoded" / f"{dataset.source}-{key}-{size[0]}x{size[1]}-d{DECODER}.npy"


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
        cached = _read_cache(path, (len(dataset), size[0], size[1], 3))
        if cached is not None:
            return cached
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


def _read_cache(path: Path, shape: tuple[int, ...]) -> np.ndarray | None:
    """The cached array, or None (with a warning) when it must be rebuilt: another shape, or a file cut short
    (a full disk, a copy interrupted) or otherwise unreadable as ``.npy``; the cache holds nothing else."""
    try:
        arr = np.load(path, mmap_mode="r")
    except (ValueError, OSError, EOFError) as exc:
        log.warning("decode cache %s is unreadable (%s); decoding the images again to rebuild it", path, exc)
        return None
    if arr.shape == shape and arr.dtype == np.uint8:
        return arr
    log.warning("decode cache %s holds %s %s, not uint8 %s; rebuilding it", path, arr.dtype, arr.shape, shape)
    return None
