"""Study images that carry nothing but their pixels: stored PNG, one timestamp, written in random order.

An observer must not learn an image's condition from anything but how it looks. A compressed PNG of a
perturbed image is larger than its clean twin (noise compresses badly), a file written first is older,
and an ETag built from time and size gives both away. So every image is written as a PNG whose deflate
stream is *stored* (no compression): its bytes are the signature, a header that depends on width and
height only, the raw pixels, and checksums of those pixels. Its size is a function of width and height
alone, and clean and altered versions of an image must have the same width and height.
"""

from __future__ import annotations

import os
import secrets
import struct
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from dermadv.errors import DataError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def stored_png_size(height: int, width: int) -> int:
    """Byte size of :func:`encode_stored_png` for an image of this size (for checks and tests)."""
    return len(encode_stored_png(np.zeros((height, width, 3), np.uint8)))


def encode_stored_png(pixels: np.ndarray) -> bytes:
    """An 8-bit RGB PNG (IHDR, one IDAT, IEND) with uncompressed pixel rows.

    Each row carries filter type 0, and ``zlib.compress(level=0)`` splits the rows into stored blocks by
    length alone, so two images of the same width and height give files of the same size and the same
    bytes outside the pixel data and its checksums.
    """
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != 3:
        raise ValueError(f"expected uint8 pixels of shape H×W×3; got {pixels.dtype} {pixels.shape}")
    height, width = pixels.shape[:2]
    rows = np.zeros((height, 1 + 3 * width), np.uint8)
    rows[:, 1:] = pixels.reshape(height, 3 * width)
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB, deflate, no filter, no interlace
    idat = zlib.compress(rows.tobytes(), level=0)
    return PNG_SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def _read_rgb(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def check_same_size(clean: Path, adv: Path) -> None:
    """Refuse a pair whose versions differ in width or height: the file size would tell them apart."""
    with Image.open(clean) as a, Image.open(adv) as b:
        if a.size != b.size:
            raise DataError(
                f"{clean} is {a.size[1]}×{a.size[0]} but {adv} is {b.size[1]}×{b.size[0]}; the clean and "
                "adversarial versions of an image must have the same size (rerun `dermadv attack run`)"
            )


def write_study_images(jobs: Sequence[tuple[Path, Path]], *, mtime: float) -> None:
    """Write each ``(source, destination)`` as a stored PNG, in random order, all with the same mtime.

    Random order keeps the creation order (and inode numbers) from following the plan; one modification
    time keeps timestamps from telling which file of a pair was written first.
    """
    order = list(jobs)
    secrets.SystemRandom().shuffle(order)
    for source, destination in order:
        destination.write_bytes(encode_stored_png(_read_rgb(source)))
        os.utime(destination, (mtime, mtime))  # here, not in plan order: setting it updates the change time
