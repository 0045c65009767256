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

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from dermadv.attacks.artefacts import jpeg_roundtrip
from dermadv.attacks.base import Attack
from dermadv.errors import ConfigError

DEFENCES = ("jpeg", "bits", "median", "gauss")
_FORMS = "jpeg:<quality 1–95>, bits:<1–8>, median:<odd window ≥ 3> or gauss:<sigma in (0, 1]>"


class InputTransform(nn.Module):
    """``model(transform(images))`` with the gradient chosen by ``bpda`` (see the module docstring)."""

    randomised: bool = False

    def __init__(self, model: nn.Module, *, bpda: bool = True) -> None:
        super().__init__()
        self.model = model
        self.bpda = bpda

    def transform(self, images: torch.Tensor) -> torch.Tensor:
        """The defence's preprocessing of images in [0, 1] (need not be differentiable)."""
        raise NotImplementedError

    @property
    def spec(self) -> str:
        raise NotImplementedError

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
    """JPEG compression at ``quality`` (Dziugaite et al. 2016; Guo et al. 2018), Pillow's encoder as ART's."""

    def __init__(self, model: nn.Module, quality: int = 75, *, bpda: bool = True) -> None:
        super().__init__(model, bpda=bpda)
        if not 1 <= quality <= 95:
            raise ConfigError(f"JPEG quality must be from 1 to 95; got {quality} — write it like jpeg:75")
        self.quality = int(quality)

    @property
    def spec(self) -> str:
        return f"jpeg:{self.quality}"

    def transform(self, images: torch.Tensor) -> torch.Tensor:
        return jpeg_roundtrip(images, self.quality)


class BitDepth(InputTransform):
    """Bit-depth reduction to ``bits`` per channel: feature squeezing (Xu et al. 2018)."""

    def __init__(self, model: nn.Module, bits: int = 5, *, bpda: bool = True) -> None:
        super().__init__(model, bpda=bpda)
        if not 1 <= bits <= 8:
            raise ConfigError(f"bit depth must be from 1 to 8; got {bits} — write it like bits:5")
        self.bits = int(bits)

    @property
    def spec(self) -> str:
        return f"bits:{self.bits}"

    def transform(self, images: torch.Tensor) -> torch.Tensor:
        levels = 2**self.bits - 1
        return torch.round(images * levels) / levels  # round half to even, as numpy's rint in ART


def _reflect_pad(images: torch.Tensor, pad: int) -> torch.Tensor:
    """Pad by repeating the edge pixel first (``d c b a | a b c d``): scipy.ndimage's ``reflect`` mode."""
    images = torch.cat([images[..., :pad].flip(-1), images, images[..., -pad:].flip(-1)], dim=-1)
    return torch.cat([images[..., :pad, :].flip(-2), images, images[..., -pad:, :].flip(-2)], dim=-2)


class MedianSmoothing(InputTransform):
    """Median filter of ``window``×``window`` per channel (Xu et al. 2018), borders as scipy's ``reflect``."""

    def __init__(self, model: nn.Module, window: int = 3, *, bpda: bool = True) -> None:
        super().__init__(model, bpda=bpda)
        if window < 3 or window % 2 == 0:
            raise ConfigError(f"median window must be odd and at least 3; got {window} — write it like median:3")
        self.window = int(window)

    @property
    def spec(self) -> str:
        return f"median:{self.window}"

    def transform(self, images: torch.Tensor) -> torch.Tensor:
        n, c, h, w = images.shape
        pad = self.window // 2
        if pad > min(h, w):
            raise ConfigError(f"median window {self.window} is larger than the {h}×{w} image; use a smaller window")
        patches = F.unfold(_reflect_pad(images, pad).reshape(n * c, 1, h + 2 * pad, w + 2 * pad), self.window)
        return patches.median(dim=1).values.reshape(n, c, h, w)


class GaussianNoise(InputTransform):
    """Additive Gaussian noise of ``sigma``, clipped to [0, 1]: a randomised input defence (fresh noise per call)."""

    randomised = True

    def __init__(self, model: nn.Module, sigma: float = 0.05, *, bpda: bool = True) -> None:
        super().__init__(model, bpda=bpda)
        if not 0 < sigma <= 1:
            raise ConfigError(f"noise sigma must be in (0, 1]; got {sigma} — write it like gauss:0.05")
        self.sigma = float(sigma)

    @property
    def spec(self) -> str:
        return f"gauss:{self.sigma:g}"

    def transform(self, images: torch.Tensor) -> torch.Tensor:
        return (images + self.sigma * torch.randn_like(images)).clamp(0, 1)


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
        return log_probs.logsumexp(0) - torch.log(torch.tensor(float(self.samples)))


@dataclass(frozen=True)
class DefenceSpec:
    """A parsed ``name:value`` spec; calling it wraps a model."""

    name: str
    value: float

    def __call__(self, model: nn.Module, *, bpda: bool = True) -> InputTransform:
        if self.name == "jpeg":
            return Jpeg(model, int(self.value), bpda=bpda)
        if self.name == "bits":
            return BitDepth(model, int(self.value), bpda=bpda)
        if self.name == "median":
            return MedianSmoothing(model, int(self.value), bpda=bpda)
        return GaussianNoise(model, self.value, bpda=bpda)

    def __str__(self) -> str:
        return f"{self.name}:{self.value:g}"


def parse_defence(spec: str) -> DefenceSpec:
    """Parse ``jpeg:75``, ``bits:5``, ``median:3`` or ``gauss:0.05``; one-line ``ConfigError`` otherwise."""
    name, _, value = spec.strip().lower().partition(":")
    if name not in DEFENCES or not value:
        raise ConfigError(f"unknown defence {spec!r}; write {_FORMS}")
    try:
        number = float(value)
    except ValueError:
        raise ConfigError(f"defence {spec!r} needs a number after the colon; write {_FORMS}") from None
    if name != "gauss" and not number.is_integer():
        raise ConfigError(f"defence {spec!r} needs a whole number; write {_FORMS}")
    parsed = DefenceSpec(name, number)
    parsed(nn.Identity())  # the constructor checks the range
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
) -> DefenceAttackResult:
    """Run ``attack`` against ``defence(model)`` without and with BPDA (and EOT if randomised).

    Both sets of images are scored on the defended model with the same random draw (``seed``), so a
    randomised defence judges them alike.
    """
    spec = parse_defence(defence) if isinstance(defence, str) else defence
    plain = attack(spec(model, bpda=False), images, labels=labels, target=target).adv_images
    adaptive_model: nn.Module = spec(model, bpda=True)
    if getattr(adaptive_model, "randomised", False):
        adaptive_model = EOT(adaptive_model, eot_samples)
    bpda = attack(adaptive_model, images, labels=labels, target=target).adv_images
    defended = spec(model).eval()
    scores = []
    for adv in (plain, bpda):
        with torch.random.fork_rng(devices=[adv.device] if adv.is_cuda else []), torch.no_grad():
            torch.manual_seed(seed)
            pred = defended(adv).argmax(1)
        scores.append(pred == target if target is not None else pred != labels)
    adv_images = torch.where(scores[1].view(-1, 1, 1, 1), bpda, plain)
    return DefenceAttackResult(str(spec), repr(attack), scores[0], scores[1], adv_images)
