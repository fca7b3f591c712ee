"""Leadership.statistics() and the observer hook, in virtual time."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
import trio
import trio.testing

import trio_noleader
from trio_noleader import (
    LeadershipEvent,
    LeadershipLost,
    LeadershipStatistics,
    MemoryBackend,
    _observe,
    add_observer,
    hold_leadership,
    remove_observer,
)
from trio_noleader._observe import log_event, observers
from trio_noleader.testing import FaultyBackend

KEY = "jobs/observed"
TTL = 9.0  # renew every 3 s, guard 0.9 s: deadline = sent + 8.1 s


@pytest.fixture
def events() -> Iterator[list[LeadershipEvent]]:
    seen: list[LeadershipEvent] = []
    add_observer(seen.append)
    try:
        yield seen
    finally:
        remove_observer(seen.append)


def kinds(events: list[LeadershipEvent]) -> list[str]:
    return [e.kind for e in events]


async def test_statistics_after_renewals(autojump_clock: trio.testing.MockClock) -> None:
    store = FaultyBackend(MemoryBackend(), latency=0.01)
    start = trio.current_time()
    async with hold_leadership(KEY, backend=store, ttl=TTL, name="stats:1") as lead:
        stats = lead.statistics()
        assert isinstance(stats, LeadershipStatistics)
        assert (stats.key, stats.name, stats.candidate_id, stats.token) == (
            KEY, "stats:1", lead.candidate_id, lead.token)
        assert stats.elected_at == pytest.approx(start + 0.02)
        assert stats.campaign_seconds == pytest.approx(0.02)
        assert (stats.renewals, stats.renew_failures, stats.last_renew_seconds) == (0, 0, None)
        assert stats.time_left == pytest.approx(TTL - TTL / 10 - 0.02)
        assert (stats.ttl, stats.renew_interval, stats.guard) == (TTL, 3.0, 0.9)
        with pytest.raises(AttributeError):
            stats.renewals = 5  # type: ignore[misc]

        await trio.sleep(3 * 3.0 + 0.5)  # three renewals
        stats = lead.statistics()
        assert stats.renewals == 3
        assert stats.renew_failures == 0
        assert stats.last_renew_seconds == pytest.approx(0.02)
        assert stats.last_renewed_at is not None
        assert stats.revision is not None
        assert stats.revision > lead.token
        assert stats.time_left == pytest.approx(lead.deadline - trio.current_time())
        assert stats.deadline == lead.deadline
        assert stats.lost is None
    after = lead.statistics()
    assert after.renewals == 3
    assert after.revision is None  # released


async def test_statistics_after_failures(autojump_clock: trio.testing.MockClock) -> None:
    store = FaultyBackend(MemoryBackend())
    with pytest.raises(LeadershipLost):
        async with hold_leadership(KEY, backend=store, ttl=TTL) as lead:
            await trio.sleep(3.5)  # one renewal
            assert lead.statistics().renewals == 1
            store.partition()
            await trio.sleep(3.0 + 1.0)  # the next one fails, and a retry
            stats = lead.statistics()
            assert stats.renewals == 1
            assert stats.renew_failures >= 1
            assert stats.consecutive_failures == stats.renew_failures
            assert stats.last_error is not None
            assert 0 < stats.time_left < TTL - 0.9 - 3.0
            store.heal()
            await trio.sleep(3.0)
            stats = lead.statistics()
            assert stats.renewals >= 2
            assert stats.consecutive_failures == 0
            assert stats.last_error is None
            failures = stats.renew_failures
            assert failures >= 1  # the total of the term stays
            store.partition()
            await trio.sleep_forever()
    stats = lead.statistics()
    assert stats.time_left == 0
    assert stats.lost is not None
    assert "renewals did not succeed" in stats.lost
    assert stats.renew_failures > failures


async def test_events_of_a_term(autojump_clock: trio.testing.MockClock,
                                events: list[LeadershipEvent]) -> None:
    store = FaultyBackend(MemoryBackend())
    async with hold_leadership(KEY, backend=store, ttl=TTL, name="ev:1") as lead:
        await trio.sleep(3.5)
        store.partition()
        await trio.sleep(3.0 + 0.5)
        store.heal()
        await trio.sleep(3.0)
    assert kinds(events)[:2] == ["campaign", "elected"]
    assert "renewed" in kinds(events)
    assert "renew_failed" in kinds(events)
    assert kinds(events)[-1] == "released"
    assert events[-1].reason == "released"
    assert {e.key for e in events} == {KEY}
    assert {e.name for e in events} == {"ev:1"}
    assert {e.candidate_id for e in events} == {lead.candidate_id}
    assert {e.token for e in events[1:]} == {lead.token}
    failed = next(e for e in events if e.kind == "renew_failed")
    assert failed.error is not None
    assert failed.retry_in is not None
    assert failed.retry_in > 0
    renewed = next(e for e in events if e.kind == "renewed")
    assert renewed.seconds == 0
    assert renewed.deadline == pytest.approx(renewed.time + TTL - 0.9)


@pytest.mark.parametrize(("how", "reason"), [("partition", "deadline"),
                                             ("delete", "expired"),
                                             ("steal", "taken")])
async def test_a_loss_is_one_lost_event_with_its_reason(
    autojump_clock: trio.testing.MockClock, events: list[LeadershipEvent], how: str,
    reason: str,
) -> None:
    inner = MemoryBackend()
    store = FaultyBackend(inner)
    with pytest.raises(LeadershipLost):
        async with hold_leadership(KEY, backend=store, ttl=TTL):
            entry = await inner.get(KEY)
            assert entry is not None
            if how == "partition":
                store.partition()
            else:
                await inner.delete(KEY, revision=entry.revision)
                if how == "steal":
                    await inner.create(KEY, b"x" * 16, ttl=60)
            await trio.sleep_forever()
    assert kinds(events)[-1] == "lost"
    assert kinds(events).count("lost") == 1
    assert "released" not in kinds(events)
    assert events[-1].reason == reason
    assert events[-1].error


async def test_resign_and_unelected_campaigns(autojump_clock: trio.testing.MockClock,
                                              events: list[LeadershipEvent]) -> None:
    store = MemoryBackend()
    async with hold_leadership(KEY, backend=store, ttl=TTL) as lead:
        lead.resign()
    assert kinds(events) == ["campaign", "elected", "released"]
    events.clear()
    async def second() -> None:
        with pytest.raises(trio.WouldBlock):
            async with hold_leadership(KEY, backend=store, ttl=TTL, wait=False):
                pytest.fail("elected twice")  # pragma: no cover

    async with hold_leadership(KEY, backend=store, ttl=TTL), trio.open_nursery() as nursery:
        nursery.start_soon(second)
    # The second campaign started and was never elected: no term, no release.
    assert kinds(events) == ["campaign", "elected", "campaign", "released"]


async def test_a_failing_observer_is_logged_and_ignored(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(event: LeadershipEvent) -> None:
        raise RuntimeError("observer bug")

    add_observer(broken)
    add_observer(broken)  # twice: once
    try:
        assert observers.count(broken) == 1
        async with hold_leadership(KEY, backend=MemoryBackend(), ttl=TTL):
            await trio.sleep(3.5)
    finally:
        remove_observer(broken)
    remove_observer(broken)  # not there: fine
    assert broken not in observers
    assert "observer" in caplog.text
    assert "RuntimeError: observer bug" in caplog.text
    with pytest.raises(TypeError, match="observer must be callable"):
        add_observer(42)  # type: ignore[arg-type]


async def test_logging_is_one_observer(autojump_clock: trio.testing.MockClock,
                                       caplog: pytest.LogCaptureFixture) -> None:
    assert log_event in observers
    caplog.set_level(logging.DEBUG, logger="trio_noleader")
    async with hold_leadership(KEY, backend=MemoryBackend(), ttl=TTL):
        await trio.sleep(3.5)
    text = caplog.text
    assert "elected for jobs/observed" in text
    assert "renewed jobs/observed" in text
    assert "released jobs/observed" in text
    caplog.clear()
    remove_observer(log_event)
    try:
        async with hold_leadership(KEY, backend=MemoryBackend(), ttl=TTL):
            await trio.sleep(3.5)
        assert "elected for" not in caplog.text
        assert "renewed" not in caplog.text
    finally:
        add_observer(log_event)
        observers.remove(log_event)
        observers.insert(0, log_event)


def test_public_names() -> None:
    assert trio_noleader.LeadershipStatistics.__module__ == "trio_noleader"
    assert trio_noleader.LeadershipEvent.__module__ == "trio_noleader"


def test_a_renewal_builds_no_event_for_a_silent_logger() -> None:
    core = logging.getLogger("trio_noleader")
    saved = core.level
    try:
        core.setLevel(logging.INFO)
        assert _observe.observers == [_observe.log_event]
        assert not _observe.renewals_watched()  # only the logger, which drops DEBUG
        core.setLevel(logging.DEBUG)
        assert _observe.renewals_watched()  # "renewed ..." is logged at DEBUG
        core.setLevel(logging.INFO)

        def listener(event: trio_noleader.LeadershipEvent) -> None:
            pass

        trio_noleader.add_observer(listener)
        try:
            assert _observe.renewals_watched()
        finally:
            trio_noleader.remove_observer(listener)
        assert not _observe.renewals_watched()
    finally:
        core.setLevel(saved)
