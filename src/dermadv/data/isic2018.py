"""ISIC 2018 Task 3 layout: a ground-truth CSV (``image,MEL,NV,BCC,AKIEC,BKL,DF,VASC``, one-hot) and
``<image>.jpg`` anywhere below the folder.

The Task 3 training images are HAM10000's. A ``*LesionGroupings*.csv`` (``image,lesion_id,…``, published with the
training set) anywhere below the folder groups them by lesion; without one each image is its own lesion (the
validation and test sets publish no grouping), and splits cannot keep a lesion's images together.

Codella et al. (2019), arXiv:1902.03368; Tschandl et al. (2018), Sci Data 5:180161.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd

from dermadv.data.classes import CLASSES, ISIC2018_ORDER
from dermadv.data.dataset import ImageSet, content_fingerprint_of, fingerprint_of
from dermadv.data.ham10000 import index_images
from dermadv.errors import DataError

log = logging.getLogger(__name__)

#: the ground truth's class columns, in its order
COLUMNS = tuple(c.upper() for c in ISIC2018_ORDER)
GROUND_TRUTH_GLOB = "*GroundTruth*.csv"
GROUPINGS_GLOB = "*LesionGroupings*.csv"


def _header(path: Path) -> list[str]:
    with path.open(encoding="utf-8", errors="replace") as f:
        return [c.strip() for c in f.readline().split(",")]


def is_ground_truth(path: Path) -> bool:
    header = _header(path)
    return bool(header) and header[0] == "image" and all(c in header for c in COLUMNS)


def find_ground_truth(root: Path) -> Path | None:
    """The one ISIC 2018 Task 3 ground-truth CSV below ``root``, or None; several are refused."""
    found = [p for p in sorted(root.rglob(GROUND_TRUTH_GLOB)) if p.is_file() and is_ground_truth(p)]
    if len(found) > 1:
        names = ", ".join(str(p.relative_to(root)) for p in found)
        raise DataError(
            f"{root} holds {len(found)} ISIC 2018 ground-truth CSVs ({names}); pass the folder of one set "
            "(training, validation or test) with its images"
        )
    return found[0] if found else None


def read_ground_truth(csv_path: Path) -> tuple[list[str], np.ndarray]:
    """Image ids and labels (indices into dermadv's ``CLASSES``) of a one-hot ground-truth CSV."""
    try:
        df = pd.read_csv(csv_path, dtype={"image": str})
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        raise DataError(f"cannot parse {csv_path}: {exc}; is it an ISIC 2018 Task 3 ground-truth CSV?") from None
    df.columns = [c.strip() for c in df.columns]
    if len(df) == 0:
        raise DataError(f"{csv_path} has no rows")
    values = df[list(COLUMNS)].to_numpy(dtype=np.float64)
    one_hot = np.isin(values, (0.0, 1.0)).all(axis=1) & (values.sum(axis=1) == 1)
    if not one_hot.all():
        bad = np.flatnonzero(~one_hot)
        raise DataError(
            f"{csv_path} has {len(bad)} row(s) that are not one-hot over {','.join(COLUMNS)} (first at row "
            f"{bad[0] + 2}, image {df['image'].iloc[bad[0]]}); each image needs exactly one 1.0"
        )
    ids = [str(i).strip() for i in df["image"]]
    dup = pd.Series(ids)[pd.Series(ids).duplicated()]
    if len(dup):
        raise DataError(f"{csv_path} lists image {dup.iloc[0]} more than once; each image must appear once")
    order = [CLASSES.index(c) for c in ISIC2018_ORDER]
    labels = np.array([order[j] for j in values.argmax(axis=1)], dtype=np.int64)
    return ids, labels


def read_groupings(root: Path) -> dict[str, str]:
    """image -> lesion_id from a ``*LesionGroupings*.csv`` below ``root`` (empty when there is none)."""
    found = sorted(root.rglob(GROUPINGS_GLOB))
    if not found:
        return {}
    try:
        df = pd.read_csv(found[0], dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        raise DataError(f"cannot parse {found[0]}: {exc}; is it ISIC 2018's lesion groupings CSV?") from None
    df.columns = [c.strip() for c in df.columns]
    if not {"image", "lesion_id"} <= set(df.columns):
        raise DataError(
            f"{found[0]} lacks column image or lesion_id; found {', '.join(df.columns)} — "
            "ISIC 2018's lesion groupings CSV has image,lesion_id,diagnosis_confirm_type"
        )
    return {i.strip(): lesion.strip() for i, lesion in zip(df["image"], df["lesion_id"], strict=True) if lesion.strip()}


def load_isic2018(root: str | os.PathLike[str]) -> ImageSet:
    """Load an ISIC 2018 Task 3 set (training, validation or test) with its ground truth."""
    root = Path(root)
    csv_path = find_ground_truth(root)
    if csv_path is None:
        raise DataError(f"no ISIC 2018 Task 3 ground-truth CSV ({GROUND_TRUTH_GLOB}) under {root}")
    ids, labels = read_ground_truth(csv_path)
    index = index_images(root)
    missing = [i for i in ids if i not in index]
    if missing:
        raise DataError(
            f"{len(missing)} of {len(ids)} images listed in {csv_path.name} are missing under {root} "
            f"(first: {', '.join(missing[:5])}); put <image>.jpg files anywhere under the data folder"
        )
    groupings = read_groupings(root)
    lesions = [groupings.get(i, i) for i in ids]
    grouped = sum(i in groupings for i in ids)
    if grouped < len(ids):
        log.warning(
            "%d of %d images of %s have no lesion grouping: each is its own lesion, so a split may put images of "
            "one lesion on both sides (ISIC 2018 publishes groupings for its training set only)",
            len(ids) - grouped,
            len(ids),
            csv_path.name,
        )
    paths = [index[i] for i in ids]
    sizes = [str(p.stat().st_size) for p in paths]
    fp = fingerprint_of(["isic2018", *ids, *map(str, labels.tolist()), *lesions, *sizes])
    return ImageSet(
        source="isic2018",
        root=root,
        image_ids=ids,
        labels=labels,
        lesion_ids=lesions,
        paths=paths,
        fingerprint=fp,
        content_fingerprint=content_fingerprint_of(paths),
        extra={"metadata": str(csv_path), "lesions_grouped": grouped},
    )
