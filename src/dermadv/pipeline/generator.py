"""``dermadv attack fit``: an AdvGAN generator fitted into a run folder — manifest, generator, history, resume.

The steps (``gan_step``, ``train_one_epoch``, the ``build_*`` helpers) live in :mod:`dermadv.training.generator`;
this module owns the run folder: the classifier it attacks, the ``--resume`` checks, the state saved after every
epoch.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from dermadv import distributed as dd
from dermadv.attacks.generator import save_generator
from dermadv.config import parse_eps
from dermadv.data.classes import class_index
from dermadv.data.load import Prepared, prepare, split_beside
from dermadv.errors import ConfigError, RunError
from dermadv.models.checkpoints import check_fits
from dermadv.models.sources import SourceModel, load_model
from dermadv.pipeline.train import start_fit
from dermadv.runs import Run, atomic_path, check_same_run, require_complete, write_csv
from dermadv.training.classifier import check_finite
from dermadv.training.data import device_images, epoch_order, epoch_sampler
from dermadv.training.generator import (
    GeneratorConfig,
    attacked_model,
    build_generator,
    build_optimizers,
    build_scheduler,
    epoch_row,
    fit_indices,
    fooled_by_class,
    generator_spec,
    image_weights,
    train_one_epoch,
    wrap_models,
)

log = logging.getLogger(__name__)

#: The file a generator fit saves its resumable state to after every epoch.
STATE = "generator_state.pt"

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
        out, STATE, seed=cfg.seed, resume=cfg.resume, what="a generator fit", command="attack fit"
    )
    # --resume continues one run: the same settings, classifier (by content) and data
    classifier = _open_classifier(cfg, device)
    info = classifier.info
    fingerprints = {"classifier": info.fingerprint}
    previous = None
    if cfg.resume:
        previous = check_same_run(
            out, command="attack fit", config=asdict(cfg), ignore=_NOT_COMPARED, fingerprints=fingerprints
        )
    target = class_index(cfg.target, info.classes)
    prep = _prepare(cfg, classifier)
    check_fits(info, prep.dataset.classes, path=cfg.checkpoint)  # type: ignore[arg-type]
    fingerprints |= {"data": prep.dataset.fingerprint, "data_content": prep.dataset.content_fingerprint}
    if previous is not None:
        check_same_run(out, command="attack fit", config={}, fingerprints=fingerprints)
        if previous.get("status") == "complete":
            log.info("%s holds this generator fit, complete: nothing to resume", out)
            return out / "generator.safetensors"
    attacked = attacked_model(classifier, info, cfg.attack_size)
    idx = fit_indices(prep, cfg)
    images = device_images(prep.images, device)
    spec = generator_spec(cfg, eps, target=target, info=info, image_size=prep.size)
    gen, disc = build_generator(cfg, eps, device)
    g_model, d_model = wrap_models(gen, disc, device)
    opt_g, opt_d = build_optimizers(gen, disc, cfg.lr)
    scheduler = build_scheduler(opt_g, cfg, len(idx))
    state = _read_state(state_path, scheduler, cfg, device=device) if cfg.resume and state_path.exists() else None
    sampler = epoch_sampler(len(idx), seed=cfg.seed)
    run = Run(
        out,
        command="attack fit",
        config={**asdict(cfg), "eps_value": eps},
        seed=cfg.seed,
        data_fingerprint=fingerprints.pop("data"),
        fingerprints=fingerprints,
        write=dd.is_main(),
    )
    history: list[dict[str, float | None]] = []
    start = 0
    if state is not None:
        gen.load_state_dict(state["gen"])
        disc.load_state_dict(state["disc"])
        opt_g.load_state_dict(state["opt_g"])
        opt_d.load_state_dict(state["opt_d"])
        scheduler.load_state_dict(state["sched_g"])
        start, history = state["epoch"] + 1, state["history"]
    ds = prep.dataset
    weights = image_weights(ds.labels, idx, ds.num_classes, class_balance=cfg.class_balance, device=images.device)

    labels = torch.as_tensor(ds.labels, device=images.device)
    check_idx = torch.as_tensor(idx[dd.shard_indices(len(idx))], device=images.device)  # this rank's share
    stopped = _reached(cfg, history)  # an interrupted fit that had already met stop_at
    with run.stage("fit"):
        for epoch in range(start, start if stopped else cfg.epochs):
            t0 = time.time()
            order = epoch_order(sampler, idx, epoch, images.device)
            sums = train_one_epoch(
                g_model,
                d_model,
                opt_g,
                opt_d,
                scheduler,
                attacked,
                images,
                order,
                weights,
                cfg,
                device,
                epoch,
                target=target,
                eps=eps,
            )
            totals = dd.all_reduce_sum(sums).tolist()
            check_finite(gen, totals[0] / max(1, totals[4]), epoch=epoch, what="the generator fit", fix="lower --lr")
            row = epoch_row(epoch, totals, time.time() - t0)
            rate = float(row["train_target_rate"] or 0)
            if cfg.stop_at is not None and rate >= cfg.stop_at:  # the running rate first, then the 8-bit check
                fooled, n = dd.all_reduce_sum(
                    fooled_by_class(
                        gen, attacked, images, check_idx, labels, cfg, device,
                        target=target, eps=eps, num_classes=ds.num_classes,
                    )
                ).tolist()  # fmt: skip
                row["worst_class_rate_8bit"] = min(f / m for f, m in zip(fooled, n, strict=True) if m)
            history.append(row)
            stopped = _reached(cfg, history)
            if dd.is_main():
                log.info(
                    "generator epoch %d: margin loss %.3f, predicted %s on %.1f%% of fit images (%.0f img/s)",
                    epoch,
                    row["loss_adv"],
                    cfg.target,
                    100 * rate,
                    row["images_per_s"],
                )
                save_generator(out / "generator.safetensors", gen, spec)
                write_csv(out / "history.csv", history)
                _save_state(
                    state_path,
                    {
                        "gen": gen.state_dict(),
                        "disc": disc.state_dict(),
                        "opt_g": opt_g.state_dict(),
                        "opt_d": opt_d.state_dict(),
                        "sched_g": scheduler.state_dict(),
                        "epoch": epoch,
                        "history": history,
                    },
                )
                if stopped:
                    log.info(
                        "generator epoch %d: every class of the fit images is called %s at >= %.1f%% from 8-bit "
                        "outputs: the fit stops here (stop_at)",
                        epoch,
                        cfg.target,
                        100 * float(cfg.stop_at or 0),
                    )
            if stopped:
                break
    if dd.is_main():
        run.finish(epochs_run=len(history), stopped_early=stopped and len(history) < cfg.epochs)
    dd.barrier()
    return out / "generator.safetensors"


def _reached(cfg: GeneratorConfig, history: list[dict[str, float | None]]) -> bool:
    """Whether the last epoch's 8-bit check met ``cfg.stop_at`` (never without one)."""
    worst = history[-1].get("worst_class_rate_8bit") if history and cfg.stop_at is not None else None
    return worst is not None and float(worst) >= float(cfg.stop_at or 0)


def _open_classifier(cfg: GeneratorConfig, device: torch.device) -> SourceModel:
    """The model to attack: from a finished run (unless ``allow_incomplete``), offering gradients, of the HAM10000
    classes."""
    if Path(cfg.checkpoint).is_file():
        require_complete(cfg.checkpoint, allow_incomplete=cfg.allow_incomplete)
    source = load_model(str(cfg.checkpoint), weights=cfg.weights, card=cfg.model_card, device=device)
    if not source.gradients:
        raise ConfigError(
            f"a generator is fitted with the model's gradients, which {source.info.spec} does not offer "
            f"({', '.join(source.info.offers[:-1])}); audit it with `dermadv audit` (score-based attacks)"
        )
    if source.info.card.grouped:
        raise ConfigError(f"{source.info.spec} groups classes; fit generators on models of the HAM10000 classes")
    return source


def _prepare(cfg: GeneratorConfig, classifier: SourceModel) -> Prepared:
    """The data at the classifier's input size (or its stored size), split as the classifier's training run split
    it unless ``cfg.split_file`` says otherwise."""
    info = classifier.info
    split_file = cfg.split_file or (split_beside(cfg.checkpoint) if info.kind == "dermadv" else None)
    size = None if cfg.attack_size == "stored" else info.image_size
    with dd.main_first():  # rank 0 fills the decode cache, the others then read it
        return prepare(
            cfg.data, image_size=size, split_file=split_file, seed=cfg.seed, progress=dd.is_main() and cfg.progress
        )


def _read_state(
    path: Path, scheduler: torch.optim.lr_scheduler.OneCycleLR, cfg: GeneratorConfig, *, device: torch.device
) -> dict[str, Any]:
    """The state an interrupted fit saved, refused when its one-cycle schedule was planned over another number of
    steps (the plan spans all epochs, so a fit cannot be resumed under another)."""
    state: dict[str, Any] = torch.load(path, map_location=device, weights_only=False)
    planned = state["sched_g"]["total_steps"]
    if planned != scheduler.total_steps:
        raise RunError(
            f"{path.parent} holds a generator fit planned for {planned} steps, but --epochs "
            f"{cfg.epochs} --batch-size {cfg.batch_size} make {scheduler.total_steps}; resume with the settings "
            "it was started with, or choose another --out"
        )
    return state


def _save_state(path: Path, state: dict[str, Any]) -> None:
    """The fit's resumable state, written atomically (a Ctrl-C mid-write keeps the previous epoch's state)."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


__all__ = ["STATE", "check_generator_settings", "fit_generator"]
