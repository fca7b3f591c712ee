"""The default backend (a contextvar) and the janitor of abandoned leases."""

from __future__ import annotations

import logging
import uuid
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from contextvars import ContextVar

import trio

from ._exceptions import BackendUnavailable, NoLeaderError, RevisionMismatch
from ._types import decode_value
from ._unwrap import bare_exceptions
from .abc import Backend

logger = logging.getLogger("trio_noleader")

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
        raise TypeError(
            f"backend must be a trio_noleader.abc.Backend, got {type(backend).__name__}: "
            f"{backend!r:.80}"
        )
    return backend


class Janitor:
    """Leases we meant to release but could not reach the store for.

    A release (or the clean-up of a create that landed after its campaign gave up)
    that fails is remembered here. Whenever the store answers again the lease is
    deleted by compare-and-set if it still holds our candidate id; a renewal queued
    during an outage could otherwise keep the key for a whole extra ttl.
    """

    def __init__(self) -> None:
        self._pending: dict[tuple[str, uuid.UUID], None] = {}
        self._wakeup = trio.Event()

    def __len__(self) -> int:
        return len(self._pending)

    def add(self, key: str, candidate_id: uuid.UUID) -> None:
        logger.warning(
            "could not release %s (candidate %s) now; will release it once the store answers",
            key, candidate_id,
        )
        self._pending[(key, candidate_id)] = None
        self._wakeup.set()

    async def sweep(self, backend: Backend) -> bool:
        """Try every pending release once; return True when none is left."""
        for key, cid in list(self._pending):
            try:
                await release(backend, key, cid, None)
            except BackendUnavailable:
                continue
            self._pending.pop((key, cid), None)
        return not self._pending

    async def run(self, backend: Backend) -> None:
        """Sweep until cancelled: at once when something is added, then with backoff."""
        while True:
            await self._wakeup.wait()
            self._wakeup = trio.Event()
            delay = 0.1
            while not await self.sweep(backend):
                await trio.sleep(delay)
                delay = min(delay * 2, 5.0)


_janitors: weakref.WeakKeyDictionary[Backend, Janitor] = weakref.WeakKeyDictionary()


def janitor_for(backend: Backend) -> Janitor:
    janitor = _janitors.get(backend)
    if janitor is None:
        janitor = _janitors[backend] = Janitor()
    return janitor


async def release(backend: Backend, key: str, candidate_id: uuid.UUID,
                  revision: int | None) -> bool:
    """Delete *key* by compare-and-set if, and only if, *candidate_id* holds it.

    *revision* is the revision we believe we wrote last; ``None`` reads it first.
    Returns True if a lease of ours was deleted. Raises ``BackendUnavailable``.
    """
    while True:
        if revision is None:
            entry = await backend.get(key)
            if entry is None or decode_value(entry.value, entry.revision)[0] != candidate_id:
                return False
            revision = entry.revision
        try:
            await backend.delete(key, revision=revision)
        except RevisionMismatch:
            # A renewal of ours may have landed after all (new revision), or the
            # lease is gone or someone else's: read and decide, never guess.
            revision = None
            continue
        return True


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
