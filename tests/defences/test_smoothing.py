"""Randomized smoothing: the radius formula on constructed cases, soundness against a known boundary, and ART."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import norm
from torch import nn

from dermadv.defences.smoothing import (
    ABSTAIN,
    Certificate,
    SmoothedClassifier,
    certified_accuracy,
    certified_radius,
    lower_confidence_bound,
)
from dermadv.errors import ConfigError


class Constant(nn.Module):
    """Always class ``k`` of 4, whatever the noise: every vote agrees."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.k = k

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return nn.functional.one_hot(torch.full((len(images),), self.k), 4).float() * 5


class HalfSpace(nn.Module):
    """Class 1 where ``w·x > b``, else 0: the L2 distance to the boundary is ``|w·x - b| / ‖w‖``."""

    def __init__(self, w: torch.Tensor, b: float) -> None:
        super().__init__()
        self.w, self.b = w, b

    def distance(self, images: torch.Tensor) -> np.ndarray:
        return ((images.flatten(1) @ self.w - self.b).abs() / self.w.norm()).numpy()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        side = images.flatten(1) @ self.w - self.b
        return torch.stack([-side, side], 1)


def test_radius_of_a_unanimous_vote_matches_the_formula() -> None:
    """With all n votes for one class, Clopper–Pearson gives pA_lower = alpha^(1/n) and R = sigma·Φ⁻¹(alpha^(1/n))."""
    sigma, n, alpha = 0.25, 500, 0.001
    images = torch.rand(3, 3, 8, 8)
    cert = SmoothedClassifier(Constant(2), sigma, batch_size=128).certify(images, n0=20, n=n, alpha=alpha)
    expected_p = alpha ** (1 / n)
    np.testing.assert_allclose(cert.p_lower, expected_p, rtol=1e-9)
    np.testing.assert_allclose(cert.radius, sigma * norm.ppf(expected_p), rtol=1e-9)
    assert (cert.prediction == 2).all()


def test_radius_matches_the_formula_for_a_split_vote() -> None:
    assert certified_radius(0.5, 0.5) == 0 and certified_radius(0.3, 0.5) == 0
    p = lower_confidence_bound(np.array([900, 0]), 1000, 0.001)
    assert p[1] == 0 and 0.85 < p[0] < 0.9
    np.testing.assert_allclose(certified_radius(p, 0.5), [0.5 * norm.ppf(p[0]), 0.0])


def test_certified_radius_never_exceeds_the_true_distance_and_comes_close() -> None:
    """Against a half-space the smoothed probability is Φ(d/σ), so the certificate is sound and nearly tight."""
    g = torch.Generator().manual_seed(0)
    model = HalfSpace(torch.randn(3 * 4 * 4, generator=g), 0.0)
    images = torch.randn(12, 3, 4, 4, generator=g) * 0.2
    sigma = 0.25
    cert = SmoothedClassifier(model, sigma, batch_size=1000, seed=1).certify(images, n0=100, n=4000, alpha=0.001)
    distance = model.distance(images)
    certified = cert.prediction != ABSTAIN
    assert (cert.radius <= distance + 1e-9).all()
    assert certified.sum() >= 6
    assert (cert.radius[certified] >= distance[certified] - 0.25 * sigma).all()
    with torch.no_grad():
        assert (cert.prediction[certified] == model(images[certified]).argmax(1).numpy()).all()


def test_predict_abstains_on_the_boundary_and_answers_far_from_it() -> None:
    model = HalfSpace(torch.ones(3 * 4 * 4), 0.0)
    on_boundary = torch.zeros(1, 3, 4, 4)
    far = torch.full((1, 3, 4, 4), 0.5)
    smoothed = SmoothedClassifier(model, 0.25, seed=0)
    assert smoothed.predict(on_boundary, n=200, alpha=0.001)[0] == ABSTAIN
    assert smoothed.predict(far, n=200, alpha=0.001)[0] == 1


def test_certified_accuracy_counts_correct_certificates_at_each_radius() -> None:
    cert = Certificate(
        prediction=np.array([0, 1, ABSTAIN, 2, 1]),
        radius=np.array([0.3, 0.6, 0.0, 0.1, 0.9]),
        p_lower=np.array([0.9, 0.99, 0.4, 0.7, 0.999]),
        sigma=0.5,
        n0=100,
        n=1000,
        alpha=0.001,
    )
    result = certified_accuracy(cert, np.array([0, 1, 1, 2, 0]), radii=(0.0, 0.25, 0.5))
    assert result.accuracy == (0.6, 0.4, 0.2)
    assert result.rows()[1] == {"radius": 0.25, "certified_accuracy": 0.4, "sigma": 0.5, "n": 1000, "alpha": 0.001}


def test_bad_settings_are_config_errors() -> None:
    with pytest.raises(ConfigError):
        SmoothedClassifier(Constant(0), 0.0)
    with pytest.raises(ConfigError):
        SmoothedClassifier(Constant(0), 0.25).certify(torch.rand(1, 3, 4, 4), n=10, alpha=0.7)
    with pytest.raises(ConfigError, match="labels"):
        certified_accuracy(SmoothedClassifier(Constant(0), 0.25).certify(torch.rand(2, 3, 4, 4), n0=5, n=10), [0])


@pytest.mark.parametrize("k", [0, 3])
def test_certify_matches_art_randomized_smoothing(k: int) -> None:
    """ART's PyTorchRandomizedSmoothing on the same noise-proof model: same class, same radius."""
    from art.estimators.certification.randomized_smoothing import PyTorchRandomizedSmoothing

    sigma, n, alpha = 0.5, 300, 0.01
    images = torch.rand(2, 3, 6, 6)
    art = PyTorchRandomizedSmoothing(
        model=Constant(k),
        loss=nn.CrossEntropyLoss(),
        input_shape=(3, 6, 6),
        nb_classes=4,
        clip_values=(0.0, 1.0),
        device_type="cpu",
        sample_size=50,
        scale=sigma,
        alpha=alpha,
    )
    art_class, art_radius = art.certify(images.numpy(), n=n, batch_size=100)
    cert = SmoothedClassifier(Constant(k), sigma).certify(images, n0=50, n=n, alpha=alpha)
    np.testing.assert_array_equal(cert.prediction, art_class)
    np.testing.assert_allclose(cert.radius, art_radius, rtol=1e-9)
