"""Splits grouped by ``lesion_id`` (no lesion in two splits) and stratified by class, seeded."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from dermadv.data.dataset import ImageSet
from dermadv.errors import ConfigError, DataError
from dermadv.runs import atomic_write_text

SPLITS = ("train", "val", "test")


def make_splits(
    dataset: ImageSet, *, fractions: tuple[float, float, float] = (0.70, 0.15, 0.15), seed: int = 0
) -> pd.DataFrame:
    """Assign each lesion (all its images) to train/val/test, matching class proportions per split.

    Lesions are taken class by class in a seeded random order; each goes to the split furthest below
    its target image count for that class, so every split's class mix stays close to the whole set's.
    If the data carry their own split (DermaMNIST), that split is returned unchanged.
    """
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise ConfigError(f"split fractions must be three non-negative numbers summing to 1; got {fractions}")
    if seed < 0:
        raise ConfigError(f"seed must be at least 0; got {seed}")
    frame = unsplit_frame(dataset).drop(columns="split")
    if dataset.predefined_split is not None:
        frame["split"] = dataset.predefined_split
        return frame
    rng = np.random.default_rng(seed)
    # A lesion's class is its most common dx (HAM10000 lesions have one dx; be robust anyway).
    lesion_dx = frame.groupby("lesion_id")["dx"].agg(lambda s: Counter(s).most_common(1)[0][0])
    lesion_size = frame.groupby("lesion_id").size()
    assignment: dict[str, str] = {}
    fr = np.asarray(fractions)
    for dx in sorted(lesion_dx.unique()):
        lesions = np.array(sorted(lesion_dx.index[lesion_dx == dx]))
        rng.shuffle(lesions)
        # Large lesion groups first so the small ones can even out the counts.
        sizes = lesion_size[lesions].to_numpy()
        order = np.argsort(-sizes, kind="stable")
        total = sizes.sum()
        target = fr * total
        counts = np.zeros(3)
        for j in order:
            deficit = (target - counts) / np.maximum(target, 1e-9)
            deficit[fr == 0] = -np.inf
            k = int(np.argmax(deficit))
            counts[k] += sizes[j]
            assignment[lesions[j]] = SPLITS[k]
    frame["split"] = frame["lesion_id"].map(assignment)
    empty = [
        name for name, share in zip(SPLITS, fractions, strict=True) if share > 0 and not (frame["split"] == name).any()
    ]
    if empty:
        raise DataError(
            f"{len(frame)} images of {len(lesion_dx)} lesions are too few to split {'/'.join(map(str, fractions))}: "
            f"the {' and '.join(empty)} split would be empty; use more data (a few lesions per class at least)"
        )
    return frame


def unsplit_frame(dataset: ImageSet) -> pd.DataFrame:
    """``image_id, lesion_id, dx, split`` with every image in split ``all``."""
    return pd.DataFrame(
        {
            "image_id": dataset.image_ids,
            "lesion_id": dataset.lesion_ids,
            "dx": [dataset.classes[i] for i in dataset.labels],
            "split": "all",
        }
    )


def save_splits(frame: pd.DataFrame, path: str | os.PathLike[str]) -> None:
    atomic_write_text(path, frame[["image_id", "lesion_id", "dx", "split"]].to_csv(index=False, lineterminator="\n"))


def load_splits(path: str | os.PathLike[str], dataset: ImageSet) -> pd.DataFrame:
    """Read a split CSV and check it covers exactly the dataset's images with the same classes."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"split file {path} does not exist; write one with `dermadv data split --out {path}`")
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing_cols = {"image_id", "split"} - set(frame.columns)
    if missing_cols:
        raise DataError(
            f"split file {path} lacks column(s) {', '.join(sorted(missing_cols))}; expected image_id,lesion_id,dx,split"
        )
    bad = sorted(set(frame["split"]) - set(SPLITS))
    if bad:
        raise DataError(f"split file {path} has unknown split name(s) {', '.join(bad)}; use train, val, test")
    repeated = frame["image_id"][frame["image_id"].duplicated()]
    if len(repeated):
        raise DataError(
            f"split file {path} lists image_id {repeated.iloc[0]} more than once ({len(repeated)} repeated row(s)); "
            "each image must appear once — make a new split with `dermadv data split`"
        )
    ids = set(dataset.image_ids)
    listed = set(frame["image_id"])
    if listed != ids:
        extra, absent = len(listed - ids), len(ids - listed)
        raise DataError(
            f"split file {path} does not match the data ({extra} ids not in the data, {absent} data images not listed); "
            "make a new split for this data with `dermadv data split`"
        )
    frame = frame.set_index("image_id").loc[dataset.image_ids].reset_index()
    expected_dx = np.array([dataset.classes[i] for i in dataset.labels], dtype=object)
    if "dx" in frame.columns:
        differ = np.flatnonzero(frame["dx"].to_numpy(dtype=object) != expected_dx)
        if len(differ):
            i = int(differ[0])
            raise DataError(
                f"split file {path} gives {len(differ)} image(s) another dx than the data (first: "
                f"{dataset.image_ids[i]} is {frame['dx'].iloc[i]!r} there, {expected_dx[i]!r} in the data); "
                "make a new split for this data with `dermadv data split`"
            )
    if "lesion_id" not in frame.columns:
        frame["lesion_id"] = dataset.lesion_ids
    if "dx" not in frame.columns:
        frame["dx"] = expected_dx.tolist()
    return frame


def split_indices(frame: pd.DataFrame, split: str) -> np.ndarray:
    if split not in SPLITS and split != "all":
        raise ConfigError(f"split must be one of train, val, test, all; got {split!r}")
    if split == "all":
        return np.arange(len(frame))
    return np.flatnonzero(frame["split"].to_numpy() == split)


def stratified_sample(labels: np.ndarray, indices: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Up to ``n`` of ``indices``, the same number per class where possible (seeded)."""
    rng = np.random.default_rng(seed)
    classes = np.unique(labels[indices])
    per = max(1, n // len(classes))
    picked = []
    for c in classes:
        pool = indices[labels[indices] == c]
        picked.append(rng.permutation(pool)[:per])
    out = np.sort(np.concatenate(picked))
    return out[:n]


def split_summary(frame: pd.DataFrame) -> pd.DataFrame:
    """Class counts per split (rows: dx, columns: splits)."""
    return frame.pivot_table(index="dx", columns="split", values="image_id", aggfunc="count", fill_value=0)
