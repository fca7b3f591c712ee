"""The default backend of a task (a contextvar), and the scope that sets it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from contextvars import ContextVar

import sniffio
import trio

from ._exceptions import NoLeaderError
from ._release import janitor_for
from ._types import type_error
from ._unwrap import bare_exceptions
from .abc import Backend

__all__ = ["backend_scope", "require_trio", "resolve_backend"]

_current_backend: ContextVar[Backend | None] = ContextVar(
    "trio_noleader_current_backend", default=None
)


#: How to reach us from asyncio code, for the error that says we need trio.
FROM_ASYNCIO = (
    "from asyncio code, run the trio part on a trio-asyncio loop: inside "
    "`async with trio_asyncio.open_loop():`, call a trio function that does the work as "
    "`await trio_asyncio.trio_as_aio(trio_fn)(*args)` (README.rst, \"From asyncio\")"
)


def require_trio(what: str) -> None:
    """Raise a clear ``RuntimeError`` unless the caller runs as trio code.

    Called once at each entry point (entering ``hold_leadership`` or an ``open_*``,
    ``run_as_leader``, ``current_leader``, ``watch_leader``), never on a backend's
    per-call paths. Without it, asyncio code (``asyncio.run()``, or the asyncio side
    of trio-asyncio without ``trio_as_aio``) gets an ``AttributeError``, "must be
    called from async context" or a ``TrioInternalError`` from deep inside trio.

    Args:
        what (str): The entry point, as the user spelt it (``"hold_leadership()"``).

    Raises:
        RuntimeError: naming *what*, where it was called from, and the recipe.
    """
    try:
        library = sniffio.current_async_library()
    except sniffio.AsyncLibraryNotFoundError:
        library = None
    if library == "trio":
        return
    where = "outside any event loop" if library is None else f"from {library} code"
    raise RuntimeError(
        f"trio_noleader.{what} needs trio, but it was called {where}; {FROM_ASYNCIO}")


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
