"""The PostgreSQL backend in the behavioural suite: a fresh table per test."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
import trio_asyncio
from harness import BackendSpec

from trio_noleader._postgres import PostgresBackend
from trio_noleader._postgres_setup import open_postgres_backend
from trio_noleader.abc import Backend


async def drop_table(backend: PostgresBackend) -> None:
    """Remove the backend's table and its sequence (tests only), shielded and bounded."""
    with trio.move_on_after(5, shield=True):
        await trio_asyncio.aio_as_trio(backend.pool.execute, loop=backend.loop)(
            f"DROP TABLE IF EXISTS {backend.table}")


async def drop_tables(url: str, *tables: str) -> None:
    """Drop tables a test made through another process (tests only), bounded."""
    import asyncpg

    with trio.move_on_after(10, shield=True):
        async with trio_asyncio.open_loop() as loop:
            conn = await trio_asyncio.aio_as_trio(asyncpg.connect, loop=loop)(url)
            try:
                for table in tables:
                    await trio_asyncio.aio_as_trio(conn.execute, loop=loop)(
                        f"DROP TABLE IF EXISTS {table}")
            finally:
                await trio_asyncio.aio_as_trio(conn.close, loop=loop)()


@asynccontextmanager
async def open_test_backend(request: pytest.FixtureRequest,
                            table: str | None = None) -> AsyncIterator[PostgresBackend]:
    """A backend on a new, uniquely named table, dropped afterwards."""
    url: str = request.getfixturevalue("postgres_url")
    name = table or f"test_{uuid.uuid4().hex[:16]}"
    async with open_postgres_backend(url, table=name) as backend:
        try:
            yield backend
        finally:
            await drop_table(backend)


@asynccontextmanager
async def _open(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    async with open_test_backend(request) as backend:
        yield backend


# Real clock (under MockClock trio-asyncio would hand asyncpg virtual time). Expiry is
# seen by a timer set from the server's count, so it is late by little more than a
# round trip; the slack is for a loaded 2-core CI machine.
SPEC = BackendSpec("postgres", _open, ttl=1.0, latency=0.25, expiry_slack=0.25,
                   virtual_time=False)
