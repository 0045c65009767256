"""The canonical class list and its mappings to the MedMNIST and ISIC 2018 column orders."""

from __future__ import annotations

import pytest

from dermadv.data.classes import (
    CLASS_COLOURS,
    CLASS_NAMES,
    CLASSES,
    ISIC2018_ORDER,
    MEDMNIST_ORDER,
    class_index,
    remap_indices,
)
from dermadv.errors import DataError

# Keywords of MedMNIST's label names, which word them differently from HAM10000's paper.
MEDMNIST_KEYWORDS = {
    "actinic": "akiec",
    "basal": "bcc",
    "benign keratosis": "bkl",
    "dermatofibroma": "df",
    "melanoma": "mel",
    "melanocytic": "nv",
    "vascular": "vasc",
}


def test_canonical_order() -> None:
    assert CLASSES == ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")
    assert set(CLASS_NAMES) == set(CLASSES) == set(CLASS_COLOURS)


def test_isic2018_order_is_the_ground_truth_csv_columns() -> None:
    # ISIC2018_Task3_Training_GroundTruth.csv: image,MEL,NV,BCC,AKIEC,BKL,DF,VASC
    assert [c.upper() for c in ISIC2018_ORDER] == ["MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"]


def test_medmnist_order_matches_the_medmnist_package() -> None:
    medmnist = pytest.importorskip("medmnist")
    labels = medmnist.INFO["dermamnist"]["label"]
    names = [labels[str(i)].lower() for i in range(len(labels))]
    codes = [next(code for key, code in MEDMNIST_KEYWORDS.items() if key in name) for name in names]
    assert tuple(codes) == MEDMNIST_ORDER


def test_remap_indices() -> None:
    mapping = remap_indices(ISIC2018_ORDER)
    assert [CLASSES[j] for j in mapping] == list(ISIC2018_ORDER)
    assert remap_indices(CLASSES) == list(range(len(CLASSES)))
    assert remap_indices(["nv", "mel"], ["mel", "nv"]) == [1, 0]


def test_unknown_class_lists_the_valid_codes() -> None:
    assert class_index("mel") == 4
    with pytest.raises(DataError, match="unknown class 'MEL'; expected one of akiec, bcc"):
        class_index("MEL")
