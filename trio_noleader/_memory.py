"""MemoryBackend: the whole protocol in one process, on trio's clock."""

from __future__ import annotations

import math
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from types import TracebackType

import trio

from ._context import backend_scope, require_trio
from ._exceptions import KeyExists, NoLeaderError, RevisionMismatch
from ._types import Entry, check_key
from .abc import Backend, Update

__all__ = ["MemoryBackend"]


@dataclass(slots=True)
class _Slot:
    value: bytes
    revision: int
    expires_at: float


class MemoryBackend(Backend):
    """An in-process store on trio's clock.

    TTLs run on :func:`trio.current_time`, so a :class:`trio.testing.MockClock`
    (for example pytest-trio's ``autojump_clock``) drives expiry in virtual time.
    Every call is a checkpoint. Use it as a plain object (``backend=MemoryBackend()``)
    or as an async context manager, which makes it the default backend for the
    block. Each instance is its own store.
    """

    def __init__(self) -> None:
        self._slots: dict[str, _Slot] = {}
        self._revision = 0
        self._watchers: dict[str, set[trio.MemorySendChannel[Entry | None]]] = {}
        self._scopes: list[AsyncExitStack] = []

    def __repr__(self) -> str:
        return f"<MemoryBackend keys={len(self._slots)} revision={self._revision}>"

    async def __aenter__(self) -> MemoryBackend:
        require_trio("MemoryBackend()")
        stack = AsyncExitStack()
        await stack.enter_async_context(backend_scope(self))
        self._scopes.append(stack)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        return await self._scopes.pop().__aexit__(exc_type, exc, tb)

    # -- internals ---------------------------------------------------------------

    def _next_revision(self) -> int:
        self._revision += 1
        return self._revision

    def _entry(self, key: str, slot: _Slot) -> Entry:
        return Entry(key, slot.value, slot.revision,
                     max(0.0, slot.expires_at - trio.current_time()))

    def _notify(self, key: str, state: Entry | None) -> None:
        for channel in self._watchers.get(key, ()):
            channel.send_nowait(state)

    def _live(self, key: str) -> _Slot | None:
        slot = self._slots.get(key)
        if slot is not None and trio.current_time() >= slot.expires_at:
            del self._slots[key]
            self._notify(key, None)
            return None
        return slot

    # -- the protocol ------------------------------------------------------------

    async def create(self, key: str, value: bytes, *, ttl: float) -> int:
        check_key(key)
        await trio.lowlevel.checkpoint()
        if self._live(key) is not None:
            raise KeyExists(key)
        slot = _Slot(bytes(value), self._next_revision(), trio.current_time() + ttl)
        self._slots[key] = slot
        self._notify(key, self._entry(key, slot))
        return slot.revision

    async def update(self, key: str, value: bytes, *, revision: int, ttl: float) -> int:
        check_key(key)
        await trio.lowlevel.checkpoint()
        return self._update(key, value, revision, ttl)

    async def update_many(self, updates: Sequence[Update]) -> list[int | NoLeaderError]:
        """Apply the updates together, at one instant, each on its own terms."""
        for update in updates:
            check_key(update.key)
        await trio.lowlevel.checkpoint()
        results: list[int | NoLeaderError] = []
        for u in updates:
            try:
                results.append(self._update(u.key, u.value, u.revision, u.ttl))
            except RevisionMismatch as exc:
                results.append(exc)
        return results

    def _update(self, key: str, value: bytes, revision: int, ttl: float) -> int:
        slot = self._live(key)
        if slot is None or slot.revision != revision:
            raise RevisionMismatch(
                f"{key}: expected revision {revision}, "
                f"found {'nothing' if slot is None else slot.revision}"
            )
        slot = _Slot(bytes(value), self._next_revision(), trio.current_time() + ttl)
        self._slots[key] = slot
        self._notify(key, self._entry(key, slot))
        return slot.revision

    async def get(self, key: str) -> Entry | None:
        check_key(key)
        await trio.lowlevel.checkpoint()
        slot = self._live(key)
        return None if slot is None else self._entry(key, slot)

    async def delete(self, key: str, *, revision: int) -> None:
        check_key(key)
        await trio.lowlevel.checkpoint()
        slot = self._live(key)
        if slot is None or slot.revision != revision:
            raise RevisionMismatch(
                f"{key}: expected revision {revision}, "
                f"found {'nothing' if slot is None else slot.revision}"
            )
        del self._slots[key]
        self._next_revision()
        self._notify(key, None)

    def watch(self, key: str) -> AbstractAsyncContextManager[AsyncIterator[Entry | None]]:
        check_key(key)
        return self._watch(key)

    @asynccontextmanager
    async def _watch(self, key: str) -> AsyncGenerator[AsyncIterator[Entry | None], None]:
        send, receive = trio.open_memory_channel[Entry | None](math.inf)
        watchers = self._watchers.setdefault(key, set())
        slot = self._live(key)
        send.send_nowait(None if slot is None else self._entry(key, slot))
        watchers.add(send)
        iterator = self._iterate(key, receive)
        try:
            yield iterator
        finally:
            await iterator.aclose()
            watchers.discard(send)
            if not watchers:
                self._watchers.pop(key, None)
            send.close()
            receive.close()

    async def _iterate(
        self, key: str, receive: trio.MemoryReceiveChannel[Entry | None]
    ) -> AsyncGenerator[Entry | None, None]:
        while True:
            slot = self._slots.get(key)
            expires_at = slot.expires_at if slot is not None else math.inf
            item: Entry | None = None
            received = False
            with trio.move_on_at(expires_at):
                item = await receive.receive()
                received = True
            if received:
                yield item
            else:
                # Expiry is noticed lazily: whoever looks first reports it to all.
                self._live(key)

    async def keys(self) -> list[str]:
        await trio.lowlevel.checkpoint()
        return sorted(key for key in list(self._slots) if self._live(key) is not None)
