"""AdvGAN-style generative targeted attack (Xiao et al., IJCAI 2018).

A fully convolutional generator maps an image to a perturbation bounded by a hard L∞ budget
(``eps · tanh``); one forward pass per batch attacks any number of images of any size.

``condition="gradient"`` also feeds the generator the classifier's input gradient toward the target
(one backward pass per image, as in learned-optimiser attacks, Jiang et al. 2019): an image-only
generator learns an almost universal pattern (FGSM-strength), the conditioned one adapts to each lesion.
``condition="gradient-half"`` takes that gradient on the image at half resolution (a quarter of the backward
pass's cost) and upsamples it: the cheaper conditioning, for speed. ``steps=2`` applies the generator twice, each
time on a fresh gradient (:func:`generate`): twice the cost, better on images it was not fitted on.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from dermadv.attacks.base import Attack
from dermadv.attacks.registry import register_attack
from dermadv.errors import CheckpointError
from dermadv.models.checkpoints import broken_metadata, load_state, metadata_fields, save_state, sequence_field

Condition = Literal["image", "gradient", "gradient-half"]
CONDITIONS: tuple[str, ...] = ("image", "gradient", "gradient-half")


@dataclass(frozen=True)
class GeneratorSpec:
    condition: str = "image"  # "image" (AdvGAN), "gradient" (+ the classifier's input gradient), "gradient-half"
    channels: int = 16
    res_blocks: int = 3
    eps: float = 8 / 255
    target: str | None = "nv"
    target_index: int | None = 5
    classes: tuple[str, ...] = ()
    steps: int = 1  # generator applications, each on a fresh gradient (see :func:`generate`)
    image_size: tuple[int, int] = (64, 64)  # the size the generator was fitted at (H, W)
    attack_size: str = "model"  # "model": classifier input size; "stored": image file size
    classifier_fingerprint: str = ""


class _ResBlock(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(c, c, 3, padding=1, bias=False),
            nn.InstanceNorm2d(c, affine=True),
            nn.ReLU(inplace=True),
            nn.Conv2d(c, c, 3, padding=1, bias=False),
            nn.InstanceNorm2d(c, affine=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class PerturbationGenerator(nn.Module):
    """Encoder (2 stride-2 convs) → residual blocks → decoder; output ``eps · tanh`` at the input's size.

    The decoder upsamples to the exact input size, so odd and non-square sizes (150×200) work.
    """

    def __init__(self, eps: float, *, channels: int = 16, res_blocks: int = 3, condition: str = "image") -> None:
        super().__init__()
        c = channels
        self.eps = eps
        self.condition = condition
        in_channels = 3 if condition == "image" else 9
        self.encoder = nn.Sequential(
            nn.Conv2d(in_channels, c, 3, padding=1, bias=False), nn.InstanceNorm2d(c, affine=True), nn.ReLU(inplace=True),
            nn.Conv2d(c, 2 * c, 3, stride=2, padding=1, bias=False), nn.InstanceNorm2d(2 * c, affine=True),
            nn.ReLU(inplace=True),
            nn.Conv2d(2 * c, 4 * c, 3, stride=2, padding=1, bias=False), nn.InstanceNorm2d(4 * c, affine=True),
            nn.ReLU(inplace=True),
        )  # fmt: skip
        self.blocks = nn.Sequential(*[_ResBlock(4 * c) for _ in range(res_blocks)])
        self.up1 = nn.Sequential(
            nn.Conv2d(4 * c, 2 * c, 3, padding=1, bias=False),
            nn.InstanceNorm2d(2 * c, affine=True),
            nn.ReLU(inplace=True),
        )
        self.up2 = nn.Sequential(
            nn.Conv2d(2 * c + c, c, 3, padding=1, bias=False), nn.InstanceNorm2d(c, affine=True), nn.ReLU(inplace=True)
        )
        self.head = nn.Conv2d(c, 3, 3, padding=1)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """``inputs``: the images in [0, 1], with the conditioning channels of :func:`generator_inputs`."""
        h, w = inputs.shape[-2:]
        x = inputs * 2 - 1
        skip = self.encoder[:3](x)
        z = self.blocks(self.encoder[3:](skip))
        z = self.up1(F.interpolate(z, size=((h + 1) // 2, (w + 1) // 2), mode="bilinear", align_corners=False))
        z = F.interpolate(z, size=(h, w), mode="bilinear", align_corners=False)
        z = self.up2(torch.cat([z, skip], 1))
        return self.eps * torch.tanh(self.head(z))


def generator_inputs(model: nn.Module, images: torch.Tensor, *, target: int, condition: str) -> torch.Tensor:
    """What the generator sees: the images, and for ``condition="gradient"`` the descent direction of the
    cross-entropy toward ``target`` at the images, as a standardised map and as its sign (9 channels in [0, 1]).
    ``"gradient-half"``: that direction at the image downsampled by two, upsampled back (a quarter of the cost)."""
    if condition == "image":
        return images
    half = condition == "gradient-half"
    with torch.enable_grad():
        x = F.interpolate(images, scale_factor=0.5, mode="area") if half else images
        x = x.detach().requires_grad_(True)
        logits = model(x).float()
        loss = F.cross_entropy(logits, torch.full((len(x),), target, device=x.device), reduction="sum")
        (grad,) = torch.autograd.grad(loss, x)
    step = -grad
    if half:
        step = F.interpolate(step, size=images.shape[-2:], mode="bilinear", align_corners=False)
    scaled = step / (step.flatten(1).std(1).view(-1, 1, 1, 1) + 1e-12)
    return torch.cat([images, scaled.clamp(-3, 3) / 6 + 0.5, step.sign() * 0.5 + 0.5], 1).detach()


def generate(
    generator: nn.Module,
    model: nn.Module,
    images: torch.Tensor,
    *,
    target: int,
    eps: float,
    steps: int = 1,
    autocast_ctx: Callable[[], AbstractContextManager[None]] = nullcontext,
) -> torch.Tensor:
    """The adversarial images: ``steps`` applications of the generator, each on the current image and its fresh
    gradient (a learned optimiser unrolled ``steps`` times), projected onto the ``eps`` ball around ``images``.

    One step is AdvGAN's ``clamp(images + G(images))``; two cost two backward passes of the classifier and
    generalise better to unseen images where one gradient is not enough (benchmarks/generator_ablation.py)."""
    condition = str(getattr(generator, "module", generator).condition)
    adv = images
    for _ in range(steps):
        inputs = generator_inputs(model, adv, target=target, condition=condition)
        with autocast_ctx():  # the generator only: the conditioning gradient stays in full precision
            delta = generator(inputs)
        adv = (images + (adv - images + delta.float()).clamp(-eps, eps)).clamp(0, 1)
    return adv


class PatchDiscriminator(nn.Module):
    """A small PatchGAN critic for the least-squares GAN loss (Mao et al. 2017)."""

    def __init__(self, channels: int = 32) -> None:
        super().__init__()
        c = channels
        self.net = nn.Sequential(
            nn.Conv2d(3, c, 4, stride=2, padding=1), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(c, 2 * c, 4, stride=2, padding=1), nn.InstanceNorm2d(2 * c, affine=True),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(2 * c, 1, 3, padding=1),
        )  # fmt: skip

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images * 2 - 1)


@register_attack("advgan")
class GeneratorAttack(Attack):
    """AdvGAN (Xiao et al. 2018): ``adv = clamp(images + G(images), 0, 1)``, one forward pass per batch.

    Fitted by :func:`dermadv.pipeline.generator.fit_generator` (``dermadv attack fit``); built from its file,
    ``create_attack("advgan", generator="runs/advgan/generator.safetensors")``, or from a network and its spec.
    The spec fixes the budget, the target and the image size the generator was fitted for.
    """

    spec: GeneratorSpec

    def __init__(
        self, generator: str | os.PathLike[str] | PerturbationGenerator, *, spec: GeneratorSpec | None = None
    ) -> None:
        if not isinstance(generator, PerturbationGenerator):
            loaded = load_generator(generator)
            generator, spec = loaded.generator, loaded.spec
        self.generator: PerturbationGenerator = generator.eval()
        self.spec = spec or GeneratorSpec(
            condition=generator.condition, eps=generator.eps, target=None, target_index=None
        )

    @property
    def eps(self) -> float:
        return self.spec.eps

    @torch.no_grad()
    def perturb(
        self, model: nn.Module, images: torch.Tensor, *, labels: torch.Tensor | None, target: int | None
    ) -> torch.Tensor:
        self.generator.to(images.device)
        index = self.spec.target_index if self.spec.target_index is not None else target  # fitted for its target
        if index is None and self.spec.condition != "image":
            raise CheckpointError(
                "this gradient-conditioned generator names no target; fit it with `dermadv attack fit`"
            )
        return generate(self.generator, model, images, target=int(index or 0), eps=self.eps, steps=self.spec.steps)

    def __repr__(self) -> str:
        return f"GeneratorAttack(eps={self.spec.eps:.5f}, target={self.spec.target!r})"


def save_generator(path: str | os.PathLike[str], generator: nn.Module, spec: GeneratorSpec) -> None:
    generator = getattr(generator, "module", generator)
    meta = {k: json.dumps(v) for k, v in asdict(spec).items()}
    meta["kind"] = json.dumps("generator")
    save_state(path, generator.state_dict(), meta)


def load_generator(path: str | os.PathLike[str], *, device: str | torch.device = "cpu") -> GeneratorAttack:
    state, raw = load_state(path)
    if raw.get("kind") != json.dumps("generator"):
        raise CheckpointError(
            f"{path} is not a dermadv generator; pass the generator.safetensors of `dermadv attack fit`"
        )
    values = metadata_fields(path, raw, GeneratorSpec)
    values.setdefault("classes", [])
    if "image_size" not in values:
        raise broken_metadata(path, "no 'image_size'")
    sequence_field(path, values, "classes", str, None)
    sequence_field(path, values, "image_size", int, 2)
    spec = GeneratorSpec(**values)
    try:
        gen = PerturbationGenerator(
            spec.eps, channels=spec.channels, res_blocks=spec.res_blocks, condition=spec.condition
        )
        gen.load_state_dict(state)
    except (TypeError, ValueError, RuntimeError) as exc:  # metadata of the wrong type, or not these weights'
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        reason = lines[1] if len(lines) > 1 and lines[0].endswith(":") else lines[0] if lines else type(exc).__name__
        raise broken_metadata(path, reason[:160]) from None
    return GeneratorAttack(generator=gen.to(device).eval(), spec=spec)
