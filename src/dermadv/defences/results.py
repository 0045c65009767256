"""What the defence commands measure, as frozen dataclasses: written as JSON by the pipeline, read by the report.

Shares are stored as counts (:class:`Proportion` in its form ``{k, n}``) so that a reader can put any interval on them;
:func:`from_dict` reads any of these results back from its JSON.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass
from typing import Any, TypeVar

from dermadv.defences.card import RobustnessCard
from dermadv.defences.detection import DetectionScores
from dermadv.defences.smoothing import CertifiedAccuracy
from dermadv.proportions import Proportion, worst_class

T = TypeVar("T")


@dataclass(frozen=True)
class TargetedOutcome:
    """One targeted attack on one model: per true class, the share of its images predicted as the target.

    The worst class is the one with the smallest share among classes with images, as in
    :class:`dermadv.evaluation.attack_metrics.AttackMetrics` (the target class counts the share still called
    the target).
    """

    fooled: dict[str, Proportion]

    @property
    def worst_class(self) -> str | None:
        return worst_class(self.fooled)

    @property
    def worst_class_fooling(self) -> Proportion | None:
        worst = self.worst_class
        return self.fooled[worst] if worst is not None else None


@dataclass(frozen=True)
class TransformRow:
    """An input-transform defence (``none``: the undefended model) at one budget."""

    defence: str
    eps: float
    accuracy_clean: Proportion  # clean images classified right through the defence
    plain: TargetedOutcome  # the attacker who ignores the defence's transform
    adaptive: TargetedOutcome | None  # per image the worse of plain and BPDA (+EOT); None for ``none``


@dataclass(frozen=True)
class TransformsResult:
    """Every defence × budget, plain and adaptive (``dermadv defend transforms``, ``transforms.json``)."""

    target: str
    attack: str  # e.g. "PGD-20 (L∞, random start), scored on 8-bit images"
    eot_samples: int
    n_images: int
    rows: tuple[TransformRow, ...]


@dataclass(frozen=True)
class CertifyResult:
    """Randomized smoothing on a sample (``dermadv defend certify``, ``certify.json``)."""

    certified: CertifiedAccuracy  # radius 0 is the smoothed classifier's accuracy (abstentions count wrong)
    n0: int  # noise samples that choose the class; certified.n_samples estimate its probability
    accuracy_base: Proportion  # the base classifier on the clean images, without noise
    abstained: Proportion


@dataclass(frozen=True)
class DetectionOutcome:
    """The detector against one set of adversarial images of the test sample."""

    attack: str
    scores: DetectionScores  # clean test images vs these adversarial images
    fooled: Proportion  # adversarial images that reach the attack's goal
    fooled_undetected: Proportion  # ... and score under the threshold the defender calibrated


@dataclass(frozen=True)
class DetectResult:
    """A detector fitted on clean training features (``dermadv defend detect``, ``detect.json``)."""

    detector: str
    fit_images: int
    threshold: float  # the clean validation images' 95th percentile: 5% false positives there
    outcomes: tuple[DetectionOutcome, ...]


@dataclass(frozen=True)
class DefendedCard:
    defence: str  # "none" for the undefended model
    adaptive: bool  # BPDA (+EOT) attack on the defence, else the plain one
    card: RobustnessCard


@dataclass(frozen=True)
class CardResult:
    """Per-class robustness cards before and after defences (``dermadv defend card``, ``card.json``)."""

    cards: tuple[DefendedCard, ...]


def _decode(tp: Any, value: Any) -> Any:
    if value is None:
        return None
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(tp) if a is not type(None)]
        return _decode(options[0], value)
    if tp is Proportion:
        return Proportion.from_dict(value)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value)  # type: ignore[arg-type]
    if origin is tuple:
        (item, *_) = typing.get_args(tp)
        return tuple(_decode(item, v) for v in value)
    if origin is dict:
        _, item = typing.get_args(tp)
        return {str(k): _decode(item, v) for k, v in value.items()}
    if tp is float:
        return float(value)
    return value


def from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """Read a result dataclass back from the JSON that ``dermadv.runs.write_json`` made of it (null floats: NaN)."""
    hints = typing.get_type_hints(cls)
    values = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        raw = data[f.name]
        values[f.name] = math.nan if raw is None and hints[f.name] is float else _decode(hints[f.name], raw)
    return cls(**values)
