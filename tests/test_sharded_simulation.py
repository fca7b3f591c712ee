"""Property tests: run_sharded under generated fault schedules, in virtual time.

The same schedules as the single-key simulation (partitions, outages, pauses,
crashes, lossy and slow links, graceful restarts), with every candidate running
``run_sharded`` over a handful of keys. Properties: never two jobs of one key at
once, fenced writes never accepted with a stale token, every key owned (and the
balance bounds met) once the run has been quiet for ``ttl + 2 renew_interval``,
and the movement bounds for quiet graceful leaves and re-joins.

A sharded run costs seconds, not milliseconds (every key is a lease), so these
properties draw few schedules by default and ``HYPOTHESIS_PROFILE=thorough``
draws :data:`THOROUGH` of them (not the single-key simulation's 10,000).
"""

from __future__ import annotations

import os

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from trio_noleader.testing import (
    Candidate,
    Crash,
    Restart,
    Schedule,
    ShardedTrace,
    Timing,
    schedules,
    simulate_sharded,
    timings,
)

KEYS = [f"job-{i}" for i in range(12)]

pytestmark = pytest.mark.usefixtures("quiet_core_logging")

THOROUGH = 2000
_THOROUGH = os.environ.get("HYPOTHESIS_PROFILE") == "thorough"


def examples(quick: int) -> settings:
    return settings(max_examples=THOROUGH if _THOROUGH else quick)


def play(schedule: Schedule, keys: list[str] = KEYS, *, noting: bool = True) -> ShardedTrace:
    trace = simulate_sharded(schedule, keys)
    if noting:
        terms = sum(len(t.terms) for t in trace.traces.values())
        event(f"terms per key: {min(terms // len(keys), 4)}")
    return trace


@examples(30)
@given(schedules(min_candidates=2, max_candidates=4, modes=["hold"], max_faults=4,
                 timing=timings(max_ttl=10.0)))
def test_sharded_under_faults(schedule: Schedule) -> None:
    trace = play(schedule)
    trace.check_clean()
    trace.check_one_owner()
    trace.check_fencing()
    trace.check_all_owned()
    trace.check_movement()


@examples(10)
@given(st.integers(2, 4), st.integers(0, 2**32 - 1), st.sampled_from([6, 12, 20]))
def test_graceful_leave_and_rejoin(members: int, seed: int, nkeys: int) -> None:
    """A quiet leave moves only the leaver's keys; the re-join moves at most 1.5 N/(M+1)."""
    timing = Timing(ttl=3.0, renew_interval=1.0, guard=0.3)
    schedule = Schedule(timing, tuple(Candidate() for _ in range(members)),
                        (Restart(candidate=0, at=10.0, duration=10.0),),
                        write_every=0.5, run_until=35.0, seed=seed)
    trace = play(schedule, [f"job-{i}" for i in range(nkeys)])
    trace.check_all()


def test_crash_hands_keys_on() -> None:
    timing = Timing(ttl=3.0, renew_interval=1.0, guard=0.3)
    schedule = Schedule(timing, (Candidate(), Candidate(), Candidate()),
                        (Crash(candidate=1, at=8.0),), write_every=0.5, run_until=25.0)
    trace = play(schedule, noting=False)
    trace.check_all()
    owners = trace.owners_at(24.0)
    assert all(names in (["c0"], ["c2"]) for names in owners.values()), owners


def test_checks_can_fail() -> None:
    """The one-owner check catches an overlap (a trace doctored to have one)."""
    timing = Timing(ttl=3.0, renew_interval=1.0, guard=0.3)
    schedule = Schedule(timing, (Candidate(), Candidate()), (), write_every=0.5,
                        run_until=8.0)
    trace = play(schedule, ["a", "b"], noting=False)
    trace.check_all()
    terms_a, terms_b = trace.traces["a"].terms, trace.traces["b"].terms
    terms_a.extend(terms_b)
    with pytest.raises(AssertionError):
        trace.check_one_owner()
    terms_a[:] = []
    with pytest.raises(AssertionError, match="owners"):
        trace.check_all_owned()
