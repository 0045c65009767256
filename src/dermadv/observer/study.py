"""Study design: a seeded sample of clean/perturbed items, exported under opaque ids, with a separate key.

A study folder holds::

    manifest.json      run manifest
    study.json         what the server needs: design, item ids, the names of the images it wrote (no conditions,
                       no source ids)
    answer_key.json    the plan: item id -> source image, condition / altered side, true label (never served)
    images/<item>.png            single design: the image shown
    images/<item>-left.png, -right.png   2AFC design: the pair shown side by side
                       (stored PNGs: size, bytes outside the pixels and mtime say nothing about the plan,
                       see :mod:`dermadv.observer.images`)
    answers.sqlite     observers, their item orders and answers (see :mod:`dermadv.observer.storage`)
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import secrets
import shutil
import stat
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from dermadv.data.classes import CLASSES
from dermadv.errors import ConfigError, DataError, RunError
from dermadv.evaluation.attack_info import INFO_FILE, AttackInfo
from dermadv.evaluation.attack_run import PREDICTIONS_FILE, image_path, read_predictions, saved_images
from dermadv.observer.images import PNG_SIGNATURE, check_same_size, write_study_images
from dermadv.observer.storage import StudyDB
from dermadv.runs import Run, read_json, require_complete, write_json

log = logging.getLogger(__name__)

Design = Literal["single", "2afc"]
Condition = Literal["clean", "perturbed"]
Side = Literal["left", "right"]
DESIGNS: tuple[Design, ...] = ("single", "2afc")
SIDES: tuple[Side, ...] = ("left", "right")

STUDY_FILE = "study.json"
KEY_FILE = "answer_key.json"
DB_FILE = "answers.sqlite"
IMAGES_DIR = "images"

#: Item ids are 128 random bits in hex: unguessable and safe to put in a file name.
ITEM_ID_RE = re.compile(r"[0-9a-f]{32}")
#: ``secrets.token_urlsafe(32)`` gives 43 characters; anything else is rejected before any lookup.
TOKEN_RE = re.compile(r"[A-Za-z0-9_-]{43}")


@dataclass(frozen=True)
class Study:
    """The public part of a study: everything the server may know."""

    path: Path
    study_id: str
    design: Design
    item_ids: tuple[str, ...]
    classes: tuple[str, ...]
    seed: int
    # the file names the study wrote under images/ (studies of older versions: the names their item ids give)
    image_names: frozenset[str] = frozenset()

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    @property
    def db_path(self) -> Path:
        return self.path / DB_FILE

    def image_path(self, item_id: str, side: Side | None = None) -> Path:
        """File of an item's image; ``side`` is required for 2AFC and refused for the single design."""
        if item_id not in self.item_ids or not ITEM_ID_RE.fullmatch(item_id):
            raise DataError(f"item {item_id!r} is not in study {self.study_id}")
        if (side is None) != (self.design == "single") or (side is not None and side not in SIDES):
            raise DataError(f"side {side!r} does not fit the {self.design} design")
        name = f"{item_id}.png" if side is None else f"{item_id}-{side}.png"
        return self.path / IMAGES_DIR / name

    def read_image(self, item_id: str, side: Side | None = None) -> bytes:
        """The bytes of an item's image: only a file the study wrote, by name, and never through a link.

        A symbolic link, or a hard link (a file with more than one name, such as a second name of the answer
        key put in place of an image), could serve any file; so could a file that resolves outside ``images/``.
        What is served must also be a PNG.
        """
        path = self.image_path(item_id, side)
        folder = self.path / IMAGES_DIR
        if path.name not in self.image_names:
            raise DataError(f"{path.name} is not an image study {self.study_id} wrote; recreate the study")
        if folder.is_symlink() or path.is_symlink() or path.resolve().parent != folder.resolve():
            raise DataError(f"{path} is a link or lies outside {folder}; study images must be plain files")
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except OSError as e:
            raise DataError(f"image {path} cannot be read ({e.strerror}); recreate the study") from None
        with os.fdopen(fd, "rb") as f:
            info = os.fstat(f.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise DataError(f"{path} is not a regular file; study images must be plain files")
            if info.st_nlink > 1:
                raise DataError(
                    f"{path} has {info.st_nlink} names (a hard link): study images must be files of their own; "
                    "recreate the study"
                )
            content = f.read()
        if not content.startswith(PNG_SIGNATURE):
            raise DataError(f"{path} is not a PNG; recreate the study")
        return content


@dataclass(frozen=True)
class KeyEntry:
    """The truth about one item (from ``answer_key.json``)."""

    item_id: str
    image_id: str
    label: str | None
    condition: Condition | None  # single design
    altered_side: Side | None  # 2AFC design

    @property
    def altered(self) -> bool:
        return self.condition == "perturbed"


@dataclass(frozen=True)
class Invitation:
    observer_id: int
    name: str
    token: str

    def link(self, host: str = "127.0.0.1", port: int = 8000) -> str:
        host_part = f"[{host}]" if ":" in host else host
        return f"http://{host_part}:{port}/s/{self.token}"


def hash_token(token: str) -> str:
    """Tokens are stored hashed, so the database alone does not give access."""
    return hashlib.sha256(token.encode("ascii")).hexdigest()


def _labels(attack_dir: Path) -> dict[str, str]:
    if not (attack_dir / PREDICTIONS_FILE).exists():
        log.warning(
            "%s not found: the study will not know true labels (no diagnosis accuracy)", attack_dir / PREDICTIONS_FILE
        )
        return {}
    predictions = read_predictions(attack_dir)
    return dict(zip(predictions["image_id"], predictions["label"], strict=True))


def create_study(
    attack_dir: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    n: int = 50,
    perturbed_share: float = 0.6,
    seed: int = 0,
    design: Design = "single",
    allow_incomplete: bool = False,
) -> Study:
    """Sample ``n`` clean/adversarial pairs from an attack output folder and write a study folder.

    Single design: ``round(n * perturbed_share)`` items are shown perturbed, the rest clean.
    2AFC design: every item shows both versions, the altered one on a seeded, balanced side;
    ``perturbed_share`` does not apply. The folder of an unfinished attack run is refused (a study would sample
    the images written so far), or used with a warning under ``allow_incomplete``.
    """
    attack_dir, out = Path(attack_dir), Path(out)
    if design not in DESIGNS:
        raise ConfigError(f"design must be one of {', '.join(DESIGNS)}; got {design!r}")
    if not 0.0 <= perturbed_share <= 1.0:
        raise ConfigError(f"perturbed share must be in [0, 1]; got {perturbed_share}")
    if n < 1:
        raise ConfigError(f"n must be at least 1; got {n}")
    if seed < 0:
        raise ConfigError(f"seed must be at least 0; got {seed}")
    if not attack_dir.is_dir():
        raise DataError(f"attack folder {attack_dir} not found; run `dermadv attack run` first or fix the path")
    require_complete(attack_dir, allow_incomplete=allow_incomplete)
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"{out} already exists and is not empty; choose another --out")
    image_ids = sorted(saved_images(attack_dir, "clean") & saved_images(attack_dir, "adv"))
    if not image_ids:
        raise DataError(f"no clean/adversarial pairs in {attack_dir}/images/{{clean,adv}}/<id>.png")
    if n > len(image_ids):
        raise ConfigError(f"n={n} exceeds the {len(image_ids)} image pairs in {attack_dir}; use --n {len(image_ids)}")
    labels = _labels(attack_dir)
    attack = AttackInfo.read(attack_dir) if (attack_dir / INFO_FILE).exists() else AttackInfo()

    rng = np.random.default_rng(seed)
    sample = [image_ids[i] for i in rng.choice(len(image_ids), size=n, replace=False)]
    if design == "single":
        n_perturbed = round(n * perturbed_share)
        flags = rng.permutation(np.arange(n) < n_perturbed)
        conditions: list[Condition | None] = ["perturbed" if f else "clean" for f in flags]
        sides: list[Side | None] = [None] * n
    else:
        conditions = [None] * n
        sides = ["left" if f else "right" for f in rng.permutation(np.arange(n) < n // 2)]
    item_ids = [secrets.token_hex(16) for _ in range(n)]
    study_id = secrets.token_hex(6)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    try:
        config = {"attack_dir": str(attack_dir), "n": n, "perturbed_share": perturbed_share, "design": design}
        run = Run(tmp, command="observer create", config=config, seed=seed)
        images = tmp / IMAGES_DIR
        images.mkdir()
        key, jobs = [], []
        for item_id, image_id, condition, side in zip(item_ids, sample, conditions, sides, strict=True):
            clean, adv = image_path(attack_dir, image_id, "clean"), image_path(attack_dir, image_id, "adv")
            check_same_size(clean, adv)
            if side is None:
                jobs.append((adv if condition == "perturbed" else clean, images / f"{item_id}.png"))
            else:
                other: Side = "right" if side == "left" else "left"
                jobs += [(adv, images / f"{item_id}-{side}.png"), (clean, images / f"{item_id}-{other}.png")]
            key.append(
                {
                    "item_id": item_id,
                    "image_id": image_id,
                    "label": labels.get(image_id),
                    "condition": condition,
                    "altered_side": side,
                }
            )
        # Re-encoded (not copied): no metadata chunk can name the source, and size and mtime say nothing.
        write_study_images(jobs, mtime=int(time.time()))
        public_ids = sorted(item_ids)  # sorted random ids: the listing order says nothing about the plan
        write_json(
            tmp / STUDY_FILE,
            {
                "format": 1,
                "study_id": study_id,
                "design": design,
                "seed": seed,
                "classes": list(CLASSES),
                "item_ids": public_ids,
                "images": sorted(p.name for _, p in jobs),  # the only files the app serves
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            },
        )
        write_json(
            tmp / KEY_FILE,
            {
                "study_id": study_id,
                "design": design,
                "seed": seed,
                "perturbed_share": perturbed_share if design == "single" else None,
                "source": str(attack_dir.resolve()),
                "attack": {
                    "method": attack.method,
                    "eps": attack.eps,
                    "target": attack.target,
                    "image_size": list(attack.image_size) if attack.image_size is not None else None,
                },
                "items": key,
            },
        )
        StudyDB(tmp / DB_FILE).initialise(study_id=study_id, design=design, item_ids=public_ids)
        run.finish(study_id=study_id, n_items=n)
        if out.exists():
            out.rmdir()
        os.rename(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    log.info("study %s: %d %s items written to %s", study_id, n, design, out)
    return load_study(out)


def load_study(study_dir: str | os.PathLike[str]) -> Study:
    """Read the public part of a study (``study.json``); never touches the answer key."""
    path = Path(study_dir)
    meta_path = path / STUDY_FILE
    if not meta_path.exists():
        raise RunError(f"{path} is not a study folder (no {STUDY_FILE}); create one with `dermadv observer create`")
    meta = read_json(meta_path)
    design = meta.get("design")
    if design not in DESIGNS:
        raise RunError(f"{meta_path}: unknown design {design!r}; expected one of {', '.join(DESIGNS)}")
    item_ids = tuple(meta["item_ids"])
    bad = [i for i in item_ids if not ITEM_ID_RE.fullmatch(i)]
    if bad:
        raise RunError(f"{meta_path}: malformed item id {bad[0]!r}; recreate the study")
    names = meta.get("images")
    if names is None:  # a study of an older version: the names its item ids give
        sides = [""] if design == "single" else [f"-{side}" for side in SIDES]
        names = [f"{i}{side}.png" for i in item_ids for side in sides]
    return Study(path, meta["study_id"], design, item_ids, tuple(meta["classes"]), int(meta["seed"]), frozenset(names))


def load_answer_key(study_dir: str | os.PathLike[str]) -> dict[str, KeyEntry]:
    """The plan of a study, by item id."""
    path = Path(study_dir) / KEY_FILE
    if not path.exists():
        raise RunError(f"answer key {path} not found; analysis needs the study folder written by `observer create`")
    return {
        e["item_id"]: KeyEntry(e["item_id"], e["image_id"], e.get("label"), e.get("condition"), e.get("altered_side"))
        for e in read_json(path)["items"]
    }


def invite_observer(study_dir: str | os.PathLike[str], name: str, *, reissue: bool = False) -> Invitation:
    """Add an observer with a fresh unguessable token and their own seeded item order.

    ``reissue=True`` gives an existing observer a new token (the old link stops working; answers stay).
    """
    study = load_study(study_dir)
    name = name.strip()
    if not name:
        raise ConfigError("observer name is empty; pass --name 'Observer A'")
    db = StudyDB(study.db_path)
    token = secrets.token_urlsafe(32)
    if reissue:
        observer_id = db.replace_token(name, hash_token(token))
        return Invitation(observer_id, name, token)
    # Order is seeded by (study seed, observer number) so it can be reproduced, yet differs between observers.
    rng = np.random.default_rng([study.seed, db.observer_count() + 1])
    order = [study.item_ids[i] for i in rng.permutation(study.n_items)]
    observer_id = db.add_observer(name, hash_token(token), order)
    return Invitation(observer_id, name, token)
