"""``dermadv audit``: the study on *your* model, in one run folder.

Model check, clean evaluation with intervals, the paper's targeted-to-``nv`` table under the strongest threat model
the model allows, reliability checks and a report page::

    out/
      manifest.json   audit.json   audit.md
      clean/          (dermadv evaluate)
      attack/         (dermadv attack run: PNGs scored from the saved files)
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dermadv.attacks.registry import create_attack
from dermadv.config import parse_eps
from dermadv.data.load import prepare, to_float
from dermadv.data.splits import stratified_sample
from dermadv.errors import ConfigError
from dermadv.evaluation.attack_eval import evaluate_attack_folder
from dermadv.evaluation.attack_info import AttackInfo
from dermadv.evaluation.attack_metrics import AttackMetrics
from dermadv.evaluation.metrics import ClassificationReport
from dermadv.evaluation.reliability import (
    Check,
    check_black_beats_white,
    check_conversion,
    check_gradients,
    check_probabilities,
    check_randomised,
)
from dermadv.models.sources import PROCESS_TOTAL, label_map
from dermadv.pipeline.attack import AttackRunConfig, attack_split, model_target
from dermadv.pipeline.evaluate import evaluate_checkpoint
from dermadv.pipeline.model_check import ModelCheck, check_model
from dermadv.pipeline.models import ModelSpec, checked, open_model, training_split
from dermadv.runs import Run, atomic_path, check_same_run, write_json

log = logging.getLogger(__name__)

#: the attack each threat model runs, and why it is the one
ATTACKS = {
    "white-box": ("pgd", "the model offers gradients: PGD-{steps} (Madry et al. 2018), the standard strong attack"),
    "score-based": (
        "square",
        "the model answers scores but no gradients: Square Attack (Andriushchenko et al. 2020), {queries} queries "
        "per image",
    ),
    "decision-based": (
        "hopskipjump",
        "the model answers labels only: HopSkipJump (Chen et al. 2020), {queries} queries per image, each search "
        "started from a training image the model labels as the target",
    ),
}


@dataclass(frozen=True)
class AuditConfig:
    model: ModelSpec
    out: Path
    data: str | None = None
    split: str = "test"
    split_file: str | None = None
    target: str = "nv"
    eps: str = "8/255"
    steps: int = 20
    queries: int = 1000  # per image, for a query-based attack
    limit: int | None = None  # attack a class-stratified sample of this many images
    check_sample: int = 140
    checks_sample: int = 14  # images for the reliability checks (the black-vs-white comparison attacks them twice)
    seed: int = 0
    batch_size: int = 32
    allow_incomplete: bool = False
    progress: bool = True
    resume: bool = False  # continue an interrupted audit in ``out``: same settings; its attack replays its journal

    def __post_init__(self) -> None:
        parse_eps(self.eps, saved=True)
        for name in ("steps", "queries", "check_sample", "checks_sample", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1; got {getattr(self, name)}")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"--limit must be at least 1; got {self.limit}")


@dataclass(frozen=True)
class AuditResult:
    """Everything ``audit.json`` holds, read alike by the CLI and the report page."""

    model: dict[str, Any]
    threat_model: str
    why: str
    check: ModelCheck
    clean: ClassificationReport
    attack: AttackMetrics
    checks: tuple[Check, ...]
    timing: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        info = self.attack.attack or AttackInfo()
        return {
            "model": self.model,
            "threat_model": self.threat_model,
            "why": self.why,
            "check": self.check.to_dict(),
            "clean": self.clean.as_dict(),
            "attack": {
                "method": info.method,
                "eps_255": self.attack.eps_255,
                "target": self.attack.target,
                "n": self.attack.n,
                "fooling_ratio": {c: iv.to_dict(form="interval") for c, iv in self.attack.fooling_ratio.items()},
                "worst_class": self.attack.worst_class,
                "accuracy_clean": self.attack.accuracy_clean.to_dict(form="interval"),
                "accuracy_adv": self.attack.accuracy_adv.to_dict(form="interval"),
                "mcnemar_p": self.attack.mcnemar.p_value,
                "queries": info.queries.to_dict() if info.queries is not None else None,
            },
            "checks": [c.to_dict() for c in self.checks],
            "timing": self.timing,
        }


def choose_attack(offers: tuple[str, ...], *, steps: int = 20, queries: int = 1000) -> tuple[str, str, str]:
    """The strongest threat model the model allows with an attack for it: (threat model, method, why)."""
    for threat in offers:
        if threat in ATTACKS:
            method, why = ATTACKS[threat]
            return threat, method, why.format(steps=steps, queries=queries)
    raise ConfigError(
        f"the model offers {', '.join(offers)}; the audit attacks the model itself and needs at least its labels "
        "(decision-based): choose another --threat-model"
    )


def reliability_checks(cfg: AuditConfig, *, white_box: bool) -> tuple[Check, ...]:
    """The checks of :mod:`dermadv.evaluation.reliability` on a class-stratified sample of the attacked split."""
    source = open_model(cfg.model, allow_incomplete=cfg.allow_incomplete)
    info = source.info
    prep = prepare(cfg.data, image_size=info.image_size, split_file=cfg.split_file, seed=0)
    idx = stratified_sample(prep.dataset.labels, prep.indices(cfg.split), cfg.checks_sample, cfg.seed)
    images_u8 = np.asarray(prep.images[idx])
    source = checked(source, images_u8)
    x = to_float(torch.from_numpy(images_u8))
    labels = torch.from_numpy(label_map(source.info, prep.dataset.classes)[prep.dataset.labels[idx]])
    checks = [
        check_randomised(source, x),
        check_probabilities(source, x, declared=source.info.card.output),
        check_gradients(source, x, labels, white_box=white_box and source.gradients),
        check_conversion(source.info.notes, kind=source.info.kind),
    ]
    target = model_target(source.info, cfg.target)
    eps = parse_eps(cfg.eps, saved=True)
    white = black = None
    if white_box and source.gradients and "score-based" in source.info.offers:
        keep = torch.ne(labels, int(target if target is not None else -1))
        if bool(keep.any()):
            xs, ys = x[keep], labels[keep]
            white = float(
                create_attack("pgd", eps=eps, steps=cfg.steps)(source, xs, target=target).success.float().mean()
            )
            square = create_attack("square", eps=eps, queries=min(cfg.queries, 300), seed=cfg.seed)
            black = float(square(source, xs, labels=ys, target=target).success.float().mean())
            checks.append(check_black_beats_white(white, black, n=int(keep.sum())))
    if white is None:
        checks.append(check_black_beats_white(None, None, n=0))
    return tuple(checks)


def audit(cfg: AuditConfig) -> AuditResult:
    """Run the audit into ``cfg.out``; every stage's folder is a run of its own."""
    out = Path(cfg.out)
    source = open_model(cfg.model, allow_incomplete=cfg.allow_incomplete)  # fail on a bad model before any work
    threat, method, why = choose_attack(source.info.offers, steps=cfg.steps, queries=cfg.queries)
    if cfg.model.threat_model is None and len(source.info.offers) > 1 and threat != source.info.offers[0]:
        why += f" ({source.info.offers[0]} has no attack here)"
    split_file = cfg.split_file or training_split(source, cfg.model)
    del source
    settings = {**cfg.model.config(), **{k: v for k, v in vars(cfg).items() if k != "model"}}
    if cfg.resume:
        check_same_run(out, command="audit", config=settings, ignore=("out", "resume", "progress", "allow_incomplete"))
    run = Run(out, command="audit", config=settings)
    if split_file is None:  # one split for every stage: the data's lesion-grouped split of seed 0, written here
        from dermadv.data.load import load_dataset
        from dermadv.data.splits import make_splits, save_splits

        split_file = str(out / "split.csv")
        save_splits(make_splits(load_dataset(cfg.data), seed=0), split_file)
    cfg = replace(cfg, split_file=split_file)
    t0, before = time.perf_counter(), dict(PROCESS_TOTAL)
    by_stage: dict[str, int] = {}
    mark = [int(PROCESS_TOTAL["queries"])]

    def count(stage: str) -> None:  # the queries each stage sent to the model
        by_stage[stage] = int(PROCESS_TOTAL["queries"]) - mark[0]
        mark[0] = int(PROCESS_TOTAL["queries"])

    with run.stage("check"):
        mc = check_model(
            cfg.model, data=cfg.data, split=cfg.split, split_file=cfg.split_file, sample=cfg.check_sample, seed=cfg.seed
        )
        write_json(out / "check.json", mc.to_dict())
    count("check")
    log.info("model check: %s", mc.verdict())
    with run.stage("clean"):
        clean = evaluate_checkpoint(
            cfg.model, data=cfg.data, split=cfg.split, split_file=cfg.split_file, out=out / "clean",
            allow_incomplete=cfg.allow_incomplete, batch_size=cfg.batch_size,
        )  # fmt: skip
    count("clean")
    with run.stage("attack"):
        attack_cfg = AttackRunConfig(
            checkpoint=Path(cfg.model.model) if not cfg.model.is_url else cfg.model.model,  # type: ignore[arg-type]
            weights=cfg.model.weights,
            model_card=cfg.model.card,
            threat_model=threat,
            out=out / "attack",
            method=method,
            data=cfg.data,
            split=cfg.split,
            split_file=cfg.split_file,
            target=cfg.target,
            eps=cfg.eps,
            steps=cfg.steps,
            queries=cfg.queries if method in ("square", "hopskipjump") else None,
            limit=cfg.limit,
            seed=cfg.seed,
            # a query-based attack sends every still-searching image of its batch in one call per iteration: a
            # large batch makes fewer, fuller calls (the HTTP client splits them to the endpoint's batch size)
            batch_size=cfg.batch_size if method == "pgd" else max(cfg.batch_size, 256),
            progress=cfg.progress,
            allow_incomplete=cfg.allow_incomplete,
            resume=cfg.resume,
        )
        metrics = attack_split(attack_cfg) or evaluate_attack_folder(out / "attack")
    count("attack")
    with run.stage("checks"):
        checks = reliability_checks(cfg, white_box=threat == "white-box")
    count("checks")
    wall = time.perf_counter() - t0
    model_s = PROCESS_TOTAL["model_seconds"] - before["model_seconds"]
    timing = {
        "wall_s": round(wall, 3),
        "model_s": round(model_s, 3),
        "dermadv_s": round(wall - model_s, 3),
        "dermadv_share": round((wall - model_s) / wall, 4) if wall > 0 else 0.0,
        "queries": int(PROCESS_TOTAL["queries"] - before["queries"]),
        "queries_by_stage": by_stage,
    }
    result = AuditResult(mc.model, threat, why, mc, clean, metrics, checks, timing)
    from dermadv.report.audit import render_audit_markdown
    from dermadv.report.figures import QUERIES_FIGURE, success_vs_queries

    write_json(out / "audit.json", result.to_dict())
    query_table = None
    if metrics.attack is not None and metrics.attack.attack_queries is not None:  # a query-based attack
        query_table = success_vs_queries(out / "attack", out / QUERIES_FIGURE).table()
    with atomic_path(out / "audit.md") as tmp:
        Path(tmp).write_text(
            render_audit_markdown(result.to_dict(), query_table=query_table, queries_figure=QUERIES_FIGURE)
        )
    run.finish(threat_model=threat, timing=timing)
    return replace(result)
