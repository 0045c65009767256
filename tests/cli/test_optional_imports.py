"""Training, attack and evaluation work without the optional dependencies (web app, ART, torchattacks), and a
command that needs one is still listed and names the extra to install.

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
    "dermadv.pipeline.train",
    "dermadv.pipeline.generator",
    "dermadv.attacks",
    "dermadv.pipeline.attack",
    "dermadv.pipeline.reproduce",
    "dermadv.evaluation.attack_eval",
    "dermadv.report.build",
    "dermadv.training.adversarial",
    "dermadv.defences.transforms",
    "dermadv.defences.smoothing",
    "dermadv.defences.detection",
    "dermadv.defences.card",
    "dermadv.defences.results",
    "dermadv.pipeline.defences",
    "dermadv.report.defences",
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
    for command in ("train", "attack", "evaluate-attack", "observer", "reproduce", "report"):
        assert command in proc.stdout


def test_command_needing_a_missing_extra_is_listed_and_names_it(tmp_path) -> None:
    proc = run_blocked(
        f"""
        import runpy
        for argv in (["dermadv", "observer", "--help"], ["dermadv", "observer", "serve", {str(tmp_path)!r}]):
            sys.argv = argv
            try:
                runpy.run_module("dermadv", run_name="__main__")
                code = 0
            except SystemExit as exc:
                code = exc.code
            print("EXIT-CODE", code)
        """
    )
    assert proc.stdout.count("EXIT-CODE") == 2, proc.stderr[-2000:]
    listed, served = proc.stdout.split("EXIT-CODE 0", 1)
    assert "serve" in listed  # still offered
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert served.strip() == "EXIT-CODE 1" and "Traceback" not in proc.stderr
    assert len(errors) == 1 and "pip install 'dermadv[web]'" in errors[0], proc.stderr
