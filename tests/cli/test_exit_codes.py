"""Exit codes through the installed ``dermadv`` script: 0 success, 1 error, 2 usage error, 130 Ctrl-C.

Each case runs a fresh process, as a shell or a scheduler would, and reads ``$?``: calling ``cli.main`` in
this process would not see what the console script hands back. Ctrl-C is a real SIGINT to the process
while it works; the run folders it opened must then say ``interrupted``, never stay ``running``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dermadv import cli
from dermadv.observer.storage import StudyDB
from dermadv.observer.study import load_study
from dermadv.runs import read_json

SCRIPT = Path(sys.executable).parent / "dermadv"

pytestmark = [
    pytest.mark.skipif(not SCRIPT.exists(), reason=f"console script not installed at {SCRIPT}"),
    pytest.mark.timeout(300),
]


def env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "DERMADV_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1", "COLUMNS": "200"}


def dermadv(tmp_path: Path, *args: str | Path, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SCRIPT, *map(str, args)], capture_output=True, text=True, env=env(tmp_path), timeout=timeout, cwd=tmp_path
    )


def leaf_commands() -> set[str]:
    """Every runnable command, e.g. ``observer analyze`` (groups such as ``observer`` excluded)."""
    import typer

    leaves: set[str] = set()

    def walk(command: object, prefix: tuple[str, ...]) -> None:
        subs = getattr(command, "commands", None)
        if not subs and prefix:
            leaves.add(" ".join(prefix))
        for name, sub in (subs or {}).items():
            walk(sub, (*prefix, name))

    walk(typer.main.get_command(cli.app), ())
    return leaves


#: One failing invocation per command ({tmp} is the test's folder) and the exit code it must give.
FAILURES: dict[str, tuple[list[str], int]] = {
    "data info": (["--data", "{tmp}/nowhere"], 1),
    "data split": (["--out", "{tmp}/s.csv", "--fractions", "0.8,0.1,x"], 1),
    "data download": (["imagenet"], 1),
    "models": (["no-such-architecture*"], 1),
    "train": (["--out", "{tmp}/run", "--preset", "huge"], 1),
    "evaluate": (["--checkpoint", "{tmp}/missing.safetensors"], 1),
    "evaluate-attack": (["{tmp}/nowhere"], 1),
    "attack fit": (["--checkpoint", "{tmp}/missing.safetensors", "--out", "{tmp}/gen"], 1),
    "attack run": (["--checkpoint", "{tmp}/m.safetensors", "--out", "{tmp}/adv", "--eps", "8"], 1),
    "attack sweep": (["--checkpoint", "{tmp}/missing.safetensors", "--out", "{tmp}/sweep"], 1),
    "attack transfer": (["--from", "{tmp}/nowhere", "--to", "{tmp}/missing.safetensors", "--out", "{tmp}/t"], 1),
    "defend transforms": (["--checkpoint", "{tmp}/missing.safetensors", "--out", "{tmp}/d"], 1),
    "defend certify": (["--checkpoint", "{tmp}/missing.safetensors", "--out", "{tmp}/d"], 1),
    "defend detect": (
        ["--checkpoint", "{tmp}/missing.safetensors", "--out", "{tmp}/d", "--attack-folder", "{tmp}/a"],
        1,
    ),
    "defend card": (["--checkpoint", "{tmp}/missing.safetensors", "--out", "{tmp}/d"], 1),
    "attack list": (["surplus-argument"], 2),
    "reproduce": (["--out", "{tmp}/repro", "--preset", "huge"], 1),
    "report": (["{tmp}/nowhere"], 1),
    "results": (["{tmp}/nowhere", "--out", "{tmp}/results.md"], 1),
    "observer create": (["{tmp}/nowhere", "--out", "{tmp}/study"], 1),
    "observer invite": (["{tmp}/nowhere", "--name", "Observer A"], 1),
    "observer serve": (["{tmp}/nowhere"], 1),
    "observer status": (["{tmp}/nowhere"], 1),
    "observer analyze": (["/nonexistent"], 1),
    "observer export": (["{tmp}/nowhere"], 1),
    "audit": (["{tmp}/missing.onnx", "--out", "{tmp}/audit"], 1),
    "model check": (["{tmp}/missing.onnx"], 1),
    "model card": (["{tmp}/missing.onnx"], 1),
    "model export": (["{tmp}/missing.safetensors", "--out", "{tmp}/m.onnx"], 1),
    "model serve": (["{tmp}/missing.onnx", "--port", "70000"], 1),
}


def test_the_table_covers_every_command() -> None:
    assert leaf_commands() == set(FAILURES)


@pytest.mark.parametrize("command", sorted(FAILURES))
def test_failure_exit_code(tmp_path: Path, command: str) -> None:
    args, code = FAILURES[command]
    result = dermadv(tmp_path, *command.split(), *(a.format(tmp=tmp_path) for a in args))
    assert result.returncode == code, f"exit code {result.returncode}\n{result.stderr[-2000:]}"
    assert "Traceback" not in result.stderr
    if code == 1:
        assert [line for line in result.stderr.splitlines() if line.startswith("error: ")], result.stderr


def fake_attack_folder(root: Path, n: int = 4) -> Path:
    rng = np.random.default_rng(0)
    for sub in ("clean", "adv"):
        (root / "images" / sub).mkdir(parents=True)
    for i in range(n):
        clean = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        Image.fromarray(clean).save(root / "images" / "clean" / f"ISIC_{i:07d}.png")
        Image.fromarray(clean ^ 1).save(root / "images" / "adv" / f"ISIC_{i:07d}.png")
    return root


def created_study(tmp_path: Path) -> Path:
    """``dermadv observer create`` of a 4-item study from a small fake attack folder; must exit 0."""
    study = tmp_path / "study"
    result = dermadv(tmp_path, "observer", "create", fake_attack_folder(tmp_path / "adv"), "--out", study, "--n", "4")
    assert result.returncode == 0, result.stderr[-2000:]
    return study


def test_observer_commands_succeed_with_0(tmp_path: Path) -> None:
    """The control for the failures above: the same commands, given good input, exit 0."""
    study = created_study(tmp_path)
    assert dermadv(tmp_path, "observer", "invite", study, "--name", "Observer A").returncode == 0
    db = StudyDB(load_study(study).db_path)
    while (item_id := db.serve_next(1)) is not None:
        db.record_answer(1, item_id, answer="yes", confidence=3)
    for args in (["status", study], ["analyze", study], ["export", study]):
        result = dermadv(tmp_path, "observer", *args)
        assert result.returncode == 0, result.stderr
    assert (study / "answers.csv").exists() and (study / "analysis").is_dir()
    assert dermadv(tmp_path, "attack", "list").returncode == 0


def test_train_succeeds_with_0(tmp_path: Path, synthetic_root: Path) -> None:
    result = dermadv(
        tmp_path, "train", "--data", synthetic_root, "--out", tmp_path / "run", "--arch", "resnet18",
        "--image-size", "32", "--epochs", "1", "--batch-size", "32",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert read_json(tmp_path / "run" / "manifest.json")["status"] == "complete"


def _running(manifest: Path) -> bool:
    try:
        return json.loads(manifest.read_text())["status"] == "running"
    except (OSError, ValueError, KeyError):
        return False


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def interrupt(
    tmp_path: Path, args: list[str | Path], ready: Callable[[], bool], *, sig: int = signal.SIGINT
) -> subprocess.CompletedProcess[str]:
    """Start ``dermadv ARGS``, wait until ``ready()``, send ``sig`` (Ctrl-C by default) and collect the result."""
    proc = subprocess.Popen(
        [SCRIPT, *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env(tmp_path),
        # A foreground command, as a user would press Ctrl-C in: a test run started in the background
        # (`make test &`) inherits SIGINT ignored, and Python then never raises KeyboardInterrupt.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        deadline = time.monotonic() + 180
        while not ready():
            assert proc.poll() is None, f"ended before it was interrupted: {proc.communicate()[1][-2000:]}"
            assert time.monotonic() < deadline, "not ready within 180 s"
            time.sleep(0.1)
        time.sleep(0.5)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


def test_ctrl_c_during_train_exits_130_and_marks_the_run(tmp_path: Path, synthetic_root: Path) -> None:
    run = tmp_path / "run"
    args: list[str | Path] = ["train", "--data", synthetic_root, "--out", run, "--arch", "resnet18"]
    args += ["--image-size", "32", "--epochs", "1000", "--batch-size", "32"]
    result = interrupt(tmp_path, args, lambda: _running(run / "manifest.json"))
    assert result.returncode == 130, result.stderr[-2000:]
    assert "Traceback" not in result.stderr and "interrupted" in result.stderr
    manifest = read_json(run / "manifest.json")
    assert manifest["status"] == "interrupted" and "Ctrl-C" in manifest["reason"] and "ended" in manifest


def test_sigterm_during_train_exits_143_and_marks_the_run(tmp_path: Path, synthetic_root: Path) -> None:
    """A scheduler's stop (SIGTERM) is handled as Ctrl-C: manifest ``interrupted``, exit 143, no traceback."""
    run = tmp_path / "run"
    args: list[str | Path] = ["train", "--data", synthetic_root, "--out", run, "--arch", "resnet18"]
    args += ["--image-size", "32", "--epochs", "1000", "--batch-size", "32"]
    result = interrupt(tmp_path, args, lambda: _running(run / "manifest.json"), sig=signal.SIGTERM)
    assert result.returncode == 143, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    manifest = read_json(run / "manifest.json")
    assert manifest["status"] == "interrupted" and "SIGTERM" in manifest["reason"]


def test_ctrl_c_during_reproduce_marks_every_open_run(tmp_path: Path, synthetic_root: Path) -> None:
    out = tmp_path / "repro"
    args: list[str | Path] = ["reproduce", "--data", synthetic_root, "--out", out, "--no-report"]
    result = interrupt(tmp_path, args, lambda: _running(out / "classifier" / "manifest.json"))
    assert result.returncode == 130, result.stderr[-2000:]
    for folder in (out, out / "classifier"):  # the pipeline and the stage it was in
        assert read_json(folder / "manifest.json")["status"] == "interrupted", folder


def test_ctrl_c_stops_observer_serve_with_130(tmp_path: Path) -> None:
    study = created_study(tmp_path)
    port = _free_port()
    result = interrupt(tmp_path, ["observer", "serve", study, "--port", str(port)], lambda: _listening(port))
    assert result.returncode == 130, result.stderr[-2000:]
    assert "Traceback" not in result.stderr


def test_observer_serve_does_not_import_torch(tmp_path: Path) -> None:
    """Serving a study needs no model: the command must start without loading torch (seconds, hundreds of MB)."""
    study = created_study(tmp_path)
    code = (
        "import sys, uvicorn\n"
        "import dermadv.observer.app as web\n"
        "def report(*args, **kwargs):\n"
        "    print('torch loaded:', 'torch' in sys.modules, 'app:', type(args[0]).__name__)\n"
        "web.serve = uvicorn.run = report  # instead of serving: report what the command loaded\n"
        f"sys.argv = ['dermadv', 'observer', 'serve', {str(study)!r}]\n"
        "from dermadv.cli import main\n"
        "main()\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env(tmp_path), timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "torch loaded: False app: FastAPI" in result.stdout
