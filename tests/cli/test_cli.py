"""The command line end to end on synthetic data, its one-line errors, and ``--help`` of every command."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
import typer

from dermadv import cli
from dermadv.data.classes import CLASSES
from dermadv.models.checkpoints import CheckpointMeta, save_checkpoint
from dermadv.models.classifier import build_classifier
from dermadv.runs import read_json, run_complete

SCRIPT = Path(sys.executable).parent / "dermadv"


class Result:
    def __init__(self, code: int, out: str, err: str) -> None:
        self.code, self.out, self.err = code, out, err

    def assert_one_error_line(self, *fragments: str) -> str:
        """Exit code 1, exactly one ``error:`` line on stderr, no traceback; returns that line."""
        assert self.code == 1, f"exit code {self.code}; stderr: {self.err}"
        assert "Traceback" not in self.err + self.out
        lines = [line for line in self.err.splitlines() if line.strip()]
        errors = [line for line in lines if line.startswith("error: ")]
        assert len(errors) == 1, f"expected one error line; stderr was:\n{self.err}"
        for fragment in fragments:
            assert fragment in errors[0], f"{fragment!r} not in {errors[0]!r}"
        return errors[0]


Runner = Callable[..., Result]


@pytest.fixture()
def dermadv(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, dermadv_cache: Path) -> Runner:
    """Run ``dermadv ARGS`` in this process through ``cli.main``."""

    def run(*args: str | Path) -> Result:
        capsys.readouterr()
        monkeypatch.setattr(sys, "argv", ["dermadv", *map(str, args)])
        code = 0
        try:
            cli.main()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        out, err = capsys.readouterr()
        return Result(code, out, err)

    return run


def test_end_to_end_on_synthetic(dermadv: Runner, synthetic_root: Path, tmp_path: Path) -> None:
    info = dermadv("data", "info", "--data", synthetic_root)
    assert info.code == 0, info.err
    assert "source: synthetic" in info.out and "images: 140" in info.out
    counts = {line.split()[0]: int(line.split()[1]) for line in info.out.splitlines() if line.startswith("  ")}
    assert list(counts) == list(CLASSES) and sum(counts.values()) == 140

    split_csv = tmp_path / "split.csv"
    split = dermadv("data", "split", "--data", synthetic_root, "--out", split_csv, "--seed", "1")
    assert split.code == 0, split.err
    frame = pd.read_csv(split_csv)
    assert len(frame) == 140 and set(frame["split"]) == {"train", "val", "test"}
    assert (frame.groupby("lesion_id")["split"].nunique() == 1).all()

    config = tmp_path / "tiny.yaml"
    config.write_text("progress: false\nclass_balance: sqrt\nwarmup_epochs: 0.5\n")
    run = tmp_path / "clf"
    train = dermadv(
        "train",
        "--data",
        synthetic_root,
        "--out",
        run,
        "--config",
        config,
        "--arch",
        "resnet18",
        "--image-size",
        "32",
        "--epochs",
        "1",
        "--batch-size",
        "32",
        "--split-file",
        split_csv,
    )
    assert train.code == 0, train.err
    assert f"checkpoint: {run / 'model.safetensors'}" in train.out
    manifest = read_json(run / "manifest.json")
    assert manifest["status"] == "complete"
    assert manifest["config"]["warmup_epochs"] == 0.5 and manifest["config"]["epochs"] == 1  # YAML < flags
    assert manifest["argv"][1:3] == ["train", "--data"]
    pd.testing.assert_frame_equal(pd.read_csv(run / "split.csv"), frame)

    evaluate = dermadv("evaluate", "--checkpoint", run / "model.safetensors", "--data", synthetic_root)
    assert evaluate.code == 0, evaluate.err
    metrics = read_json(run / "eval-test" / "metrics.json")
    assert run_complete(run / "eval-test")
    n_test = int((frame["split"] == "test").sum())
    assert metrics["n"] == n_test
    table = evaluate.out
    assert "accuracy" in table and "balanced accuracy" in table and f"n = {n_test}" in table
    assert f"accuracy {100 * metrics['accuracy']['estimate']:.1f}%" in table
    assert f"balanced accuracy {metrics['balanced_accuracy']:.3f}" in table
    for c in CLASSES:
        assert c in table
    predictions = pd.read_csv(run / "eval-test" / "predictions.csv")
    assert len(predictions) == n_test
    assert set(predictions["image_id"]) == set(frame.loc[frame["split"] == "test", "image_id"])
    assert (predictions["label"] == predictions["pred"]).mean() == pytest.approx(metrics["accuracy"]["estimate"])

    again = dermadv("train", "--data", synthetic_root, "--out", run, "--epochs", "1")
    again.assert_one_error_line("already holds a training run", "--resume")


def test_wrong_columns_csv(dermadv: Runner, tmp_path: Path) -> None:
    (tmp_path / "HAM10000_metadata.csv").write_text("lesion,image,diagnosis\nHAM_1,ISIC_1,nv\n")
    dermadv("data", "info", "--data", tmp_path).assert_one_error_line("lacks column(s) lesion_id, image_id, dx")


def test_missing_data_path(dermadv: Runner, tmp_path: Path) -> None:
    result = dermadv("data", "info", "--data", tmp_path / "nowhere")
    result.assert_one_error_line("does not exist", str(tmp_path / "nowhere"))


def test_eps_out_of_range(dermadv: Runner, tmp_path: Path) -> None:
    result = dermadv("attack", "run", "--checkpoint", tmp_path / "m.safetensors", "--out", tmp_path / "a", "--eps", "8")
    result.assert_one_error_line("eps must be in (0, 1]", "did you mean 8/255?")
    assert not (tmp_path / "a").exists()


def test_checkpoint_classes_do_not_fit(dermadv: Runner, synthetic_root: Path, tmp_path: Path) -> None:
    path = tmp_path / "binary" / "model.safetensors"
    meta = CheckpointMeta(arch="resnet18", classes=("benign", "malignant"), image_size=(32, 32))
    save_checkpoint(path, build_classifier("resnet18", 2), meta)
    result = dermadv("evaluate", "--checkpoint", path, "--data", synthetic_root)
    result.assert_one_error_line("was trained on classes benign,malignant", ",".join(CLASSES))  # not HAM10000


def test_bad_split_fractions(dermadv: Runner, synthetic_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "s.csv"
    dermadv("data", "split", "--data", synthetic_root, "--out", out, "--fractions", "0.8,0.1").assert_one_error_line(
        "summing to 1"
    )
    dermadv("data", "split", "--data", synthetic_root, "--out", out, "--fractions", "0.8,0.1,x").assert_one_error_line(
        "0.8,0.1,x"
    )
    assert not out.exists()


def test_bad_training_options(dermadv: Runner, synthetic_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    dermadv("train", "--out", out, "--preset", "huge").assert_one_error_line("unknown preset 'huge'")
    dermadv("train", "--out", out, "--config", tmp_path / "none.yaml").assert_one_error_line("does not exist")
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: 2\nlearning_rate: 0.1\n")
    dermadv("train", "--out", out, "--config", bad).assert_one_error_line("unknown key(s) learning_rate")
    for flag, value in [("--optimizer", "adam"), ("--class-balance", "log"), ("--epochs", "0")]:
        result = dermadv("train", "--data", synthetic_root, "--out", out, flag, value)
        result.assert_one_error_line(value)
    assert not (out / "train_state.pt").exists()


def test_usage_errors_exit_2_without_traceback(dermadv: Runner) -> None:
    result = dermadv("evaluate")
    assert result.code == 2 and "Missing option '--model' / '--checkpoint'" in result.err
    assert "Traceback" not in result.err


def command_paths() -> list[tuple[str, ...]]:
    root = typer.main.get_command(cli.app)
    paths: list[tuple[str, ...]] = [()]

    def walk(command: object, prefix: tuple[str, ...]) -> None:
        # duck-typed: typer may hand back its vendored click's Group rather than click's
        for name, sub in getattr(command, "commands", {}).items():
            paths.append((*prefix, name))
            walk(sub, (*prefix, name))

    walk(root, ())
    return paths


COMMANDS = command_paths()


def test_every_documented_command_is_mounted() -> None:
    names = {" ".join(p) for p in COMMANDS}
    assert {"data info", "data split", "data download", "train", "evaluate", "attack run"} <= names
    assert {"evaluate-attack", "observer serve", "reproduce", "report"} <= names


@pytest.mark.parametrize("path", COMMANDS, ids=lambda p: " ".join(p) or "dermadv")
def test_help_of_every_command(dermadv: Runner, path: tuple[str, ...]) -> None:
    result = dermadv(*path, "--help")
    assert result.code == 0, result.err
    assert "Usage:" in result.out and "Traceback" not in result.err


def test_console_script(tmp_path: Path) -> None:
    """The installed ``dermadv`` script (a fresh process): a bad option is one line on stderr and exit code 1."""
    if not SCRIPT.exists():
        pytest.skip(f"console script not installed at {SCRIPT}")
    env = {**os.environ, "DERMADV_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    args = ["attack", "run", "--checkpoint", "m.safetensors", "--out", str(tmp_path / "a"), "--eps", "8"]
    bad = subprocess.run([SCRIPT, *args], capture_output=True, text=True, env=env, timeout=120)
    Result(bad.returncode, bad.stdout, bad.stderr).assert_one_error_line("did you mean 8/255?")
