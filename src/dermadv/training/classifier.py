"""Classifier training: AdamW/SGD, cosine schedule with warm-up, class-balanced loss, EMA, early stopping.

Reads like a method section: ``fit(config)`` → ``train_one_epoch`` → ``evaluate_probs`` → checkpoint.
Deterministic on CPU for a given seed (all randomness from seeded ``torch.Generator``s).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import balanced_accuracy_score
from torch import nn
from tqdm.auto import tqdm

from dermadv import distributed as dd
from dermadv.attacks.base import Attack
from dermadv.config import check_at_least, check_at_most, check_positive, check_share, check_types
from dermadv.data.dataset import fingerprint_of
from dermadv.data.load import Prepared, prepare, to_float
from dermadv.data.splits import save_splits
from dermadv.errors import ConfigError, DivergedError
from dermadv.models.checkpoints import CheckpointMeta, check_fits, save_checkpoint
from dermadv.models.classifier import Classifier, WeightsInfo, build_classifier, check_input_size
from dermadv.runs import Run, atomic_path, check_same_run, file_fingerprint, require_complete, write_csv, write_json
from dermadv.training.adversarial import adversarial_batch, check_adversarial, training_attack
from dermadv.training.augment import AugmentConfig, augment
from dermadv.training.data import device_images, start_fit

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    out: Path
    data: str | None = None
    arch: str = "densenet201"
    image_size: int = 224
    epochs: int = 30
    batch_size: int = 64
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    class_balance: Literal["none", "sqrt", "inverse"] = "sqrt"
    label_smoothing: float = 0.1
    augment: bool = True
    ema_decay: float = 0.0  # 0 disables the weight average
    patience: int = 8  # epochs without validation balanced-accuracy gain before stopping
    # the epoch whose model is kept: best on clean validation, or "last" (adversarial training: clean validation
    # prefers the least-trained, least robust epoch)
    select: Literal["balanced_accuracy", "accuracy", "sum", "last"] = "balanced_accuracy"
    calibrate_bias: bool = False  # tune a per-class logit bias on the validation split
    weights: str | None = None  # None, "imagenet" or a path to ImageNet weights
    init: str | None = None  # a dermadv model.safetensors to fine-tune from (e.g. adversarially); overrides weights
    seed: int = 0
    split_file: str | None = None
    amp: Literal["auto", "bf16", "off"] = "auto"
    channels_last: bool | None = None  # None: on CUDA only (it slows CPU training at 64 px by ~10%)
    compile: bool = False
    sync_batchnorm: bool = False
    max_train_images: int | None = None
    resume: bool = False
    progress: bool = True
    augment_config: AugmentConfig = field(default_factory=AugmentConfig)
    adversarial: Literal["none", "pgd", "fgsm-rs", "generator"] = "none"  # see training.adversarial
    adv_eps: str | float = "2/255"
    adv_steps: int = 10
    adv_generator: str | None = None  # generator.safetensors for adversarial="generator"
    # share of each batch replaced by its adversarial version (Goodfellow et al. 2015 mix clean and adversarial
    # halves); 1: every image attacked. On HAM10000 a clean half keeps the accuracy and loses most of the
    # robustness (README's adversarial-training table)
    adv_share: float = 1.0
    # Gaussian noise N(0, sigma²) added to every training image in [0, 1] (Cohen et al. 2019): the base classifier of
    # randomized smoothing (`dermadv defend certify --sigma` the same value); 0: none
    noise_sigma: float = 0.0

    def __post_init__(self) -> None:
        # Checked here, before any work: a wrong value would otherwise fail minutes later, or train silently
        # with something else (an unknown optimizer used to mean SGD).
        check_types(self)
        check_at_least(self, 1, "epochs", "batch_size", "max_train_images")
        check_at_least(self, 8, "image_size")
        # a batch of 1,400 images at 60000 px asks for terabytes; dermatoscopic classifiers train at 224–600 px
        check_at_most(self, 2048, "image_size", why=" pixels")
        check_at_least(self, 0, "seed", "weight_decay", "warmup_epochs", "patience")  # patience 0: one epoch
        check_positive(self, "lr")
        check_share(self, "label_smoothing", "ema_decay")
        if not 0 < self.adv_share <= 1:
            raise ConfigError(f"adv_share must be in (0, 1]; got {self.adv_share!r}")
        check_at_least(self, 0, "noise_sigma")
        check_adversarial(self.adversarial, self.adv_eps, self.adv_steps, self.adv_generator)
        if self.init is not None and not Path(self.init).is_file():
            raise ConfigError(f"init checkpoint {self.init} does not exist; pass the model.safetensors of a train run")


#: TrainConfig fields a resumed run may change: where it writes, progress bars, speed-only switches, and the length
#: (--resume with more epochs extends a finished run); the data and split files are compared by content
#: (fingerprints), not by path.
_NOT_COMPARED = ("out", "resume", "progress", "compile", "channels_last", "epochs", "patience", "data", "split_file")


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


def autocast(device: torch.device, amp: str) -> contextlib.AbstractContextManager[None]:
    # bf16 on CPUs without AMX is slower than fp32, so "auto" means "on CUDA only".
    use = amp == "bf16" or (amp == "auto" and device.type == "cuda")
    if not use:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def use_channels_last(cfg: TrainConfig, device: torch.device) -> bool:
    return cfg.channels_last if cfg.channels_last is not None else device.type == "cuda"


def lr_lambda(step: int, *, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / max(1, warmup)
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def batch_sizes(n: int, batch_size: int) -> list[int]:
    """Sizes of the batches of ``n`` images: ``batch_size`` each, a last batch of one image merged into the one
    before it (batch norm cannot normalise a single image in training mode: 49 images at batch 16 used to crash)."""
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


@torch.no_grad()
def predict_logits(
    model: nn.Module,
    images_uint8: np.ndarray | torch.Tensor,
    *,
    indices: np.ndarray | None = None,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    amp: str = "auto",
    tta: bool = False,
    progress: bool = False,
) -> torch.Tensor:
    """Logits for uint8 N×H×W×3 images (optionally averaged over flips: test-time augmentation)."""
    device = torch.device(device)
    model.eval()
    if indices is None:
        indices = np.arange(len(images_uint8))
    src = images_uint8 if isinstance(images_uint8, torch.Tensor) else None
    out = []
    it = range(0, len(indices), batch_size)
    for s in tqdm(it, desc="predict", disable=not progress, leave=False):
        idx = indices[s : s + batch_size]
        chunk = src[torch.from_numpy(idx)] if src is not None else torch.from_numpy(np.asarray(images_uint8[idx]))
        x = to_float(chunk.to(device, non_blocking=True))
        if device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(device, amp):
            logits = model(x).float()
            if tta:
                logits = logits + model(x.flip(3)).float() + model(x.flip(2)).float() + model(x.flip(2, 3)).float()
                logits = logits / 4
        out.append(logits)
    return torch.cat(out).cpu() if out else torch.empty(0)


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


def _ddp_wrap(model: nn.Module, cfg: TrainConfig, device: torch.device) -> nn.Module:
    if not dd.is_distributed():
        return model
    if cfg.sync_batchnorm and device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    elif cfg.sync_batchnorm:
        # torch's SyncBatchNorm runs on GPUs only; per-rank statistics are the DDP default anyway
        log.warning("sync_batchnorm needs GPUs; training on CPUs with per-rank batch norm")
    return nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


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


def check_finite(model: nn.Module, loss: float, *, epoch: int, what: str, fix: str) -> None:
    """Stop a run whose loss or weights became NaN or infinite: saving them would call a broken model complete."""
    weights_finite = all(bool(torch.isfinite(p).all()) for p in model.parameters())
    if not (math.isfinite(loss) and weights_finite):
        raise DivergedError(
            f"{what} diverged in epoch {epoch}: the loss is {loss:g} and the weights are "
            f"{'' if weights_finite else 'not '}finite; {fix}"
        )


def _augment_seed(seed: int, epoch: int, rank: int) -> int:
    """A distinct augmentation seed per (run seed, epoch, rank), so a resumed run draws what it would have."""
    return int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0])


def _validation_logits(
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


def fit(cfg: TrainConfig, *, prepared: Prepared | None = None) -> Path:
    """Train a classifier into ``cfg.out``; return the path of ``model.safetensors`` (best on validation)."""
    out = Path(cfg.out)
    device, state_path = start_fit(
        out, "train_state.pt", seed=cfg.seed, resume=cfg.resume, what="a training run", command="train"
    )
    # --resume continues one run: the same settings (checked before decoding any image), data and split
    previous = check_same_run(out, command="train", config=asdict(cfg), ignore=_NOT_COMPARED) if cfg.resume else None
    start_from = _init_from_checkpoint(cfg) if cfg.init else None  # checked before any image is decoded
    if prepared is None:
        with dd.main_first():  # rank 0 fills the decode cache, the others then read it
            prepared = prepare(
                cfg.data,
                image_size=cfg.image_size,
                split_file=cfg.split_file,
                seed=cfg.seed,
                progress=cfg.progress and dd.is_main(),
            )
    prep = prepared
    ds = prep.dataset
    fingerprints = {"data": ds.fingerprint, "data_content": ds.content_fingerprint, "split": prep.split_fingerprint}
    if previous is not None:
        check_same_run(out, command="train", config={}, fingerprints=fingerprints)
        if previous.get("status") == "complete" and previous.get("epochs_run") == cfg.epochs:
            log.info("%s holds this training run, complete with all %d epochs: nothing to resume", out, cfg.epochs)
            return out / "model.safetensors"
    train_idx, val_idx = prep.indices("train"), prep.indices("val")
    if cfg.max_train_images:
        train_idx = train_idx[: cfg.max_train_images]
    if len(train_idx) == 0 or len(val_idx) == 0:
        raise ConfigError("the split has an empty train or val part; use more data or other --split fractions")
    check_classes(ds.class_counts(train_idx))
    if start_from is not None:
        model, init_meta = start_from
        check_fits(init_meta, ds.classes, path=str(cfg.init))
        fingerprints["init"] = file_fingerprint(str(cfg.init))
    else:
        model = build_classifier(cfg.arch, ds.num_classes, weights=cfg.weights)
    model = model.to(device)
    check_input_size(model, prep.size, arch=cfg.arch)
    run = Run(
        out,
        command="train",
        config=asdict(cfg),
        seed=cfg.seed,
        data_fingerprint=fingerprints.pop("data"),
        fingerprints=fingerprints,
        write=dd.is_main(),
    )
    if dd.is_main():
        save_splits(prep.frame, out / "split.csv")
    images = device_images(prep.images, device)
    labels = torch.from_numpy(ds.labels).to(images.device)

    if use_channels_last(cfg, device):
        model = model.to(memory_format=torch.channels_last)
    ema = None
    if cfg.ema_decay > 0:
        ema = torch.optim.swa_utils.AveragedModel(
            model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=True
        )
    ddp_model = _ddp_wrap(model, cfg, device)
    if cfg.compile:
        ddp_model = torch.compile(ddp_model)  # type: ignore[assignment]
    weights = class_weights(ds.labels[train_idx], ds.num_classes, cfg.class_balance).to(device)
    criterion = nn.CrossEntropyLoss(weight=weights, label_smoothing=cfg.label_smoothing)
    if cfg.optimizer == "adamw":
        optimizer: torch.optim.Optimizer = torch.optim.AdamW(
            model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay
        )
    else:
        optimizer = torch.optim.SGD(
            model.parameters(), lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay, nesterov=True
        )
    steps_per_epoch = len(batch_sizes(math.ceil(len(train_idx) / dd.world_size()), cfg.batch_size))
    total_steps = steps_per_epoch * cfg.epochs
    warmup = int(cfg.warmup_epochs * steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_lambda(s, total=total_steps, warmup=warmup))
    gen = torch.Generator(device=device)
    sampler: torch.utils.data.DistributedSampler[int] = torch.utils.data.DistributedSampler(
        range(  # type: ignore[arg-type]
            len(train_idx)
        ),
        num_replicas=dd.world_size(),
        rank=dd.rank(),
        shuffle=True,
        seed=cfg.seed,
    )

    history: list[dict[str, float]] = []
    start_epoch, best, since_best = 0, -1.0, 0
    if cfg.resume and state_path.exists():
        st = torch.load(state_path, map_location=device, weights_only=False)
        model.load_state_dict(st["model"])
        optimizer.load_state_dict(st["optimizer"])
        scheduler.load_state_dict(st["scheduler"])
        if ema is not None and st.get("ema") is not None:
            ema.load_state_dict(st["ema"])
        start_epoch, best, since_best, history = st["epoch"] + 1, st["best"], st["since_best"], st["history"]
        log.info("resumed %s at epoch %d", out, start_epoch)

    info = model.weights_info or WeightsInfo("none")
    # the checkpoint records the images it learnt from (and those its --init learnt from), so `evaluate` and
    # `attack run` can refuse to score it on them
    inherited = start_from[1].training_images if start_from is not None else ()
    trained_on = tuple(sorted({*inherited, *(ds.image_ids[i] for i in train_idx)}))
    meta = CheckpointMeta(
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
    adversarial = training_attack(
        cfg.adversarial, cfg.adv_eps, cfg.adv_steps, generator=cfg.adv_generator, classes=ds.classes, device=device
    )
    attack, attack_info = adversarial if adversarial else (None, None)
    trained_against: dict[str, object] = {}
    if attack_info:
        share = {"share": cfg.adv_share} if cfg.adv_share < 1 else {}
        trained_against["training_attack"] = {**attack_info.describe(), **share}
    if cfg.noise_sigma > 0:
        trained_against["training_noise_sigma"] = cfg.noise_sigma
    eval_model: nn.Module = ema.module if ema is not None else model  # type: ignore[assignment]
    with run.stage("train"):
        for epoch in range(start_epoch, cfg.epochs):
            t0 = time.time()
            sampler.set_epoch(epoch)
            gen.manual_seed(_augment_seed(cfg.seed, epoch, dd.rank()))
            order = torch.from_numpy(train_idx[np.fromiter(iter(sampler), dtype=np.int64)]).to(images.device)
            train_loss = train_one_epoch(
                ddp_model,
                criterion,
                optimizer,
                scheduler,
                images,
                labels,
                order,
                cfg,
                device,
                gen,
                ema,
                epoch,
                attack=attack,
            )
            train_loss = float(dd.all_reduce_sum(torch.tensor([train_loss], device=device))[0]) / dd.world_size()
            check_finite(ddp_model, train_loss, epoch=epoch, what="training", fix="lower --lr (and check the data)")
            seconds = time.time() - t0
            logits = _validation_logits(eval_model, images, val_idx, ds.num_classes, device, cfg.amp)
            yv = ds.labels[val_idx]
            pred = logits.argmax(1).numpy()
            stats = EpochStats(
                epoch=epoch,
                train_loss=train_loss,
                val_loss=float(F.cross_entropy(logits, torch.from_numpy(yv))),
                val_acc=float((pred == yv).mean()),
                val_balanced_acc=float(balanced_accuracy_score(yv, pred)),
                lr=float(scheduler.get_last_lr()[0]),
                seconds=round(seconds, 2),
                images_per_s=round(len(train_idx) / seconds, 1),
            )
            history.append(asdict(stats))
            score = {
                "balanced_accuracy": stats.val_balanced_acc,
                "accuracy": stats.val_acc,
                "sum": stats.val_acc + stats.val_balanced_acc,
                "last": float(epoch),
            }[cfg.select]
            improved = score > best
            if improved:
                best, since_best = score, 0
            else:
                since_best += 1
            if dd.is_main():
                log.info(
                    "epoch %d loss %.4f val acc %.4f bal %.4f (%.0f img/s)",
                    epoch,
                    train_loss,
                    stats.val_acc,
                    stats.val_balanced_acc,
                    stats.images_per_s,
                )
                if improved:
                    save_checkpoint(
                        out / "model.safetensors",
                        eval_model,  # type: ignore[arg-type]
                        _meta_with(meta, epoch=epoch, val=asdict(stats), **trained_against),
                    )
                write_csv(out / "history.csv", history)
                with atomic_path(state_path) as tmp:
                    torch.save(
                        {
                            "model": model.state_dict(),
                            "optimizer": optimizer.state_dict(),
                            "scheduler": scheduler.state_dict(),
                            "ema": ema.state_dict() if ema else None,
                            "epoch": epoch,
                            "best": best,
                            "since_best": since_best,
                            "history": history,
                        },
                        tmp,
                    )
            if since_best >= cfg.patience:
                if dd.is_main():
                    log.info("early stop at epoch %d: no validation gain for %d epochs", epoch, cfg.patience)
                break
    dd.barrier()
    if dd.is_main() and cfg.calibrate_bias:
        from dermadv.models.checkpoints import load_checkpoint

        best_model, best_meta = load_checkpoint(out / "model.safetensors", device=device)
        logits = predict_logits(best_model, images, indices=val_idx, device=device, amp=cfg.amp)
        bias = calibrate_logit_bias(logits - best_model.logit_bias.cpu(), ds.labels[val_idx])
        best_model.logit_bias.copy_(bias.to(device))
        save_checkpoint(out / "model.safetensors", best_model, best_meta)
        log.info("logit bias tuned on validation: %s", [round(float(b), 2) for b in bias])
    if dd.is_main():
        final = history[-1] if history else {}
        write_json(
            out / "train_metrics.json",
            {"best_validation_score": best, "select": cfg.select, "epochs_run": len(history), "last_epoch": final},
        )
        run.finish(epochs_run=len(history))
    dd.barrier()
    return out / "model.safetensors"


def _init_from_checkpoint(cfg: TrainConfig) -> tuple[Classifier, CheckpointMeta]:
    """The classifier of ``cfg.init`` in training mode, from a finished run, checked against this run's architecture
    and image size (the classes once the data is read)."""
    from dermadv.models.checkpoints import load_checkpoint

    assert cfg.init is not None
    require_complete(cfg.init, fix="finish that run first (`dermadv train --resume`), then fine-tune from it")
    model, meta = load_checkpoint(cfg.init)
    if meta.arch != cfg.arch:
        raise ConfigError(
            f"--init {cfg.init} is a {meta.arch} but the run asks for --arch {cfg.arch}; pass the same arch"
        )
    if tuple(meta.image_size) != (cfg.image_size, cfg.image_size):
        raise ConfigError(
            f"--init {cfg.init} was trained at {meta.image_size[0]}x{meta.image_size[1]} px but the run uses "
            f"--image-size {cfg.image_size}; pass --image-size {meta.image_size[0]}"
        )
    model.weights_info = WeightsInfo(f"init:{cfg.init}", meta.mean, meta.std)
    return model.train(), meta


def _meta_with(meta: CheckpointMeta, **extra: object) -> CheckpointMeta:
    import json
    from dataclasses import replace

    return replace(meta, extra=json.dumps(extra, default=float))


__all__ = ["TrainConfig", "fit", "predict_logits", "Classifier"]
