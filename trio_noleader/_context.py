"""The default backend of a task (a contextvar), its scope, and the core's background tasks.

The election core runs a few tasks of its own for each backend instance: the
janitor's clean-ups, the one shared watch per key of local coalescing, batched
renewals. Inside ``async with open_backend(...)`` (or any ``open_*``, or ``async
with MemoryBackend()``) they run in that block's nursery; a backend used as a plain
object (``backend=MemoryBackend()``) has no block, so they run as trio system
tasks. Either way they never raise into the user's code: a failure is logged.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from contextvars import ContextVar
from typing import Any

import sniffio
import trio

from ._exceptions import NoLeaderError
from ._types import type_error
from ._unwrap import bare_exceptions
from .abc import Backend

__all__ = ["Services", "backend_scope", "require_trio", "resolve_backend", "services_for"]

logger = logging.getLogger("trio_noleader")

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


class Services:
    """Where the core's background tasks for one backend instance run."""

    def __init__(self) -> None:
        self._nurseries: list[trio.Nursery] = []
        self._running = 0
        self._idle = trio.Event()
        self._idle.set()

    def start(self, fn: Callable[..., Awaitable[object]], *args: Any, name: str) -> None:
        """Run ``fn(*args)`` in the background; an exception is logged, never raised."""
        if self._running == 0:
            self._idle = trio.Event()
        self._running += 1
        if self._nurseries:
            self._nurseries[-1].start_soon(self._guarded, fn, args, name, name=name)
        else:
            trio.lowlevel.spawn_system_task(self._guarded, fn, args, name, name=name)

    async def _guarded(self, fn: Callable[..., Awaitable[object]], args: tuple[Any, ...],
                       name: str) -> None:
        try:
            await fn(*args)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass  # the backend was closed under the task: nothing left to do
        except Exception:
            logger.exception("trio-noleader background task %s failed", name)
        finally:
            self._running -= 1
            if self._running == 0:
                self._idle.set()

    async def wait_idle(self) -> None:
        """Wait until no background task of this backend is running."""
        await self._idle.wait()

    @asynccontextmanager
    async def hosted(self) -> AsyncIterator[None]:
        """Run the tasks started inside the block in a nursery of the block."""
        async with trio.open_nursery() as nursery:
            self._nurseries.append(nursery)
            try:
                yield
            finally:
                self._nurseries.remove(nursery)
                nursery.cancel_scope.cancel()


_services: weakref.WeakKeyDictionary[Backend, Services] = weakref.WeakKeyDictionary()


def services_for(backend: Backend) -> Services:
    """The background-task host of *backend* (one per backend instance)."""
    services = _services.get(backend)
    if services is None:
        services = _services[backend] = Services()
    return services


@asynccontextmanager
async def backend_scope(backend: Backend) -> AsyncIterator[Backend]:
    """Make *backend* the default for the block, and host its background tasks there."""
    token = _current_backend.set(backend)
    try:
        with bare_exceptions():
            async with services_for(backend).hosted():
                yield backend
    finally:
        _current_backend.reset(token)
