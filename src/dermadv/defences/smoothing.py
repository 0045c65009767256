"""Randomized smoothing (Cohen, Rosenfeld & Kolter 2019): prediction and a certified L2 radius from noisy votes.

The smoothed classifier predicts the class the base model returns most often under Gaussian noise
N(0, sigma²I). ``certify`` picks that class from ``n0`` samples, bounds its probability from below with a
one-sided Clopper–Pearson interval on ``n`` fresh samples, and certifies ``radius = sigma · Φ⁻¹(pA_lower)``
(Theorem 1) — or abstains where the bound is not above 1/2. As in the paper, noise is not clipped to [0, 1].
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy.stats import binomtest, norm
from statsmodels.stats.proportion import proportion_confint
from torch import nn

from dermadv.errors import ConfigError

ABSTAIN = -1


@dataclass(frozen=True)
class Certificate:
    """Per image: the smoothed prediction (``ABSTAIN`` = -1), its certified L2 radius and the bound on pA."""

    prediction: np.ndarray  # N int64
    radius: np.ndarray  # N float, 0 where abstained
    p_lower: np.ndarray  # N float: one-sided (1 - alpha) Clopper–Pearson lower bound on pA
    sigma: float
    n0: int
    n: int
    alpha: float


@dataclass(frozen=True)
class CertifiedAccuracy:
    """Share of images predicted correctly with a certified radius of at least each of ``radii``."""

    radii: tuple[float, ...]
    accuracy: tuple[float, ...]
    n_images: int
    sigma: float
    n_samples: int
    alpha: float

    def rows(self) -> list[dict[str, float]]:
        return [
            {"radius": r, "certified_accuracy": a, "sigma": self.sigma, "n": self.n_samples, "alpha": self.alpha}
            for r, a in zip(self.radii, self.accuracy, strict=True)
        ]


def lower_confidence_bound(successes: int | np.ndarray, trials: int, alpha: float) -> np.ndarray:
    """One-sided (1 - alpha) Clopper–Pearson lower bound on a binomial proportion (statsmodels' ``beta``)."""
    low, _ = proportion_confint(successes, trials, alpha=2 * alpha, method="beta")
    return np.nan_to_num(np.asarray(low, dtype=np.float64), nan=0.0)  # k = 0 gives nan: the bound is 0


def certified_radius(p_lower: float | np.ndarray, sigma: float) -> np.ndarray:
    """``sigma · Φ⁻¹(p_lower)`` where ``p_lower > 1/2``, else 0 (abstain)."""
    p = np.asarray(p_lower, dtype=np.float64)
    return np.where(p > 0.5, sigma * norm.ppf(np.clip(p, 0.5, 1.0)), 0.0)


class SmoothedClassifier:
    """A base classifier of [0, 1] images under Gaussian noise of ``sigma`` (Cohen et al. 2019)."""

    def __init__(self, model: nn.Module, sigma: float, *, batch_size: int = 256, seed: int = 0) -> None:
        if not sigma > 0:
            raise ConfigError(f"smoothing sigma must be positive, e.g. 0.25; got {sigma}")
        if batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1; got {batch_size}")
        self.model = model
        self.sigma = float(sigma)
        self.batch_size = int(batch_size)
        self.seed = int(seed)

    def __repr__(self) -> str:
        return f"SmoothedClassifier(sigma={self.sigma}, batch_size={self.batch_size}, seed={self.seed})"

    def _generator(self, device: torch.device) -> torch.Generator:
        return torch.Generator(device=device).manual_seed(self.seed)

    @torch.no_grad()
    def counts(self, images: torch.Tensor, n: int, *, generator: torch.Generator | None = None) -> np.ndarray:
        """N×K votes: how often the base model predicts each class on ``n`` noisy copies of each image."""
        if n < 1:
            raise ConfigError(f"the number of noise samples must be at least 1; got {n}")
        self.model.eval()
        generator = generator or self._generator(images.device)
        votes: list[np.ndarray] = []
        for image in images:
            tally: np.ndarray | None = None
            for start in range(0, n, self.batch_size):
                size = min(self.batch_size, n - start)
                batch = image.expand(size, *image.shape)
                noise = torch.randn(batch.shape, generator=generator, device=images.device, dtype=images.dtype)
                logits = self.model(batch + self.sigma * noise)
                found = torch.bincount(logits.argmax(1), minlength=logits.shape[1]).cpu().numpy()
                tally = found if tally is None else tally + found
            votes.append(tally)  # type: ignore[arg-type]
        return np.stack(votes).astype(np.int64)

    def predict(self, images: torch.Tensor, *, n: int = 100, alpha: float = 0.001) -> np.ndarray:
        """PREDICT of Cohen et al.: the top class where a binomial test beats the runner-up at level ``alpha``."""
        votes = self.counts(images, n)
        top_two = np.sort(votes, axis=1)[:, ::-1][:, :2]
        prediction = votes.argmax(1)
        for i, (first, second) in enumerate(top_two):
            if binomtest(int(first), int(first + second), 0.5).pvalue > alpha:
                prediction[i] = ABSTAIN
        return prediction

    def certify(self, images: torch.Tensor, *, n0: int = 100, n: int = 10_000, alpha: float = 0.001) -> Certificate:
        """CERTIFY of Cohen et al.: the class chosen on ``n0`` samples, its radius estimated on ``n`` more."""
        if not 0 < alpha < 0.5:
            raise ConfigError(f"alpha (the failure probability) must be in (0, 0.5), e.g. 0.001; got {alpha}")
        generator = self._generator(images.device)
        chosen = self.counts(images, n0, generator=generator).argmax(1)
        votes = self.counts(images, n, generator=generator)
        p_lower = lower_confidence_bound(votes[np.arange(len(chosen)), chosen], n, alpha)
        prediction = np.where(p_lower > 0.5, chosen, ABSTAIN)
        return Certificate(prediction, certified_radius(p_lower, self.sigma), p_lower, self.sigma, n0, n, alpha)


def certified_accuracy(
    certificate: Certificate, labels: np.ndarray | torch.Tensor, radii: Sequence[float] = (0.0, 0.25, 0.5)
) -> CertifiedAccuracy:
    """Certified accuracy at each radius: correct and not abstained, with ``radius ≥ r`` (Cohen et al. 2019)."""
    y = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels)
    if y.shape != certificate.prediction.shape:
        raise ConfigError(f"labels has shape {y.shape} but the certificate covers {certificate.prediction.shape}")
    correct = certificate.prediction == y
    accuracy = tuple(float(np.mean(correct & (certificate.radius >= r))) if len(y) else 0.0 for r in radii)
    return CertifiedAccuracy(
        tuple(float(r) for r in radii), accuracy, len(y), certificate.sigma, certificate.n, certificate.alpha
    )
