"""Shared attack-test fixtures: a tiny in-memory classifier, and the real pipeline on a small synthetic set."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import torch
from torch import nn

from dermadv.models.classifier import Classifier

NUM_CLASSES = 4
SIZE = 16


@dataclass(frozen=True)
class TinySetup:
    model: Classifier
    train_images: torch.Tensor  # float N×3×H×W on the 8-bit grid
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    num_classes: int = NUM_CLASSES


def make_images(n: int, *, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Grey textured images whose class is a colour cast of random strength (some images near the boundary)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % NUM_CLASSES
    casts = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [-1.0, -1.0, -1.0]])
    strength = 0.02 + 0.12 * torch.rand(n, generator=g)
    texture = 0.08 * torch.randn(n, 1, SIZE, SIZE, generator=g) + 0.03 * torch.randn(n, 3, SIZE, SIZE, generator=g)
    images = 0.5 + texture + (strength[:, None] * casts[labels])[:, :, None, None]
    return (images.clamp(0, 1) * 255).round() / 255, labels


def tiny_backbone() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, NUM_CLASSES),
    )


@pytest.fixture(scope="session")
def tiny() -> TinySetup:
    torch.manual_seed(0)
    train_images, train_labels = make_images(800, seed=1)
    test_images, test_labels = make_images(200, seed=2)
    model = Classifier(tiny_backbone(), NUM_CLASSES)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(3)
    for _ in range(8):
        for index in torch.randperm(len(train_images), generator=g).split(64):
            loss = nn.functional.cross_entropy(model(train_images[index]), train_labels[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    return TinySetup(model, train_images, train_labels, test_images, test_labels)


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
