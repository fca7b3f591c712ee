"""Counting what a process asks of its store: per backend method, and on the wire.

Two counts, taken in the benchmark's own subprocesses:

- :class:`CountingBackend` delegates to the real backend and adds one to a counter
  per public call (``create``, ``update``, ``update_many`` and the updates in it,
  ``get``, ``delete``, ``watch`` opened, ``keys``). It overrides ``update_many``, so
  renewals through it are batched exactly when the inner backend batches them;
  :class:`UnbatchedCountingBackend` does not, so the election core renews each
  lease with its own ``update`` call (the "without batching" rows).
- :class:`WireCounter` counts what reaches the store: for NATS every request sent on
  the backend's connection (``nats.aio.client.Client.request``, which every
  JetStream publish and API call goes through: writes, reads, consumer creates and
  deletes for watches), by subject; for SQLite every SQL statement the process
  runs (through ``sqlite3.Connection.set_trace_callback``), and the round trips to
  the file they make up: a transaction (``BEGIN`` ... ``COMMIT``) is one, a
  statement outside one (a read, the watch's ``PRAGMA data_version`` poll) is one.

Neither needs anything of the library beyond its public API (``NatsBackend.connection``
is documented) and the standard library's ``sqlite3.connect``.
"""

from __future__ import annotations

import collections
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import AbstractAsyncContextManager, contextmanager
from typing import Any

from trio_noleader import NoLeaderError
from trio_noleader.abc import Backend, Entry, Update

__all__ = ["CountingBackend", "UnbatchedCountingBackend", "WireCounter"]


class CountingBackend(Backend):
    """Delegates to another backend and counts the calls (one integer add per call)."""

    def __init__(self, inner: Backend) -> None:
        self.inner = inner
        self.calls: dict[str, int] = {"create": 0, "update": 0, "update_many": 0,
                                      "updates_in_batches": 0, "get": 0, "delete": 0,
                                      "watch": 0, "keys": 0}

    async def create(self, key: str, value: bytes, *, ttl: float) -> int:
        self.calls["create"] += 1
        return await self.inner.create(key, value, ttl=ttl)

    async def update(self, key: str, value: bytes, *, revision: int, ttl: float) -> int:
        self.calls["update"] += 1
        return await self.inner.update(key, value, revision=revision, ttl=ttl)

    async def update_many(self, updates: Sequence[Update]) -> list[int | NoLeaderError]:
        self.calls["update_many"] += 1
        self.calls["updates_in_batches"] += len(updates)
        return await self.inner.update_many(updates)

    async def get(self, key: str) -> Entry | None:
        self.calls["get"] += 1
        return await self.inner.get(key)

    async def delete(self, key: str, *, revision: int) -> None:
        self.calls["delete"] += 1
        await self.inner.delete(key, revision=revision)

    def watch(self, key: str) -> AbstractAsyncContextManager[AsyncIterator[Entry | None]]:
        self.calls["watch"] += 1
        return self.inner.watch(key)

    async def keys(self) -> list[str]:
        self.calls["keys"] += 1
        return await self.inner.keys()

    def check_ttl(self, ttl: float) -> None:
        self.inner.check_ttl(ttl)

    def renewals(self) -> int:
        """Renewal writes sent: single updates plus the updates inside batches."""
        return self.calls["update"] + self.calls["updates_in_batches"]

    def store_calls(self) -> int:
        """Calls into the backend (a batch counts once)."""
        return sum(v for k, v in self.calls.items() if k != "updates_in_batches")


class UnbatchedCountingBackend(CountingBackend):
    """Like :class:`CountingBackend`, but with the default ``update_many``.

    The election core batches renewals only through a backend whose class
    overrides ``update_many``; through this one each renewal is its own ``update``.
    """

    update_many = Backend.update_many


def _nats_kind(subject: str) -> str:
    if subject.startswith("$KV."):
        return "write"  # a create, renewal or delete: a publish awaiting its ack
    if ".MSG.GET." in subject or ".DIRECT.GET." in subject:
        return "read"
    if ".CONSUMER.CREATE." in subject or ".CONSUMER.DURABLE.CREATE." in subject:
        return "watch open"  # the consumer behind a KV watch
    if ".CONSUMER.DELETE." in subject:
        return "watch close"
    return "other API"


class WireCounter:
    """What one process sends to its store; ``counts`` maps a kind to a number.

    ``round_trips()`` is the figure the contention target speaks of: JetStream
    requests on NATS, transactions plus lone statements on SQLite.
    """

    def __init__(self) -> None:
        self.counts: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()
        self._in_transaction: dict[int, bool] = {}

    def reset(self) -> None:
        with self._lock:
            self.counts.clear()

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self.counts)

    def round_trips(self) -> int:
        counts = self.snapshot()
        return sum(v for k, v in counts.items() if not k.startswith("sql statements"))

    # -- NATS ----------------------------------------------------------------------

    def attach_nats(self, backend: Backend) -> bool:
        """Count the requests on *backend*'s connection if it is a NATS backend."""
        connection = getattr(backend, "connection", None)
        request = getattr(connection, "request", None)
        if request is None:
            return False

        async def counted(subject: str, *args: Any, **kwargs: Any) -> Any:
            self.counts[_nats_kind(subject)] += 1
            return await request(subject, *args, **kwargs)

        connection.request = counted  # type: ignore[union-attr]
        return True

    # -- SQLite --------------------------------------------------------------------

    def _trace(self, conn_id: int) -> Callable[[str], None]:
        def trace(statement: str) -> None:
            word = statement.lstrip().split(None, 1)[0].upper() if statement.strip() else ""
            with self._lock:
                self.counts["sql statements"] += 1
                inside = self._in_transaction.get(conn_id, False)
                if word == "BEGIN":
                    self._in_transaction[conn_id] = True
                    self.counts["transaction"] += 1
                elif word in ("COMMIT", "ROLLBACK", "END"):
                    self._in_transaction[conn_id] = False
                elif not inside:
                    poll = "DATA_VERSION" in statement.upper()
                    self.counts["watch poll" if poll else "read"] += 1
        return trace

    @contextmanager
    def sqlite_connections(self) -> Iterator[None]:
        """Trace every ``sqlite3`` connection opened in the block (for its lifetime)."""
        original = sqlite3.connect

        def connect(*args: Any, **kwargs: Any) -> sqlite3.Connection:
            conn: sqlite3.Connection = original(*args, **kwargs)
            conn.set_trace_callback(self._trace(id(conn)))
            return conn

        sqlite3.connect = connect  # type: ignore[assignment]
        try:
            yield
        finally:
            sqlite3.connect = original
