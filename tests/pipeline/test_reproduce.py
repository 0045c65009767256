"""``dermadv reproduce`` end to end on a tiny variant of the demo preset: outputs, resume, the paper's table."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest

from dermadv.errors import ConfigError, RunError
from dermadv.paper import PAPER
from dermadv.pipeline.attack import AttackRunConfig
from dermadv.pipeline.reproduce import ReproduceConfig, paper_table, reproduce
from dermadv.pipeline.sweep import sweep
from dermadv.presets import PRESETS
from dermadv.runs import read_json, run_complete

#: the demo preset shrunk to seconds: resnet18 at 32 px for 2 epochs, the generator for 1
TINY_DEMO = {
    "train": dict(
        arch="resnet18", image_size=32, epochs=2, batch_size=32, lr=3e-3, class_balance="sqrt", ema_decay=0.0
    ),
    "attack": dict(eps="8/255", epochs=1, batch_size=32, sweep_eps=""),
}

#: files whose modification time shows whether a stage ran again
STAGE_OUTPUTS = [
    "split.csv",
    "classifier/model.safetensors",
    "classifier/test/metrics.json",
    "generator/generator.safetensors",
    "adv-test/predictions.csv",
    "adv-test/attack_metrics.json",
    "observer/study.json",
]


@pytest.fixture(scope="module")
def tiny_demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[pytest.MonkeyPatch]:
    """The tiny demo preset and a private cache, for every test of this module."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DERMADV_CACHE", str(tmp_path_factory.mktemp("dermadv-cache")))
        mp.setitem(PRESETS, "demo", TINY_DEMO)
        yield mp


def _config(out: Path, data: Path) -> ReproduceConfig:
    return ReproduceConfig(out=out, data=str(data), preset="demo", observer_n=10, report=False)


@pytest.fixture(scope="module")
def repro(tmp_path_factory: pytest.TempPathFactory, synthetic_root: Path, tiny_demo) -> Path:
    return reproduce(_config(tmp_path_factory.mktemp("repro") / "run", synthetic_root))


def _mtimes(run: Path, names: list[str] = STAGE_OUTPUTS) -> dict[str, int]:
    return {name: (run / name).stat().st_mtime_ns for name in names}


def _forbid_work(monkeypatch: pytest.MonkeyPatch, *targets: str) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a completed stage ran again")

    for target in targets:
        monkeypatch.setattr(target, refuse)


STAGES = {
    "classifier": "dermadv.pipeline.reproduce.fit",
    "evaluate": "dermadv.pipeline.reproduce.evaluate_checkpoint",
    "generator": "dermadv.pipeline.reproduce.fit_generator",
    "attack": "dermadv.pipeline.reproduce.attack_split",
    "observer": "dermadv.pipeline.reproduce.create_study",
}


def test_reproduce_writes_the_whole_study(repro: Path) -> None:
    assert run_complete(repro)
    for stage in ("classifier", "classifier/test", "generator", "adv-test"):
        assert run_complete(repro / stage), stage
    for name in [*STAGE_OUTPUTS, "paper_table.json", "paper_table.md", "classifier/history.csv"]:
        assert (repro / name).is_file(), name
    assert (repro / "generator" / "history.csv").is_file()
    attack = read_json(repro / "adv-test" / "attack.json")
    assert attack["method"] == "advgan" and attack["target"] == "nv" and attack["eps_255"] == pytest.approx(8)
    assert attack["image_size"] == [32, 32]
    metrics = read_json(repro / "adv-test" / "attack_metrics.json")
    assert metrics["n"] == len(list((repro / "adv-test" / "images" / "adv").glob("*.png"))) > 0
    assert metrics["imperceptibility"]["linf_255"]["max"] <= 8
    study = read_json(repro / "observer" / "study.json")
    assert study  # the observer kit is there to hand out


def test_second_call_redoes_no_completed_stage(repro: Path, synthetic_root: Path, monkeypatch) -> None:
    before = _mtimes(repro)
    _forbid_work(monkeypatch, *STAGES.values())
    reproduce(_config(repro, synthetic_root))
    assert _mtimes(repro) == before
    assert run_complete(repro)


def test_interrupted_study_resumes_at_the_unfinished_stage(
    repro: Path, synthetic_root: Path, tmp_path: Path, monkeypatch
) -> None:
    run = tmp_path / "run"
    shutil.copytree(repro, run)  # copy2 keeps the modification times
    shutil.rmtree(run / "adv-test")  # as if stopped during the attack, before the observer kit
    shutil.rmtree(run / "observer")
    kept = [
        "split.csv",
        "classifier/model.safetensors",
        "classifier/test/metrics.json",
        "generator/generator.safetensors",
    ]
    before = _mtimes(run, kept)
    _forbid_work(monkeypatch, STAGES["classifier"], STAGES["evaluate"], STAGES["generator"])
    reproduce(_config(run, synthetic_root))

    assert _mtimes(run, kept) == before
    assert run_complete(run / "adv-test") and (run / "adv-test" / "attack_metrics.json").is_file()
    assert (run / "observer" / "study.json").is_file()


def test_the_folder_is_complete_only_after_its_report(
    repro: Path, synthetic_root: Path, tmp_path: Path, monkeypatch
) -> None:
    run = tmp_path / "run"
    shutil.copytree(repro, run)
    (run / "manifest.json").unlink()  # every stage complete, the study itself not yet
    _forbid_work(monkeypatch, *STAGES.values())
    seen: list[str] = []

    def failing_report(out: Path, **kwargs: object) -> None:
        seen.append(read_json(Path(out) / "manifest.json")["status"])
        raise OSError("disk full")

    monkeypatch.setattr("dermadv.pipeline.reproduce.build_report", failing_report)
    with pytest.raises(OSError, match="disk full"):
        reproduce(replace(_config(run, synthetic_root), report=True))
    assert seen == ["running"] and not run_complete(run)

    monkeypatch.undo()
    reproduce(replace(_config(run, synthetic_root), report=True))
    assert run_complete(run)
    stages = read_json(run / "report" / "summary.json")
    assert stages["kind"] == "reproduce"
    assert read_json(run / "report" / "sources" / "manifest.json")["status"] == "complete"
    assert "| complete |" in (run / "report" / "report.md").read_text()


def test_a_finished_folder_refuses_other_data(repro: Path, tmp_path: Path) -> None:
    from dermadv.data.synthetic import generate_synthetic

    other = generate_synthetic(tmp_path / "other", n_images=70, size=(60, 80), seed=1)
    before = (repro / "manifest.json").read_bytes()
    with pytest.raises(RunError, match="with other settings \\(data: '[0-9a-f]+' there, '[0-9a-f]+' now"):
        reproduce(_config(repro, other))
    assert (repro / "manifest.json").read_bytes() == before


def test_paper_table_sets_the_paper_beside_this_run(repro: Path) -> None:
    rows = read_json(repro / "paper_table.json")
    assert rows == paper_table(repro)
    by_measure = {r["measure"]: r for r in rows}
    metrics = read_json(repro / "adv-test" / "attack_metrics.json")

    clean = by_measure["accuracy, clean test images (95% CI, Wald)"]
    assert clean["paper"] == PAPER["accuracy_clean"] == "84% (82–86)"
    assert clean["this_run"].startswith(f"{100 * metrics['accuracy_clean']['estimate']:.1f}%")
    adv = by_measure["accuracy, perturbed test images"]
    assert adv["paper"] == "67% (65–69)"
    assert adv["this_run"].startswith(f"{100 * metrics['accuracy_adv']['estimate']:.1f}%")
    assert by_measure["McNemar test (exact binomial)"]["paper"] == "P < .0001"
    for cls in metrics["fooling_ratio"]:
        assert by_measure[f"fooling ratio, {cls}"]["paper"] == "100%"
    assert by_measure["architecture"]["this_run"] == "resnet18 (from scratch)"
    assert by_measure["architecture"]["paper"] == PAPER["arch"]
    assert by_measure["image size"]["this_run"] == "32 px"
    assert by_measure["perturbation budget (L∞)"]["this_run"] == "8/255"
    assert by_measure["generator fitted on"]["this_run"] == "the train split"
    assert by_measure["target class"]["this_run"] == "nv"
    for row in rows:
        assert row["paper"] and row["this_run"] and row["this_run"] != "—", row
        assert (repro / row["source"]).exists(), row  # every figure names the file it came from

    markdown = (repro / "paper_table.md").read_text()
    assert markdown.startswith("| measure | paper | this run | source |")
    for row in rows:
        assert f"| {row['measure']} | {row['paper']} | {row['this_run']} | `{row['source']}` |" in markdown


def test_paper_table_of_an_empty_folder_says_what_is_missing(tmp_path: Path) -> None:
    with pytest.raises(RunError, match="nothing to report.*no classifier run, attack output folder"):
        paper_table(tmp_path)


def test_sweep_fits_both_protocols_and_attack_sweep_reads_the_same_folders(
    repro: Path, synthetic_root: Path, tmp_path: Path, monkeypatch
) -> None:
    run = tmp_path / "run"
    shutil.copytree(repro, run)
    _forbid_work(monkeypatch, STAGES["classifier"], STAGES["evaluate"], STAGES["observer"])
    # each protocol's generator takes its own settings over the study's (the cpu preset's study is gradient-half)
    per_protocol = {"held-out": {"steps": 2}, "paper": {"channels": 8}}
    monkeypatch.setitem(
        PRESETS, "demo", {**TINY_DEMO, "attack": {**TINY_DEMO["attack"], "sweep_generator": per_protocol}}
    )
    cfg = replace(_config(run, synthetic_root), sweep=True, sweep_eps="8/255", sweep_limit=7, sweep_fit_images=40)
    reproduce(cfg)

    table = pd.read_csv(run / "sweep" / "sweep.csv")
    assert list(zip(table["method"], table["protocol"], table["eps"], table["folder"], strict=True)) == [
        ("advgan", "held-out", "8/255", "advgan-held-out-eps8_255"),
        ("advgan", "paper", "8/255", "advgan-paper-eps8_255"),
        ("pgd", "per-image", "8/255", "pgd-eps8_255"),
    ]
    assert (table["n"] == 7).all() and (table["linf_255_max"] <= 8).all()
    generators = run / "sweep" / "generators"
    fits = {p: read_json(generators / f"{p}-eps8_255" / "manifest.json")["config"] for p in ("held-out", "paper")}
    assert (fits["held-out"]["fit_on"], fits["held-out"]["max_fit_images"]) == ("train", 40)
    assert (fits["paper"]["fit_on"], fits["paper"]["max_fit_images"]) == ("test", 7)  # the attacked sample
    assert (fits["held-out"]["steps"], fits["held-out"]["channels"]) == (2, 16)
    assert (fits["paper"]["steps"], fits["paper"]["channels"]) == (1, 8)
    for folder in table["folder"]:
        assert run_complete(run / "sweep" / folder)

    # a second process sharing the folder (--sweep-only) finds every sweep run complete
    before = {p: p.stat().st_mtime_ns for p in (run / "sweep").rglob("*.safetensors")}
    _forbid_work(monkeypatch, STAGES["generator"], "dermadv.pipeline.sweep.attack_split")
    reproduce(replace(cfg, sweep_only=True))
    assert {p: p.stat().st_mtime_ns for p in (run / "sweep").rglob("*.safetensors")} == before

    # `attack sweep --generators` reads the fits reproduce wrote, under the same folder names
    monkeypatch.undo()
    again = AttackRunConfig(
        checkpoint=run / "classifier" / "model.safetensors",
        out=tmp_path / "attack-sweep",
        data=str(synthetic_root),
        limit=7,
        progress=False,
    )
    rows = sweep(again, methods=["advgan"], eps_values=["8/255"], generators=generators)
    assert [(r["protocol"], r["folder"]) for r in rows] == [
        ("held-out", "advgan-held-out-eps8_255"),
        ("paper", "advgan-paper-eps8_255"),
    ]


@pytest.mark.parametrize(("preset", "eps"), [("gpu-9000", None), ("demo", "8")])
def test_bad_preset_or_eps_is_refused_before_anything_is_written(tmp_path: Path, preset: str, eps: str | None) -> None:
    out = tmp_path / "run"
    with pytest.raises(ConfigError, match="unknown preset 'gpu-9000'; choose one of demo" if eps is None else "8/255"):
        reproduce(ReproduceConfig(out=out, preset=preset, eps=eps))
    assert not out.exists()


@pytest.mark.slow  # the full CLI takes 10-15 s to start on a loaded 2-core machine
def test_cli_bad_preset_gives_one_error_line(tmp_path: Path) -> None:
    exe = Path(sys.executable).with_name("dermadv")
    out = tmp_path / "run"
    proc = subprocess.run(
        [str(exe), "reproduce", "--preset", "gpu-9000", "--out", str(out)],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", "DERMADV_CACHE": str(tmp_path / "cache")},
        timeout=300,
    )
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 1, proc.stderr
    assert len(errors) == 1 and "unknown preset 'gpu-9000'; choose one of demo" in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out.exists()


def test_a_complete_generator_fit_made_with_other_settings_is_refused(tmp_path: Path) -> None:
    """reproduce reuses a complete generator fit only when it was made with the settings asked for now (a preset
    that changed, e.g. its held-out steps, must not pick up the old fit)."""
    from dataclasses import asdict

    from dermadv.pipeline.generator import check_generator_settings
    from dermadv.pipeline.reproduce import fit_once
    from dermadv.runs import Run
    from dermadv.training.generator import GeneratorConfig

    cfg = GeneratorConfig(checkpoint=tmp_path / "model.safetensors", out=tmp_path / "gen", condition="gradient")
    Run(cfg.out, command="attack fit", config=asdict(cfg)).finish()
    calls: list[GeneratorConfig] = []

    def fit(c: GeneratorConfig) -> Path:
        calls.append(c)
        return c.out

    fit_once(fit, replace(cfg, progress=False), "generator_state.pt", check=check_generator_settings)
    assert calls == []  # complete, same settings: reused
    with pytest.raises(RunError, match="steps: 1 there, 2 now"):
        fit_once(fit, replace(cfg, steps=2), "generator_state.pt", check=check_generator_settings)
    assert calls == []
