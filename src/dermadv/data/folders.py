"""A class-per-folder image tree (``root/<class>/*.jpg``), as torchvision's ImageFolder reads it."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np

from dermadv.data.classes import CLASS_ALIASES, CLASS_NAMES, CLASSES
from dermadv.data.dataset import ImageSet, content_fingerprint_of, files_below, fingerprint_of
from dermadv.errors import DataError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def _normalise(name: str) -> str:
    """Lower case, with runs of anything but letters and digits as one space ("Basal_Cell-carcinoma")."""
    return " ".join(re.split(r"[^0-9a-z]+", name.lower())).strip()


def folder_class(name: str) -> str | None:
    """The dx code a folder name stands for (a dx code, a class name or one of its aliases, any case), or None."""
    key = _normalise(name)
    for code in CLASSES:
        if key in (code, _normalise(CLASS_NAMES[code]), *map(_normalise, CLASS_ALIASES[code])):
            return code
    return None


def _is_hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def load_image_folder(root: Path) -> ImageSet:
    """Read ``root/<class>/**/*.{jpg,jpeg,png}`` where each top folder is a dx code or a class name.

    Each image is its own lesion; image ids are the relative path without suffix, ``/`` written ``__``.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"image folder {root} not found; expected one sub-folder per class (e.g. {root}/mel/*.jpg)")
    folders = {p: folder_class(p.name) for p in sorted(root.iterdir()) if p.is_dir() and not p.name.startswith(".")}
    unknown = [p.name for p, code in folders.items() if code is None]
    if unknown:
        names = ", ".join(repr(n) for n in unknown)
        raise DataError(
            f"unknown class folder(s) {names} in {root}; folder names must be dx codes ({', '.join(CLASSES)}) "
            f"or class names ({'; '.join(CLASS_NAMES.values())}), in any case; rename them, or move folders of "
            "classes HAM10000 does not have (such as ISIC 2019's SCC) out of the folder"
        )
    paths: list[Path] = []
    labels: list[int] = []
    for folder, code in ((p, c) for p, c in folders.items() if c is not None):
        found = sorted(
            p
            for p in files_below(folder)
            if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file() and not _is_hidden(p, root)
        )
        if not found:
            log.warning("class folder %s holds no .jpg/.jpeg/.png images", folder)
        paths += found
        labels += [CLASSES.index(code)] * len(found)
    if not paths:
        raise DataError(f"no .jpg/.jpeg/.png images in class folders under {root}; expected e.g. {root}/nv/0001.jpg")
    rel = [p.relative_to(root) for p in paths]
    ids = ["__".join(r.with_suffix("").parts) for r in rel]
    if len(set(ids)) < len(ids):
        seen: dict[str, Path] = {}
        for i, r in zip(ids, rel, strict=True):
            if i in seen:
                raise DataError(f"{seen[i]} and {r} in {root} give the same image id {i!r}; rename one of them")
            seen[i] = r
    fingerprint = fingerprint_of(
        ["folders"] + [f"{r.as_posix()}:{p.stat().st_size}" for r, p in zip(rel, paths, strict=True)]
    )
    return ImageSet(
        source="folders",
        root=root,
        image_ids=ids,
        labels=np.asarray(labels, np.int64),
        lesion_ids=list(ids),
        classes=CLASSES,
        paths=paths,
        fingerprint=fingerprint,
        content_fingerprint=content_fingerprint_of(paths),
    )
