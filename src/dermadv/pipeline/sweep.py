"""Robustness curves: attack methods × budgets, each its own attack folder scored from its saved PNGs, and
``sweep.csv`` rebuilt from every complete folder, so several processes can share one sweep.

One folder naming for ``attack sweep`` and ``reproduce --sweep``: ``<method>-eps<k>_255/`` per attack and,
for the generator, ``advgan-<protocol>-eps<k>_255/`` beside the fits it reads in
``generators/<protocol>-eps<k>_255/`` (``held-out``: fitted on the training split, ``paper``: on the test images).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from dermadv import distributed as dd
from dermadv.attacks.generator import GeneratorAttack
from dermadv.attacks.registry import get_attack_class
from dermadv.config import format_eps, parse_eps
from dermadv.errors import ConfigError, RunError
from dermadv.evaluation.attack_info import INFO_FILE, AttackInfo
from dermadv.evaluation.attack_metrics import AttackMetrics
from dermadv.evaluation.attack_run import METRICS_FILE, read_attack_metrics
from dermadv.models.checkpoints import load_checkpoint
from dermadv.pipeline.attack import AttackRunConfig, attack_split
from dermadv.runs import Run, check_same_run, file_fingerprint, require_complete, run_complete, write_csv

log = logging.getLogger(__name__)

#: generator protocols: the split each is fitted on
PROTOCOLS = {"held-out": "train", "paper": "test"}


def generator_folder(protocol: str, eps: float) -> str:
    """``held-out-eps2_255``: the folder (under ``generators/``) of a generator fitted for ``eps``."""
    return attack_folder("", eps, protocol)[1:]


def attack_folder(method: str, eps: float, protocol: str | None = None) -> str:
    """``pgd-eps2_255``, ``advgan-paper-eps2_255``: one attack folder of a sweep."""
    parts = [method.replace(":", "-"), *([protocol] if protocol else []), "eps" + format_eps(eps).replace("/", "_")]
    return "-".join(parts)


def _runs(method: str, eps: float, generators: Path | None) -> Iterator[tuple[str | None, Path | None]]:
    """(protocol, generator) of each run of ``method`` at ``eps``: one, or one per generator fitted at ``eps``."""
    if method != GeneratorAttack.name:
        yield None, None
        return
    for protocol in PROTOCOLS:
        path = (generators / generator_folder(protocol, eps) / "generator.safetensors") if generators else None
        if path is not None and path.exists():
            yield protocol, path


#: one run of a sweep: (method, eps as given, protocol, generator)
Planned = tuple[str, str, str | None, Path | None]


def plan_sweep(methods: Sequence[str], eps_values: Sequence[str], generators: Path | None) -> list[Planned]:
    """Every run of the sweep, in order; refused when a method has nothing to run (advgan without a generator
    fitted at any of the budgets), since a sweep that skips it would finish "complete" without it."""
    planned = [
        (method, eps_text, protocol, generator)
        for eps_text in eps_values
        for method in methods
        for protocol, generator in _runs(method, parse_eps(eps_text, saved=True), generators)
    ]
    if GeneratorAttack.name in methods:
        fitted = {eps_text for method, eps_text, _, _ in planned if method == GeneratorAttack.name}
        if not fitted:
            where = f"in {generators}" if generators else "(no --generators folder given)"
            raise ConfigError(
                f"--methods {GeneratorAttack.name} has no generator to run {where}: pass --generators with "
                f"<protocol>-eps<k>_255/generator.safetensors fits (`dermadv attack fit`, or a reproduce folder's "
                f"sweep/generators), or drop {GeneratorAttack.name}"
            )
        for eps_text in eps_values:
            if eps_text not in fitted:
                log.warning("no generator fitted at eps %s in %s; skipping advgan there", eps_text, generators)
    if not planned:
        raise ConfigError("the sweep has nothing to run; give --methods and --eps that make at least one attack")
    return planned


def sweep(
    cfg: AttackRunConfig,
    *,
    methods: Sequence[str],
    eps_values: Sequence[str],
    generators: Path | None = None,
    resume: bool = False,
) -> list[dict[str, Any]]:
    """Run every method at every budget into ``cfg.out``; return the rows of ``sweep.csv`` (on rank 0).

    ``generators``: the folder of generator fits the ``advgan`` method reads; ``resume``: skip complete folders.
    """
    base = Path(cfg.out)
    configs = _check_sweep(cfg, methods, eps_values)
    planned = plan_sweep(methods, eps_values, generators)
    rows: list[dict[str, Any]] = []
    for eps_text in eps_values:
        eps = parse_eps(eps_text, saved=True)
        for method, _, protocol, generator in (p for p in planned if p[1] == eps_text):
            sub = replace(
                configs[method, eps_text], generator=generator, out=base / attack_folder(method, eps, protocol)
            )
            if not (resume and run_complete(sub.out)):
                attack_split(sub)
        if dd.is_main():
            rows = write_sweep_csv(base)
    return rows


def _check_sweep(
    cfg: AttackRunConfig, methods: Sequence[str], eps_values: Sequence[str]
) -> dict[tuple[str, str], AttackRunConfig]:
    """The config of every (method, eps) run, each checked before the first run starts."""
    if not methods or not eps_values:
        raise ConfigError("a sweep needs at least one method and one budget, e.g. --methods pgd --eps 2/255")
    configs = {}
    for eps_text in eps_values:
        try:
            parse_eps(eps_text, saved=True)
        except ConfigError as exc:
            raise ConfigError(f"--eps {','.join(eps_values)}: {exc}") from None
        for method in methods:
            configs[method, eps_text] = replace(cfg, method=method, eps=eps_text)
    return configs


#: AttackRunConfig fields a rerun of ``attack sweep`` into the same folder may change: the methods and budgets are
#: each a folder of their own; the classifier and the data are compared by content.
_NOT_COMPARED = ("out", "method", "eps", "generator", "progress", "allow_incomplete", "checkpoint", "data", "params")


def attack_sweep(
    cfg: AttackRunConfig, *, methods: Sequence[str], eps_values: Sequence[str], generators: Path | None = None
) -> list[dict[str, Any]]:
    """``dermadv attack sweep``: :func:`sweep` as a run folder of its own (``manifest.json`` beside ``sweep.csv``).

    A rerun into the same folder must attack the same classifier, data, split and sample (one line names what
    differs), so that ``sweep.csv``, rebuilt from every attack folder there, never mixes two settings.
    """
    _check_sweep(cfg, methods, eps_values)
    plan_sweep(methods, eps_values, generators)  # before the folder is made
    require_complete(cfg.checkpoint, allow_incomplete=cfg.allow_incomplete)
    checkpoint = Path(cfg.checkpoint)
    load_checkpoint(checkpoint)  # a missing or foreign checkpoint is refused before the folder is made
    fingerprints = {"classifier": file_fingerprint(checkpoint) if checkpoint.is_file() else None}
    settings = {**asdict(cfg), "methods": list(methods), "eps_values": list(eps_values)}
    ignore = (*_NOT_COMPARED, "methods", "eps_values")
    check_same_run(cfg.out, command="attack sweep", config=settings, ignore=ignore, fingerprints=fingerprints)
    run = Run(
        cfg.out, command="attack sweep", config=settings, seed=cfg.seed, fingerprints=fingerprints, write=dd.is_main()
    )
    rows = sweep(cfg, methods=methods, eps_values=eps_values, generators=generators)
    if dd.is_main():
        run.finish(n_rows=len(rows))
    return rows


def sweep_row(metrics: AttackMetrics, *, method: str, eps: float, protocol: str, folder: str) -> dict[str, Any]:
    """One row of ``sweep.csv``."""
    worst = metrics.worst_class_fooling_ratio
    row: dict[str, Any] = {
        "method": method,
        "eps": format_eps(eps),
        "eps_255": round(eps * 255, 3),
        "protocol": protocol,
        "n": metrics.n,
        "accuracy_clean": metrics.accuracy_clean.estimate,
        "accuracy_adv": metrics.accuracy_adv.estimate,
        "worst_class_fooling": worst.estimate if worst else None,
        "psnr_mean": metrics.size("psnr", "mean"),
        "ssim_mean": metrics.size("ssim", "mean"),
        "linf_255_max": metrics.size("linf_255", "max"),
        "folder": folder,
    }
    row.update({f"fooling_{c}": share.estimate for c, share in metrics.fooling_ratio.items()})
    return row


def _protocol(folder: str, method: str) -> str:
    """The protocol named in an attack folder; otherwise fitted on the training split, or per image."""
    named = folder[len(method.replace(":", "-")) + 1 : folder.rindex("-eps")]
    return named or ("held-out" if get_attack_class(method).needs_fit else "per-image")


def write_sweep_csv(base: Path) -> list[dict[str, Any]]:
    """Collect every complete attack folder under ``base`` into ``sweep.csv`` (method, protocol, eps order)."""
    rows = []
    # an attack folder still running, or cut short, is left out until it completes
    done = (p for p in base.iterdir() if p.is_dir() and (p / METRICS_FILE).exists() and run_complete(p))
    for folder in sorted(done):
        info, metrics = AttackInfo.read(folder), read_attack_metrics(folder)
        method, eps = info.method, info.eps
        if method is None or eps is None:
            raise RunError(
                f"{folder / INFO_FILE} names no method or no eps: no attack of a sweep; move it out of {base}"
            )
        protocol = _protocol(folder.name, method)
        rows.append(sweep_row(metrics, method=method, eps=float(eps), protocol=protocol, folder=folder.name))
    rows.sort(key=lambda r: (r["method"], r["protocol"], r["eps_255"]))
    if rows:
        write_csv(base / "sweep.csv", rows)
    return rows
