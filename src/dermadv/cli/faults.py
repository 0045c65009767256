"""Operating-system faults told in one line: a full disk, a quota, a read-only or forbidden path.

The library raises the ``OSError`` as it comes (:func:`dermadv.runs.atomic_path` names the file it was writing);
the CLI turns it into what is wrong, where, and the fix.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Sequence
from pathlib import Path

from dermadv.runs import STORAGE_ERRNOS, Run


def _cache_root() -> Path:
    from dermadv.data.cache import cache_root

    return cache_root()


def _under(path: Path, folder: Path) -> bool:
    try:
        return path.resolve().is_relative_to(folder.resolve())
    except OSError:
        return False


def storage_message(exc: OSError, opened: Sequence[Run] = ()) -> str | None:
    """One line for a full, over-quota, read-only or forbidden file system; None for any other ``OSError``.

    The path is the file the error names or, for a write that names none, the folder of the innermost run still
    open (``opened``, as collected by :func:`dermadv.runs.watch_runs`).
    """
    if exc.errno not in STORAGE_ERRNOS:
        return None
    named = exc.filename2 or exc.filename
    if named is None:
        unfinished = [run.dir for run in opened if not run.finished]
        if not unfinished and exc.errno in (errno.EACCES, errno.EPERM):
            return None  # not a file (a signal, a socket): the traceback says more than a guess would
        where = unfinished[-1] if unfinished else Path.cwd()
    else:
        where = Path(os.fsdecode(named))
    in_cache = _under(where, _cache_root())
    elsewhere = "point DERMADV_CACHE at a folder on another device" if in_cache else "choose another --out"
    if exc.errno == errno.ENOSPC:
        return f"no space left on the device holding {where}; free space or {elsewhere}"
    if exc.errno == errno.EDQUOT:
        return f"disk quota exceeded on the device holding {where}; free space within your quota or {elsewhere}"
    if exc.errno == errno.EROFS:
        return f"{where} is on a read-only file system; {elsewhere}"
    if where.exists() and not where.is_dir() and not os.access(where, os.R_OK):
        return f"permission denied reading {where}; make it readable for your user (chmod u+r {where})"
    folder = where if where.is_dir() else where.parent
    return f"permission denied writing {where}; make {folder} writable for your user (chmod u+w) or {elsewhere}"


def _out_values(argv: Sequence[str]) -> list[str]:
    values = [argv[i + 1] for i, arg in enumerate(argv[:-1]) if arg == "--out"]
    return values + [arg.split("=", 1)[1] for arg in argv if arg.startswith("--out=")]


def unwritable_out(argv: Sequence[str]) -> str | None:
    """One line when an ``--out`` of ``argv`` cannot be written (a read-only folder or file system), else None.

    Checked before the command starts, so a read-only output is refused before minutes of work rather than at
    the first write. The folder checked is the one the command writes in: ``--out`` itself when it is a folder,
    else the nearest folder above it that exists (where it would be created).
    """
    if "--help" in argv:
        return None
    for value in _out_values(argv):
        path = Path(value).expanduser()
        folder = path if path.is_dir() else path.parent
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
        if not folder.is_dir() or os.access(folder, os.W_OK | os.X_OK):
            continue
        if os.statvfs(folder).f_flag & os.ST_RDONLY:
            return f"--out {value} cannot be written: {folder} is on a read-only file system; choose another --out"
        return (
            f"--out {value} cannot be written: {folder} is read-only for your user; make it writable "
            f"(chmod u+w {folder}) or choose another --out"
        )
    return None
