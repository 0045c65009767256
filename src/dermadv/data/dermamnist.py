"""DermaMNIST (MedMNIST v2/v3): HAM10000 resized to 28, 64, 128 or 224 px, with a predefined split.

Yang et al., MedMNIST v2, Sci Data 10, 41 (2023). doi:10.1038/s41597-022-01721-8. Files on zenodo
record 10519652 (``dermamnist.npz`` for 28 px, ``dermamnist_<size>.npz`` otherwise).
"""

from __future__ import annotations

import hashlib
import logging
import zipfile
from pathlib import Path

import numpy as np

from dermadv.data.classes import CLASSES, MEDMNIST_ORDER, remap_indices
from dermadv.data.dataset import ImageSet, fingerprint_of
from dermadv.errors import ConfigError, DataError

log = logging.getLogger(__name__)

SIZES = (28, 64, 128, 224)
SPLITS = ("train", "val", "test")
ZENODO = "https://zenodo.org/records/10519652"


def npz_name(size: int) -> str:
    """MedMNIST's file name for a size: ``dermamnist.npz`` (28 px) or ``dermamnist_<size>.npz``."""
    return "dermamnist.npz" if size == 28 else f"dermamnist_{size}.npz"


def _check_arrays(path: Path, split: str, images: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Validate one split; return its labels as a flat int64 vector."""
    where = f"{path.name}: {split}_images"
    if images.ndim != 4 or images.shape[3] != 3 or images.shape[1] != images.shape[2]:
        raise DataError(f"{where} has shape {images.shape}; expected N×S×S×3 (RGB DermaMNIST)")
    if images.shape[1] not in SIZES:
        raise DataError(f"{where} are {images.shape[1]} px; DermaMNIST comes in {', '.join(map(str, SIZES))} px")
    if images.dtype != np.uint8:
        raise DataError(f"{where} have dtype {images.dtype}; expected uint8")
    if labels.ndim not in (1, 2) or (labels.ndim == 2 and labels.shape[1] != 1) or len(labels) != len(images):
        raise DataError(
            f"{path.name}: {split}_labels has shape {labels.shape}; expected ({len(images)}, 1) to match the images"
        )
    flat = labels.reshape(-1).astype(np.int64)
    if flat.size and (flat.min() < 0 or flat.max() >= len(MEDMNIST_ORDER)):
        raise DataError(
            f"{path.name}: {split}_labels hold values {flat.min()}..{flat.max()}; "
            f"expected 0..{len(MEDMNIST_ORDER) - 1} (MedMNIST order {', '.join(MEDMNIST_ORDER)})"
        )
    return flat


def load_dermamnist(path: Path) -> ImageSet:
    """Read a MedMNIST ``dermamnist*.npz`` into an in-memory ImageSet with its train/val/test split.

    Labels are mapped from MedMNIST's order to ``CLASSES``. Each image is its own lesion: the
    npz has no lesion ids, so a lesion-grouped re-split is impossible; use ``predefined_split``.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(
            f"DermaMNIST file {path} not found; run `dermadv data download dermamnist --size 64` "
            f"or download it from {ZENODO}"
        )
    with open(path, "rb") as f:
        magic = f.read(6)
    if not magic.startswith((b"PK", b"\x93NUMPY")):
        # np.load would take it for a pickle and suggest allow_pickle, which is never the fix here
        raise DataError(f"{path} is not a .npz archive (not a zip of arrays); download it again from {ZENODO}")
    try:
        npz = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        reason = "it holds Python objects" if "pickle" in str(exc) else str(exc)
        raise DataError(f"{path} is not a readable .npz file ({reason}); download it again from {ZENODO}") from None
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise DataError(f"{path} holds a single array, not a MedMNIST .npz with train/val/test keys")
    with npz:
        wanted = [f"{s}_{k}" for s in SPLITS for k in ("images", "labels")]
        missing = [k for k in wanted if k not in npz.files]
        if missing:
            raise DataError(
                f"{path} lacks {', '.join(missing)}; a DermaMNIST .npz has {', '.join(wanted)} (found: "
                f"{', '.join(npz.files) or 'nothing'})"
            )
        images, labels, split, ids = [], [], [], []
        digest = hashlib.sha256()
        for s in SPLITS:
            x, y = npz[f"{s}_images"], npz[f"{s}_labels"]
            flat = _check_arrays(path, s, x, y)
            images.append(x)
            labels.append(flat)
            split += [s] * len(x)
            ids += [f"dermamnist_{s}_{i:05d}" for i in range(1, len(x) + 1)]
            digest.update(np.ascontiguousarray(x).data)
            digest.update(flat.tobytes())
    sizes = {x.shape[1] for x in images}
    if len(sizes) > 1:
        raise DataError(f"{path}: the splits have different image sizes {sorted(sizes)}; the file is corrupt")
    mapping = np.asarray(remap_indices(MEDMNIST_ORDER, CLASSES), np.int64)
    arrays = np.concatenate(images)
    size = arrays.shape[1]
    log.info("read %d DermaMNIST images of %d px from %s", len(arrays), size, path)
    return ImageSet(
        source="dermamnist",
        root=path,
        image_ids=ids,
        labels=mapping[np.concatenate(labels)],
        lesion_ids=list(ids),
        classes=CLASSES,
        arrays=arrays,
        fingerprint=fingerprint_of(["dermamnist", str(size), digest.hexdigest()]),
        predefined_split=split,
        extra={"size": size, "path": str(path)},
    )


def download_dermamnist(size: int, out_dir: Path) -> Path:
    """Download ``dermamnist[_<size>].npz`` into ``out_dir`` through the ``medmnist`` package; return its path."""
    if size not in SIZES:
        raise ConfigError(f"DermaMNIST comes in sizes {', '.join(map(str, SIZES))}; got --size {size}")
    out_dir = Path(out_dir)
    target = out_dir / npz_name(size)
    manual = f"download {target.name} by hand from {ZENODO} (files/{target.name}?download=1) and pass --data {target}"
    try:
        import medmnist
    except ImportError:
        raise DataError(
            f"the medmnist package is not installed (pip install 'dermadv[medmnist]'); or {manual}"
        ) from None
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        medmnist.DermaMNIST(split="train", download=True, size=size, root=str(out_dir))
    except Exception as exc:  # medmnist turns every network error into a bare RuntimeError
        cause = exc.__context__ or exc  # medmnist's own message is a multi-line how-to; the cause is the news
        reason = " ".join(str(cause).split())[:160] or type(cause).__name__
        raise DataError(f"could not download DermaMNIST {size} px into {out_dir} ({reason}); {manual}") from None
    if not target.is_file():
        raise DataError(f"medmnist reported success but {target} is missing; {manual}")
    return target
