"""The election core's finer points, on the memory backend in virtual time."""

from __future__ import annotations

import logging
import uuid

import pytest
import trio
import trio.testing

import trio_noleader
from trio_noleader import (
    LeadershipLost,
    MemoryBackend,
    NoLeaderError,
    current_leader,
    hold_leadership,
    open_backend,
)
from trio_noleader._context import backend_scope
from trio_noleader._types import decode_value, encode_value, new_candidate_id
from trio_noleader.testing import FaultyBackend

KEY = "compactor"
TTL = 15.0


async def test_card_spelling_with_open_backend(autojump_clock: trio.testing.MockClock) -> None:
    async with open_backend("memory://"), hold_leadership(KEY) as scope:
        assert scope.token == 1
        info = await current_leader(KEY)
        assert info is not None
        assert info.candidate_id == scope.candidate_id


async def test_each_memory_url_is_a_fresh_store(autojump_clock: trio.testing.MockClock) -> None:
    async with open_backend("memory://") as first, open_backend("memory://") as second:
        assert first is not second
        async with hold_leadership(KEY, backend=first):
            assert await current_leader(KEY, backend=second) is None


async def test_innermost_backend_wins(autojump_clock: trio.testing.MockClock) -> None:
    outer, inner = MemoryBackend(), MemoryBackend()
    async with outer, inner, hold_leadership(KEY):
        assert await inner.keys() == [KEY]
        assert await outer.keys() == []


async def test_no_backend_raises_on_entry() -> None:
    manager = hold_leadership(KEY)  # arguments are fine; the backend is looked up on entry
    with pytest.raises(NoLeaderError, match="no backend"):
        async with manager:
            pass  # pragma: no cover
    with pytest.raises(NoLeaderError):
        await current_leader(KEY)


async def test_ambiguous_create_is_adopted(autojump_clock: trio.testing.MockClock) -> None:
    store = MemoryBackend()
    faulty = FaultyBackend(store, latency=0.5)
    faulty.lose_next_replies = 1
    start = trio.current_time()
    async with hold_leadership(KEY, backend=faulty, ttl=TTL) as lead:
        calls = [(c.op, c.outcome) for c in faulty.calls]
        # One create: it landed, its reply was lost, the key's watch showed our id
        # (no read needed), and the adopted lease was renewed at once before the
        # body was entered.
        assert calls == [("create", "lost-reply"), ("update", "ok")]
        assert lead.token == 1
        # The deadline counts from the renewal's send time (its reply took 0.5 s
        # each way), never from when a reply arrived.
        renewal_sent = faulty.calls[-1].time - 1.0
        assert renewal_sent > start
        assert lead.deadline == pytest.approx(renewal_sent + TTL - TTL / 10)


async def test_late_resolved_acquisition_is_renewed_before_the_body(
    autojump_clock: trio.testing.MockClock,
) -> None:
    store = MemoryBackend()
    faulty = FaultyBackend(store)
    faulty.lose_next_replies = 1
    start = trio.current_time()
    entered: list[float] = []

    async def heal_later() -> None:
        await trio.sleep(TTL / 3 + 1)  # past the first renewal's due time
        faulty.heal()

    async with trio.open_nursery() as nursery:
        faulty.lose_next_replies = 1
        nursery.start_soon(heal_later)

        async def partition_after_create() -> None:
            await faulty.wait_calls(1)
            faulty.partition()

        nursery.start_soon(partition_after_create)
        async with hold_leadership(KEY, backend=faulty, ttl=TTL) as lead:
            entered.append(trio.current_time())
            ops = [(c.op, c.outcome) for c in faulty.calls if c.outcome == "ok"]
            # The body is entered only after a successful renewal.
            assert ("update", "ok") in ops
            assert lead.deadline >= entered[0] + TTL - TTL / 10 - 0.001
    assert entered[0] >= start + TTL / 3


async def test_adopting_never_moves_the_deadline_past_the_store(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # A renewal that is lost before reaching the store, then a read showing our
    # last known revision: the deadline must stay at that write's send time.
    store = MemoryBackend()
    faulty = FaultyBackend(store)
    async with hold_leadership(KEY, backend=faulty, ttl=TTL) as lead:
        first_deadline = lead.deadline
        faulty.partition()
        await trio.sleep(TTL / 3 + 0.5)  # the first renewal fails
        faulty.heal()
        assert lead.deadline == first_deadline
        await trio.sleep(TTL / 3)  # a retry succeeds and moves it out
        assert lead.deadline > first_deadline


async def test_abandoned_release_is_retried_by_the_janitor(
    autojump_clock: trio.testing.MockClock,
) -> None:
    store = MemoryBackend()
    faulty = FaultyBackend(store)
    async with backend_scope(faulty):
        async with hold_leadership(KEY, ttl=TTL):
            faulty.partition()
        # The release could not reach the store: the lease is still there.
        assert await store.keys() == [KEY]
        healed_at = trio.current_time()
        faulty.heal()
        async with store.watch(KEY) as updates:
            async for entry in updates:
                if entry is None:
                    break
        # Cleared by the janitor's retries, well before the ttl would have run out.
        assert trio.current_time() - healed_at < TTL / 2


async def test_cancelled_campaign_cleans_up_its_landed_create(
    autojump_clock: trio.testing.MockClock,
) -> None:
    store = MemoryBackend()
    # Each call takes 2 ms to reach the store and 2 ms to come back; cancelling at
    # 3 ms leaves the create applied with its reply in flight.
    faulty = FaultyBackend(store, latency=0.002)
    with trio.move_on_after(0.003):
        async with hold_leadership(KEY, backend=faulty, ttl=TTL):
            pytest.fail("elected")  # pragma: no cover
    assert [c.outcome for c in faulty.calls if c.op == "create"] == ["cancelled"]
    assert await store.keys() == [KEY]  # landed after its campaign gave up
    # The janitor watches the key (a read could miss a create still on its way),
    # sees the campaign's own id there and deletes it by CAS, within milliseconds.
    cancelled_at = trio.current_time()
    async with store.watch(KEY) as updates:
        async for entry in updates:
            if entry is None:
                break
    assert trio.current_time() - cancelled_at < 0.05
    # The store applied the janitor's compare-and-set delete (its reply may still
    # be on the way back).
    assert [(w.op, w.result) for w in faulty.writes if w.op == "delete"] == [("delete", "ok")]
    assert await store.keys() == []


async def test_leadership_lost_beats_a_clean_body_exit(
    autojump_clock: trio.testing.MockClock,
) -> None:
    store = MemoryBackend()
    with pytest.raises(LeadershipLost, match="expired or was deleted"):
        async with hold_leadership(KEY, backend=store, ttl=TTL) as lead:
            entry = await store.get(KEY)
            assert entry is not None
            await store.delete(KEY, revision=entry.revision)
            await trio.sleep(TTL)
    assert lead.cancel_scope.cancelled_caught


async def test_exceptions_are_bare_through_open_backend(
    autojump_clock: trio.testing.MockClock,
) -> None:
    error = KeyError("x")
    with pytest.raises(KeyError) as info:
        async with open_backend("memory://"), hold_leadership(KEY):
            raise error
    assert info.value is error
    assert not isinstance(info.value, BaseExceptionGroup)


async def test_lost_is_not_a_group(autojump_clock: trio.testing.MockClock) -> None:
    store = MemoryBackend()
    faulty = FaultyBackend(store)
    with pytest.raises(LeadershipLost) as info:
        async with hold_leadership(KEY, backend=faulty, ttl=TTL):
            faulty.partition()
            await trio.sleep_forever()
    assert type(info.value) is LeadershipLost


async def test_outside_cancellation_wins_over_loss(autojump_clock: trio.testing.MockClock) -> None:
    store = MemoryBackend()
    faulty = FaultyBackend(store)
    with trio.move_on_after(TTL - TTL / 10) as scope:  # same instant as the lease deadline
        async with hold_leadership(KEY, backend=faulty, ttl=TTL):
            faulty.partition()
            await trio.sleep_forever()
    assert scope.cancelled_caught


async def test_resign_from_another_task(autojump_clock: trio.testing.MockClock) -> None:
    store = MemoryBackend()
    async with (
        trio.open_nursery() as nursery,
        hold_leadership(KEY, backend=store, ttl=TTL) as lead,
    ):
        nursery.start_soon(_resign_soon, lead)
        await trio.sleep_forever()
    assert await store.keys() == []


async def _resign_soon(lead: trio_noleader.Leadership) -> None:
    await trio.sleep(1)
    lead.resign()
    lead.resign()  # idempotent


async def test_wait_false_rides_out_transient_errors(
    autojump_clock: trio.testing.MockClock,
) -> None:
    store = MemoryBackend()
    faulty = FaultyBackend(store)
    faulty.partition()

    async def heal() -> None:
        await trio.sleep(3)
        faulty.heal()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(heal)
        async with hold_leadership(KEY, backend=faulty, ttl=TTL, wait=False) as lead:
            assert trio.current_time() >= 3
            assert lead.token == 1


async def test_logging(caplog: pytest.LogCaptureFixture,
                       autojump_clock: trio.testing.MockClock) -> None:
    caplog.set_level(logging.DEBUG, logger="trio_noleader")
    store = MemoryBackend()
    async with hold_leadership(KEY, backend=store, ttl=TTL) as lead:
        await trio.sleep(TTL / 2)
    text = caplog.text
    for word in ("elected", "renewed", "released"):
        assert word in text
    assert str(lead.candidate_id) in text
    assert KEY in text


def test_uuid7_and_value_format() -> None:
    ids = [new_candidate_id() for _ in range(100)]
    assert all(i.version == 7 for i in ids)
    assert all(i.variant == uuid.RFC_4122 for i in ids)
    assert len(set(ids)) == 100
    cid = ids[0]
    assert encode_value(cid) == cid.bytes
    assert decode_value(cid.bytes, 41) == (cid, 41)
    assert decode_value(encode_value(cid, 7), 41) == (cid, 7)
    assert decode_value(b"x" * 17, 41) == (None, None)
    assert decode_value(b"", 41) == (None, None)


async def test_renewal_backoff_leaves_a_try_before_the_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Regression: renewals backed off 0.5, 1, 2, 2.5, 2.5 s after failing at t=5,
    # so the next try fell on the deadline (13.5) although the store was back at 12.
    faulty = FaultyBackend(MemoryBackend())

    async def outage() -> None:
        await trio.sleep(4.9)
        faulty.partition()
        await trio.sleep(12.0 - 4.9)
        faulty.heal()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(outage)
        async with hold_leadership(KEY, backend=faulty, ttl=TTL) as lead:
            await trio.sleep(20)
            assert not lead.cancel_scope.cancel_called
            assert lead.deadline > trio.current_time()


async def test_current_leadership_gives_run_as_leader_its_token(
    autojump_clock: trio.testing.MockClock,
) -> None:
    store = MemoryBackend()
    with pytest.raises(NoLeaderError, match="outside hold_leadership"):
        trio_noleader.current_leadership()

    async def work() -> int:
        async with trio.open_nursery() as nursery:  # child tasks see it too
            nursery.start_soon(trio.sleep, 0)
        return trio_noleader.current_leadership().token

    async with hold_leadership(KEY, backend=store, ttl=TTL) as first:
        pass
    token = await trio_noleader.run_as_leader(KEY, work, backend=store, ttl=TTL)
    assert token > first.token
    info = await current_leader(KEY, backend=store)
    assert info is None
    with pytest.raises(NoLeaderError):
        trio_noleader.current_leadership()
