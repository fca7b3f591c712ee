"""Regression tests for election-core bugs the simulation found.

Each replays what Hypothesis found (shrunk) and failed before the fix named
below; all three are fixed in ``trio_noleader/_election.py``.

Bug 1: ``_Campaign._call`` converts ``TimeoutError`` into ``BackendUnavailable``,
but ``trio.fail_after`` raises ``trio.TooSlowError``, which is not a
``TimeoutError``. Any store call slower than ``renew_interval`` (a pause, a slow
link, a NATS server busy for a moment) escapes ``hold_leadership`` /
``run_as_leader`` as ``trio.TooSlowError`` instead of being retried, and in the
renewal loop it would end the term with that exception instead of
``LeadershipLost``. Fix: ``except trio.TooSlowError``.

Bug 2: ``_Campaign._adopt`` keeps the campaign's first token
(``if self.token == 0``). A campaign that learnt token T from an ambiguous create,
then lost that lease (it expired while the store was unreachable), then created
the key again with the same candidate id and lost that reply too, adopts the new
lease with the stale token T and renews it with T. Its term then carries a token
below those of the terms in between (DESIGN.md rule 5), and every write it makes
is rejected by fencing. Fix: always take the token from the adopted entry
(``self.token = token if token is not None else entry.revision``): the entry
holds our id, and its value is what we wrote.

Bug 3: ``_Campaign.renew_loop`` checks ``self.renew_now`` before ``retry_at``.
After an adoption (``renew_now = True``) a renewal that fails with
``BackendUnavailable`` is retried at once instead of after its backoff, and
``renew_now`` stays set until a renewal succeeds. On a link that loses every
reply the loop goes lost reply -> ``RevisionMismatch`` -> read -> adopt -> renew
-> lost reply ... with no sleep: a hot loop hammering the store, and with a
zero-latency store (the memory backend, virtual time) a livelock in which time
never moves, so not even the lease deadline can end it. Fix: let a pending
``retry_at`` win over ``renew_now`` (and do not reset the backoff on a renewal
that only adopted).
"""

from __future__ import annotations

import pytest
import trio
import trio.testing
from hypothesis import given

from trio_noleader import MemoryBackend, hold_leadership
from trio_noleader.testing import (
    LEADER,
    Candidate,
    Crash,
    FaultyBackend,
    Latency,
    Lossy,
    Partition,
    Pause,
    Schedule,
    Timing,
    schedules,
    simulate,
)

TIMING = Timing(ttl=10.0, renew_interval=3.333, guard=1.0)

pytestmark = pytest.mark.usefixtures("quiet_core_logging")


# -- bug 1: a slow store call escapes as trio.TooSlowError ---------------------------

async def test_a_slow_store_call_is_retried_not_raised(
    autojump_clock: trio.testing.MockClock,
) -> None:
    faulty = FaultyBackend(MemoryBackend(), latency=2.0)  # 4 s round trips > 3 s renewals

    async def speed_up() -> None:
        await trio.sleep(10)
        faulty.latency = 0.0

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(speed_up)
            async with hold_leadership("job", backend=faulty, ttl=9.0, renew_interval=3.0,
                                       guard=0.9) as lead:
                assert lead.token > 0


def test_bug1_minimal_schedule() -> None:
    # What Hypothesis shrank it to: one candidate, paused for one renew_interval
    # from the start, so its first create waits at the gate past the core's timeout.
    schedule = Schedule(TIMING, (Candidate(),), (Pause(candidate=0, at=0.0, duration=3.333),),
                        write_every=1.666, run_until=30.0)
    simulate(schedule).check_all()


@given(schedules())
def test_all_properties_without_workarounds(schedule: Schedule) -> None:
    simulate(schedule).check_all()


# -- bug 2: a re-created lease is adopted with a stale token --------------------------

def test_bug2_stale_token_after_recreating_with_the_same_candidate_id() -> None:
    schedule = Schedule(
        timing=TIMING,
        candidates=(Candidate(), Candidate(start=0.05)),
        faults=(
            # c0's create lands but its reply is lost: c0 adopts it (token 1) and
            # its renewals land with lost replies too.
            Lossy(candidate=0, at=0.0, duration=0.5, requests=0.0, replies=1.0),
            # c0 is cut off: its lease expires and c1 is elected (token 4).
            Partition(candidate=0, at=0.5, duration=15.0),
            Crash(candidate=1, at=12.0),
            # c1's lease expires; c0's new create (same candidate id) lands with a
            # lost reply, and c0 adopts it keeping token 1.
            Lossy(candidate=0, at=15.5, duration=20.0, requests=0.0, replies=1.0),
        ),
        write_every=1.0,
        run_until=80.0,
    )
    trace = simulate(schedule, call_timeout=3.0)
    c1, c0 = trace.terms
    assert (c1.name, c0.name) == ("c1", "c0")
    assert c0.token > c1.token, (c1, c0)
    trace.check_all()


# -- bug 3: renewals after an adoption ignore the backoff ------------------------------

def test_bug3_lost_replies_make_the_renewal_loop_spin() -> None:
    # Every reply of the leader is lost for 10 s; its renewals still land.
    schedule = Schedule(TIMING, (Candidate(),),
                        (Lossy(candidate=0, at=5.0, duration=10.0, requests=0.0, replies=1.0),),
                        run_until=40.0)
    trace = simulate(schedule, call_timeout=3.0)
    trace.check_all()
    # The renewals landed, so the lease held throughout: one term, never lost.
    assert [(t.name, t.start, t.end) for t in trace.terms] == [("c0", 0.0, 40.0)]


# -- a harness bug: crash times off by a few ulps ---------------------------------------

def test_crash_time_is_the_scheduled_one() -> None:
    # The runner recorded a crash at trio's clock less the run's start,
    # 0.40700000000000003 here, so check_liveness counted the crashed candidate as
    # alive in a quiet window that began at exactly 0.407.
    schedule = Schedule(Timing(10, 3.333, 1), (Candidate(latency=Latency(0, 0.159)),),
                        (Crash(LEADER, 0.407),), write_every=1.666, run_until=27.073,
                        seed=196)
    trace = simulate(schedule)
    assert trace.crashed == {0: 0.407}
    trace.check_all()
