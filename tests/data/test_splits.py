"""Lesion-grouped, stratified splits: no leakage, class mix, fractions, determinism, CSV round trip."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dermadv.data.classes import CLASSES
from dermadv.data.dataset import ImageSet
from dermadv.data.ham10000 import load_ham10000
from dermadv.data.splits import SPLITS, load_splits, make_splits, save_splits, split_indices, split_summary
from dermadv.errors import ConfigError, DataError

# HAM10000's class shares, so the in-memory set is as imbalanced as the real one.
SHARES = np.array([327, 514, 1099, 115, 1113, 6705, 142]) / 10_015


def grouped_set(n_lesions: int = 3500, *, seed: int = 0) -> ImageSet:
    """An in-memory set of lesions with one to four images each (no files: splitting needs none)."""
    rng = np.random.default_rng(seed)
    image_ids, lesion_ids, labels = [], [], []
    for lesion in range(n_lesions):
        dx = int(rng.choice(len(CLASSES), p=SHARES))
        for _ in range(int(rng.choice([1, 2, 3, 4], p=[0.7, 0.2, 0.07, 0.03]))):
            image_ids.append(f"IMG_{len(image_ids):07d}")
            lesion_ids.append(f"LES_{lesion:07d}")
            labels.append(dx)
    return ImageSet("memory", None, image_ids, np.array(labels, dtype=np.int64), lesion_ids, fingerprint="mem")


def assert_no_leak(frame: pd.DataFrame) -> None:
    splits_per_lesion = frame.groupby("lesion_id")["split"].nunique()
    leaked = splits_per_lesion[splits_per_lesion > 1]
    assert leaked.empty, f"{len(leaked)} lesions are in two splits, e.g. {leaked.index[0]}"


def split_shares(frame: pd.DataFrame) -> pd.Series:
    return frame["split"].value_counts(normalize=True).reindex(list(SPLITS), fill_value=0.0)


def class_mix_gap(frame: pd.DataFrame) -> float:
    """Largest gap, in percentage points, between a class's share in a split and in the whole set."""
    overall = frame["dx"].value_counts(normalize=True)
    gap = 0.0
    for _, part in frame.groupby("split"):
        mix = part["dx"].value_counts(normalize=True).reindex(overall.index, fill_value=0.0)
        gap = max(gap, float((mix - overall).abs().max()) * 100)
    return gap


@pytest.fixture(scope="module")
def memory_set() -> ImageSet:
    return grouped_set()


def test_every_image_gets_one_split_and_frame_follows_dataset(memory_set: ImageSet) -> None:
    frame = make_splits(memory_set, seed=0)
    assert list(frame.columns) == ["image_id", "lesion_id", "dx", "split"]
    assert frame["image_id"].tolist() == memory_set.image_ids
    assert frame["lesion_id"].tolist() == memory_set.lesion_ids
    assert frame["dx"].tolist() == [CLASSES[i] for i in memory_set.labels]
    assert set(frame["split"]) == set(SPLITS) and frame["split"].notna().all()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_no_lesion_in_two_splits(memory_set: ImageSet, seed: int) -> None:
    assert_no_leak(make_splits(memory_set, seed=seed))


def test_no_lesion_in_two_splits_synthetic(synthetic_root: Path) -> None:
    frame = make_splits(load_ham10000(synthetic_root), seed=0)
    assert_no_leak(frame)
    assert (frame.groupby("lesion_id").size() > 1).any(), "the synthetic set should have multi-image lesions"


@pytest.mark.parametrize("fractions", [(0.70, 0.15, 0.15), (0.8, 0.1, 0.1), (0.6, 0.2, 0.2)])
def test_fractions_and_stratification(memory_set: ImageSet, fractions: tuple[float, float, float]) -> None:
    frame = make_splits(memory_set, fractions=fractions, seed=0)
    np.testing.assert_allclose(split_shares(frame).to_numpy(), fractions, atol=0.01)
    assert class_mix_gap(frame) <= 2.0


def test_zero_fraction_leaves_that_split_empty(memory_set: ImageSet) -> None:
    frame = make_splits(memory_set, fractions=(0.8, 0.2, 0.0), seed=0)
    assert "test" not in set(frame["split"])
    assert len(split_indices(frame, "test")) == 0


@pytest.mark.parametrize("fractions", [(0.7, 0.2, 0.2), (0.9, 0.2, -0.1), (0.5, 0.5)])
def test_bad_fractions(memory_set: ImageSet, fractions: tuple[float, ...]) -> None:
    with pytest.raises(ConfigError, match="summing to 1"):
        make_splits(memory_set, fractions=fractions, seed=0)  # type: ignore[arg-type]


def test_seeded_determinism(memory_set: ImageSet) -> None:
    a, b = make_splits(memory_set, seed=3), make_splits(memory_set, seed=3)
    pd.testing.assert_frame_equal(a, b)
    c = make_splits(memory_set, seed=4)
    assert (a["split"] != c["split"]).mean() > 0.1, "another seed should give another split"


def test_save_load_round_trip(tmp_path: Path, memory_set: ImageSet) -> None:
    frame = make_splits(memory_set, seed=0)
    path = tmp_path / "split.csv"
    save_splits(frame, path)
    raw = path.read_bytes()
    assert raw.startswith(b"image_id,lesion_id,dx,split\n") and b"\r" not in raw
    pd.testing.assert_frame_equal(load_splits(path, memory_set), frame)
    # rows in another order come back in the dataset's order
    frame.sample(frac=1.0, random_state=0).to_csv(path, index=False)
    pd.testing.assert_frame_equal(load_splits(path, memory_set), frame)
    # the two required columns are enough; the rest is filled from the data
    frame[["image_id", "split"]].to_csv(path, index=False)
    pd.testing.assert_frame_equal(load_splits(path, memory_set)[list(frame.columns)], frame)


def test_load_splits_mismatch(tmp_path: Path, memory_set: ImageSet) -> None:
    frame = make_splits(memory_set, seed=0)
    path = tmp_path / "split.csv"
    save_splits(frame.iloc[:-3], path)
    with pytest.raises(DataError, match=r"does not match the data \(0 ids not in the data, 3 data images not listed\)"):
        load_splits(path, memory_set)
    extra = pd.concat([frame, frame.iloc[:1].assign(image_id="IMG_9999999")])
    save_splits(extra, path)
    with pytest.raises(DataError, match=r"1 ids not in the data, 0 data images not listed"):
        load_splits(path, memory_set)


def test_load_splits_refuses_duplicate_rows(tmp_path: Path, memory_set: ImageSet) -> None:
    """A row listed twice would make the frame longer than the data and misalign every index after it."""
    frame = make_splits(memory_set, seed=0)
    path = tmp_path / "split.csv"
    save_splits(pd.concat([frame, frame.iloc[[5]].assign(split="test")]), path)
    with pytest.raises(DataError, match=f"{frame['image_id'][5]}"):
        load_splits(path, memory_set)


def test_load_splits_refuses_other_labels(tmp_path: Path, memory_set: ImageSet) -> None:
    frame = make_splits(memory_set, seed=0)
    relabelled = frame.copy()
    relabelled.loc[7, "dx"] = "vasc" if relabelled.loc[7, "dx"] != "vasc" else "nv"
    path = tmp_path / "split.csv"
    save_splits(relabelled, path)
    with pytest.raises(DataError, match="dx"):
        load_splits(path, memory_set)


def test_load_splits_bad_files(tmp_path: Path, memory_set: ImageSet) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_splits(tmp_path / "none.csv", memory_set)
    path = tmp_path / "split.csv"
    pd.DataFrame({"image_id": memory_set.image_ids}).to_csv(path, index=False)
    with pytest.raises(DataError, match="lacks column"):
        load_splits(path, memory_set)
    frame = make_splits(memory_set, seed=0)
    save_splits(frame.assign(split=frame["split"].replace("val", "valid")), path)
    with pytest.raises(DataError, match="unknown split name"):
        load_splits(path, memory_set)


def test_predefined_split_passes_through(memory_set: ImageSet) -> None:
    rng = np.random.default_rng(1)
    given = rng.choice(list(SPLITS), size=len(memory_set)).tolist()
    ds = ImageSet(
        "dermamnist",
        None,
        memory_set.image_ids,
        memory_set.labels,
        memory_set.image_ids,
        predefined_split=given,
    )
    for seed, fractions in [(0, (0.7, 0.15, 0.15)), (5, (0.5, 0.25, 0.25))]:
        assert make_splits(ds, fractions=fractions, seed=seed)["split"].tolist() == given


def test_split_indices_and_summary(memory_set: ImageSet) -> None:
    frame = make_splits(memory_set, seed=0)
    parts = [split_indices(frame, s) for s in SPLITS]
    np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(len(frame)))
    np.testing.assert_array_equal(split_indices(frame, "all"), np.arange(len(frame)))
    with pytest.raises(ConfigError, match="split must be one of"):
        split_indices(frame, "validation")
    summary = split_summary(frame)
    for s, idx in zip(SPLITS, parts, strict=True):
        assert summary[s].to_dict() == {
            c: n for c, n in memory_set.class_counts(idx).items() if n or c in summary.index
        }


# ------------------------------------------------------------------------------------------- real data


@pytest.fixture(scope="module")
def real_frame(ham10000_dataset: ImageSet) -> pd.DataFrame:
    return make_splits(ham10000_dataset, seed=0)


@pytest.mark.realdata
def test_real_no_lesion_in_two_splits(real_frame: pd.DataFrame) -> None:
    assert_no_leak(real_frame)
    assert real_frame["lesion_id"].nunique() == 7_470


@pytest.mark.realdata
def test_real_stratified_within_two_points(real_frame: pd.DataFrame) -> None:
    assert class_mix_gap(real_frame) <= 2.0
    # each class is also divided close to 70/15/15 (its rarest class, df, has 115 images)
    per_class = real_frame.groupby("dx")["split"].value_counts(normalize=True).unstack(fill_value=0.0)
    gaps = (per_class[list(SPLITS)] - np.array([0.70, 0.15, 0.15])).abs() * 100
    assert float(gaps.to_numpy().max()) <= 2.0, gaps.round(2).to_string()


@pytest.mark.realdata
def test_real_fractions(real_frame: pd.DataFrame) -> None:
    np.testing.assert_allclose(split_shares(real_frame).to_numpy(), [0.70, 0.15, 0.15], atol=0.01)
