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
from dermadv.training.config import TrainConfig

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
    """The defaults --help shows are read from TrainConfig, the one place they are written."""
    text = " ".join(help_text("train").split())  # the help wraps long lines
    defaults = {f.name: f.default for f in fields(TrainConfig)}
    for name in ("arch", "image_size", "epochs", "batch_size", "lr", "optimizer", "class_balance", "seed"):
        assert f"[default: {defaults[name]}]" in text, name
    assert defaults["weights"] is None and "[default: none]" in text
    assert defaults["compile"] is False and "[default: no-compile]" in text
    assert "else from the --preset, else the default shown" in text


def test_train_help_imports_no_torch() -> None:
    """Printing the options takes no seconds of loading torch: TrainConfig lives in a torch-free module."""
    code = (
        "import sys\n"
        "sys.argv = ['dermadv', 'train', '--help']\n"
        "from dermadv.cli import main\n"
        "try:\n"
        "    main()\n"
        "except SystemExit:\n"
        "    pass\n"
        "print('torch loaded:', 'torch' in sys.modules)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "--image-size" in proc.stdout and "torch loaded: False" in proc.stdout


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
