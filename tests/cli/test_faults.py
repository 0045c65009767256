"""Operating-system faults through the ``dermadv`` entry point: a full disk or quota, a
read-only ``--out`` and a port already taken are each told in one ``error:`` line naming the path or port and the
fix, exit 1, no traceback, and leave no temporary file behind. (Faults that need no patching, such as a decompression
bomb, a truncated JPEG, a checkpoint with broken metadata or a port out of range, are cases of
tests/cli/test_bad_input.py.)"""

from __future__ import annotations

import errno
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from dermadv.runs import read_json

SCRIPT = Path(sys.executable).parent / "dermadv"

pytestmark = [
    pytest.mark.skipif(not SCRIPT.exists(), reason=f"console script not installed at {SCRIPT}"),
    pytest.mark.timeout(300),
]

#: ``python -c FULL_DISK ARGS`` runs ``dermadv ARGS`` on a disk that is full below $FAULT_DIR: a file opened for
#: writing there opens, but every write fails with $FAULT_ERRNO (ENOSPC, EDQUOT…), except in files whose name
#: matches $FAULT_SPARE (the space a manifest still finds). Patched before dermadv is imported, as a sitecustomize
#: would, so every writer in the process (json, csv, numpy, Pillow) meets the full disk.
FULL_DISK = r"""
import builtins, errno, io, os, re, sys
from pathlib import Path

root = Path(os.environ["FAULT_DIR"]).resolve()
spare = re.compile(os.environ.get("FAULT_SPARE") or "(?!)")
code = getattr(errno, os.environ["FAULT_ERRNO"])
real_open = io.open


class FullDisk:
    def __init__(self, f):
        self._f = f

    def write(self, data):
        raise OSError(code, os.strerror(code))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()

    def __getattr__(self, name):
        return getattr(self._f, name)


def full_disk_open(file, mode="r", *args, **kwargs):
    f = real_open(file, mode, *args, **kwargs)
    if isinstance(file, (str, os.PathLike)) and set(mode) & set("wax+"):
        path = Path(os.fsdecode(file)).resolve()
        if path.is_relative_to(root) and not spare.search(path.name):
            return FullDisk(f)
    return f


builtins.open = io.open = full_disk_open
sys.argv = ["dermadv", *sys.argv[1:]]
from dermadv.cli import main

main()
"""


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    cache = str(extra.pop("DERMADV_CACHE", tmp_path / "cache"))
    return {**os.environ, "DERMADV_CACHE": cache, "OMP_NUM_THREADS": "1", "COLUMNS": "200", **extra}


def on_a_full_disk(
    args: list[str], tmp_path: Path, *, below: Path, code: str = "ENOSPC", spare: str = "", cache: Path | None = None
) -> subprocess.CompletedProcess[str]:
    env = _env(tmp_path, FAULT_DIR=str(below), FAULT_ERRNO=code, FAULT_SPARE=spare)
    if cache is not None:
        env["DERMADV_CACHE"] = str(cache)
    return subprocess.run(
        [sys.executable, "-c", FULL_DISK, *args], capture_output=True, text=True, env=env, timeout=240, cwd=tmp_path
    )


def error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The one ``error:`` line of a command that exited 1 without a traceback."""
    assert result.returncode == 1, f"exit code {result.returncode}\n{result.stderr[-3000:]}"
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr[-3000:]
    return errors[0]


def leftovers(folder: Path) -> list[str]:
    """Temporary or hidden files (atomic writes' ``.name.XXXX.tmp``, the run lock) anywhere below ``folder``."""
    found = [p for p in folder.rglob("*") if p.name.startswith(".") or p.suffix == ".tmp"] if folder.exists() else []
    return sorted(str(p.relative_to(folder)) for p in found)


# --- a full disk, or a full quota


def test_a_disk_that_fills_during_evaluate_fails_the_run_in_one_line(
    tmp_path: Path, pipeline: Any, session_cache: Path
) -> None:
    """The outputs cannot be written, the manifest still can: it says failed, with the line's reason."""
    out = tmp_path / "eval"
    args = ["evaluate", "--checkpoint", str(pipeline.checkpoint), "--data", str(pipeline.data), "--out", str(out)]
    result = on_a_full_disk(args, tmp_path, below=out, spare="manifest", cache=session_cache)
    line = error_line(result)
    assert line.startswith(f"error: no space left on the device holding {out}{os.sep}"), line
    assert line.endswith("; free space or choose another --out"), line
    manifest = read_json(out / "manifest.json")
    assert manifest["status"] == "failed" and manifest["reason"] == line.removeprefix("error: ")
    assert leftovers(out) == []
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json"], "an output was half-written"


@pytest.mark.parametrize(
    ("code", "said"),
    [("ENOSPC", "no space left on the device holding"), ("EDQUOT", "disk quota exceeded on the device holding")],
)
def test_a_full_disk_before_the_manifest_leaves_no_run_folder(
    tmp_path: Path, pipeline: Any, session_cache: Path, code: str, said: str
) -> None:
    """Not even the manifest fits: the run folder the command made is removed, lock and temporary files with it."""
    out = tmp_path / "eval"
    args = ["evaluate", "--checkpoint", str(pipeline.checkpoint), "--data", str(pipeline.data), "--out", str(out)]
    line = error_line(on_a_full_disk(args, tmp_path, below=out, code=code, cache=session_cache))
    assert line == f"error: {said} {out / 'manifest.json'}; " + (
        "free space or choose another --out"
        if code == "ENOSPC"
        else "free space within your quota or choose another --out"
    )
    assert not out.exists()


def test_a_full_disk_under_data_split_names_the_csv(tmp_path: Path, synthetic_root: Path) -> None:
    folder = tmp_path / "splits"
    folder.mkdir()
    args = ["data", "split", "--data", str(synthetic_root), "--out", str(folder / "split.csv")]
    line = error_line(on_a_full_disk(args, tmp_path, below=folder))
    assert (
        line == f"error: no space left on the device holding {folder / 'split.csv'}; free space or choose another --out"
    )
    assert list(folder.iterdir()) == []


def test_a_full_cache_disk_points_at_dermadv_cache(tmp_path: Path, pipeline: Any) -> None:
    """The decode cache lives outside --out: the fix is another $DERMADV_CACHE, not another --out."""
    cache = tmp_path / "fresh-cache"
    out = tmp_path / "eval"
    args = ["evaluate", "--checkpoint", str(pipeline.checkpoint), "--data", str(pipeline.data), "--out", str(out)]
    line = error_line(on_a_full_disk(args, tmp_path, below=cache, cache=cache))
    assert line.startswith(f"error: no space left on the device holding {cache / 'decoded'}{os.sep}"), line
    assert line.endswith("; free space or point DERMADV_CACHE at a folder on another device"), line
    assert leftovers(cache) == [] and not out.exists()


def test_atomic_writes_leave_nothing_on_any_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``atomic_path`` removes its temporary file whatever stops the write, and names the file on a full disk."""
    from dermadv import runs

    target = tmp_path / "metrics.json"
    target.write_text("old")

    def full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(runs.os, "fsync", full)
    with pytest.raises(OSError) as info:
        runs.write_json(target, {"accuracy": 0.5})
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(target)
    monkeypatch.undo()
    for stop in (KeyboardInterrupt, ValueError):
        with pytest.raises(stop), runs.atomic_path(target) as tmp:
            tmp.write_text("half")
            raise stop
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]


# --- a read-only --out


def _without_root_override() -> list[str]:
    """A command prefix under which this process's user meets file permissions: none for a user, setpriv without
    the capabilities that let root write anywhere for root (skips the test where that cannot be had)."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    drop = [f"--{kind}=-dac_override,-dac_read_search" for kind in ("bounding-set", "inh-caps")]
    probe = "import os, sys, tempfile; d = tempfile.mkdtemp(); os.chmod(d, 0o555); w = os.access(d, os.W_OK)"
    probe += "; os.rmdir(d); sys.exit(w)"
    if setpriv is None or subprocess.run([setpriv, *drop, sys.executable, "-c", probe], timeout=60).returncode != 0:
        pytest.skip("running as root, which ignores file permissions (and setpriv cannot drop that)")
    return [setpriv, *drop]


def test_a_read_only_out_is_refused_before_any_work(tmp_path: Path, pipeline: Any) -> None:
    prefix = _without_root_override()
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    cache = tmp_path / "fresh-cache"
    try:
        for out in (locked / "eval", locked):
            args = ["evaluate", "--checkpoint", str(pipeline.checkpoint), "--data", str(pipeline.data)]
            result = subprocess.run(
                [*prefix, str(SCRIPT), *args, "--out", str(out)],
                capture_output=True,
                text=True,
                env=_env(tmp_path, DERMADV_CACHE=str(cache)),
                timeout=240,
            )
            assert error_line(result) == (
                f"error: --out {out} cannot be written: {locked} is read-only for your user; make it writable "
                f"(chmod u+w {locked}) or choose another --out"
            )
            assert not cache.exists(), "images were decoded before the read-only --out was refused"
        assert list(locked.iterdir()) == []
    finally:
        locked.chmod(0o755)


def test_an_out_on_a_read_only_file_system_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """What ``--out`` on a read-only mount is told, and that a writable, a missing-but-creatable and a help
    invocation pass (the check itself, as root ignores permissions and no test can mount)."""
    from dermadv.cli import faults

    assert faults.unwritable_out(["train", "--out", str(tmp_path / "a" / "b")]) is None
    assert faults.unwritable_out(["train", "--help", "--out", "/proc/nowhere"]) is None
    monkeypatch.setattr(faults.os, "access", lambda path, mode: False)
    monkeypatch.setattr(faults.os, "statvfs", lambda path: type("S", (), {"f_flag": os.ST_RDONLY})())
    assert faults.unwritable_out(["train", f"--out={tmp_path / 'run'}"]) == (
        f"--out {tmp_path / 'run'} cannot be written: {tmp_path} is on a read-only file system; choose another --out"
    )


def test_storage_errors_name_the_run_folder_when_the_write_names_no_file(tmp_path: Path) -> None:
    from dermadv.cli import faults
    from dermadv.runs import Run

    run = Run(tmp_path / "run", command="evaluate", config={})
    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert faults.storage_message(full, [run]) == (
        f"no space left on the device holding {tmp_path / 'run'}; free space or choose another --out"
    )
    readonly = OSError(errno.EROFS, os.strerror(errno.EROFS), str(tmp_path / "run" / "metrics.json"))
    assert faults.storage_message(readonly, [run]) == (
        f"{tmp_path / 'run' / 'metrics.json'} is on a read-only file system; choose another --out"
    )
    assert faults.storage_message(OSError(errno.ECONNRESET, "reset"), [run]) is None  # not a storage fault
    run.finish()


# --- a port already taken


@pytest.fixture()
def busy_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def _study(tmp_path: Path) -> Path:
    from PIL import Image

    from dermadv.observer.study import create_study

    rng = np.random.default_rng(0)
    folder = tmp_path / "adv"
    for kind in ("clean", "adv"):
        (folder / "images" / kind).mkdir(parents=True)
    for i in range(4):
        clean = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        Image.fromarray(clean).save(folder / "images" / "clean" / f"ISIC_{i:07d}.png")
        Image.fromarray(clean ^ 1).save(folder / "images" / "adv" / f"ISIC_{i:07d}.png")
    return create_study(folder, tmp_path / "study", n=4).path


@pytest.mark.parametrize("command", ["observer serve", "model serve"])
def test_a_port_in_use_is_one_line_not_uvicorns_exit_3(tmp_path: Path, busy_port: int, command: str) -> None:
    served = _study(tmp_path) if command == "observer serve" else tmp_path / "model.onnx"  # bound before it is read
    args = [*command.split(), str(served), "--port", str(busy_port)]
    result = subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, env=_env(tmp_path), timeout=120)
    assert error_line(result) == (
        f"error: port {busy_port} on 127.0.0.1 is already in use (another server, or this one still running); "
        "choose another --port"
    )
