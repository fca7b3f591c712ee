"""The SQLite file behind :class:`~trio_noleader.SQLiteBackend`: schema, opening, rows.

Plain synchronous functions over one ``sqlite3`` connection, run in worker threads
by the backend (:mod:`trio_noleader._sqlite`). The layout is described there.
"""

from __future__ import annotations

import os
import sqlite3
import time
from dataclasses import dataclass

from ._exceptions import BackendUnavailable
from ._types import Entry

__all__ = [
    "SCHEMA_VERSION",
    "Row",
    "bump",
    "created_of",
    "first_revision",
    "identity_of",
    "is_busy",
    "live_keys",
    "live_row",
    "prepare_patiently",
    "read_row",
]

SCHEMA_VERSION = 1

#: Seconds an open keeps trying while other processes set the file up, at least.
OPEN_PATIENCE = 10.0

SCHEMA = """
CREATE TABLE IF NOT EXISTS noleader_counter (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    revision INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS noleader_store (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS noleader_lease (
    key TEXT PRIMARY KEY,
    value BLOB NOT NULL,
    revision INTEGER NOT NULL,
    term INTEGER NOT NULL,
    expires_at REAL NOT NULL
);
"""


def first_revision() -> int:
    """The first revision of a store created now: the wall clock in microseconds.

    A file deleted or replaced and made anew starts above every revision the old
    one handed out, so fencing tokens keep growing (while the wall clock does not
    step back and the old file took fewer than a million writes a second). Far
    below 2**63.
    """
    return time.time_ns() // 1000


def is_busy(exc: sqlite3.OperationalError) -> bool:
    """True if *exc* means another connection holds the lock."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
    return "locked" in str(exc) or "busy" in str(exc)



@dataclass(frozen=True, slots=True)
class Row:
    """The row of a key as one read saw it, live or not."""

    #: The live entry, or None if the row has expired or was deleted.
    entry: Entry | None
    revision: int
    term: int
    #: The entry's expiry, as seconds from the moment of the read (0 if not live).
    remaining: float



def prepare_patiently(conn: sqlite3.Connection, path: str,
                       busy_timeout: float) -> None:
    """:meth:`_prepare`, tried again while another process holds the file.

    Several processes opening a fresh file at once race for the switch to WAL
    and the schema's creation, and SQLite does not call the busy handler for
    every step of those (``PRAGMA journal_mode`` can fail at once with
    "database is locked"). Each step is safe to repeat.
    """
    deadline = time.monotonic() + max(busy_timeout, OPEN_PATIENCE)
    while True:
        try:
            prepare(conn, path)
            return
        except sqlite3.OperationalError as exc:
            if not is_busy(exc) or time.monotonic() >= deadline:
                raise
            if conn.in_transaction:
                conn.execute("ROLLBACK")
        # A worker thread, a blocking wait on another process: nothing to await.
        time.sleep(0.005)


def prepare(conn: sqlite3.Connection, path: str) -> None:
    (mode,) = conn.execute("PRAGMA journal_mode = WAL").fetchone()
    if str(mode).lower() != "wal":
        raise BackendUnavailable(
            f"cannot open SQLite database {path!r}: it refused WAL mode (journal "
            f"mode {mode!r}); WAL needs a local file system")
    # FULL syncs every commit: after a power loss the counter must not go back,
    # or a fencing token already handed out could be handed out again.
    conn.execute("PRAGMA synchronous = FULL")
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    if version == SCHEMA_VERSION:
        return
    if version != 0:
        raise BackendUnavailable(
            f"cannot open SQLite database {path!r}: its user_version is {version}, "
            f"not {SCHEMA_VERSION}; is it another program's database?")
    conn.execute("BEGIN IMMEDIATE")
    try:
        # Another process may have made the schema while we waited for the lock.
        (version,) = conn.execute("PRAGMA user_version").fetchone()
        if version != SCHEMA_VERSION:
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            # Revisions of a new store start at the wall clock in microseconds,
            # above those of any store this file replaces (see first_revision).
            conn.execute("INSERT OR IGNORE INTO noleader_counter (id, revision)"
                         " VALUES (1, ?)", (first_revision() - 1,))
            conn.execute("INSERT OR IGNORE INTO noleader_store (id, created)"
                         " VALUES (1, ?)", (time.time(),))
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def created_of(conn: sqlite3.Connection) -> float:
    """When the store was made (wall clock); 0 for one made before this was kept."""
    try:
        row = conn.execute("SELECT created FROM noleader_store WHERE id = 1").fetchone()
    except sqlite3.OperationalError:
        return 0.0  # no such table: a store made by an earlier version
    return 0.0 if row is None else float(row[0])


def identity_of(path: str) -> tuple[int, int] | None:
    """``(device, inode)`` of the file *path* names now, or None if there is none."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def bump(conn: sqlite3.Connection) -> int:
    conn.execute("UPDATE noleader_counter SET revision = revision + 1 WHERE id = 1")
    (revision,) = conn.execute(
        "SELECT revision FROM noleader_counter WHERE id = 1").fetchone()
    return int(revision)


def live_row(conn: sqlite3.Connection, key: str, now: float) -> tuple[int, int] | None:
    """``(revision, term)`` of the live row under *key*, or None."""
    row = conn.execute(
        "SELECT revision, term, expires_at FROM noleader_lease WHERE key = ?",
        (key,)).fetchone()
    if row is None or not row[2] > now:
        return None
    return int(row[0]), int(row[1])


def read_row(key: str, conn: sqlite3.Connection) -> Row | None:
    """The key's row, live or not (None if it never had one)."""
    row = conn.execute(
        "SELECT CAST(value AS BLOB), revision, term, expires_at"
        " FROM noleader_lease WHERE key = ?", (key,)).fetchone()
    if row is None:
        return None
    now = time.time()
    remaining = float(row[3]) - now
    if not remaining > 0:
        return Row(None, int(row[1]), int(row[2]), 0.0)
    value = b"" if row[0] is None else bytes(row[0])
    return Row(Entry(key, value, int(row[1]), remaining), int(row[1]), int(row[2]),
                remaining)


def live_keys(conn: sqlite3.Connection) -> list[str]:
    rows = conn.execute(
        "SELECT key FROM noleader_lease WHERE expires_at > ?", (time.time(),)).fetchall()
    return sorted(str(row[0]) for row in rows)
