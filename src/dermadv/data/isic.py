"""ISIC challenge layout: a one-hot ground-truth CSV and ``<image>.jpg`` anywhere below the folder.

ISIC 2018 Task 3 (``image,MEL,NV,BCC,AKIEC,BKL,DF,VASC``; its training images are HAM10000's) and ISIC 2019
(``image,MEL,NV,BCC,AK,BKL,DF,VASC,SCC,UNK``): images of a class HAM10000 lacks (SCC, UNK) are left out, with a
warning that counts them. A ``*LesionGroupings*.csv`` (2018) or ``*Metadata*.csv`` (2019) with ``image`` and
``lesion_id`` columns anywhere below the folder groups images by lesion; an image without one is its own lesion
(the 2018 validation and test sets publish no grouping), and splits cannot keep such a lesion's images together.

Codella et al. (2019), arXiv:1902.03368; Tschandl et al. (2018), Sci Data 5:180161; Combalia et al. (2019),
arXiv:1908.02288.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from fnmatch import fnmatch
from pathlib import Path

import numpy as np
import pandas as pd

from dermadv.data.classes import CLASSES
from dermadv.data.dataset import ImageSet, content_fingerprint_of, files_below, fingerprint_of
from dermadv.data.folders import folder_class
from dermadv.data.ham10000 import index_images
from dermadv.errors import DataError

log = logging.getLogger(__name__)

GROUND_TRUTH_GLOB = "*GroundTruth*.csv"
GROUPINGS_GLOBS = ("*LesionGroupings*.csv", "*Metadata*.csv")
#: ground-truth columns of classes HAM10000 lacks (ISIC 2019's squamous cell carcinoma and "none of the others")
OTHER_CLASSES = ("SCC", "UNK")


def _header(path: Path) -> list[str]:
    with path.open(encoding="utf-8-sig", errors="replace") as f:  # -sig: a byte-order mark, as Excel writes
        return [c.strip() for c in f.readline().split(",")]


def class_columns(header: list[str]) -> dict[str, str | None] | None:
    """Each class column with the HAM10000 code it stands for (None: a class HAM10000 lacks), or None when the
    header is not an ISIC ground truth's (``image`` first, class columns covering all seven HAM10000 classes).
    Other columns (say a ``score_weight``) are not classes and are ignored."""
    if len(header) < 2 or header[0] != "image":
        return None
    columns: dict[str, str | None] = {}
    for name in header[1:]:
        code = folder_class(name)
        if code is not None or name.upper() in OTHER_CLASSES:
            columns[name] = code
    return columns if set(CLASSES) <= set(columns.values()) else None


def find_ground_truth(root: Path) -> Path | None:
    """The one ISIC ground-truth CSV below ``root`` (linked folders followed), or None when no file is named
    like one; a file so named whose header is not one, and several ground truths, are refused."""
    candidates = [p for p in files_below(root) if fnmatch(p.name, GROUND_TRUTH_GLOB)]
    found = [p for p in candidates if class_columns(_header(p)) is not None]
    if candidates and not found:
        header = ",".join(_header(candidates[0]))
        raise DataError(
            f"{candidates[0]} is named as an ISIC ground truth but its header ({_snippet(header)}) is not one; "
            "expected image, then one-hot columns MEL, NV, BCC, AKIEC (or AK), BKL, DF, VASC"
        )
    if len(found) > 1:
        names = ", ".join(str(p.relative_to(root)) for p in found)
        raise DataError(
            f"{root} holds {len(found)} ISIC ground-truth CSVs ({names}); pass the folder of one set "
            "(training, validation or test) with its images"
        )
    return found[0] if found else None


def _snippet(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def read_ground_truth(csv_path: Path) -> tuple[list[str], np.ndarray]:
    """Image ids and labels (indices into dermadv's ``CLASSES``) of a one-hot ground-truth CSV, without the
    images of classes HAM10000 lacks."""
    try:
        df = pd.read_csv(csv_path, dtype={"image": str}, encoding="utf-8-sig")
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        raise DataError(f"cannot parse {csv_path}: {exc}; is it an ISIC ground-truth CSV?") from None
    df.columns = [c.strip() for c in df.columns]
    columns = class_columns(list(df.columns))
    if columns is None or len(df) == 0:
        raise DataError(f"{csv_path} is not an ISIC ground truth (image, then one-hot class columns) or has no rows")
    names = list(columns)
    values = df[names].to_numpy(dtype=np.float64)
    one_hot = np.isin(values, (0.0, 1.0)).all(axis=1) & (values.sum(axis=1) == 1)
    if not one_hot.all():
        bad = np.flatnonzero(~one_hot)
        raise DataError(
            f"{csv_path} has {len(bad)} row(s) that are not one-hot over {','.join(names)} (first at row "
            f"{bad[0] + 2}, image {df['image'].iloc[bad[0]]}); each image needs exactly one 1.0"
        )
    ids = [str(i).strip() for i in df["image"]]
    dup = pd.Series(ids)[pd.Series(ids).duplicated()]
    if len(dup):
        raise DataError(f"{csv_path} lists image {dup.iloc[0]} more than once; each image must appear once")
    codes = [columns[names[j]] for j in values.argmax(axis=1)]
    left_out = Counter(names[j] for j, code in zip(values.argmax(axis=1), codes, strict=True) if code is None)
    if left_out:
        counts = ", ".join(f"{name}: {n}" for name, n in sorted(left_out.items()))
        log.warning(
            "left out %d of %d images of %s: classes HAM10000 lacks (%s)", sum(left_out.values()), len(ids),
            csv_path.name, counts,
        )  # fmt: skip
    kept = [i for i, code in enumerate(codes) if code is not None]
    if not kept:
        raise DataError(f"{csv_path} has no image of a HAM10000 class ({', '.join(CLASSES)})")
    labels = np.array([CLASSES.index(codes[i]) for i in kept], dtype=np.int64)  # type: ignore[arg-type]
    return [ids[i] for i in kept], labels


def read_groupings(root: Path) -> dict[str, str]:
    """image -> lesion_id from the first CSV below ``root`` that has both columns (ISIC 2018's lesion groupings,
    ISIC 2019's metadata); empty when there is none. Blank lesion ids are left out."""
    files = list(files_below(root))
    for pattern in GROUPINGS_GLOBS:
        for path in (p for p in files if fnmatch(p.name, pattern)):
            if not {"image", "lesion_id"} <= set(_header(path)):
                continue
            try:
                df = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
            except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
                raise DataError(
                    f"cannot parse {path}: {exc}; is it an ISIC lesion groupings or metadata CSV?"
                ) from None
            df.columns = [c.strip() for c in df.columns]
            pairs = zip(df["image"], df["lesion_id"], strict=True)
            return {image.strip(): lesion.strip() for image, lesion in pairs if lesion.strip()}
    return {}


def load_isic(root: str | os.PathLike[str]) -> ImageSet:
    """Load an ISIC 2018 Task 3 or ISIC 2019 set (training, validation or test) with its ground truth."""
    root = Path(root)
    csv_path = find_ground_truth(root)
    if csv_path is None:
        raise DataError(f"no ISIC ground-truth CSV ({GROUND_TRUTH_GLOB}) under {root}")
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
            "%d of %d images of %s have no lesion id: each is its own lesion, so a split may put images of one "
            "lesion on both sides (ISIC publishes lesion ids for its training sets only)",
            len(ids) - grouped,
            len(ids),
            csv_path.name,
        )
    paths = [index[i] for i in ids]
    sizes = [str(p.stat().st_size) for p in paths]
    fp = fingerprint_of(["isic", *ids, *map(str, labels.tolist()), *lesions, *sizes])
    return ImageSet(
        source="isic",
        root=root,
        image_ids=ids,
        labels=labels,
        lesion_ids=lesions,
        paths=paths,
        fingerprint=fp,
        content_fingerprint=content_fingerprint_of(paths),
        extra={"metadata": str(csv_path), "lesions_grouped": grouped},
    )
