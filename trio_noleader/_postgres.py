"""PostgreSQL backend: a lease table reached through asyncpg on trio-asyncio.

asyncpg is an asyncio library: every call into it goes through the trio-asyncio
bridge (:mod:`trio_noleader._aio`) on the loop the backend was opened with, as the
NATS backend does with nats-py. This module is the protocol and its watch;
:mod:`trio_noleader._postgres_setup` connects and provisions the table, and
:mod:`trio_noleader._postgres_sql` holds the SQL text. Only these two modules
import ``asyncpg`` (the ``postgres`` extra).

Every protocol call is one statement, one round trip, on a connection from a small
asyncpg pool (a slow statement, say one waiting for a row lock that a fenced
transaction holds, does not stall the others). Writes carry their own
``pg_notify`` in the same statement, so a NOTIFY is sent exactly when a write
commits, and it describes the write (revision, term, ttl, value), so a watch sees
every write in commit order without reading it back. Watches share one extra
connection that LISTENs on the table's channel; a watcher reads its key only at
the start, when the entry it reported last expires (a timer set from the server's
own count of the time left), and when a note falls short. Losing that
connection breaks every open watch with :class:`~trio_noleader.BackendUnavailable`
(the caller watches afresh); the next watch opens a new one.

Connections lost to a server restart are replaced when next needed (the pool
reconnects lazily), so calls fail with ``BackendUnavailable`` while the server is
away and work again once it is back.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import asyncpg
import trio

from . import _aio
from ._exceptions import BackendUnavailable, KeyExists, NoLeaderError, RevisionMismatch
from ._postgres_sql import (
    ADVISORY_LOCK_CLASS,
    TableNames,
    regclass_literal,
    schema_sql,
    shape_problems,
)
from ._postgres_watch import Listener, Subscription, View
from ._types import Entry, check_key, check_seconds, check_type
from ._urls import scrub
from .abc import Backend, Update

__all__ = ["PostgresBackend"]

logger = logging.getLogger("trio_noleader")

T = TypeVar("T")

#: Default seconds for one connection attempt: an unreachable server fails fast.
CONNECT_TIMEOUT = 5.0
#: Default number of pooled connections for the protocol's statements.
POOL_SIZE = 4
#: Seconds between two checks that the LISTEN connection is alive, while watched.
LISTEN_PING_INTERVAL = 5.0
#: The longest lease TTL in seconds (about 31 years), far inside timestamptz's range.
MAX_TTL = 10**9

# Errors from asyncpg that mean "the store did not answer usefully (now)". A
# DataError is an argument asyncpg could not encode: a bug, not an outage.
_TRANSIENT = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, asyncio.TimeoutError,
              asyncpg.exceptions.InternalClientError)


def _describe(exc: BaseException, secrets: list[str]) -> str:
    name = type(exc).__name__
    text = str(exc).strip()
    sqlstate = getattr(exc, "sqlstate", None)
    if sqlstate:
        name = f"{name} [{sqlstate}]"
    return scrub(f"{name}: {text}" if text and text != name else name, secrets)


def _check_ttl(ttl: object) -> float:
    seconds = check_seconds("ttl", ttl)
    if seconds > MAX_TTL:
        raise ValueError(f"ttl={ttl!r}: the PostgreSQL backend keeps leases of at most "
                         f"{MAX_TTL:g} seconds")
    return seconds


def _micros(ttl: float) -> int:
    # Rounded up: the store never keeps a lease shorter than its holder counts on.
    return max(1, math.ceil(ttl * 1_000_000))


def _check_revision(revision: object) -> int:
    return check_type("revision", revision, int, "an int")


@dataclass(frozen=True, slots=True)
class _Row:
    """A live row as one read saw it."""

    entry: Entry
    term: int
    #: The entry's expiry, as seconds from the moment of the read (the server's count).
    remaining: float


class PostgresBackend(Backend):
    """A PostgreSQL table as a lease store. Made by :func:`open_postgres_backend`.

    Revisions come from the table's sequence: they grow across all keys, and a new
    table's first one is the server's wall clock in microseconds. TTLs run on the
    server's clock. Methods are trio-async; each is one statement on the backend's
    trio-asyncio loop.

    Attributes:
        table (str): The lease table, ``schema.table``.
        channel (str): The NOTIFY channel of its writes (the payload describes the
            write and ends with the key).
        pool (asyncpg.Pool): The connection pool (an escape hatch: use it from
            asyncio code, for example through
            ``trio_asyncio.aio_as_trio(..., loop=backend.loop)``).
        loop: The trio-asyncio loop the pool lives on.
    """

    def __init__(self, *, loop: Any, pool: Any, names: TableNames, dsn: str,
                 address: str, secrets: list[str], connect_options: dict[str, Any]) -> None:
        self.loop = loop
        self.pool = pool
        self._names = names
        self._dsn = dsn
        self._address = address
        self._secrets = secrets
        self._connect_options = connect_options
        self._listener: Listener | None = None
        self._listener_lock = trio.Lock()
        self._nursery: trio.Nursery | None = None
        self._closed = False
        # Set when the table was found gone: the next call creates it again first.
        self._table_gone = False

    @property
    def table(self) -> str:
        return self._names.qualified

    @property
    def channel(self) -> str:
        return self._names.channel

    @property
    def fence_sql(self) -> str:
        """The lease check for a fenced write: run it first in the write's transaction.

        ``$1`` is the key and ``$2`` the leadership's token. It returns one row while
        that term still holds an unexpired lease, and locks the lease row
        (``FOR KEY SHARE``) until the transaction ends, so the lease cannot pass to
        another candidate before the write commits. No row: roll back. The
        holder's renewals do not wait for the lock; a successor's create does.
        """
        return self._names.fence_sql

    def __repr__(self) -> str:
        state = " closed" if self._closed else ""
        return f"<PostgresBackend table={self.table!r} address={self._address!r}{state}>"

    def check_ttl(self, ttl: float) -> None:
        """Refuse a ttl over :data:`MAX_TTL` seconds (and any that is not > 0)."""
        _check_ttl(ttl)

    # -- bridging ------------------------------------------------------------------

    async def _call(self, what: str, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run the asyncio coroutine function *fn* on our loop; map transport errors."""
        if self._closed:
            raise trio.ClosedResourceError(f"{self!r} is closed")
        try:
            result: T = await _aio.call(self.loop, fn, *args)
        except asyncpg.DataError:
            raise
        except asyncpg.UndefinedTableError as exc:
            # Dropped under us. A table created anew starts its tokens above the old
            # ones (the wall clock), so the next call may create it again.
            self._table_gone = True
            raise BackendUnavailable(
                f"{what} at {self._address}: the table {self.table} is gone (dropped?); "
                f"it is created again on the next call: {_describe(exc, self._secrets)}"
            ) from exc
        except _TRANSIENT as exc:
            raise BackendUnavailable(
                f"{what} at {self._address}: {_describe(exc, self._secrets)}") from exc
        except asyncio.CancelledError as exc:
            # trio's own cancellation arrives as trio.Cancelled; this one came from
            # the asyncio side (the loop shutting down under us).
            raise BackendUnavailable(f"{what}: the asyncio loop cancelled the call") from exc
        return result

    async def _recreate(self) -> None:
        """Create the table again after it was dropped (see :meth:`_call`)."""
        names, problems = await self._call(
            "creating the lease table again", _aio_setup, self.pool,
            self._names.schema, self._names.table)
        if problems:
            raise BackendUnavailable(
                f"the table {names.qualified} at {self._address} was replaced by one that "
                f"is not a trio-noleader lease table: {'; '.join(problems)}")
        self._table_gone = False
        logger.warning("the lease table %s at %s was dropped; created it again",
                       names.qualified, self._address)

    async def _aio_fetchrow(self, sql: str, *args: Any) -> Any:
        async with self.pool.acquire() as conn:
            return await conn.fetchrow(sql, *args)

    async def _aio_fetch(self, sql: str, *args: Any) -> Any:
        async with self.pool.acquire() as conn:
            return await conn.fetch(sql, *args)

    async def _fetchrow(self, what: str, sql: str, *args: Any) -> Any:
        if self._table_gone:
            await self._recreate()
        return await self._call(what, self._aio_fetchrow, sql, *args)

    async def _fetch(self, what: str, sql: str, *args: Any) -> list[Any]:
        if self._table_gone:
            await self._recreate()
        rows: list[Any] = await self._call(what, self._aio_fetch, sql, *args)
        return rows

    # -- the protocol --------------------------------------------------------------

    async def create(self, key: str, value: bytes, *, ttl: float) -> int:
        """Store *value* under *key* only if no live entry exists there.

        Raises:
            KeyExists: if a live entry exists.
            BackendUnavailable: if the server could not be reached or failed (the
                write may still have been applied).
        """
        check_key(key)
        micros = _micros(_check_ttl(ttl))
        row = await self._fetchrow(f"create {key!r}", self._names.create_sql, key,
                                   bytes(value), micros)
        if row is None:
            raise KeyExists(key)
        return int(row[0])

    async def update(self, key: str, value: bytes, *, revision: int, ttl: float) -> int:
        """Replace the live entry at exactly *revision*; its ttl restarts now.

        Raises:
            RevisionMismatch: if there is no live entry or its revision differs.
            BackendUnavailable: as for :meth:`create`.
        """
        check_key(key)
        micros = _micros(_check_ttl(ttl))
        row = await self._fetchrow(f"update {key!r}", self._names.update_sql, key,
                                   bytes(value), _check_revision(revision), micros)
        if row is None:
            raise RevisionMismatch(f"{key}: no live entry at revision {revision}")
        return int(row[0])

    async def update_many(self, updates: Sequence[Update]) -> list[int | NoLeaderError]:
        """Apply all the updates in one statement (one round trip, one bridged call).

        Each is its own compare-and-set with its own outcome. Several updates of one
        key go one by one, in order.

        Raises:
            BackendUnavailable: as a whole, if the statement failed (none of the
                updates, or all of them, may have been applied).
        """
        keys, values, revisions, micros = [], [], [], []
        for update in updates:
            keys.append(check_key(update.key))
            values.append(bytes(update.value))
            revisions.append(_check_revision(update.revision))
            micros.append(_micros(_check_ttl(update.ttl)))
        if len(set(keys)) < len(keys):
            return await super().update_many(updates)
        if not updates:
            return []
        rows = await self._fetch(f"update {len(updates)} keys", self._names.update_many_sql,
                                 keys, values, revisions, micros)
        applied = {str(row[0]): int(row[1]) for row in rows}
        return [applied[u.key] if u.key in applied else
                RevisionMismatch(f"{u.key}: no live entry at revision {u.revision}")
                for u in updates]

    async def delete(self, key: str, *, revision: int) -> None:
        """Delete the live entry at exactly *revision*.

        Raises:
            RevisionMismatch: if there is no live entry or its revision differs.
            BackendUnavailable: as for :meth:`create`.
        """
        check_key(key)
        row = await self._fetchrow(f"delete {key!r}", self._names.delete_sql, key,
                                   _check_revision(revision))
        if row is None:
            raise RevisionMismatch(f"{key}: no live entry at revision {revision}")

    async def _read(self, key: str) -> _Row | None:
        row = await self._fetchrow(f"get {key!r}", self._names.get_sql, key)
        if row is None:
            return None
        remaining = max(0.0, float(row[3]))
        return _Row(Entry(key, bytes(row[0]), int(row[1]), remaining), int(row[2]), remaining)

    async def get(self, key: str) -> Entry | None:
        """Return the live entry under *key* (with ``expires_in``), or ``None``."""
        check_key(key)
        row = await self._read(key)
        return None if row is None else row.entry

    async def keys(self) -> list[str]:
        """Return the keys that hold a live entry, sorted."""
        rows = await self._fetch("keys", self._names.keys_sql)
        return sorted(str(row[0]) for row in rows)

    def watch(self, key: str) -> AbstractAsyncContextManager[AsyncIterator[Entry | None]]:
        """Watch *key*: the current state first, then every change, expiry included.

        Writes are seen when their NOTIFY arrives (at commit), an expiry when the
        time the server gave the entry has passed.

        Raises (on iteration):
            BackendUnavailable: if the LISTEN connection or a read fails.
        """
        check_key(key)
        if self._closed:
            raise trio.ClosedResourceError(f"{self!r} is closed")
        return self._watch(key)

    @asynccontextmanager
    async def _watch(self, key: str) -> AsyncGenerator[AsyncIterator[Entry | None], None]:
        listener = await self._get_listener()
        # Before the first read: no write that commits after it can go unseen.
        subscription = listener.subscribe(key)
        iterator = self._iterate(key, listener, subscription)
        try:
            yield iterator
        finally:
            listener.unsubscribe(key, subscription)
            await iterator.aclose()

    async def _read_back(self, key: str) -> Any:
        return await self._fetchrow(f"watch {key!r}", self._names.watch_sql, key)

    async def _iterate(self, key: str, listener: Listener, subscription: Subscription
                       ) -> AsyncGenerator[Entry | None, None]:
        view = View(key)
        view.read(await self._read_back(key), trio.current_time())
        yield view.entry
        while True:
            if listener.broken is not None:
                raise BackendUnavailable(
                    f"watch of {key!r} at {self._address}: lost the LISTEN connection "
                    f"({_describe(listener.broken, self._secrets)})") from listener.broken
            if not subscription.notes and not subscription.overflow:
                if subscription.wakeup.is_set():
                    subscription.wakeup = trio.Event()
                # Woken by a note, or by the expiry of the entry shown last.
                with trio.move_on_at(view.expires):
                    await subscription.wakeup.wait()
                if listener.broken is not None:
                    continue
            now = trio.current_time()
            items: list[Entry | None] = []
            read_back = subscription.overflow
            subscription.overflow = False
            while subscription.notes and not read_back:
                got = view.note(subscription.notes.popleft(), now)
                if got is None:
                    read_back = True
                else:
                    items += got
            if read_back or now >= view.expires:
                # Notes still queued committed before this read, which shows them.
                subscription.notes.clear()
                items += view.read(await self._read_back(key), trio.current_time())
            for item in items:
                yield item

    # -- the LISTEN connection -----------------------------------------------------

    async def _get_listener(self) -> Listener:
        async with self._listener_lock:
            listener = self._listener
            if listener is not None and listener.broken is None:
                return listener
            if listener is not None:
                self._listener = None
                await self._drop_listener(listener)
            conn = await self._call("LISTEN", self._aio_connect)
            listener = Listener(conn, self.channel)
            try:
                await self._call("LISTEN", conn.add_listener, self.channel, listener.notified)
            except BaseException:
                await self._drop_listener(listener)
                raise
            conn.add_termination_listener(listener.terminated)
            self._listener = listener
            if self._nursery is not None:
                self._nursery.start_soon(self._keep_listening, listener)
            return listener

    async def _aio_connect(self) -> Any:
        return await asyncpg.connect(self._dsn, **self._connect_options)

    async def _keep_listening(self, listener: Listener) -> None:
        """Check that an idle LISTEN connection still answers; break it if not.

        A server restart closes the socket and is noticed at once; this is for the
        quieter failures (a host gone away, a half-open TCP connection).
        """
        timeout = self._connect_options.get("timeout", CONNECT_TIMEOUT)
        while listener.broken is None:
            await trio.sleep(LISTEN_PING_INTERVAL)
            if listener.broken is not None or not listener.watchers:
                continue
            try:
                with trio.fail_after(timeout):
                    await self._call("LISTEN ping", listener.conn.fetchval, "SELECT 1")
            except (BackendUnavailable, trio.TooSlowError) as exc:
                listener.fail(exc)

    async def _drop_listener(self, listener: Listener) -> None:
        listener.fail(ConnectionError("closed"))
        with trio.move_on_after(2, shield=True):
            try:
                await _aio.call(self.loop, listener.conn.close)
            except (*_TRANSIENT, asyncio.CancelledError):
                pass
            return
        listener.conn.terminate()

    async def aclose(self) -> None:
        """Close the LISTEN connection and the pool. Later calls raise
        :exc:`trio.ClosedResourceError`. Idempotent."""
        if self._closed:
            return
        self._closed = True
        listener, self._listener = self._listener, None
        if listener is not None:
            await self._drop_listener(listener)
        with trio.move_on_after(5, shield=True):
            try:
                await _aio.call(self.loop, self.pool.close)
            except (*_TRANSIENT, asyncio.CancelledError):
                self.pool.terminate()
            logger.debug("closed %r", self)
            return
        self.pool.terminate()


# -- the table -------------------------------------------------------------------


async def _aio_setup(pool: Any, schema: str | None, table: str, create: bool = True
                     ) -> tuple[TableNames, list[str]]:
    """Create the table if absent (if *create*), check its shape; return names, problems."""
    literal = regclass_literal(schema, table)
    async with pool.acquire() as conn, conn.transaction():
        # Several processes may open a fresh table at once: one creates it.
        await conn.execute(
            "SELECT pg_advisory_xact_lock($1::int, hashtext(coalesce($2, current_schema())"
            " || '.' || $3))", ADVISORY_LOCK_CLASS, schema, table)
        if await conn.fetchval("SELECT to_regclass($1)", literal) is None:
            if not create:
                raise BackendUnavailable(
                    f"no lease table {table!r} there (a typo? nothing has run there yet?)")
            if schema is None and await conn.fetchval("SELECT current_schema()") is None:
                raise BackendUnavailable(
                    "no schema to create the lease table in (the search_path names none "
                    "that exists): name one, as in table='myschema.leases'")
            for statement in schema_sql(schema, table):
                await conn.execute(statement)
            logger.info("created the lease table %s", table)
        info = await conn.fetchrow(
            "SELECT c.oid, n.nspname, c.relkind::text FROM pg_class c JOIN pg_namespace n "
            "ON n.oid = c.relnamespace WHERE c.oid = to_regclass($1)", literal)
        oid, names = info[0], TableNames(str(info[1]), table)
        columns = await conn.fetch(
            "SELECT attname, format_type(atttypid, atttypmod), attnotnull FROM pg_attribute "
            "WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped", oid)
        primary_key = await conn.fetchval(
            "SELECT array_agg(a.attname ORDER BY a.attnum) FROM pg_index i JOIN pg_attribute "
            "a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) "
            "WHERE i.indrelid = $1 AND i.indisprimary", oid)
        sequence = await conn.fetchrow(
            "SELECT format_type(seqtypid, NULL) AS type, seqincrement AS increment, "
            "seqcycle AS cycle FROM pg_sequence WHERE seqrelid = to_regclass($1)",
            names.sequence_sql)
        problems = shape_problems([(str(r[0]), str(r[1]), bool(r[2])) for r in columns],
                                  list(primary_key or []), str(info[2]),
                                  None if sequence is None else dict(sequence))
        if not problems:
            # Tokens never go back, even if someone reset the sequence by hand.
            await conn.execute(
                f"SELECT setval('{names.sequence_sql}', greatest("
                f"(SELECT last_value FROM {names.sequence_sql}), "
                f"(SELECT coalesce(max(revision), 1) FROM {names.table_sql})))")
    return names, problems
