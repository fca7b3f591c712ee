"""The watch of the PostgreSQL backend: notes from NOTIFY payloads, per-key views.

Pure trio, no asyncpg: :mod:`trio_noleader._postgres` feeds the LISTEN
connection's callbacks into a :class:`Listener` and runs one :class:`View` per
watch. Every write's NOTIFY describes it (see :mod:`trio_noleader._postgres_sql`),
and notifications arrive in the order their transactions committed, so a view
moves from note to note and reads its key back only when a note falls short.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Any

import trio

from ._types import Entry

__all__ = ["Listener", "Note", "Subscription", "View", "parse_note"]


@dataclass(frozen=True, slots=True)
class Note:
    """One write to a key, as its NOTIFY tells it (see ``_postgres_sql``)."""

    #: "s": created or renewed; "d": deleted; "r": unknown, read the key back.
    op: str
    revision: int = 0
    term: int = 0
    ttl: float = 0.0
    #: None when the value was too long to travel: read it back.
    value: bytes | None = None


def parse_note(payload: str) -> tuple[str, Note]:
    """``(key, note)`` from a NOTIFY payload of our channel."""
    parts = payload.split(" ")
    try:
        if parts[0] == "s" and len(parts) == 6:
            value = None if parts[4] == "-" else bytes.fromhex(parts[4])
            return parts[5], Note("s", int(parts[1]), int(parts[2]), int(parts[3]) / 1e6,
                                   value)
        if parts[0] == "d" and len(parts) == 3:
            return parts[2], Note("d", int(parts[1]))
    except ValueError:
        pass
    # Someone else's NOTIFY on our channel (say, by hand with the key): look again.
    return payload, Note("r")


class Subscription:
    """The notes of one key for one watcher, in commit order."""

    #: Notes kept unread at most; past that the watcher reads the key back instead.
    LIMIT = 1000

    def __init__(self) -> None:
        self.notes: deque[Note] = deque()
        self.overflow = False
        self.wakeup = trio.Event()

    def push(self, note: Note) -> None:
        if len(self.notes) >= self.LIMIT:
            self.notes.clear()
            self.overflow = True
        else:
            self.notes.append(note)
        self.wakeup.set()


class Listener:
    """The one LISTEN connection of a backend, shared by all its watches.

    Notifications arrive on the asyncio loop, in trio's thread, in the order their
    transactions committed; the callback hands each to the subscriptions of its key.
    """

    def __init__(self, conn: Any, channel: str) -> None:
        self.conn = conn
        self.channel = channel
        self.subscriptions: dict[str, set[Subscription]] = {}
        self.broken: BaseException | None = None

    @property
    def watchers(self) -> int:
        return sum(map(len, self.subscriptions.values()))

    def subscribe(self, key: str) -> Subscription:
        subscription = Subscription()
        self.subscriptions.setdefault(key, set()).add(subscription)
        return subscription

    def unsubscribe(self, key: str, subscription: Subscription) -> None:
        found = self.subscriptions.get(key)
        if found is not None:
            found.discard(subscription)
            if not found:
                del self.subscriptions[key]

    def notified(self, conn: Any, pid: int, channel: str, payload: str) -> None:
        key, note = parse_note(payload)
        for subscription in self.subscriptions.get(key, ()):
            subscription.push(note)

    def terminated(self, conn: Any) -> None:
        self.fail(ConnectionError("the LISTEN connection was closed"))

    def fail(self, exc: BaseException) -> None:
        if self.broken is None:
            self.broken = exc
        for subscriptions in self.subscriptions.values():
            for subscription in subscriptions:
                subscription.wakeup.set()


class View:
    """What a watcher has reported of its key, and how to move it on.

    Every method returns the items to yield (possibly none), or None when a note
    cannot be applied and the key must be read back. Revisions order everything: a
    note or read older than what the view knows changes nothing.
    """

    def __init__(self, key: str) -> None:
        self.key = key
        self.entry: Entry | None = None
        self.term = 0
        self.revision = 0
        #: trio time at which the reported entry expires (the server's count).
        self.expires = math.inf

    def read(self, row: Any, now: float) -> list[Entry | None]:
        if row is None:
            return self._gone()
        revision, remaining = int(row[1]), float(row[3])
        if revision < self.revision:
            return []
        if not remaining > 0:
            self.revision = revision
            return self._gone()
        return self._set(Entry(self.key, bytes(row[0]), revision, remaining), int(row[2]),
                         now + remaining)

    def note(self, note: Note, now: float) -> list[Entry | None] | None:
        if note.op == "d":
            if note.revision < self.revision:
                return []
            self.revision = note.revision
            return self._gone()
        if note.op != "s" or note.value is None:
            return None
        if note.revision <= self.revision:
            return []
        return self._set(Entry(self.key, note.value, note.revision, note.ttl), note.term,
                         now + note.ttl)

    def _gone(self) -> list[Entry | None]:
        if self.entry is None:
            return []
        self.entry, self.expires = None, math.inf
        return [None]

    def _set(self, entry: Entry, term: int, expires: float) -> list[Entry | None]:
        self.expires = expires
        if self.entry is not None and entry.revision == self.entry.revision:
            return []
        # A new term while an old one was shown: the key was vacant in between.
        items: list[Entry | None] = [None] if self.entry is not None and term != self.term \
            else []
        self.entry, self.term, self.revision = entry, term, entry.revision
        return [*items, entry]
