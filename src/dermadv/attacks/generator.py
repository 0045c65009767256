"""AdvGAN-style generative targeted attack (Xiao et al., IJCAI 2018).

A fully convolutional generator maps an image to a perturbation bounded by a hard L∞ budget
(``eps · tanh``); one forward pass per batch attacks any number of images of any size.

``condition="gradient"`` also feeds the generator the classifier's input gradient toward the target
(one backward pass per image, as in learned-optimiser attacks, Jiang et al. 2019): an image-only
generator learns an almost universal pattern (FGSM-strength), the conditioned one adapts to each lesion.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dermadv.attacks.base import Attack
from dermadv.attacks.registry import register_attack
from dermadv.errors import CheckpointError
from dermadv.models.checkpoints import load_state, save_state

Condition = Literal["image", "gradient"]
CONDITIONS: tuple[str, ...] = ("image", "gradient")


@dataclass(frozen=True)
class GeneratorSpec:
    condition: str = "image"  # "image" (AdvGAN) or "gradient" (image + the classifier's input gradient)
    channels: int = 16
    res_blocks: int = 3
    eps: float = 8 / 255
    target: str | None = "nv"
    target_index: int | None = 5
    classes: tuple[str, ...] = ()
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
    cross-entropy toward ``target`` at the images, as a standardised map and as its sign (9 channels in [0, 1])."""
    if condition == "image":
        return images
    with torch.enable_grad():
        x = images.detach().requires_grad_(True)
        logits = model(x).float()
        loss = F.cross_entropy(logits, torch.full((len(x),), target, device=x.device), reduction="sum")
        (grad,) = torch.autograd.grad(loss, x)
    step = -grad
    scaled = step / (step.flatten(1).std(1).view(-1, 1, 1, 1) + 1e-12)
    return torch.cat([images, scaled.clamp(-3, 3) / 6 + 0.5, step.sign() * 0.5 + 0.5], 1).detach()


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


@dataclass(frozen=True)
class LossWeights:
    kappa: float = 5.0  # margin the target logit must win by
    gan_weight: float = 0.05
    hinge_weight: float = 1.0
    hinge_ratio: float = 0.8  # hinge bound: this share of the largest L2 norm the eps box allows


def targeted_margin_loss(logits: torch.Tensor, target: int, kappa: float) -> torch.Tensor:
    """Per-image ``max(max_{j≠t} z_j − z_t + κ, 0)`` (Carlini & Wagner 2017): zero once the target wins by κ."""
    z_t = logits[:, target]
    others = logits.clone()
    others[:, target] = -torch.inf
    return F.relu(others.max(1).values - z_t + kappa)


def gan_step(
    generator: nn.Module,
    discriminator: nn.Module,
    opt_g: torch.optim.Optimizer,
    opt_d: torch.optim.Optimizer,
    attacked: nn.Module,
    images: torch.Tensor,
    *,
    target: int,
    eps: float,
    weights: LossWeights,
    sample_weights: torch.Tensor | None = None,
    autocast_ctx: Callable[[], AbstractContextManager[None]] = nullcontext,
) -> torch.Tensor:
    """One AdvGAN update of D then G on a batch; returns detached [margin loss, GAN loss, D loss, #fooled].

    ``sample_weights`` (mean ≈ 1) weight each image's margin loss, e.g. by inverse class frequency so
    that rare classes, which decide the worst-class fooling ratio, are not drowned by nevi.
    """
    condition = getattr(generator, "module", generator).condition
    inputs = generator_inputs(attacked, images, target=target, condition=condition)
    with autocast_ctx():
        delta = generator(inputs)
    adv = (images + delta.float()).clamp(0, 1)
    # Discriminator: clean images are "real", adversarial ones "fake" (least squares, Mao et al. 2017).
    d_real, d_fake = discriminator(images), discriminator(adv.detach())
    loss_d = 0.5 * (F.mse_loss(d_real, torch.ones_like(d_real)) + F.mse_loss(d_fake, torch.zeros_like(d_fake)))
    opt_d.zero_grad(set_to_none=True)
    loss_d.backward()
    opt_d.step()
    # Generator: make the classifier say the target, look real, keep the L2 norm under the hinge bound.
    with autocast_ctx():
        logits = attacked(adv).float()
    margins = targeted_margin_loss(logits, target, weights.kappa)
    loss_adv = (margins * sample_weights).mean() if sample_weights is not None else margins.mean()
    d_out = discriminator(adv)
    loss_gan = F.mse_loss(d_out, torch.ones_like(d_out))
    l2_bound = weights.hinge_ratio * eps * math.sqrt(adv[0].numel())
    loss_hinge = F.relu((adv - images).flatten(1).norm(dim=1) - l2_bound).mean()
    loss_g = loss_adv + weights.gan_weight * loss_gan + weights.hinge_weight * loss_hinge
    opt_g.zero_grad(set_to_none=True)
    loss_g.backward()
    opt_g.step()
    n = images.shape[0]
    with torch.no_grad():
        fooled = (logits.argmax(1) == target).float().sum()
    return torch.stack([loss_adv.detach() * n, loss_gan.detach() * n, loss_d.detach() * n, fooled])


@contextmanager
def _seeded(seed: int | None) -> Iterator[None]:
    """Draw initial weights from ``seed`` (when given) without touching the global RNG."""
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


@register_attack("advgan")
class GeneratorAttack(Attack):
    """AdvGAN (Xiao et al. 2018): ``adv = clamp(images + G(images), 0, 1)``, one forward pass per batch.

    Built either from a fitted generator (``load_generator``) or with hyperparameters and then
    :meth:`fit` on in-memory images (the CLI's ``attack fit`` uses :mod:`dermadv.training.generator`).
    """

    needs_fit = True

    def __init__(
        self,
        eps: float | str = 8 / 255,
        *,
        channels: int = 16,
        res_blocks: int = 3,
        epochs: int = 5,
        lr: float = 1e-3,
        batch_size: int = 64,
        weights: LossWeights | None = None,
        seed: int | None = None,
        generator: PerturbationGenerator | None = None,
        spec: GeneratorSpec | None = None,
    ) -> None:
        from dermadv.config import parse_eps

        # not fitted yet: no target until :meth:`fit` names one
        self.spec = spec or GeneratorSpec(
            channels=channels, res_blocks=res_blocks, eps=parse_eps(eps), target=None, target_index=None
        )
        self.epochs, self.lr, self.batch_size, self.seed = epochs, lr, batch_size, seed
        if generator is None:
            with _seeded(seed):
                generator = PerturbationGenerator(
                    self.spec.eps, channels=self.spec.channels, res_blocks=self.spec.res_blocks
                )
        self.generator = generator.eval()
        self.weights = weights or LossWeights()

    @property
    def eps(self) -> float:
        return self.spec.eps

    def fit(self, model: nn.Module, images: torch.Tensor | np.ndarray, *, target: int) -> GeneratorAttack:
        """Fit the generator on in-memory images (float N×3×H×W in [0,1] or uint8 N×H×W×3)."""
        x_all = torch.as_tensor(images)
        if x_all.dtype == torch.uint8:
            x_all = x_all.permute(0, 3, 1, 2).float() / 255
        device = next(model.parameters()).device
        gen = self.generator.to(device).train()
        with _seeded(self.seed):
            disc = PatchDiscriminator().to(device).train()
        opt_g = torch.optim.Adam(gen.parameters(), lr=self.lr, betas=(0.5, 0.999))
        opt_d = torch.optim.Adam(disc.parameters(), lr=self.lr, betas=(0.5, 0.999))
        rng = torch.Generator().manual_seed(self.seed if self.seed is not None else 0)
        model.eval()
        trainable = [p.requires_grad for p in model.parameters()]
        for p in model.parameters():
            p.requires_grad_(False)
        try:
            for _ in range(self.epochs):
                order = torch.randperm(len(x_all), generator=rng)
                for s in range(0, len(order), self.batch_size):
                    batch = x_all[order[s : s + self.batch_size]].to(device)
                    gan_step(gen, disc, opt_g, opt_d, model, batch, target=target, eps=self.eps, weights=self.weights)
        finally:
            for p, flag in zip(model.parameters(), trainable, strict=True):
                p.requires_grad_(flag)
        self.generator = gen.eval()
        self.spec = replace(
            self.spec,
            target=self.spec.classes[target] if self.spec.classes else None,  # a bare index names no class
            target_index=target,
            image_size=tuple(x_all.shape[-2:]),  # type: ignore[arg-type]
        )
        return self

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
        inputs = generator_inputs(model, images, target=int(index or 0), condition=self.spec.condition)
        return (images + self.generator(inputs)).clamp(0, 1)

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
    values = {k: json.loads(v) for k, v in raw.items() if k in GeneratorSpec.__dataclass_fields__}
    values["classes"] = tuple(values.get("classes", ()))
    values["image_size"] = tuple(values["image_size"])
    spec = GeneratorSpec(**values)
    gen = PerturbationGenerator(spec.eps, channels=spec.channels, res_blocks=spec.res_blocks, condition=spec.condition)
    gen.load_state_dict(state)
    return GeneratorAttack(generator=gen.to(device).eval(), spec=spec)


def check_generator_fits(
    attack: GeneratorAttack,
    *,
    classes: tuple[str, ...],
    image_size: tuple[int, int],
    classifier_fingerprint: str,
    path: str | os.PathLike[str] = "generator",
) -> None:
    """Refuse a generator fitted against another classifier, class list or image size."""
    spec = attack.spec
    if tuple(spec.classes) != tuple(classes):
        raise CheckpointError(
            f"{path} was fitted for classes {','.join(spec.classes)}, the classifier has "
            f"{','.join(classes)}; fit a generator for this classifier with `dermadv attack fit`"
        )
    if tuple(spec.image_size) != tuple(image_size):
        raise CheckpointError(
            f"{path} was fitted at {spec.image_size[0]}x{spec.image_size[1]} but the images here are "
            f"{image_size[0]}x{image_size[1]}; fit one at this size or pass the matching --attack-size"
        )
    if spec.classifier_fingerprint and classifier_fingerprint and spec.classifier_fingerprint != classifier_fingerprint:
        raise CheckpointError(
            f"{path} was fitted against another classifier (fingerprint {spec.classifier_fingerprint},"
            f" this one {classifier_fingerprint}); fit a generator for this checkpoint"
        )


def file_fingerprint(path: str | os.PathLike[str]) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(Path(path), "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]
