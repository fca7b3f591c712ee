"""Opening a PostgreSQL backend: the pool, the table, ``open_postgres_backend``.

The other half of the PostgreSQL backend (:mod:`trio_noleader._postgres` is the
protocol and its watch). Like it, this module needs the ``postgres`` extra.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import asyncpg
import trio

from . import _aio
from ._context import backend_scope
from ._exceptions import BackendUnavailable
from ._postgres import (
    _TRANSIENT,
    CONNECT_TIMEOUT,
    POOL_SIZE,
    PostgresBackend,
    _aio_setup,
    _describe,
)
from ._postgres_sql import TableNames
from ._types import type_error
from ._unwrap import bare_exceptions
from ._urls import DEFAULT_TABLE, check_table_name, dsn_address, dsn_secrets, parse_postgres_url

__all__ = ["open_postgres_backend"]

logger = logging.getLogger("trio_noleader")


async def _noop_reset(conn: Any) -> None:
    """Pool reset hook: our statements leave no session state behind."""


async def _aio_open_pool(dsn: str, pool_size: int, options: dict[str, Any]) -> Any:
    # min_size=0: asyncpg would otherwise keep reconnecting during an outage and log
    # a traceback for every attempt; connections are made when a call needs one.
    pool = await asyncpg.create_pool(dsn, min_size=0, max_size=pool_size,
                                     reset=_noop_reset, **options)
    try:
        # The first connection now: a bad address, a refused login or a missing
        # database fail the open rather than the first election.
        async with pool.acquire():
            pass
    except BaseException:
        pool.terminate()
        raise
    return pool


@asynccontextmanager
async def open_postgres_backend(
    dsn: str,
    *,
    table: str = DEFAULT_TABLE,
    pool_size: int = POOL_SIZE,
    create: bool = True,
    **connect_options: Any,
) -> AsyncIterator[PostgresBackend]:
    """Open a PostgreSQL lease table as the store, and make it the default backend.

    Runs asyncpg on a trio-asyncio loop: the one already running in this task
    (from ``trio_asyncio.open_loop()``), else a loop of its own for the block.
    Inside the block the backend is the default of ``hold_leadership`` and friends.

    On open it connects, then creates the table and its sequence if they are
    absent (under an advisory lock, so any number of processes may open a new
    table together), and checks an existing table's shape: one of another shape
    is refused before any election. The schema is in docs/howto/postgres.rst.

    Example::

        async with trio_noleader.open_postgres_backend("postgresql://app@db/app"):
            async with trio_noleader.hold_leadership("scheduler") as lead:
                ...

    Args:
        dsn (str): A libpq-style URL, ``postgresql://user:password@host:port/db``
            (``postgres://`` too; query parameters such as ``sslmode`` are asyncpg's).
        table (str): The lease table, ``name`` or ``schema.name`` (lower-case SQL
            identifiers).
        pool_size (int): Most connections the pool opens for the protocol's
            statements (1 to 100); watches use one more.
        create (bool): Create the table if it does not exist (the default). With
            ``False`` a missing table is a :class:`BackendUnavailable`: for tools
            that only look, where a typo must not create a table.
        **connect_options: Passed to ``asyncpg.connect``: ``password``, ``ssl``,
            ``server_settings``, ``statement_cache_size``, ... Defaults here:
            ``timeout=5`` (seconds per connection attempt).

    Raises:
        ValueError, TypeError: for bad arguments, before any I/O.
        BackendUnavailable: if the server cannot be reached, refuses the login or
            lacks the database (the cause chained), or the table has another
            shape. Messages name the server, never a password.

    Exceptions come out bare, never wrapped in an ``ExceptionGroup``.
    """
    if not isinstance(dsn, str):
        raise type_error("dsn", dsn, "a str")
    checked, url_table = parse_postgres_url(dsn)
    if checked != dsn or url_table != DEFAULT_TABLE:
        raise ValueError(f"dsn {dsn_address(dsn)!r}: pass the table as table=..., not in "
                         "the DSN (table= in a URL is for open_backend)")
    schema, name = check_table_name(table)
    if isinstance(pool_size, bool) or not isinstance(pool_size, int) \
            or not 1 <= pool_size <= 100:
        raise ValueError(f"pool_size={pool_size!r}: must be an int from 1 to 100")
    if not isinstance(create, bool):
        raise type_error("create", create, "a bool")
    options = {"timeout": CONNECT_TIMEOUT, **connect_options}
    address = dsn_address(dsn)
    secrets = dsn_secrets(dsn, options)

    with bare_exceptions():
        async with AsyncExitStack() as stack:
            loop = await stack.enter_async_context(_aio.asyncio_loop())
            try:
                pool = await _aio.call(loop, _aio_open_pool, dsn, pool_size, options)
            except asyncpg.DataError:
                raise
            except (*_TRANSIENT, asyncio.CancelledError, ValueError) as exc:
                raise BackendUnavailable(
                    f"cannot connect to PostgreSQL at {address}: "
                    f"{_describe(exc, secrets)}") from exc
            backend = PostgresBackend(loop=loop, pool=pool, names=TableNames("", name),
                                      dsn=dsn, address=address, secrets=secrets,
                                      connect_options=options)
            stack.push_async_callback(backend.aclose)
            try:
                names, problems = await _aio.call(loop, _aio_setup, pool, schema, name, create)
            except (*_TRANSIENT, asyncio.CancelledError) as exc:
                raise BackendUnavailable(
                    f"setting up the lease table {table!r} at {address}: "
                    f"{_describe(exc, secrets)}") from exc
            if problems:
                raise BackendUnavailable(
                    f"the table {names.qualified} at {address} is not a trio-noleader "
                    f"lease table: {'; '.join(problems)} (use another table=, or see "
                    "README.rst for the schema)")
            backend._names = names
            logger.debug("opened %r", backend)
            async with trio.open_nursery() as nursery:
                backend._nursery = nursery
                try:
                    async with backend_scope(backend):
                        yield backend
                finally:
                    backend._nursery = None
                    nursery.cancel_scope.cancel()
