"""Run folders: manifest, atomic writes, resumable outputs."""

from __future__ import annotations

import atexit
import contextlib
import csv
import dataclasses
import errno
import io
import json
import logging
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

import numpy as np

from dermadv.errors import RunError
from dermadv.proportions import Proportion

log = logging.getLogger(__name__)

_VERSIONED = (
    "dermadv",
    "torch",
    "torchvision",
    "numpy",
    "scikit-learn",
    "scipy",
    "statsmodels",
    "scikit-image",
    "safetensors",
)


def _to_jsonable(obj: Any) -> Any:
    if isinstance(obj, Proportion):
        return _to_jsonable(obj.to_dict())  # its interval, or its counts where it has none
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {str(k): _to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_to_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, float) and (obj != obj or obj in (float("inf"), float("-inf"))):
        return None
    return obj


#: errno values of a write the file system refuses: full disk, quota, read-only mount, permissions
STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM})


def _naming(exc: OSError, path: Path, tmp: Path | None) -> OSError:
    """``exc`` as raised, or, for a storage fault that names no file or only the temporary one, the same error
    naming ``path``: a failed ``write`` carries no file name, and the temporary name means nothing to a user."""
    if exc.errno not in STORAGE_ERRNOS or exc.filename not in (None, str(tmp) if tmp else None):
        return exc
    return OSError(exc.errno, exc.strerror or os.strerror(exc.errno), str(path))


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; move it into place only on success.

    On any failure (an exception, Ctrl-C, a full disk) the temporary file is removed and ``path`` is left as it
    was; a storage fault (``STORAGE_ERRNOS``) is raised naming ``path``.
    """
    path = Path(path)
    tmp_path: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        tmp_path = Path(tmp)
        os.close(fd)
        yield tmp_path
        os.chmod(tmp_path, 0o644)  # mkstemp makes 0600 files; outputs are meant to be shared
        os.replace(tmp_path, path)
    except OSError as exc:
        named = _naming(exc, path, tmp_path)
        if named is exc:
            raise
        raise named from exc
    finally:
        if tmp_path is not None:
            with contextlib.suppress(OSError):  # gone already (replaced), or its folder went: nothing to undo
                tmp_path.unlink(missing_ok=True)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write JSON atomically (NaN/inf become null so any reader can parse it)."""
    atomic_write_text(path, json.dumps(_to_jsonable(obj), indent=2, sort_keys=False) + "\n")


def read_json(path: str | os.PathLike[str]) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def write_csv(
    path: str | os.PathLike[str], rows: Sequence[Mapping[str, Any]], fieldnames: Sequence[str] | None = None
) -> None:
    """Write rows of dicts as CSV atomically."""
    if fieldnames is None:
        fieldnames = list(rows[0].keys()) if rows else []
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(fieldnames), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _to_jsonable(v) for k, v in row.items()})
    atomic_write_text(path, buf.getvalue())


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in _VERSIONED:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def git_commit() -> str | None:
    """The commit of the dermadv source tree, if it is a git checkout."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        return out + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def hardware() -> dict[str, Any]:
    info: dict[str, Any] = {"platform": platform.platform(), "cpu_count": os.cpu_count()}
    try:
        import torch

        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["cuda_devices"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except ImportError:  # pragma: no cover
        pass
    return info


#: Lists that :func:`watch_runs` fills with every run opened while it is active.
_watchers: list[list[Run]] = []

#: the lock file a writing process keeps in its run folder (hidden: readers of the folder skip it)
LOCK_NAME = ".dermadv.lock"
_held: set[Path] = set()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def lock_holder(folder: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The live process (pid, host, command) writing ``folder``, or None (no lock, ours, or a stale one)."""
    path = Path(folder) / LOCK_NAME
    try:
        holder = json.loads(path.read_text())
        pid, host = int(holder["pid"]), str(holder["host"])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        return None  # unreadable: a writer killed while writing it, treated as stale
    if host == platform.node() and (pid == os.getpid() or not _pid_alive(pid)):
        return None
    return holder


def check_unlocked(folder: str | os.PathLike[str]) -> None:
    """Refuse a folder another live process is writing (before anything in it is touched)."""
    holder = lock_holder(folder)
    if holder is not None:
        raise RunError(
            f"{folder} is being written by {holder.get('command', 'another dermadv command')} (pid {holder['pid']} on "
            f"{holder['host']}); wait for it to finish or choose another --out (if that process is gone, remove "
            f"{Path(folder) / LOCK_NAME})"
        )


def acquire_lock(folder: Path, command: str) -> None:
    """Take the folder's lock for this process: one writer per run folder; a stale lock is taken over."""
    check_unlocked(folder)
    path = folder / LOCK_NAME
    body = json.dumps({"pid": os.getpid(), "host": platform.node(), "command": command})
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:  # stale (checked above) or our own: replace it
        path.write_text(body)
    else:
        try:
            with os.fdopen(fd, "w") as f:
                f.write(body)
        except BaseException:  # a full disk: no empty lock left behind to puzzle the next run
            with contextlib.suppress(OSError):
                path.unlink()
            raise
    _held.add(path)


def release_lock(folder: Path) -> None:
    path = folder / LOCK_NAME
    if path in _held:
        _held.discard(path)
        with contextlib.suppress(OSError):
            holder = json.loads(path.read_text())
            if int(holder.get("pid", -1)) == os.getpid():
                path.unlink()


def _release_all() -> None:
    for path in list(_held):
        release_lock(path.parent)


atexit.register(_release_all)

#: Manifest status of a run that did not finish: stopped by Ctrl-C, or ended by an error.
Unfinished = Literal["interrupted", "failed"]


def redacted_argv(argv: list[str]) -> list[str]:
    """The command line with every URL's user:password, query string and fragment removed (where tokens hide)."""
    from urllib.parse import urlsplit, urlunsplit

    out = []
    for arg in argv:
        if arg.startswith(("http://", "https://")):
            parts = urlsplit(arg)
            host = (parts.hostname or "") + (f":{parts.port}" if parts.port else "")
            arg = urlunsplit((parts.scheme, host, parts.path, "", ""))
        out.append(arg)
    return out


class Run:
    """A run folder with its ``manifest.json``.

    The manifest is written when the run starts (``status: running``) and rewritten at the end
    (``status: complete``), so a folder whose manifest does not say complete is known unfinished.
    A run that stops early is marked ``interrupted`` or ``failed`` by :meth:`abandon`.
    """

    def __init__(
        self,
        out: str | os.PathLike[str],
        *,
        command: str,
        config: Any,
        seed: int | None = None,
        data_fingerprint: str | None = None,
        fingerprints: Mapping[str, str | None] | None = None,
        keep_complete: bool = False,
        write: bool = True,
    ) -> None:
        self.dir = Path(out)
        self.write = write
        self.t0 = time.time()
        self.timings: dict[str, float] = {}
        self.finished = False
        self.manifest: dict[str, Any] = {
            "command": command,
            "argv": redacted_argv(sys.argv),
            "config": _to_jsonable(config),
            "seed": seed,
            "data_fingerprint": data_fingerprint,
            **{f"{name}_fingerprint": value for name, value in (fingerprints or {}).items()},
            "versions": package_versions(),
            "git_commit": git_commit(),
            "hardware": hardware(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "status": "running",
        }
        # A rerun that skips the finished stages of a complete folder leaves it complete until it finishes itself
        # (even through kill -9): meanwhile the manifest on disk is the previous one, with this rerun under "rerun".
        previous = read_manifest(self.dir) if keep_complete else None
        self.previous = previous if previous is not None and previous.get("status") == "complete" else None
        if write:
            if self.dir.exists() and not self.dir.is_dir():
                raise RunError(f"--out {self.dir} is a file; pass a folder for the run")
            existing = read_manifest(self.dir) if self.dir.is_dir() else None
            if existing is not None and existing.get("command") not in (None, command):
                raise RunError(
                    f"{self.dir} holds a `{existing.get('command')}` run, not a `{command}` one; choose another --out"
                )
            created = not self.dir.exists()
            self.dir.mkdir(parents=True, exist_ok=True)
            try:
                acquire_lock(self.dir, command)
                self._save()
            except BaseException:  # e.g. a full disk: leave no lock, nor the empty folder this run made
                release_lock(self.dir)
                if created:
                    with contextlib.suppress(OSError):
                        self.dir.rmdir()
                raise
            for opened in _watchers:
                opened.append(self)

    @property
    def path(self) -> Path:
        return self.dir

    def _save(self) -> None:
        if not self.write:
            return
        self.manifest["timings_s"] = dict(self.timings)
        shown = self.manifest
        if self.previous is not None and not self.finished:
            keys = ("status", "reason", "argv", "started", "ended", "timings_s")
            shown = {**self.previous, "rerun": {k: self.manifest[k] for k in keys if k in self.manifest}}
        write_json(self.dir / "manifest.json", shown)

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time a stage; the timing lands in the manifest."""
        t = time.time()
        try:
            yield
        finally:
            self.timings[name] = round(time.time() - t, 3)
            self._save()

    def update(self, **fields: Any) -> None:
        self.manifest.update(_to_jsonable(fields))
        self._save()

    def finish(self, **fields: Any) -> None:
        self.timings["total"] = round(time.time() - self.t0, 3)
        self.manifest.update(_to_jsonable(fields))
        self.manifest["status"] = "complete"
        self.manifest["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        self.finished = True
        self._save()
        release_lock(self.dir)

    def abandon(self, status: Unfinished, reason: str) -> None:
        """Record that the run stopped before :meth:`finish`, so no reader mistakes it for one still running.

        A rerun opened with ``keep_complete`` on a complete folder records the stop under ``rerun`` and leaves the
        folder complete.
        """
        if self.finished or not self.dir.is_dir():  # a folder removed on failure stays removed
            return
        self.timings["total"] = round(time.time() - self.t0, 3)
        self.manifest.update(status=status, reason=reason, ended=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        try:
            self._save()
        finally:  # even when the manifest cannot be written (a full disk): the folder is no longer being written
            release_lock(self.dir)


@contextlib.contextmanager
def watch_runs() -> Iterator[list[Run]]:
    """Collect every :class:`Run` opened inside the block, so a caller can :meth:`~Run.abandon` the unfinished."""
    opened: list[Run] = []
    _watchers.append(opened)
    try:
        yield opened
    finally:
        _watchers.remove(opened)


def abandon_runs(opened: Sequence[Run], status: Unfinished, reason: str) -> None:
    """Mark the unfinished runs among ``opened``, inner runs first."""
    for run in reversed(opened):
        with contextlib.suppress(OSError):  # a read-only or vanished folder must not hide the original error
            run.abandon(status, reason)


def file_fingerprint(path: str | os.PathLike[str]) -> str:
    """First 16 hex digits of the file's SHA-256: ties an output to the exact checkpoint it was made with."""
    import hashlib

    h = hashlib.sha256()
    with open(Path(path), "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def read_manifest(folder: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The ``manifest.json`` of a run folder; None when there is none (or it cannot be read as a JSON object)."""
    try:
        manifest = read_json(Path(folder) / "manifest.json")
    except (OSError, ValueError):  # ValueError: not JSON, or not UTF-8 text
        return None
    return manifest if isinstance(manifest, dict) else None


@dataclasses.dataclass(frozen=True)
class RunManifest:
    """A run folder's ``manifest.json`` as :class:`Run` writes it, typed for readers.

    Every field may be absent (an older version wrote fewer keys); a value of the wrong type reads as absent.
    The keys this class does not name (``epochs_run``, ``classifier_fingerprint``, whatever a command's
    :meth:`Run.finish` adds) are kept in ``extra``.
    """

    command: str | None = None
    argv: list[str] = dataclasses.field(default_factory=list)  # redacted (:func:`redacted_argv`)
    status: str | None = None  # running, complete, interrupted or failed
    reason: str | None = None  # why an unfinished run stopped
    seed: int | None = None
    data_fingerprint: str | None = None
    git_commit: str | None = None
    started: str | None = None
    finished: str | None = None
    ended: str | None = None  # when an unfinished run stopped
    config: dict[str, Any] = dataclasses.field(default_factory=dict)  # the resolved settings, as the command has them
    versions: dict[str, str] = dataclasses.field(default_factory=dict)
    hardware: dict[str, Any] = dataclasses.field(default_factory=dict)
    timings_s: dict[str, float] = dataclasses.field(default_factory=dict)
    rerun: RunManifest | None = None  # a rerun into this complete folder that has not finished
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return self.status == "complete"

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RunManifest:
        """Read a manifest as :func:`read_manifest` returns it."""

        def text(key: str) -> str | None:
            value = d.get(key)
            return None if value is None else str(value)

        def mapping(key: str) -> dict[str, Any]:
            value = d.get(key)
            return dict(value) if isinstance(value, Mapping) else {}

        argv, seed, rerun = d.get("argv"), d.get("seed"), d.get("rerun")
        named = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        return cls(
            command=text("command"),
            argv=[str(a) for a in argv] if isinstance(argv, list) else [],
            status=text("status"),
            reason=text("reason"),
            seed=seed if isinstance(seed, int) and not isinstance(seed, bool) else None,
            data_fingerprint=text("data_fingerprint"),
            git_commit=text("git_commit"),
            started=text("started"),
            finished=text("finished"),
            ended=text("ended"),
            config=mapping("config"),
            versions={str(k): str(v) for k, v in mapping("versions").items()},
            hardware=mapping("hardware"),
            timings_s={
                str(k): float(v)
                for k, v in mapping("timings_s").items()
                if isinstance(v, (int, float)) and not isinstance(v, bool)
            },
            rerun=cls.from_dict(rerun) if isinstance(rerun, Mapping) else None,
            extra={k: v for k, v in d.items() if k not in named},
        )


def read_run_manifest(folder: str | os.PathLike[str]) -> RunManifest | None:
    """:func:`read_manifest`, typed."""
    manifest = read_manifest(folder)
    return None if manifest is None else RunManifest.from_dict(manifest)


def run_complete(folder: str | os.PathLike[str]) -> bool:
    manifest = read_manifest(folder)
    return manifest is not None and manifest.get("status") == "complete"


def _shown(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def check_same_run(
    out: str | os.PathLike[str],
    *,
    command: str,
    config: Any,
    ignore: Sequence[str] = (),
    fingerprints: Mapping[str, str | None] | None = None,
) -> dict[str, Any] | None:
    """Refuse to continue or rerun into ``out`` when its manifest records another command or other settings.

    A run folder holds one run: every key of the resolved ``config`` (except ``ignore``: output paths, progress
    bars, speed-only switches) must equal the manifest's, and so must each ``fingerprints`` entry (data, classifier:
    what a path names, compared by content) that both sides record. Keys an older manifest lacks are not compared.
    Returns the manifest (None when ``out`` holds none).
    """
    previous = read_manifest(out)
    if previous is None:
        return None
    if previous.get("command") != command:
        raise RunError(f"{out} holds a `dermadv {previous.get('command')}` run, not `{command}`; choose another --out")
    old, new = previous.get("config") or {}, _to_jsonable(config)
    differing = [(k, old[k], new[k]) for k in new if k in old and k not in ignore and not _same(old[k], new[k])]
    for name, now in (fingerprints or {}).items():
        was = previous.get(f"{name}_fingerprint")
        if was is not None and now is not None and was != now:  # None: not recorded, as by older versions
            differing.append((name, was, now))
    if differing:
        listed = "; ".join(f"{k}: {_shown(was)} there, {_shown(now)} now" for k, was, now in differing)
        raise RunError(
            f"{out} holds a `dermadv {command}` run with other settings ({listed}); "
            "rerun with the same settings or choose another --out"
        )
    return previous


def _same(was: Any, now: Any) -> bool:
    numbers = (int, float)
    if (
        isinstance(was, numbers)
        and isinstance(now, numbers)
        and not isinstance(was, bool)
        and not isinstance(now, bool)
    ):
        return math.isclose(was, now, rel_tol=1e-9)
    return bool(was == now)


def require_complete(path: str | os.PathLike[str], *, allow_incomplete: bool = False, fix: str | None = None) -> None:
    """Refuse an output (a checkpoint, a generator, an attack folder) of a run that did not finish.

    The run is the one whose ``manifest.json`` sits in ``path`` (a folder) or beside it (a file); a path outside
    any run folder is taken as it is. With ``allow_incomplete`` the output is used, with a warning.
    """
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    if not (folder / "manifest.json").exists():
        return
    manifest = read_manifest(folder)
    status = manifest.get("status") if manifest else "unreadable"
    if status == "complete":
        return
    what = f"{path} is the output of an unfinished run ({folder / 'manifest.json'} says {status})"
    if not allow_incomplete:
        raise RunError(
            f"{what}; "
            + (
                fix
                or "finish that run first (train and attack fit continue with --resume) "
                "or pass --allow-incomplete to use it anyway"
            )
        )
    log.warning("USING AN UNFINISHED RUN'S OUTPUT: %s; its results may be partial", what)
