"""Fixtures shared across the suite: the real HAM10000 folder (or a skip), a small synthetic set, a private cache."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dermadv.data.dataset import ImageSet

REPO_ROOT = Path(__file__).resolve().parents[1]

#: Images in the shared synthetic set and their (height, width): small enough to draw in a few seconds.
SYNTHETIC_N = 140
SYNTHETIC_SIZE = (60, 80)


def ham10000_path() -> Path:
    """``$DERMADV_HAM10000`` or ``../shared/data/HAM10000`` beside the repository."""
    env = os.environ.get("DERMADV_HAM10000")
    return Path(env) if env else REPO_ROOT.parent / "shared" / "data" / "HAM10000"


@pytest.fixture(scope="session")
def ham10000_root() -> Path:
    """The real HAM10000 folder; skips the test with the reason when it is absent."""
    root = ham10000_path()
    if not (root / "HAM10000_metadata.csv").is_file():
        pytest.skip(
            f"real HAM10000 data not found at {root} (no HAM10000_metadata.csv); "
            "set $DERMADV_HAM10000 or place it at ../shared/data/HAM10000"
        )
    return root


@pytest.fixture(scope="session")
def ham10000_dataset(ham10000_root: Path) -> ImageSet:
    """The real HAM10000 set, loaded (and validated) once per session."""
    from dermadv.data.ham10000 import load_ham10000

    return load_ham10000(ham10000_root)


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small built-in synthetic set in HAM10000 layout (140 images, 60×80), drawn once per session."""
    from dermadv.data.synthetic import generate_synthetic

    return generate_synthetic(
        tmp_path_factory.mktemp("synthetic") / "set", n_images=SYNTHETIC_N, size=SYNTHETIC_SIZE, seed=0
    )


@pytest.fixture()
def dermadv_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private, empty ``$DERMADV_CACHE`` for one test, so no test reads or fills the user's cache."""
    cache = tmp_path / "dermadv-cache"
    monkeypatch.setenv("DERMADV_CACHE", str(cache))
    return cache
