"""The in-memory description of a labelled image collection, whatever its source."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dermadv.data.classes import CLASSES


@dataclass(frozen=True)
class ImageSet:
    """Labelled images: either files (``paths``) or a decoded uint8 array (``arrays``, N×H×W×3).

    ``labels`` index into ``classes``. ``lesion_ids`` group images of one lesion (for HAM10000;
    other sources use the image id). ``fingerprint`` identifies the content for caches and manifests.
    """

    source: str
    root: Path | None
    image_ids: list[str]
    labels: np.ndarray
    lesion_ids: list[str]
    classes: tuple[str, ...] = CLASSES
    paths: list[Path] | None = None
    arrays: np.ndarray | None = None
    fingerprint: str = ""
    predefined_split: list[str] | None = None
    extra: dict[str, object] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.image_ids)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def class_counts(self, indices: np.ndarray | None = None) -> dict[str, int]:
        labels = self.labels if indices is None else self.labels[indices]
        counts = np.bincount(labels, minlength=self.num_classes)
        return {c: int(n) for c, n in zip(self.classes, counts, strict=True)}


def fingerprint_of(parts: list[str]) -> str:
    """A short sha256 over identifying strings (ids, labels, file sizes)."""
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()[:16]
