"""Classifier training steps: AdamW/SGD, cosine schedule with warm-up, class-balanced loss, EMA, early stopping.

Named steps in the order a fit takes them — ``training_indices`` → ``build_*`` → ``train_one_epoch`` →
``evaluate`` → ``selection_score`` — composed into a run folder by :func:`dermadv.pipeline.train.fit`.
Deterministic on CPU for a given seed (all randomness from seeded ``torch.Generator``s).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import balanced_accuracy_score
from torch import nn
from tqdm.auto import tqdm

from dermadv import distributed as dd
from dermadv.attacks.base import Attack
from dermadv.data.dataset import fingerprint_of
from dermadv.data.load import Prepared, to_float
from dermadv.errors import ConfigError, DivergedError
from dermadv.models.checkpoints import CheckpointMeta
from dermadv.models.classifier import Classifier, WeightsInfo
from dermadv.models.inference import autocast, predict_logits
from dermadv.training.adversarial import adversarial_batch, training_attack
from dermadv.training.augment import augment
from dermadv.training.config import TrainConfig

log = logging.getLogger(__name__)


@dataclass
class EpochStats:
    epoch: int
    train_loss: float
    val_loss: float
    val_acc: float
    val_balanced_acc: float
    lr: float
    seconds: float
    images_per_s: float


@dataclass(frozen=True)
class Validation:
    """Scores of one pass over the validation images."""

    loss: float
    accuracy: float
    balanced_accuracy: float


def check_classes(counts: dict[str, int]) -> None:
    """Refuse a training split of fewer than two classes: it trains a model whose every answer is that class (and
    whose validation accuracy on the other classes is 0), yet the run would call itself complete."""
    present = {c: n for c, n in counts.items() if n}
    if len(present) < 2:
        listed = ", ".join(f"{c}: {n} images" for c, n in present.items())
        raise ConfigError(
            f"the training split holds images of one class only ({listed}); a classifier needs at least 2 classes: "
            "add images of the other classes to the data"
        )


def training_indices(prep: Prepared, *, max_images: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The train indices (the first ``max_images`` when given) and the val indices of ``prep``, checked usable."""
    train_idx, val_idx = prep.indices("train"), prep.indices("val")
    if max_images:
        train_idx = train_idx[:max_images]
    if len(train_idx) == 0 or len(val_idx) == 0:
        raise ConfigError("the split has an empty train or val part; use more data or other --split fractions")
    check_classes(prep.dataset.class_counts(train_idx))
    return train_idx, val_idx


def class_weights(labels: np.ndarray, num_classes: int, mode: str) -> torch.Tensor:
    """Loss weights ∝ frequency^-1 (inverse) or frequency^-1/2 (sqrt), normalised to mean 1 over samples."""
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    counts = np.maximum(counts, 1)
    if mode == "none":
        w = np.ones(num_classes)
    elif mode == "sqrt":
        w = counts**-0.5
    elif mode == "inverse":
        w = counts**-1.0
    else:
        raise ConfigError(f"class_balance must be none, sqrt or inverse; got {mode!r}")
    w = w / (w[labels].mean())
    return torch.tensor(w, dtype=torch.float32)


def use_channels_last(cfg: TrainConfig, device: torch.device) -> bool:
    return cfg.channels_last if cfg.channels_last is not None else device.type == "cuda"


def lr_lambda(step: int, *, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / max(1, warmup)
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def batch_sizes(n: int, batch_size: int) -> list[int]:
    """Sizes of the batches of ``n`` images: ``batch_size`` each, a last batch of one image merged into the one
    before it (batch norm cannot normalise a single image in training mode: 49 images at batch 16 would crash)."""
    sizes = [batch_size] * (n // batch_size) + ([n % batch_size] if n % batch_size else [])
    if len(sizes) > 1 and sizes[-1] == 1:
        sizes[-2:] = [sizes[-2] + 1]
    return sizes


def batches(
    images: torch.Tensor, indices: torch.Tensor, batch_size: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches of ``images[indices]`` (see :func:`batch_sizes`); ``indices`` lives on the images' device, so slicing
    copies nothing from the host."""
    for idx in indices.split(batch_sizes(len(indices), batch_size)):
        yield idx, images[idx]


def build_ema(model: nn.Module, decay: float) -> torch.optim.swa_utils.AveragedModel | None:
    """An exponential moving average of ``model``'s weights and buffers; ``None`` for ``decay`` 0."""
    if decay <= 0:
        return None
    return torch.optim.swa_utils.AveragedModel(
        model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(decay), use_buffers=True
    )


def wrap_model(model: nn.Module, cfg: TrainConfig, device: torch.device) -> nn.Module:
    """The module the steps train: ``model`` under DistributedDataParallel in a process group, compiled on request."""
    wrapped = _ddp_wrap(model, cfg, device)
    if cfg.compile:
        wrapped = torch.compile(wrapped)  # type: ignore[assignment]
    return wrapped


def _ddp_wrap(model: nn.Module, cfg: TrainConfig, device: torch.device) -> nn.Module:
    if not dd.is_distributed():
        return model
    if cfg.sync_batchnorm and device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    elif cfg.sync_batchnorm:
        # torch's SyncBatchNorm runs on GPUs only; per-rank statistics are the DDP default anyway
        log.warning("sync_batchnorm needs GPUs; training on CPUs with per-rank batch norm")
    return nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def build_criterion(labels: np.ndarray, num_classes: int, cfg: TrainConfig, device: torch.device) -> nn.Module:
    """Cross-entropy with class-balance weights from the training ``labels`` and label smoothing."""
    weights = class_weights(labels, num_classes, cfg.class_balance).to(device)
    return nn.CrossEntropyLoss(weight=weights, label_smoothing=cfg.label_smoothing)


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW, or SGD with Nesterov momentum 0.9, at ``cfg.lr`` and ``cfg.weight_decay``."""
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay, nesterov=True)


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: TrainConfig, num_images: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step linear warm-up over ``cfg.warmup_epochs``, then a cosine decay to 0 at ``cfg.epochs``.

    Planned on each rank's share of the ``num_images`` training images, as :func:`train_one_epoch` steps.
    """
    steps_per_epoch = len(batch_sizes(math.ceil(num_images / dd.world_size()), cfg.batch_size))
    total_steps = steps_per_epoch * cfg.epochs
    warmup = int(cfg.warmup_epochs * steps_per_epoch)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_lambda(s, total=total_steps, warmup=warmup))


def build_training_attack(
    cfg: TrainConfig, classes: tuple[str, ...], device: torch.device
) -> tuple[Attack | None, dict[str, object]]:
    """The attack of adversarial training (``None`` without) and what the checkpoint records the model was trained
    against (the attack, its share of each batch, Gaussian noise)."""
    adversarial = training_attack(
        cfg.adversarial, cfg.adv_eps, cfg.adv_steps, generator=cfg.adv_generator, classes=classes, device=device
    )
    attack, attack_info = adversarial if adversarial else (None, None)
    trained_against: dict[str, object] = {}
    if attack_info:
        share = {"share": cfg.adv_share} if cfg.adv_share < 1 else {}
        trained_against["training_attack"] = {**attack_info.describe(), **share}
    if cfg.noise_sigma > 0:
        trained_against["training_noise_sigma"] = cfg.noise_sigma
    return attack, trained_against


def checkpoint_meta(
    cfg: TrainConfig,
    prep: Prepared,
    model: Classifier,
    train_idx: np.ndarray,
    *,
    inherited: tuple[str, ...] = (),
) -> CheckpointMeta:
    """What the checkpoint records beside the weights: architecture, classes, normalisation and training images.

    The training images (with those ``inherited`` from an ``--init`` checkpoint) let ``evaluate`` and
    ``attack run`` refuse to score the model on them.
    """
    ds = prep.dataset
    info = model.weights_info or WeightsInfo("none")
    trained_on = tuple(sorted({*inherited, *(ds.image_ids[i] for i in train_idx)}))
    return CheckpointMeta(
        arch=cfg.arch,
        classes=ds.classes,
        image_size=prep.size,
        mean=info.mean,
        std=info.std,
        data_fingerprint=ds.fingerprint,
        weights=info.source,
        training_images=trained_on,
        training_images_fingerprint=fingerprint_of(list(trained_on)),
    )


def augment_seed(seed: int, epoch: int, rank: int) -> int:
    """A distinct augmentation seed per (run seed, epoch, rank), so a resumed run draws what it would have."""
    return int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0])


def train_one_epoch(
    model: nn.Module,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    images: torch.Tensor,
    labels: torch.Tensor,
    indices: torch.Tensor,
    cfg: TrainConfig,
    device: torch.device,
    generator: torch.Generator,
    ema: torch.optim.swa_utils.AveragedModel | None,
    epoch: int,
    attack: Attack | None = None,
) -> float:
    """One pass over ``indices`` (a tensor on the images' device); returns the mean training loss.

    With an ``attack`` (adversarial training), the model learns from the attacked augmented batch.

    The step loop never waits for the GPU: the loss is summed on the device and read once at the end.
    """
    model.train()
    total = torch.zeros((), device=device)
    count = 0
    nb = len(batch_sizes(len(indices), cfg.batch_size))
    bar = tqdm(
        batches(images, indices, cfg.batch_size),
        total=nb,
        desc=f"epoch {epoch}",
        disable=not (cfg.progress and dd.is_main()),
        leave=False,
    )
    for idx, chunk in bar:
        x = to_float(chunk.to(device, non_blocking=True))
        if cfg.augment:
            x = augment(x, cfg.augment_config, generator)
        y = labels[idx].to(device, non_blocking=True)
        if attack is not None:
            k = round(len(x) * cfg.adv_share)  # the first k of a shuffled batch
            with autocast(device, cfg.amp):
                x = torch.cat([adversarial_batch(model, x[:k], y[:k], attack), x[k:]]) if k else x
        if cfg.noise_sigma > 0:
            x = x + cfg.noise_sigma * torch.randn(x.shape, generator=generator, device=x.device)
        x = x.contiguous(memory_format=torch.channels_last) if use_channels_last(cfg, device) else x
        with autocast(device, cfg.amp):
            loss = criterion(model(x).float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        if ema is not None:
            ema.update_parameters(model)
        total += loss.detach() * len(idx)
        count += len(idx)
    return float(total) / max(1, count)  # one host sync per epoch


def check_finite(model: nn.Module, loss: float, *, epoch: int, what: str, fix: str) -> None:
    """Stop a run whose loss or weights became NaN or infinite: saving them would call a broken model complete."""
    weights_finite = all(bool(torch.isfinite(p).all()) for p in model.parameters())
    if not (math.isfinite(loss) and weights_finite):
        raise DivergedError(
            f"{what} diverged in epoch {epoch}: the loss is {loss:g} and the weights are "
            f"{'' if weights_finite else 'not '}finite; {fix}"
        )


def evaluate(
    model: nn.Module,
    images: torch.Tensor,
    labels: np.ndarray,
    val_idx: np.ndarray,
    *,
    num_classes: int,
    device: torch.device,
    amp: str,
) -> Validation:
    """Loss, accuracy and balanced accuracy of ``model`` on the validation images ``val_idx``; the same on every
    rank (see :func:`validation_logits`)."""
    logits = validation_logits(model, images, val_idx, num_classes, device, amp)
    yv = labels[val_idx]
    pred = logits.argmax(1).numpy()
    return Validation(
        loss=float(F.cross_entropy(logits, torch.from_numpy(yv))),
        accuracy=float((pred == yv).mean()),
        balanced_accuracy=float(balanced_accuracy_score(yv, pred)),
    )


def validation_logits(
    model: nn.Module, images: torch.Tensor, val_idx: np.ndarray, num_classes: int, device: torch.device, amp: str
) -> torch.Tensor:
    """Logits of rank 0's model on the validation images, each rank predicting a shard; the same on every rank.

    Identical logits on every rank give identical scores, so all ranks save, count patience and stop
    early on the same epoch without further messages.
    """
    dd.broadcast_buffers(model)
    mine = dd.shard_indices(len(val_idx))
    logits = predict_logits(model, images, indices=val_idx[mine], device=device, amp=amp)
    _, gathered = dd.gather_rows(mine, logits.reshape(len(mine), num_classes).numpy())
    return torch.from_numpy(gathered)


def selection_score(stats: EpochStats, select: str) -> float:
    """The score ``select`` keeps the best epoch by (higher is better; "last": the latest epoch)."""
    return {
        "balanced_accuracy": stats.val_balanced_acc,
        "accuracy": stats.val_acc,
        "sum": stats.val_acc + stats.val_balanced_acc,
        "last": float(stats.epoch),
    }[select]


def calibrate_logit_bias(logits: torch.Tensor, labels: np.ndarray, *, rounds: int = 3) -> torch.Tensor:
    """Per-class logit offsets maximising accuracy + balanced accuracy on held-out data (coordinate search)."""
    y = torch.as_tensor(labels)
    k = logits.shape[1]
    bias = torch.zeros(k)
    grid = torch.linspace(-3, 3, 61)

    def score(b: torch.Tensor) -> float:
        pred = (logits + b).argmax(1).numpy()
        return float((pred == y.numpy()).mean() + balanced_accuracy_score(y.numpy(), pred))

    best = score(bias)
    for _ in range(rounds):
        for c in range(k):
            for g in grid:
                trial = bias.clone()
                trial[c] = g
                s = score(trial)
                if s > best + 1e-9:
                    best, bias = s, trial
    return bias


__all__ = [
    "EpochStats",
    "TrainConfig",
    "Validation",
    "build_criterion",
    "build_ema",
    "build_optimizer",
    "build_scheduler",
    "build_training_attack",
    "calibrate_logit_bias",
    "checkpoint_meta",
    "evaluate",
    "selection_score",
    "train_one_epoch",
    "training_indices",
]
