"""``dermadv model check``: load a model, show its card, and classify a class-stratified labelled sample.

The usual preprocessing mistakes are tried on the same sample (BGR for RGB, 0–255 for 0–1, ImageNet normalisation
added or dropped, other sizes); one that beats the card clearly is named as the likeliest mismatch, and a balanced
accuracy near chance is said in one line.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np
import torch

from dermadv.data.load import prepare, to_float
from dermadv.data.splits import stratified_sample
from dermadv.errors import ConfigError
from dermadv.models.card import CardAdapter, ModelCard
from dermadv.models.classifier import IMAGENET_MEAN, IMAGENET_STD
from dermadv.models.sources import SourceModel, label_map
from dermadv.pipeline.models import ModelSpec, as_spec, checked, open_model, training_split

log = logging.getLogger(__name__)

#: balanced accuracy within this of chance (1/K) counts as "near chance"
NEAR_CHANCE = 0.15
#: a preprocessing variant this much better than the card's (balanced accuracy) names a likely mismatch
BETTER_BY = 0.15


@dataclass(frozen=True)
class ModelCheck:
    """The model's card, its accuracy per class on a labelled sample, and the mismatch that explains a failure."""

    model: dict[str, Any]
    n_images: int
    classes: tuple[str, ...]
    correct: tuple[int, ...]  # per class of ``classes``
    counts: tuple[int, ...]
    variants: dict[str, float] = field(default_factory=dict)  # balanced accuracy with each preprocessing tried
    mismatch: str | None = None

    @property
    def accuracy(self) -> float:
        return sum(self.correct) / max(1, sum(self.counts))

    @property
    def balanced_accuracy(self) -> float:
        recalls = [c / n for c, n in zip(self.correct, self.counts, strict=True) if n]
        return float(np.mean(recalls)) if recalls else 0.0

    @property
    def chance(self) -> float:
        return 1.0 / len(self.classes)

    @property
    def near_chance(self) -> bool:
        return self.balanced_accuracy < self.chance + NEAR_CHANCE

    def verdict(self) -> str:
        """One line: fine, or near chance with the likeliest mismatch."""
        head = f"balanced accuracy {self.balanced_accuracy:.1%} on {self.n_images} images (chance {self.chance:.1%})"
        if not self.near_chance and self.mismatch:
            return (
                f"suspect: {head}, but with {self.mismatch} changed it is {self.variants[self.mismatch]:.1%} — "
                "check the model card"
            )
        if not self.near_chance:
            return f"ok: {head}"
        if self.mismatch:
            best = self.variants[self.mismatch]
            return (
                f"near chance: {head}; likeliest preprocessing mismatch: {self.mismatch} "
                f"(balanced accuracy {best:.1%} with it) — fix the model card"
            )
        return f"near chance: {head}; none of the usual preprocessing changes helped — check the classes and weights"

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "n_images": self.n_images,
            "classes": list(self.classes),
            "correct": list(self.correct),
            "counts": list(self.counts),
            "accuracy": self.accuracy,
            "balanced_accuracy": self.balanced_accuracy,
            "near_chance": self.near_chance,
            "variants": self.variants,
            "mismatch": self.mismatch,
            "verdict": self.verdict(),
        }


def card_variants(card: ModelCard) -> dict[str, ModelCard]:
    """The usual preprocessing mistakes, each as the card that would undo it."""
    out = {
        "channel order (BGR/RGB swapped)": replace(card, channel_order="BGR" if card.channel_order == "RGB" else "RGB"),
        "value range (0-255 vs 0-1)": replace(
            card,
            value_range=255 if card.value_range == 1 else 1,
            mean=tuple(m * (255 if card.value_range == 1 else 1 / 255) for m in card.mean),  # type: ignore[arg-type]
            std=tuple(s * (255 if card.value_range == 1 else 1 / 255) for s in card.std),  # type: ignore[arg-type]
        ),
    }
    scale = float(card.value_range)
    if card.mean == (0.0, 0.0, 0.0) and card.std == (1.0, 1.0, 1.0):
        imagenet = replace(
            card,
            mean=tuple(m * scale for m in IMAGENET_MEAN),  # type: ignore[arg-type]
            std=tuple(s * scale for s in IMAGENET_STD),  # type: ignore[arg-type]
        )
        out["normalisation (ImageNet mean/std missing)"] = imagenet
        swapped: Literal["RGB", "BGR"] = "BGR" if card.channel_order == "RGB" else "RGB"
        out["channel order and normalisation"] = replace(
            imagenet,
            channel_order=swapped,
            mean=imagenet.mean if swapped == "RGB" else imagenet.mean[::-1],  # type: ignore[arg-type]
            std=imagenet.std if swapped == "RGB" else imagenet.std[::-1],  # type: ignore[arg-type]
        )
    else:
        out["normalisation (none expected)"] = replace(card, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    for size in (96, 128, 224, 299):
        if card.input_size is not None and card.input_size != (size, size):
            out[f"input size ({size}x{size})"] = replace(card, input_size=(size, size))
    return out


@torch.no_grad()
def _predict(model: torch.nn.Module, images: np.ndarray, *, batch_size: int = 32) -> np.ndarray:
    preds = []
    for s in range(0, len(images), batch_size):
        x = to_float(torch.from_numpy(np.ascontiguousarray(images[s : s + batch_size])))
        preds.append(model(x).argmax(1).numpy())
    return np.concatenate(preds) if preds else np.zeros(0, dtype=np.int64)


def _balanced(pred: np.ndarray, labels: np.ndarray, k: int) -> float:
    recalls = [float((pred[labels == c] == c).mean()) for c in range(k) if (labels == c).any()]
    return float(np.mean(recalls)) if recalls else 0.0


def check_model(
    spec: ModelSpec | str,
    *,
    data: str | None = None,
    split: str = "test",
    split_file: str | None = None,
    sample: int = 140,
    seed: int = 0,
    allow_incomplete: bool = False,
) -> ModelCheck:
    """Classify a class-stratified sample of ``split`` and diagnose a near-chance result."""
    if sample < 1:
        raise ConfigError(f"--sample must be a positive number of images; got {sample}")
    spec = as_spec(spec)
    source = open_model(spec, allow_incomplete=allow_incomplete)
    info = source.info
    split_file = split_file or training_split(source, spec)
    prep = prepare(data, image_size=info.image_size, split_file=split_file, seed=seed)
    to_model = label_map(info, prep.dataset.classes)
    idx = prep.indices(split)
    if len(idx) == 0:
        raise ConfigError(f"the {split} split of {data or 'the synthetic set'} is empty; choose another --split")
    idx = stratified_sample(prep.dataset.labels, idx, sample, seed)
    images = np.asarray(prep.images[idx])
    source = checked(source, images)
    labels = to_model[prep.dataset.labels[idx]]
    k = len(source.info.classes)
    pred = _predict(source, images)
    correct = tuple(int(((pred == labels) & (labels == c)).sum()) for c in range(k))
    counts = tuple(int((labels == c).sum()) for c in range(k))
    result = ModelCheck(source.info.to_dict(), len(idx), source.info.classes, correct, counts)
    if not isinstance(source.net, CardAdapter):  # a dermadv checkpoint: its preprocessing is its own
        return result
    variants: dict[str, float] = {}
    raw = source.net.model
    for name, card in card_variants(source.net.card).items():
        if name.startswith("input size") and source.info.kind == "http":
            continue  # an endpoint resizes for itself; a size its graph refuses would only spend retries
        trial = SourceModel(CardAdapter(raw, card), source.info, quantise=source.quantise)
        try:
            variants[name] = _balanced(_predict(trial, images), labels, k)
        except Exception as exc:  # a variant the model cannot take (another size for a fixed-size export)
            log.info("variant %s failed: %s", name, str(exc).splitlines()[0][:120])
    best = max(variants, key=lambda v: variants[v], default=None)
    floor = max(result.chance + NEAR_CHANCE, result.balanced_accuracy + BETTER_BY)
    mismatch = best if best is not None and variants[best] >= floor else None
    return replace(result, variants=variants, mismatch=mismatch)
