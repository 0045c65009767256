"""ISIC challenge layouts (2018 Task 3, 2019): a one-hot ground-truth CSV, images linked into place, lesion ids
when published.

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
from dermadv.data.isic import load_isic
from dermadv.data.load import load_dataset
from dermadv.errors import DataError

COLUMNS_2018 = ("MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC")
COLUMNS_2019 = ("MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC", "UNK")
CODES = {"MEL": "mel", "NV": "nv", "BCC": "bcc", "AKIEC": "akiec", "AK": "akiec", "BKL": "bkl", "DF": "df"}


def isic_layout(ham: Path, out: Path, *, groupings: bool = True, year: int = 2018) -> Path:
    """``out`` in ISIC 2018 Task 3 (or 2019) layout for the images of the HAM10000-layout folder ``ham``, linked,
    not copied. For 2019 the first three images are made SCC, UNK and SCC: classes HAM10000 lacks."""
    meta = pd.read_csv(next(ham.rglob("HAM10000_metadata.csv")))
    out.mkdir(parents=True)
    os.symlink(next(ham.rglob("*.jpg")).parent, out / f"ISIC{year}_Training_Input")
    truth = pd.DataFrame({"image": meta["image_id"]})
    for column in COLUMNS_2018 if year == 2018 else COLUMNS_2019:
        truth[column] = (meta["dx"] == CODES.get(column, column.lower())).astype(float)
    if year == 2019:
        for row, column in enumerate(("SCC", "UNK", "SCC")):
            truth.loc[row, list(COLUMNS_2019)] = 0.0
            truth.loc[row, column] = 1.0
    name = "ISIC2018_Task3_Training" if year == 2018 else "ISIC_2019_Training"
    truth.to_csv(out / f"{name}_GroundTruth.csv", index=False)
    if groupings and year == 2018:
        table = {"image": meta["image_id"], "lesion_id": meta["lesion_id"], "diagnosis_confirm_type": meta["dx_type"]}
        pd.DataFrame(table).to_csv(out / f"{name}_LesionGroupings.csv", index=False)
    elif groupings:
        table = {"image": meta["image_id"], "age_approx": meta["age"], "lesion_id": meta["lesion_id"]}
        pd.DataFrame(table).to_csv(out / f"{name}_Metadata.csv", index=False)
    return out


def same_images(a, b) -> bool:
    return dict(zip(a.image_ids, zip(a.labels.tolist(), a.lesion_ids, strict=True), strict=True)) == dict(
        zip(b.image_ids, zip(b.labels.tolist(), b.lesion_ids, strict=True), strict=True)
    )


def test_the_layout_reads_as_its_ham10000_images(synthetic_root: Path, tmp_path: Path) -> None:
    isic = load_dataset(isic_layout(synthetic_root, tmp_path / "isic"))
    ham = load_ham10000(synthetic_root)
    assert isic.source == "isic" and len(isic) == len(ham)
    assert same_images(isic, ham)
    assert [p.name for p in isic.paths] == [f"{i}.jpg" for i in isic.image_ids]  # found through the link
    assert isic.extra["lesions_grouped"] == len(ham)
    assert isic.fingerprint != ham.fingerprint  # another source, recorded as such in manifests


def test_without_groupings_each_image_is_its_own_lesion(
    synthetic_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        ds = load_isic(isic_layout(synthetic_root, tmp_path / "isic", groupings=False))
    assert ds.lesion_ids == ds.image_ids
    assert "no lesion id" in caplog.text


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
    with pytest.raises(DataError, match="2 ISIC ground-truth CSVs"):
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


def test_isic_2019_leaves_out_the_classes_ham10000_lacks(
    synthetic_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        isic = load_dataset(isic_layout(synthetic_root, tmp_path / "isic", year=2019))
    ham = load_ham10000(synthetic_root)
    assert isic.image_ids == ham.image_ids[3:]  # SCC, UNK, SCC left out
    assert isic.labels.tolist() == ham.labels[3:].tolist() and isic.lesion_ids == ham.lesion_ids[3:]
    assert "left out 3 of" in caplog.text and "SCC: 2, UNK: 1" in caplog.text


@pytest.mark.realdata
def test_the_real_training_set_in_isic_layout(ham10000_root: Path, tmp_path: Path) -> None:
    isic = load_dataset(isic_layout(ham10000_root, tmp_path / "isic"))
    ham = load_ham10000(ham10000_root)
    assert len(isic) == 10015 and same_images(isic, ham)
    assert np.bincount(isic.labels).tolist() == [327, 514, 1099, 115, 1113, 6705, 142]


def test_a_ground_truth_as_spreadsheets_and_links_leave_it(synthetic_root: Path, tmp_path: Path) -> None:
    """A byte-order mark (as Excel writes), a column that is not a class, the ground truth in a linked folder."""
    root = isic_layout(synthetic_root, tmp_path / "isic")
    truth = pd.read_csv(root / "ISIC2018_Task3_Training_GroundTruth.csv").assign(score_weight=1.0)
    (root / "ISIC2018_Task3_Training_GroundTruth.csv").unlink()
    elsewhere = tmp_path / "truth"
    elsewhere.mkdir()
    truth.to_csv(elsewhere / "ISIC2018_Task3_Training_GroundTruth.csv", index=False, encoding="utf-8-sig")
    os.symlink(elsewhere, root / "truth")
    assert same_images(load_dataset(root), load_ham10000(synthetic_root))


def test_a_ground_truth_whose_header_is_not_one_says_so(synthetic_root: Path, tmp_path: Path) -> None:
    root = isic_layout(synthetic_root, tmp_path / "isic")
    csv = root / "ISIC2018_Task3_Training_GroundTruth.csv"
    pd.read_csv(csv).rename(columns={"image": "image_id"}).to_csv(csv, index=False)
    with pytest.raises(DataError, match="named as an ISIC ground truth but its header") as exc:
        load_dataset(root)
    assert "\n" not in str(exc.value) and "expected image, then one-hot columns" in str(exc.value)
