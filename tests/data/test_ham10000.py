"""HAM10000 reader: layout, line endings, and one clear error per kind of bad input; the real set's counts."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dermadv.data.cache import decode_image, decoded_images
from dermadv.data.classes import CLASSES
from dermadv.data.dataset import ImageSet
from dermadv.data.ham10000 import load_ham10000
from dermadv.data.load import load_dataset
from dermadv.errors import DataError

# (lesion_id, image_id, dx, folder the image lives in)
ROWS = [
    ("HAM_0000001", "ISIC_0000001", "nv", "HAM10000_images_part_1"),
    ("HAM_0000001", "ISIC_0000002", "nv", "HAM10000_images_part_2"),
    ("HAM_0000002", "ISIC_0000003", "mel", "HAM10000_images_part_1"),
    ("HAM_0000003", "ISIC_0000004", "bkl", "HAM10000_images_part_2/nested/deeper"),
    ("HAM_0000004", "ISIC_0000005", "vasc", "images"),
    ("HAM_0000005", "ISIC_0000006", "akiec", "HAM10000_images_part_1"),
]
HEADER = ("lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization")


def write_metadata(root: Path, lines: list[str], *, newline: str = "\r\n") -> Path:
    path = root / "HAM10000_metadata.csv"
    path.write_bytes((newline.join(lines) + newline).encode("utf-8"))
    return path


def make_folder(
    root: Path,
    rows: list[tuple[str, str, str, str]] = ROWS,
    *,
    newline: str = "\r\n",
    header: tuple[str, ...] = HEADER,
    skip_images: frozenset[str] = frozenset(),
) -> Path:
    """A HAM10000-layout folder: the metadata CSV plus small JPEGs spread over nested folders."""
    rng = np.random.default_rng(0)
    lines = [",".join(header)]
    for lesion, image, dx, folder in rows:
        values = {"lesion_id": lesion, "image_id": image, "dx": dx, "dx_type": "histo", "age": "50.0"}
        values |= {"sex": "male", "localization": "back"}
        lines.append(",".join(values.get(col, "x") for col in header))
        if image in skip_images:
            continue
        (root / folder).mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, size=(12, 16, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / folder / f"{image}.jpg", quality=95)
    write_metadata(root, lines, newline=newline)
    return root


def one_line_error(excinfo: pytest.ExceptionInfo[DataError]) -> str:
    message = str(excinfo.value)
    assert "\n" not in message, f"error messages are one line; got {message!r}"
    return message


@pytest.mark.parametrize("newline", ["\r\n", "\n"], ids=["crlf", "lf"])
def test_reads_nested_layout(tmp_path: Path, newline: str) -> None:
    root = make_folder(tmp_path, newline=newline)
    ds = load_ham10000(root)
    assert ds.source == "ham10000"
    assert ds.image_ids == [r[1] for r in ROWS]
    assert ds.lesion_ids == [r[0] for r in ROWS]
    assert [ds.classes[i] for i in ds.labels] == [r[2] for r in ROWS]
    assert ds.labels.dtype == np.int64
    assert ds.paths is not None
    for path, (_, image, _, folder) in zip(ds.paths, ROWS, strict=True):
        assert path == root / folder / f"{image}.jpg"


def test_line_endings_give_the_same_set(tmp_path: Path) -> None:
    """CRLF must leave no stray ``\\r`` in the last column (here ``dx``), so both files read alike."""
    header = ("lesion_id", "image_id", "dx")
    crlf = load_ham10000(make_folder(tmp_path / "crlf", newline="\r\n", header=header))
    lf = load_ham10000(make_folder(tmp_path / "lf", newline="\n", header=header))
    assert crlf.fingerprint == lf.fingerprint
    assert crlf.image_ids == lf.image_ids
    np.testing.assert_array_equal(crlf.labels, lf.labels)


def test_whitespace_and_extra_columns_are_tolerated(tmp_path: Path) -> None:
    root = make_folder(tmp_path)
    lines = ["Unnamed: 0, lesion_id , image_id,dx ,extra"]
    lines += [f"{i}, {lesion},{image} , {dx},1" for i, (lesion, image, dx, _) in enumerate(ROWS)]
    write_metadata(root, lines)
    ds = load_ham10000(root)
    assert ds.image_ids == [r[1] for r in ROWS]
    assert [ds.classes[i] for i in ds.labels] == [r[2] for r in ROWS]


def test_metadata_found_in_a_subfolder_and_by_load_dataset(tmp_path: Path) -> None:
    make_folder(tmp_path / "inner")
    ds = load_dataset(tmp_path)
    assert len(ds) == len(ROWS) and ds.source == "ham10000"


def test_fingerprint_follows_content(tmp_path: Path) -> None:
    a = load_ham10000(make_folder(tmp_path / "a"))
    relabelled = [(lesion, image, "df" if i == 0 else dx, f) for i, (lesion, image, dx, f) in enumerate(ROWS)]
    b = load_ham10000(make_folder(tmp_path / "b", relabelled))
    assert a.fingerprint != b.fingerprint
    assert load_ham10000(tmp_path / "a").fingerprint == a.fingerprint


def test_missing_columns(tmp_path: Path) -> None:
    root = make_folder(tmp_path, header=("lesion_id", "image_id", "diagnosis"))
    with pytest.raises(DataError) as excinfo:
        load_ham10000(root)
    message = one_line_error(excinfo)
    assert "lacks column(s) dx" in message
    assert "diagnosis" in message  # what was found, so the user sees the mismatch


def test_unknown_dx(tmp_path: Path) -> None:
    rows = [*ROWS[:3], ("HAM_0000009", "ISIC_0000009", "melanoma", "images"), *ROWS[3:]]
    with pytest.raises(DataError) as excinfo:
        load_ham10000(make_folder(tmp_path, rows))
    message = one_line_error(excinfo)
    assert "'melanoma'" in message
    assert "row(s) 5" in message  # line 5 of the file: header + three rows before it
    assert ", ".join(CLASSES) in message


def test_missing_images(tmp_path: Path) -> None:
    root = make_folder(tmp_path, skip_images=frozenset({"ISIC_0000002", "ISIC_0000005"}))
    with pytest.raises(DataError) as excinfo:
        load_ham10000(root)
    message = one_line_error(excinfo)
    assert "2 of 6 images" in message
    assert "ISIC_0000002, ISIC_0000005" in message


def test_missing_images_message_lists_only_the_first_few(tmp_path: Path) -> None:
    rows = [(f"HAM_{i:07d}", f"ISIC_{i:07d}", "nv", "images") for i in range(40)]
    root = make_folder(tmp_path, rows, skip_images=frozenset(r[1] for r in rows[3:]))
    with pytest.raises(DataError) as excinfo:
        load_ham10000(root)
    message = one_line_error(excinfo)
    assert "37 of 40 images" in message
    assert "ISIC_0000003" in message and "ISIC_0000039" not in message


def test_duplicate_image_ids(tmp_path: Path) -> None:
    rows = [*ROWS, ("HAM_0000099", "ISIC_0000003", "mel", "images")]
    with pytest.raises(DataError) as excinfo:
        load_ham10000(make_folder(tmp_path, rows))
    assert "ISIC_0000003 more than once" in one_line_error(excinfo)


def test_header_only_csv(tmp_path: Path) -> None:
    with pytest.raises(DataError) as excinfo:
        load_ham10000(make_folder(tmp_path, []))
    assert "no rows" in one_line_error(excinfo)


def test_missing_folder_and_missing_csv(tmp_path: Path) -> None:
    with pytest.raises(DataError) as excinfo:
        load_ham10000(tmp_path / "nowhere")
    assert "does not exist" in one_line_error(excinfo)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError) as excinfo:
        load_ham10000(tmp_path / "empty")
    assert "no HAM10000_metadata.csv" in one_line_error(excinfo)


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_unreadable_jpeg_names_the_file(tmp_path: Path, dermadv_cache: Path, damage: str) -> None:
    root = make_folder(tmp_path / "data")
    bad = root / "HAM10000_images_part_1" / "ISIC_0000003.jpg"
    data = bad.read_bytes()
    bad.write_bytes({"garbage": b"not a jpeg at all" * 10, "truncated": data[: len(data) // 2], "empty": b""}[damage])
    ds = load_ham10000(root)  # reading the table does not decode; decoding must name the file
    with pytest.raises(DataError) as excinfo:
        decoded_images(ds, (12, 16), progress=False)
    message = one_line_error(excinfo)
    assert "ISIC_0000003.jpg" in message
    with pytest.raises(DataError, match="ISIC_0000003.jpg"):
        decode_image(bad, None)
    # a failed decode must not leave a cache file that a later run would take as complete
    assert not list(dermadv_cache.rglob("*.npy"))


# ------------------------------------------------------------------------------------------- real data

HAM10000_COUNTS = {"akiec": 327, "bcc": 514, "bkl": 1099, "df": 115, "mel": 1113, "nv": 6705, "vasc": 142}


@pytest.mark.realdata
def test_real_ham10000_counts(ham10000_dataset: ImageSet) -> None:
    ds = ham10000_dataset
    assert len(ds) == 10_015
    assert len(set(ds.lesion_ids)) == 7_470
    assert ds.class_counts() == HAM10000_COUNTS
    assert len(set(ds.image_ids)) == len(ds)
    # every lesion carries one diagnosis, which the lesion-grouped split relies on
    dx_per_lesion = Counter(lesion for lesion, _ in set(zip(ds.lesion_ids, ds.labels.tolist(), strict=True)))
    assert max(dx_per_lesion.values()) == 1


@pytest.mark.realdata
def test_real_ham10000_images_decode(ham10000_dataset: ImageSet) -> None:
    assert ham10000_dataset.paths is not None
    first = decode_image(ham10000_dataset.paths[0], None)
    assert first.dtype == np.uint8 and first.ndim == 3 and first.shape[2] == 3
    assert first.shape[:2] in {(150, 200), (450, 600)}
