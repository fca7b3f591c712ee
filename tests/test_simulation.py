"""Property tests: the election under generated fault schedules, in virtual time.

Each example is a :class:`~trio_noleader.testing.Schedule` (candidates, lease timing,
a timeline of partitions, outages, pauses, crashes, lossy and slow links) played by
:func:`~trio_noleader.testing.simulate` in a fresh ``trio.run`` on an autojump
clock. The schedule's ``seed`` also seeds trio's scheduler, so a failure replays
exactly and shrinks to a short, printable schedule: paste it into
``simulate(...)`` to replay it.

``HYPOTHESIS_PROFILE=thorough`` runs 10,000 schedules per property.
"""

from __future__ import annotations

import pytest
from hypothesis import event, given

from trio_noleader.testing import (
    LEADER,
    Candidate,
    Crash,
    Latency,
    Lossy,
    Partition,
    Pause,
    Restart,
    Schedule,
    Slow,
    Timing,
    Trace,
    schedules,
    simulate,
)

# The election-core bugs this file found are fixed; their regression tests live in
# tests/test_simulation_regressions.py.
SCHEDULES = schedules()

pytestmark = pytest.mark.usefixtures("quiet_core_logging")


def play(schedule: Schedule) -> Trace:
    return simulate(schedule)


def play_noting(schedule: Schedule) -> Trace:
    """Play inside @given, noting what happened for `--hypothesis-show-statistics`."""
    trace = play(schedule)
    late = [w for w in trace.fenced if w.held_for > 0]
    event(f"terms: {min(len(trace.terms), 5)}{'+' if len(trace.terms) >= 5 else ''}")
    if late:
        event("a write was held by a pause")
    if any(not w.accepted for w in late):
        event("a stale write was rejected")
    if any(w.result == "ok" and w.time > w.sent + 2 * schedule.timing.renew_interval
           for w in trace.store_writes):
        event("a write landed long after it was sent")
    return trace


@given(SCHEDULES)
def test_safety(schedule: Schedule) -> None:
    """Never two un-cancelled leader bodies at one instant (drift within guard/ttl)."""
    play_noting(schedule).check_safety()


@given(schedules(max_candidates=3, faults=(Partition, Pause, Lossy, Slow)))
def test_safety_when_the_leader_is_cut_off(schedule: Schedule) -> None:
    """Smaller schedules whose faults mostly cut a leader off while others can take
    over: the case the guard and the deadline exist for, drawn more often."""
    play_noting(schedule).check_safety()


@given(SCHEDULES)
def test_fencing(schedule: Schedule) -> None:
    """Tokens increase across terms; stale writes are rejected; none is lost."""
    play_noting(schedule).check_fencing()


@given(schedules(faults=(Pause, Partition, Crash), max_candidates=4))
def test_fencing_under_pauses(schedule: Schedule) -> None:
    """The GC-pause case, drawn more often: writes held by a pause arrive late."""
    play_noting(schedule).check_fencing()


@given(SCHEDULES)
def test_liveness(schedule: Schedule) -> None:
    """After ttl + renew_interval without faults there is a leader, until the next fault."""
    play_noting(schedule).check_liveness()


def step_downs_checked(trace: Trace) -> int:
    """How many restarts of a leader :meth:`Trace.check_handover` checks in *trace*.

    The same conditions as that method's (see its docstring), for the statistics
    only: a restart it skips proves nothing about the handover.
    """
    timing = trace.schedule.timing
    slack = timing.ttl - timing.guard - timing.renew_interval
    latency = max(c.latency.high for c in trace.schedule.candidates)
    if latency > min(timing.renew_interval / 10, slack / 4):
        return 0
    settle = timing.ttl + timing.renew_interval
    bound = timing.renew_interval / 2 + 14 * latency + 1e-6
    checked = 0
    for restart in trace.faults:
        if restart.kind != "restart":
            continue
        at, who = restart.start, restart.candidate
        led = any(t.candidate == who and t.end is not None and abs(t.end - at) < 1e-6
                  for t in trace.terms)
        quiet = not any(span is not restart and span.start <= at + bound
                        and span.end >= at - settle for span in trace.faults)
        waiting = not any(t >= at - settle for t in trace.finished.values())
        others = any(i != who and c.start <= at - settle and i not in trace.crashed
                     for i, c in enumerate(trace.schedule.candidates))
        checked += led and quiet and waiting and others
    return checked


@given(schedules(handover=True))
def test_handover(schedule: Schedule) -> None:
    """A leader that steps down gracefully releases at once: someone else (or it,
    back from a restart) leads within renew_interval / 2 plus a few latencies.

    The schedules end with a step-down of the leader in a quiet stretch, so that
    most examples have one to check (``--hypothesis-show-statistics`` shows how
    many); random restarts alone meet the conditions in about 1 schedule in 200.
    """
    trace = play_noting(schedule)
    checked = step_downs_checked(trace)
    event(f"step-downs check_handover checks: {min(checked, 2)}{'+' if checked >= 2 else ''}")
    trace.check_handover()


@given(schedules(handover=True))
def test_handover_schedules_end_with_a_quiet_step_down(schedule: Schedule) -> None:
    timing = schedule.timing
    *others, last = schedule.faults
    assert isinstance(last, Restart)
    assert last.candidate == LEADER
    assert len(schedule.candidates) >= 2
    quiet = max([*(f.settled if isinstance(f, Slow) else f.end for f in others),
                 *(c.start for c in schedule.candidates)])
    settle = timing.ttl + timing.renew_interval
    assert last.at >= quiet + settle - 1e-9  # times are whole milliseconds
    assert last.at <= quiet + settle + timing.renew_interval + 0.001 + 1e-9
    assert schedule.run_until >= last.end + 2 * settle - 0.0005


@given(SCHEDULES)
def test_hygiene(schedule: Schedule) -> None:
    """Nobody deletes or overwrites a lease it does not hold; no undocumented
    exception escapes; no task is left running; shutdown is bounded."""
    trace = play_noting(schedule)
    trace.check_hygiene()
    trace.check_clean()


# -- the properties are not vacuous: hand-made schedules that exercise them ---------

TIMING = Timing(ttl=10.0, renew_interval=3.333, guard=1.0)


def test_a_paused_leaders_write_arrives_late_and_is_rejected() -> None:
    # c0 leads, then pauses for 3 ttl: its body is cancelled at its deadline, c1
    # takes over and writes; at the resume c0's write issued during the pause
    # arrives with token 1 and is rejected.
    schedule = Schedule(TIMING, (Candidate(), Candidate(start=0.5)),
                        (Pause(candidate=0, at=5.5, duration=30.0),),
                        write_every=1.0, run_until=60.0)
    trace = play(schedule)
    trace.check_all()
    (c0, c1) = trace.terms
    assert (c0.name, c0.token, c1.name) == ("c0", 1, "c1")
    assert c1.token > c0.token
    assert c0.end is not None
    assert c0.end < c1.start < 35.5
    late = [w for w in trace.fenced if w.held_for > 0]
    assert [(w.writer, w.token, w.accepted, w.issued, w.time) for w in late] == [
        ("c0", 1, False, 6.0, 35.5)]


def test_a_write_landing_after_its_sender_gave_up_is_resolved() -> None:
    # A slow link makes c0's renewals time out while they are still in flight;
    # they land later and c0 must adopt, not guess.
    schedule = Schedule(TIMING, (Candidate(), Candidate(start=0.5)),
                        (Slow(candidate=0, at=2.0, duration=8.0, latency=2.5),),
                        write_every=1.0, run_until=60.0)
    trace = play(schedule)
    trace.check_all()
    landed_late = [w for w in trace.store_writes
                   if w.candidate == "c0" and w.result == "ok" and w.time - w.sent >= 2.5]
    assert landed_late


def test_lost_replies_and_crash_then_liveness() -> None:
    schedule = Schedule(
        TIMING,
        (Candidate("run"), Candidate("poll", latency=Latency(0.01, 0.03)), Candidate()),
        (Lossy(candidate=0, at=0.0, duration=5.0, requests=0.5, replies=1.0),
         Crash(candidate=0, at=12.0)),
        write_every=1.0, run_until=60.0)
    trace = play(schedule)
    trace.check_all()
    assert trace.crashed == {0: 12.0}
    # Someone leads again within ttl + renew_interval of the crash.
    assert trace.leaders_at(12.0 + TIMING.ttl + TIMING.renew_interval)


def test_a_leader_that_steps_down_is_replaced_at_once() -> None:
    schedule = Schedule(
        TIMING,
        (Candidate(latency=Latency(0.01, 0.02)), Candidate("run", start=0.5),
         Candidate("poll", start=0.5)),
        (Restart(candidate=0, at=20.0, duration=30.0),),
        write_every=1.0, run_until=60.0)
    trace = play(schedule)
    trace.check_all()
    first, second = trace.terms
    assert (first.name, first.end) == ("c0", 20.0)
    assert second.name != "c0"
    # Released by c0 (two legs at most), seen through a watch or a poll.
    assert second.start - 20.0 <= TIMING.renew_interval / 2 + 0.05
