"""The ``--model`` of every command: a spec (file, export or URL), its weights and card, opened one way."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dermadv.data.load import split_beside, to_float
from dermadv.errors import ConfigError
from dermadv.models.checkpoints import read_training_images
from dermadv.models.sources import SourceModel, load_model, verify_onnx
from dermadv.runs import require_complete

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelSpec:
    """What ``--model``, ``--weights``, ``--model-card`` and ``--threat-model`` name."""

    model: str
    weights: str | None = None
    card: str | None = None
    threat_model: str | None = None

    @property
    def is_url(self) -> bool:
        return self.model.startswith(("http://", "https://"))

    def config(self) -> dict[str, str | None]:
        """As a run folder records it (an endpoint's URL without credentials or query string)."""
        from dermadv.models.sources import redact_url

        model = redact_url(self.model) if self.is_url else self.model
        return {"model": model, "weights": self.weights, "model_card": self.card, "threat_model": self.threat_model}


def as_spec(model: str | Path | ModelSpec) -> ModelSpec:
    return model if isinstance(model, ModelSpec) else ModelSpec(str(model))


def open_model(
    spec: ModelSpec | str | Path, *, device: str | torch.device = "cpu", allow_incomplete: bool = False
) -> SourceModel:
    """Load the model the spec names (the output of an unfinished dermadv run is refused)."""
    spec = as_spec(spec)
    if not spec.is_url and Path(spec.model).is_file():
        require_complete(spec.model, allow_incomplete=allow_incomplete)
    return load_model(spec.model, weights=spec.weights, card=spec.card, threat_model=spec.threat_model, device=device)


def checked(model: SourceModel, images_uint8: np.ndarray, *, device: str | torch.device = "cpu") -> SourceModel:
    """The model to attack: an ONNX model's onnx2torch conversion checked against onnxruntime on these images."""
    if model.fallback is None or len(images_uint8) == 0:
        return model
    x = to_float(torch.from_numpy(np.ascontiguousarray(images_uint8[:32])).to(device))
    checked_model, _ = verify_onnx(model, x)
    return checked_model.to(device).eval()


def training_split(model: SourceModel, spec: ModelSpec) -> str | None:
    """The split file a dermadv training run wrote beside its checkpoint; none for any other model."""
    return split_beside(spec.model) if model.info.kind == "dermadv" else None


def check_unseen(
    model: SourceModel, spec: ModelSpec, image_ids: Sequence[str], *, split: str, allow: bool = False
) -> int:
    """Refuse to score a dermadv checkpoint on images it was trained on; return how many of ``image_ids`` it was.

    The checkpoint's own record of its training images decides (a split file can be any file). A checkpoint of an
    older dermadv, or a model of another source, records none: nothing is checked and 0 returned. ``split
    train`` asks for training images by name and is not refused; ``allow`` (``--allow-training-images``) lets
    any split through with a warning.
    """
    trained = read_training_images(spec.model) if model.info.kind == "dermadv" else None
    if trained is None:
        return 0
    seen = sum(i in trained for i in image_ids)
    if seen and split != "train" and not allow:
        what = "images" if split == "all" else f"{split} images"
        fix = (
            "evaluate data it was not trained on"
            if split == "all"
            else f"pass the split the checkpoint was trained with ({split_beside(spec.model) or 'its split.csv'})"
        )
        raise ConfigError(
            f"{seen} of the {len(image_ids)} {what} were in the classifier's training split; {fix} or "
            "--allow-training-images"
        )
    if seen:
        log.warning(
            "%d of the %d %s images trained %s: scores on them are not held-out",
            seen,
            len(image_ids),
            split,
            spec.model,
        )
    return seen
