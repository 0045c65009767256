"""Steps of fitting the AdvGAN generator against a frozen classifier (Xiao et al. 2018).

Generator loss = targeted margin loss on the classifier's logits (Carlini & Wagner 2017)
+ ``gan_weight`` · least-squares GAN loss + ``hinge_weight`` · hinge on the perturbation's L2 norm.
The perturbation is bounded by ``eps`` by construction (``eps · tanh``). The steps — ``build_*``,
``train_one_epoch`` (of :func:`gan_step` s), ``epoch_row`` — are composed into a run folder by
:func:`dermadv.pipeline.generator.fit_generator`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from dermadv import distributed as dd
from dermadv.attacks.generator import CONDITIONS, GeneratorSpec, PatchDiscriminator, PerturbationGenerator, generate
from dermadv.config import check_at_least, check_at_most, check_budgets, check_positive, check_types
from dermadv.data.classes import class_index
from dermadv.data.load import Prepared, to_float
from dermadv.data.splits import stratified_sample
from dermadv.errors import ConfigError
from dermadv.models.classifier import ResizedClassifier
from dermadv.models.inference import autocast
from dermadv.models.sources import ModelInfo


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
    steps: int = 1,
    autocast_ctx: Callable[[], AbstractContextManager[None]] = nullcontext,
) -> torch.Tensor:
    """One AdvGAN update of D then G on a batch; returns detached [margin loss, GAN loss, D loss, #fooled].

    ``sample_weights`` (mean ≈ 1) weight each image's margin loss, e.g. by inverse class frequency so
    that rare classes, which decide the worst-class fooling ratio, are not drowned by nevi.
    """
    adv = generate(generator, attacked, images, target=target, eps=eps, steps=steps, autocast_ctx=autocast_ctx)
    use_gan = weights.gan_weight > 0  # without the GAN term the critic cannot change G: neither is computed
    zero = torch.zeros((), device=images.device)
    loss_d = zero
    if use_gan:
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
    loss_gan = zero
    if use_gan:
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


@dataclass(frozen=True)
class GeneratorConfig:
    checkpoint: Path  # the model to attack (``--model``): any source that offers gradients
    out: Path
    data: str | None = None
    target: str = "nv"
    eps: str = "8/255"
    fit_on: Literal["train", "test", "val", "all"] = "train"
    max_fit_images: int | None = None  # fit on a class-stratified sample of this many images
    class_balance: bool = True  # weight the margin loss by inverse class frequency (worst-class fooling)
    attack_size: Literal["model", "stored"] = "model"
    epochs: int = 6
    batch_size: int = 64
    lr: float = 1e-3
    kappa: float = 5.0  # margin the target logit must win by
    gan_weight: float = 0.05
    hinge_weight: float = 1.0
    hinge_ratio: float = 0.8  # hinge bound: this share of the largest L2 norm the eps box allows
    condition: str = (
        "gradient"  # "image": AdvGAN's image-only generator; "gradient": also the classifier's input gradient
    )
    channels: int = 16
    res_blocks: int = 3
    steps: int = 1  # generator applications per attack, each on a fresh gradient (gradient conditions only)
    # stop once every class of the fit images is moved to the target at this share, judged on 8-bit outputs as an
    # attack saves them; checked after each epoch whose running rate (over the epoch's batches) reached it
    stop_at: float | None = None
    seed: int = 0
    split_file: str | None = None
    amp: Literal["auto", "bf16", "off"] = "auto"
    resume: bool = False
    progress: bool = True
    allow_incomplete: bool = False  # accept a checkpoint from an unfinished training run (with a warning)
    weights: str | None = None  # the state dict of a torchvision:/timm:/python: architecture
    model_card: str | None = None

    def __post_init__(self) -> None:
        check_types(self)
        check_budgets(self, "eps")
        class_index(self.target)
        if self.condition not in CONDITIONS:
            raise ConfigError(f"condition must be one of {', '.join(CONDITIONS)}; got {self.condition!r}")
        check_at_least(self, 1, "epochs", "batch_size", "channels", "max_fit_images", "steps")
        check_at_most(self, 1024, "channels", why=" (the generator's width; 16 is AdvGAN's)")
        if self.steps > 1 and self.condition == "image":
            raise ConfigError(
                "steps > 1 needs a gradient condition (--condition gradient): an image-only generator would apply "
                "the same pattern again"
            )
        check_at_least(self, 0, "seed", "res_blocks", "kappa", "gan_weight", "hinge_weight")
        check_positive(self, "lr", "hinge_ratio")
        if self.stop_at is not None and not 0 < self.stop_at <= 1:
            raise ConfigError(f"stop_at is a share of images in (0, 1], e.g. 1.0; got {self.stop_at}")


def loss_weights(cfg: GeneratorConfig) -> LossWeights:
    return LossWeights(
        kappa=cfg.kappa, gan_weight=cfg.gan_weight, hinge_weight=cfg.hinge_weight, hinge_ratio=cfg.hinge_ratio
    )


def attacked_model(classifier: nn.Module, info: ModelInfo, attack_size: str) -> nn.Module:
    """The frozen classifier in eval mode, behind a resize to its stored size for ``attack_size="stored"``."""
    for p in classifier.parameters():
        p.requires_grad_(False)
    attacked = classifier
    if attack_size == "stored" and info.image_size is not None:
        attacked = ResizedClassifier(classifier, info.image_size)
    return attacked.eval()


def fit_indices(prep: Prepared, cfg: GeneratorConfig) -> np.ndarray:
    """The images the generator learns from: the ``fit_on`` split, or a class-stratified sample of it."""
    idx = prep.indices(cfg.fit_on)
    if len(idx) == 0:
        raise ConfigError(f"the {cfg.fit_on} split is empty; choose another --fit-on")
    if cfg.max_fit_images:
        idx = stratified_sample(prep.dataset.labels, idx, cfg.max_fit_images, cfg.seed)
    return idx


def image_weights(
    labels: np.ndarray, idx: np.ndarray, num_classes: int, *, class_balance: bool, device: torch.device
) -> torch.Tensor:
    """Per-image margin-loss weights ∝ 1/frequency of its class among ``labels[idx]``, mean 1 over them; all 1
    without ``class_balance``. Indexed by image (all of ``labels``), on ``device``."""
    counts = np.bincount(labels[idx], minlength=num_classes).astype(np.float64)
    per_class = np.where(counts > 0, 1.0 / np.maximum(counts, 1), 0.0)
    per_class = per_class / per_class[labels[idx]].mean() if class_balance else np.ones_like(per_class)
    return torch.from_numpy(per_class[labels].astype(np.float32)).to(device)


def generator_spec(
    cfg: GeneratorConfig, eps: float, *, target: int, info: ModelInfo, image_size: tuple[int, int]
) -> GeneratorSpec:
    """What ``generator.safetensors`` records beside the weights: architecture, budget, target and classifier."""
    return GeneratorSpec(
        condition=cfg.condition,
        channels=cfg.channels,
        res_blocks=cfg.res_blocks,
        steps=cfg.steps,
        eps=eps,
        target=cfg.target,
        target_index=target,
        classes=tuple(info.classes),
        image_size=image_size,
        attack_size=cfg.attack_size,
        classifier_fingerprint=info.fingerprint or "",
    )


def build_generator(
    cfg: GeneratorConfig, eps: float, device: torch.device
) -> tuple[PerturbationGenerator, PatchDiscriminator]:
    """A freshly initialised generator (then its critic, in this order: both draw from the seeded global RNG)."""
    gen = PerturbationGenerator(eps, channels=cfg.channels, res_blocks=cfg.res_blocks, condition=cfg.condition)
    return gen.to(device), PatchDiscriminator().to(device)


def wrap_models(generator: nn.Module, discriminator: nn.Module, device: torch.device) -> tuple[nn.Module, nn.Module]:
    """Generator and critic under DistributedDataParallel in a process group; themselves otherwise."""
    if not dd.is_distributed():
        return generator, discriminator
    ids = [device.index] if device.type == "cuda" else None
    return (
        nn.parallel.DistributedDataParallel(generator, device_ids=ids),
        nn.parallel.DistributedDataParallel(discriminator, device_ids=ids),
    )


def build_optimizers(
    generator: nn.Module, discriminator: nn.Module, lr: float
) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer]:
    """Adam with β1 = 0.5 for both players, as GANs are usually trained (Radford et al. 2016)."""
    opt_g = torch.optim.Adam(generator.parameters(), lr=lr, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=lr, betas=(0.5, 0.999))
    return opt_g, opt_d


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: GeneratorConfig, num_images: int
) -> torch.optim.lr_scheduler.OneCycleLR:
    """A one-cycle schedule (10% warm-up) over every step of the fit, on each rank's share of ``num_images``."""
    steps = cfg.epochs * math.ceil(math.ceil(num_images / dd.world_size()) / cfg.batch_size)
    return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.lr, total_steps=max(1, steps), pct_start=0.1)


def train_one_epoch(
    generator: nn.Module,
    discriminator: nn.Module,
    opt_g: torch.optim.Optimizer,
    opt_d: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    attacked: nn.Module,
    images: torch.Tensor,
    indices: torch.Tensor,
    sample_weights: torch.Tensor,
    cfg: GeneratorConfig,
    device: torch.device,
    epoch: int,
    *,
    target: int,
    eps: float,
) -> torch.Tensor:
    """One pass of :func:`gan_step` over ``indices`` (a tensor on the images' device); returns this rank's sums
    [margin loss, GAN loss, D loss, #fooled, #images], still on the device (no host sync inside the loop)."""
    generator.train()
    discriminator.train()
    weights = loss_weights(cfg)
    sums = torch.zeros(4, device=device)
    n_seen = 0
    bar = tqdm(
        indices.split(cfg.batch_size),
        desc=f"generator epoch {epoch}",
        disable=not (cfg.progress and dd.is_main()),
        leave=False,
    )
    for b in bar:
        x = to_float(images[b].to(device, non_blocking=True))
        sums += gan_step(
            generator,
            discriminator,
            opt_g,
            opt_d,
            attacked,
            x,
            target=target,
            eps=eps,
            weights=weights,
            sample_weights=sample_weights[b].to(device),
            steps=cfg.steps,
            autocast_ctx=lambda: autocast(device, cfg.amp),
        )
        scheduler.step()
        n_seen += len(b)
    return torch.cat([sums, torch.tensor([float(n_seen)], device=device)])


@torch.no_grad()
def fooled_by_class(
    generator: nn.Module,
    attacked: nn.Module,
    images: torch.Tensor,
    indices: torch.Tensor,
    labels: torch.Tensor,
    cfg: GeneratorConfig,
    device: torch.device,
    *,
    target: int,
    eps: float,
    num_classes: int,
) -> torch.Tensor:
    """This rank's [2, num_classes] counts over ``indices``: images of each class the classifier calls ``target``
    after the generator, rounded to 8 bits as an attack saves them; images of each class. ``labels`` is indexed by
    image, on the images' device."""
    module = getattr(generator, "module", generator)
    module.eval()
    counts = torch.zeros(2, num_classes, device=device)
    try:
        for b in indices.split(cfg.batch_size):
            x = to_float(images[b].to(device, non_blocking=True))
            adv = generate(module, attacked, x, target=target, eps=eps, steps=cfg.steps)
            called = attacked(torch.round(adv * 255) / 255).argmax(1) == target
            y = labels[b].to(device)
            counts[0] += torch.bincount(y[called], minlength=num_classes).float()
            counts[1] += torch.bincount(y, minlength=num_classes).float()
    finally:
        module.train()
    return counts


def epoch_row(epoch: int, totals: list[float], seconds: float) -> dict[str, float | None]:
    """The history row of an epoch from the sums of :func:`train_one_epoch` over all ranks."""
    n_all = totals[4]
    return {
        "epoch": epoch,
        "loss_adv": totals[0] / n_all,
        "loss_gan": totals[1] / n_all,
        "loss_d": totals[2] / n_all,
        "train_target_rate": totals[3] / n_all,
        "seconds": round(seconds, 2),
        "images_per_s": round(n_all / seconds, 1),
        "worst_class_rate_8bit": None,  # filled where the stop_at check ran
    }


__all__ = [
    "GeneratorConfig",
    "LossWeights",
    "fooled_by_class",
    "gan_step",
    "targeted_margin_loss",
    "train_one_epoch",
]
