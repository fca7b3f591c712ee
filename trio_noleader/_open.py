"""open_backend(url): pick a backend by URL scheme."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from ._context import require_trio
from ._memory import MemoryBackend
from ._types import type_error
from ._urls import parse_nats_url, parse_postgres_url, parse_sqlite_url, scheme_of
from .abc import Backend

__all__ = ["open_backend"]


@asynccontextmanager
async def open_backend(url: str, *, create: bool = True) -> AsyncIterator[Backend]:
    """Open the backend that *url* names and make it the default for the block.

    - ``memory://`` -- a fresh :class:`MemoryBackend` (each call its own store);
    - ``sqlite:///path/to/file.db`` -- :func:`open_sqlite_backend` (absolute path;
      ``sqlite://relative.db`` is relative to the working directory);
    - ``nats://host:port/bucket`` (``tls://`` too) -- :func:`open_nats_backend`;
      the bucket defaults to ``noleader``, and ``user:password@`` or ``token@``
      in the URL are passed to the server. Query parameters set a bucket created
      here: ``?replicas=3&storage=memory``;
    - ``postgresql://user:password@host:port/database`` (``postgres://`` too) --
      :func:`open_postgres_backend`; ``?table=name`` picks the lease table.

    The URL is checked before the module serving it (and its optional extra) is
    imported, so a malformed URL is a ``ValueError`` even without the extra.

    Example::

        url = os.environ.get("NOLEADER_URL", "sqlite:///var/lib/myapp/leases.db")
        async with trio_noleader.open_backend(url):
            # Every call inside uses this store unless given backend=...
            async with trio_noleader.hold_leadership("scheduler") as lead:
                await run_scheduler(fencing_token=lead.token)

    Args:
        url (str): The store.
        create (bool): Create the store (an SQLite file, a NATS bucket) if it does
            not exist yet (the default). With ``False`` a missing one is a
            :class:`BackendUnavailable` naming it: for tools that only look.

    Raises:
        TypeError: if *url* is not a str.
        ValueError: for an unknown scheme or a malformed URL (before any I/O).
        BackendUnavailable: if the store cannot be reached.
        RuntimeError: outside trio (from asyncio: see the guide "Call it from
            asyncio through trio-asyncio").
    """
    kind = scheme_of(url)
    if not isinstance(create, bool):
        raise type_error("create", create, "a bool")
    if kind == "memory":
        require_trio("open_backend()")
        async with MemoryBackend() as backend:
            yield backend
    elif kind == "sqlite":
        path, sqlite_options = parse_sqlite_url(url)
        require_trio("open_backend()")
        from ._sqlite import open_sqlite_backend

        async with open_sqlite_backend(path, create=create, **sqlite_options) as backend:
            yield backend
    elif kind == "postgres":
        dsn, table = parse_postgres_url(url)
        from ._postgres_setup import open_postgres_backend

        async with open_postgres_backend(dsn, table=table, create=create) as backend:
            yield backend
    else:
        servers, bucket, options = parse_nats_url(url)
        require_trio("open_backend()")
        from ._nats_setup import open_nats_backend

        async with open_nats_backend(servers, bucket=bucket, create=create,
                                     **options) as backend:
            yield backend
