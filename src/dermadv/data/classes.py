"""The canonical HAM10000 class list and mappings to other column orders."""

from __future__ import annotations

from collections.abc import Sequence

from dermadv.errors import DataError

#: HAM10000 ``dx`` codes in dermadv's canonical (alphabetical) order.
CLASSES: tuple[str, ...] = ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")

CLASS_NAMES: dict[str, str] = {
    "akiec": "actinic keratosis / intraepithelial carcinoma",
    "bcc": "basal cell carcinoma",
    "bkl": "benign keratosis-like lesion",
    "df": "dermatofibroma",
    "mel": "melanoma",
    "nv": "melanocytic nevus",
    "vasc": "vascular lesion",
}

#: Other names the classes go by in published data: the HAM10000 paper's plural names (used by the Kaggle
#: copies of the set), ISIC 2019's ``AK``, and the singular forms.
CLASS_ALIASES: dict[str, tuple[str, ...]] = {
    "akiec": (
        "ak",
        "actinic keratosis",
        "actinic keratoses",
        "actinic keratoses and intraepithelial carcinoma",
        "actinic keratoses and intraepithelial carcinoma bowen s disease",
    ),
    "bcc": ("basal cell carcinomas",),
    "bkl": ("benign keratosis", "benign keratosis like lesions", "benign keratoses"),
    "df": ("dermatofibromas",),
    "mel": (),
    "nv": ("melanocytic nevi", "melanocytic naevi", "melanocytic naevus", "nevus", "nevi"),
    "vasc": ("vascular lesions",),
}

#: MedMNIST DermaMNIST label order (label index -> dx code), from its INFO["dermamnist"]["label"].
MEDMNIST_ORDER: tuple[str, ...] = ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")

#: ISIC 2018 Task 3 ground-truth CSV column order.
ISIC2018_ORDER: tuple[str, ...] = ("mel", "nv", "bcc", "akiec", "bkl", "df", "vasc")

#: Consistent colours for figures (colour-blind-safe, Okabe-Ito based).
CLASS_COLOURS: dict[str, str] = {
    "akiec": "#E69F00",
    "bcc": "#56B4E9",
    "bkl": "#009E73",
    "df": "#F0E442",
    "mel": "#D55E00",
    "nv": "#0072B2",
    "vasc": "#CC79A7",
}


def class_index(name: str, classes: Sequence[str] = CLASSES) -> int:
    """Index of a class code, with an error that lists the valid codes."""
    try:
        return list(classes).index(name)
    except ValueError:
        raise DataError(f"unknown class {name!r}; expected one of {', '.join(classes)}") from None


def remap_indices(order_from: Sequence[str], order_to: Sequence[str] = CLASSES) -> list[int]:
    """``mapping[i]`` is the index in ``order_to`` of class ``order_from[i]``."""
    return [class_index(c, order_to) for c in order_from]
