"""Class-per-folder image trees."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dermadv.data.classes import CLASS_NAMES, CLASSES
from dermadv.data.folders import folder_class, load_image_folder
from dermadv.errors import DataError


def put_image(path: Path, colour: tuple[int, int, int] = (180, 120, 100)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = "PNG" if path.suffix.lower() == ".png" else "JPEG"
    Image.new("RGB", (8, 6), colour).save(path, format=fmt)
    return path


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "tree"
    put_image(root / "mel" / "a.jpg")
    put_image(root / "mel" / "b.png")
    put_image(root / "NV" / "c.JPG")
    put_image(root / "Basal_Cell-Carcinoma" / "d.jpeg")
    put_image(root / "vasc" / "sub" / "e.jpg")
    put_image(root / "vasc" / ".thumbs" / "hidden.jpg")
    put_image(root / ".cache" / "x.jpg")
    (root / "mel" / "notes.txt").write_text("not an image")
    (root / "README.txt").write_text("top-level files are ignored")
    return root


def test_reads_classes_paths_and_ids(tree: Path) -> None:
    ds = load_image_folder(tree)
    by_id = dict(zip(ds.image_ids, (CLASSES[i] for i in ds.labels), strict=True))
    assert by_id == {"Basal_Cell-Carcinoma__d": "bcc", "mel__a": "mel", "mel__b": "mel", "NV__c": "nv",
                     "vasc__sub__e": "vasc"}  # fmt: skip
    assert ds.paths is not None and ds.arrays is None
    assert all(p.is_file() and p.is_relative_to(tree) for p in ds.paths)
    assert [p.stem for p in ds.paths] == [i.split("__")[-1] for i in ds.image_ids]
    assert ds.labels.dtype == np.int64 and ds.lesion_ids == ds.image_ids
    assert ds.source == "folders" and ds.root == tree and ds.classes == CLASSES
    assert ds.class_counts() == {"akiec": 0, "bcc": 1, "bkl": 0, "df": 0, "mel": 2, "nv": 1, "vasc": 1}


def test_folder_names_codes_or_full_names_in_any_case() -> None:
    for code, name in CLASS_NAMES.items():
        assert folder_class(code.upper()) == code
        assert folder_class(name.title()) == code
        assert folder_class(name.replace(" ", "_").replace("/", "_")) == code
    assert folder_class("actinic_keratosis_intraepithelial_carcinoma") == "akiec"
    assert folder_class("melanomas") is None and folder_class("other") is None


#: The class names of the Kaggle copies of HAM10000 (their ``lesion_type_dict``) and ISIC 2019's folder codes.
KAGGLE = {
    "Melanocytic nevi": "nv",
    "Melanoma": "mel",
    "Benign keratosis-like lesions ": "bkl",
    "Basal cell carcinoma": "bcc",
    "Actinic keratoses": "akiec",
    "Vascular lesions": "vasc",
    "Dermatofibroma": "df",
}
ISIC2019 = {"MEL": "mel", "NV": "nv", "BCC": "bcc", "AK": "akiec", "BKL": "bkl", "DF": "df", "VASC": "vasc"}


def test_folder_names_of_published_copies_of_the_classes() -> None:
    for name, code in {**KAGGLE, **ISIC2019}.items():
        assert folder_class(name) == code, name
    assert folder_class("SCC") is None  # ISIC 2019's eighth class is not a HAM10000 class


def test_every_alias_names_one_class() -> None:
    from dermadv.data.classes import CLASS_ALIASES

    for code, aliases in CLASS_ALIASES.items():
        for alias in aliases:
            assert folder_class(alias) == code, alias


def test_fingerprint_follows_names_and_sizes(tree: Path) -> None:
    first = load_image_folder(tree).fingerprint
    assert load_image_folder(tree).fingerprint == first
    (tree / "mel" / "a.jpg").rename(tree / "mel" / "a2.jpg")
    renamed = load_image_folder(tree).fingerprint
    assert renamed != first
    with open(tree / "mel" / "a2.jpg", "ab") as f:
        f.write(b"\0")
    assert load_image_folder(tree).fingerprint != renamed


def test_unknown_folders_are_listed_with_the_valid_names(tree: Path) -> None:
    put_image(tree / "moles" / "z.jpg")
    (tree / "Other").mkdir()
    with pytest.raises(DataError) as err:
        load_image_folder(tree)
    message = str(err.value)
    assert "\n" not in message
    assert "'Other', 'moles'" in message
    assert all(code in message for code in CLASSES)
    assert "melanocytic nevus" in message and "move folders of classes HAM10000 does not have" in message


def test_missing_or_empty_trees(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        load_image_folder(tmp_path / "absent")
    with pytest.raises(DataError, match="no .jpg/.jpeg/.png images"):
        load_image_folder(tmp_path)
    (tmp_path / "mel").mkdir()
    (tmp_path / "mel" / "a.txt").write_text("x")
    with pytest.raises(DataError, match="no .jpg/.jpeg/.png images"):
        load_image_folder(tmp_path)


def test_two_files_with_one_id_are_refused(tmp_path: Path) -> None:
    put_image(tmp_path / "df" / "a.jpg")
    put_image(tmp_path / "df" / "a.png")
    with pytest.raises(DataError, match="same image id 'df__a'"):
        load_image_folder(tmp_path)


def test_linked_folders_inside_a_class_folder_are_read(tmp_path: Path) -> None:
    """As torchvision's ImageFolder walks them (os.walk with followlinks), each real folder once."""
    tree = tmp_path / "tree"
    put_image(tree / "nv" / "own.jpg")
    put_image(tree / "mel" / "a.jpg")
    put_image(tmp_path / "store" / "batch2" / "linked.jpg")
    os.symlink(tmp_path / "store" / "batch2", tree / "nv" / "batch2")
    os.symlink(tree / "nv", tree / "nv" / "batch2" / "loop")  # a link back up the tree ends
    ds = load_image_folder(tree)
    assert sorted(ds.image_ids) == ["mel__a", "nv__batch2__linked", "nv__own"]
