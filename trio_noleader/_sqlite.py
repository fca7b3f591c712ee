"""SQLiteBackend: leases shared by the processes of one host through one SQLite file.

No server: every process opens the same database file with the standard library's
:mod:`sqlite3`. The file is in WAL mode, so readers never wait for the writer, and
every write is a compare-and-set inside one ``BEGIN IMMEDIATE`` transaction, so
SQLite's write lock serialises them across threads and processes.

Layout (``PRAGMA user_version = 1``)::

    noleader_counter(id = 1, revision)      -- the one revision counter of the file
    noleader_store(id = 1, created)         -- when the file was made a store
    noleader_lease(key, value, revision, term, expires_at)

``revision`` comes from the counter, bumped inside the writing transaction, so
revisions strictly increase across keys and across processes; a new file's counter
starts at the wall clock in microseconds, above any file it replaces. A delete
leaves the row dead (``expires_at = 0``) with the delete's revision. ``expires_at`` is
:func:`time.time` at the moment the write was applied plus the ttl: one host, one
clock. A row whose ``expires_at`` has passed counts as absent everywhere, whether
or not it has been removed yet. ``term`` is the revision of the ``create`` that
began the lease; renewals keep it. A watcher that sees a different term than the
one it reported last knows the key was vacant in between, even if it never saw
the vacancy, and reports ``None`` first.

Blocking calls run in worker threads (:func:`trio.to_thread.run_sync`) through one
connection guarded by a ``CapacityLimiter(1)``: the limiter is released only when a
worker thread really finishes, so even a call whose caller was cancelled (and
abandoned the thread) keeps the connection to itself until it is done. Waits for
another process's write lock are cut into short slices; between two, an abandoned
worker gives up (unapplied), so a cancelled call frees the connection at once
instead of holding it for the whole busy timeout.

Watching polls ``PRAGMA data_version`` (which changes when *another* connection
commits) together with a count of this connection's own commits, from one task per
backend, every ``poll_interval`` seconds while anyone watches. Writes made through
the same backend wake its watchers at once. A watcher also wakes when the entry it
last reported expires, with no write needed.
"""

from __future__ import annotations

import errno
import functools
import logging
import math
import os
import sqlite3
import stat
import time
import urllib.parse
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from typing import TypeVar

import trio

from ._context import backend_scope, require_trio
from ._exceptions import (
    BackendUnavailable,
    KeyExists,
    NewStore,
    NoLeaderError,
    RevisionMismatch,
)
from ._sqlite_file import (
    Row,
    bump,
    created_of,
    identity_of,
    is_busy,
    live_keys,
    live_row,
    prepare_patiently,
    read_row,
)
from ._types import Entry, check_key, check_seconds, check_type, type_error
from ._unwrap import bare_exceptions
from .abc import Backend, Update

__all__ = ["SQLiteBackend", "open_sqlite_backend"]

logger = logging.getLogger("trio_noleader")

T = TypeVar("T")

#: Default seconds between two looks at the file for other processes' writes.
DEFAULT_POLL_INTERVAL = 0.025
#: Default seconds a write waits for another process's write lock before failing.
DEFAULT_BUSY_TIMEOUT = 5.0
#: SQLite's own busy wait is cut into slices this long, so that a worker thread whose
#: caller was cancelled notices between two slices and stops knocking.
BUSY_SLICE = 0.1

def _check_directory(path: str) -> None:
    """Raise if the directory of *path* does not exist or is not a directory."""
    directory = os.path.dirname(path)
    try:
        mode = os.stat(directory).st_mode
    except FileNotFoundError as exc:
        raise BackendUnavailable(
            f"cannot open SQLite database {path!r}: the directory {directory!r} does not "
            "exist (create it first)") from exc
    if not stat.S_ISDIR(mode):
        raise BackendUnavailable(
            f"cannot open SQLite database {path!r}: {directory!r} is not a directory"
        ) from NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), directory)


class SQLiteBackend(Backend):
    """The backend protocol over one SQLite database file, shared between processes.

    Obtain one from :func:`open_sqlite_backend` (or ``open_backend("sqlite:///...")``);
    it lives as long as that ``async with`` block. Every instance has its own
    connection; several instances (in one process or many) on one file are one store.
    """

    def __init__(self, path: str, conn: sqlite3.Connection, *, poll_interval: float,
                 busy_timeout: float, new_store_grace: bool = True) -> None:
        self._path = path
        self._conn = conn
        self._poll_interval = poll_interval
        self._busy_timeout = busy_timeout
        self._limiter = trio.CapacityLimiter(1)
        self._closing = False
        # Set by the worker thread that closed the connection; read by later workers.
        self._conn_closed = False
        # Commits made through this connection; data_version does not count them.
        self._local_commits = 0
        # Woken (and replaced) whenever the file may have changed.
        self._changed = trio.Event()
        self._watchers = 0
        self._first_watcher = trio.Event()
        # (device, inode) of the file the connection has open, and when it was made.
        self._identity: tuple[int, int] | None = None
        self._created = 0.0
        self._new_store_grace = new_store_grace
        self._create = True

    @property
    def path(self) -> str:
        """The absolute path of the database file."""
        return self._path

    @property
    def poll_interval(self) -> float:
        """Seconds between two looks for other processes' writes while watching."""
        return self._poll_interval

    def __repr__(self) -> str:
        state = " closed" if self._closing else ""
        return (f"<SQLiteBackend path={self._path!r} poll_interval={self._poll_interval}"
                f"{state}>")

    # -- opening and closing -------------------------------------------------------

    @classmethod
    def _connect(cls, path: str, poll_interval: float, busy_timeout: float,
                 new_store_grace: bool = True, create: bool = True) -> SQLiteBackend:
        """Open the database in the calling worker thread (creating the file if *create*).

        Never creates a directory: a missing one is far more often a typo than a
        wish, and a typo must not start an election of its own.
        """
        # Absolute now: a later chdir must not move the store under us.
        path = os.path.abspath(path)
        try:
            _check_directory(path)
            if os.path.isdir(path):
                raise BackendUnavailable(
                    f"cannot open SQLite database {path!r}: it is a directory")
            if create:
                conn = sqlite3.connect(path, timeout=busy_timeout, isolation_level=None,
                                       check_same_thread=False)
            elif not os.path.exists(path):
                raise BackendUnavailable(
                    f"no SQLite lease store at {path!r}: the file does not exist (a typo? "
                    "nothing has run there yet?)")
            else:
                # mode=rw: if the file vanished since the check, fail, do not create it.
                conn = sqlite3.connect(f"file:{urllib.parse.quote(path)}?mode=rw", uri=True,
                                       timeout=busy_timeout, isolation_level=None,
                                       check_same_thread=False)
        except (OSError, sqlite3.Error) as exc:
            raise BackendUnavailable(f"cannot open SQLite database {path!r}: {exc}") from exc
        try:
            prepare_patiently(conn, path, busy_timeout)
            slice_ms = round(min(busy_timeout, BUSY_SLICE) * 1000)
            conn.execute(f"PRAGMA busy_timeout = {slice_ms}")
        except BaseException as exc:
            conn.close()
            if isinstance(exc, sqlite3.Error):
                raise BackendUnavailable(
                    f"cannot open SQLite database {path!r}: {exc}") from exc
            raise
        backend = cls(path, conn, poll_interval=poll_interval, busy_timeout=busy_timeout,
                      new_store_grace=new_store_grace)
        backend._identity = identity_of(path)
        backend._created = created_of(conn)
        backend._create = create
        return backend

    def _check_identity(self) -> None:
        """Before trusting the connection: does the path still name the file it has open?

        A file deleted (or replaced) under a running backend would otherwise keep
        taking writes on the old inode while other processes elect on the new
        file: two leaders. A replaced store is an outage, never the same store: the
        call fails, and the connection is reopened on whatever the path names now.
        """
        if identity_of(self._path) == self._identity:
            return
        old = self._conn
        try:
            fresh = self._connect(self._path, self._poll_interval, self._busy_timeout,
                                  self._new_store_grace, self._create)
        except BackendUnavailable as exc:
            raise BackendUnavailable(
                f"SQLite database {self._path!r} was deleted or replaced under this "
                f"backend, and reopening it failed: {exc}") from exc
        self._conn, fresh._conn = fresh._conn, old
        self._identity = fresh._identity
        self._created = fresh._created
        old.close()
        self._local_commits += 1  # the poller then wakes the watchers: a new store
        logger.warning("SQLite database %s was deleted or replaced; reopened it as a new "
                       "store (leases of the old file are gone)", self._path)
        raise BackendUnavailable(
            f"SQLite database {self._path!r} was deleted or replaced under this backend "
            "(reopened it as a new store)")

    async def aclose(self) -> None:
        """Close the connection, once every call already under way has finished.

        Later calls raise :exc:`trio.ClosedResourceError`. Idempotent.
        """
        if self._closing:
            return
        self._closing = True
        self._wake()
        self._first_watcher.set()
        with trio.CancelScope(shield=True):
            # Through the limiter: an abandoned call may still be using the connection.
            await trio.to_thread.run_sync(self._close_in_thread, limiter=self._limiter)
        logger.debug("closed SQLite backend %s", self._path)

    def _close_in_thread(self) -> None:
        self._conn_closed = True
        self._conn.close()

    # -- plumbing ------------------------------------------------------------------

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def _run(self, fn: Callable[[sqlite3.Connection], T], *, write: bool = False) -> T:
        """Run ``fn(connection)`` in a worker thread, alone on the connection.

        A cancelled caller abandons the thread at once; the call still runs to its
        end (a write may land: the ambiguity the election core resolves by reading).
        """
        if self._closing:
            raise trio.ClosedResourceError(f"{self!r} is closed")
        try:
            result = await trio.to_thread.run_sync(
                self._call, fn, limiter=self._limiter, abandon_on_cancel=True)
        except sqlite3.DatabaseError as exc:
            # Locked, busy, I/O errors, a damaged file: the store is not usable now.
            # IntegrityError, ProgrammingError and the like are bugs, not outages.
            if not (isinstance(exc, sqlite3.OperationalError)
                    or type(exc) is sqlite3.DatabaseError):
                raise
            hint = ""
            if isinstance(exc, sqlite3.OperationalError) and is_busy(exc):
                hint = f" (after waiting {self._busy_timeout:g} s for the write lock)"
            raise BackendUnavailable(
                f"SQLite database {self._path!r}: {exc}{hint}") from exc
        if write:
            self._wake()
        return result

    def _call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run *fn* in this worker thread, retrying it while the file is busy.

        Each try waits up to ``BUSY_SLICE`` for the lock inside SQLite. A failed try
        has rolled back (every write is one transaction), so trying again is safe.
        """
        deadline = time.monotonic() + self._busy_timeout
        while True:
            if self._conn_closed:
                raise trio.ClosedResourceError(f"{self!r} is closed")
            self._check_identity()
            try:
                return fn(self._conn)
            except sqlite3.OperationalError as exc:
                if not is_busy(exc) or time.monotonic() >= deadline:
                    raise
            # A cancelled caller has abandoned this thread: stop here, unapplied, and
            # free the connection, rather than land the write seconds later.
            trio.from_thread.check_cancelled()

    @contextmanager
    def _transaction(self, conn: sqlite3.Connection) -> Iterator[float]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT``; yields the wall-clock time of the write.

        The time is read once the write lock is held, so a lease's ttl never starts
        before the write is applied.
        """
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield time.time()
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        self._local_commits += 1

    @staticmethod
    def _mismatch(key: str, revision: int, live: tuple[int, int] | None) -> RevisionMismatch:
        found = "nothing" if live is None else live[0]
        return RevisionMismatch(f"{key}: expected revision {revision}, found {found}")

    # -- the work done in threads ----------------------------------------------------

    def _create_sync(self, key: str, value: bytes, ttl: float,
                     conn: sqlite3.Connection) -> int:
        with self._transaction(conn) as now:
            young = self._created + ttl - now
            if self._new_store_grace and young > 0:
                # A leader of the file this one replaced may still be in its term:
                # its deadline lies less than a ttl after its last renewal, which
                # came before this file existed.
                raise NewStore(
                    f"SQLite database {self._path!r} is a new store; the first lease "
                    f"waits out one ttl ({young:.3g} s more)", young)
            if live_row(conn, key, now) is not None:
                raise KeyExists(key)
            revision = bump(conn)
            conn.execute(
                "INSERT OR REPLACE INTO noleader_lease (key, value, revision, term, expires_at)"
                " VALUES (?, ?, ?, ?, ?)", (key, value, revision, revision, now + ttl))
        return revision

    def _update_sync(self, key: str, value: bytes, revision: int, ttl: float,
                     conn: sqlite3.Connection) -> int:
        with self._transaction(conn) as now:
            return self._cas_in(conn, now, key, value, revision, ttl)

    def _cas_in(self, conn: sqlite3.Connection, now: float, key: str, value: bytes,
                revision: int, ttl: float) -> int:
        """One compare-and-set update inside the caller's transaction."""
        live = live_row(conn, key, now)
        if live is None or live[0] != revision:
            raise self._mismatch(key, revision, live)
        new_revision = bump(conn)
        conn.execute(
            "UPDATE noleader_lease SET value = ?, revision = ?, expires_at = ?"
            " WHERE key = ?", (value, new_revision, now + ttl, key))
        return new_revision

    def _update_many_sync(self, updates: Sequence[Update],
                          conn: sqlite3.Connection) -> list[int | NoLeaderError]:
        results: list[int | NoLeaderError] = []
        with self._transaction(conn) as now:
            for u in updates:
                try:
                    results.append(self._cas_in(conn, now, u.key, u.value, u.revision, u.ttl))
                except RevisionMismatch as exc:
                    results.append(exc)
        return results

    def _delete_sync(self, key: str, revision: int, conn: sqlite3.Connection) -> None:
        with self._transaction(conn) as now:
            live = live_row(conn, key, now)
            if live is None or live[0] != revision:
                raise self._mismatch(key, revision, live)
            # A delete is a write like the others: it takes a revision of its own,
            # kept in the dead row, so that a watcher can tell that a whole term
            # came and went between two of its looks.
            new_revision = bump(conn)
            conn.execute(
                "UPDATE noleader_lease SET value = x'', revision = ?, expires_at = 0"
                " WHERE key = ?", (new_revision, key))

    def _version_sync(self, conn: sqlite3.Connection) -> tuple[int, int]:
        (version,) = conn.execute("PRAGMA data_version").fetchone()
        return int(version), self._local_commits

    # -- the protocol ----------------------------------------------------------------

    async def create(self, key: str, value: bytes, *, ttl: float) -> int:
        """Store *value* under *key* only if no live entry exists there.

        Raises:
            KeyExists: if a live entry exists.
            BackendUnavailable: if the file stayed locked for the busy timeout, or
                SQLite failed otherwise (the cause is chained).
        """
        check_key(key)
        ttl = check_seconds("ttl", ttl)
        return await self._run(
            functools.partial(self._create_sync, key, bytes(value), ttl), write=True)

    async def update(self, key: str, value: bytes, *, revision: int, ttl: float) -> int:
        """Replace the live entry at exactly *revision*; its ttl restarts now.

        Raises:
            RevisionMismatch: if there is no live entry or its revision differs.
            BackendUnavailable: as for :meth:`create`.
        """
        check_key(key)
        ttl = check_seconds("ttl", ttl)
        return await self._run(
            functools.partial(self._update_sync, key, bytes(value), revision, ttl),
            write=True)

    async def update_many(self, updates: Sequence[Update]) -> list[int | NoLeaderError]:
        """Several compare-and-set updates in one transaction (one sync to disk).

        Each keeps its own outcome; a failure of the transaction itself raises
        :class:`BackendUnavailable` for all (none of them was applied).
        """
        checked = [Update(check_key(u.key), bytes(u.value), u.revision,
                          check_seconds("ttl", u.ttl)) for u in updates]
        return await self._run(functools.partial(self._update_many_sync, checked),
                               write=True)

    async def get(self, key: str) -> Entry | None:
        """Return the live entry under *key* (with ``expires_in``), or ``None``."""
        check_key(key)
        row = await self._run(functools.partial(read_row, key))
        return None if row is None else row.entry

    async def delete(self, key: str, *, revision: int) -> None:
        """Delete the live entry at exactly *revision*.

        Raises:
            RevisionMismatch: if there is no live entry or its revision differs.
            BackendUnavailable: as for :meth:`create`.
        """
        check_key(key)
        await self._run(functools.partial(self._delete_sync, key, revision), write=True)

    async def keys(self) -> list[str]:
        """Return the keys that hold a live entry, sorted."""
        return await self._run(live_keys)

    def watch(self, key: str) -> AbstractAsyncContextManager[AsyncIterator[Entry | None]]:
        """Watch *key*: the current state first, then every change, expiry included.

        Other processes' writes are seen within about ``poll_interval`` seconds,
        this backend's own at once, and an expiry when the entry's ``expires_at``
        passes. A vacancy that lasted less than one poll is still reported (as
        ``None`` before the next entry), and so is a term that began and ended
        between two looks (as ``None`` again).
        """
        check_key(key)
        if self._closing:
            raise trio.ClosedResourceError(f"{self!r} is closed")
        return self._watch(key)

    @asynccontextmanager
    async def _watch(self, key: str) -> AsyncGenerator[AsyncIterator[Entry | None], None]:
        self._watchers += 1
        self._first_watcher.set()
        iterator = self._iterate(key)
        try:
            yield iterator
        finally:
            await iterator.aclose()
            self._watchers -= 1

    async def _iterate(self, key: str) -> AsyncGenerator[Entry | None, None]:
        last: Row | None = None
        first = True
        while True:
            # Taken before the read: a change committed after the read sets this event.
            changed = self._changed
            row = await self._run(functools.partial(read_row, key))
            read_at = trio.current_time()
            entry = None if row is None else row.entry
            was = None if last is None else last.entry
            if first:
                first = False
                yield entry
            elif entry is None:
                # Vacant now. Also report it when it was vacant at the last look too
                # but the row moved meanwhile: a whole term came and went unseen.
                if was is not None or (0 if row is None else row.revision) != (
                        0 if last is None else last.revision):
                    yield None
            elif was is None or entry.revision != was.revision:
                if was is not None and row is not None and last is not None \
                        and row.term != last.term:
                    # A new term means the key was vacant in between.
                    yield None
                yield entry
            last = row
            wake_at = math.inf if row is None or row.entry is None else read_at + row.remaining
            with trio.move_on_at(wake_at):
                await changed.wait()

    async def _poll(self) -> None:
        """Wake the watchers whenever the file changed; runs beside the backend."""
        seen: tuple[int, int] | None = None
        while not self._closing:
            if not self._watchers:
                self._first_watcher = trio.Event()
                if not self._watchers:
                    await self._first_watcher.wait()
                continue
            try:
                version = await self._run(self._version_sync)
            except BackendUnavailable as exc:
                # Let the watchers read for themselves: they recover or report it.
                logger.debug("polling %s failed: %s", self._path, exc)
                self._wake()
            except trio.ClosedResourceError:
                return
            else:
                if version != seen:
                    seen = version
                    self._wake()
            await trio.sleep(self._poll_interval)


@asynccontextmanager
async def open_sqlite_backend(
    path: str | os.PathLike[str],
    *,
    poll_interval: float = DEFAULT_POLL_INTERVAL,
    busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
    new_store_grace: bool = True,
    create: bool = True,
) -> AsyncIterator[SQLiteBackend]:
    """Open the SQLite lease store at *path* and make it the default backend for the block.

    Every process of the host that opens the same file takes part in the same
    elections. The file is created if missing (unless ``create=False``) and put in
    WAL mode; its directory must exist (a missing directory is far more often a
    typo than a wish, and a typo must not start elections of its own). TTLs run
    on the wall clock (:func:`time.time`), shared by the processes
    of one host; a large step of that clock shortens or stretches the leases in
    the store, so keep the clock slewed, not stepped (the default for NTP daemons).

    Example::

        async with trio_noleader.open_sqlite_backend("/run/myapp/leases.db"):
            async with trio_noleader.hold_leadership("scheduler") as lead:
                ...

    Args:
        path (str | os.PathLike[str]): The database file. A relative path is taken
            from the working directory now.
        poll_interval (float): Seconds between two looks for other processes'
            writes while something watches a key (writes through this backend
            are seen at once).
        busy_timeout (float): Seconds a write waits for another process's write
            lock before it fails with :class:`BackendUnavailable`.
        new_store_grace (bool): Refuse the first lease on a file younger than the
            lease's ttl (``BackendUnavailable``, which a campaign rides out),
            because a leader of the file it replaced (deleted, or moved away) may
            still be in its term. Turn it off only where a file is never replaced,
            as in tests that make a fresh one each time.
        create (bool): Create the file if it does not exist (the default). With
            ``False`` a missing file is an error: for tools that only look
            (``noleader status``), where a typo must not create an empty store.

    Raises:
        BackendUnavailable: if the file cannot be opened or used as a lease store
            (its directory missing, a directory, no permission, not a database,
            missing with ``create=False``); the message names the path.
        TypeError, ValueError: for bad arguments, before any I/O.
    """
    if isinstance(path, bytes) or not isinstance(path, str | os.PathLike):
        raise type_error("path", path, "a str or os.PathLike[str]")
    raw = os.fspath(path)
    if not isinstance(raw, str):
        raise type_error("path", raw, "a str path")
    if not raw or raw == ":memory:" or raw.startswith("file:") or "\x00" in raw:
        raise ValueError(
            f"path={raw!r}: must be the path of a database file, not empty, a URI or "
            "':memory:' (for an in-process store use MemoryBackend or memory://)")
    poll_interval = check_seconds("poll_interval", poll_interval)
    busy_timeout = check_seconds("busy_timeout", busy_timeout, allow_zero=True)
    check_type("new_store_grace", new_store_grace, bool, "a bool")
    if not isinstance(create, bool):
        raise type_error("create", create, "a bool")
    require_trio("open_sqlite_backend()")
    backend = await trio.to_thread.run_sync(
        SQLiteBackend._connect, raw, poll_interval, busy_timeout, new_store_grace, create)
    logger.debug("opened SQLite backend %s", backend.path)
    try:
        with bare_exceptions():
            async with trio.open_nursery() as nursery:
                nursery.start_soon(backend._poll)
                try:
                    async with backend_scope(backend):
                        yield backend
                finally:
                    nursery.cancel_scope.cancel()
    finally:
        await backend.aclose()
