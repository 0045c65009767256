"""docs/cli.md is generated from the typer app: regenerated, it equals the committed page and lists every command."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import typer

from dermadv import cli
from dermadv.cli.reference import render_cli_reference

REFERENCE = Path(__file__).resolve().parents[2] / "docs" / "cli.md"


def command_paths() -> set[str]:
    """``dermadv``, ``dermadv attack``, ``dermadv attack run``, …: every group and command of the app."""
    paths: set[str] = set()

    def walk(command: object, path: str) -> None:
        paths.add(path)
        for name, sub in (getattr(command, "commands", None) or {}).items():
            walk(sub, f"{path} {name}")

    walk(typer.main.get_command(cli.app), "dermadv")
    return paths


def test_committed_reference_is_current() -> None:
    assert REFERENCE.read_text(encoding="utf-8") == render_cli_reference(cli.app), (
        "docs/cli.md is stale: regenerate it with `make docs` (python -m dermadv.cli.reference docs/cli.md)"
    )


def test_reference_lists_every_command() -> None:
    text = REFERENCE.read_text(encoding="utf-8")
    headings = {line[4:-1] for line in text.splitlines() if line.startswith("## `")}
    assert headings == command_paths()
    assert "dermadv results" in headings
    assert "Usage: dermadv attack run [OPTIONS]" in text and "[default: 8/255]" in text  # options with defaults


def test_module_writes_the_same_page_in_any_terminal(tmp_path: Path) -> None:
    """The script, run in a narrow terminal, writes the committed page: the help is wrapped at a fixed width."""
    out = tmp_path / "cli.md"
    env = {**os.environ, "COLUMNS": "40", "OMP_NUM_THREADS": "1", "DERMADV_CACHE": str(tmp_path / "cache")}
    result = subprocess.run(
        [sys.executable, "-m", "dermadv.cli.reference", str(out)], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert out.read_text(encoding="utf-8") == REFERENCE.read_text(encoding="utf-8")
