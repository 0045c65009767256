"""``dermadv defend …``: defences measured on a split of a checkpoint, each into a run folder.

* :func:`transforms_split` — input-transform defences, plain and adaptive (BPDA/EOT) targeted PGD
  (``transforms.json``);
* :func:`certify_split` — randomized smoothing's certified accuracy (``certify.json``, ``certificates.csv``);
* :func:`detect_split` — a detector against an attack folder's images and the detector-aware attack
  (``detect.json``, ``detect_scores.csv``);
* :func:`card_split` — per-class robustness cards before and after defences (``card.json``, ``card.csv``).

Each samples the split class-stratified (``limit``), writes a manifest through :class:`dermadv.runs.Run` and
returns its result dataclass (:mod:`dermadv.defences.results`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch import nn

from dermadv import distributed as dd
from dermadv.attacks.gradient import PGD
from dermadv.config import check_at_least, check_positive, check_types, format_eps, parse_eps, parse_eps_list
from dermadv.data.classes import class_index
from dermadv.data.load import Prepared, prepare, split_beside, to_float
from dermadv.data.splits import stratified_sample
from dermadv.defences.card import robustness_card
from dermadv.defences.detection import (
    Detector,
    DetectorAwarePGD,
    LogisticDetector,
    MahalanobisDetector,
    detection_scores,
    penultimate_features,
)
from dermadv.defences.results import (
    CardResult,
    CertifyResult,
    DefendedCard,
    DetectionOutcome,
    DetectResult,
    TargetedOutcome,
    TransformRow,
    TransformsResult,
)
from dermadv.defences.smoothing import SmoothedClassifier, certified_accuracy
from dermadv.defences.transforms import DefenceSpec, attack_defence, attacked_model, parse_defence, seeded_predictions
from dermadv.errors import ConfigError
from dermadv.evaluation.attack_run import AttackRun
from dermadv.models.checkpoints import CheckpointMeta, check_fits, load_checkpoint
from dermadv.models.classifier import ResizedClassifier
from dermadv.pipeline.apply import quantise
from dermadv.proportions import Proportion
from dermadv.runs import Run, require_complete, write_csv, write_json

log = logging.getLogger(__name__)

TRANSFORM_DEFENCES = ("jpeg:75", "bits:5", "median:3", "gauss:0.05")


@dataclass(frozen=True)
class DefenceConfig:
    """What every defence command reads: a checkpoint and a class-stratified sample of one split."""

    checkpoint: Path
    out: Path
    seed: int = 0
    data: str | None = None
    split: str = "test"
    split_file: str | None = None
    limit: int | None = None  # a class-stratified sample of this many images of the split
    batch_size: int = 64
    allow_incomplete: bool = False  # accept the checkpoint (or attack folder) of an unfinished run, with a warning

    def __post_init__(self) -> None:
        # every option of every defence command checked before the model or any image is loaded
        check_types(self)
        check_at_least(self, 0, "seed")
        counts = ("limit", "batch_size", "steps", "eot_samples", "n0", "n", "fit_limit")
        check_at_least(self, 1, *(name for name in counts if hasattr(self, name)))
        if hasattr(self, "sigma"):
            check_positive(self, "sigma")


@dataclass(frozen=True)
class TransformsConfig(DefenceConfig):
    defences: tuple[str, ...] = TRANSFORM_DEFENCES
    target: str = "nv"
    eps: str = "2/255,8/255"
    steps: int = 20
    eot_samples: int = 8


@dataclass(frozen=True)
class CertifyConfig(DefenceConfig):
    sigma: float = 0.25
    n0: int = 100
    n: int = 1000
    alpha: float = 0.001
    radii: str = "0.25,0.5"  # L2 radii on [0, 1] images


@dataclass(frozen=True)
class DetectConfig(DefenceConfig):
    """The test images are the attack folder's; ``split`` and ``limit`` choose the clean images that set the
    detector's threshold at 5% false positives."""

    split: str = "val"
    limit: int | None = 350
    attack_folder: Path = Path()
    detector: str = "mahalanobis"  # or "logistic" (fitted on PGD images of the fit sample)
    fit_limit: int = 700  # clean training images the detector is fitted on
    eps: str = "8/255"  # the detector-aware attack's budget when the attack folder has none
    steps: int = 20
    weight: float = 1.0


@dataclass(frozen=True)
class CardConfig(DefenceConfig):
    defences: tuple[str, ...] = ()
    target: str = "nv"
    eps: str = "1/255,2/255,4/255,8/255"
    steps: int = 20
    adaptive: bool = True
    eot_samples: int = 8


@dataclass(frozen=True)
class Sample:
    """The checkpoint's model and a sample of one split at its input size."""

    model: nn.Module
    meta: CheckpointMeta
    prep: Prepared
    indices: np.ndarray
    device: torch.device

    @property
    def labels(self) -> np.ndarray:
        return self.prep.dataset.labels[self.indices]

    @property
    def image_ids(self) -> list[str]:
        return [self.prep.dataset.image_ids[i] for i in self.indices]

    def images(self, part: slice = slice(None)) -> torch.Tensor:
        """Float N×3×H×W images in [0, 1] on the device."""
        return to_float(torch.from_numpy(np.ascontiguousarray(self.prep.images[self.indices[part]])).to(self.device))

    def batches(self, batch_size: int) -> list[slice]:
        return [slice(s, s + batch_size) for s in range(0, len(self.indices), batch_size)]


def load_sample(cfg: DefenceConfig) -> Sample:
    device = dd.default_device()
    if Path(cfg.checkpoint).is_file():  # a missing one: load_checkpoint says so
        require_complete(cfg.checkpoint, allow_incomplete=cfg.allow_incomplete)
    model, meta = load_checkpoint(cfg.checkpoint, device=device)
    split_file = cfg.split_file or split_beside(cfg.checkpoint)
    prep = prepare(cfg.data, image_size=meta.image_size, split_file=split_file, seed=cfg.seed)
    check_fits(meta, prep.dataset.classes, path=cfg.checkpoint)
    return Sample(model, meta, prep, sample_indices(prep, cfg.split, cfg.limit, cfg.seed), device)


def sample_indices(prep: Prepared, split: str, limit: int | None, seed: int) -> np.ndarray:
    idx = prep.indices(split)
    if limit:
        idx = stratified_sample(prep.dataset.labels, idx, limit, seed)
    if not len(idx):
        raise ConfigError(f"the {split} split has no images; pass another --split or split file")
    return idx


def _start(cfg: DefenceConfig, command: str) -> tuple[Sample, Run]:
    """Load the sample, then open the run folder (after every option has been checked)."""
    sample = load_sample(cfg)
    fingerprint = sample.prep.dataset.fingerprint
    return sample, Run(cfg.out, command=command, config=asdict(cfg), seed=cfg.seed, data_fingerprint=fingerprint)


def parse_radii(text: str) -> tuple[float, ...]:
    try:
        radii = tuple(float(r) for r in text.split(",") if r.strip())
    except ValueError:
        radii = ()
    if not radii or any(r < 0 for r in radii):
        raise ConfigError(f"radii must be L2 radii ≥ 0 on [0, 1] images, e.g. 0.25,0.5; got {text!r}")
    return radii


def _outcome(fooled: torch.Tensor, labels: np.ndarray, classes: Sequence[str]) -> TargetedOutcome:
    fooled_np = fooled.cpu().numpy()
    return TargetedOutcome({c: Proportion.of(fooled_np[labels == i]) for i, c in enumerate(classes)})


def to_8bit(adv: torch.Tensor, clean: torch.Tensor, eps: float | None) -> torch.Tensor:
    """``adv`` as the saved PNG would hold it: 8-bit, each pixel within ``floor(eps·255)`` steps of ``clean``."""
    return quantise(adv, (clean * 255).round().to(torch.uint8), eps).float() / 255


def _parse_defences(specs: Sequence[str]) -> list[DefenceSpec]:
    return [parse_defence(s) for s in specs]


def evaluate_transforms(
    sample: Sample,
    defences: Sequence[DefenceSpec],
    eps: Sequence[float],
    *,
    target: int,
    steps: int = 20,
    eot_samples: int = 8,
    seed: int = 0,
    batch_size: int = 64,
) -> TransformsResult:
    """Targeted PGD at each budget on the undefended model and on each defence, plain and adaptive, on 8-bit images."""
    classes, labels, model = sample.meta.classes, sample.labels, sample.model
    rows = []
    for e in eps:
        attack = PGD(e, steps=steps, seed=seed)
        for spec in [None, *defences]:
            defended = spec(model) if spec is not None else model
            correct, plain, adaptive = [], [], []
            for part in sample.batches(batch_size):
                x, y = sample.images(part), torch.from_numpy(labels[part]).to(sample.device)
                correct.append(seeded_predictions(defended, x, seed) == y)
                finish = partial(to_8bit, clean=x, eps=e)
                if spec is None:
                    adv = finish(attack(model, x, target=target).adv_images)
                    plain.append(seeded_predictions(model, adv, seed) == target)
                    continue
                result = attack_defence(
                    model, spec, attack, x, target=target, eot_samples=eot_samples, seed=seed, finish=finish
                )
                plain.append(result.plain)
                adaptive.append(result.adaptive)
            row = TransformRow(
                str(spec) if spec is not None else "none",
                e,
                Proportion.of(torch.cat(correct)),
                _outcome(torch.cat(plain), labels, classes),
                _outcome(torch.cat(adaptive), labels, classes) if adaptive else None,
            )
            worst = [o.worst_class_fooling for o in (row.plain, row.adaptive) if o is not None]
            log.info("%s at %s: worst-class fooling %s", row.defence, format_eps(e), [w.estimate for w in worst if w])
            rows.append(row)
    return TransformsResult(
        classes[target],
        f"PGD-{steps} (L∞, seeded random start), targeted, scored on 8-bit images",
        eot_samples,
        len(labels),
        tuple(rows),
    )


def transforms_split(cfg: TransformsConfig) -> TransformsResult:
    defences, budgets = _parse_defences(cfg.defences), [parse_eps(e) for e in parse_eps_list(cfg.eps)]
    sample, run = _start(cfg, "defend transforms")
    with run.stage("attack"):
        result = evaluate_transforms(
            sample,
            defences,
            budgets,
            target=class_index(cfg.target, sample.meta.classes),
            steps=cfg.steps,
            eot_samples=cfg.eot_samples,
            seed=cfg.seed,
            batch_size=cfg.batch_size,
        )
    write_json(cfg.out / "transforms.json", result)
    run.finish(n_images=result.n_images)
    return result


def certify_split(cfg: CertifyConfig) -> CertifyResult:
    radii = parse_radii(cfg.radii)
    sample, run = _start(cfg, "defend certify")
    images, labels = sample.images(), sample.labels
    with run.stage("certify"):
        smoothed = SmoothedClassifier(sample.model, cfg.sigma, batch_size=max(cfg.batch_size, 1), seed=cfg.seed)
        certificate = smoothed.certify(images, n0=cfg.n0, n=cfg.n, alpha=cfg.alpha)
    base = seeded_predictions(sample.model, images, cfg.seed).cpu().numpy()
    result = CertifyResult(
        certified_accuracy(certificate, labels, radii=(0.0, *radii)),
        cfg.n0,
        Proportion.of(base == labels),
        Proportion.of(certificate.prediction < 0),
    )
    classes = sample.meta.classes
    rows = [
        {
            "image_id": image_id,
            "label": classes[label],
            "prediction": classes[p] if p >= 0 else "abstain",
            "radius": round(float(r), 6),
            "p_lower": round(float(q), 6),
        }
        for image_id, label, p, r, q in zip(
            sample.image_ids, labels, certificate.prediction, certificate.radius, certificate.p_lower, strict=True
        )
    ]
    write_csv(cfg.out / "certificates.csv", rows)
    write_json(cfg.out / "certify.json", result)
    run.finish(n_images=len(labels))
    return result


def _attack_images(attack: AttackRun, classes: tuple[str, ...]) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
    """The labels (indices into ``classes``) and the clean and adversarial PNGs (float N×3×H×W) of an attack folder."""
    if attack.classes != tuple(classes):
        raise ConfigError(
            f"{attack.folder} was made for classes {','.join(attack.classes)}, the checkpoint has "
            f"{','.join(classes)}; attack this checkpoint with `dermadv attack run`"
        )
    labels = np.array([classes.index(c) for c in attack.labels], dtype=np.int64)
    return (
        labels,
        to_float(torch.from_numpy(attack.load_images("clean"))),
        to_float(torch.from_numpy(attack.load_images("adv"))),
    )


def _fit_detector(cfg: DetectConfig, sample: Sample, target: int | None) -> tuple[Detector, int]:
    features_of = partial(penultimate_features, sample.model, batch_size=cfg.batch_size)
    fit = sample_indices(sample.prep, "train", cfg.fit_limit, cfg.seed)
    images = to_float(torch.from_numpy(np.ascontiguousarray(sample.prep.images[fit])).to(sample.device))
    labels = sample.prep.dataset.labels[fit]
    if cfg.detector == "mahalanobis":
        return MahalanobisDetector().fit(features_of(images), labels), len(fit)
    if cfg.detector == "logistic":
        attack = PGD(parse_eps(cfg.eps), steps=cfg.steps, seed=cfg.seed)
        y = torch.from_numpy(labels).to(sample.device)
        adv = torch.cat(
            [
                attack(sample.model, images[s], labels=y[s], target=target).adv_images
                for s in (slice(k, k + cfg.batch_size) for k in range(0, len(images), cfg.batch_size))
            ]
        )
        return LogisticDetector().fit(features_of(images), features_of(adv)), len(fit)
    raise ConfigError(f"detector must be mahalanobis or logistic; got {cfg.detector!r}")


def detect_split(cfg: DetectConfig) -> DetectResult:
    """Fit a detector on clean training features, set its threshold on validation, test it on an attack folder."""
    attack = AttackRun.read(cfg.attack_folder, allow_incomplete=cfg.allow_incomplete)
    sample, run = _start(cfg, "defend detect")
    attack_labels, attack_clean, attack_adv = _attack_images(attack, sample.meta.classes)
    target = attack.target_index
    eps = attack.eps if attack.eps is not None else parse_eps(cfg.eps)
    model: nn.Module = sample.model
    if tuple(attack_clean.shape[-2:]) != tuple(sample.meta.image_size):
        model = ResizedClassifier(model, sample.meta.image_size).eval()
    with run.stage("fit"):
        detector, fit_images = _fit_detector(cfg, sample, target)
        threshold = float(np.quantile(detector.score(penultimate_features(sample.model, sample.images())), 0.95))

    def scores_of(images: torch.Tensor) -> np.ndarray:
        return detector.score(penultimate_features(model, images.to(sample.device), batch_size=cfg.batch_size))

    clean_scores, adv_scores = scores_of(attack_clean), scores_of(attack_adv)
    outcomes = [
        DetectionOutcome(
            f"{attack.method} ({Path(cfg.attack_folder).name})",
            detection_scores(clean_scores, adv_scores),
            Proportion.of(attack.fooled),
            Proportion.of(attack.fooled & (adv_scores <= threshold)),
        )
    ]
    with run.stage("aware attack"):
        aware = DetectorAwarePGD(detector, eps, threshold=threshold, weight=cfg.weight, steps=cfg.steps, seed=cfg.seed)
        labels = torch.from_numpy(attack_labels)
        found = []
        for s in range(0, len(labels), cfg.batch_size):
            x = attack_clean[s : s + cfg.batch_size].to(sample.device)
            found_now = aware(model, x, labels=labels[s : s + cfg.batch_size].to(sample.device), target=target)
            found.append(to_8bit(found_now.adv_images, x, eps))
        aware_images = torch.cat(found)
        aware_scores = scores_of(aware_images)
        pred = seeded_predictions(model, aware_images, cfg.seed).cpu()
        fooled = (pred == target if target is not None else pred != labels).numpy()
    outcomes.append(
        DetectionOutcome(
            f"detector-aware PGD-{cfg.steps} at {format_eps(eps)}",
            detection_scores(clean_scores, aware_scores),
            Proportion.of(fooled),
            Proportion.of(fooled & (aware_scores <= threshold)),
        )
    )
    result = DetectResult(cfg.detector, fit_images, threshold, tuple(outcomes))
    rows = [
        {"image_id": i, "clean_score": c, "adv_score": a, "aware_score": w}
        for i, c, a, w in zip(attack.image_ids, clean_scores, adv_scores, aware_scores, strict=True)
    ]
    write_csv(cfg.out / "detect_scores.csv", rows)
    write_json(cfg.out / "detect.json", result)
    run.finish(n_images=len(rows))
    return result


def card_split(cfg: CardConfig) -> CardResult:
    """Robustness cards (targeted PGD with early stop, in memory) of the undefended model and each defence."""
    defences, budgets = _parse_defences(cfg.defences), [parse_eps(e) for e in parse_eps_list(cfg.eps)]
    sample, run = _start(cfg, "defend card")
    target = class_index(cfg.target, sample.meta.classes)
    images, labels = sample.images(), torch.from_numpy(sample.labels)

    def make_attack(eps: float) -> PGD:
        return PGD(eps, steps=cfg.steps, seed=cfg.seed, early_stop=True)

    models = [("none", sample.model)]
    models += [
        (str(d), attacked_model(sample.model, d, adaptive=cfg.adaptive, eot_samples=cfg.eot_samples)) for d in defences
    ]
    cards = []
    with run.stage("attack"):
        for name, model in models:
            card = robustness_card(
                model,
                images,
                labels,
                target=target,
                eps=budgets,
                make_attack=make_attack,
                class_names=sample.meta.classes,
                batch_size=cfg.batch_size,
            )
            cards.append(DefendedCard(name, cfg.adaptive and name != "none", card))
    result = CardResult(tuple(cards))
    write_csv(cfg.out / "card.csv", [{"defence": c.defence, **row} for c in cards for row in c.card.rows()])
    write_json(cfg.out / "card.json", result)
    run.finish(n_images=len(labels))
    return result
