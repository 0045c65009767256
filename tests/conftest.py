"""Fixtures shared across the suite: the real HAM10000 folder (or a skip), a small synthetic set, a private cache,
and the real pipeline on that set (two classifiers, a fitted generator, an attack folder)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

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


# --- the real pipeline on a small synthetic HAM10000-layout set: two classifiers and a fitted generator ---


@dataclass(frozen=True)
class Pipeline:
    data: Path  # the suite's small synthetic set (``synthetic_root`` in tests/conftest.py)
    checkpoint: Path  # classifier A (resnet18 at 32 px)
    other_checkpoint: Path  # classifier B: same data and settings, another seed
    generator: Path  # fitted against A toward ``target`` on the train split
    target: str


@pytest.fixture(scope="session")
def session_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A private ``$DERMADV_CACHE`` for the session-wide pipeline, so it never fills ``~/.cache/dermadv``."""
    path = tmp_path_factory.mktemp("dermadv-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DERMADV_CACHE", str(path))
        yield path


def train_tiny_classifier(data: Path, out: Path, *, seed: int) -> Path:
    from dermadv.training.classifier import TrainConfig, fit

    cfg = TrainConfig(
        out=out, data=str(data), arch="resnet18", image_size=32, epochs=4, batch_size=32, lr=3e-3, seed=seed
    )
    return fit(replace(cfg, warmup_epochs=0.5, patience=100, progress=False))


@pytest.fixture(scope="session")
def pipeline(tmp_path_factory: pytest.TempPathFactory, synthetic_root: Path, session_cache: Path) -> Pipeline:
    from dermadv.training.generator import GeneratorConfig, fit_generator

    root = tmp_path_factory.mktemp("pipeline")
    checkpoint = train_tiny_classifier(synthetic_root, root / "clf-a", seed=0)
    other = train_tiny_classifier(synthetic_root, root / "clf-b", seed=1)
    # df: a class the classifier rarely predicts, so a fitted generator has far to move it
    generator = fit_generator(
        GeneratorConfig(
            checkpoint=checkpoint,
            out=root / "gen",
            data=str(synthetic_root),
            target="df",
            eps="8/255",
            epochs=3,
            batch_size=16,
            lr=5e-3,
            channels=8,
            res_blocks=1,
            progress=False,
        )
    )
    return Pipeline(synthetic_root, checkpoint, other, generator, "df")


@pytest.fixture(scope="session")
def generator_run(pipeline: Pipeline) -> Any:
    """The ``AttackRunConfig`` of the fitted generator on the test split of classifier A (``out`` still to set)."""
    from dermadv.pipeline.attack import AttackRunConfig

    data, target = str(pipeline.data), pipeline.target
    return AttackRunConfig(
        pipeline.checkpoint, Path(), generator=pipeline.generator, data=data, target=target, progress=False
    )


@pytest.fixture(scope="session")
def adv_folder(tmp_path_factory: pytest.TempPathFactory, generator_run: Any) -> Path:
    """``attack run`` of the fitted generator on the test split of classifier A."""
    from dermadv.pipeline.attack import attack_split

    out = tmp_path_factory.mktemp("adv") / "adv-test"
    attack_split(replace(generator_run, out=out))
    return out


@dataclass(frozen=True)
class HeldOut:
    """Classifier A of :func:`pipeline` and its held-out test split."""

    model: torch.nn.Module
    image_ids: list[str]
    images: torch.Tensor  # uint8 N×H×W×3
    labels: np.ndarray


@pytest.fixture(scope="session")
def held_out(pipeline: Pipeline) -> HeldOut:
    from dermadv.data.load import prepare
    from dermadv.models.checkpoints import load_checkpoint

    model, meta = load_checkpoint(pipeline.checkpoint)
    split_file = pipeline.checkpoint.parent / "split.csv"
    prep = prepare(str(pipeline.data), image_size=meta.image_size, split_file=split_file, progress=False)
    idx = prep.indices("test")
    ids = [prep.dataset.image_ids[i] for i in idx]
    return HeldOut(model, ids, torch.from_numpy(np.asarray(prep.images[idx])), prep.dataset.labels[idx])


@pytest.fixture()
def saturated_generator() -> Callable[[float], torch.nn.Module]:
    """A generator whose ``tanh`` is driven to ±1, so its perturbation sits at the edge of the budget."""
    from dermadv.attacks.generator import PerturbationGenerator

    def make(eps: float) -> torch.nn.Module:
        torch.manual_seed(0)
        generator = PerturbationGenerator(eps, channels=8, res_blocks=1).eval()
        with torch.no_grad():
            generator.head.weight.mul_(1e3)
        return generator

    return make
