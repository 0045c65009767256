"""ISIC 2018 Task 3 layout: a one-hot ground-truth CSV, images linked into place, lesion groupings when published.

Each set is written from a HAM10000-layout set (the synthetic one, or the real one when present): the Task 3
training images are HAM10000's, so both readers must give the same images, labels and lesions, and the same split.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dermadv.data.ham10000 import load_ham10000
from dermadv.data.isic2018 import COLUMNS, load_isic2018
from dermadv.data.load import load_dataset
from dermadv.errors import DataError


def isic_layout(ham: Path, out: Path, *, groupings: bool = True) -> Path:
    """``out`` in ISIC 2018 Task 3 layout for the images of the HAM10000-layout folder ``ham``, linked, not copied."""
    meta = pd.read_csv(next(ham.rglob("HAM10000_metadata.csv")))
    out.mkdir(parents=True)
    os.symlink(next(ham.rglob("*.jpg")).parent, out / "ISIC2018_Task3_Training_Input")
    truth = pd.DataFrame({"image": meta["image_id"]})
    for column in COLUMNS:
        truth[column] = (meta["dx"].str.upper() == column).astype(float)
    truth.to_csv(out / "ISIC2018_Task3_Training_GroundTruth.csv", index=False)
    if groupings:
        table = {"image": meta["image_id"], "lesion_id": meta["lesion_id"], "diagnosis_confirm_type": meta["dx_type"]}
        pd.DataFrame(table).to_csv(out / "ISIC2018_Task3_Training_LesionGroupings.csv", index=False)
    return out


def same_images(a, b) -> bool:
    return dict(zip(a.image_ids, zip(a.labels.tolist(), a.lesion_ids, strict=True), strict=True)) == dict(
        zip(b.image_ids, zip(b.labels.tolist(), b.lesion_ids, strict=True), strict=True)
    )


def test_the_layout_reads_as_its_ham10000_images(synthetic_root: Path, tmp_path: Path) -> None:
    isic = load_dataset(isic_layout(synthetic_root, tmp_path / "isic"))
    ham = load_ham10000(synthetic_root)
    assert isic.source == "isic2018" and len(isic) == len(ham)
    assert same_images(isic, ham)
    assert [p.name for p in isic.paths] == [f"{i}.jpg" for i in isic.image_ids]  # found through the link
    assert isic.extra["lesions_grouped"] == len(ham)
    assert isic.fingerprint != ham.fingerprint  # another source, recorded as such in manifests


def test_without_groupings_each_image_is_its_own_lesion(
    synthetic_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        ds = load_isic2018(isic_layout(synthetic_root, tmp_path / "isic", groupings=False))
    assert ds.lesion_ids == ds.image_ids
    assert "no lesion grouping" in caplog.text


def test_a_row_that_is_not_one_hot_is_one_error(synthetic_root: Path, tmp_path: Path) -> None:
    root = isic_layout(synthetic_root, tmp_path / "isic")
    csv = root / "ISIC2018_Task3_Training_GroundTruth.csv"
    truth = pd.read_csv(csv)
    truth.loc[3, "MEL"] = 1.0 - truth.loc[3, "MEL"]  # now two classes, or none
    truth.to_csv(csv, index=False)
    with pytest.raises(DataError, match="not one-hot") as exc:
        load_dataset(root)
    assert "\n" not in str(exc.value) and "row 5" in str(exc.value)


def test_missing_images_and_two_ground_truths_are_refused(synthetic_root: Path, tmp_path: Path) -> None:
    root = isic_layout(synthetic_root, tmp_path / "isic")
    truth = pd.read_csv(root / "ISIC2018_Task3_Training_GroundTruth.csv")
    extra = truth.head(2).assign(image=["ISIC_9999998", "ISIC_9999999"])
    pd.concat([truth, extra]).to_csv(root / "ISIC2018_Task3_Training_GroundTruth.csv", index=False)
    with pytest.raises(DataError, match="2 of .* images .* are missing .*ISIC_9999998"):
        load_dataset(root)
    truth.to_csv(root / "ISIC2018_Task3_Validation_GroundTruth.csv", index=False)
    with pytest.raises(DataError, match="2 ISIC 2018 ground-truth CSVs"):
        load_dataset(root)


def test_data_split_of_the_layout_equals_the_ham10000_split(synthetic_root: Path, tmp_path: Path) -> None:
    """Through the command a user runs: the same lesion-grouped split from either layout of the same images."""
    root = isic_layout(synthetic_root, tmp_path / "isic")
    env = {**os.environ, "DERMADV_CACHE": str(tmp_path / "cache")}
    for data, out in ((root, "isic.csv"), (synthetic_root, "ham.csv")):
        proc = subprocess.run(
            [sys.executable, "-m", "dermadv", "data", "split", "--data", str(data), "--out", str(tmp_path / out)],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "isic.csv").read_bytes() == (tmp_path / "ham.csv").read_bytes()


@pytest.mark.realdata
def test_the_real_training_set_in_isic_layout(ham10000_root: Path, tmp_path: Path) -> None:
    isic = load_dataset(isic_layout(ham10000_root, tmp_path / "isic"))
    ham = load_ham10000(ham10000_root)
    assert len(isic) == 10015 and same_images(isic, ham)
    assert np.bincount(isic.labels).tolist() == [327, 514, 1099, 115, 1113, 6705, 142]
