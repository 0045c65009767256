"""The ``--model`` of every command: a spec (file, export or URL), its weights and card, opened one way."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dermadv.data.load import split_beside, to_float
from dermadv.models.sources import SourceModel, load_model, verify_onnx
from dermadv.runs import require_complete


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
