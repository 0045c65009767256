"""``dermadv attack run / transfer``: build an attack, apply it to a split, write and evaluate the attack folder."""

from __future__ import annotations

import inspect
import logging
import math
import shutil
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from dermadv import distributed as dd
from dermadv.attacks.base import THREAT_MODEL_OF, Attack, check_fit_spec
from dermadv.attacks.registry import create_attack, get_attack_class
from dermadv.config import check_at_least, check_budgets, check_types, parse_eps
from dermadv.data.classes import class_index
from dermadv.data.load import Prepared, prepare, to_float
from dermadv.data.splits import SPLITS, stratified_sample
from dermadv.defences.transforms import attacked_model, parse_defence
from dermadv.errors import ConfigError
from dermadv.evaluation.attack_eval import AttackMetrics, evaluate_attack_folder
from dermadv.evaluation.attack_info import AttackInfo, QueryCount
from dermadv.evaluation.attack_run import (
    IMAGE_KINDS,
    JOURNAL_NAME,
    PREDICTIONS_FILE,
    AttackRun,
    ImageKind,
    clear_attack_folder,
    image_path,
    prediction_rows,
    read_png,
    write_attack_info,
)
from dermadv.models.checkpoints import load_checkpoint
from dermadv.models.classifier import ResizedClassifier
from dermadv.models.sources import ModelInfo, label_map
from dermadv.pipeline.apply import AttackTask, predict_probs, run_attack
from dermadv.pipeline.models import ModelSpec, check_unseen, checked, open_model, training_split
from dermadv.runs import Run, check_same_run, file_fingerprint, require_complete, write_csv

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AttackRunConfig:
    checkpoint: Path  # the model spec: a file, an export or a URL (``--model``)
    out: Path
    method: str = "advgan"
    generator: Path | None = None
    data: str | None = None
    split: str = "test"
    split_file: str | None = None
    target: str | None = "nv"
    eps: str | None = None  # None: DEFAULT_EPS, or a fitted generator's own
    steps: int = 20
    pixels: int = 1
    attack_size: Literal["model", "stored"] = "model"
    batch_size: int = 64
    seed: int = 0
    fit_split: str = "train"  # for attacks that must be fitted first (universal perturbation)
    fit_limit: int | None = None  # fit on a class-stratified sample of this many images of fit_split
    params: dict[str, Any] = field(default_factory=dict)
    limit: int | None = None  # attack only the first N images of the split (a class-stratified sample)
    evaluate: bool = True
    progress: bool = True
    defence: str | None = None  # attack and score the model behind an input transform (jpeg:75, …)
    adaptive: bool = True  # with a defence: BPDA (+EOT) gradients; False: the plain attack that ignores it
    eot_samples: int = 8
    allow_incomplete: bool = False  # accept a checkpoint or generator of an unfinished run (with a warning)
    weights: str | None = None  # the state dict of a torchvision:/timm:/python: architecture
    model_card: str | None = None
    threat_model: str | None = None
    queries: int | None = None  # per-image query budget of a query-based attack
    resume: bool = False  # continue an interrupted run in ``out``: same settings, its query journal kept
    allow_training_images: bool = False  # attack a split holding images the checkpoint was trained on (warned)

    def __post_init__(self) -> None:
        # Every option checked before any work, so a sweep does not stop at its first bad budget.
        check_types(self)
        get_attack_class(self.method)
        check_budgets(self, "eps")
        for split in (self.split, self.fit_split):
            if split not in (*SPLITS, "all"):
                raise ConfigError(f"split must be one of {', '.join(SPLITS)}, all; got {split!r}")
        check_at_least(self, 1, "steps", "pixels", "batch_size", "limit", "fit_limit", "queries")
        check_at_least(self, 0, "seed")
        if self.target is not None:
            class_index(self.target)


#: AttackRunConfig fields a resumed run may change: they change neither the queries nor their answers
_NOT_COMPARED = ("out", "resume", "progress", "evaluate", "allow_incomplete", "allow_training_images")

#: the L∞ budget of an attack run given no --eps (a fitted generator brings its own)
DEFAULT_EPS = "8/255"

#: how to give a required hyperparameter on the command line
_HINTS = {"eps": "--eps (e.g. 2/255)", "generator": "--generator PATH (from `dermadv attack fit`)"}


def build_attack(cfg: AttackRunConfig, eps: float | None) -> Attack:
    """Create the attack through the registry, passing only the options its constructor accepts."""
    offered = {
        "eps": eps,
        "steps": cfg.steps,
        "queries": cfg.queries,
        "pixels": cfg.pixels,
        "seed": cfg.seed,
        "generator": cfg.generator,
    }
    params = inspect.signature(get_attack_class(cfg.method)).parameters
    kwargs = {k: v for k, v in offered.items() if k in params and v is not None}
    missing = [n for n in _HINTS if n in params and params[n].default is params[n].empty and n not in kwargs]
    if missing:
        raise ConfigError(f"attack {cfg.method} needs {_HINTS[missing[0]]}")
    # an option that would be ignored or contradicted is refused: the run records what was attacked, nothing else
    doubled = sorted(set(cfg.params) & set(offered))
    if doubled:
        flag = "--" + doubled[0].replace("_", "-")
        raise ConfigError(f"--param {doubled[0]}=… repeats {flag}; give it once, with {flag}")
    unused = [n for n in ("generator", "queries") if offered[n] is not None and n not in params]
    if unused:
        users = "advgan" if unused[0] == "generator" else "a query-based attack (square, simba, hopskipjump, …)"
        raise ConfigError(f"--{unused[0]} is not used by --method {cfg.method}; drop it, or use {users}")
    for name, value in cfg.params.items():
        default = params[name].default if name in params else None
        if isinstance(default, (int, float)) and not isinstance(default, bool):
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not number or (isinstance(default, int) and not isinstance(value, int)):
                kind = "a whole number" if isinstance(default, int) else "a number"
                raise ConfigError(f"--param {name} must be {kind} (default {default}); got {value!r}")
    kwargs.update(cfg.params)
    return create_attack(cfg.method, **kwargs)


def attack_split(cfg: AttackRunConfig) -> AttackMetrics | None:
    """Attack a split and write the attack output folder; evaluate it when ``cfg.evaluate`` (on rank 0)."""
    dd.init_from_env()
    device = dd.default_device()
    # no --eps: a fitted generator's own budget (below), else the default
    eps: float | None = parse_eps(cfg.eps if cfg.eps is not None else DEFAULT_EPS, saved=True)
    if cfg.generator is not None:
        require_complete(cfg.generator, allow_incomplete=cfg.allow_incomplete)
    model_spec = ModelSpec(str(cfg.checkpoint), cfg.weights, cfg.model_card, cfg.threat_model)
    defence = parse_defence(cfg.defence) if cfg.defence else None
    attack = build_attack(cfg, eps)
    fitted = attack.spec
    if fitted is not None and cfg.eps is not None and not math.isclose(parse_eps(cfg.eps), fitted.eps, abs_tol=1e-9):
        raise ConfigError(
            f"{cfg.generator or cfg.method} was fitted at eps {fitted.eps * 255:g}/255; --eps {cfg.eps} cannot change "
            f"it: drop --eps, or fit a generator at {cfg.eps} with `dermadv attack fit --eps {cfg.eps}`"
        )
    if cfg.resume and dd.is_main():  # refuse changed settings before any long work
        check_same_run(cfg.out, command="attack run", config=_run_config(cfg, model_spec), ignore=_NOT_COMPARED)
    source = open_model(model_spec, device=device, allow_incomplete=cfg.allow_incomplete)
    meta: ModelInfo = source.info
    check_threat_model(attack, meta, cfg.method)
    target = model_target(meta, cfg.target)
    if "eps" not in inspect.signature(type(attack)).parameters:
        eps = None  # natural perturbations, artefacts, C&W, few pixels: no L∞ budget to clip the saved images to
    spec = attack.spec  # an attack loaded fitted brings its own budget, target and image size
    attack_size = spec.attack_size if spec else cfg.attack_size
    if spec is not None:
        eps = spec.eps
        if cfg.target and spec.target != cfg.target:
            raise ConfigError(
                f"the {cfg.method} attack was fitted for target {spec.target!r}, not {cfg.target!r}; "
                "fit one for this target or drop --target"
            )
        target = spec.target_index
    split_file = cfg.split_file or training_split(source, model_spec)
    size = None if attack_size == "stored" else meta.image_size
    with dd.main_first():  # rank 0 fills the decode cache, the others then read it
        prep = prepare(cfg.data, image_size=size, split_file=split_file, seed=cfg.seed, progress=dd.is_main())
    to_model = label_map(meta, prep.dataset.classes)
    source = checked(source, prep.images[prep.indices(cfg.split)[:32]], device=device)
    meta = source.info
    check_threat_model(attack, meta, cfg.method)
    model: nn.Module = source
    attacked: nn.Module = model
    if attack_size == "stored" and meta.image_size is not None:
        attacked = ResizedClassifier(model, meta.image_size)
    attacked.eval()
    scorer = None
    if defence is not None:
        scorer = defence(attacked).eval()
        attacked = attacked_model(attacked, defence, adaptive=cfg.adaptive, eot_samples=cfg.eot_samples).eval()
    if spec is not None:
        fingerprint = meta.fingerprint
        check_fit_spec(
            spec,
            classes=meta.classes,
            image_size=prep.size,
            classifier_fingerprint=fingerprint,
            path=cfg.generator or cfg.method,
        )
    idx = prep.indices(cfg.split)
    if len(idx) == 0:
        raise ConfigError(
            f"the {cfg.split} split of {cfg.data or 'the synthetic set'} is empty; choose another --split"
        )
    if cfg.limit:
        idx = stratified_sample(prep.dataset.labels, idx, cfg.limit, cfg.seed)
    ids = [prep.dataset.image_ids[i] for i in idx]
    trained = check_unseen(source, model_spec, ids, split=cfg.split, allow=cfg.allow_training_images)
    if attack.needs_fit and target is None:
        raise ConfigError(f"{cfg.method} is fitted toward a target class; pass --target")
    out = Path(cfg.out)
    if dd.is_main():
        if cfg.resume:
            fingerprints = {"model": meta.fingerprint, "data": prep.dataset.fingerprint}
            config = {**_run_config(cfg, model_spec), "eps_value": eps}
            check_same_run(out, command="attack run", config=config, ignore=_NOT_COMPARED, fingerprints=fingerprints)
        # --resume keeps the answers an earlier run was given: the same seeded queries are replayed from them
        clear_attack_folder(out, keep=(JOURNAL_NAME,) if cfg.resume else ())
    dd.barrier()
    run = Run(
        out,
        command="attack run",
        config={**_run_config(cfg, model_spec), "eps_value": eps},
        seed=cfg.seed,
        data_fingerprint=prep.dataset.fingerprint,
        fingerprints={"model": meta.fingerprint},
        write=dd.is_main(),
    )
    torch.manual_seed(cfg.seed)
    if attack.needs_fit:
        with run.stage("fit"):
            fit_idx = prep.indices(cfg.fit_split)
            if cfg.fit_limit:
                fit_idx = stratified_sample(prep.dataset.labels, fit_idx, cfg.fit_limit, cfg.seed)
            attack.fit(attacked, np.asarray(prep.images[fit_idx]), target=target)  # type: ignore[attr-defined]
        # every rank fitted the same way; rank 0's result makes them agree even where GPU sums differ
        dd.broadcast_tensor_attributes(attack)
    info = AttackInfo(
        method=cfg.method,
        params=repr(attack),
        eps=eps,
        eps_255=eps * 255 if eps else None,
        target=meta.classes[target] if target is not None else None,
        target_index=target,
        checkpoint=meta.spec,
        model=meta.to_dict(),
        threat_model=THREAT_MODEL_OF[attack.needs],
        generator=str(cfg.generator) if cfg.generator else None,
        data=cfg.data,
        data_source=prep.dataset.source,
        split=cfg.split,
        classes=tuple(meta.classes),
        image_size=tuple(prep.size),
        classifier_input_size=tuple(meta.image_size) if meta.image_size else None,
        attack_size=attack_size,
        n_images=int(len(idx)),
        sampled=bool(cfg.limit),
        training_images_attacked=trained,  # > 0 only for split train or under --allow-training-images
        defence=str(defence) if defence is not None else None,
        adaptive=cfg.adaptive if defence is not None else None,
    )
    write_attack_info(out, info)
    task = AttackTask(
        attack=attack,
        model=attacked,
        classes=meta.classes,
        images=prep.images,
        image_ids=prep.dataset.image_ids,
        labels=to_model[prep.dataset.labels],
        indices=idx,
        target=target,
        eps=eps,
        batch_size=cfg.batch_size,
        device=device,
        score_model=scorer,
        counter=source.counter,
    )
    # one journal per folder: ranks of a distributed run would write it at once, so they go without
    journal = source.open_journal(out / JOURNAL_NAME) if not dd.is_distributed() else None
    if journal is not None and journal.replayable:
        log.info("%s: %d answers of an earlier run are replayed, not asked again", journal.path, journal.replayable)
    before = source.counter.snapshot()
    try:
        with run.stage("attack"):
            fill_start_pool(attack, attacked, prep, task.labels, target, device=device, seed=cfg.seed)
            spent = run_attack(task, out, progress=cfg.progress)
    finally:
        if journal is not None:
            source.journal = None
            journal.close()
    run.update(images_per_s=round(len(idx) / max(1e-9, run.timings["attack"]), 2))
    if dd.is_main():
        after = source.counter.snapshot()
        queries = {
            **{k: round(after[k] - before[k], 4) for k in after},
            "attack_queries": int(spent.sum()) if spent is not None else None,
            "wall_seconds": round(run.timings["attack"], 4),
        }
        write_attack_info(out, replace(info, queries=QueryCount.from_dict(queries)))
    metrics = None
    if dd.is_main() and cfg.evaluate:
        with run.stage("evaluate"):
            metrics = evaluate_attack_folder(out, in_run=True)
    if dd.is_main():
        run.finish(n_images=int(len(idx)))
    dd.barrier()  # the folder is complete before any rank moves on to read it
    return metrics


def _run_config(cfg: AttackRunConfig, model_spec: ModelSpec) -> dict[str, Any]:
    """The settings an attack run's manifest records (and a resumed run must repeat)."""
    return {**asdict(cfg), **model_spec.config(), "checkpoint": model_spec.config()["model"]}


def fill_start_pool(
    attack: Attack,
    model: nn.Module,
    prep: Prepared,
    labels: np.ndarray,
    target: int | None,
    *,
    device: torch.device | str,
    seed: int,
    candidates: int = 64,
    size: int = 32,
) -> None:
    """Give a decision-based attack (one with ``_start_pool``) training images that ``model`` classifies as
    ``target``, to start its targeted search from: ``candidates`` of the train split, those labelled ``target``
    first, scored in one call (queries the model's counter records, outside the attack's per-image budget); at most
    ``size`` are kept."""
    if target is None or not hasattr(attack, "_start_pool"):
        return
    train = np.random.default_rng(seed).permutation(prep.indices("train"))
    chosen = np.sort(train[np.argsort(labels[train] != target, kind="stable")][:candidates])
    if len(chosen) == 0:
        raise ConfigError(
            f"{attack.name} starts a targeted attack from training images of the target class, but the data has "
            "no train split; give a --split-file with one, or attack untargeted (--target none)"
        )
    images = to_float(torch.from_numpy(np.ascontiguousarray(prep.images[chosen]))).to(device)
    with torch.no_grad():
        pool = images[model(images).argmax(1) == target][:size]
    if len(pool) == 0:
        raise ConfigError(
            f"{attack.name} starts a targeted attack from an image the model classifies as the target, but it "
            f"classifies none of {len(chosen)} training images ({int((labels[chosen] == target).sum())} of them "
            "labelled so) as the target; choose another --target or attack untargeted (--target none)"
        )
    attack._start_pool = pool  # type: ignore[attr-defined]


def check_threat_model(attack: Attack, info: ModelInfo, method: str) -> None:
    """Refuse an attack that needs more of the model than it offers (gradients of a black-box model)."""
    needed = THREAT_MODEL_OF[attack.needs]
    if needed != "transfer" and needed not in info.offers:
        raise ConfigError(
            f"{method} is a {needed} attack but {info.spec} offers {', '.join(info.offers[:-1])} only; "
            "choose an attack it allows (--method square needs scores, hopskipjump labels only) or give a model "
            "with gradients"
        )


def model_target(info: ModelInfo, target: str | None) -> int | None:
    """The index of the score class that stands for the HAM10000 code ``target`` (a model's group for it)."""
    if target is None:
        return None
    class_index(target)
    name = info.card.model_class_of(target) if info.card.grouped else target
    return info.classes.index(name)


def transfer(
    source: Path, checkpoint: Path, out: Path, *, defence: str | None = None, allow_incomplete: bool = False
) -> AttackMetrics:
    """Score the saved adversarial images of ``source`` on another classifier (black-box transfer).

    With a ``defence`` the images pass through it first: the attack made without knowing the defence.
    """
    spec = parse_defence(defence) if defence else None
    source, out = Path(source), Path(out)
    source_run = AttackRun.read(source, allow_incomplete=allow_incomplete)
    require_complete(checkpoint, allow_incomplete=allow_incomplete)
    source_run.check_images()
    info, ids = source_run.info, source_run.image_ids
    device = dd.default_device()
    model, meta = load_checkpoint(checkpoint, device=device)
    if tuple(meta.classes) != source_run.classes:
        raise ConfigError(
            f"{checkpoint} predicts {','.join(meta.classes)} but the attack used {','.join(source_run.classes)}"
        )
    clear_attack_folder(out)
    run = Run(
        out,
        command="attack transfer",
        config={"source": str(source), "checkpoint": str(checkpoint), "defence": str(spec) if spec else None},
        fingerprints={"classifier": file_fingerprint(checkpoint)},
    )
    attacked: nn.Module = model
    if source_run.image_size != tuple(meta.image_size):
        attacked = ResizedClassifier(model, meta.image_size)
    if spec is not None:
        torch.manual_seed(0)  # a randomised defence draws the same noise on every run
        attacked = spec(attacked).eval()
    for kind in IMAGE_KINDS:
        if (source / "images" / kind).is_dir():
            shutil.copytree(source / "images" / kind, out / "images" / kind)
    probs: dict[ImageKind, list[np.ndarray]] = {"clean": [], "adv": []}
    for s in range(0, len(ids), 128):
        for kind, parts in probs.items():
            images = np.stack([read_png(image_path(out, i, kind)) for i in ids[s : s + 128]])
            parts.append(predict_probs(attacked, images, device).numpy())
    clean, adv = (np.concatenate(p) if p else np.zeros((0, len(meta.classes))) for p in probs.values())
    rows = prediction_rows(ids, source_run.labels, meta.classes, clean, adv, adv.argmax(1))
    write_csv(out / PREDICTIONS_FILE, rows)
    moved = replace(
        info,
        transfer_from=str(source),
        checkpoint=str(checkpoint),
        source_checkpoint=info.checkpoint,
        defence=str(spec) if spec else None,
        adaptive=False if spec else None,
    )
    write_attack_info(out, moved)
    metrics = evaluate_attack_folder(out, in_run=True)
    run.finish()
    return metrics
