"""``dermadv reproduce``: the whole study in one run folder, ending with measure | paper | this run.

split → classifier → test evaluation → generator → adversarial test set (evaluated) → (robustness sweep) →
observer-study kit → paper table → report. A stage whose folder is complete is skipped, so a second call
resumes where the first stopped; the folder is complete once the report is written.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal, TypeVar

from dermadv import distributed as dd
from dermadv.config import check_at_least, check_budgets, check_types, parse_eps, parse_eps_list
from dermadv.data.classes import class_index
from dermadv.data.load import load_dataset, prepare
from dermadv.data.splits import save_splits
from dermadv.errors import ConfigError
from dermadv.observer.study import create_study
from dermadv.pipeline.attack import AttackRunConfig, attack_split
from dermadv.pipeline.evaluate import evaluate_checkpoint
from dermadv.pipeline.generator import STATE as GENERATOR_STATE
from dermadv.pipeline.generator import check_generator_settings, fit_generator
from dermadv.pipeline.sweep import PROTOCOLS, generator_folder, sweep
from dermadv.pipeline.train import STATE as TRAIN_STATE
from dermadv.pipeline.train import fit
from dermadv.presets import preset_attack_config, preset_train_config
from dermadv.report.build import build_report, collect
from dermadv.report.summary import Table, markdown_table, tabulate_measures
from dermadv.runs import (
    Run,
    atomic_write_text,
    check_same_run,
    file_fingerprint,
    read_manifest,
    require_complete,
    run_complete,
    write_json,
)
from dermadv.training.classifier import TrainConfig
from dermadv.training.generator import GeneratorConfig

log = logging.getLogger(__name__)

C = TypeVar("C", TrainConfig, GeneratorConfig)


@dataclass(frozen=True)
class ReproduceConfig:
    out: Path
    data: str | None = None
    preset: str = "demo"
    checkpoint: Path | None = None  # reuse a trained classifier instead of training one
    fit_on: Literal["train", "test"] | None = None  # None: the preset's ("test", the paper's protocol, except cpu-64)
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
    allow_incomplete: bool = False  # accept a --checkpoint from an unfinished training run (with a warning)

    def __post_init__(self) -> None:
        # Every option checked before the first stage, so a bad --sweep-eps fails in seconds, not after training.
        check_types(self)
        preset_train_config(self.preset)
        check_budgets(self, "eps")
        if self.sweep_eps is not None:
            parse_eps_list(self.sweep_eps, option="--sweep-eps")
        class_index(self.target)
        check_at_least(self, 0, "seed")
        check_at_least(self, 1, "sweep_limit", "sweep_fit_images", "observer_n")


#: ReproduceConfig fields a rerun may change: where it writes, which optional stages it adds (each sweep budget is a
#: folder of its own), the report; data and checkpoint are compared by content, eps and fit_on as resolved from the
#: preset (``eps_value``, ``fit_on_value``).
_NOT_COMPARED = (
    "out",
    "data",
    "checkpoint",
    "eps",
    "fit_on",
    "sweep",
    "sweep_eps",
    "sweep_only",
    "report",
    "allow_incomplete",
)


def fit_once(fit: Callable[[C], Path], cfg: C, state: str, *, check: Callable[[C], object] | None = None) -> None:
    """``fit(cfg)`` unless ``cfg.out`` holds a complete run; a fit interrupted there (its ``state`` file) resumes.

    ``check``: compares a complete run with ``cfg``, so that a fit made under other settings (e.g. by an older
    preset) is refused with one line, never reused silently.
    """
    if not run_complete(cfg.out):
        fit(replace(cfg, resume=(Path(cfg.out) / state).exists()))
    elif check is not None:
        check(cfg)


def _paper_table(run_dir: Path) -> Table:
    return tabulate_measures(collect(run_dir).measures, source=True)


def paper_table(run_dir: Path) -> list[dict[str, str]]:
    """Rows measure | paper | this run | source: the report's summary table of the run folder."""
    return _paper_table(run_dir).records()


def reproduce(cfg: ReproduceConfig) -> Path:
    """Run the whole study into ``cfg.out``; stages already complete are skipped (resume).

    A rerun must use the settings, data and checkpoint the folder was made with (one line names what differs);
    while it runs, a complete folder stays complete (its manifest says so until the rerun finishes).
    """
    dd.init_from_env()
    out = Path(cfg.out)
    tcfg = preset_train_config(cfg.preset)
    acfg = preset_attack_config(cfg.preset)
    eps = cfg.eps or acfg["eps"]
    if cfg.checkpoint is not None:
        if not Path(cfg.checkpoint).is_file():  # never train a new classifier in place of the one named
            raise ConfigError(
                f"--model {cfg.checkpoint} is not a file; pass the model.safetensors of a `dermadv train` run, "
                "or leave --model out to train one"
            )
        from dermadv.models.checkpoints import load_checkpoint

        load_checkpoint(cfg.checkpoint)  # a dermadv classifier, readable, before any work
        require_complete(cfg.checkpoint, allow_incomplete=cfg.allow_incomplete)
    dataset = load_dataset(cfg.data)
    fit_on = cfg.fit_on or acfg.get("fit_on", "train")
    settings = {**asdict(cfg), "eps_value": parse_eps(eps, saved=True), "fit_on_value": fit_on}
    fingerprints = {
        "data": dataset.fingerprint,
        "data_content": dataset.content_fingerprint,
        "classifier": file_fingerprint(cfg.checkpoint) if cfg.checkpoint and Path(cfg.checkpoint).is_file() else None,
    }
    # the sweep's settings matter once the folder holds a sweep; --sweep may be added to a finished study
    swept = bool(((read_manifest(out) or {}).get("config") or {}).get("sweep"))
    ignore = _NOT_COMPARED if swept else (*_NOT_COMPARED, "sweep_limit", "sweep_fit_images")
    check_same_run(out, command="reproduce", config=settings, ignore=ignore, fingerprints=fingerprints)
    # A sweep-only process shares the folder with a main one: it keeps its manifest under sweep/.
    run_dir = (
        out / "sweep" / f"manifest-sweep-{'_'.join(e.replace('/', '-') for e in (cfg.sweep_eps or '').split(','))}"
    )
    run = Run(
        run_dir if cfg.sweep_only else out,
        command="reproduce",
        config=settings,
        seed=cfg.seed,
        data_fingerprint=fingerprints.pop("data"),
        fingerprints=fingerprints,
        keep_complete=True,
        write=dd.is_main(),
    )
    clf_dir, gen_dir, adv_dir = out / "classifier", out / "generator", out / "adv-test"
    split_path = out / "split.csv"

    with run.stage("split"):
        if cfg.checkpoint is not None:
            src = Path(cfg.checkpoint).parent
            if dd.is_main() and not run_complete(clf_dir):
                clf_dir.mkdir(parents=True, exist_ok=True)
                shutil.copy2(cfg.checkpoint, clf_dir / "model.safetensors")  # the file named, whatever its name
                for name in ("history.csv", "manifest.json", "split.csv", "train_metrics.json"):
                    if (src / name).exists():
                        shutil.copy2(src / name, clf_dir / name)
            dd.barrier()
            if (clf_dir / "split.csv").exists() and dd.is_main():
                shutil.copy2(clf_dir / "split.csv", split_path)
        if not split_path.exists():
            prep = prepare(cfg.data, image_size=tcfg["image_size"], seed=cfg.seed)
            if dd.is_main():
                save_splits(prep.frame, split_path)
        dd.barrier()
    with run.stage("classifier"):
        train = TrainConfig(out=clf_dir, data=cfg.data, seed=cfg.seed, split_file=str(split_path), **tcfg)
        fit_once(fit, train, TRAIN_STATE)
    checkpoint = clf_dir / "model.safetensors"
    with run.stage("evaluate"):
        if dd.is_main() and not cfg.sweep_only and not run_complete(clf_dir / "test"):
            evaluate_checkpoint(
                checkpoint, data=cfg.data, split="test", split_file=str(split_path), out=clf_dir / "test"
            )
        dd.barrier()
    if not cfg.sweep_only:
        with run.stage("generator"):
            fit_once(
                fit_generator,
                _generator_config(cfg, acfg, checkpoint, split_path, gen_dir, eps, fit_on),
                GENERATOR_STATE,
                check=check_generator_settings,
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
        table = _paper_table(out)
        write_json(out / "paper_table.json", table.records())
        atomic_write_text(out / "paper_table.md", markdown_table(table, code=("source",)))
        if cfg.report:
            with run.stage("report"):
                build_report(out, last_stage=True)
    if dd.is_main():
        run.finish()  # only now: a folder whose report failed or was cut short is not complete
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
                # The paper protocol fits on exactly the images it attacks: the sweep's stratified sample (same seed).
                gen = replace(
                    gen,
                    attack_size="model",
                    max_fit_images=cfg.sweep_fit_images if fit_on == "train" else cfg.sweep_limit,
                    **acfg.get("sweep_generator", {}).get(protocol, {}),
                )
                fit_once(fit_generator, gen, GENERATOR_STATE, check=check_generator_settings)
            sweep(attack, methods=["advgan", "pgd"], eps_values=[eps], generators=base / "generators", resume=True)
