"""A fencing-checking recorder shared by the chaos candidates (tests/test_chaos.py).

It stands for the downstream system a leader writes to: a small SQLite file that
accepts a write only if its fencing token is at least the highest token it has
accepted so far (so one term may write many times), checked and recorded in one
``BEGIN IMMEDIATE`` transaction. Every attempt is kept, accepted or not, with the
wall-clock time the writer issued it (:func:`time.time`, one clock for all processes
of the host), the time it arrived, and the writer's lease deadline as the writer saw
it when it issued the write.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Recorder", "Write"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS fence (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    highest INTEGER NOT NULL
);
INSERT OR IGNORE INTO fence VALUES (1, 0);
CREATE TABLE IF NOT EXISTS writes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    pid INTEGER NOT NULL,
    token INTEGER NOT NULL,
    issued REAL NOT NULL,
    arrived REAL NOT NULL,
    sent REAL NOT NULL,
    deadline REAL NOT NULL,
    accepted INTEGER NOT NULL,
    highest INTEGER NOT NULL,
    note TEXT NOT NULL
);
"""


@dataclass(frozen=True)
class Write:
    """One write attempt.

    Attributes:
        name: The candidate that sent it.
        pid: Its process id.
        token: The fencing token it carried.
        issued: When the candidate issued it (wall clock, before the transaction).
        arrived: When the recorder decided on it (wall clock, inside the transaction).
        sent: Wall-clock time the last successful acquire/renewal of the writer's
            term was sent, as the writer knew it (its deadline minus ttl - guard).
        deadline: The writer's lease deadline in wall-clock time, as it knew it.
        accepted: Whether the fence let it through.
        highest: The highest token accepted before it.
        note: ``body`` for the body's periodic writes, ``final`` for its last one.
    """

    name: str
    pid: int
    token: int
    issued: float
    arrived: float
    sent: float
    deadline: float
    accepted: bool
    highest: int
    note: str


class Recorder:
    """The fenced store, opened by each process that writes to it or reads it."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        # Writes run in trio worker threads, one at a time per process.
        self._conn = sqlite3.connect(self.path, timeout=30, isolation_level=None,
                                     check_same_thread=False)
        self._lock = threading.Lock()
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")

    @classmethod
    def create(cls, path: Path | str) -> Recorder:
        recorder = cls(path)
        recorder._conn.executescript(SCHEMA)
        return recorder

    def close(self) -> None:
        self._conn.close()

    def write(self, name: str, pid: int, token: int, issued: float, sent: float,
              deadline: float, note: str) -> bool:
        """Apply the write if *token* is not stale; record it either way."""
        with self._lock:
            conn = self._conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                (highest,) = conn.execute("SELECT highest FROM fence").fetchone()
                arrived = time.time()
                accepted = bool(token >= highest)
                if token > highest:
                    conn.execute("UPDATE fence SET highest = ?", (token,))
                conn.execute(
                    "INSERT INTO writes (name, pid, token, issued, arrived, sent, deadline,"
                    " accepted, highest, note) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (name, pid, token, issued, arrived, sent, deadline, int(accepted),
                     highest, note))
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            return accepted

    def writes(self) -> list[Write]:
        """Every attempt so far, in the order the recorder decided on them."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT name, pid, token, issued, arrived, sent, deadline, accepted, highest,"
                " note FROM writes ORDER BY seq").fetchall()
        return [Write(name, pid, token, issued, arrived, sent, deadline, bool(accepted),
                      highest, note)
                for name, pid, token, issued, arrived, sent, deadline, accepted, highest, note
                in rows]
