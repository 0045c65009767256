"""Library API behind ``dermadv attack run / sweep / transfer``: build an attack, apply it, evaluate."""

from __future__ import annotations

import inspect
import logging
import shutil
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from dermadv import distributed as dd
from dermadv.attacks.apply import AttackTask, read_png, run_attack, write_attack_info
from dermadv.attacks.base import Attack
from dermadv.attacks.generator import ResizedClassifier, check_generator_fits, file_fingerprint, load_generator
from dermadv.config import format_eps, parse_eps
from dermadv.data.classes import class_index
from dermadv.errors import ConfigError, RunError
from dermadv.models.checkpoints import check_fits, load_checkpoint
from dermadv.runs import Run, read_json, write_csv
from dermadv.training.data import prepare, split_beside

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AttackRunConfig:
    checkpoint: Path
    out: Path
    method: str = "advgan"
    generator: Path | None = None
    data: str | None = None
    split: str = "test"
    split_file: str | None = None
    target: str | None = "nv"
    eps: str | None = "8/255"
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


def build_attack(cfg: AttackRunConfig, eps: float | None) -> Attack:
    """Create the attack, passing only the hyperparameters its constructor accepts."""
    from dermadv.attacks.registry import create_attack, get_attack_class

    offered: dict[str, Any] = {"eps": eps, "steps": cfg.steps, "pixels": cfg.pixels, "seed": cfg.seed}
    if cfg.method.startswith("art:"):
        kwargs = {k: v for k, v in {"eps": eps, **cfg.params}.items() if v is not None}
        return create_attack(cfg.method, **kwargs)
    params = inspect.signature(get_attack_class(cfg.method)).parameters
    kwargs = {k: v for k, v in offered.items() if k in params and v is not None}
    if "eps" in params and params["eps"].default is inspect.Parameter.empty and eps is None:
        raise ConfigError(f"attack {cfg.method} needs --eps (e.g. 2/255)")
    kwargs.update(cfg.params)
    return create_attack(cfg.method, **kwargs)


def stratified_sample(labels: np.ndarray, indices: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Up to ``n`` of ``indices``, the same number per class where possible (seeded)."""
    rng = np.random.default_rng(seed)
    classes = np.unique(labels[indices])
    per = max(1, n // len(classes))
    picked = []
    for c in classes:
        pool = indices[labels[indices] == c]
        picked.append(rng.permutation(pool)[:per])
    out = np.sort(np.concatenate(picked))
    return out[:n]


def attack_split(cfg: AttackRunConfig) -> dict[str, Any]:
    """Attack a split and write the attack output folder; evaluate it when ``cfg.evaluate``."""
    dd.init_from_env()
    device = dd.default_device()
    eps = parse_eps(cfg.eps) if cfg.eps is not None else None
    model, meta = load_checkpoint(cfg.checkpoint, device=device)
    target = class_index(cfg.target, meta.classes) if cfg.target else None
    attack: Attack
    attack_size = cfg.attack_size
    if cfg.method == "advgan":
        if cfg.generator is None:
            raise ConfigError("--method advgan needs --generator PATH (from `dermadv attack fit`)")
        gen_attack = load_generator(cfg.generator, device=device)
        attack_size = gen_attack.spec.attack_size  # type: ignore[assignment]
        eps = gen_attack.spec.eps
        if cfg.target and gen_attack.spec.target != cfg.target:
            raise ConfigError(
                f"the generator was fitted for target {gen_attack.spec.target!r}, not {cfg.target!r}; "
                "fit one for this target or drop --target"
            )
        target = gen_attack.spec.target_index
        attack = gen_attack
    else:
        attack = build_attack(cfg, eps)
    split_file = cfg.split_file or split_beside(cfg.checkpoint)
    size = None if attack_size == "stored" else meta.image_size
    with dd.main_first():  # rank 0 fills the decode cache, the others then read it
        prep = prepare(cfg.data, image_size=size, split_file=split_file, seed=cfg.seed, progress=dd.is_main())
    check_fits(meta, prep.dataset.classes, path=cfg.checkpoint)
    attacked: nn.Module = model if attack_size == "model" else ResizedClassifier(model, meta.image_size)
    attacked.eval()
    if cfg.method == "advgan":
        check_generator_fits(
            gen_attack,
            classes=meta.classes,
            image_size=prep.size,
            classifier_fingerprint=file_fingerprint(cfg.checkpoint),
            path=cfg.generator or "",
        )
    idx = prep.indices(cfg.split)
    if cfg.limit:
        idx = stratified_sample(prep.dataset.labels, idx, cfg.limit, cfg.seed)
    out = Path(cfg.out)
    run = Run(
        out,
        command="attack run",
        config={**asdict(cfg), "eps_value": eps},
        seed=cfg.seed,
        data_fingerprint=prep.dataset.fingerprint,
        write=dd.is_main(),
    )
    torch.manual_seed(cfg.seed)
    if getattr(attack, "needs_fit", False) and cfg.method != "advgan":
        if target is None:
            raise ConfigError(f"{cfg.method} is fitted toward a target class; pass --target")
        with run.stage("fit"):
            fit_idx = prep.indices(cfg.fit_split)
            if cfg.fit_limit:
                fit_idx = stratified_sample(prep.dataset.labels, fit_idx, cfg.fit_limit, cfg.seed)
            attack.fit(attacked, np.asarray(prep.images[fit_idx]), target=target)  # type: ignore[attr-defined]
        # every rank fitted the same way; rank 0's result makes them agree even where GPU sums differ
        dd.broadcast_tensor_attributes(attack)
    info = {
        "method": cfg.method,
        "params": repr(attack),
        "eps": eps,
        "eps_255": eps * 255 if eps else None,
        "target": meta.classes[target] if target is not None else None,
        "target_index": target,
        "checkpoint": str(cfg.checkpoint),
        "generator": str(cfg.generator) if cfg.generator else None,
        "data": cfg.data,
        "data_source": prep.dataset.source,
        "split": cfg.split,
        "classes": list(meta.classes),
        "image_size": list(prep.size),
        "classifier_input_size": list(meta.image_size),
        "attack_size": attack_size,
        "n_images": int(len(idx)),
        "sampled": bool(cfg.limit),
    }
    write_attack_info(out, info)
    task = AttackTask(
        attack=attack,
        model=attacked,
        classes=meta.classes,
        images=prep.images,
        image_ids=prep.dataset.image_ids,
        labels=prep.dataset.labels,
        indices=idx,
        target=target,
        eps=eps,
        batch_size=cfg.batch_size,
        device=device,
    )
    with run.stage("attack"):
        summary = run_attack(task, out, progress=cfg.progress)
    run.update(images_per_s=round(len(idx) / max(1e-9, run.timings["attack"]), 2))
    metrics: dict[str, Any] = {"summary": summary}
    if dd.is_main() and cfg.evaluate:
        from dermadv.evaluation.attack_eval import evaluate_attack_folder

        with run.stage("evaluate"):
            metrics = evaluate_attack_folder(out, in_run=True)
    if dd.is_main():
        run.finish(**{"n_images": int(len(idx))})
    dd.barrier()  # the folder is complete before any rank moves on to read it
    return metrics


def sweep(
    cfg: AttackRunConfig,
    *,
    methods: list[str],
    eps_values: list[str],
    generators: dict[str, Path] | None = None,
    protocol: str = "held-out",
) -> list[dict[str, Any]]:
    """Run methods × budgets, each scored from its saved PNGs; write ``sweep.csv`` in ``cfg.out``."""
    rows: list[dict[str, Any]] = []
    base = Path(cfg.out)
    generators = generators or {}
    for method in methods:
        for eps_text in eps_values:
            eps = parse_eps(eps_text)
            tag = f"{method.replace(':', '-')}-eps{format_eps(eps).replace('/', '_')}"
            sub = replace(
                cfg,
                method=method,
                eps=eps_text,
                out=base / tag,
                generator=generators.get(eps_text) if method == "advgan" else None,
            )
            if method == "advgan" and sub.generator is None:
                log.warning("no generator fitted at eps %s; skipping advgan there", eps_text)
                continue
            metrics = attack_split(sub)
            if dd.is_main():
                rows.append(sweep_row(metrics, method=method, eps=eps, protocol=protocol, folder=tag))
                write_csv(base / "sweep.csv", rows)
    return rows


def sweep_row(metrics: dict[str, Any], *, method: str, eps: float, protocol: str, folder: str) -> dict[str, Any]:
    imp = metrics.get("imperceptibility", {})
    row: dict[str, Any] = {
        "method": method,
        "eps": format_eps(eps),
        "eps_255": round(eps * 255, 3),
        "protocol": protocol,
        "n": metrics.get("n"),
        "accuracy_clean": metrics["accuracy_clean"]["estimate"],
        "accuracy_adv": metrics["accuracy_adv"]["estimate"],
        "worst_class_fooling": (metrics.get("worst_class_fooling_ratio") or {}).get("estimate"),
        "psnr_mean": (imp.get("psnr") or {}).get("mean"),
        "ssim_mean": (imp.get("ssim") or {}).get("mean"),
        "linf_255_max": (imp.get("linf_255") or {}).get("max"),
        "folder": folder,
    }
    for cls, fr in (metrics.get("fooling_ratio") or {}).items():
        row[f"fooling_{cls}"] = fr.get("estimate") if isinstance(fr, dict) else fr
    return row


def transfer(source: Path, checkpoint: Path, out: Path) -> dict[str, Any]:
    """Score the saved adversarial images of ``source`` on another classifier (black-box transfer)."""
    from dermadv.evaluation.attack_eval import evaluate_attack_folder

    src_info_path = Path(source) / "attack.json"
    if not src_info_path.exists():
        raise RunError(
            f"{source} is not an attack output folder (no attack.json); pass the --out of `dermadv attack run`"
        )
    info = read_json(src_info_path)
    device = dd.default_device()
    model, meta = load_checkpoint(checkpoint, device=device)
    if list(meta.classes) != list(info["classes"]):
        raise ConfigError(
            f"{checkpoint} predicts {','.join(meta.classes)} but the attack used {','.join(info['classes'])}"
        )
    import pandas as pd

    preds = pd.read_csv(Path(source) / "predictions.csv")
    out = Path(out)
    run = Run(out, command="attack transfer", config={"source": str(source), "checkpoint": str(checkpoint)})
    attacked: nn.Module = model
    if tuple(info["image_size"]) != tuple(meta.image_size):
        attacked = ResizedClassifier(model, meta.image_size)
    for kind in ("clean", "adv", "perturbation"):
        dst = out / "images" / kind
        if dst.exists():
            shutil.rmtree(dst)
        shutil.copytree(Path(source) / "images" / kind, dst)
    rows = []
    ids = preds["image_id"].astype(str).tolist()
    for s in range(0, len(ids), 128):
        chunk = ids[s : s + 128]
        cl = np.stack([read_png(out / "images" / "clean" / f"{i}.png") for i in chunk])
        ad = np.stack([read_png(out / "images" / "adv" / f"{i}.png") for i in chunk])
        from dermadv.attacks.apply import _predict

        pc, pa = _predict(attacked, cl, device).numpy(), _predict(attacked, ad, device).numpy()
        for j, i in enumerate(chunk):
            row = {
                "image_id": i,
                "label": preds["label"].iloc[s + j],
                "clean_pred": meta.classes[int(pc[j].argmax())],
                "adv_pred": meta.classes[int(pa[j].argmax())],
                "inmem_adv_pred": meta.classes[int(pa[j].argmax())],
            }
            row.update({f"clean_prob_{c}": round(float(pc[j, k]), 6) for k, c in enumerate(meta.classes)})
            row.update({f"adv_prob_{c}": round(float(pa[j, k]), 6) for k, c in enumerate(meta.classes)})
            rows.append(row)
    write_csv(out / "predictions.csv", rows)
    from dermadv.runs import write_json

    write_json(
        out / "attack.json",
        {
            **info,
            "transfer_from": str(source),
            "checkpoint": str(checkpoint),
            "source_checkpoint": info.get("checkpoint"),
        },
    )
    metrics = evaluate_attack_folder(out, in_run=True)
    run.finish()
    return metrics
