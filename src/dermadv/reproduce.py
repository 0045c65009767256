"""``dermadv reproduce``: the whole study in one run folder, ending with measure | paper | this run.

split → classifier → generator → adversarial test set → evaluation → (robustness sweep) →
observer-study kit → report.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from dermadv import distributed as dd
from dermadv.config import format_eps, parse_eps
from dermadv.errors import RunError
from dermadv.paper import PAPER as _PAPER
from dermadv.presets import preset_attack_config, preset_train_config
from dermadv.runs import Run, read_json, run_complete, write_json

log = logging.getLogger(__name__)

PAPER = {**_PAPER, "fooling_ratio": "100% for every class", "architecture": _PAPER["arch"]}


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


def _pct(iv: dict[str, Any] | None) -> str:
    if not iv or iv.get("estimate") is None:
        return "—"
    return f"{100 * iv['estimate']:.1f}% ({100 * iv['low']:.1f}–{100 * iv['high']:.1f})"


def _p(p: float | None) -> str:
    if p is None:
        return "—"
    return "P < .0001" if p < 1e-4 else f"P = {p:.4f}"


def paper_table(run_dir: Path) -> list[dict[str, str]]:
    """Rows measure | paper | this run | source, from the run folder's metrics files."""
    rows: list[dict[str, str]] = []
    m = (
        read_json(run_dir / "adv-test" / "attack_metrics.json")
        if (run_dir / "adv-test" / "attack_metrics.json").exists()
        else {}
    )
    clf = (
        read_json(run_dir / "classifier" / "manifest.json")
        if (run_dir / "classifier" / "manifest.json").exists()
        else {}
    )
    gen = (
        read_json(run_dir / "generator" / "manifest.json") if (run_dir / "generator" / "manifest.json").exists() else {}
    )
    src_attack = "adv-test/attack_metrics.json"

    def add(measure: str, paper: str, ours: str, source: str) -> None:
        rows.append({"measure": measure, "paper": paper, "this_run": ours, "source": source})

    add(
        "accuracy, clean test images (95% CI, Wald)", PAPER["accuracy_clean"], _pct(m.get("accuracy_clean")), src_attack
    )
    add("accuracy, perturbed test images", PAPER["accuracy_adv"], _pct(m.get("accuracy_adv")), src_attack)
    mc = (m.get("mcnemar") or {}).get("exact") or {}
    add("McNemar test (exact binomial)", PAPER["mcnemar_p"], _p(mc.get("p_value")), src_attack)
    for cls, fr in (m.get("fooling_ratio") or {}).items():
        add(f"fooling ratio, {cls}", "100%", _pct(fr), src_attack)
    add("worst-class fooling ratio", "100%", _pct(m.get("worst_class_fooling_ratio")), src_attack)
    imp = m.get("imperceptibility") or {}
    if imp:
        add(
            "perturbation L∞ (max, 1/255 units)",
            PAPER["perturbation_size"],
            f"{imp['linf_255']['max']:.0f}",
            src_attack,
        )
        add("PSNR (mean, dB)", PAPER["perturbation_size"], f"{imp['psnr']['mean']:.1f}", src_attack)
        add("SSIM (mean)", PAPER["perturbation_size"], f"{imp['ssim']['mean']:.4f}", src_attack)
    obs = run_dir / "observer" / "analysis.json"
    if obs.exists():
        a = read_json(obs)
        comb = a.get("combined", {})
        add(
            "observers' sensitivity",
            PAPER["observer_sensitivity"],
            _pct(comb.get("sensitivity")),
            "observer/analysis.json",
        )
        add(
            "observers' specificity",
            PAPER["observer_specificity"],
            _pct(comb.get("specificity")),
            "observer/analysis.json",
        )
    else:
        add(
            "observers' sensitivity / specificity / kappa",
            f"{PAPER['observer_sensitivity']} / {PAPER['observer_specificity']} / {PAPER['observer_kappa']}",
            "kit in observer/ (run the study to fill this)",
            "observer/",
        )
    cfg = clf.get("config", {})
    gcfg = gen.get("config", {})
    add(
        "architecture",
        PAPER["architecture"],
        f"{cfg.get('arch', '—')} ({'ImageNet' if cfg.get('weights') not in (None, 'none') else 'from scratch'})",
        "classifier/manifest.json",
    )
    add("image size", PAPER["image_size"], f"{cfg.get('image_size', '—')} px", "classifier/manifest.json")
    add("split", PAPER["split"], "70/15/15, grouped by lesion_id, stratified by class", "split.csv")
    eps_v = gcfg.get("eps_value")
    add("perturbation budget (L∞)", PAPER["eps"], format_eps(eps_v) if eps_v else "—", "generator/manifest.json")
    add("generator fitted on", PAPER["fit_on"], f"the {gcfg.get('fit_on', '—')} split", "generator/manifest.json")
    add("target class", "nv (melanocytic nevus)", str(gcfg.get("target", "—")), "generator/manifest.json")
    return rows


def print_paper_table(rows: list[dict[str, str]]) -> None:
    t = Table(title="Allyn et al. 2020 vs this run")
    for col in ("measure", "paper", "this run"):
        t.add_column(col)
    for r in rows:
        t.add_row(r["measure"], r["paper"], r["this_run"])
    Console().print(t)


def _markdown(rows: list[dict[str, str]]) -> str:
    lines = ["| measure | paper | this run | source |", "|---|---|---|---|"]
    lines += [f"| {r['measure']} | {r['paper']} | {r['this_run']} | `{r['source']}` |" for r in rows]
    return "\n".join(lines) + "\n"


def reproduce(cfg: ReproduceConfig) -> Path:
    """Run the whole study into ``cfg.out``; stages already complete are skipped (resume)."""
    from dermadv.attacks.runner import AttackRunConfig, attack_split
    from dermadv.data.splits import save_splits
    from dermadv.evaluation.classifier_eval import evaluate_checkpoint
    from dermadv.training.classifier import TrainConfig, fit
    from dermadv.training.data import prepare
    from dermadv.training.generator import GeneratorConfig, fit_generator

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
        fingerprint = prep.dataset.fingerprint if prep else None
        run.update(data_fingerprint=fingerprint)

    with run.stage("classifier"):
        if not run_complete(clf_dir):
            resume = (clf_dir / "train_state.pt").exists()
            fit(
                TrainConfig(
                    out=clf_dir, data=cfg.data, seed=cfg.seed, split_file=str(split_path), resume=resume, **tcfg
                )
            )
    checkpoint = clf_dir / "model.safetensors"
    with run.stage("evaluate"):
        if dd.is_main() and not cfg.sweep_only and not run_complete(clf_dir / "test"):
            evaluate_checkpoint(
                checkpoint, data=cfg.data, split="test", split_file=str(split_path), out=clf_dir / "test"
            )
        dd.barrier()
    if cfg.sweep_only:
        _sweep_stage(cfg, run, acfg, checkpoint, split_path)
        if dd.is_main():
            run.finish()
        return out
    with run.stage("generator"):
        _check_same_settings(gen_dir, eps=parse_eps(eps), target=cfg.target, fit_on=cfg.fit_on)
        if not run_complete(gen_dir):
            fit_generator(
                GeneratorConfig(
                    checkpoint=checkpoint,
                    out=gen_dir,
                    data=cfg.data,
                    target=cfg.target,
                    eps=eps,
                    fit_on=cfg.fit_on,  # type: ignore[arg-type]
                    attack_size=acfg.get("attack_size", "model"),  # type: ignore[arg-type]
                    epochs=acfg["epochs"],
                    batch_size=acfg["batch_size"],
                    **acfg.get("generator", {}),
                    seed=cfg.seed,
                    split_file=str(split_path),
                    resume=(gen_dir / "generator_state.pt").exists(),
                )
            )
    with run.stage("attack"):
        if not run_complete(adv_dir):
            attack_split(
                AttackRunConfig(
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
            )
    if cfg.sweep:
        _sweep_stage(cfg, run, acfg, checkpoint, split_path)
    if dd.is_main():
        with run.stage("observer"):
            try:
                from dermadv.observer.study import create_study

                if not (out / "observer" / "study.json").exists():
                    create_study(
                        adv_dir,
                        out / "observer",
                        n=min(cfg.observer_n, _n_images(adv_dir)),
                        perturbed_share=0.6,
                        seed=cfg.seed,
                    )
            except ImportError as exc:
                log.warning("observer kit skipped (%s); install dermadv[web]", exc)
        rows = paper_table(out)
        write_json(out / "paper_table.json", rows)
        from dermadv.runs import atomic_write_text

        atomic_write_text(out / "paper_table.md", _markdown(rows))
        run.finish()
        print_paper_table(rows)
        if cfg.report:
            with run.stage("report"):
                try:
                    from dermadv.report.build import build_report

                    path = build_report(out)
                    typer.echo(f"report: {path}")
                except ImportError as exc:
                    log.warning("report skipped: %s", exc)
            run.finish()
    dd.barrier()
    return out


def _sweep_stage(cfg: ReproduceConfig, run: Run, acfg: dict[str, Any], checkpoint: Path, split_path: Path) -> None:
    eps_values = (cfg.sweep_eps or acfg.get("sweep_eps") or "").split(",")
    eps_values = [e for e in eps_values if e.strip()]
    if not eps_values:
        log.warning("no sweep budgets for preset %s; pass --sweep-eps", cfg.preset)
        return
    with run.stage("sweep"):
        run_sweep(
            cfg,
            checkpoint=checkpoint,
            split_path=split_path,
            eps_values=eps_values,
            gen_epochs=acfg["epochs"],
            batch_size=acfg["batch_size"],
            gen_options=acfg.get("generator", {}),
        )


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


def _n_images(adv_dir: Path) -> int:
    return len(list((adv_dir / "images" / "adv").glob("*.png")))


def run_sweep(
    cfg: ReproduceConfig,
    *,
    checkpoint: Path,
    split_path: Path,
    eps_values: list[str],
    gen_epochs: int,
    batch_size: int,
    gen_options: dict[str, Any] | None = None,
) -> None:
    """Robustness curves: generator (both protocols) and targeted PGD-20 at each eps, scored from saved PNGs.

    Every (method, protocol, eps) is its own attack folder under ``sweep/``; ``sweep.csv`` is rebuilt from
    all complete folders, so several processes can share one sweep (each with its own ``--sweep-eps``).
    """
    from dermadv.attacks.runner import AttackRunConfig, attack_split
    from dermadv.training.generator import GeneratorConfig, fit_generator

    base = Path(cfg.out) / "sweep"
    acfg = AttackRunConfig(
        checkpoint=checkpoint,
        out=base,
        data=cfg.data,
        split="test",
        split_file=str(split_path),
        target=cfg.target,
        steps=20,
        limit=cfg.sweep_limit,
        seed=cfg.seed,
        progress=True,
    )
    for eps in eps_values:
        tag = format_eps(parse_eps(eps)).replace("/", "_")
        for protocol, fit_on in (("held-out", "train"), ("paper", "test")):
            gdir = base / "generators" / f"{protocol}-eps{tag}"
            if not run_complete(gdir):
                fit_generator(
                    GeneratorConfig(
                        checkpoint=checkpoint,
                        out=gdir,
                        data=cfg.data,
                        target=cfg.target,
                        eps=eps,
                        fit_on=fit_on,  # type: ignore[arg-type]
                        max_fit_images=cfg.sweep_fit_images if fit_on == "train" else None,
                        epochs=gen_epochs,
                        batch_size=batch_size,
                        **(gen_options or {}),
                        seed=cfg.seed,
                        split_file=str(split_path),
                        resume=(gdir / "generator_state.pt").exists(),
                    )
                )
            sub = replace(
                acfg,
                method="advgan",
                eps=eps,
                generator=gdir / "generator.safetensors",
                out=base / f"advgan-{protocol}-eps{tag}",
            )
            if not run_complete(sub.out):
                attack_split(sub)
        sub = replace(acfg, method="pgd", eps=eps, out=base / f"pgd-eps{tag}")
        if not run_complete(sub.out):
            attack_split(sub)
        if dd.is_main():
            write_sweep_csv(base)


def write_sweep_csv(base: Path) -> list[dict[str, Any]]:
    """Collect every complete attack folder under ``base`` into ``sweep.csv`` (method, protocol, eps order)."""
    from dermadv.attacks.runner import sweep_row
    from dermadv.runs import write_csv

    rows = []
    for folder in sorted(p for p in base.iterdir() if p.is_dir() and (p / "attack_metrics.json").exists()):
        info = read_json(folder / "attack.json")
        m = read_json(folder / "attack_metrics.json")
        name = folder.name
        protocol = "per-image" if info["method"] != "advgan" else ("paper" if "-paper-" in name else "held-out")
        rows.append(sweep_row(m, method=info["method"], eps=float(info["eps"]), protocol=protocol, folder=name))
    rows.sort(key=lambda r: (r["method"], r["protocol"], r["eps_255"]))
    if rows:
        write_csv(base / "sweep.csv", rows)
    return rows


def register(app: typer.Typer) -> None:
    @app.command("reproduce")
    def reproduce_cmd(
        out: Path = typer.Option(Path("runs/repro"), "--out", help="Run folder."),
        data: str | None = typer.Option(None, "--data", help="HAM10000 folder etc.; default: built-in synthetic set."),
        preset: str = typer.Option(
            "demo",
            help="demo (synthetic, minutes), cpu (real data, 2 cores), cpu-64 (from-scratch baseline), paper (GPU).",
        ),
        checkpoint: Path | None = typer.Option(
            None, "--checkpoint", help="Reuse a trained classifier (skips training)."
        ),
        fit_on: str = typer.Option(
            "train", "--fit-on", help="train (held-out judging) or test (the paper's protocol)."
        ),
        eps: str | None = typer.Option(None, help="L∞ budget of the generator; default from the preset."),
        target: str = typer.Option("nv", help="Target class."),
        sweep: bool = typer.Option(
            False, "--sweep/--no-sweep", help="Also run robustness curves (eps × attack × protocol)."
        ),
        sweep_limit: int = typer.Option(350, "--sweep-limit", help="Class-stratified test sample per sweep run."),
        sweep_eps: str | None = typer.Option(None, "--sweep-eps", help="Budgets of the sweep, e.g. 1/255,2/255."),
        sweep_fit_images: int = typer.Option(
            1500, "--sweep-fit-images", help="Train images each sweep generator fits on."
        ),
        sweep_only: bool = typer.Option(
            False, "--sweep-only", help="Only the sweep (a second process can share --out)."
        ),
        report: bool = typer.Option(True, "--report/--no-report"),
        seed: int = typer.Option(0),
    ) -> None:
        """Run the whole study (split → classifier → generator → attack → evaluation → kit → report)."""
        if data is None and preset != "demo":
            log.info("no --data: using the built-in synthetic set")
        reproduce(
            ReproduceConfig(
                out=out,
                data=data,
                preset=preset,
                checkpoint=checkpoint,
                fit_on=fit_on,
                eps=eps,
                target=target,
                sweep=sweep or sweep_only,
                sweep_limit=sweep_limit,
                sweep_eps=sweep_eps,
                sweep_fit_images=sweep_fit_images,
                sweep_only=sweep_only,
                report=report,
                seed=seed,
            )
        )
