"""Detectors on penultimate features: they beat chance, their scores match scikit-learn, the aware attack evades them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.covariance import EmpiricalCovariance
from sklearn.metrics import roc_auc_score

from dermadv.attacks.gradient import PGD
from dermadv.defences.detection import (
    DetectorAwarePGD,
    LogisticDetector,
    MahalanobisDetector,
    detection_scores,
    logits_and_features,
    penultimate_features,
)
from dermadv.errors import ConfigError

EPS = 8 / 255


@pytest.fixture(scope="module")
def features(tiny) -> dict[str, torch.Tensor]:
    pgd = PGD(EPS, steps=10, seed=0)
    return {
        "train": penultimate_features(tiny.model, tiny.train_images),
        "test": penultimate_features(tiny.model, tiny.test_images),
        "train_adv": penultimate_features(
            tiny.model, pgd(tiny.model, tiny.train_images[:400], labels=tiny.train_labels[:400]).adv_images
        ),
        "test_adv": penultimate_features(
            tiny.model, pgd(tiny.model, tiny.test_images, labels=tiny.test_labels).adv_images
        ),
    }


def test_features_are_the_input_of_the_last_linear_layer(tiny) -> None:
    images = tiny.test_images[:5].clone().requires_grad_(True)
    logits, feats = logits_and_features(tiny.model, images)
    head = tiny.model.backbone[-1]
    torch.testing.assert_close(logits, head(feats) + tiny.model.logit_bias)
    assert feats.shape == (5, 16) and feats.requires_grad  # differentiable: an attacker can use it
    torch.testing.assert_close(penultimate_features(tiny.model, tiny.test_images[:5]), feats.detach())


def test_mahalanobis_detector_beats_chance(tiny, features) -> None:
    detector = MahalanobisDetector().fit(features["train"], tiny.train_labels)
    scores = detection_scores(detector.score(features["test"]), detector.score(features["test_adv"]))
    assert scores.auc > 0.75 and scores.tpr_at_5_fpr > 0.25
    assert scores.n_clean == scores.n_adversarial == 200


def test_logistic_detector_beats_chance_on_unseen_images(features) -> None:
    detector = LogisticDetector().fit(features["train"][:400], features["train_adv"])
    scores = detection_scores(detector.score(features["test"]), detector.score(features["test_adv"]))
    assert scores.auc > 0.7


def test_mahalanobis_score_matches_scikit_learn(tiny, features) -> None:
    x, y = features["train"].double().numpy(), tiny.train_labels.numpy()
    detector = MahalanobisDetector().fit(x, y)
    means = np.stack([x[y == c].mean(0) for c in range(4)])
    tied = EmpiricalCovariance(assume_centered=True).fit(x - means[y])
    test = features["test"][:20].double().numpy()
    expected = np.min([tied.mahalanobis(test - m) for m in means], axis=0)
    np.testing.assert_allclose(detector.score(test), expected, rtol=1e-3)


def test_detection_scores_match_scikit_learn() -> None:
    rng = np.random.default_rng(0)
    clean, adv = rng.normal(0, 1, 500), rng.normal(1.5, 1, 300)
    scores = detection_scores(clean, adv)
    assert scores.auc == pytest.approx(roc_auc_score(np.r_[np.zeros(500), np.ones(300)], np.r_[clean, adv]))
    flagged_clean = (clean >= scores.threshold).mean()
    assert flagged_clean <= 0.05 and scores.tpr_at_5_fpr == pytest.approx((adv >= scores.threshold).mean())
    separated = detection_scores(np.zeros(10), np.ones(10))
    assert separated.auc == 1 and separated.tpr_at_5_fpr == 1


@pytest.mark.parametrize("kind", ["mahalanobis", "logistic"])
def test_detector_aware_attack_lowers_the_detectors_auc(kind: str, tiny, features) -> None:
    if kind == "mahalanobis":
        detector = MahalanobisDetector().fit(features["train"], tiny.train_labels)
    else:
        detector = LogisticDetector().fit(features["train"][:400], features["train_adv"])
    clean = detector.score(features["test"])
    plain = detection_scores(clean, detector.score(features["test_adv"]))
    threshold = float(np.quantile(clean, 0.95))
    aware = DetectorAwarePGD(detector, EPS, threshold=threshold, weight=1.0, steps=10, seed=0)
    result = aware(tiny.model, tiny.test_images, labels=tiny.test_labels)
    evaded = detection_scores(clean, detector.score(penultimate_features(tiny.model, result.adv_images)))
    assert evaded.auc < plain.auc - 0.03
    assert ((result.adv_images - tiny.test_images).abs().max()) <= EPS + 1e-6


def test_unfitted_detectors_and_bad_inputs_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="fit"):
        MahalanobisDetector().score(np.zeros((2, 3)))
    with pytest.raises(ConfigError, match="fit"):
        LogisticDetector().score(np.zeros((2, 3)))
    with pytest.raises(ConfigError, match="two classes"):
        MahalanobisDetector().fit(np.zeros((4, 3)), np.zeros(4, dtype=int))
    with pytest.raises(ConfigError, match="empty"):
        detection_scores(np.array([]), np.array([1.0]))
