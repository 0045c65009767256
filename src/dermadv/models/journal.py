"""A query journal: every answer a black-box model gave, appended to a file in the run folder as it comes.

A run that is stopped (Ctrl-C, ``kill -9``, a lost machine) and started again with the same seed and settings asks
the same queries in the same order, since the attacks are seeded; those a previous run had answered are read back
from the journal instead of being sent (and paid for) again, and the run goes on live where the journal ends.

File format (little-endian), one file per model and run folder::

    header   8 bytes  magic b"DADVQJ1\\n"
             4 bytes  uint32 width: scores per answer (the model's classes)
             4 bytes  uint32 reserved (0)
            16 bytes  blake2b-128 of the model's identity (fingerprint and card): a journal of another model is refused
    record  16 bytes  blake2b-128 of the exact model input (one image, its dtype and shape)
             4·width  float32 scores: the model's answer, as the attack saw it
             4 bytes  uint32 CRC-32 of the 16 + 4·width bytes before it

Records of one model call are written at once, flushed and fsynced, so a killed process loses at most the call in
flight; a torn or corrupt record at the end (and anything after it) is dropped on opening.
"""

from __future__ import annotations

import hashlib
import logging
import os
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from dermadv.errors import RunError

log = logging.getLogger(__name__)

MAGIC = b"DADVQJ1\n"
HEADER_SIZE = 32
KEY_SIZE = 16


def digest(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=KEY_SIZE).digest()


def image_keys(images: np.ndarray) -> list[bytes]:
    """One key per image of a batch: the digest of its bytes, dtype and shape (the exact model input)."""
    images = np.ascontiguousarray(images)
    tag = f"{images.dtype.str}{images.shape[1:]}".encode()
    return [digest(tag + image.tobytes()) for image in images]


class QueryJournal:
    """The answers of one model in one run folder: :meth:`replay` what an earlier run answered, :meth:`record`
    what this one is answered.

    Only the records found on opening are replayed: a query this process repeats goes to the model again, as it
    would without a journal, so a run that does not resume spends exactly what it always did.

    Args:
        path: the journal file (created with its header when missing).
        width: scores per answer.
        identity: what the answers depend on (the model's fingerprint and card); a file of another is refused.
        sync: fsync after each call's records (off only where durability does not matter, as in tests).
    """

    def __init__(self, path: str | os.PathLike[str], *, width: int, identity: str, sync: bool = True) -> None:
        if width < 1:
            raise ValueError(f"width must be at least 1; got {width}")
        self.path = Path(path)
        self.width = int(width)
        self.sync = sync
        self.record_size = KEY_SIZE + 4 * self.width + 4
        self._header = MAGIC + np.array([self.width, 0], dtype="<u4").tobytes() + digest(identity.encode())
        self._index: dict[bytes, int] = {}
        self._rows = np.zeros((0, self.width), dtype=np.float32)
        self.dropped = 0  # bytes of a torn or corrupt tail removed on opening
        self._load()
        self._file = open(self.path, "ab")  # noqa: SIM115 (kept open for the run; closed by close())

    @property
    def replayable(self) -> int:
        """Distinct answers an earlier run left, that this one may replay."""
        return len(self._index)

    def _load(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = self.path.read_bytes() if self.path.exists() else b""
        if len(data) < HEADER_SIZE:  # new, or killed before its header was whole
            with open(self.path, "wb") as f:
                f.write(self._header)
                f.flush()
                os.fsync(f.fileno())
            return
        if data[: len(MAGIC)] != MAGIC:
            raise RunError(f"{self.path} is not a dermadv query journal; remove it or choose another --out")
        if data[:HEADER_SIZE] != self._header:
            raise RunError(
                f"{self.path} holds the answers of another model (or another card for it); remove it to query this "
                "one from the start, or choose another --out"
            )
        body = data[HEADER_SIZE:]
        n = len(body) // self.record_size
        dtype = np.dtype([("key", f"V{KEY_SIZE}"), ("row", "<f4", (self.width,)), ("crc", "<u4")])
        records = np.frombuffer(body, dtype=dtype, count=n)
        good = n
        for i in range(n):
            start = i * self.record_size
            if zlib.crc32(body[start : start + self.record_size - 4]) != int(records["crc"][i]):
                good = i
                break
        end = HEADER_SIZE + good * self.record_size
        if end < len(data):
            self.dropped = len(data) - end
            log.warning("%s: dropped %d bytes of a torn or corrupt last record", self.path, self.dropped)
            with open(self.path, "r+b") as f:
                f.truncate(end)
                f.flush()
                os.fsync(f.fileno())
        self._rows = np.array(records["row"][:good], dtype=np.float32)
        keys = records["key"][:good].tobytes()
        # a key answered twice keeps its last answer
        self._index = {keys[i * KEY_SIZE : (i + 1) * KEY_SIZE]: i for i in range(good)}

    def replay(self, keys: Sequence[bytes]) -> tuple[np.ndarray, np.ndarray]:
        """For each key, whether an earlier run's answer is here (N bools) and that answer (N×width; zeros if not)."""
        where = np.array([self._index.get(k, -1) for k in keys], dtype=np.int64)
        found = where >= 0
        rows = np.zeros((len(keys), self.width), dtype=np.float32)
        rows[found] = self._rows[where[found]]
        return found, rows

    def record(self, keys: Sequence[bytes], rows: np.ndarray) -> None:
        """Append the answers of one model call, durably (flush and fsync) before the call returns."""
        rows = np.asarray(rows, dtype="<f4")
        if rows.shape != (len(keys), self.width):
            raise ValueError(f"rows must be {len(keys)}×{self.width}; got {rows.shape}")
        parts = []
        for key, row in zip(keys, rows, strict=True):
            payload = key + row.tobytes()
            parts.append(payload + zlib.crc32(payload).to_bytes(4, "little"))
        self._file.write(b"".join(parts))
        self._file.flush()
        if self.sync:
            os.fsync(self._file.fileno())

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()

    def __enter__(self) -> QueryJournal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"QueryJournal({str(self.path)!r}, width={self.width}, replayable={self.replayable})"


__all__ = ["QueryJournal", "image_keys"]
