"""Releasing leases: the compare-and-set delete, and the janitor for what it could not do.

A lease is only ever deleted by compare-and-set on a revision that holds our own
candidate id. Two cases need more than one delete, and go to the backend's
:class:`Janitor`:

- the store could not be reached when the lease was to be released: a renewal
  queued during the outage could otherwise keep the key for a whole extra ttl;
- a campaign ended unelected while a create of its own was still on its way. A
  read cannot settle that: NATS may answer a read before it applies a publish sent
  earlier on the same connection. The janitor *watches* the key instead, for as
  long as that create could still land, and deletes it if it does.
"""

from __future__ import annotations

import logging
import uuid
import weakref

import trio

from ._context import services_for
from ._exceptions import BackendUnavailable, RevisionMismatch
from ._types import Entry, decode_value
from ._util import Backoff
from .abc import Backend

__all__ = ["RELEASE_TIMEOUT", "Janitor", "janitor_for", "release_if_ours"]

logger = logging.getLogger("trio_noleader")

#: Upper bound on how long a release on exit may take before it is left to the janitor.
RELEASE_TIMEOUT = 5.0

#: The janitor's retry delays while the store stays unreachable (seconds).
JANITOR_BACKOFF = (0.1, 5.0)


def _holds(entry: Entry | None, candidate_id: uuid.UUID) -> bool:
    return entry is not None and decode_value(entry.value, entry.revision)[0] == candidate_id


async def release_if_ours(backend: Backend, key: str, candidate_id: uuid.UUID,
                          revision: int | None) -> bool:
    """Delete *key* by compare-and-set if, and only if, *candidate_id* holds it.

    *revision* is the revision we believe we wrote last; ``None`` reads it first.
    Returns True if a lease of ours was deleted. Raises ``BackendUnavailable``.
    """
    while True:
        if revision is None:
            entry = await backend.get(key)
            if entry is None or not _holds(entry, candidate_id):
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
    """Leases of one backend that we meant to release and could not, yet.

    Each is cleaned by a background task of the backend (see
    :func:`trio_noleader._context.services_for`) that watches the key: a lease of
    ours that shows there is deleted by compare-and-set. The task watches at least
    until *watch_until* (a write of ours may still land until then) and gives up at
    *give_up_at* (by then anything of ours has expired in the store anyway).
    """

    def __init__(self) -> None:
        self._pending: dict[tuple[str, uuid.UUID], None] = {}

    def __len__(self) -> int:
        return len(self._pending)

    def pending(self) -> list[tuple[str, uuid.UUID]]:
        """The ``(key, candidate_id)`` pairs still being cleaned."""
        return list(self._pending)

    def add(self, backend: Backend, key: str, candidate_id: uuid.UUID, *,
            watch_until: float, give_up_at: float, reason: str) -> None:
        """Clean up *key* for *candidate_id* in the background (see the class)."""
        logger.info("%s (candidate %s): %s; the janitor will delete it if it shows up",
                    key, candidate_id, reason)
        self._pending[(key, candidate_id)] = None
        services_for(backend).start(
            self._clean, backend, key, candidate_id, watch_until,
            max(give_up_at, watch_until),
            name=f"trio_noleader janitor {key}")

    async def _clean(self, backend: Backend, key: str, candidate_id: uuid.UUID,
                     watch_until: float, give_up_at: float) -> None:
        try:
            with trio.move_on_at(give_up_at) as scope:
                await self._watch_and_delete(backend, key, candidate_id, watch_until)
            if scope.cancelled_caught:
                logger.warning("could not clean up %s (candidate %s) before its lease "
                               "ran out in the store", key, candidate_id)
        finally:
            self._pending.pop((key, candidate_id), None)

    @staticmethod
    async def _watch_and_delete(backend: Backend, key: str, candidate_id: uuid.UUID,
                                watch_until: float) -> None:
        backoff = Backoff(*JANITOR_BACKOFF)
        while True:
            try:
                async with backend.watch(key) as updates:
                    entry = await anext(updates)  # the current state, read in any case
                    with trio.move_on_at(watch_until):
                        while not _holds(entry, candidate_id):
                            entry = await anext(updates)
                    if not _holds(entry, candidate_id):
                        return
                    assert entry is not None
                    if await release_if_ours(backend, key, candidate_id, entry.revision):
                        logger.info("janitor released %s (candidate %s)", key, candidate_id)
                    return
            except (BackendUnavailable, StopAsyncIteration) as exc:
                delay = backoff.next()
                logger.debug("janitor for %s: %s; again in %.2g s", key, exc, delay)
                await trio.sleep(delay)


_janitors: weakref.WeakKeyDictionary[Backend, Janitor] = weakref.WeakKeyDictionary()


def janitor_for(backend: Backend) -> Janitor:
    """The janitor of *backend* (one per backend instance, made on first use)."""
    janitor = _janitors.get(backend)
    if janitor is None:
        janitor = _janitors[backend] = Janitor()
    return janitor
