"""Shared attack-test fixtures: a tiny in-memory classifier trained on colour-cast images."""

from __future__ import annotations

from dataclasses import dataclass

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
