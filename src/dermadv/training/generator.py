"""Fit the AdvGAN generator against a frozen classifier (Xiao et al. 2018).

Generator loss = targeted margin loss on the classifier's logits (Carlini & Wagner 2017)
+ ``gan_weight`` · least-squares GAN loss + ``hinge_weight`` · hinge on the perturbation's L2 norm.
The perturbation is bounded by ``eps`` by construction (``eps · tanh``).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from dermadv import distributed as dd
from dermadv.attacks.generator import (
    CONDITIONS,
    GeneratorSpec,
    PatchDiscriminator,
    PerturbationGenerator,
    generate,
    save_generator,
)
from dermadv.config import check_at_least, check_at_most, check_budgets, check_positive, check_types, parse_eps
from dermadv.data.classes import class_index
from dermadv.data.load import prepare, split_beside, to_float
from dermadv.data.splits import stratified_sample
from dermadv.errors import ConfigError, RunError
from dermadv.models.checkpoints import check_fits
from dermadv.models.classifier import ResizedClassifier
from dermadv.models.sources import load_model
from dermadv.runs import Run, atomic_path, check_same_run, require_complete, write_csv
from dermadv.training.classifier import autocast, check_finite
from dermadv.training.data import device_images, start_fit

log = logging.getLogger(__name__)


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


#: GeneratorConfig fields a resumed fit may change: where it writes, progress bars; the classifier and the data are
#: compared by content (fingerprints), not by path.
_NOT_COMPARED = ("out", "resume", "progress", "allow_incomplete", "checkpoint", "data", "split_file", "weights")


def check_generator_settings(cfg: GeneratorConfig) -> None:
    """Refuse (one line) when ``cfg.out`` holds a generator fit made with other settings than ``cfg``."""
    check_same_run(cfg.out, command="attack fit", config=asdict(cfg), ignore=_NOT_COMPARED)


def fit_generator(cfg: GeneratorConfig) -> Path:
    """Fit a generator into ``cfg.out``; return the path of ``generator.safetensors``."""
    eps = parse_eps(cfg.eps, saved=True)
    out = Path(cfg.out)
    device, state_path = start_fit(
        out, "generator_state.pt", seed=cfg.seed, resume=cfg.resume, what="a generator fit", command="attack fit"
    )
    if Path(cfg.checkpoint).is_file():
        require_complete(cfg.checkpoint, allow_incomplete=cfg.allow_incomplete)
    # --resume continues one run: the same settings, classifier (by content) and data
    source = load_model(str(cfg.checkpoint), weights=cfg.weights, card=cfg.model_card, device=device)
    if not source.gradients:
        raise ConfigError(
            f"a generator is fitted with the model's gradients, which {source.info.spec} does not offer "
            f"({', '.join(source.info.offers[:-1])}); audit it with `dermadv audit` (score-based attacks)"
        )
    if source.info.card.grouped:
        raise ConfigError(f"{source.info.spec} groups classes; fit generators on models of the HAM10000 classes")
    classifier_fingerprint = source.info.fingerprint
    fingerprints = {"classifier": classifier_fingerprint}
    previous = None
    if cfg.resume:
        previous = check_same_run(
            out, command="attack fit", config=asdict(cfg), ignore=_NOT_COMPARED, fingerprints=fingerprints
        )
    classifier, meta = source, source.info
    for p in classifier.parameters():
        p.requires_grad_(False)
    target = class_index(cfg.target, meta.classes)
    split_file = cfg.split_file or (split_beside(cfg.checkpoint) if meta.kind == "dermadv" else None)
    size = None if cfg.attack_size == "stored" else meta.image_size
    with dd.main_first():  # rank 0 fills the decode cache, the others then read it
        prep = prepare(
            cfg.data, image_size=size, split_file=split_file, seed=cfg.seed, progress=dd.is_main() and cfg.progress
        )
    check_fits(meta, prep.dataset.classes, path=cfg.checkpoint)  # type: ignore[arg-type]
    fingerprints |= {"data": prep.dataset.fingerprint, "data_content": prep.dataset.content_fingerprint}
    if previous is not None:
        check_same_run(out, command="attack fit", config={}, fingerprints=fingerprints)
        if previous.get("status") == "complete":
            log.info("%s holds this generator fit, complete: nothing to resume", out)
            return out / "generator.safetensors"
    attacked: nn.Module = classifier
    if cfg.attack_size == "stored" and meta.image_size is not None:
        attacked = ResizedClassifier(classifier, meta.image_size)
    attacked.eval()
    idx = prep.indices(cfg.fit_on)
    if len(idx) == 0:
        raise ConfigError(f"the {cfg.fit_on} split is empty; choose another --fit-on")
    if cfg.max_fit_images:
        idx = stratified_sample(prep.dataset.labels, idx, cfg.max_fit_images, cfg.seed)
    images = device_images(prep.images, device)
    spec = GeneratorSpec(
        condition=cfg.condition,
        channels=cfg.channels,
        res_blocks=cfg.res_blocks,
        steps=cfg.steps,
        eps=eps,
        target=cfg.target,
        target_index=target,
        classes=tuple(meta.classes),
        image_size=prep.size,
        attack_size=cfg.attack_size,
        classifier_fingerprint=classifier_fingerprint or "",
    )
    gen = PerturbationGenerator(eps, channels=cfg.channels, res_blocks=cfg.res_blocks, condition=cfg.condition).to(
        device
    )
    disc = PatchDiscriminator().to(device)
    g_model: nn.Module = gen
    d_model: nn.Module = disc
    if dd.is_distributed():
        ids = [device.index] if device.type == "cuda" else None
        g_model = nn.parallel.DistributedDataParallel(gen, device_ids=ids)
        d_model = nn.parallel.DistributedDataParallel(disc, device_ids=ids)
    opt_g = torch.optim.Adam(gen.parameters(), lr=cfg.lr, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(disc.parameters(), lr=cfg.lr, betas=(0.5, 0.999))
    steps = cfg.epochs * math.ceil(math.ceil(len(idx) / dd.world_size()) / cfg.batch_size)
    sched_g = torch.optim.lr_scheduler.OneCycleLR(opt_g, max_lr=cfg.lr, total_steps=max(1, steps), pct_start=0.1)
    st = torch.load(state_path, map_location=device, weights_only=False) if cfg.resume and state_path.exists() else None
    # The one-cycle schedule is planned over all steps, so a fit cannot be resumed under another plan.
    if st is not None and st["sched_g"]["total_steps"] != sched_g.total_steps:
        raise RunError(
            f"{out} holds a generator fit planned for {st['sched_g']['total_steps']} steps, but --epochs "
            f"{cfg.epochs} --batch-size {cfg.batch_size} make {sched_g.total_steps}; resume with the settings "
            "it was started with, or choose another --out"
        )
    sampler: torch.utils.data.DistributedSampler[int] = torch.utils.data.DistributedSampler(
        range(  # type: ignore[arg-type]
            len(idx)
        ),
        num_replicas=dd.world_size(),
        rank=dd.rank(),
        shuffle=True,
        seed=cfg.seed,
    )
    run = Run(
        out,
        command="attack fit",
        config={**asdict(cfg), "eps_value": eps},
        seed=cfg.seed,
        data_fingerprint=fingerprints.pop("data"),
        fingerprints=fingerprints,
        write=dd.is_main(),
    )
    history: list[dict[str, float]] = []
    start = 0
    if st is not None:
        gen.load_state_dict(st["gen"])
        disc.load_state_dict(st["disc"])
        opt_g.load_state_dict(st["opt_g"])
        opt_d.load_state_dict(st["opt_d"])
        sched_g.load_state_dict(st["sched_g"])
        start, history = st["epoch"] + 1, st["history"]
    weights = LossWeights(
        kappa=cfg.kappa, gan_weight=cfg.gan_weight, hinge_weight=cfg.hinge_weight, hinge_ratio=cfg.hinge_ratio
    )
    # Per-image margin weights ∝ 1/frequency of its class in the fit set, mean 1 over that set.
    labels_np = prep.dataset.labels
    counts = np.bincount(labels_np[idx], minlength=prep.dataset.num_classes).astype(np.float64)
    per_class = np.where(counts > 0, 1.0 / np.maximum(counts, 1), 0.0)
    per_class = per_class / per_class[labels_np[idx]].mean() if cfg.class_balance else np.ones_like(per_class)
    image_weights = torch.from_numpy(per_class[labels_np].astype(np.float32)).to(images.device)
    with run.stage("fit"):
        for epoch in range(start, cfg.epochs):
            t0 = time.time()
            sampler.set_epoch(epoch)
            # indices on the images' device: no host copy, and no host sync, inside the step loop
            order = torch.from_numpy(idx[np.fromiter(iter(sampler), dtype=np.int64)]).to(images.device)
            g_model.train()
            d_model.train()
            sums = torch.zeros(4, device=device)
            n_seen = 0
            bar = tqdm(
                order.split(cfg.batch_size),
                desc=f"generator epoch {epoch}",
                disable=not (cfg.progress and dd.is_main()),
                leave=False,
            )
            for b in bar:
                x = to_float(images[b].to(device, non_blocking=True))
                sums += gan_step(
                    g_model,
                    d_model,
                    opt_g,
                    opt_d,
                    attacked,
                    x,
                    target=target,
                    eps=eps,
                    weights=weights,
                    sample_weights=image_weights[b].to(device),
                    steps=cfg.steps,
                    autocast_ctx=lambda: autocast(device, cfg.amp),
                )
                sched_g.step()
                n_seen += len(b)
            totals = dd.all_reduce_sum(torch.cat([sums, torch.tensor([float(n_seen)], device=device)])).tolist()
            n_all = totals[4]
            check_finite(gen, totals[0] / max(1, n_all), epoch=epoch, what="the generator fit", fix="lower --lr")
            row = {
                "epoch": epoch,
                "loss_adv": totals[0] / n_all,
                "loss_gan": totals[1] / n_all,
                "loss_d": totals[2] / n_all,
                "train_target_rate": totals[3] / n_all,
                "seconds": round(time.time() - t0, 2),
                "images_per_s": round(n_all / (time.time() - t0), 1),
            }
            history.append(row)
            if dd.is_main():
                log.info(
                    "generator epoch %d: margin loss %.3f, predicted %s on %.1f%% of fit images (%.0f img/s)",
                    epoch,
                    row["loss_adv"],
                    cfg.target,
                    100 * row["train_target_rate"],
                    row["images_per_s"],
                )
                save_generator(out / "generator.safetensors", gen, spec)
                write_csv(out / "history.csv", history)
                with atomic_path(state_path) as tmp:
                    torch.save(
                        {
                            "gen": gen.state_dict(),
                            "disc": disc.state_dict(),
                            "opt_g": opt_g.state_dict(),
                            "opt_d": opt_d.state_dict(),
                            "sched_g": sched_g.state_dict(),
                            "epoch": epoch,
                            "history": history,
                        },
                        tmp,
                    )
    if dd.is_main():
        run.finish(epochs_run=len(history))
    dd.barrier()
    return out / "generator.safetensors"


__all__ = ["GeneratorConfig", "fit_generator"]
