"""The backend protocol: the extension point for a new store.

A backend is a small key-value store with compare-and-set writes and per-key TTLs.
Implement :class:`Backend` and every election feature of trio-noleader works on
your store. The behavioural test suite in ``tests/test_contract.py`` shows what each
method must do; a new backend joins it by adding a fixture parameter.

Rules every backend keeps:

- Revisions are positive ints that only grow within a backend (across keys too),
  so that a revision can serve as a fencing token.
- ``create`` is *create-if-absent*; ``update`` and ``delete`` are
  *write-if-revision-is-still-N*. Nothing is ever read-then-written.
- An entry whose TTL has run out is gone: ``get`` returns ``None``, ``create``
  succeeds, and watchers see ``None``.
- Transient failures (timeouts, lost connections) raise
  :class:`~trio_noleader.BackendUnavailable` with the cause chained. Such a write
  may still have been applied; callers resolve that by reading.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass

from ._exceptions import BackendUnavailable, NoLeaderError, RevisionMismatch
from ._types import Entry

__all__ = ["Backend", "Entry", "Update"]


@dataclass(frozen=True, slots=True)
class Update:
    """One compare-and-set update of :meth:`Backend.update_many`: the arguments of
    :meth:`Backend.update`."""

    key: str
    value: bytes
    revision: int
    ttl: float


class Backend(ABC):
    """A store that can hold leases. All methods but :meth:`watch` are trio-async."""

    @abstractmethod
    async def create(self, key: str, value: bytes, *, ttl: float) -> int:
        """Store *value* under *key* only if no live entry exists there.

        Returns:
            int: The revision of the new entry.

        Raises:
            KeyExists: if a live entry exists.
            BackendUnavailable: if the store could not be reached (the write may
                still have been applied).
        """

    @abstractmethod
    async def update(self, key: str, value: bytes, *, revision: int, ttl: float) -> int:
        """Replace the entry only if it is live and has exactly *revision*.

        The entry's TTL restarts from the moment the write is applied.

        Returns:
            int: The new revision.

        Raises:
            RevisionMismatch: if there is no live entry or its revision differs.
            BackendUnavailable: as for :meth:`create`.
        """

    async def update_many(self, updates: Sequence[Update]) -> list[int | NoLeaderError]:
        """Apply several :meth:`update` calls at once, each on its own terms.

        Returns one result per update, in order: the new revision, or the
        :class:`~trio_noleader.RevisionMismatch` or
        :class:`~trio_noleader.BackendUnavailable` that :meth:`update` would have
        raised for it. One failed compare-and-set never fails the others. It may
        also raise ``BackendUnavailable`` as a whole (none, some or all of the
        updates may then have been applied).

        Optional: the default sends the updates one by one. A store that can do
        better (one transaction, one round trip, one bridged call) overrides it,
        and the election core then renews leases that fall due together in one
        call.
        """
        results: list[int | NoLeaderError] = []
        for update in updates:
            try:
                results.append(await self.update(update.key, update.value,
                                                 revision=update.revision, ttl=update.ttl))
            except (RevisionMismatch, BackendUnavailable) as exc:
                results.append(exc)
        return results

    @abstractmethod
    async def get(self, key: str) -> Entry | None:
        """Return the live entry under *key*, or ``None`` if absent, deleted or expired."""

    @abstractmethod
    async def delete(self, key: str, *, revision: int) -> None:
        """Delete the entry only if it is live and has exactly *revision*.

        Raises:
            RevisionMismatch: if there is no live entry or its revision differs.
            BackendUnavailable: as for :meth:`create`.
        """

    @abstractmethod
    def watch(self, key: str) -> AbstractAsyncContextManager[AsyncIterator[Entry | None]]:
        """Watch *key*: an async context manager yielding an async iterator.

        The iterator yields the current state first (an :class:`Entry` or ``None``),
        then one item for every change: a new or renewed entry, or ``None`` after a
        delete, purge or TTL expiry. It may repeat a state (for example ``None``
        twice); it must not skip a change to ``None``. Iteration raises
        :class:`~trio_noleader.BackendUnavailable` if the watch breaks.
        """

    @abstractmethod
    async def keys(self) -> list[str]:
        """Return the keys that hold a live entry, sorted."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook with a no-op default
        """Release the backend's resources. The default does nothing."""

    def check_ttl(self, ttl: float) -> None:  # noqa: B027 - optional hook
        """Raise ``ValueError`` if this store cannot keep leases of *ttl* seconds.

        Called before any I/O by ``hold_leadership``. The default accepts every
        positive ttl; a store with coarser TTLs (NATS: whole seconds, >= 1) refuses
        the others here, naming the value and the rule.
        """
