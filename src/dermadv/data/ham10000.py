"""HAM10000 reader: ``HAM10000_metadata.csv`` plus ``<image_id>.jpg`` found anywhere under the root.

Tschandl, Rosendahl & Kittler (2018), Sci Data 5:180161. doi:10.1038/sdata.2018.161.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from dermadv.data.classes import CLASSES
from dermadv.data.dataset import ImageSet, content_fingerprint_of, files_below, fingerprint_of
from dermadv.errors import DataError

METADATA_NAME = "HAM10000_metadata.csv"
REQUIRED_COLUMNS = ("lesion_id", "image_id", "dx")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def find_metadata(root: Path) -> Path:
    direct = root / METADATA_NAME
    if direct.exists():
        return direct
    found = sorted(root.rglob(METADATA_NAME))
    if found:
        return found[0]
    raise DataError(
        f"no {METADATA_NAME} under {root}; point --data at the folder holding the HAM10000 metadata CSV and images"
    )


def index_images(root: Path) -> dict[str, Path]:
    """Map image stem -> path for every image file under ``root`` (any sub-folder, linked folders followed)."""
    index: dict[str, Path] = {}
    for path in files_below(root):
        if path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith("."):
            index.setdefault(path.stem, path)
    return index


def read_metadata(csv_path: Path) -> pd.DataFrame:
    """Read the metadata table (CRLF or LF) and check columns and classes."""
    try:
        df = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        raise DataError(f"cannot parse {csv_path}: {exc}; is it the HAM10000 metadata CSV?") from None
    df.columns = [c.strip() for c in df.columns]
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise DataError(
            f"{csv_path} lacks column(s) {', '.join(missing)}; found {', '.join(df.columns) or 'none'} — "
            f"a HAM10000 metadata CSV needs {', '.join(REQUIRED_COLUMNS)}"
        )
    for col in REQUIRED_COLUMNS:
        df[col] = df[col].str.strip()
    unknown = sorted(set(df["dx"]) - set(CLASSES))
    if unknown:
        rows = df.index[df["dx"].isin(unknown)][:3].tolist()
        raise DataError(
            f"{csv_path} has unknown dx value(s) {', '.join(repr(u) for u in unknown)} (first at row(s) "
            f"{', '.join(str(r + 2) for r in rows)}); valid codes are {', '.join(CLASSES)}"
        )
    blank = df.index[df["lesion_id"] == ""]
    if len(blank):
        raise DataError(
            f"{csv_path} has an empty lesion_id in {len(blank)} row(s) (first at row {blank[0] + 2}); fill it in "
            "(with the image_id where the lesion is unknown): splits keep all images of a lesion together"
        )
    dup = df["image_id"][df["image_id"].duplicated()]
    if len(dup):
        raise DataError(f"{csv_path} lists image_id {dup.iloc[0]} more than once; each image must appear once")
    if len(df) == 0:
        raise DataError(f"{csv_path} has no rows")
    return df


def load_ham10000(root: str | os.PathLike[str]) -> ImageSet:
    """Load HAM10000 (or anything in its layout, such as the synthetic set) with validation."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data folder {root} does not exist; pass --data with the HAM10000 folder")
    csv_path = find_metadata(root)
    df = read_metadata(csv_path)
    index = index_images(root)
    missing = [i for i in df["image_id"] if i not in index]
    if missing:
        raise DataError(
            f"{len(missing)} of {len(df)} images listed in {csv_path.name} are missing under {root} "
            f"(first: {', '.join(missing[:5])}); put <image_id>.jpg files anywhere under the data folder"
        )
    paths = [index[i] for i in df["image_id"]]
    labels = np.array([CLASSES.index(d) for d in df["dx"]], dtype=np.int64)
    sizes = [str(p.stat().st_size) for p in paths]
    fp = fingerprint_of(["ham10000", *df["image_id"], *df["dx"], *df["lesion_id"], *sizes])
    extra: dict[str, object] = {"metadata": str(csv_path)}
    return ImageSet(
        source="ham10000",
        root=root,
        image_ids=df["image_id"].tolist(),
        labels=labels,
        lesion_ids=df["lesion_id"].tolist(),
        paths=paths,
        fingerprint=fp,
        content_fingerprint=content_fingerprint_of(paths),
        extra=extra,
    )
