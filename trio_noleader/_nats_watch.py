"""The watch of the NATS backend: one bridged call per item, broken on a lost link."""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any

import nats.js.errors
import nats.js.kv
import trio

from . import _aio
from ._exceptions import BackendUnavailable
from ._nats_base import _TRANSIENT, REQUEST_TIMEOUT, WATCH_LIVENESS_INTERVAL, logger
from ._types import Entry

if TYPE_CHECKING:
    from ._nats import NatsBackend

__all__ = ["Updates"]


class Updates:
    """The async iterator of :meth:`NatsBackend.watch`.

    Each item is fetched by one bridged call, so no trio cancel scope or nursery
    stays open between items: the iterator may be driven from async generators and
    from different tasks, and a cancelled ``__anext__`` loses nothing (the
    asyncio-side read of the watcher's queue survives it and is reused).
    """

    def __init__(self, backend: NatsBackend, key: str, watcher: Any) -> None:
        self._backend = backend
        self._key = key
        self._watcher = watcher
        self._getter: asyncio.Task[Any] | None = None
        self._yielded = False
        self._last: int | None = None  # revision of the last Entry yielded, None for None
        self._closed = False
        self._disconnects = backend._link.disconnects

    def __aiter__(self) -> Updates:
        return self

    async def _aio_next(self) -> Any:
        while True:
            if self._backend._link.disconnects != self._disconnects:
                # The ordered consumer may take 10 s or more to resume, and may miss what
                # expired meanwhile: break the watch; the caller watches afresh.
                raise BackendUnavailable(
                    f"watch of {self._key!r} broke: the connection to NATS at "
                    f"{self._backend._address} was lost")
            if self._getter is None:
                self._getter = asyncio.ensure_future(self._watcher._updates.get())
            # asyncio.wait (unlike wait_for) never cancels the getter: an item that
            # arrives while we are being cancelled stays for the next call.
            done, _ = await asyncio.wait({self._getter}, timeout=WATCH_LIVENESS_INTERVAL)
            if done:
                getter, self._getter = self._getter, None
                return getter.result()

    async def __anext__(self) -> Entry | None:
        if self._closed:
            raise StopAsyncIteration
        while True:
            update = await self._backend._call(f"watch {self._key!r}", self._aio_next)
            if isinstance(update, nats.js.kv.StopIterSentinel):
                raise StopAsyncIteration
            if update is None:
                # nats-py's "initial state delivered" sentinel: the key had no message.
                if self._yielded:
                    continue
                state: Entry | None = None
            elif update.operation in ("DEL", "PURGE"):  # also expiry markers
                state = None
                self._backend._vacated(self._key, update.revision)
            else:
                state = Entry(self._key, bytes(update.value or b""), update.revision)
            revision = None if state is None else state.revision
            if self._yielded and revision == self._last:
                # A second marker (say a purge after the expiry marker) is no change.
                continue
            if state is not None:
                self._backend._remember(self._key, state.revision)
            self._yielded = True
            self._last = revision
            return state

    async def aclose(self) -> None:
        """Stop the watcher (unsubscribe); idempotent, shielded and bounded."""
        if self._closed:
            return
        self._closed = True
        getter, self._getter = self._getter, None
        if getter is not None:
            getter.cancel()
        if self._backend._closed:
            return
        with trio.move_on_after(REQUEST_TIMEOUT, shield=True):
            try:
                await _aio.call(self._backend.loop, self._aio_stop)
            except (*_TRANSIENT, asyncio.CancelledError) as exc:
                logger.debug("stopping a watcher of %s: %s", self._key, exc)

    async def _aio_stop(self) -> None:
        await self._watcher.stop()
        # Every campaign that waits opens a watch. Left to the server, a closed
        # watch's consumer lingers for WATCH_INACTIVE_THRESHOLD, and a stream takes
        # at most 1,000 consumers by default (nats-server 2.15): many candidates
        # churning would run out. Delete it now; the threshold is the backstop.
        sub = getattr(self._watcher, "_sub", None)
        stream, consumer = getattr(sub, "_stream", None), getattr(sub, "_consumer", None)
        if stream and consumer:
            with contextlib.suppress(nats.js.errors.NotFoundError):
                await self._backend._js.delete_consumer(stream, consumer)
