"""The behavioural suite: every backend proves the same contract (DESIGN.md 2-4).

Each test runs once per backend of tests/backends.py (conftest's ``spec`` fixture):
the memory backend in virtual time (autojump clock), the others on the real clock
with short TTLs. Tests take the ``clock`` fixture so that pytest-trio runs them on
the right clock.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass, field

import pytest
import trio
import trio.testing

from trio_noleader import (
    Leadership,
    LeadershipLost,
    current_leader,
    hold_leadership,
    run_as_leader,
    watch_leader,
)
from trio_noleader.abc import Backend
from trio_noleader.testing import FaultyBackend

from .harness import BackendSpec

KEY = "jobs/scheduler"


@dataclass
class Timeline:
    """What leader bodies saw, by their own clock: (time, name, event, token)."""

    events: list[tuple[float, str, str, int]] = field(default_factory=list)
    changed: trio.Event = field(default_factory=trio.Event)

    def add(self, name: str, event: str, token: int) -> None:
        self.events.append((trio.current_time(), name, event, token))
        self.changed.set()
        self.changed = trio.Event()

    async def wait_for(self, name: str, event: str = "start") -> float:
        """Wait until *name* had *event*; return its time."""
        while not any(e[1] == name and e[2] == event for e in self.events):
            await self.changed.wait()
        return self.first(name, event)

    def first(self, name: str, event: str) -> float:
        for time, who, what, _ in self.events:
            if who == name and what == event:
                return time
        raise AssertionError(f"{name} never had {event}: {self.events}")

    def assert_never_two(self) -> None:
        leading: set[str] = set()
        for _, who, what, _ in sorted(self.events, key=lambda e: (e[0], e[2] == "start")):
            if what == "start":
                assert not leading, f"{who} started while {leading} led: {self.events}"
                leading.add(who)
            elif what == "end":
                leading.discard(who)


def limit(spec: BackendSpec, *ttls: float) -> float:
    """A generous bound for a whole test: some ttls plus slack."""
    return sum(ttls) * spec.ttl + 10 + 20 * spec.latency


async def hold_until(backend: Backend, spec: BackendSpec, timeline: Timeline, name: str,
                     stop: trio.Event,
                     task_status: trio.TaskStatus[Leadership] = trio.TASK_STATUS_IGNORED
                     ) -> None:
    """Lead until *stop* is set; a lost lease is recorded as the event "lost"."""
    try:
        async with hold_leadership(KEY, backend=backend, ttl=spec.ttl) as lead:
            timeline.add(name, "start", lead.token)
            task_status.started(lead)
            try:
                await stop.wait()
            finally:
                timeline.add(name, "end", lead.token)
    except LeadershipLost:
        timeline.add(name, "lost", lead.token)


@asynccontextmanager
async def leader(backend: Backend, spec: BackendSpec, timeline: Timeline, name: str
                 ) -> AsyncIterator[tuple[Leadership, trio.Event]]:
    """Start a leader in the background; stop it by setting the event."""
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        lead = await nursery.start(hold_until, backend, spec, timeline, name, stop)
        yield lead, stop
        stop.set()


async def test_uncontested_election(spec: BackendSpec, clock: object, backend: Backend) -> None:
    with trio.fail_after(limit(spec, 1)):
        async with hold_leadership(KEY, backend=backend, ttl=spec.ttl) as lead:
            assert lead.key == KEY
            assert lead.token > 0
            assert math.isfinite(lead.deadline)
            assert lead.deadline <= trio.current_time() + spec.ttl
            info = await current_leader(KEY, backend=backend)
            assert info is not None
            assert info.candidate_id == lead.candidate_id
            assert info.token == lead.token
        # Released at once on exit.
        assert await current_leader(KEY, backend=backend) is None


async def test_waiting_candidate_takes_over_on_release(
    spec: BackendSpec, clock: object, backend: Backend
) -> None:
    timeline = Timeline()
    with trio.fail_after(limit(spec, 2)):
        async with trio.open_nursery() as nursery:
            async with leader(backend, spec, timeline, "a") as (lead_a, _):
                stop_b = trio.Event()
                nursery.start_soon(hold_until, backend, spec, timeline, "b", stop_b)
                # b is campaigning; let a hold through more than one renewal.
                await trio.sleep(spec.ttl / 2)
                assert [e[1] for e in timeline.events] == ["a"]
            released_at = trio.current_time()
            await timeline.wait_for("b")
            stop_b.set()
    handover = timeline.first("b", "start") - released_at
    # Watched, not polled: no time beyond the store's latency.
    assert handover <= spec.latency, (handover, timeline.events)
    assert timeline.events[2][3] > lead_a.token
    timeline.assert_never_two()


async def test_crashed_leader_is_replaced_after_ttl_and_not_before(
    spec: BackendSpec, clock: object, backend: Backend
) -> None:
    timeline = Timeline()
    faulty_a = FaultyBackend(backend, name="a")
    with trio.fail_after(limit(spec, 3)):
        async with trio.open_nursery() as nursery:
            stop_a, stop_b = trio.Event(), trio.Event()
            lead_a = await nursery.start(hold_until, faulty_a, spec, timeline, "a", stop_a)
            nursery.start_soon(hold_until, backend, spec, timeline, "b", stop_b)
            await trio.sleep(spec.ttl / 2)
            faulty_a.crash()
            # The store's lease runs out no earlier than ttl after a's last renewal
            # was sent; a's local deadline is that minus the guard.
            expires_no_earlier = lead_a.deadline + spec.ttl / 10
            await timeline.wait_for("b")
            stop_a.set()
            stop_b.set()
    taken = timeline.first("b", "start")
    assert taken >= expires_no_earlier, (taken, expires_no_earlier)
    assert taken <= expires_no_earlier + spec.expiry_slack + 4 * spec.latency
    timeline.assert_never_two()


async def test_failed_renewals_cancel_the_body_before_the_store_expires(
    spec: BackendSpec, clock: object, backend: Backend
) -> None:
    timeline = Timeline()
    faulty_a = FaultyBackend(backend, name="a")
    with trio.fail_after(limit(spec, 3)):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(hold_until, faulty_a, spec, timeline, "a", trio.Event())
            await timeline.wait_for("a")
            stop_b = trio.Event()
            nursery.start_soon(hold_until, backend, spec, timeline, "b", stop_b)
            await trio.sleep(spec.ttl / 5)
            faulty_a.partition()
            await timeline.wait_for("b")
            stop_b.set()
    timeline.first("a", "lost")
    a_end = timeline.first("a", "end")
    b_start = timeline.first("b", "start")
    assert a_end < b_start, timeline.events
    timeline.assert_never_two()


async def test_foreign_takeover_is_noticed_within_one_renew_interval(
    spec: BackendSpec, clock: object, backend: Backend
) -> None:
    timeline = Timeline()
    with trio.fail_after(limit(spec, 2)), pytest.raises(LeadershipLost, match="unknown holder"):
        async with hold_leadership(KEY, backend=backend, ttl=spec.ttl) as lead:
            timeline.add("a", "start", lead.token)
            try:
                await trio.sleep(spec.ttl / 6)
                entry = await backend.get(KEY)
                assert entry is not None
                # An operator clears the lease and something foreign takes the key.
                await backend.delete(KEY, revision=entry.revision)
                await backend.create(KEY, b"operator-maintenance", ttl=spec.ttl)
                forced_at = trio.current_time()
                await trio.sleep_forever()
            finally:
                timeline.add("a", "end", lead.token)
    noticed = timeline.first("a", "end") - forced_at
    assert noticed <= spec.ttl / 3 + 4 * spec.latency, noticed
    # The foreign value is reported and left alone: never deleted or overwritten.
    info = await current_leader(KEY, backend=backend)
    assert info is not None
    assert info.candidate_id is None
    entry = await backend.get(KEY)
    assert entry is not None
    assert entry.value == b"operator-maintenance"


async def test_ambiguous_renewal_keeps_the_lease(
    spec: BackendSpec, clock: object, backend: Backend
) -> None:
    faulty = FaultyBackend(backend, name="a")
    with trio.fail_after(limit(spec, 3)):
        async with hold_leadership(KEY, backend=faulty, ttl=spec.ttl) as lead:
            faulty.lose_next_replies = 1
            # Hold through several renewals, one of which lands without a reply.
            await trio.sleep(spec.ttl * 1.5)
            assert not lead.cancel_scope.cancel_called
            outcomes = [c.outcome for c in faulty.calls if c.op == "update"]
            assert "lost-reply" in outcomes, outcomes
            info = await current_leader(KEY, backend=backend)
            assert info is not None
            assert info.candidate_id == lead.candidate_id
            assert info.token == lead.token
            assert lead.deadline > trio.current_time()


async def test_tokens_strictly_increase_across_terms(
    spec: BackendSpec, clock: object, backend: Backend
) -> None:
    tokens = []
    with trio.fail_after(limit(spec, 2)):
        for _ in range(3):
            async with hold_leadership(KEY, backend=backend, ttl=spec.ttl) as lead:
                tokens.append(lead.token)
                # An observer arriving mid-term, after a renewal, learns the same token.
                await trio.sleep(spec.ttl / 2)
                info = await current_leader(KEY, backend=backend)
                assert info is not None
                assert info.token == lead.token
                assert info.revision > lead.token
    assert tokens == sorted(set(tokens)), tokens


async def test_lost_leader_never_deletes_the_next_holders_lease(
    spec: BackendSpec, clock: object, backend: Backend
) -> None:
    timeline = Timeline()
    faulty_a = FaultyBackend(backend, name="a")
    with trio.fail_after(limit(spec, 3)):
        with pytest.raises(LeadershipLost):
            async with hold_leadership(KEY, backend=faulty_a, ttl=spec.ttl) as lead_a:
                faulty_a.partition()
                await trio.sleep_forever()
        # a's release could not reach the store; b takes the key once it expires.
        async with leader(backend, spec, timeline, "b") as (lead_b, _):
            faulty_a.heal()
            # a's next campaign first retries its abandoned release: it must see
            # that the key is b's now and leave it alone.
            with pytest.raises(trio.WouldBlock):
                async with hold_leadership(KEY, backend=faulty_a, ttl=spec.ttl, wait=False):
                    pass  # pragma: no cover
            info = await current_leader(KEY, backend=backend)
            assert info is not None
            assert info.candidate_id == lead_b.candidate_id
            assert lead_b.token > lead_a.token
            deletes = [c for c in faulty_a.calls if c.op == "delete" and c.outcome == "ok"]
            assert deletes == []


async def test_resign_steps_down_quietly(spec: BackendSpec, clock: object,
                                         backend: Backend) -> None:
    with trio.fail_after(limit(spec, 1)):
        async with hold_leadership(KEY, backend=backend, ttl=spec.ttl) as lead:
            lead.resign()
            await trio.sleep_forever()
        assert lead.resigned
        assert lead.cancel_scope.cancelled_caught
        assert await current_leader(KEY, backend=backend) is None


async def test_wait_false(spec: BackendSpec, clock: object, backend: Backend) -> None:
    timeline = Timeline()
    with trio.fail_after(limit(spec, 1)):
        async with leader(backend, spec, timeline, "a"):
            before = trio.current_time()
            with pytest.raises(trio.WouldBlock):
                async with hold_leadership(KEY, backend=backend, ttl=spec.ttl, wait=False):
                    pass  # pragma: no cover
            assert trio.current_time() - before <= 2 * spec.latency
        async with hold_leadership(KEY, backend=backend, ttl=spec.ttl, wait=False) as lead:
            assert lead.token > 0


async def test_run_as_leader_recampaigns_after_loss_and_returns(
    spec: BackendSpec, clock: object, backend: Backend
) -> None:
    faulty = FaultyBackend(backend, name="a")
    runs: list[int] = []
    started = trio.Event()

    async def work(value: str) -> str:
        runs.append(len(runs))
        started.set()
        if len(runs) == 1:
            faulty.partition()
            await trio.sleep_forever()
        return value * 2

    async def heal_later() -> None:
        await started.wait()
        await trio.sleep(spec.ttl * 1.5)
        faulty.heal()

    with trio.fail_after(limit(spec, 4)):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(heal_later)
            result = await run_as_leader(KEY, work, "ok", backend=faulty, ttl=spec.ttl)
    assert result == "okok"
    assert runs == [0, 1]


async def test_run_as_leader_with_nursery_start(
    spec: BackendSpec, clock: object, backend: Backend
) -> None:
    done = trio.Event()

    async def work() -> int:
        await done.wait()
        return 7

    with trio.fail_after(limit(spec, 1)):
        async with trio.open_nursery() as nursery:
            lead = await nursery.start(
                lambda task_status: run_as_leader(KEY, work, backend=backend, ttl=spec.ttl,
                                                  task_status=task_status))
            assert isinstance(lead, Leadership)
            info = await current_leader(KEY, backend=backend)
            assert info is not None
            assert info.candidate_id == lead.candidate_id
            done.set()


async def test_watch_leader_sees_every_change(
    spec: BackendSpec, clock: object, backend: Backend
) -> None:
    seen: list[tuple[object, int] | None] = []
    changes = trio.Event()

    async def observe(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with aclosing(watch_leader(KEY, backend=backend)) as updates:
            async for info in updates:
                seen.append(None if info is None else (info.candidate_id, info.token))
                if len(seen) == 1:
                    task_status.started()
                if len(seen) == 5:
                    changes.set()
                    return

    timeline = Timeline()
    with trio.fail_after(limit(spec, 3)):
        async with trio.open_nursery() as nursery:
            await nursery.start(observe)
            async with leader(backend, spec, timeline, "a") as (lead_a, _):
                await trio.sleep(spec.ttl * 0.8)  # renewals happen: not changes
            async with leader(backend, spec, timeline, "b") as (lead_b, _):
                pass
            await changes.wait()
    assert seen == [
        None,
        (lead_a.candidate_id, lead_a.token),
        None,
        (lead_b.candidate_id, lead_b.token),
        None,
    ]


async def test_watch_leader_reports_expiry(
    spec: BackendSpec, clock: object, backend: Backend
) -> None:
    faulty = FaultyBackend(backend, name="a")
    seen: list[object] = []
    with trio.fail_after(limit(spec, 3)):
        async with trio.open_nursery() as nursery:
            stop = trio.Event()
            lead = await nursery.start(hold_until, faulty, spec, Timeline(), "a", stop)
            async with aclosing(watch_leader(KEY, backend=backend)) as updates:
                async for info in updates:
                    seen.append(None if info is None else info.candidate_id)
                    if info is not None:
                        faulty.crash()
                        stop.set()
                    else:
                        break
    assert seen == [lead.candidate_id, None]


async def test_body_exception_comes_out_bare_and_releases(
    spec: BackendSpec, clock: object, backend: Backend
) -> None:
    error = RuntimeError("boom")
    with trio.fail_after(limit(spec, 1)):
        with pytest.raises(RuntimeError) as info:
            async with hold_leadership(KEY, backend=backend, ttl=spec.ttl):
                raise error
        assert info.value is error
        assert await current_leader(KEY, backend=backend) is None


async def test_outside_cancellation_releases(
    spec: BackendSpec, clock: object, backend: Backend
) -> None:
    with trio.fail_after(limit(spec, 1)):
        with trio.move_on_after(spec.ttl) as scope:
            async with hold_leadership(KEY, backend=backend, ttl=spec.ttl):
                await trio.sleep_forever()
        assert scope.cancelled_caught
        assert await current_leader(KEY, backend=backend) is None


async def test_cancelled_campaign_leaves_no_lease(
    spec: BackendSpec, clock: object, backend: Backend
) -> None:
    timeline = Timeline()
    with trio.fail_after(limit(spec, 2)):
        async with leader(backend, spec, timeline, "a") as (lead_a, _):
            with trio.move_on_after(spec.ttl / 2):
                async with hold_leadership(KEY, backend=backend, ttl=spec.ttl):
                    pytest.fail("elected while a held the key")  # pragma: no cover
            info = await current_leader(KEY, backend=backend)
            assert info is not None
            assert info.candidate_id == lead_a.candidate_id
        assert await backend.keys() == []
