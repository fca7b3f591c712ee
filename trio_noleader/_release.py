"""Releasing leases: the compare-and-set delete, and the janitor for the ones that failed.

A lease is only ever deleted by compare-and-set on a revision that holds our own
candidate id. When the store cannot be reached at that moment, the lease is handed
to the backend's :class:`Janitor`, which deletes it (still only if it is ours) once
the store answers again: a renewal queued during an outage could otherwise keep the
key for a whole extra ttl after its holder gave up.
"""

from __future__ import annotations

import logging
import uuid
import weakref

import trio

from ._exceptions import BackendUnavailable, RevisionMismatch
from ._types import decode_value
from ._util import Backoff
from .abc import Backend

__all__ = ["RELEASE_TIMEOUT", "Janitor", "janitor_for", "release_if_ours"]

logger = logging.getLogger("trio_noleader")

#: Upper bound on how long a release on exit may take before it is left to the janitor.
RELEASE_TIMEOUT = 5.0

#: The janitor's retry delays while the store stays unreachable (seconds).
JANITOR_BACKOFF = (0.1, 5.0)


async def release_if_ours(backend: Backend, key: str, candidate_id: uuid.UUID,
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


class Janitor:
    """Leases of one backend that we meant to release but could not reach the store for.

    A release (or the clean-up of a create that landed after its campaign gave up)
    that fails is remembered here. Whenever the store answers again the lease is
    deleted by compare-and-set if it still holds our candidate id.
    """

    def __init__(self) -> None:
        self._pending: dict[tuple[str, uuid.UUID], None] = {}
        self._wakeup = trio.Event()

    def __len__(self) -> int:
        return len(self._pending)

    def add(self, key: str, candidate_id: uuid.UUID) -> None:
        """Remember to release *key* for *candidate_id*; the janitor tries at once."""
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
                await release_if_ours(backend, key, cid, None)
            except BackendUnavailable:
                continue
            self._pending.pop((key, cid), None)
        return not self._pending

    async def run(self, backend: Backend) -> None:
        """Sweep until cancelled: at once when something is added, then with backoff."""
        backoff = Backoff(*JANITOR_BACKOFF)
        while True:
            await self._wakeup.wait()
            self._wakeup = trio.Event()
            backoff.reset()
            while True:
                if await self.sweep(backend):
                    break
                await trio.sleep(backoff.next())


_janitors: weakref.WeakKeyDictionary[Backend, Janitor] = weakref.WeakKeyDictionary()


def janitor_for(backend: Backend) -> Janitor:
    """The janitor of *backend* (one per backend instance, made on first use)."""
    janitor = _janitors.get(backend)
    if janitor is None:
        janitor = _janitors[backend] = Janitor()
    return janitor
