"""The default backend of a task (a contextvar), and the scope that sets it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from contextvars import ContextVar

import trio

from ._exceptions import NoLeaderError
from ._release import janitor_for
from ._types import type_error
from ._unwrap import bare_exceptions
from .abc import Backend

__all__ = ["backend_scope", "resolve_backend"]

_current_backend: ContextVar[Backend | None] = ContextVar(
    "trio_noleader_current_backend", default=None
)


def resolve_backend(backend: Backend | None) -> Backend:
    """Return *backend*, or the innermost open one; raise ``NoLeaderError`` if none."""
    if backend is None:
        backend = _current_backend.get()
        if backend is None:
            raise NoLeaderError(
                "no backend: pass backend=..., or enter `async with open_backend(url):` "
                "(or open_sqlite_backend / open_nats_backend / MemoryBackend()) first"
            )
        return backend
    if not isinstance(backend, Backend):
        raise type_error("backend", backend, "a trio_noleader.abc.Backend")
    return backend


@asynccontextmanager
async def backend_scope(backend: Backend) -> AsyncIterator[Backend]:
    """Make *backend* the default for the block and run its janitor beside it."""
    token = _current_backend.set(backend)
    try:
        with bare_exceptions():
            async with trio.open_nursery() as nursery:
                nursery.start_soon(janitor_for(backend).run, backend)
                try:
                    yield backend
                finally:
                    nursery.cancel_scope.cancel()
    finally:
        _current_backend.reset(token)
