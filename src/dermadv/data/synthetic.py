"""The built-in synthetic set: procedurally drawn dermoscopy-like images in HAM10000 layout.

Each lesion is drawn as optical-density maps (melanin, haemoglobin, deep pigment) plus a white overlay
(scale, scar, veil) over a skin background, then photographed one to three times with small changes of
pose, light, hair and dermatoscope vignetting. The class-conditional distributions of shape, border,
colour and texture overlap on purpose (atypical nevi, nevus-like melanomas, pigmented keratoses and
carcinomas), so a small CNN learns the set well but not perfectly.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from dermadv.data.classes import CLASSES
from dermadv.data.synthetic_lesions import another_view, draw_lesion, photograph, sample_skin
from dermadv.errors import ConfigError, DataError

log = logging.getLogger(__name__)

#: Bump when the drawing changes, so cached sets of an older look are not reused.
VERSION = 1
MARKER = "synthetic.json"
METADATA = "HAM10000_metadata.csv"
COLUMNS = ("lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization")

#: Share of images per class: HAM10000's order of frequency, less skewed (HAM10000 has 67% nv, 1.1% df).
FREQUENCIES: dict[str, float] = {
    "akiec": 0.08,
    "bcc": 0.08,
    "bkl": 0.13,
    "df": 0.07,
    "mel": 0.13,
    "nv": 0.45,
    "vasc": 0.06,
}


# ---------------------------------------------------------------------------------------------- metadata

_AGE = {"akiec": (68, 11), "bcc": (66, 12), "bkl": (60, 14), "df": (48, 14), "mel": (60, 15), "nv": (42, 16)}
_DX_TYPE = {
    "akiec": {"histo": 1.0},
    "bcc": {"histo": 1.0},
    "bkl": {"histo": 0.5, "consensus": 0.37, "confocal": 0.08, "follow_up": 0.05},
    "df": {"histo": 0.45, "consensus": 0.55},
    "mel": {"histo": 1.0},
    "nv": {"follow_up": 0.55, "histo": 0.35, "consensus": 0.09, "confocal": 0.01},
    "vasc": {"histo": 0.3, "consensus": 0.7},
}
_SITES = {
    "back": 0.22, "lower extremity": 0.2, "trunk": 0.14, "upper extremity": 0.11, "abdomen": 0.1, "face": 0.07,
    "chest": 0.04, "foot": 0.03, "neck": 0.02, "scalp": 0.015, "hand": 0.01, "ear": 0.005, "genital": 0.005,
    "acral": 0.005, "unknown": 0.02,
}  # fmt: skip


def _choose(rng: np.random.Generator, weights: dict[str, float]) -> str:
    p = np.array(list(weights.values()))
    return str(rng.choice(list(weights), p=p / p.sum()))


def _sample_metadata(rng: np.random.Generator, dx: str) -> dict[str, str]:
    mean, sd = _AGE.get(dx, (50, 18))
    age = "" if rng.random() < 0.006 else f"{float(np.clip(5 * round(rng.normal(mean, sd) / 5), 0, 85)):.1f}"
    sites = dict(_SITES)
    if dx in ("akiec", "bcc"):
        sites["face"], sites["scalp"], sites["neck"] = 0.35, 0.06, 0.06
    sex = "unknown" if rng.random() < 0.005 else ("male" if rng.random() < 0.54 else "female")
    return {"dx_type": _choose(rng, _DX_TYPE[dx]), "age": age, "sex": sex, "localization": _choose(rng, sites)}


@dataclass(frozen=True)
class _Planned:
    index: int
    dx: str
    views: int


def _class_counts(n_images: int) -> dict[str, int]:
    """Images per class by largest remainder; every class gets one when there are at least 7 images."""
    raw = {c: FREQUENCIES[c] * n_images for c in CLASSES}
    counts = {c: int(v) for c, v in raw.items()}
    for c in sorted(CLASSES, key=lambda c: counts[c] - raw[c])[: n_images - sum(counts.values())]:
        counts[c] += 1
    if n_images >= len(CLASSES):
        for c in CLASSES:
            if counts[c] == 0:
                counts[c], counts["nv"] = 1, counts["nv"] - 1
    return counts


def _plan(n_images: int, rng: np.random.Generator) -> list[_Planned]:
    """Lesions in random order, each with one to three photographs."""
    lesions: list[tuple[str, int]] = []
    for dx, count in _class_counts(n_images).items():
        while count > 0:
            views = min(count, int(rng.choice([1, 2, 3], p=[0.78, 0.16, 0.06])))
            lesions.append((dx, views))
            count -= views
    order = rng.permutation(len(lesions))
    return [_Planned(i, lesions[j][0], lesions[j][1]) for i, j in enumerate(order)]


# ---------------------------------------------------------------------------------------------- public API


def generate_synthetic(out: Path, *, n_images: int = 1400, seed: int = 0, size: tuple[int, int] = (150, 200)) -> Path:
    """Draw the synthetic set into ``out`` in HAM10000 layout and return ``out``.

    Writes ``HAM10000_metadata.csv`` (CRLF, like the original), ``images/SYN_*.jpg`` (JPEG quality 95)
    and ``synthetic.json`` (the parameters, written last), overwriting files of those names. Identical
    ``seed`` gives identical bytes for a given numpy/Pillow build. Use ``ensure_synthetic`` for a
    cached set that is never seen half-written.

    Args:
        n_images: number of images (lesions have one to three photographs each).
        size: (height, width) in pixels; HAM10000's frames are 450×600, 3:4 like the default.
    """
    h, w = size
    if n_images < 1:
        raise ConfigError(f"n_images must be at least 1; got {n_images}")
    if min(h, w) < 32:
        raise ConfigError(f"synthetic image size must be at least 32×32 pixels; got {h}×{w}")
    t0 = time.perf_counter()
    out = Path(out)
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    (out / MARKER).unlink(missing_ok=True)  # redrawing in place: incomplete until the end
    px = min(h, w) / 150
    plan_rng = np.random.default_rng([seed, VERSION, 0])
    plan = _plan(n_images, plan_rng)
    image_numbers = iter(plan_rng.permutation(n_images) + 1)
    rows: list[dict[str, str]] = []
    for lesion in plan:
        rng = np.random.default_rng([seed, VERSION, 1, lesion.index])
        drawn = draw_lesion(rng, lesion.dx, h, w, px)
        skin, meta, hairy = sample_skin(rng), _sample_metadata(rng, lesion.dx), bool(rng.random() < 0.35)
        lesion_id = f"SYNL_{lesion.index + 1:07d}"
        for view in range(lesion.views):
            density, white = drawn.density, drawn.white
            if view > 0:
                density, white = another_view(rng, density, white, px)
            image_id = f"SYN_{next(image_numbers):07d}"
            Image.fromarray(photograph(rng, skin, density, white, px, hairy=hairy)).save(
                images / f"{image_id}.jpg", quality=95
            )
            rows.append({"lesion_id": lesion_id, "image_id": image_id, "dx": lesion.dx, **meta})
    rows.sort(key=lambda r: r["image_id"])
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\r\n")
    writer.writeheader()
    writer.writerows(rows)
    (out / METADATA).write_bytes(buf.getvalue().encode("utf-8"))
    marker = {"generator": __name__, "version": VERSION, "seed": seed, "n_images": n_images, "size": [h, w]}
    (out / MARKER).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
    log.info("drew %d synthetic images into %s in %.1f s", n_images, out, time.perf_counter() - t0)
    return out


def default_synthetic_root(*, n_images: int = 1400, seed: int = 0) -> Path:
    """Where the built-in set lives: ``$DERMADV_CACHE`` (or ``~/.cache/dermadv``)/synthetic-v1-seed0-n1400."""
    cache = os.environ.get("DERMADV_CACHE")
    base = Path(cache).expanduser() if cache else Path.home() / ".cache" / "dermadv"
    return base / f"synthetic-v{VERSION}-seed{seed}-n{n_images}"


def _read_marker(root: Path) -> dict[str, object] | None:
    try:
        marker = json.loads((root / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) else None


def _is_complete(root: Path, *, n_images: int, seed: int) -> bool:
    marker = _read_marker(root)
    if marker is None or [marker.get(k) for k in ("version", "seed", "n_images")] != [VERSION, seed, n_images]:
        return False
    if not (root / METADATA).is_file() or not (root / "images").is_dir():
        return False
    return sum(1 for e in os.scandir(root / "images") if e.name.endswith(".jpg")) == n_images


def ensure_synthetic(root: Path | None = None, *, n_images: int = 1400, seed: int = 0) -> Path:
    """Return a folder holding the synthetic set, drawing it first if it is missing.

    The set is drawn into a temporary folder beside ``root`` and renamed into place, so an
    interrupted run leaves no half-written set behind, and two processes racing both end with one.
    """
    root = Path(root) if root is not None else default_synthetic_root(n_images=n_images, seed=seed)
    if _is_complete(root, n_images=n_images, seed=seed):
        return root
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        marker = _read_marker(root)
        what = (
            f"holds a different synthetic set (seed {marker.get('seed')}, {marker.get('n_images')} images, "
            f"version {marker.get('version')})"
            if marker
            else "is not a complete synthetic set"
        )
        raise DataError(f"{root} {what}, not seed {seed} with {n_images} images; delete it or choose another folder")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root.parent, prefix=f".{root.name}.", suffix=".tmp"))
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; the set is ordinary shared data
    try:
        generate_synthetic(tmp, n_images=n_images, seed=seed)
        try:
            os.rename(tmp, root)  # atomic; replaces an empty folder, fails on a filled one
        except OSError:
            if not _is_complete(root, n_images=n_images, seed=seed):
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return root
