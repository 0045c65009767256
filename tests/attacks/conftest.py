"""Shared attack-test fixtures: the real pipeline on a small synthetic set (the tiny classifier is in tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

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
def adv_folder(tmp_path_factory: pytest.TempPathFactory, pipeline: Pipeline) -> Path:
    """``attack run`` of the fitted generator on the test split of classifier A."""
    from dermadv.attacks.runner import AttackRunConfig, attack_split

    out = tmp_path_factory.mktemp("adv") / "adv-test"
    attack_split(
        AttackRunConfig(
            checkpoint=pipeline.checkpoint,
            out=out,
            generator=pipeline.generator,
            data=str(pipeline.data),
            target=pipeline.target,
            progress=False,
        )
    )
    return out
