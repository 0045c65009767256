"""Training, attack and evaluation work without the optional dependencies (web app, ART, torchattacks).

A GPU machine may hold only the core packages; each check runs in a fresh interpreter whose import
system refuses the optional modules, as if they were not installed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

BLOCKED = ("fastapi", "uvicorn", "starlette", "multipart", "httpx", "art", "torchattacks", "medmnist", "playwright")

BLOCKER = textwrap.dedent(
    f"""
    import sys
    from importlib.abc import MetaPathFinder

    BLOCKED = {BLOCKED!r}

    class Blocker(MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"No module named {{name!r}} (blocked by the test)", name=name)
            return None

    sys.meta_path.insert(0, Blocker())
    """
)

CORE_MODULES = (
    "dermadv.cli",
    "dermadv.training.classifier",
    "dermadv.training.generator",
    "dermadv.attacks.runner",
    "dermadv.attacks.cli",
    "dermadv.evaluation.attack_eval",
    "dermadv.evaluation.cli",
    "dermadv.training.adversarial",
    "dermadv.defences.transforms",
    "dermadv.defences.smoothing",
    "dermadv.defences.detection",
    "dermadv.defences.card",
)


def run_blocked(code: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, "-c", BLOCKER + textwrap.dedent(code)], capture_output=True, text=True, env=env, timeout=120
    )


def test_blocker_blocks() -> None:
    proc = run_blocked("import fastapi")
    assert proc.returncode != 0
    assert "blocked by the test" in proc.stderr


def test_core_modules_import_without_optional_dependencies() -> None:
    # one interpreter for all modules: each start imports torch, which takes seconds
    proc = run_blocked(
        f"""
        import importlib
        for module in {CORE_MODULES!r}:
            importlib.import_module(module)
            loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
            assert not loaded, (module, loaded)
        """
    )
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_cli_offers_train_attack_and_evaluate_without_optional_dependencies() -> None:
    proc = run_blocked(
        """
        import runpy
        sys.argv = ["dermadv", "--help"]
        try:
            runpy.run_module("dermadv", run_name="__main__")
        except SystemExit as exc:
            assert not exc.code, exc.code
        """
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    for command in ("train", "attack", "evaluate-attack"):
        assert command in proc.stdout
