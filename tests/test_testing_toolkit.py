"""The testing toolkit itself: fault injector, fenced resource, schedules, runner, checks.

The last section breaks the election core on purpose (with monkeypatch) and shows
that the checks notice: a check that cannot fail proves nothing.
"""

from __future__ import annotations

import math

import pytest
import trio
import trio.testing
from hypothesis import given, settings

import trio_noleader.testing as toolkit
from trio_noleader import BackendUnavailable, MemoryBackend, _campaign, _election, hold_leadership
from trio_noleader.testing import (
    LEADER,
    Candidate,
    Crash,
    FaultSpan,
    FaultyBackend,
    FencedResource,
    LeaderContext,
    Lossy,
    Outage,
    Partition,
    Pause,
    Restart,
    Schedule,
    Slow,
    StoreSwitch,
    StoreWrite,
    Term,
    Timing,
    Trace,
    run_schedule,
    schedules,
    simulate,
)

KEY = "toolkit"
TIMING = Timing(ttl=10.0, renew_interval=3.333, guard=1.0)

pytestmark = pytest.mark.usefixtures("quiet_core_logging")


# -- public surface -------------------------------------------------------------------

def test_public_names_live_in_trio_noleader_testing() -> None:
    for name in toolkit.__all__:
        obj = getattr(toolkit, name)
        if callable(obj):
            assert obj.__module__ == "trio_noleader.testing", name
    with pytest.raises(AttributeError):
        _ = toolkit.no_such_thing


# -- FencedResource -------------------------------------------------------------------

async def test_fenced_resource_accepts_current_tokens_and_records_everything(
    autojump_clock: trio.testing.MockClock,
) -> None:
    resource = FencedResource()
    assert resource.write(3, writer="a", data=1)
    assert resource.write(3, writer="a", data=2)  # one term writes many times
    await trio.sleep(1)
    assert not resource.write(2, writer="old", data=3, issued=0.5)
    assert resource.write(5, writer="b")
    assert resource.highest == 5
    assert [(w.writer, w.token, w.accepted, w.highest) for w in resource.writes] == [
        ("a", 3, True, 0), ("a", 3, True, 3), ("old", 2, False, 3), ("b", 5, True, 3)]
    stale = resource.rejected[0]
    assert stale.time == 1.0
    assert stale.held_for == 0.5
    assert len(resource.accepted) == 3
    with pytest.raises(TypeError, match="token"):
        resource.write(True, writer="x")


# -- FaultyBackend --------------------------------------------------------------------

async def test_pause_holds_a_side_effect_and_delivers_it_even_if_its_task_gave_up(
    autojump_clock: trio.testing.MockClock,
) -> None:
    faulty = FaultyBackend(MemoryBackend(), name="a")
    resource = FencedResource()
    faulty.pause()
    assert faulty.paused
    with trio.move_on_after(2):
        await faulty.perform(resource.write, 1, writer="a", issued=trio.current_time())
    assert resource.writes == []  # held, and its task was cancelled meanwhile
    await trio.sleep(3)
    faulty.resume()
    (write,) = resource.writes
    assert (write.time, write.issued, write.accepted) == (5.0, 0.0, True)
    # Not paused: performed at once.
    assert await faulty.perform(resource.write, 1, writer="a")


async def test_pause_holds_store_calls_until_resume(
    autojump_clock: trio.testing.MockClock,
) -> None:
    store = MemoryBackend()
    faulty = FaultyBackend(store, name="a")
    faulty.pause()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: faulty.create(KEY, b"x" * 16, ttl=10))
        await trio.sleep(4)
        assert await store.get(KEY) is None  # the request has not left
        faulty.resume()
    entry = await store.get(KEY)
    assert entry is not None
    (write,) = faulty.writes
    assert (write.op, write.sent, write.time, write.result) == ("create", 0.0, 4.0, "ok")


async def test_crash_drops_held_side_effects(autojump_clock: trio.testing.MockClock) -> None:
    faulty = FaultyBackend(MemoryBackend(), name="a")
    resource = FencedResource()
    faulty.pause()
    with trio.move_on_after(1):
        await faulty.perform(resource.write, 7, writer="a")
    faulty.crash()
    faulty.resume()
    assert resource.writes == []
    (dropped,) = faulty.dropped
    assert dropped.args == (7,)
    assert faulty.down
    assert faulty.crashed
    with pytest.raises(BackendUnavailable):
        await faulty.get(KEY)


async def test_store_switch_takes_the_store_from_everyone(
    autojump_clock: trio.testing.MockClock,
) -> None:
    store = MemoryBackend()
    switch = StoreSwitch()
    a = FaultyBackend(store, name="a", switch=switch)
    b = FaultyBackend(store, name="b", switch=switch)
    broken = trio.Event()

    async def watch() -> None:
        with pytest.raises(BackendUnavailable):
            async with a.watch(KEY) as updates:
                async for _ in updates:
                    pass
        broken.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch)
        await trio.sleep(1)
        async with switch.outage():
            assert switch.down
            with pytest.raises(BackendUnavailable):
                await b.create(KEY, b"x" * 16, ttl=5)
            await broken.wait()
        assert not switch.down
        await b.create(KEY, b"x" * 16, ttl=5)
    assert [c.outcome for c in b.calls] == ["lost-request", "ok"]


async def test_a_request_in_flight_lands_after_its_caller_gave_up(
    autojump_clock: trio.testing.MockClock,
) -> None:
    store = MemoryBackend()
    async with trio.open_nursery() as in_flight:
        faulty = FaultyBackend(store, name="a", latency=2.0, in_flight=in_flight,
                               timeout=1.0)
        with pytest.raises(BackendUnavailable, match="no answer"):
            await faulty.create(KEY, b"x" * 16, ttl=10)
        assert await store.get(KEY) is None
    # The in-flight nursery waited for the request: it landed at 2.0.
    assert await store.get(KEY) is not None
    (write,) = faulty.writes
    assert (write.sent, write.time, write.result, write.new_revision) == (0.0, 2.0, "ok", 1)
    assert [(c.outcome, c.time) for c in faulty.calls] == [("timeout", 1.0)]


async def test_without_in_flight_a_cancelled_request_never_lands(
    autojump_clock: trio.testing.MockClock,
) -> None:
    store = MemoryBackend()
    faulty = FaultyBackend(store, name="a", latency=2.0)
    with trio.move_on_after(1):
        await faulty.create(KEY, b"x" * 16, ttl=10)
    await trio.sleep(5)
    assert await store.get(KEY) is None
    assert faulty.writes == []
    assert [c.outcome for c in faulty.calls] == ["cancelled"]


async def test_drift_shortens_the_lease_in_the_store(
    autojump_clock: trio.testing.MockClock,
) -> None:
    store = MemoryBackend()
    faulty = FaultyBackend(store, drift=0.1)
    await faulty.create(KEY, b"x" * 16, ttl=10)
    await trio.sleep(8.99)
    assert await store.get(KEY) is not None
    await trio.sleep(0.02)
    assert await store.get(KEY) is None
    with pytest.raises(ValueError, match="drift"):
        FaultyBackend(store, drift=1.0)


# -- schedules --------------------------------------------------------------------------

def test_schedules_validate() -> None:
    with pytest.raises(ValueError, match="guard"):
        Timing(ttl=10, renew_interval=5, guard=5)
    with pytest.raises(ValueError, match="only 1"):
        Schedule(TIMING, (Candidate(),), (Partition(candidate=1, at=0, duration=1),))
    with pytest.raises(ValueError, match="at least one"):
        Schedule(TIMING, ())
    with pytest.raises(ValueError, match="mode"):
        Candidate(mode="lead")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="duration"):
        Pause(candidate=0, at=1, duration=-1)
    with pytest.raises(ValueError, match="probability"):
        Lossy(candidate=0, at=1, duration=1, requests=2)
    with pytest.raises(TypeError, match="not a fault"):
        Schedule(TIMING, (Candidate(),), ("crash",))  # type: ignore[arg-type]


@settings(max_examples=20)
@given(schedules())
def test_a_schedule_repr_replays(schedule: Schedule) -> None:
    namespace = {name: getattr(toolkit, name) for name in toolkit.__all__}
    assert eval(repr(schedule), namespace) == schedule
    assert all(repr(fault) in schedule.describe() for fault in schedule.faults)


@settings(max_examples=10)
@given(schedules(max_candidates=4))
def test_a_run_replays_exactly(schedule: Schedule) -> None:
    def summary(trace: Trace) -> object:
        return ([(t.name, t.token, t.start, t.end) for t in trace.terms],
                [(w.writer, w.token, w.time, w.accepted) for w in trace.fenced],
                [(w.candidate, w.op, w.time, w.result) for w in trace.store_writes])

    first = simulate(schedule, call_timeout=0.9 * schedule.timing.renew_interval)
    second = simulate(schedule, call_timeout=0.9 * schedule.timing.renew_interval)
    assert summary(first) == summary(second)


# -- the runner -------------------------------------------------------------------------

async def test_run_schedule_needs_virtual_time() -> None:
    with pytest.raises(RuntimeError, match="virtual time"):
        await run_schedule(Schedule(TIMING, (Candidate(),)))


async def test_run_schedule_under_the_autojump_clock_fixture(
    autojump_clock: trio.testing.MockClock,
) -> None:
    await trio.sleep(100)  # times in the trace count from the run's start
    schedule = Schedule(TIMING, (Candidate(), Candidate("run", start=0.5),
                                 Candidate("poll", start=0.5)),
                        (Crash(candidate=0, at=5.0),), write_every=1.0, run_until=40.0)
    trace = await run_schedule(schedule)
    trace.check_all()
    assert (trace.terms[0].name, trace.terms[0].start, trace.terms[0].end) == ("c0", 0.0, 5.0)
    # The crashed leader's lease runs out ttl after its last renewal was sent.
    assert trace.terms[1].start == pytest.approx(3.333 + 10.0, abs=1.7)
    assert trace.end == 40.0
    assert trace.leftover_tasks == []


def test_a_body_that_returns_ends_the_candidate() -> None:
    async def once(leader: LeaderContext) -> None:
        await leader.write("done")

    schedule = Schedule(TIMING, (Candidate(), Candidate("run", start=1.0)), run_until=30.0)
    trace = simulate(schedule, body=once)
    trace.check_all()
    assert [(t.name, t.ended) for t in trace.terms] == [("c0", "returned"), ("c1", "returned")]
    assert set(trace.finished) == {0, 1}
    assert [w.data for w in trace.fenced] == ["done", "done"]


def test_an_exception_from_the_body_is_reported() -> None:
    async def broken(leader: LeaderContext) -> None:
        raise KeyError("boom")

    trace = simulate(Schedule(TIMING, (Candidate(),), run_until=20.0), body=broken)
    assert trace.terms[0].ended == "error:KeyError"
    with pytest.raises(AssertionError, match="KeyError escaped"):
        trace.check_clean()


def test_faults_are_played_and_ended() -> None:
    schedule = Schedule(
        TIMING, (Candidate(), Candidate(start=0.5)),
        (Outage(at=2.0, duration=3.0), Slow(candidate=1, at=1.0, duration=2.0, latency=4.0),
         Lossy(candidate=1, at=20.0, duration=100.0)),
        run_until=40.0)
    trace = simulate(schedule, call_timeout=3.0)
    trace.check_all()
    assert trace.faults == [FaultSpan("slow", 1, 1.0, 7.0), FaultSpan("outage", None, 2.0, 5.0),
                            FaultSpan("lossy", 1, 20.0, 40.0)]


def test_a_leader_targeted_fault_hits_whoever_leads_then() -> None:
    schedule = Schedule(TIMING, (Candidate(start=0.5), Candidate(), Candidate(start=0.5)),
                        (Partition(candidate=LEADER, at=2.0, duration=20.0),
                         Crash(candidate=LEADER, at=30.0)),
                        run_until=80.0)
    trace = simulate(schedule)
    trace.check_all()
    partition, crash = trace.faults
    assert (partition.kind, partition.candidate) == ("partition", 1)  # c1 started first
    # Whoever took over from c1 is the one that crashes at 30.
    (taker,) = [t for t in trace.terms if t.start < 30.0 < (t.end or math.inf) + 1e-9]
    assert (crash.kind, crash.candidate) == ("crash", taker.candidate)
    assert taker.candidate != 1
    assert "whoever leads" in schedule.describe()


def test_a_restart_stops_gracefully_and_comes_back() -> None:
    schedule = Schedule(TIMING, (Candidate(),), (Restart(candidate=0, at=5.0, duration=2.0),),
                        run_until=30.0)
    trace = simulate(schedule)
    trace.check_all()
    assert [(t.start, t.end) for t in trace.terms] == [(0.0, 5.0), (7.0, 30.0)]
    assert trace.terms[1].token > trace.terms[0].token
    deletes = [w for w in trace.store_writes if w.op == "delete"]
    assert [(w.time, w.result) for w in deletes] == [(5.0, "ok"), (30.0, "ok")]


# -- the checks fail when they should ---------------------------------------------------

def _trace(*terms: Term, end: float = 100.0) -> Trace:
    return Trace(Schedule(TIMING, (Candidate(), Candidate()), run_until=end), "k",
                 terms=list(terms), end=end)


def test_check_safety_flags_overlap_and_allows_handover() -> None:
    _trace(Term(0, "c0", 1, None, 0.0, 5.0), Term(1, "c1", 2, None, 5.0, 9.0)).check_safety()
    with pytest.raises(AssertionError, match=r"two leaders at 4\.9"):
        _trace(Term(0, "c0", 1, None, 0.0, 5.0), Term(1, "c1", 2, None, 4.9, 9.0)).check_safety()
    with pytest.raises(AssertionError, match="two leaders"):
        _trace(Term(0, "c0", 1, None, 3.0, 3.0), Term(1, "c1", 2, None, 3.0, 9.0)).check_safety()


def test_check_fencing_flags_tokens_that_go_back() -> None:
    with pytest.raises(AssertionError, match="token did not increase"):
        _trace(Term(0, "c0", 4, None, 0.0, 5.0), Term(1, "c1", 2, None, 6.0, 9.0)
               ).check_fencing()


def test_check_liveness_flags_a_gap() -> None:
    trace = _trace(Term(0, "c0", 1, None, 0.0, 50.0), Term(1, "c1", 2, None, 70.0, 100.0))
    with pytest.raises(AssertionError, match=r"no leader at 50"):
        trace.check_liveness()
    # During a fault a gap is allowed.
    trace.faults = [FaultSpan("partition", 0, 40.0, 60.0)]
    trace.check_liveness()


def test_check_hygiene_flags_deleting_someone_elses_lease() -> None:
    trace = _trace()
    trace.store_writes = [
        StoreWrite(0.0, 0.0, "c0", "create", KEY, None, b"a" * 16, "ok", 1),
        StoreWrite(1.0, 1.0, "c1", "delete", KEY, 1, None, "ok", None),
    ]
    with pytest.raises(AssertionError, match="c1 deleted c0's lease"):
        trace.check_hygiene()


# -- mutations of the election core: the checks catch each -------------------------------

PARTITIONED_LEADER = Schedule(TIMING, (Candidate(), Candidate(start=0.5)),
                              (Partition(candidate=0, at=2.0, duration=20.0),),
                              write_every=1.0, run_until=60.0)


def test_mutation_body_outlives_the_lease(monkeypatch: pytest.MonkeyPatch) -> None:
    simulate(PARTITIONED_LEADER).check_safety()
    monkeypatch.setattr(_campaign.Campaign, "deadline",
                        property(lambda self: self.base + self.ttl + self.guard))
    with pytest.raises(AssertionError, match="two leaders"):
        simulate(PARTITIONED_LEADER).check_safety()


def test_drift_beyond_guard_over_ttl_breaks_safety() -> None:
    within = Candidate(drift=0.099)
    beyond = Candidate(drift=0.2)
    for candidate, safe in ((within, True), (beyond, False)):
        schedule = Schedule(TIMING, (candidate, Candidate(start=0.5)),
                            PARTITIONED_LEADER.faults, run_until=60.0)
        trace = simulate(schedule)
        if safe:
            trace.check_safety()
        else:
            with pytest.raises(AssertionError, match="two leaders"):
                trace.check_safety()


def test_mutation_release_deletes_whatever_is_there(monkeypatch: pytest.MonkeyPatch) -> None:
    # c0 is cut off, loses the lease, and cannot release; once it is back (before
    # its janitor gives up, a ttl after c0's lease ran out), the janitor
    # "releases" c1's lease.
    schedule = Schedule(TIMING, (Candidate(), Candidate(start=0.5)),
                        (Partition(candidate=0, at=2.0, duration=12.0),), run_until=60.0)
    simulate(schedule).check_hygiene()

    async def careless_release(backend: object, key: str, candidate_id: object,
                               revision: int | None) -> bool:
        entry = await backend.get(key)  # type: ignore[attr-defined]
        if entry is None:
            return False
        await backend.delete(key, revision=entry.revision)  # type: ignore[attr-defined]
        return True

    # The janitor deletes whatever lease it sees on the key, not only its own.
    monkeypatch.setattr("trio_noleader._release._holds", lambda entry, cid: entry is not None)
    monkeypatch.setattr("trio_noleader._release.release_if_ours", careless_release)
    with pytest.raises(AssertionError, match="deleted c1's lease"):
        simulate(schedule).check_hygiene()


def test_mutation_every_term_gets_token_1(monkeypatch: pytest.MonkeyPatch) -> None:
    original = _election.Leadership.__init__

    def same_token(self: _election.Leadership, key: str, candidate_id: object, token: int,
                   deadline: float, *rest: object) -> None:
        original(self, key, candidate_id, 1, deadline, *rest)  # type: ignore[arg-type]

    monkeypatch.setattr(_election.Leadership, "__init__", same_token)
    with pytest.raises(AssertionError, match="token did not increase"):
        simulate(PARTITIONED_LEADER).check_fencing()


def test_mutation_candidates_stop_watching_for_vacancy(monkeypatch: pytest.MonkeyPatch) -> None:
    schedule = Schedule(TIMING, (Candidate(), Candidate(start=0.5)),
                        (Crash(candidate=0, at=2.0),), run_until=60.0)
    simulate(schedule).check_liveness()

    async def doze(self: _campaign.Campaign, hub: object, seen: int) -> int:
        await trio.sleep(5 * self.ttl)
        return seen + 1

    monkeypatch.setattr(_campaign.Campaign, "_await_chance", doze)
    with pytest.raises(AssertionError, match="no leader"):
        simulate(schedule).check_liveness()


def test_mutation_leaving_does_not_release(monkeypatch: pytest.MonkeyPatch) -> None:
    schedule = Schedule(TIMING, (Candidate(), Candidate(start=0.5)),
                        (Restart(candidate=0, at=20.0, duration=30.0),), run_until=60.0)
    simulate(schedule).check_handover()

    async def keep(self: _campaign.Campaign) -> None:
        await trio.lowlevel.checkpoint()

    monkeypatch.setattr(_campaign.Campaign, "release", keep)
    with pytest.raises(AssertionError, match="nobody took over"):
        simulate(schedule).check_handover()


def test_mutation_enter_the_body_without_renewing_a_late_acquisition(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # c0's create lands but its reply is lost, then c0 is paused: it resolves the
    # create (and adopts the lease) five seconds after sending it.
    schedule = Schedule(TIMING, (Candidate(),),
                        (Lossy(candidate=0, at=0.0, duration=0.05, requests=0.0, replies=1.0),
                         Pause(candidate=0, at=0.05, duration=5.0)),
                        run_until=30.0)
    simulate(schedule, call_timeout=3.0).check_safety()

    async def enter_at_once(self: _campaign.Campaign) -> None:
        self.renew_now = False
        await trio.lowlevel.checkpoint()

    monkeypatch.setattr(_campaign.Campaign, "_make_safe", enter_at_once)
    with pytest.raises(AssertionError, match="left before its deadline"):
        simulate(schedule, call_timeout=3.0).check_safety()


def test_mutation_leak_a_task(monkeypatch: pytest.MonkeyPatch) -> None:
    original = _campaign.Campaign.campaign

    async def leaky(self: _campaign.Campaign) -> None:
        trio.lowlevel.spawn_system_task(trio.sleep, math.inf, name="leaked")
        await original(self)

    monkeypatch.setattr(_campaign.Campaign, "campaign", leaky)
    with pytest.raises(AssertionError, match="leaked"):
        simulate(Schedule(TIMING, (Candidate(),), run_until=5.0)).check_clean()


async def test_hold_leadership_over_a_faulty_backend_still_works(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # The toolkit's wrapper is a Backend like any other.
    async with trio.open_nursery() as in_flight:
        faulty = FaultyBackend(MemoryBackend(), latency=0.01, in_flight=in_flight)
        async with hold_leadership(KEY, backend=faulty, ttl=10.0) as lead:
            assert lead.token == 1
