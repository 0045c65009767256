"""Any torchvision classification architecture, with input normalisation inside the model.

Putting normalisation inside means every attack works on [0, 1] images and ``eps=2/255`` means
exactly two 8-bit steps of the image a person sees.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from dermadv.errors import CheckpointError, ConfigError

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Classifier(nn.Module):
    """``logits = backbone((images - mean) / std) + logit_bias`` for images in [0, 1], N×3×H×W.

    ``logit_bias`` is a per-class prior correction tuned on the validation split (zero by default);
    it is part of the model, so attacks and evaluation see exactly the deployed decision rule.
    """

    mean: torch.Tensor
    std: torch.Tensor
    logit_bias: torch.Tensor

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        *,
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("logit_bias", torch.zeros(num_classes))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone((images - self.mean) / self.std) + self.logit_bias


class ResizedClassifier(nn.Module):
    """The attacked pipeline for ``attack_size='stored'``: resize the stored-size image, then classify."""

    def __init__(self, model: nn.Module, size: tuple[int, int]) -> None:
        super().__init__()
        self.model = model
        self.size = tuple(size)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if tuple(images.shape[-2:]) != self.size:
            images = F.interpolate(images, size=self.size, mode="bilinear", antialias=True, align_corners=False)
        return self.model(images)


def list_architectures() -> list[str]:
    return sorted(torchvision.models.list_models(module=torchvision.models))


def _replace_head(model: nn.Module, num_classes: int) -> None:
    """Swap the final linear layer of a torchvision classifier for one with ``num_classes`` outputs."""
    for attr in ("classifier", "fc", "head", "heads"):
        head = getattr(model, attr, None)
        if head is None:
            continue
        if isinstance(head, nn.Linear):
            setattr(model, attr, nn.Linear(int(head.in_features), num_classes))
            return
        if isinstance(head, nn.Sequential):
            for i in range(len(head) - 1, -1, -1):
                if isinstance(head[i], nn.Linear):
                    head[i] = nn.Linear(int(head[i].in_features), num_classes)  # type: ignore[arg-type]
                    return
    raise ConfigError(f"cannot find the final linear layer of {type(model).__name__} to resize")


def build_backbone(arch: str, num_classes: int, *, weights: str | Path | None = None) -> nn.Module:
    """A torchvision model with a ``num_classes`` head.

    ``weights``: ``None`` or ``"none"`` (random init), ``"imagenet"`` (torchvision's default weights, from
    its cache or downloaded), or a path to a ``.pth``/``.safetensors`` state dict of the ImageNet model.
    """
    if arch not in list_architectures():
        raise ConfigError(f"unknown architecture {arch!r}; try one of densenet201, densenet121, resnet18, resnet50")
    if weights is None or str(weights).lower() == "none":
        model = torchvision.models.get_model(arch, weights=None, num_classes=num_classes)
        return model
    model = torchvision.models.get_model(arch, weights=None)
    if str(weights) == "imagenet":
        enum = torchvision.models.get_model_weights(arch).DEFAULT
        try:
            state = enum.get_state_dict(progress=False, check_hash=True)
        except Exception as exc:  # network errors come in many types
            cache = Path(torch.hub.get_dir()) / "checkpoints"
            raise CheckpointError(
                f"ImageNet weights for {arch} are not in {cache} and cannot be downloaded ({exc.__class__.__name__}); "
                f"copy {enum.url.rsplit('/', 1)[-1]} there or pass --weights PATH, or train from scratch with --weights none"
            ) from None
    else:
        path = Path(weights)
        if not path.exists():
            raise CheckpointError(f"weights file {path} does not exist; pass an existing .pth or .safetensors file")
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise CheckpointError(f"weights in {weights} do not fit {arch}: {str(exc).splitlines()[0]}") from None
    _replace_head(model, num_classes)
    return model


def build_classifier(arch: str, num_classes: int, *, weights: str | Path | None = None) -> Classifier:
    return Classifier(build_backbone(arch, num_classes, weights=weights), num_classes)
