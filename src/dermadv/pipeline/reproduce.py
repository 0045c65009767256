"""``dermadv reproduce``: the whole study in one run folder, ending with measure | paper | this run.

split → classifier → test evaluation → generator → adversarial test set (evaluated) → (robustness sweep) →
observer-study kit → paper table → report. A stage whose folder is complete is skipped, so a second call
resumes where the first stopped.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

from dermadv import distributed as dd
from dermadv.config import parse_eps
from dermadv.data.load import prepare
from dermadv.data.splits import save_splits
from dermadv.errors import RunError
from dermadv.observer.study import create_study
from dermadv.pipeline.attack import AttackRunConfig, attack_split
from dermadv.pipeline.evaluate import evaluate_checkpoint
from dermadv.pipeline.sweep import PROTOCOLS, generator_folder, sweep
from dermadv.presets import preset_attack_config, preset_train_config
from dermadv.report.build import build_report, collect
from dermadv.runs import Run, atomic_write_text, read_json, run_complete, write_json
from dermadv.training.classifier import TrainConfig, fit
from dermadv.training.generator import GeneratorConfig, fit_generator

log = logging.getLogger(__name__)

C = TypeVar("C", TrainConfig, GeneratorConfig)


@dataclass(frozen=True)
class ReproduceConfig:
    out: Path
    data: str | None = None
    preset: str = "demo"
    checkpoint: Path | None = None  # reuse a trained classifier instead of training one
    fit_on: str = "train"
    eps: str | None = None
    target: str = "nv"
    seed: int = 0
    sweep: bool = False
    sweep_limit: int | None = 350
    sweep_eps: str | None = None  # default: the preset's
    sweep_fit_images: int | None = 1500  # generators of the sweep fit on a class-stratified sample
    sweep_only: bool = False  # skip the main generator/attack stages (e.g. a second process sharing the folder)
    observer_n: int = 50
    report: bool = True


def fit_once(fit: Callable[[C], Path], cfg: C, state: str) -> None:
    """``fit(cfg)`` unless ``cfg.out`` holds a complete run; a fit interrupted there (its ``state`` file) resumes."""
    if not run_complete(cfg.out):
        fit(replace(cfg, resume=(Path(cfg.out) / state).exists()))


def paper_table(run_dir: Path) -> list[dict[str, str]]:
    """Rows measure | paper | this run | source: the report's summary table of the run folder."""
    return [
        {"measure": m.label, "paper": m.paper, "this_run": m.display, "source": m.link.path if m.link else "."}
        for m in collect(run_dir).measures
    ]


def _markdown(rows: list[dict[str, str]]) -> str:
    lines = ["| measure | paper | this run | source |", "|---|---|---|---|"]
    lines += [f"| {r['measure']} | {r['paper']} | {r['this_run']} | `{r['source']}` |" for r in rows]
    return "\n".join(lines) + "\n"


def reproduce(cfg: ReproduceConfig) -> Path:
    """Run the whole study into ``cfg.out``; stages already complete are skipped (resume)."""
    dd.init_from_env()
    out = Path(cfg.out)
    tcfg = preset_train_config(cfg.preset)
    acfg = preset_attack_config(cfg.preset)
    eps = cfg.eps or acfg["eps"]
    parse_eps(eps)
    # A sweep-only process shares the folder with a main one: it keeps its manifest under sweep/.
    run_dir = (
        out / "sweep" / f"manifest-sweep-{'_'.join(e.replace('/', '-') for e in (cfg.sweep_eps or '').split(','))}"
    )
    run = Run(run_dir if cfg.sweep_only else out, command="reproduce", config=cfg, seed=cfg.seed, write=dd.is_main())
    clf_dir, gen_dir, adv_dir = out / "classifier", out / "generator", out / "adv-test"
    split_path = out / "split.csv"

    with run.stage("split"):
        if cfg.checkpoint is not None:
            src = Path(cfg.checkpoint).parent
            if dd.is_main() and not run_complete(clf_dir):
                clf_dir.mkdir(parents=True, exist_ok=True)
                for name in ("model.safetensors", "history.csv", "manifest.json", "split.csv", "train_metrics.json"):
                    if (src / name).exists():
                        shutil.copy2(src / name, clf_dir / name)
            dd.barrier()
            if (clf_dir / "split.csv").exists() and dd.is_main():
                shutil.copy2(clf_dir / "split.csv", split_path)
        prep = None
        if not split_path.exists():
            prep = prepare(cfg.data, image_size=tcfg["image_size"], seed=cfg.seed)
            if dd.is_main():
                save_splits(prep.frame, split_path)
        dd.barrier()
        run.update(data_fingerprint=prep.dataset.fingerprint if prep else None)

    with run.stage("classifier"):
        train = TrainConfig(out=clf_dir, data=cfg.data, seed=cfg.seed, split_file=str(split_path), **tcfg)
        fit_once(fit, train, "train_state.pt")
    checkpoint = clf_dir / "model.safetensors"
    with run.stage("evaluate"):
        if dd.is_main() and not cfg.sweep_only and not run_complete(clf_dir / "test"):
            evaluate_checkpoint(
                checkpoint, data=cfg.data, split="test", split_file=str(split_path), out=clf_dir / "test"
            )
        dd.barrier()
    if not cfg.sweep_only:
        with run.stage("generator"):
            _check_same_settings(gen_dir, eps=parse_eps(eps), target=cfg.target, fit_on=cfg.fit_on)
            fit_once(
                fit_generator,
                _generator_config(cfg, acfg, checkpoint, split_path, gen_dir, eps, cfg.fit_on),
                "generator_state.pt",
            )
        with run.stage("attack"):
            if not run_complete(adv_dir):
                attack = AttackRunConfig(
                    checkpoint=checkpoint,
                    out=adv_dir,
                    method="advgan",
                    generator=gen_dir / "generator.safetensors",
                    data=cfg.data,
                    split="test",
                    split_file=str(split_path),
                    target=cfg.target,
                    seed=cfg.seed,
                )
                attack_split(attack)
    if cfg.sweep or cfg.sweep_only:
        _sweep_stage(cfg, run, acfg, checkpoint, split_path)
    if dd.is_main() and not cfg.sweep_only:
        with run.stage("observer"):
            if not (out / "observer" / "study.json").exists():
                n = min(cfg.observer_n, len(list((adv_dir / "images" / "adv").glob("*.png"))))
                create_study(adv_dir, out / "observer", n=n, perturbed_share=0.6, seed=cfg.seed)
        rows = paper_table(out)
        write_json(out / "paper_table.json", rows)
        atomic_write_text(out / "paper_table.md", _markdown(rows))
        run.finish()  # the study is complete with its paper table; the report is a view of it
        if cfg.report:
            with run.stage("report"):
                build_report(out)
    if dd.is_main():
        run.finish()
    dd.barrier()
    return out


def _generator_config(
    cfg: ReproduceConfig, acfg: dict[str, Any], checkpoint: Path, split_path: Path, out: Path, eps: str, fit_on: str
) -> GeneratorConfig:
    return GeneratorConfig(
        checkpoint=checkpoint,
        out=out,
        data=cfg.data,
        target=cfg.target,
        eps=eps,
        fit_on=fit_on,  # type: ignore[arg-type]
        attack_size=acfg.get("attack_size", "model"),  # type: ignore[arg-type]
        epochs=acfg["epochs"],
        batch_size=acfg["batch_size"],
        **acfg.get("generator", {}),
        seed=cfg.seed,
        split_file=str(split_path),
    )


def _sweep_stage(cfg: ReproduceConfig, run: Run, acfg: dict[str, Any], checkpoint: Path, split_path: Path) -> None:
    """Robustness curves: the generator under both protocols and targeted PGD-20 at each eps (see :mod:`.sweep`)."""
    eps_values = [e for e in (cfg.sweep_eps or acfg.get("sweep_eps") or "").split(",") if e.strip()]
    if not eps_values:
        log.warning("no sweep budgets for preset %s; pass --sweep-eps", cfg.preset)
        return
    base = Path(cfg.out) / "sweep"
    attack = AttackRunConfig(
        checkpoint=checkpoint,
        out=base,
        data=cfg.data,
        split="test",
        split_file=str(split_path),
        target=cfg.target,
        steps=20,
        limit=cfg.sweep_limit,
        seed=cfg.seed,
    )
    with run.stage("sweep"):
        for eps in eps_values:
            for protocol, fit_on in PROTOCOLS.items():
                gen = _generator_config(
                    cfg,
                    acfg,
                    checkpoint,
                    split_path,
                    base / "generators" / generator_folder(protocol, parse_eps(eps)),
                    eps,
                    fit_on,
                )
                gen = replace(
                    gen, attack_size="model", max_fit_images=cfg.sweep_fit_images if fit_on == "train" else None
                )
                fit_once(fit_generator, gen, "generator_state.pt")
            sweep(attack, methods=["advgan", "pgd"], eps_values=[eps], generators=base / "generators", resume=True)


def _check_same_settings(gen_dir: Path, *, eps: float, target: str, fit_on: str) -> None:
    """Refuse to resume a run folder whose generator was fitted with other settings."""
    if not (gen_dir / "manifest.json").exists():
        return
    old = read_json(gen_dir / "manifest.json").get("config", {})
    was = {"eps": old.get("eps_value"), "target": old.get("target"), "fit_on": old.get("fit_on")}
    now = {"eps": eps, "target": target, "fit_on": fit_on}
    diff = [k for k in now if was[k] is not None and (abs(was[k] - now[k]) > 1e-9 if k == "eps" else was[k] != now[k])]
    if diff:
        raise RunError(
            f"{gen_dir.parent} was run with other settings ({', '.join(f'{k}={was[k]}' for k in diff)}); "
            "choose another --out for these settings"
        )
