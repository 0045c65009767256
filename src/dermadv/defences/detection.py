"""Detectors of adversarial inputs on penultimate features, their ROC scores, and a detector-aware attack.

Two detectors, both differentiable in torch so that an attacker can include them in its loss:

* :class:`MahalanobisDetector` — Lee et al. (2018): class-conditional Gaussians with one shared covariance
  on the penultimate features; the score is the smallest Mahalanobis distance to a class mean.
* :class:`LogisticDetector` — a logistic regression on the same features trained on clean and adversarial
  examples (after Grosse et al. 2017 and Metzen et al. 2017, who train a binary detector).

A higher score means "more likely adversarial". :func:`detection_scores` reports ROC AUC and the true
positive rate at 5% false positives (scikit-learn), the measures of Lee et al. (2018).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.covariance import EmpiricalCovariance
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score, roc_curve
from torch import nn

from dermadv.attacks.common import attack_gain
from dermadv.attacks.gradient import PGD
from dermadv.errors import ConfigError


def _last_linear(model: nn.Module) -> nn.Linear:
    linear = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linear:
        raise ConfigError(f"{type(model).__name__} has no linear layer whose input could serve as features")
    return linear[-1]


@contextmanager
def capture_features(model: nn.Module) -> Iterator[list[torch.Tensor]]:
    """While active, each forward pass appends the input of the model's last linear layer (kept in the graph)."""
    captured: list[torch.Tensor] = []
    handle = _last_linear(model).register_forward_pre_hook(lambda _module, args: captured.append(args[0]))
    try:
        yield captured
    finally:
        handle.remove()


def logits_and_features(model: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and penultimate features (N×D) in one forward pass, differentiable with respect to ``images``."""
    with capture_features(model) as captured:
        logits = model(images)
    return logits, captured[-1].flatten(1)


@torch.no_grad()
def penultimate_features(model: nn.Module, images: torch.Tensor, *, batch_size: int = 256) -> torch.Tensor:
    """Penultimate features of ``images`` (N×3×H×W in [0, 1]) as an N×D float tensor on the CPU."""
    model.eval()
    parts = [logits_and_features(model, chunk)[1].float().cpu() for chunk in images.split(batch_size)]
    return torch.cat(parts) if parts else torch.empty(0)


class Detector(nn.Module):
    """Maps N×D features to N scores, higher = more likely adversarial; fitted with scikit-learn, scored in torch."""

    def fit(self, *args: object, **kwargs: object) -> Detector:
        raise NotImplementedError

    @torch.no_grad()
    def score(self, features: torch.Tensor | np.ndarray) -> np.ndarray:
        return self(torch.as_tensor(features, dtype=torch.float32)).cpu().numpy()


class MahalanobisDetector(Detector):
    """Lee et al. (2018): ``min_c (f - μ_c)ᵀ Σ⁻¹ (f - μ_c)``, with Σ shared across classes (penultimate layer only)."""

    means: torch.Tensor
    precision: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("means", torch.empty(0))
        self.register_buffer("precision", torch.empty(0))

    def fit(self, features: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray) -> MahalanobisDetector:  # type: ignore[override]
        """Class means and the shared (tied) covariance of clean training features."""
        x = np.asarray(features, dtype=np.float64)
        y = np.asarray(labels)
        classes = np.unique(y)
        if len(classes) < 2 or len(x) != len(y):
            raise ConfigError("the detector needs features of at least two classes, one label per feature row")
        means = np.stack([x[y == c].mean(0) for c in classes])
        centred = x - means[np.searchsorted(classes, y)]
        precision = EmpiricalCovariance(assume_centered=True).fit(centred).precision_
        self.means = torch.as_tensor(means, dtype=torch.float32)
        self.precision = torch.as_tensor(precision, dtype=torch.float32)
        return self

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if self.means.numel() == 0:
            raise ConfigError("fit the Mahalanobis detector on clean features before scoring")
        diff = features[:, None, :] - self.means.to(features)[None]
        distance = torch.einsum("ncd,de,nce->nc", diff, self.precision.to(features), diff)
        return distance.min(1).values


class LogisticDetector(Detector):
    """A logistic regression on standardised features, fitted on clean (0) and adversarial (1) examples."""

    mean: torch.Tensor
    scale: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor

    def __init__(self, *, c: float = 1.0) -> None:
        super().__init__()
        self.c = float(c)
        for name in ("mean", "scale", "weight", "bias"):
            self.register_buffer(name, torch.empty(0))

    def fit(self, clean: torch.Tensor | np.ndarray, adversarial: torch.Tensor | np.ndarray) -> LogisticDetector:  # type: ignore[override]
        x = np.concatenate([np.asarray(clean, dtype=np.float64), np.asarray(adversarial, dtype=np.float64)])
        y = np.r_[np.zeros(len(clean)), np.ones(len(adversarial))]
        mean, scale = x.mean(0), x.std(0) + 1e-6
        regression = LogisticRegression(C=self.c, max_iter=2000).fit((x - mean) / scale, y)
        self.mean, self.scale = torch.as_tensor(mean).float(), torch.as_tensor(scale).float()
        self.weight = torch.as_tensor(regression.coef_[0]).float()
        self.bias = torch.as_tensor(regression.intercept_).float()
        return self

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if self.weight.numel() == 0:
            raise ConfigError("fit the logistic detector on clean and adversarial features before scoring")
        standard = (features - self.mean.to(features)) / self.scale.to(features)
        return standard @ self.weight.to(features) + self.bias.to(features)  # the log-odds of "adversarial"


@dataclass(frozen=True)
class DetectionScores:
    """How well a score separates adversarial (positive) from clean images."""

    auc: float  # ROC AUC: 0.5 is chance
    tpr_at_5_fpr: float  # adversarial images flagged when 5% of clean ones are
    threshold: float  # the score threshold of that operating point
    n_clean: int
    n_adversarial: int


def detection_scores(
    clean_scores: np.ndarray, adversarial_scores: np.ndarray, *, max_fpr: float = 0.05
) -> DetectionScores:
    """ROC AUC and the TPR at ``max_fpr`` false positives, scikit-learn's ``roc_auc_score`` and ``roc_curve``."""
    clean, adv = np.asarray(clean_scores, dtype=np.float64), np.asarray(adversarial_scores, dtype=np.float64)
    if len(clean) == 0 or len(adv) == 0:
        raise ConfigError("detection needs both clean and adversarial scores; got an empty set")
    y = np.r_[np.zeros(len(clean)), np.ones(len(adv))]
    s = np.r_[clean, adv]
    fpr, tpr, thresholds = roc_curve(y, s)
    at = int(np.searchsorted(fpr, max_fpr, side="right")) - 1
    return DetectionScores(float(roc_auc_score(y, s)), float(tpr[at]), float(thresholds[at]), len(clean), len(adv))


class DetectorAwarePGD(PGD):
    """PGD that fools the classifier *and* stays below the detector's threshold.

    The gain is the attack's loss minus ``weight · max(0, score - threshold)``: once an image's detector
    score is under the defender's threshold (e.g. :attr:`DetectionScores.threshold` at 5% FPR) only the
    classifier counts. The adaptive attack on detectors of Carlini & Wagner (2017, "Adversarial examples
    are not easily detected"); the detector is the one the defender fitted on ``model``'s features.
    """

    def __init__(
        self, detector: Detector, eps: float | str, *, threshold: float, weight: float = 1.0, **pgd: object
    ) -> None:
        super().__init__(eps, **pgd)  # type: ignore[arg-type]
        if weight < 0:
            raise ConfigError(f"the detector weight must be ≥ 0; got {weight}")
        self.detector = detector
        self.threshold = float(threshold)
        self.weight = float(weight)

    def _gradient(
        self, model: nn.Module, adv: torch.Tensor, classes: torch.Tensor, targeted: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x = adv.detach().requires_grad_(True)
        logits, features = logits_and_features(model, x)
        gain = attack_gain(logits, classes, targeted=targeted, loss=self.loss)
        excess = (self.detector.to(x.device)(features) - self.threshold).clamp(min=0)
        gain = gain - self.weight * excess
        (grad,) = torch.autograd.grad(gain.sum(), x)
        return grad, logits.detach()

    def __repr__(self) -> str:
        return f"DetectorAwarePGD({type(self.detector).__name__}, eps={self.eps}, steps={self.steps}, weight={self.weight})"
