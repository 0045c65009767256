"""Run folders: atomic writes (no partial file survives a failed or killed writer) and manifest fields."""

from __future__ import annotations

import json
import math
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from dermadv.errors import RunError
from dermadv.runs import (
    LOCK_NAME,
    Run,
    RunManifest,
    abandon_runs,
    atomic_path,
    atomic_write_text,
    check_same_run,
    package_versions,
    read_json,
    read_run_manifest,
    require_complete,
    run_complete,
    watch_runs,
    write_csv,
    write_json,
)


class Boom(Exception):
    pass


def test_failed_writer_leaves_no_file(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "metrics.json"
    with pytest.raises(Boom), atomic_path(target) as tmp, open(tmp, "w") as f:
        f.write('{"half": ')
        raise Boom
    assert not target.exists()
    assert list(target.parent.iterdir()) == [], "the temporary file must be removed too"


def test_failed_writer_keeps_the_previous_file(tmp_path: Path) -> None:
    target = tmp_path / "history.csv"
    atomic_write_text(target, "epoch\n0\n")
    with pytest.raises(Boom), atomic_path(target) as tmp:
        tmp.write_text("epoch\n0\n1")
        raise Boom
    assert target.read_text() == "epoch\n0\n"
    assert [p.name for p in tmp_path.iterdir()] == ["history.csv"]


def test_unserialisable_json_leaves_no_file(tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    with pytest.raises(TypeError):
        write_json(target, {"x": object()})
    assert not target.exists() and not list(tmp_path.iterdir())


def test_killed_writer_leaves_no_file(tmp_path: Path) -> None:
    """SIGKILL in the middle of a write: the target name never appears, so nothing half-written is read later."""
    target = tmp_path / "model.safetensors"
    code = (
        "import sys, time\n"
        "from dermadv.runs import atomic_path\n"
        f"with atomic_path({str(target)!r}) as tmp, open(tmp, 'wb') as f:\n"
        "    f.write(b'x' * 100_000); f.flush()\n"
        "    print('writing', flush=True)\n"
        "    time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "writing"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not target.exists()
    leftovers = list(tmp_path.iterdir())
    assert all(p.name.startswith(".model.safetensors.") and p.name.endswith(".tmp") for p in leftovers)


def test_written_files_are_readable_by_others(tmp_path: Path) -> None:
    write_json(tmp_path / "a.json", {"a": 1})
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o644


def test_write_json_makes_strict_json(tmp_path: Path) -> None:
    path = tmp_path / "m.json"
    write_json(path, {"nan": math.nan, "inf": -math.inf, "np": np.float32(0.5), "arr": np.arange(3), "p": tmp_path})
    text = path.read_text()
    json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    assert read_json(path) == {"nan": None, "inf": None, "np": 0.5, "arr": [0, 1, 2], "p": str(tmp_path)}


def test_write_csv(tmp_path: Path) -> None:
    path = tmp_path / "h.csv"
    write_csv(path, [{"epoch": 0, "loss": np.float64(1.5)}, {"epoch": 1, "loss": math.nan}])
    assert path.read_text() == "epoch,loss\n0,1.5\n1,\n"
    write_csv(path, [], fieldnames=["a", "b"])
    assert path.read_text() == "a,b\n"


def test_manifest_fields(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", ["dermadv", "train", "--out", str(tmp_path)])
    run = Run(tmp_path / "run", command="train", config={"lr": 0.1, "out": tmp_path}, seed=3, data_fingerprint="fp")
    manifest = read_json(tmp_path / "run" / "manifest.json")
    assert manifest["status"] == "running" and not run_complete(tmp_path / "run")
    assert manifest["command"] == "train"
    assert manifest["argv"] == ["dermadv", "train", "--out", str(tmp_path)]
    assert manifest["config"] == {"lr": 0.1, "out": str(tmp_path)}
    assert manifest["seed"] == 3 and manifest["data_fingerprint"] == "fp"
    assert manifest["versions"] == package_versions()
    assert {"python", "torch", "numpy", "dermadv"} <= set(manifest["versions"])
    assert "git_commit" in manifest and "hardware" in manifest and "started" in manifest
    commit = manifest["git_commit"]
    assert commit is None or len(commit.removesuffix("-dirty")) == 40
    with run.stage("predict"):
        time.sleep(0.01)
    assert read_json(tmp_path / "run" / "manifest.json")["timings_s"]["predict"] >= 0.01
    run.finish(n_images=5)
    done = read_json(tmp_path / "run" / "manifest.json")
    assert done["status"] == "complete" and run_complete(tmp_path / "run")
    assert done["n_images"] == 5 and "finished" in done and done["timings_s"]["total"] >= 0.01


def test_stage_timing_is_kept_when_the_stage_fails(tmp_path: Path) -> None:
    run = Run(tmp_path, command="x", config={})
    with pytest.raises(Boom), run.stage("train"):
        raise Boom
    manifest = read_json(tmp_path / "manifest.json")
    assert "train" in manifest["timings_s"] and manifest["status"] == "running"


def test_run_without_write_touches_nothing(tmp_path: Path) -> None:
    run = Run(tmp_path / "rank1", command="train", config={}, write=False)
    run.finish()
    assert not (tmp_path / "rank1").exists()


def test_run_complete_on_odd_folders(tmp_path: Path) -> None:
    assert not run_complete(tmp_path / "missing")
    (tmp_path / "manifest.json").write_text('{"status": "comp')
    assert not run_complete(tmp_path)
    (tmp_path / "manifest.json").write_text('{"status": "complete"}')
    assert run_complete(tmp_path)


def test_unfinished_runs_are_marked_not_left_running(tmp_path: Path) -> None:
    outside = Run(tmp_path / "outside", command="test", config={})
    with watch_runs() as opened:
        pipeline = Run(tmp_path / "pipeline", command="test", config={})
        stage = Run(tmp_path / "pipeline" / "stage", command="test", config={})
        done = Run(tmp_path / "done", command="test", config={})
        done.finish()
        gone = Run(tmp_path / "gone", command="test", config={})
        (tmp_path / "gone" / "manifest.json").unlink()
        (tmp_path / "gone" / LOCK_NAME).unlink()
        (tmp_path / "gone").rmdir()
    assert opened == [pipeline, stage, done, gone]
    abandon_runs(opened, "interrupted", "stopped by Ctrl-C (SIGINT)")
    for folder in ("pipeline", "pipeline/stage"):
        manifest = read_json(tmp_path / folder / "manifest.json")
        assert manifest["status"] == "interrupted" and manifest["reason"] == "stopped by Ctrl-C (SIGINT)"
        assert "ended" in manifest and "total" in manifest["timings_s"]
        assert not run_complete(tmp_path / folder)
    assert read_json(tmp_path / "done" / "manifest.json")["status"] == "complete"
    assert not (tmp_path / "gone").exists()  # a folder removed on failure is not brought back
    assert read_json(tmp_path / "outside" / "manifest.json")["status"] == "running"  # not watched
    assert outside.manifest["status"] == "running"


# --- a run folder is one run ---


def _finished(folder: Path, command: str = "train", **config: object) -> dict[str, object]:
    run = Run(folder, command=command, config=config, data_fingerprint="data-a", fingerprints={"classifier": "clf-a"})
    run.finish()
    return read_json(folder / "manifest.json")


def test_a_rerun_with_other_settings_is_refused_in_one_line_naming_them(tmp_path: Path) -> None:
    before = _finished(tmp_path, image_size=64, lr=0.001, epochs=5, out="a")
    with pytest.raises(RunError) as info:
        new = {"image_size": 32, "lr": 0.001, "epochs": 6, "out": "b"}
        check_same_run(tmp_path, command="train", config=new, ignore=("out",))
    message = str(info.value)
    assert "\n" not in message and "image_size: 64 there, 32 now" in message and "epochs: 5 there, 6 now" in message
    assert "lr:" not in message and "out:" not in message  # equal, or ignored
    assert read_json(tmp_path / "manifest.json") == before  # refused: the finished manifest is untouched


def test_same_settings_pass_and_numbers_compare_by_value(tmp_path: Path) -> None:
    _finished(tmp_path, lr=0.001, warmup_epochs=1, size=[32, 32], weights=None)
    manifest = check_same_run(
        tmp_path, command="train", config={"lr": 1e-3, "warmup_epochs": 1.0, "size": (32, 32), "weights": None}
    )
    assert manifest is not None and manifest["status"] == "complete"
    assert check_same_run(tmp_path / "new", command="train", config={"lr": 1}) is None


def test_fingerprints_and_the_command_are_compared(tmp_path: Path) -> None:
    _finished(tmp_path, lr=0.1)
    with pytest.raises(RunError, match="classifier: 'clf-a' there, 'clf-b' now"):
        check_same_run(tmp_path, command="train", config={}, fingerprints={"classifier": "clf-b"})
    with pytest.raises(RunError, match="data: 'data-a' there, 'data-b' now"):
        check_same_run(tmp_path, command="train", config={}, fingerprints={"data": "data-b"})
    # a key the older manifest does not record is not compared
    check_same_run(tmp_path, command="train", config={"new_option": 3}, fingerprints={"data_content": "x"})
    with pytest.raises(RunError, match="holds a `dermadv train` run, not `attack fit`"):
        check_same_run(tmp_path, command="attack fit", config={})


def test_a_crashed_rerun_leaves_a_complete_folder_complete(tmp_path: Path) -> None:
    before = _finished(tmp_path, command="reproduce", preset="demo")
    with watch_runs() as opened:
        rerun = Run(tmp_path, command="reproduce", config={"preset": "demo"}, keep_complete=True)
        during = read_json(tmp_path / "manifest.json")  # what a reader (or a kill -9) sees meanwhile
        with rerun.stage("sweep"):
            pass
    assert during["status"] == "complete" and during["rerun"]["status"] == "running"
    abandon_runs(opened, "failed", "RuntimeError: out of memory")
    after = read_json(tmp_path / "manifest.json")
    assert after["status"] == "complete" and after["finished"] == before["finished"]
    assert after["rerun"]["status"] == "failed" and after["rerun"]["reason"] == "RuntimeError: out of memory"
    # a rerun that finishes writes its own complete manifest
    again = Run(tmp_path, command="reproduce", config={"preset": "demo"}, keep_complete=True)
    again.finish()
    final = read_json(tmp_path / "manifest.json")
    assert final["status"] == "complete" and "rerun" not in final and final["started"] == again.manifest["started"]


def test_an_unfinished_runs_output_is_refused_or_used_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model = tmp_path / "train" / "model.safetensors"
    Run(model.parent, command="train", config={}).abandon("interrupted", "stopped by Ctrl-C (SIGINT)")
    model.write_bytes(b"weights")
    with pytest.raises(RunError) as info:
        require_complete(model)
    assert "unfinished run" in str(info.value) and "says interrupted" in str(info.value)
    assert "--allow-incomplete" in str(info.value) and "\n" not in str(info.value)
    require_complete(model, allow_incomplete=True)
    assert "UNFINISHED" in caplog.text and str(model) in caplog.text
    require_complete(model.parent, allow_incomplete=True)  # a folder names its own manifest
    Run(tmp_path / "done", command="train", config={}).finish()
    require_complete(tmp_path / "done" / "model.safetensors")
    outside = tmp_path / "downloaded" / "model.safetensors"  # no manifest: not a dermadv run, taken as it is
    outside.parent.mkdir()
    require_complete(outside)


# --- one writer per run folder ---------------------------------------------------------------------------------


def _lock(folder: Path, pid: int, host: str | None = None) -> None:
    import platform

    folder.mkdir(parents=True, exist_ok=True)
    (folder / LOCK_NAME).write_text(json.dumps({"pid": pid, "host": host or platform.node(), "command": "train"}))


def test_a_folder_another_live_process_writes_is_refused(tmp_path: Path) -> None:
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        _lock(tmp_path / "run", other.pid)
        with pytest.raises(RunError, match=f"being written by train \\(pid {other.pid}"):
            Run(tmp_path / "run", command="train", config={})
        assert not (tmp_path / "run" / "manifest.json").exists()
    finally:
        other.kill()
        other.wait()


def test_a_stale_lock_is_taken_over_and_released_at_the_end(tmp_path: Path) -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    _lock(tmp_path / "run", gone.pid)
    run = Run(tmp_path / "run", command="train", config={})
    assert json.loads((tmp_path / "run" / LOCK_NAME).read_text())["pid"] == os.getpid()
    run.finish()
    assert not (tmp_path / "run" / LOCK_NAME).exists()


def test_a_folder_of_another_kind_of_run_is_refused(tmp_path: Path) -> None:
    Run(tmp_path / "clf", command="train", config={}).finish()
    with pytest.raises(RunError, match="holds a `train` run, not a `evaluate` one"):
        Run(tmp_path / "clf", command="evaluate", config={})
    assert read_json(tmp_path / "clf" / "manifest.json")["command"] == "train"
    (tmp_path / "file").write_text("x")
    with pytest.raises(RunError, match="is a file"):
        Run(tmp_path / "file", command="train", config={})


# --- the manifest, typed ---


def test_run_manifest_reads_what_run_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", ["dermadv", "train", "--out", str(tmp_path / "run")])
    config = {"lr": 0.1, "size": (32, 32)}
    fingerprints = {"classifier": "clf-a"}
    run = Run(
        tmp_path / "run", command="train", config=config, seed=3, data_fingerprint="fp", fingerprints=fingerprints
    )
    with run.stage("fit"):
        pass
    run.finish(epochs_run=4)
    written = read_json(tmp_path / "run" / "manifest.json")
    manifest = RunManifest.from_dict(written)
    named = ("command", "argv", "status", "seed", "data_fingerprint", "git_commit", "started", "finished")
    assert {k: getattr(manifest, k) for k in named} == {k: written[k] for k in named}
    for key in ("config", "versions", "hardware", "timings_s"):
        assert getattr(manifest, key) == written[key], key
    assert manifest.config == {"lr": 0.1, "size": [32, 32]} and set(manifest.timings_s) == {"fit", "total"}
    assert manifest.extra == {"classifier_fingerprint": "clf-a", "epochs_run": 4}
    assert manifest.complete and manifest.reason is None and manifest.rerun is None
    assert read_run_manifest(tmp_path / "run") == manifest and read_run_manifest(tmp_path / "none") is None


def test_run_manifest_of_an_unfinished_rerun_and_of_odd_files(tmp_path: Path) -> None:
    _finished(tmp_path, command="reproduce", preset="demo")
    with watch_runs() as opened:
        Run(tmp_path, command="reproduce", config={"preset": "demo"}, keep_complete=True)
    abandon_runs(opened, "interrupted", "stopped by Ctrl-C (SIGINT)")
    manifest = read_run_manifest(tmp_path)
    assert manifest is not None and manifest.complete and manifest.rerun is not None
    assert (manifest.rerun.status, manifest.rerun.reason) == ("interrupted", "stopped by Ctrl-C (SIGINT)")
    assert manifest.rerun.command is None and manifest.rerun.ended is not None
    # an older or hand-edited manifest: what is missing or of the wrong type reads as absent
    assert RunManifest.from_dict({}) == RunManifest()
    odd = RunManifest.from_dict({"argv": "dermadv train", "seed": True, "config": None, "timings_s": {"a": "x"}})
    assert (odd.argv, odd.seed, odd.config, odd.timings_s, odd.extra) == ([], None, {}, {}, {})
