"""At scale: local coalescing, batched renewals, and thousands of tasks on one key.

Every backend runs the protocol-level tests (``update_many``); the coalescing and
batching rules are shown in virtual time on the memory backend through a
:class:`FaultyBackend`, which counts every store call; and 3,000 tasks of one
process contend on SQLite and NATS on the real clock.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import pytest
import trio
import trio.testing

from trio_noleader import (
    Leadership,
    LeadershipLost,
    MemoryBackend,
    RevisionMismatch,
    _batch,
    hold_leadership,
    open_backend,
)
from trio_noleader.abc import Backend, Update
from trio_noleader.testing import FaultyBackend

KEY = "jobs/scale"


# -- the protocol: update_many ------------------------------------------------------


async def test_update_many_keeps_each_outcome(spec: Any, clock: object,
                                              backend: Backend) -> None:
    ttl = spec.ttl
    revisions = [await backend.create(f"k{i}", b"v" * 16, ttl=ttl) for i in range(4)]
    # k1 is renewed with a stale revision; k3 was deleted meanwhile.
    await backend.delete("k3", revision=revisions[3])
    results = await backend.update_many([
        Update("k0", b"a" * 16, revisions[0], ttl),
        Update("k1", b"b" * 16, revisions[1] - 1 if revisions[1] > 1 else 10**9, ttl),
        Update("k2", b"c" * 16, revisions[2], ttl),
        Update("k3", b"d" * 16, revisions[3], ttl),
    ])
    assert isinstance(results[0], int)
    assert results[0] > max(revisions)
    assert isinstance(results[1], RevisionMismatch)
    assert isinstance(results[2], int)
    assert results[2] > max(revisions)
    assert isinstance(results[3], RevisionMismatch)
    for key, value, result in (("k0", b"a" * 16, results[0]), ("k2", b"c" * 16, results[2])):
        entry = await backend.get(key)
        assert entry is not None
        assert (entry.value, entry.revision) == (value, result)
    entry = await backend.get("k1")
    assert entry is not None
    assert entry.revision == revisions[1]
    assert await backend.update_many([]) == []


# -- coalescing ---------------------------------------------------------------------


async def test_one_create_per_vacancy_and_first_come_first_served(
    autojump_clock: trio.testing.MockClock,
) -> None:
    store = MemoryBackend()
    local = FaultyBackend(store, latency=0.001)  # one process's link to the store
    order: list[int] = []
    terms = 12
    waiting = 200
    enough = trio.Event()

    async def candidate(index: int, started: trio.Event) -> None:
        started.set()
        async with hold_leadership(KEY, backend=local, ttl=10) as lead:
            order.append(index)
            await trio.sleep(0.5)
            if len(order) >= terms:
                enough.set()
                await trio.sleep_forever()
            lead.resign()

    with trio.move_on_after(terms * 0.5 + 5):
        async with trio.open_nursery() as nursery:
            for index in range(waiting):
                started = trio.Event()
                nursery.start_soon(candidate, index, started)
                await started.wait()
                await trio.sleep(0.0001)  # arrival order is index order
            await enough.wait()
            nursery.cancel_scope.cancel()
    assert order == list(range(terms)), "first come, first served"
    creates = [c for c in local.calls if c.op == "create"]
    watches = [c for c in local.calls if c.op == "watch"]
    # One create per term, plus at most a handful of first tries while the shared
    # watch was opening; never one per waiting task.
    assert terms <= len(creates) <= terms + 3, [c.outcome for c in creates]
    assert len(watches) <= 2
    assert all(c.op != "get" for c in local.calls)


async def test_tasks_of_one_process_do_not_wake_each_other(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # 1,000 waiting tasks and a leader renewing many times: the waiters stay
    # asleep (store calls do not grow with them).
    store = MemoryBackend()
    local = FaultyBackend(store)
    async with trio.open_nursery() as nursery:
        elected = trio.Event()

        async def leader() -> None:
            async with hold_leadership(KEY, backend=local, ttl=3) as lead:
                elected.set()
                await trio.sleep(30)
                lead.resign()

        nursery.start_soon(leader)
        await elected.wait()
        for _ in range(1000):
            nursery.start_soon(_campaign_forever, local)
        await trio.sleep(29)
        calls = len(local.calls)
        nursery.cancel_scope.cancel()
    renewals = sum(1 for c in local.calls if c.op == "update")
    creates = sum(1 for c in local.calls if c.op == "create")
    assert renewals >= 25
    # The head of the queue tries once on arrival and then once per ttl without
    # news (a safety net should a watch miss a change): 1 + 29 / 3, not 1,000.
    assert creates <= 1 + 29 // 3 + 1
    # Beyond those: the leader's renewals and the shared watch.
    assert calls <= renewals + creates + 2


async def _campaign_forever(backend: Backend) -> None:
    async with hold_leadership(KEY, backend=backend, ttl=3):
        await trio.sleep_forever()  # pragma: no cover - cancelled while waiting


# -- batched renewals ---------------------------------------------------------------


async def test_leases_due_together_are_renewed_in_batches(
    autojump_clock: trio.testing.MockClock,
) -> None:
    backend = MemoryBackend()
    leases = 300
    held: list[Leadership] = []
    async with backend, trio.open_nursery() as nursery:
        ready = trio.Event()

        async def lead(index: int) -> None:
            async with hold_leadership(f"lease/{index}", ttl=15) as term:
                held.append(term)
                if len(held) == leases:
                    ready.set()
                await trio.sleep_forever()

        for index in range(leases):
            nursery.start_soon(lead, index)
        await ready.wait()
        before = _batch.batches(backend)
        await trio.sleep(16)  # three renewal rounds
        sent = _batch.batches(backend) - before
        for term in held:
            assert term.deadline > trio.current_time()  # every lease still held
        nursery.cancel_scope.cancel()
    # 900 renewals in a handful of calls (one per round, split at MAX_BATCH).
    assert 3 <= sent <= 3 * math.ceil(leases / _batch.MAX_BATCH) + 3


async def test_leases_taken_over_a_moment_are_renewed_together(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Renewals wake on a grid of renew_interval / 50: leases taken 2 ms apart
    (as a sharded member's claims are) go in one or two batches a round, not one
    each, and none is renewed later than due."""
    backend = MemoryBackend()
    leases, apart = 40, 0.002  # taken over 80 ms; the grid is 100 ms
    ttl, renew_interval = 15.0, 5.0
    held: list[Leadership] = []
    async with backend, trio.open_nursery() as nursery:

        async def lead(index: int) -> None:
            async with hold_leadership(f"lease/{index}", ttl=ttl,
                                       renew_interval=renew_interval) as term:
                held.append(term)
                await trio.sleep_forever()

        for index in range(leases):
            nursery.start_soon(lead, index)
            await trio.sleep(apart)
        before = _batch.batches(backend)
        await trio.sleep(3 * renew_interval + 0.5)  # three renewal rounds
        sent = _batch.batches(backend) - before
        for term in held:
            # Renewed in the last round (a lease that missed it would be 5 s older).
            assert term.deadline > trio.current_time() + ttl - renew_interval - 0.6
        nursery.cancel_scope.cancel()
    assert 3 <= sent <= 3 * 2


async def test_one_failed_renewal_in_a_batch_fails_only_its_own_lease(
    autojump_clock: trio.testing.MockClock,
) -> None:
    backend = MemoryBackend()
    lost: list[str] = []
    kept: list[str] = []
    async with backend, trio.open_nursery() as nursery:
        elected = trio.Event()
        count = 0

        async def lead(key: str) -> None:
            nonlocal count
            try:
                async with hold_leadership(key, ttl=15):
                    count += 1
                    if count == 3:
                        elected.set()
                    await trio.sleep(12)
                kept.append(key)
            except LeadershipLost:
                lost.append(key)

        for key in ("a", "b", "c"):
            nursery.start_soon(lead, key)
        await elected.wait()
        # An operator clears b's lease: its next renewal (in a batch with a and c)
        # finds another revision.
        entry = await backend.get("b")
        assert entry is not None
        await backend.delete("b", revision=entry.revision)
    assert lost == ["b"]
    assert sorted(kept) == ["a", "c"]


# -- thousands of tasks, real stores ------------------------------------------------


@pytest.mark.parametrize("store", ["sqlite", pytest.param("nats", marks=pytest.mark.nats)])
async def test_three_thousand_tasks_keep_electing(store: str, request: pytest.FixtureRequest,
                                                  tmp_path: Any) -> None:
    if store == "sqlite":
        url = f"sqlite://{tmp_path / 'leases.db'}?new_store_grace=off"
    else:
        url = f"{request.getfixturevalue('nats_url')}/scale_{id(request)}?new_store_grace=off"
    terms: list[float] = []
    wanted = 10
    enough = trio.Event()
    async with open_backend(url), trio.open_nursery() as nursery:
        async def candidate() -> None:
            async with hold_leadership(KEY, ttl=5) as lead:
                terms.append(trio.current_time())
                await trio.sleep(0.05)
                if len(terms) >= wanted:
                    enough.set()
                    await trio.sleep_forever()
                lead.resign()

        for _ in range(3000):
            nursery.start_soon(candidate)
        with trio.fail_after(60):
            await enough.wait()
        nursery.cancel_scope.cancel()
    gaps = [b - a - 0.05 for a, b in itertools.pairwise(terms)]
    # Terms keep coming at the uncontended pace: handovers of milliseconds, here
    # bounded generously for a loaded 2-core machine.
    assert max(gaps) < 1.0, gaps
