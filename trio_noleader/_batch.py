"""Batched renewals: leases of one backend that fall due together go in one call.

Only for backends that override :meth:`Backend.update_many` (NATS: one bridged
call publishing them all; SQLite: one transaction). Renewals that are due in the
same scheduling round are collected and sent at once, in a background task of the
backend; no renewal waits for a batch already under way (each batch is a call of
its own) and each keeps its own outcome.
"""

from __future__ import annotations

import heapq
import math
import weakref
from dataclasses import dataclass, field

import trio

from ._context import services_for
from ._exceptions import BackendUnavailable, NoLeaderError
from .abc import Backend, Update

__all__ = ["batches", "batches_renewals", "renew", "sleep_until"]

#: The largest batch sent in one call.
MAX_BATCH = 512


@dataclass(eq=False)
class _Request:
    update: Update
    deadline: float
    done: trio.Event = field(default_factory=trio.Event)
    result: int | NoLeaderError | None = None


class _Batcher:
    def __init__(self) -> None:
        self.pending: list[_Request] = []
        self.calls = 0  # batches sent so far (for tests and benchmarks)

    async def renew(self, backend: Backend, update: Update, deadline: float) -> int:
        request = _Request(update, deadline)
        self.pending.append(request)
        if len(self.pending) == 1:
            services_for(backend).start(self._flush, backend, name="trio_noleader renewals")
        # If this task is cancelled the renewal stays in its batch: like any write
        # whose caller gave up, it may still land (the core resolves that).
        await request.done.wait()
        result = request.result
        if isinstance(result, NoLeaderError):
            raise result
        assert result is not None
        return result

    async def _flush(self, backend: Backend) -> None:
        # Started by the first renewal of a round: by the time it runs, the others
        # due in the same round have joined.
        batch, self.pending = self.pending[:MAX_BATCH], self.pending[MAX_BATCH:]
        if self.pending:
            services_for(backend).start(self._flush, backend, name="trio_noleader renewals")
        self.calls += 1
        deadline = max(request.deadline for request in batch)
        results: list[int | NoLeaderError] = []
        failure: BaseException | None = None
        try:
            with trio.move_on_at(deadline) as scope:
                results = await backend.update_many([r.update for r in batch])
            if scope.cancelled_caught:
                failure = TimeoutError("no answer before the last lease's deadline")
        except BackendUnavailable as exc:
            failure = exc
        finally:
            for i, request in enumerate(batch):
                if i < len(results):
                    request.result = results[i]
                else:
                    # One exception object per waiting task: each raises its own.
                    error = BackendUnavailable(
                        f"renewing {request.update.key!r}: {failure or 'batch cancelled'}")
                    error.__cause__ = failure
                    request.result = error
                request.done.set()


class _Clock:
    """One timer for the renewal loops of a backend: they wait on events it sets.

    A thousand leases each sleeping on a deadline of its own cost a thousand
    deadline expiries, each a ``Cancelled`` raised and caught in its task; leases due
    together (they are put on a grid, see ``Campaign._due``) wake here in one
    expiry, and each renewal loop just finds its event set.
    """

    def __init__(self) -> None:
        self.due: list[tuple[float, int, trio.Event]] = []
        self.count = 0
        self.running = False
        self.changed = trio.Event()

    async def sleep_until(self, backend: Backend, when: float) -> None:
        if when <= trio.current_time():
            await trio.lowlevel.checkpoint()
            return
        event = trio.Event()
        self.count += 1
        heapq.heappush(self.due, (when, self.count, event))
        if not self.running:
            self.running = True
            services_for(backend).start(self._run, name="trio_noleader renewal clock")
        elif self.due[0][2] is event:
            self.changed.set()  # the earliest now: the clock sleeps too long
        await event.wait()

    async def _run(self) -> None:
        try:
            while self.due:
                when = self.due[0][0]
                self.changed = trio.Event()
                with trio.move_on_at(when):
                    await self.changed.wait()
                now = trio.current_time()
                while self.due and self.due[0][0] <= now:
                    heapq.heappop(self.due)[2].set()
        finally:
            self.running = False
            for _, _, event in self.due:  # the host went away: wake the sleepers
                event.set()
            self.due.clear()


_batchers: weakref.WeakKeyDictionary[Backend, _Batcher] = weakref.WeakKeyDictionary()
_clocks: weakref.WeakKeyDictionary[Backend, _Clock] = weakref.WeakKeyDictionary()


async def sleep_until(backend: Backend, when: float) -> None:
    """``trio.sleep_until(when)``, for a renewal loop of *backend* (see :class:`_Clock`)."""
    clock = _clocks.get(backend)
    if clock is None:
        clock = _clocks[backend] = _Clock()
    await clock.sleep_until(backend, when)


def batches_renewals(backend: Backend) -> bool:
    """Whether renewals through *backend* go in batches (it overrides ``update_many``)."""
    return type(backend).update_many is not Backend.update_many


async def renew(backend: Backend, update: Update, deadline: float = math.inf) -> int:
    """``backend.update(...)``, batched with the other renewals due now if it can be."""
    if not batches_renewals(backend):
        return await backend.update(update.key, update.value, revision=update.revision,
                                    ttl=update.ttl)
    batcher = _batchers.get(backend)
    if batcher is None:
        batcher = _batchers[backend] = _Batcher()
    return await batcher.renew(backend, update, deadline)


def batches(backend: Backend) -> int:
    """How many renewal batches have been sent through *backend* (0 if none)."""
    batcher = _batchers.get(backend)
    return 0 if batcher is None else batcher.calls
