"""Saving an attack's images: 8-bit rounding within the budget, and PNGs that keep every pixel within eps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from dermadv.attacks.generator import GeneratorAttack
from dermadv.data.classes import CLASSES
from dermadv.evaluation.attack_run import read_png
from dermadv.pipeline.apply import AttackTask, quantise, run_attack

EPS_VALUES = [1 / 255, 2 / 255, 8 / 255]


def _random_uint8(n: int, h: int, w: int, *, seed: int) -> np.ndarray:
    """Random images with some pixels at 0 and 255, where clipping to [0, 1] matters."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, h, w, 3), dtype=np.uint8)
    images[:, :2] = 0
    images[:, -2:] = 255
    return images


@pytest.mark.parametrize("eps", [*EPS_VALUES, 2.5 / 255], ids=lambda e: f"{e * 255:g}/255")
def test_quantise_stays_within_eps_even_for_an_overshooting_attack(eps: float) -> None:
    clean = torch.from_numpy(_random_uint8(4, 12, 16, seed=1)).permute(0, 3, 1, 2)
    far = (clean.float() / 255 + 0.2 * torch.randn(clean.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    q = quantise(far, clean, eps)
    diff = q.int() - clean.int()
    assert q.dtype == torch.uint8
    assert diff.abs().max() == int(eps * 255 + 1e-6)  # floor: 2.5/255 allows 2 steps, not 3
    assert (diff.abs().float() / 255).max() <= eps + 1e-12
    inside = ((far * 255).round() - clean.float()).abs() <= int(eps * 255 + 1e-6)
    assert torch.equal(q[inside].float(), (far * 255).round()[inside])  # pixels within budget are only rounded


def _tiny_model(num_classes: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, num_classes)
    )


@pytest.mark.parametrize("shape", [(30, 40), (150, 200)], ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("eps", EPS_VALUES, ids=lambda e: f"{round(e * 255)}/255")
def test_saved_pngs_keep_every_pixel_within_eps(
    eps: float, shape: tuple[int, int], tmp_path: Path, saturated_generator
) -> None:
    attack = GeneratorAttack(saturated_generator(eps))
    images = _random_uint8(3, *shape, seed=2)
    task = AttackTask(
        attack=attack,
        model=_tiny_model(len(CLASSES)),
        classes=CLASSES,
        images=images,
        image_ids=[f"IMG_{i}" for i in range(len(images))],
        labels=np.arange(len(images), dtype=np.int64),
        indices=np.arange(len(images)),
        target=5,
        eps=eps,
    )
    run_attack(task, tmp_path, progress=False)
    k = round(eps * 255)
    for i in range(len(images)):
        clean = read_png(tmp_path / "images" / "clean" / f"IMG_{i}.png").astype(int)
        adv = read_png(tmp_path / "images" / "adv" / f"IMG_{i}.png").astype(int)
        amplified = read_png(tmp_path / "images" / "perturbation" / f"IMG_{i}.png")
        assert clean.shape == adv.shape == amplified.shape == (*shape, 3)
        assert np.array_equal(clean, images[i])
        diff = adv - clean
        assert np.abs(diff).max() == k  # within the budget, and using all of it
        assert diff.min() == -k
    assert len(pd.read_csv(tmp_path / "predictions.csv")) == len(images)
