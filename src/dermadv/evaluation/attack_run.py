"""The attack output folder (see docs/DESIGN.md): its file names, one typed reader and the writers.

``dermadv attack run`` (and ``attack transfer``) write it::

    attack.json          what was attacked, how, with which budget and target
    predictions.csv      per image: label, predictions and probabilities on the saved PNGs, the in-memory prediction
    images/{clean,adv,perturbation}/<image_id>.png   lossless 8-bit PNGs
    attack_metrics.json, attack_metrics.csv, per_image.csv   the evaluation (``evaluate-attack``)
    manifest.json        the run's manifest; ``queries.journal`` a black-box model's answers
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
from PIL import Image

from dermadv.data.classes import CLASSES
from dermadv.errors import DataError, RunError
from dermadv.evaluation.attack_info import INFO_FILE, AttackInfo
from dermadv.runs import check_unlocked, read_json, read_manifest, require_complete, write_json

# torch (dermadv.distributed, the metrics' statistics) is imported inside the functions that need it: the observer
# reads attack folders through this module, and serving a study loads no torch
if TYPE_CHECKING:
    from dermadv.evaluation.attack_metrics import AttackMetrics

#: Everything ``attack run`` (or ``attack transfer``, ``evaluate-attack``, ``report``) writes into an attack folder.
ATTACK_OUTPUTS = (
    "manifest.json",
    "attack.json",
    "predictions.csv",
    "attack_metrics.json",
    "attack_metrics.csv",
    "per_image.csv",
    "images",
    "report",
    "queries.journal",
)
#: the query journal of a black-box model's answers in an attack folder (:mod:`dermadv.models.journal`)
JOURNAL_NAME = "queries.journal"
PREDICTIONS_FILE, METRICS_FILE = "predictions.csv", "attack_metrics.json"
ImageKind = Literal["clean", "adv", "perturbation"]
IMAGE_KINDS: tuple[ImageKind, ...] = ("clean", "adv", "perturbation")
PREDICTION_COLUMNS = ("image_id", "label", "clean_pred", "adv_pred")
_CLASS_COLUMNS = ("label", "clean_pred", "adv_pred", "inmem_adv_pred")
log = logging.getLogger(__name__)

_RUN_FIRST = "run `dermadv attack run --out {folder}` first"


def image_path(folder: Path, image_id: str, kind: ImageKind = "adv") -> Path:
    return folder / "images" / kind / f"{image_id}.png"


def saved_images(folder: Path, kind: ImageKind = "adv") -> set[str]:
    """The ids of the PNGs saved under ``images/<kind>`` (fewer than the run's images when it stopped)."""
    return {p.stem for p in (folder / "images" / kind).glob("*.png")}


def read_png(path: Path) -> np.ndarray:
    """An 8-bit RGB image as H×W×3 uint8."""
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"), dtype=np.uint8)
    except (OSError, SyntaxError) as exc:
        raise DataError(f"cannot read {path}: {exc}; re-run `dermadv attack run`") from None


def save_png(path: Path, array: np.ndarray) -> None:
    """Write a lossless PNG atomically (a temporary name, then a rename)."""
    tmp = path.with_name(f".{path.name}.tmp")
    Image.fromarray(array).save(tmp, format="PNG", compress_level=1)
    os.replace(tmp, path)


def clear_attack_folder(out: Path, *, keep: Sequence[str] = ()) -> None:
    """Empty a used attack folder before a new run writes into it, so no PNG or table of the earlier run stays
    beside the new ones (a rerun on fewer images would otherwise leave the others' PNGs); a folder that holds anything
    else is refused. Entries named in ``keep`` (a resumed run's query journal) stay."""
    if not out.exists():
        return
    if not out.is_dir():
        raise RunError(f"--out {out} is a file; pass a folder for the attack outputs")
    check_unlocked(out)  # another process writing it: refuse before removing anything
    entries = [e for e in out.iterdir() if not e.name.startswith(".")]  # hidden ones: temporary files of a write
    if not entries:
        return
    manifest = read_manifest(out) or {}
    foreign = sorted(e.name for e in entries if e.name not in ATTACK_OUTPUTS)
    if foreign or not ((out / INFO_FILE).exists() or str(manifest.get("command", "")).startswith("attack")):
        shown = ", ".join(foreign[:3]) or ", ".join(sorted(e.name for e in entries)[:3])
        raise RunError(f"{out} holds files of no attack run ({shown}); choose an empty or new --out")
    log.info("removing the outputs of the earlier attack run in %s", out)
    for entry in out.iterdir():
        if entry.name in keep:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def _read_object(folder: Path, name: str) -> dict[str, Any]:
    path = folder / name
    obj = read_json(path)
    if not isinstance(obj, dict):
        raise RunError(f"{path} must hold a JSON object; rerun `dermadv attack run --out {folder}`")
    return obj


def write_attack_info(out: Path, info: AttackInfo) -> None:
    from dermadv import distributed as dd

    if dd.is_main():
        write_json(out / INFO_FILE, info.to_dict())


def read_predictions(folder: Path, classes: Sequence[str] | None = None) -> pd.DataFrame:
    """``predictions.csv``, checked: the columns every reader needs, one row per image and, given ``classes``, no
    class code outside them."""
    path = folder / PREDICTIONS_FILE
    if not path.exists():
        raise RunError(f"{path} not found; {_RUN_FIRST.format(folder=folder)}")
    table = pd.read_csv(path, dtype={"image_id": str, **dict.fromkeys(_CLASS_COLUMNS, str)})
    missing = [c for c in PREDICTION_COLUMNS if c not in table.columns]
    if missing:
        raise RunError(f"{path} lacks column(s) {', '.join(missing)}; rerun `dermadv attack run --out {folder}`")
    if table["image_id"].duplicated().any():
        dup = table.loc[table["image_id"].duplicated(), "image_id"].iloc[0]
        raise RunError(f"{path} lists image {dup!r} twice; rerun `dermadv attack run --out {folder}`")
    if classes is None:
        return table
    for col in (c for c in _CLASS_COLUMNS if c in table.columns):
        unknown = sorted(set(table[col].astype(str)) - set(classes))
        if unknown:
            raise RunError(
                f"{path} column {col} has class code(s) {', '.join(unknown)} not among the attack's classes "
                f"({', '.join(classes)}); was it written by another run?"
            )
    return table


def prediction_rows(
    image_ids: Sequence[str],
    labels: Sequence[str],
    classes: Sequence[str],
    clean_probs: np.ndarray,
    adv_probs: np.ndarray,
    inmem_preds: np.ndarray,
    queries: np.ndarray | None = None,
) -> list[dict[str, Any]]:
    """Rows of ``predictions.csv``: predictions and probabilities on the saved PNGs, and the in-memory prediction."""
    rows = []
    for r, image_id in enumerate(image_ids):
        row: dict[str, Any] = {
            "image_id": image_id,
            "label": labels[r],
            "clean_pred": classes[int(clean_probs[r].argmax())],
            "adv_pred": classes[int(adv_probs[r].argmax())],
            "inmem_adv_pred": classes[int(inmem_preds[r])],
        }
        if queries is not None:
            row["queries"] = int(queries[r])
        row.update({f"clean_prob_{c}": round(float(clean_probs[r, j]), 6) for j, c in enumerate(classes)})
        row.update({f"adv_prob_{c}": round(float(adv_probs[r, j]), 6) for j, c in enumerate(classes)})
        rows.append(row)
    return rows


def read_attack_metrics(folder: Path) -> AttackMetrics:
    """``attack_metrics.json``, written by ``evaluate-attack`` (and by ``attack run``)."""
    from dermadv.evaluation.attack_metrics import AttackMetrics

    return AttackMetrics.from_dict(_read_object(folder, METRICS_FILE))


def fooled(predictions: pd.DataFrame, target: str | None) -> np.ndarray:
    """Per row, whether the attack succeeded on the saved PNGs: predicted as the target, or (untargeted) not as the
    true class."""
    adv = predictions["adv_pred"].astype(str).to_numpy()
    return adv == target if target is not None else adv != predictions["label"].astype(str).to_numpy()


@dataclass(frozen=True)
class AttackRun:
    """An attack output folder as read: ``attack.json``, ``predictions.csv`` and the manifest's status."""

    folder: Path
    info: AttackInfo  # attack.json, kept whole: ``attack transfer`` writes it on
    predictions: pd.DataFrame
    status: str | None  # the manifest's; None where the folder has no manifest

    @classmethod
    def read(cls, folder: str | os.PathLike[str], *, allow_incomplete: bool = False, in_run: bool = False) -> AttackRun:
        """Read and check an attack folder. The folder of an unfinished run is refused, or read with a warning
        under ``allow_incomplete``; ``in_run``: read by the run that writes it, before it marks itself complete."""
        folder = Path(folder)
        if not folder.is_dir():
            raise RunError(f"attack output folder {folder} does not exist; {_RUN_FIRST.format(folder=folder)}")
        path = folder / INFO_FILE
        if not path.exists():
            raise RunError(f"{path} not found: not an attack output folder; {_RUN_FIRST.format(folder=folder)}")
        if not in_run:  # before the predictions are looked for: a half-written folder lacks them
            require_complete(folder, allow_incomplete=allow_incomplete)
        info = AttackInfo.read(folder)
        classes = info.classes or CLASSES
        target = info.extra.get("target", info.target)  # a target of the wrong type is refused, not dropped
        if target is not None and target not in classes:
            raise RunError(f"{path} names target {target!r}, not one of {', '.join(classes)}")
        manifest = read_manifest(folder)
        status = str(manifest.get("status")) if manifest is not None else None
        return cls(folder, info, read_predictions(folder, classes), status)

    @property
    def classes(self) -> tuple[str, ...]:
        return self.info.classes or CLASSES

    @property
    def target(self) -> str | None:
        return self.info.target

    @property
    def target_index(self) -> int | None:
        return self.info.target_index

    @property
    def eps(self) -> float | None:
        return float(self.info.eps) if self.info.eps is not None else None

    @property
    def method(self) -> str:
        return self.info.method or "attack"

    @property
    def image_size(self) -> tuple[int, ...]:
        if self.info.image_size is None:
            raise RunError(f"{self.folder / INFO_FILE} names no image_size; {_RUN_FIRST.format(folder=self.folder)}")
        return self.info.image_size

    @property
    def complete(self) -> bool:
        return self.status == "complete"

    @property
    def image_ids(self) -> list[str]:
        return [str(i) for i in self.predictions["image_id"]]

    @property
    def labels(self) -> list[str]:
        return self.predictions["label"].astype(str).tolist()

    @property
    def fooled(self) -> np.ndarray:
        return fooled(self.predictions, self.target)

    def metrics(self) -> AttackMetrics | None:
        """The folder's evaluation; None where it has not been evaluated."""
        return read_attack_metrics(self.folder) if (self.folder / METRICS_FILE).is_file() else None

    def image_path(self, image_id: str, kind: ImageKind = "adv") -> Path:
        return image_path(self.folder, image_id, kind)

    def check_images(self) -> None:
        """Refuse a folder whose clean or adversarial PNG of a listed image is missing."""
        missing = [i for i in self.image_ids if not all(self.image_path(i, k).is_file() for k in ("clean", "adv"))]
        if missing:
            raise RunError(
                f"{len(missing)} image(s) listed in {self.folder / PREDICTIONS_FILE} have no PNG under "
                f"{self.folder / 'images' / 'clean'} or {self.folder / 'images' / 'adv'} "
                f"(first: {', '.join(missing[:3])}); {_RUN_FIRST.format(folder=self.folder)}"
            )

    def load_images(self, kind: ImageKind, image_ids: Sequence[str] | None = None) -> np.ndarray:
        """The saved PNGs of ``image_ids`` (all listed images by default), N×H×W×3 uint8."""
        ids = self.image_ids if image_ids is None else image_ids
        return np.stack([read_png(self.image_path(i, kind)) for i in ids])
