"""Input-transform defences as model wrappers: JPEG, bit-depth reduction, median smoothing, Gaussian noise.

``parse_defence("jpeg:75")(model)`` is a model of [0, 1] images → logits that transforms its input first
(Guo et al. 2018; Xu et al. 2018's feature squeezing). What an attacker's gradient sees is a switch:

* ``bpda=True`` — the adaptive attacker: Backward Pass Differentiable Approximation (Athalye et al. 2018),
  the forward pass runs the real transform, the backward pass treats it as the identity.
* ``bpda=False`` — the plain attacker, who ignores the defence: the forward pass is the defended model,
  the derivative of the logits is the undefended model's at the input.

Randomised transforms (``gauss``) are averaged over samples by :class:`EOT` (Athalye et al. 2018's
expectation over transformation) for the adaptive attack.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from dermadv.attacks.artefacts import jpeg_roundtrip
from dermadv.attacks.base import Attack
from dermadv.errors import ConfigError


class InputTransform(nn.Module):
    """``model(transform(images))`` with the gradient chosen by ``bpda`` (see the module docstring).

    Subclasses name the defence, say which ``value`` is valid and implement :meth:`transform`.
    """

    name: str = ""
    rule: str = ""  # the valid values, for the error message
    default: float = 0.0
    bounds: tuple[float, float] = (0.0, 1.0)  # inclusive; whole numbers only where ``whole``
    whole: bool = True
    randomised: bool = False

    def __init__(self, model: nn.Module, value: float | None = None, *, bpda: bool = True) -> None:
        super().__init__()
        value = self.default if value is None else value
        if not self.valid(value):
            raise ConfigError(
                f"{self.name} takes {self.rule}; got {value:g} — write it like {self.name}:{self.default:g}"
            )
        self.model, self.value, self.bpda = model, value, bpda

    @classmethod
    def valid(cls, value: float) -> bool:
        return cls.bounds[0] <= value <= cls.bounds[1] and (float(value).is_integer() or not cls.whole)

    def transform(self, images: torch.Tensor) -> torch.Tensor:
        """The defence's preprocessing of images in [0, 1] (need not be differentiable)."""
        raise NotImplementedError

    @property
    def spec(self) -> str:
        return f"{self.name}:{self.value:g}"

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            transformed = self.transform(images.detach())
        if not (torch.is_grad_enabled() and images.requires_grad):
            return self.model(transformed)
        if self.bpda:
            # straight-through: the value of transform(images), the derivative of the identity
            return self.model(images + (transformed - images).detach())
        undefended = self.model(images)
        with torch.no_grad():
            defended = self.model(transformed)
        return undefended + (defended - undefended).detach()

    def extra_repr(self) -> str:
        return f"{self.spec!r}, bpda={self.bpda}"


class Jpeg(InputTransform):
    """JPEG compression at quality ``value`` (Dziugaite et al. 2016; Guo et al. 2018), Pillow's encoder as ART's."""

    name, rule, default, bounds = "jpeg", "a whole-number quality from 1 to 95", 75, (1, 95)

    def transform(self, images: torch.Tensor) -> torch.Tensor:
        return jpeg_roundtrip(images, int(self.value))


class BitDepth(InputTransform):
    """Bit-depth reduction to ``value`` bits per channel: feature squeezing (Xu et al. 2018)."""

    name, rule, default, bounds = "bits", "a whole number of bits from 1 to 8", 5, (1, 8)

    def transform(self, images: torch.Tensor) -> torch.Tensor:
        levels = 2 ** int(self.value) - 1
        return torch.round(images * levels) / levels  # round half to even, as numpy's rint in ART


def _reflect_pad(images: torch.Tensor, pad: int) -> torch.Tensor:
    """Pad by repeating the edge pixel first (``d c b a | a b c d``): scipy.ndimage's ``reflect`` mode."""
    images = torch.cat([images[..., :pad].flip(-1), images, images[..., -pad:].flip(-1)], dim=-1)
    return torch.cat([images[..., :pad, :].flip(-2), images, images[..., -pad:, :].flip(-2)], dim=-2)


class MedianSmoothing(InputTransform):
    """Median filter of ``value``×``value`` pixels per channel (Xu et al. 2018), borders as scipy's ``reflect``."""

    name, rule, default, bounds = "median", "an odd window of at least 3 pixels", 3, (3, math.inf)

    @classmethod
    def valid(cls, value: float) -> bool:
        return super().valid(value) and value % 2 == 1

    def transform(self, images: torch.Tensor) -> torch.Tensor:
        n, c, h, w = images.shape
        window = int(self.value)
        pad = window // 2
        if pad > min(h, w):
            raise ConfigError(f"median window {window} is larger than the {h}×{w} image; use a smaller window")
        patches = F.unfold(_reflect_pad(images, pad).reshape(n * c, 1, h + 2 * pad, w + 2 * pad), window)
        return patches.median(dim=1).values.reshape(n, c, h, w)


class GaussianNoise(InputTransform):
    """Additive Gaussian noise of sigma ``value``, clipped to [0, 1]: randomised (fresh noise per call)."""

    name, rule, default, bounds = "gauss", "a noise sigma in (0, 1]", 0.05, (1e-9, 1.0)
    whole, randomised = False, True

    def transform(self, images: torch.Tensor) -> torch.Tensor:
        return (images + self.value * torch.randn_like(images)).clamp(0, 1)


DEFENCES: dict[str, type[InputTransform]] = {cls.name: cls for cls in (Jpeg, BitDepth, MedianSmoothing, GaussianNoise)}
_FORMS = ", ".join(f"{cls.name}:{cls.default:g}" for cls in DEFENCES.values())


class EOT(nn.Module):
    """Expectation over transformation (Athalye et al. 2018): the log of the mean softmax over ``samples`` calls.

    Wrapping a randomised defence, its gradient is that of the expected prediction, which is what an
    adaptive attacker should follow; its argmax is the defence's prediction averaged over its randomness.
    """

    def __init__(self, model: nn.Module, samples: int = 8) -> None:
        super().__init__()
        if samples < 1:
            raise ConfigError(f"EOT needs at least one sample; got {samples}")
        self.model = model
        self.samples = int(samples)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        log_probs = torch.stack([self.model(images).log_softmax(1) for _ in range(self.samples)])
        return log_probs.logsumexp(0) - math.log(self.samples)


@dataclass(frozen=True)
class DefenceSpec:
    """A parsed ``name:value`` spec; calling it wraps a model."""

    name: str
    value: float

    def __call__(self, model: nn.Module, *, bpda: bool = True) -> InputTransform:
        return DEFENCES[self.name](model, self.value, bpda=bpda)

    def __str__(self) -> str:
        return f"{self.name}:{self.value:g}"


def parse_defence(spec: str) -> DefenceSpec:
    """Parse ``jpeg:75``, ``bits:5``, ``median:3`` or ``gauss:0.05``; one-line ``ConfigError`` otherwise."""
    name, _, value = spec.strip().lower().partition(":")
    if name not in DEFENCES or not value:
        raise ConfigError(f"unknown defence {spec!r}; write one of {_FORMS}")
    try:
        number = float(value)
    except ValueError:
        raise ConfigError(f"defence {spec!r} needs a number after the colon; write one of {_FORMS}") from None
    parsed = DefenceSpec(name, number)
    parsed(nn.Identity())  # the constructor checks the value
    return parsed


@dataclass(frozen=True)
class DefenceAttackResult:
    """One attack on one input-transform defence, plain and adaptive, scored per image on the defended model.

    ``adaptive`` is the per-image worst case of the plain and the BPDA(+EOT) attack: an attacker who knows
    the defence tries both, and BPDA's identity approximation is not always the better one where the
    transform is far from the identity (Athalye et al. 2018, section 4.1).
    """

    defence: str
    attack: str
    plain: torch.Tensor  # N bool: success of the attack that ignores the defence
    bpda: torch.Tensor  # N bool: success of the BPDA attack (with EOT for randomised defences)
    adv_images: torch.Tensor  # the adaptive worst case: BPDA's image where it succeeded, else the plain one

    @property
    def adaptive(self) -> torch.Tensor:
        return self.plain | self.bpda

    def rates(self) -> dict[str, float]:
        return {name: float(getattr(self, name).float().mean()) for name in ("plain", "bpda", "adaptive")}


def attacked_model(model: nn.Module, defence: DefenceSpec, *, adaptive: bool, eot_samples: int = 8) -> nn.Module:
    """What an attacker differentiates: BPDA (+EOT for a randomised defence) if ``adaptive``, else the plain wrapper."""
    wrapped: nn.Module = defence(model, bpda=adaptive)
    if adaptive and getattr(wrapped, "randomised", False):
        wrapped = EOT(wrapped, eot_samples)
    return wrapped


@torch.no_grad()
def seeded_predictions(model: nn.Module, images: torch.Tensor, seed: int) -> torch.Tensor:
    """``model(images).argmax(1)`` with torch's generator seeded and restored: a randomised defence draws alike."""
    with torch.random.fork_rng(devices=[images.device] if images.is_cuda else []):
        torch.manual_seed(seed)
        return model.eval()(images).argmax(1)


def attack_defence(
    model: nn.Module,
    defence: DefenceSpec | str,
    attack: Attack,
    images: torch.Tensor,
    *,
    labels: torch.Tensor | None = None,
    target: int | None = None,
    eot_samples: int = 8,
    seed: int = 0,
    finish: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> DefenceAttackResult:
    """Run ``attack`` against ``defence(model)`` without and with BPDA (and EOT if randomised).

    Both sets of images are scored on the defended model with the same random draw (``seed``), so a
    randomised defence judges them alike; ``finish`` (e.g. rounding to 8 bits) is applied before scoring.
    """
    spec = parse_defence(defence) if isinstance(defence, str) else defence
    found = [
        attack(
            attacked_model(model, spec, adaptive=adaptive, eot_samples=eot_samples),
            images,
            labels=labels,
            target=target,
        ).adv_images
        for adaptive in (False, True)
    ]
    if finish is not None:
        found = [finish(adv) for adv in found]
    plain, bpda = found
    defended = spec(model)
    scores: list[torch.Tensor] = []
    for adv in found:
        pred = seeded_predictions(defended, adv, seed)
        scores.append(pred == target if target is not None else pred != labels)  # type: ignore[arg-type]
    adv_images = torch.where(scores[1].view(-1, 1, 1, 1), bpda, plain)
    return DefenceAttackResult(str(spec), repr(attack), scores[0], scores[1], adv_images)
