"""Robustness curves: attack methods × budgets, each its own attack folder scored from its saved PNGs, and
``sweep.csv`` rebuilt from every complete folder, so several processes can share one sweep.

One folder naming for ``attack sweep`` and ``reproduce --sweep``: ``<method>-eps<k>_255/`` per attack and,
for the generator, ``advgan-<protocol>-eps<k>_255/`` beside the fits it reads in
``generators/<protocol>-eps<k>_255/`` (``held-out``: fitted on the training split, ``paper``: on the test images).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from dermadv import distributed as dd
from dermadv.attacks.generator import GeneratorAttack
from dermadv.attacks.registry import get_attack_class
from dermadv.config import format_eps, parse_eps
from dermadv.evaluation.attack_metrics import AttackMetrics
from dermadv.pipeline.attack import AttackRunConfig, attack_split
from dermadv.runs import read_json, run_complete, write_csv

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
        else:
            log.warning("no %s generator fitted at eps %s; skipping advgan there", protocol, format_eps(eps))


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
    rows: list[dict[str, Any]] = []
    for eps_text in eps_values:
        eps = parse_eps(eps_text)
        for method in methods:
            for protocol, generator in _runs(method, eps, generators):
                sub = replace(
                    cfg,
                    method=method,
                    eps=eps_text,
                    generator=generator,
                    out=base / attack_folder(method, eps, protocol),
                )
                if not (resume and run_complete(sub.out)):
                    attack_split(sub)
        if dd.is_main():
            rows = write_sweep_csv(base)
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
    for folder in sorted(p for p in base.iterdir() if p.is_dir() and (p / "attack_metrics.json").exists()):
        info = read_json(folder / "attack.json")
        metrics = AttackMetrics.from_dict(read_json(folder / "attack_metrics.json"))
        method = info["method"]
        protocol = _protocol(folder.name, method)
        rows.append(sweep_row(metrics, method=method, eps=float(info["eps"]), protocol=protocol, folder=folder.name))
    rows.sort(key=lambda r: (r["method"], r["protocol"], r["eps_255"]))
    if rows:
        write_csv(base / "sweep.csv", rows)
    return rows
