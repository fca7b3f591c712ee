"""Local coalescing: the campaigns of one backend instance for one key take turns.

However many tasks of a process campaign for one key, they share one watch of the
key and queue locally, first come first served; only the head of the queue writes
to the store. A vacancy therefore costs each process one create, not one per
waiting task, and nobody's watch is opened or closed on the critical path of a
handover: the hub's watch stays open, in a background task of the backend, for as
long as anyone waits.
"""

from __future__ import annotations

import collections
import contextlib
import weakref

import trio

from ._context import services_for
from ._exceptions import BackendUnavailable
from ._types import Entry
from ._util import Backoff
from .abc import Backend

__all__ = ["UNKNOWN", "KeyHub", "Ticket", "hub_for"]


class _Unknown:
    def __repr__(self) -> str:
        return "UNKNOWN"


#: The hub's state before its watch delivered anything, and while the watch is broken.
UNKNOWN = _Unknown()

#: Delays between attempts to re-open a broken watch (seconds).
WATCH_BACKOFF = (0.05, 2.0)


class Ticket:
    """One campaign's place in the queue; its ``turn`` is set when it is at the head."""

    __slots__ = ("turn",)

    def __init__(self) -> None:
        self.turn = trio.Event()


class KeyHub:
    """The local queue and the shared watch of one key on one backend instance.

    Attributes:
        state: What the watch last showed: an :class:`Entry`, ``None`` (vacant) or
            :data:`UNKNOWN`.
        version (int): Bumped on every change of ``state``.
        floor (int): The version at the last local election. A vacancy seen at or
            below it was taken by that election (the watch may not have caught up
            yet); the next head waits for a newer one.
    """

    def __init__(self, backend: Backend, key: str) -> None:
        self.backend = backend
        self.key = key
        self.state: Entry | _Unknown | None = UNKNOWN
        self.version = 0
        self.floor = 0
        self._queue: collections.deque[Ticket] = collections.deque()
        self._changed = trio.Event()
        self._watching = False
        self._stop = trio.CancelScope()
        #: The broken watch's wait before it re-opens, while it waits.
        self._backing_off: trio.CancelScope | None = None

    def __len__(self) -> int:
        return len(self._queue)

    # -- the queue ---------------------------------------------------------------

    def join(self) -> Ticket:
        """Queue up; the ticket's ``turn`` is set once it is at the head."""
        ticket = Ticket()
        self._queue.append(ticket)
        if len(self._queue) == 1:
            ticket.turn.set()
        return ticket

    def leave(self, ticket: Ticket) -> None:
        """Leave the queue (elected, or given up); the next in line gets its turn."""
        if self._queue and self._queue[0] is ticket:
            self._queue.popleft()
            if self._queue:
                self._queue[0].turn.set()
        else:
            with contextlib.suppress(ValueError):  # already gone
                self._queue.remove(ticket)
        if not self._queue:
            self._stop.cancel()  # the watch closes in its own task, off any critical path
            _forget(self)

    # -- the state ---------------------------------------------------------------

    def start_watching(self) -> None:
        """Open the shared watch (in a background task) unless it is open."""
        if not self._watching and self._queue:
            self._watching = True
            self._stop = trio.CancelScope()
            services_for(self.backend).start(self._watch, name=f"trio_noleader watch {self.key}")

    @property
    def watch_broken(self) -> bool:
        """Whether the shared watch broke and waits out its backoff to re-open."""
        return self._backing_off is not None

    def store_answered(self) -> None:
        """A campaign got an answer from the store: a broken watch re-opens now.

        Its backoff (up to ``WATCH_BACKOFF[1]``) is for a store that stays away;
        once a call gets through, waiting it out would leave the campaigns blind
        to the next vacancy (they would try only after a ttl without news).
        """
        if self._backing_off is not None:
            self._backing_off.cancel()

    def observe(self, state: Entry | _Unknown | None) -> None:
        """Record a new state; an entry seen twice (same revision) is no change.

        ``None`` always is: a watch repeats it when something may have happened in
        between (SQLite: a whole term between two polls).
        """
        old = self.state
        if (state is UNKNOWN and old is UNKNOWN) or (
                isinstance(state, Entry) and isinstance(old, Entry)
                and state.revision == old.revision):
            return
        self.state = state
        self.version += 1
        self._changed.set()
        self._changed = trio.Event()

    def elected(self, entry: Entry) -> None:
        """A campaign of this hub won: its entry is the state until the watch says more."""
        self.observe(entry)
        self.floor = self.version

    async def wait_change(self, version: int, deadline: float) -> None:
        """Return once ``version`` has been passed, or at *deadline*."""
        with trio.move_on_at(deadline):
            while self.version <= version:
                await self._changed.wait()

    async def _watch(self) -> None:
        backoff = Backoff(*WATCH_BACKOFF)
        try:
            with self._stop:
                while True:
                    try:
                        async with self.backend.watch(self.key) as updates:
                            async for entry in updates:
                                backoff.reset()
                                self.observe(entry)
                    except BackendUnavailable:
                        pass
                    # The watch broke (or ended): the head decides for itself meanwhile.
                    self.observe(UNKNOWN)
                    with trio.CancelScope() as self._backing_off:
                        await trio.sleep(backoff.next())
                    self._backing_off = None
        finally:
            self._watching = False
            self._backing_off = None


_hubs: weakref.WeakKeyDictionary[Backend, dict[str, KeyHub]] = weakref.WeakKeyDictionary()


def hub_for(backend: Backend, key: str) -> KeyHub:
    """The hub of *key* on *backend*, made when its first campaign arrives."""
    hubs = _hubs.get(backend)
    if hubs is None:
        hubs = _hubs[backend] = {}
    hub = hubs.get(key)
    if hub is None:
        hub = hubs[key] = KeyHub(backend, key)
    return hub


def _forget(hub: KeyHub) -> None:
    hubs = _hubs.get(hub.backend)
    if hubs is not None and hubs.get(hub.key) is hub:
        del hubs[hub.key]
