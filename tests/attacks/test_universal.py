"""The universal perturbation: fitted on training images, it must transfer to held-out ones."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dermadv.attacks.universal import UniversalPerturbation, iter_image_batches, random_perturbation_like
from dermadv.errors import ConfigError, RunError

EPS = 8 / 255
TARGET = 0


def _fooling(model, images: torch.Tensor, perturbation: torch.Tensor) -> float:
    with torch.no_grad():
        pred = model((images + perturbation).clamp(0, 1)).argmax(1)
    return (pred == TARGET).float().mean().item()


def test_uap_fitted_on_train_beats_random_on_test(tiny) -> None:
    uap = UniversalPerturbation(EPS, epochs=3, seed=0).fit(tiny.model, tiny.train_images, target=TARGET)
    delta = uap.perturbation
    assert delta.shape == tiny.test_images.shape[1:]
    assert delta.abs().max() <= EPS + 1e-7

    held_out = tiny.test_images[tiny.test_labels != TARGET]
    fitted = _fooling(tiny.model, held_out, delta)
    random = max(_fooling(tiny.model, held_out, random_perturbation_like(EPS, delta.shape, seed=s)) for s in range(3))
    assert fitted > random + 0.1, (fitted, random)

    result = uap(tiny.model, held_out, target=TARGET)
    assert result.success.float().mean().item() == pytest.approx(fitted)


def test_fit_accepts_uint8_arrays_and_loaders(tiny) -> None:
    stored = (tiny.train_images[:128] * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()  # N×H×W×3
    from_array = UniversalPerturbation(EPS, epochs=1, seed=0).fit(tiny.model, stored, target=TARGET)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(tiny.train_images[:128], tiny.train_labels[:128]), batch_size=32
    )
    from_loader = UniversalPerturbation(EPS, epochs=1).fit(tiny.model, loader, target=TARGET)
    from_generator = UniversalPerturbation(EPS, epochs=2).fit(
        tiny.model, (b for b in tiny.train_images[:128].split(32)), target=TARGET
    )
    for uap in (from_array, from_loader, from_generator):
        assert uap.perturbation.shape == (3, 16, 16)
        assert uap.perturbation.abs().max() <= EPS + 1e-7


def test_iter_image_batches_converts_stored_layout() -> None:
    stored = np.random.default_rng(0).integers(0, 256, size=(5, 4, 6, 3), dtype=np.uint8)
    (batch,) = list(iter_image_batches(stored, batch_size=8))
    assert batch.shape == (5, 3, 4, 6)
    assert torch.allclose(batch[2, 1], torch.from_numpy(stored[2, :, :, 1]).float() / 255)


def test_random_perturbation_is_a_sign_pattern() -> None:
    delta = random_perturbation_like(EPS, (3, 8, 8), seed=1)
    assert torch.allclose(delta.abs(), torch.full_like(delta, EPS))
    assert 0.3 < (delta > 0).float().mean() < 0.7
    assert torch.equal(delta, random_perturbation_like(EPS, (3, 8, 8), seed=1))


def test_l2_uap_stays_in_ball(tiny) -> None:
    uap = UniversalPerturbation(0.5, norm="l2", epochs=1, lr=0.05).fit(tiny.model, tiny.train_images[:128], target=0)
    assert uap.perturbation.norm() <= 0.5 + 1e-5


def test_unfitted_or_wrong_size_is_refused(tiny) -> None:
    uap = UniversalPerturbation(EPS)
    with pytest.raises(RunError):
        uap(tiny.model, tiny.test_images[:2], target=0)
    uap.perturbation = torch.zeros(3, 8, 8)
    with pytest.raises(ConfigError):
        uap(tiny.model, tiny.test_images[:2], target=0)
