"""``dermadv train``: a classifier trained into a run folder — manifest, split, best checkpoint, history, resume.

The steps (``train_one_epoch``, ``evaluate``, the ``build_*`` helpers) live in :mod:`dermadv.training.classifier`;
this module owns the run folder: the refusal of a second run in it, the ``--resume`` checks, the state saved after
every epoch, and the files a finished run holds.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from dermadv import distributed as dd
from dermadv.data.load import Prepared, prepare
from dermadv.data.splits import save_splits
from dermadv.errors import ConfigError, RunError
from dermadv.models.checkpoints import CheckpointMeta, check_fits, load_checkpoint, save_checkpoint
from dermadv.models.classifier import Classifier, WeightsInfo, build_classifier, check_input_size
from dermadv.models.inference import predict_logits
from dermadv.runs import (
    Run,
    atomic_path,
    check_same_run,
    file_fingerprint,
    read_manifest,
    require_complete,
    write_csv,
    write_json,
)
from dermadv.training.classifier import (
    EpochStats,
    TrainConfig,
    augment_seed,
    build_criterion,
    build_ema,
    build_optimizer,
    build_scheduler,
    build_training_attack,
    calibrate_logit_bias,
    check_finite,
    checkpoint_meta,
    evaluate,
    selection_score,
    train_one_epoch,
    training_indices,
    use_channels_last,
    wrap_model,
)
from dermadv.training.data import device_images, epoch_order, epoch_sampler

log = logging.getLogger(__name__)

#: The file a training run saves its resumable state to after every epoch.
STATE = "train_state.pt"

#: TrainConfig fields a resumed run may change: where it writes, progress bars, speed-only switches, and the length
#: (--resume with more epochs extends a finished run); the data and split files are compared by content
#: (fingerprints), not by path.
_NOT_COMPARED = ("out", "resume", "progress", "compile", "channels_last", "epochs", "patience", "data", "split_file")

Averaged = torch.optim.swa_utils.AveragedModel


@dataclass
class Progress:
    """Where a fit stands: the next epoch to train, the best selection score so far, epochs since, the history."""

    epoch: int = 0
    best: float = -1.0
    since_best: int = 0
    history: list[dict[str, float]] = field(default_factory=list)

    def record(self, stats: EpochStats, score: float) -> bool:
        """Add an epoch's row; return whether its ``score`` beat the best so far."""
        self.history.append(asdict(stats))
        self.epoch = stats.epoch + 1
        improved = score > self.best
        if improved:
            self.best, self.since_best = score, 0
        else:
            self.since_best += 1
        return improved


def start_fit(
    out: Path, state_name: str, *, seed: int, resume: bool, what: str, command: str
) -> tuple[torch.device, Path]:
    """Common start of a resumable fit: join the process group, seed, pick the device, guard the run folder.

    Without ``resume``, a folder that holds a fit's state or a complete run is refused: a run folder is one run.
    """
    dd.init_from_env()
    torch.manual_seed(seed)
    device = dd.default_device()
    if device.type == "cuda":
        # one input size throughout: cuDNN times its convolution algorithms once and keeps the fastest
        torch.backends.cudnn.benchmark = True
    state_path = Path(out) / state_name
    previous = read_manifest(out)
    held = state_path.exists() or (previous is not None and previous.get("status") == "complete")
    # Rank 0 decides for all: a rank that looked later could see the state file rank 0 just wrote.
    if dd.broadcast_object(held) and not resume:
        if previous is not None and previous.get("command") not in (None, command):
            what = f"a `dermadv {previous['command']}` run"
        raise RunError(f"{out} already holds {what}; pass --resume to continue it or choose another --out")
    return device, state_path


def fit(cfg: TrainConfig, *, prepared: Prepared | None = None) -> Path:
    """Train a classifier into ``cfg.out``; return the path of ``model.safetensors`` (best on validation)."""
    out = Path(cfg.out)
    device, state_path = start_fit(out, STATE, seed=cfg.seed, resume=cfg.resume, what="a training run", command="train")
    # --resume continues one run: the same settings (checked before decoding any image), data and split
    previous = check_same_run(out, command="train", config=asdict(cfg), ignore=_NOT_COMPARED) if cfg.resume else None
    start_from = _init_from_checkpoint(cfg.init, cfg) if cfg.init else None  # checked before any image is decoded
    prep = prepared if prepared is not None else _prepare(cfg)
    ds = prep.dataset
    fingerprints = {"data": ds.fingerprint, "data_content": ds.content_fingerprint, "split": prep.split_fingerprint}
    if previous is not None:
        check_same_run(out, command="train", config={}, fingerprints=fingerprints)
        if previous.get("status") == "complete" and previous.get("epochs_run") == cfg.epochs:
            log.info("%s holds this training run, complete with all %d epochs: nothing to resume", out, cfg.epochs)
            return out / "model.safetensors"
    train_idx, val_idx = training_indices(prep, max_images=cfg.max_train_images)
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
    ema = build_ema(model, cfg.ema_decay)
    train_model = wrap_model(model, cfg, device)
    criterion = build_criterion(ds.labels[train_idx], ds.num_classes, cfg, device)
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg, len(train_idx))
    generator = torch.Generator(device=device)
    sampler = epoch_sampler(len(train_idx), seed=cfg.seed)
    progress = Progress()
    if cfg.resume and state_path.exists():
        progress = _load_state(state_path, model, optimizer, scheduler, ema, device=device)
        log.info("resumed %s at epoch %d", out, progress.epoch)
    inherited = start_from[1].training_images if start_from is not None else ()
    meta = checkpoint_meta(cfg, prep, model, train_idx, inherited=inherited)
    attack, trained_against = build_training_attack(cfg, ds.classes, device)
    eval_model: nn.Module = ema.module if ema is not None else model  # type: ignore[assignment]

    with run.stage("train"):
        for epoch in range(progress.epoch, cfg.epochs):
            t0 = time.time()
            order = epoch_order(sampler, train_idx, epoch, images.device)
            generator.manual_seed(augment_seed(cfg.seed, epoch, dd.rank()))
            train_loss = train_one_epoch(
                train_model,
                criterion,
                optimizer,
                scheduler,
                images,
                labels,
                order,
                cfg,
                device,
                generator,
                ema,
                epoch,
                attack=attack,
            )
            train_loss = float(dd.all_reduce_sum(torch.tensor([train_loss], device=device))[0]) / dd.world_size()
            check_finite(train_model, train_loss, epoch=epoch, what="training", fix="lower --lr (and check the data)")
            seconds = time.time() - t0
            val = evaluate(
                eval_model, images, ds.labels, val_idx, num_classes=ds.num_classes, device=device, amp=cfg.amp
            )
            stats = EpochStats(
                epoch=epoch,
                train_loss=train_loss,
                val_loss=val.loss,
                val_acc=val.accuracy,
                val_balanced_acc=val.balanced_accuracy,
                lr=float(scheduler.get_last_lr()[0]),
                seconds=round(seconds, 2),
                images_per_s=round(len(train_idx) / seconds, 1),
            )
            improved = progress.record(stats, selection_score(stats, cfg.select))
            if dd.is_main():
                _log_epoch(stats)
                if improved:
                    save_checkpoint(
                        out / "model.safetensors",
                        eval_model,  # type: ignore[arg-type]
                        _meta_with(meta, epoch=epoch, val=asdict(stats), **trained_against),
                    )
                write_csv(out / "history.csv", progress.history)
                _save_state(state_path, progress, model, optimizer, scheduler, ema)
            if progress.since_best >= cfg.patience:
                if dd.is_main():
                    log.info("early stop at epoch %d: no validation gain for %d epochs", epoch, cfg.patience)
                break
    dd.barrier()
    if dd.is_main() and cfg.calibrate_bias:
        _calibrate_bias(out / "model.safetensors", images, ds.labels, val_idx, device=device, amp=cfg.amp)
    if dd.is_main():
        _finish(run, progress, select=cfg.select)
    dd.barrier()
    return out / "model.safetensors"


def _prepare(cfg: TrainConfig) -> Prepared:
    """The data and split of ``cfg``, decoded at its image size."""
    with dd.main_first():  # rank 0 fills the decode cache, the others then read it
        return prepare(
            cfg.data,
            image_size=cfg.image_size,
            split_file=cfg.split_file,
            seed=cfg.seed,
            progress=cfg.progress and dd.is_main(),
        )


def _log_epoch(stats: EpochStats) -> None:
    log.info(
        "epoch %d loss %.4f val acc %.4f bal %.4f (%.0f img/s)",
        stats.epoch,
        stats.train_loss,
        stats.val_acc,
        stats.val_balanced_acc,
        stats.images_per_s,
    )


def _finish(run: Run, progress: Progress, *, select: str) -> None:
    """Write ``train_metrics.json`` (the best score, the last epoch's row) and mark the run complete."""
    write_json(
        run.dir / "train_metrics.json",
        {
            "best_validation_score": progress.best,
            "select": select,
            "epochs_run": len(progress.history),
            "last_epoch": progress.history[-1] if progress.history else {},
        },
    )
    run.finish(epochs_run=len(progress.history))


def _save_state(
    path: Path,
    progress: Progress,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    ema: Averaged | None,
) -> None:
    """Everything a resumed run needs to continue as if never stopped, written atomically (a Ctrl-C mid-write keeps
    the previous epoch's state)."""
    with atomic_path(path) as tmp:
        torch.save(
            {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "ema": ema.state_dict() if ema else None,
                "epoch": progress.epoch - 1,  # the last epoch trained
                "best": progress.best,
                "since_best": progress.since_best,
                "history": progress.history,
            },
            tmp,
        )


def _load_state(
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    ema: Averaged | None,
    *,
    device: torch.device,
) -> Progress:
    """Restore the state :func:`_save_state` wrote into the built model, optimiser, schedule and average."""
    st = torch.load(path, map_location=device, weights_only=False)
    model.load_state_dict(st["model"])
    optimizer.load_state_dict(st["optimizer"])
    scheduler.load_state_dict(st["scheduler"])
    if ema is not None and st.get("ema") is not None:
        ema.load_state_dict(st["ema"])
    return Progress(epoch=st["epoch"] + 1, best=st["best"], since_best=st["since_best"], history=st["history"])


def _calibrate_bias(
    path: Path, images: torch.Tensor, labels: np.ndarray, val_idx: np.ndarray, *, device: torch.device, amp: str
) -> None:
    """Tune the saved model's per-class logit bias on the validation images and save it again."""
    model, meta = load_checkpoint(path, device=device)
    logits = predict_logits(model, images, indices=val_idx, device=device, amp=amp)
    bias = calibrate_logit_bias(logits - model.logit_bias.cpu(), labels[val_idx])
    model.logit_bias.copy_(bias.to(device))
    save_checkpoint(path, model, meta)
    log.info("logit bias tuned on validation: %s", [round(float(b), 2) for b in bias])


def _init_from_checkpoint(init: str, cfg: TrainConfig) -> tuple[Classifier, CheckpointMeta]:
    """The classifier of ``init`` in training mode, from a finished run, checked against this run's architecture
    and image size (the classes once the data is read)."""
    require_complete(init, fix="finish that run first (`dermadv train --resume`), then fine-tune from it")
    model, meta = load_checkpoint(init)
    if meta.arch != cfg.arch:
        raise ConfigError(f"--init {init} is a {meta.arch} but the run asks for --arch {cfg.arch}; pass the same arch")
    if tuple(meta.image_size) != (cfg.image_size, cfg.image_size):
        raise ConfigError(
            f"--init {init} was trained at {meta.image_size[0]}x{meta.image_size[1]} px but the run uses "
            f"--image-size {cfg.image_size}; pass --image-size {meta.image_size[0]}"
        )
    model.weights_info = WeightsInfo(f"init:{init}", meta.mean, meta.std)
    return model.train(), meta


def _meta_with(meta: CheckpointMeta, **extra: object) -> CheckpointMeta:
    return replace(meta, extra=json.dumps(extra, default=float))


__all__ = ["STATE", "Progress", "fit", "start_fit"]
