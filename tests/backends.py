"""Every backend the suites run against, in one place.

conftest's ``spec`` fixture runs a test once per entry of :data:`BACKENDS`, and
each entry carries its backend's marks (anyio's ``anyio_backend`` pattern): so
``-m "not nats"`` deselects every NATS case of every suite from here. The NATS
entry imports nothing of the ``nats`` extra until a NATS case runs.

A new backend is one more :class:`~tests.harness.BackendSpec` in :data:`SPECS` (with
a mark of its own if it needs a server): the behavioural suite
(tests/test_contract.py), the bad-input suite (tests/test_bad_input.py) and, given
``shared``, the multi-process test (tests/test_multiprocess.py) then run on it.
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from trio_noleader import MemoryBackend, open_backend, open_sqlite_backend
from trio_noleader._sqlite import DEFAULT_POLL_INTERVAL, SQLiteBackend
from trio_noleader.abc import Backend

from .harness import BackendSpec, SharedStore
from .nats_fixture import delete_bucket, open_test_backend, stream_state
from .postgres_fixture import drop_tables, table_state
from .postgres_fixture import open_test_backend as open_postgres_test_backend

__all__ = ["BACKENDS", "MEMORY", "NATS", "POSTGRES", "SHARED_BACKENDS", "SPECS", "SQLITE"]


# -- memory ----------------------------------------------------------------------------------


@asynccontextmanager
async def _open_memory(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    async with MemoryBackend() as backend:
        yield backend


async def _memory_state(backend: Backend) -> object:
    assert isinstance(backend, MemoryBackend)
    return repr(backend)  # its keys and its revision counter


MEMORY = BackendSpec("memory", _open_memory, _memory_state, ttl=15.0, latency=0.0,
                     expiry_slack=0.0, virtual_time=True)


# -- SQLite ----------------------------------------------------------------------------------

#: Fast polling keeps the suite quick; the default (25 ms) is meant for production.
POLL_INTERVAL = 0.01


@asynccontextmanager
async def _open_sqlite(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    tmp_path: Path = request.getfixturevalue("tmp_path")
    # A fresh file per test, none replaced: no grace for the first lease of a store.
    async with open_sqlite_backend(tmp_path / "leases.db", poll_interval=POLL_INTERVAL,
                                   new_store_grace=False) as backend:
        yield backend


def _dump(path: str) -> list[str]:
    with sqlite3.connect(path) as conn:
        return list(conn.iterdump())


async def _sqlite_state(backend: Backend) -> object:
    assert isinstance(backend, SQLiteBackend)
    return await trio.to_thread.run_sync(_dump, backend.path)


@asynccontextmanager
async def _sqlite_url(request: pytest.FixtureRequest) -> AsyncIterator[str]:
    tmp_path: Path = request.getfixturevalue("tmp_path")
    yield f"sqlite://{tmp_path / 'leases.db'}"


# Real clock: a short ttl keeps expiry tests quick, with room for a loaded 2-core CI.
SQLITE = BackendSpec(
    "sqlite", _open_sqlite, _sqlite_state, ttl=1.0, latency=0.25, expiry_slack=0.25,
    virtual_time=False,
    # The candidate processes poll at the default interval: a release is seen up
    # to one interval late.
    shared=SharedStore(_sqlite_url, ttl=1.5, handover=0.2 + DEFAULT_POLL_INTERVAL))


# -- NATS ------------------------------------------------------------------------------------


@asynccontextmanager
async def _open_nats(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    async with open_test_backend(request) as backend:
        yield backend


async def _nats_state(backend: Backend) -> object:
    from trio_noleader._nats import NatsBackend

    assert isinstance(backend, NatsBackend)
    return await stream_state(backend)


@asynccontextmanager
async def _nats_url(request: pytest.FixtureRequest) -> AsyncIterator[str]:
    url = f"{request.getfixturevalue('nats_url')}/mp_{uuid.uuid4().hex[:16]}?storage=memory"
    try:
        yield url
    finally:
        from trio_noleader._nats import NatsBackend

        with trio.move_on_after(10, shield=True):
            async with open_backend(url) as backend:
                assert isinstance(backend, NatsBackend)
                await delete_bucket(backend)


# Real clock (under MockClock trio-asyncio would hand nats-py virtual time). NATS TTLs
# are whole seconds; the expiry marker comes up to ~0.25 s after the TTL, and the
# server's TTL timer may add to that on a loaded 2-core CI machine.
NATS = BackendSpec(
    "nats", _open_nats, _nats_state, ttl=2.0, latency=0.25, expiry_slack=1.0,
    virtual_time=False, marks=(pytest.mark.nats,),
    shared=SharedStore(_nats_url, ttl=2, handover=0.2))


# -- PostgreSQL ------------------------------------------------------------------------------


@asynccontextmanager
async def _open_postgres(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    async with open_postgres_test_backend(request) as backend:
        yield backend


async def _postgres_state(backend: Backend) -> object:
    from trio_noleader._postgres import PostgresBackend

    assert isinstance(backend, PostgresBackend)
    return await table_state(backend)


@asynccontextmanager
async def _postgres_url(request: pytest.FixtureRequest) -> AsyncIterator[str]:
    server: str = request.getfixturevalue("postgres_url")
    table = f"mp_{uuid.uuid4().hex[:16]}"
    try:
        yield f"{server}?table={table}"
    finally:
        await drop_tables(server, table)


# Real clock (under MockClock trio-asyncio would hand asyncpg virtual time). Expiry is
# seen by a timer set from the server's count, late by little more than a round trip;
# the slack is for a loaded 2-core CI machine.
POSTGRES = BackendSpec(
    "postgres", _open_postgres, _postgres_state, ttl=1.0, latency=0.25, expiry_slack=0.25,
    virtual_time=False, marks=(pytest.mark.postgres,),
    shared=SharedStore(_postgres_url, ttl=1.5, handover=0.2))


#: Every backend under test.
SPECS: tuple[BackendSpec, ...] = (MEMORY, SQLITE, NATS, POSTGRES)

#: The ``spec`` fixture's parameters: one per backend, with its marks.
BACKENDS: list[pytest.ParameterSet] = [spec.param() for spec in SPECS]

#: The backends whose stores OS processes of their own can share.
SHARED_BACKENDS: list[pytest.ParameterSet] = [spec.param() for spec in SPECS
                                              if spec.shared is not None]
