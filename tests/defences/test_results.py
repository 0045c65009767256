"""Defence results: the worst class as AttackMetrics defines it, and the JSON round trip of every result."""

from __future__ import annotations

import math
from pathlib import Path

from dermadv.defences import results as r
from dermadv.defences.card import ClassRobustness, RobustnessCard
from dermadv.defences.detection import DetectionScores
from dermadv.defences.smoothing import CertifiedAccuracy
from dermadv.proportions import Proportion
from dermadv.runs import read_json, write_json


def test_worst_class_is_the_least_fooled_class_with_images() -> None:
    outcome = r.TargetedOutcome(
        {
            "akiec": Proportion.counted(3, 4),
            "bcc": Proportion.counted(1, 5),
            "df": Proportion.counted(0, 0),
            "nv": Proportion.counted(5, 5),
        }
    )
    assert outcome.worst_class == "bcc" and outcome.worst_class_fooling == Proportion.counted(1, 5)
    assert r.TargetedOutcome({"df": Proportion.counted(0, 0)}).worst_class is None
    assert math.isnan(Proportion.counted(0, 0).estimate)


def test_every_result_survives_its_json(tmp_path: Path) -> None:
    fooled = r.TargetedOutcome({"akiec": Proportion.counted(1, 2), "nv": Proportion.counted(2, 2)})
    results = [
        r.TransformsResult(
            "nv",
            "PGD-20",
            8,
            4,
            (
                r.TransformRow("none", 2 / 255, Proportion.counted(3, 4), fooled, None),
                r.TransformRow("jpeg:75", 2 / 255, Proportion.counted(2, 4), fooled, fooled),
            ),
        ),
        r.CertifyResult(
            CertifiedAccuracy((0.0, 0.5), (0.5, 0.25), 4, 0.25, 100, 0.001),
            10,
            Proportion.counted(3, 4),
            Proportion.counted(1, 4),
        ),
        r.DetectResult(
            "mahalanobis",
            60,
            12.5,
            (
                r.DetectionOutcome(
                    "pgd", DetectionScores(0.75, 0.5, 3.0, 4, 4), Proportion.counted(4, 4), Proportion.counted(2, 4)
                ),
            ),
        ),
        r.CardResult(
            (
                r.DefendedCard(
                    "jpeg:75",
                    True,
                    RobustnessCard(
                        "nv", (1 / 255, 2 / 255), "PGD", (ClassRobustness("mel", 3, (0.5, 1.0), 1 / 255, None),)
                    ),
                ),
            )
        ),
    ]
    for k, result in enumerate(results):
        write_json(tmp_path / f"{k}.json", result)
        assert r.from_dict(type(result), read_json(tmp_path / f"{k}.json")) == result
