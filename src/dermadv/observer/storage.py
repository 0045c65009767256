"""SQLite storage for a study: observers, their item orders and answers (WAL mode, one transaction per answer).

Every answer is committed (``synchronous=FULL``) before the server sends the next page, so a killed server loses
nothing; the database itself refuses a second answer for the same observer and item (``UNIQUE``), values outside
the design (``CHECK``) and items not assigned to the observer (foreign key).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from dermadv.data.classes import CLASSES
from dermadv.errors import ConfigError, DermadvError, RunError
from dermadv.runs import write_csv

ANSWERS = {"single": ("yes", "no"), "2afc": ("left", "right")}

_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE items (item_id TEXT PRIMARY KEY);
CREATE TABLE observers (
  observer_id INTEGER PRIMARY KEY,
  name TEXT NOT NULL UNIQUE,
  token_hash TEXT NOT NULL UNIQUE,
  invited_at TEXT NOT NULL
);
CREATE TABLE assignments (
  observer_id INTEGER NOT NULL REFERENCES observers(observer_id),
  position INTEGER NOT NULL,
  item_id TEXT NOT NULL REFERENCES items(item_id),
  served_at TEXT,
  PRIMARY KEY (observer_id, position),
  UNIQUE (observer_id, item_id)
);
CREATE TABLE answers (
  observer_id INTEGER NOT NULL,
  item_id TEXT NOT NULL,
  answer TEXT NOT NULL CHECK (answer IN ('yes', 'no', 'left', 'right')),
  confidence INTEGER NOT NULL CHECK (confidence BETWEEN 1 AND 5),
  diagnosis TEXT,
  answered_at TEXT NOT NULL,
  UNIQUE (observer_id, item_id),
  FOREIGN KEY (observer_id, item_id) REFERENCES assignments(observer_id, item_id)
);
"""


class AnswerError(DermadvError):
    """A submission the study refuses; nothing was stored."""


class InvalidAnswerError(AnswerError):
    """A value outside what the design allows (HTTP 422)."""


class AnswerConflictError(AnswerError):
    """An item already answered, or not the observer's current item (HTTP 409)."""


@dataclass(frozen=True)
class Observer:
    observer_id: int
    name: str


@dataclass(frozen=True)
class Progress:
    answered: int
    total: int

    @property
    def done(self) -> bool:
        return self.answered >= self.total


@dataclass(frozen=True)
class ObserverStatus:
    observer_id: int
    name: str
    answered: int
    total: int
    invited_at: str
    last_answer_at: str | None


@dataclass(frozen=True)
class Answer:
    observer_id: int
    observer: str
    item_id: str
    position: int
    answer: str
    confidence: int
    diagnosis: str | None
    served_at: str | None
    answered_at: str


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def validate_answer(
    design: str, answer: str, confidence: str | int, diagnosis: str | None
) -> tuple[str, int, str | None]:
    """Check one submission against the design; returns (answer, confidence, diagnosis or None)."""
    allowed = ANSWERS.get(design)
    if allowed is None:
        raise RunError(f"unknown study design {design!r} in the database")
    if answer not in allowed:
        raise InvalidAnswerError(f"answer must be one of {', '.join(allowed)}; got {answer!r}")
    # Exactly one digit: no " 3", "03", "+3" or "3.0", which a lenient int() would take as 3.
    if isinstance(confidence, bool) or str(confidence) not in ("1", "2", "3", "4", "5"):
        raise InvalidAnswerError(f"confidence must be a whole number from 1 to 5; got {confidence!r}")
    level = int(confidence)
    diagnosis = diagnosis or None
    if diagnosis is not None and (design != "single" or diagnosis not in CLASSES):
        expected = ", ".join(CLASSES) if design == "single" else "none in the 2afc design"
        raise InvalidAnswerError(f"diagnosis must be one of {expected}; got {diagnosis!r}")
    return answer, level, diagnosis


class StudyDB:
    """The answers database of one study; opens a short-lived connection per operation (thread-safe)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    @contextlib.contextmanager
    def _transaction(self, *, write: bool = False, create: bool = False) -> Iterator[sqlite3.Connection]:
        if not create and not self.path.exists():
            raise RunError(f"answers database {self.path} not found; is this a study folder from `observer create`?")
        conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        try:
            conn.execute("PRAGMA foreign_keys = ON")
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        finally:
            conn.close()

    def initialise(self, *, study_id: str, design: str, item_ids: Sequence[str]) -> None:
        """Create the schema (WAL mode) and register the study's items."""
        if self.path.exists():
            raise RunError(f"{self.path} already exists; a study database is initialised once")
        conn = sqlite3.connect(self.path, isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode = WAL")  # persistent: readers never block the writer
        finally:
            conn.close()
        with self._transaction(write=True) as conn:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.executemany("INSERT INTO meta VALUES (?, ?)", [("study_id", study_id), ("design", design)])
            conn.executemany("INSERT INTO items VALUES (?)", [(i,) for i in item_ids])

    def design(self) -> str:
        with self._transaction() as conn:
            return str(conn.execute("SELECT value FROM meta WHERE key = 'design'").fetchone()[0])

    def observer_count(self) -> int:
        with self._transaction() as conn:
            return int(conn.execute("SELECT COUNT(*) FROM observers").fetchone()[0])

    def add_observer(self, name: str, token_hash: str, order: Sequence[str]) -> int:
        """Register an observer and their item order; returns the observer id."""
        with self._transaction(write=True) as conn:
            if conn.execute("SELECT 1 FROM observers WHERE name = ?", (name,)).fetchone():
                raise ConfigError(f"observer {name!r} is already invited; choose another --name or pass --reissue")
            cur = conn.execute(
                "INSERT INTO observers (name, token_hash, invited_at) VALUES (?, ?, ?)", (name, token_hash, _now())
            )
            observer_id = int(cur.lastrowid or 0)
            conn.executemany(
                "INSERT INTO assignments (observer_id, position, item_id) VALUES (?, ?, ?)",
                [(observer_id, pos, item_id) for pos, item_id in enumerate(order)],
            )
        return observer_id

    def replace_token(self, name: str, token_hash: str) -> int:
        """Give an existing observer a new token; returns their id."""
        with self._transaction(write=True) as conn:
            row = conn.execute("SELECT observer_id FROM observers WHERE name = ?", (name,)).fetchone()
            if row is None:
                raise ConfigError(f"no observer named {name!r} to reissue; run `observer status` for the names")
            conn.execute("UPDATE observers SET token_hash = ? WHERE observer_id = ?", (token_hash, row[0]))
            return int(row[0])

    def observer_by_token_hash(self, token_hash: str) -> Observer | None:
        with self._transaction() as conn:
            row = conn.execute("SELECT observer_id, name FROM observers WHERE token_hash = ?", (token_hash,)).fetchone()
        return None if row is None else Observer(int(row[0]), str(row[1]))

    @staticmethod
    def _next(conn: sqlite3.Connection, observer_id: int) -> str | None:
        row = conn.execute(
            """SELECT a.item_id FROM assignments a
               LEFT JOIN answers r ON r.observer_id = a.observer_id AND r.item_id = a.item_id
               WHERE a.observer_id = ? AND r.item_id IS NULL ORDER BY a.position LIMIT 1""",
            (observer_id,),
        ).fetchone()
        return None if row is None else str(row[0])

    def progress(self, observer_id: int) -> Progress:
        with self._transaction() as conn:
            total = conn.execute("SELECT COUNT(*) FROM assignments WHERE observer_id = ?", (observer_id,)).fetchone()
            answered = conn.execute("SELECT COUNT(*) FROM answers WHERE observer_id = ?", (observer_id,)).fetchone()
        return Progress(int(answered[0]), int(total[0]))

    def serve_next(self, observer_id: int) -> str | None:
        """The observer's first unanswered item (None when done); records when it was first shown."""
        with self._transaction(write=True) as conn:
            item_id = self._next(conn, observer_id)
            if item_id is not None:
                conn.execute(
                    "UPDATE assignments SET served_at = ? WHERE observer_id = ? AND item_id = ? AND served_at IS NULL",
                    (_now(), observer_id, item_id),
                )
        return item_id

    def record_answer(
        self, observer_id: int, item_id: str, *, answer: str, confidence: str | int, diagnosis: str | None = None
    ) -> None:
        """Store the answer to the observer's current item, or raise and store nothing."""
        with self._transaction(write=True) as conn:
            design = str(conn.execute("SELECT value FROM meta WHERE key = 'design'").fetchone()[0])
            values = validate_answer(design, answer, confidence, diagnosis)
            done = conn.execute(
                "SELECT 1 FROM answers WHERE observer_id = ? AND item_id = ?", (observer_id, item_id)
            ).fetchone()
            if done:
                raise AnswerConflictError("this image was already answered; answers are final")
            if item_id != self._next(conn, observer_id):
                raise AnswerConflictError("this is not the current image; reload the page to continue")
            try:
                conn.execute(
                    "INSERT INTO answers (observer_id, item_id, answer, confidence, diagnosis, answered_at) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (observer_id, item_id, *values, _now()),
                )
            except sqlite3.IntegrityError as e:  # the database's own guard, should the checks above ever miss
                raise AnswerConflictError(f"answer refused by the database: {e}") from None

    def answers(self) -> list[Answer]:
        """All answers, by observer and position."""
        with self._transaction() as conn:
            rows = conn.execute(
                """SELECT r.observer_id, o.name, r.item_id, a.position, r.answer, r.confidence, r.diagnosis,
                          a.served_at, r.answered_at
                   FROM answers r JOIN observers o USING (observer_id)
                   JOIN assignments a ON a.observer_id = r.observer_id AND a.item_id = r.item_id
                   ORDER BY r.observer_id, a.position"""
            ).fetchall()
        return [Answer(int(r[0]), r[1], r[2], int(r[3]), r[4], int(r[5]), r[6], r[7], r[8]) for r in rows]

    def observers(self) -> list[ObserverStatus]:
        """Who has answered how many."""
        with self._transaction() as conn:
            rows = conn.execute(
                """SELECT o.observer_id, o.name, o.invited_at,
                          (SELECT COUNT(*) FROM answers r WHERE r.observer_id = o.observer_id),
                          (SELECT COUNT(*) FROM assignments a WHERE a.observer_id = o.observer_id),
                          (SELECT MAX(answered_at) FROM answers r WHERE r.observer_id = o.observer_id)
                   FROM observers o ORDER BY o.observer_id"""
            ).fetchall()
        return [ObserverStatus(int(r[0]), r[1], int(r[3]), int(r[4]), r[2], r[5]) for r in rows]

    def export_csv(self, path: str | os.PathLike[str]) -> int:
        """Write all answers as CSV (atomically); returns the number of rows."""
        rows = [
            {
                "observer": a.observer,
                "observer_id": a.observer_id,
                "position": a.position + 1,
                "item_id": a.item_id,
                "answer": a.answer,
                "confidence": a.confidence,
                "diagnosis": a.diagnosis or "",
                "served_at": a.served_at or "",
                "answered_at": a.answered_at,
            }
            for a in self.answers()
        ]
        fields = ["observer", "observer_id", "position", "item_id", "answer", "confidence", "diagnosis"]
        write_csv(path, rows, fieldnames=[*fields, "served_at", "answered_at"])
        return len(rows)
