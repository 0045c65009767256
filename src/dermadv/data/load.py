"""One entry point for every data source: HAM10000 layout, DermaMNIST npz, image folders, synthetic."""

from __future__ import annotations

import os
from pathlib import Path

from dermadv.data.classes import CLASS_NAMES, CLASSES
from dermadv.data.dataset import ImageSet
from dermadv.errors import DataError


def load_dataset(spec: str | os.PathLike[str] | None = None) -> ImageSet:
    """Load data from ``spec``.

    ``None`` or ``"synthetic"``: the built-in synthetic set (generated on first use). A folder with a
    ``HAM10000_metadata.csv``: HAM10000 layout. A ``.npz``: DermaMNIST. A folder of class folders: image folder.
    """
    if spec is None or str(spec) == "synthetic":
        from dermadv.data.synthetic import ensure_synthetic

        root = ensure_synthetic()
        from dermadv.data.ham10000 import load_ham10000

        ds = load_ham10000(root)
        return _with_source(ds, "synthetic")
    path = Path(spec)
    if not path.exists():
        raise DataError(
            f"data path {path} does not exist; pass a HAM10000 folder, a DermaMNIST .npz or an image folder"
        )
    if path.is_file():
        if path.suffix == ".npz":
            from dermadv.data.dermamnist import load_dermamnist

            return load_dermamnist(path)
        raise DataError(f"{path} is a file but not a .npz; pass a folder (HAM10000 layout or class folders) or a .npz")
    from dermadv.data.ham10000 import METADATA_NAME, load_ham10000

    if (path / METADATA_NAME).exists() or any(path.glob(f"*/{METADATA_NAME}")):
        ds = load_ham10000(path)
        if any(i.startswith("SYN_") for i in ds.image_ids[:1]):
            return _with_source(ds, "synthetic")
        return ds
    names = {p.name.lower() for p in path.iterdir() if p.is_dir()}
    valid = set(CLASSES) | {n.lower() for n in CLASS_NAMES.values()}
    if names and names <= valid:
        from dermadv.data.folders import load_image_folder

        return load_image_folder(path)
    raise DataError(
        f"{path} holds neither {METADATA_NAME} nor one folder per class ({', '.join(CLASSES)}); "
        "pass the HAM10000 folder, a DermaMNIST .npz or a class-folder tree"
    )


def _with_source(ds: ImageSet, source: str) -> ImageSet:
    from dataclasses import replace

    return replace(ds, source=source)
