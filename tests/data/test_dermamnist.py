"""DermaMNIST npz reader and download wrapper, on small fake files (no network)."""

from __future__ import annotations

import sys
import types
import urllib.error
from pathlib import Path

import numpy as np
import pytest

from dermadv.data import dermamnist
from dermadv.data.classes import CLASSES, MEDMNIST_ORDER
from dermadv.data.dermamnist import download_dermamnist, load_dermamnist, npz_name
from dermadv.errors import ConfigError, DataError

COUNTS = {"train": 10, "val": 3, "test": 5}


def fake_arrays(size: int = 28, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in COUNTS.items():
        arrays[f"{split}_images"] = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n) % 7).astype(np.uint8)[:, None]
    return arrays


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    np.savez_compressed(path, **arrays)  # type: ignore[arg-type]
    return path


def test_reads_images_labels_and_the_predefined_split(tmp_path: Path) -> None:
    arrays = fake_arrays()
    ds = load_dermamnist(write_npz(tmp_path / "dermamnist.npz", arrays))
    assert ds.arrays is not None and ds.paths is None
    assert ds.arrays.shape == (18, 28, 28, 3) and ds.arrays.dtype == np.uint8
    expected = np.concatenate([arrays[f"{s}_images"] for s in COUNTS])
    np.testing.assert_array_equal(ds.arrays, expected)
    assert ds.predefined_split == ["train"] * 10 + ["val"] * 3 + ["test"] * 5
    assert ds.image_ids[0] == "dermamnist_train_00001" and ds.image_ids[10] == "dermamnist_val_00001"
    assert ds.image_ids[-1] == "dermamnist_test_00005"
    assert ds.lesion_ids == ds.image_ids
    assert ds.labels.dtype == np.int64 and ds.classes == CLASSES
    raw = np.concatenate([arrays[f"{s}_labels"][:, 0] for s in COUNTS])
    assert [ds.classes[i] for i in ds.labels] == [MEDMNIST_ORDER[i] for i in raw]
    assert ds.source == "dermamnist" and ds.extra["size"] == 28


def test_labels_go_through_the_medmnist_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The real orders coincide; a permuted one shows the mapping is applied, not assumed.
    monkeypatch.setattr(dermamnist, "MEDMNIST_ORDER", tuple(reversed(CLASSES)))
    ds = load_dermamnist(write_npz(tmp_path / "d.npz", fake_arrays()))
    assert ds.labels[:7].tolist() == [6, 5, 4, 3, 2, 1, 0]


def test_medmnist_order_matches_the_package() -> None:
    medmnist = pytest.importorskip("medmnist")
    names = medmnist.INFO["dermamnist"]["label"]
    keywords = {"akiec": "actinic", "bcc": "basal", "bkl": "keratosis", "df": "dermatofibroma",
                "mel": "melanoma", "nv": "nevi", "vasc": "vascular"}  # fmt: skip
    assert [keywords[c] in names[str(i)].lower() for i, c in enumerate(MEDMNIST_ORDER)] == [True] * 7


@pytest.mark.parametrize("size", [64, 128])
def test_other_sizes(tmp_path: Path, size: int) -> None:
    ds = load_dermamnist(write_npz(tmp_path / npz_name(size), fake_arrays(size)))
    assert ds.arrays is not None and ds.arrays.shape[1:] == (size, size, 3)


def test_fingerprint_follows_the_pixels(tmp_path: Path) -> None:
    arrays = fake_arrays()
    first = load_dermamnist(write_npz(tmp_path / "a.npz", arrays)).fingerprint
    assert load_dermamnist(write_npz(tmp_path / "b.npz", arrays)).fingerprint == first
    arrays["test_images"][2, 5, 5, 1] ^= 1
    assert load_dermamnist(write_npz(tmp_path / "c.npz", arrays)).fingerprint != first


def broken(change: str) -> dict[str, np.ndarray]:
    arrays = fake_arrays()
    if change == "missing key":
        del arrays["val_labels"]
    elif change == "grey":
        arrays["train_images"] = arrays["train_images"][..., 0]
    elif change == "not square":
        arrays["train_images"] = arrays["train_images"][:, :, :20]
    elif change == "odd size":
        arrays = fake_arrays(30)
    elif change == "float":
        arrays["val_images"] = arrays["val_images"].astype(np.float32)
    elif change == "label count":
        arrays["test_labels"] = arrays["test_labels"][:-1]
    elif change == "label value":
        arrays["train_labels"][0, 0] = 7
    elif change == "label shape":
        arrays["train_labels"] = np.zeros((10, 2), np.uint8)
    return arrays


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ("missing key", "lacks val_labels"),
        ("grey", r"train_images has shape \(10, 28, 28\)"),
        ("not square", "N×S×S×3"),
        ("odd size", "30 px"),
        ("float", "dtype float32"),
        ("label count", r"test_labels has shape \(4, 1\)"),
        ("label value", "values 0..7"),
        ("label shape", r"train_labels has shape \(10, 2\)"),
    ],
)
def test_bad_contents_are_named(tmp_path: Path, change: str, match: str) -> None:
    path = write_npz(tmp_path / "bad.npz", broken(change))
    with pytest.raises(DataError, match=match) as err:
        load_dermamnist(path)
    assert "\n" not in str(err.value)


def test_missing_and_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found.*dermadv data download dermamnist"):
        load_dermamnist(tmp_path / "nope.npz")
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(DataError, match="not a readable .npz"):
        load_dermamnist(garbage)
    single = tmp_path / "single.npz"
    with open(single, "wb") as f:
        np.save(f, np.zeros(3))
    with pytest.raises(DataError, match="single array"):
        load_dermamnist(single)


def test_download_refuses_unknown_sizes(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="28, 64, 128, 224; got --size 32"):
        download_dermamnist(32, tmp_path)


def fake_medmnist(monkeypatch: pytest.MonkeyPatch, dermamnist_class: type) -> None:
    module = types.ModuleType("medmnist")
    module.DermaMNIST = dermamnist_class  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "medmnist", module)


def test_download_failure_is_one_line_with_the_manual_route(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    class Offline:
        def __init__(self, **kwargs: object) -> None:
            try:
                raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")
            except urllib.error.URLError:
                raise RuntimeError("\n    Automatic download failed! Please download it manually.\n") from None

    fake_medmnist(monkeypatch, Offline)
    with pytest.raises(DataError) as err:
        download_dermamnist(64, tmp_path / "dl")
    message = str(err.value)
    assert "\n" not in message
    assert "name resolution" in message
    assert "zenodo.org/records/10519652" in message
    assert f"--data {tmp_path / 'dl' / 'dermamnist_64.npz'}" in message


def test_download_returns_the_file_medmnist_wrote(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[dict[str, object]] = []

    class Works:
        def __init__(self, **kwargs: object) -> None:
            calls.append(kwargs)
            write_npz(Path(str(kwargs["root"])) / npz_name(int(str(kwargs["size"]))), fake_arrays())

    fake_medmnist(monkeypatch, Works)
    path = download_dermamnist(28, tmp_path / "dl")
    assert path == tmp_path / "dl" / "dermamnist.npz"
    assert calls == [{"split": "train", "download": True, "size": 28, "root": str(tmp_path / "dl")}]
    assert len(load_dermamnist(path)) == 18


@pytest.mark.timeout(60)
def test_download_through_the_real_package_to_an_unreachable_url(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    medmnist = pytest.importorskip("medmnist")
    info = dict(medmnist.INFO["dermamnist"])
    info["url_64"] = "http://127.0.0.1:9/dermamnist_64.npz"  # the discard port: refused at once, no network
    monkeypatch.setitem(medmnist.INFO, "dermamnist", info)
    with pytest.raises(DataError, match="could not download DermaMNIST 64 px.*by hand from https://zenodo"):
        download_dermamnist(64, tmp_path)
    assert not (tmp_path / "dermamnist_64.npz").exists()
