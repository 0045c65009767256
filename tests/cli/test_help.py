"""``--help`` and ``--version`` through the installed ``dermadv`` script: defaults shown, flags as on/off pairs."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest
import typer

from dermadv import __version__, cli
from dermadv.cli.train import TRAIN_DEFAULTS

SCRIPT = Path(sys.executable).parent / "dermadv"

pytestmark = pytest.mark.skipif(not SCRIPT.exists(), reason=f"console script not installed at {SCRIPT}")


def help_text(*command: str) -> str:
    env = {**os.environ, "COLUMNS": "200"}
    proc = subprocess.run([SCRIPT, *command, "--help"], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_help_shows_defaults_in_brackets_and_flags_as_pairs() -> None:
    evaluate = help_text("evaluate")
    assert "--tta / --no-tta" in evaluate and "<bool>" not in evaluate
    assert "[default: test]" in evaluate
    analyze = help_text("observer", "analyze")
    assert "[default: <study>/analysis]" in analyze  # square brackets in the help text itself survive


def test_train_help_shows_the_defaults_a_run_gets() -> None:
    text = " ".join(help_text("train").split())  # the help wraps long lines
    for name in ("arch", "image_size", "epochs", "batch_size", "lr", "optimizer", "class_balance", "seed"):
        assert f"[default: {TRAIN_DEFAULTS[name]}]" in text, name
    assert "else from the --preset, else the default shown" in text


def test_train_help_defaults_are_the_config_defaults() -> None:
    from dermadv.training.classifier import TrainConfig

    defaults = {f.name: f.default for f in fields(TrainConfig)}
    shown = {name: str(defaults[name]) for name in TRAIN_DEFAULTS if name not in ("weights", "compile", "lr")}
    assert {name: TRAIN_DEFAULTS[name] for name in shown} == shown
    assert float(TRAIN_DEFAULTS["lr"]) == defaults["lr"]
    assert defaults["weights"] is None and TRAIN_DEFAULTS["weights"] == "none"
    assert defaults["compile"] is False and TRAIN_DEFAULTS["compile"] == "no-compile"


def test_version() -> None:
    proc = subprocess.run([SCRIPT, "--version"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == f"dermadv {__version__}"


def test_every_bool_option_is_an_on_off_pair() -> None:
    """``--tta true`` fails on a flag; a pair (``--tta/--no-tta``) says how to turn it on and off."""
    singles = []

    def walk(command: object, prefix: str) -> None:
        for param in getattr(command, "params", []):
            flag = getattr(param, "is_bool_flag", False) and param.name not in ("help", "version")
            if flag and not param.secondary_opts:
                singles.append(f"{prefix} {param.opts[0]}")
        for name, sub in getattr(command, "commands", {}).items():
            walk(sub, f"{prefix} {name}".strip())

    walk(typer.main.get_command(cli.app), "")
    assert not singles
