"""Regression tests for election-core bugs the simulation found.

Each replays what Hypothesis found (shrunk) and failed before the fix named
below; bugs 1-3 are fixed in the election core (now ``trio_noleader/_campaign.py``),
bug 4 in ``_campaign.py`` and ``_hub.py``.

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

Bug 4 (found by the thorough profile, 7 x 10,000 schedules): a standby queued in
its key's hub waits, between tries, for news from the hub's shared watch, or a
ttl without news. When the store was away, that watch broke too and backs off
(up to 2 s) before it re-opens. A try that failed (``BackendUnavailable``) was
followed by its backoff *and then* a ttl of waiting on the broken watch, so a
partition that ended just after a try delayed the next leader past ``ttl +
renew_interval``; a try that got an answer (the key held) left the watch in its
backoff, so the standby missed the next release and waited a ttl. Fix: after a
failed try, if the watch is backing off too (``KeyHub.watch_broken``), the
campaign tries again once its own backoff is over (unless the watch shows the
key held); and a try that gets an answer re-opens a broken watch at once
(``KeyHub.store_answered``).
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
    Outage,
    Partition,
    Pause,
    Restart,
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


# -- bug 4: after a failure, a standby waits a ttl on a watch that is still broken ------

def test_bug4_liveness_after_a_partition_that_ends_between_two_tries() -> None:
    # c0's last try before the partition ends fails; after its backoff it waited a
    # further ttl for news from its shared watch, broken too and still in its own
    # backoff: elected 1.333 s after the partition ended, the bound is ttl +
    # renew_interval = 1.333 s (check_liveness wants a leader by then).
    schedule = Schedule(
        timing=Timing(ttl=1.0, renew_interval=0.333, guard=0.501),
        candidates=(Candidate(latency=Latency(low=0.0, high=0.024)),),
        faults=(Pause(candidate=LEADER, at=0.681, duration=1.94),
                Partition(candidate=0, at=2.594, duration=2.0)),
        write_every=0.166, run_until=7.26, seed=1)
    simulate(schedule).check_liveness()


def test_bug4_handover_after_an_outage() -> None:
    # After an outage both watches were in their backoff (up to 2 s); c0's tries got
    # answers (the key held) but it waited a ttl for news each time, so c1's release
    # at 2.383 went unseen and c1, back from its restart, took the key again.
    schedule = Schedule(
        timing=Timing(ttl=0.781, renew_interval=0.04, guard=0.078),
        candidates=(Candidate(), Candidate()),
        faults=(Outage(at=0.0, duration=1.561),
                Restart(candidate=LEADER, at=2.383, duration=0.021)),
        write_every=0.02, run_until=4.046, seed=0)
    simulate(schedule).check_handover()


async def test_bug4_an_answered_try_reopens_a_broken_watch_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # The standby's watch is broken by a partition and backs off (0.05 s doubling
    # to 2 s). Once a try of the standby's gets an answer (the key is held), the
    # watch re-opens at once, so a release right after is seen at once: not at
    # the watch's next attempt, nor after a ttl without news.
    store = MemoryBackend()
    link = FaultyBackend(store, name="standby")
    elected = trio.Event()
    elected_at: list[float] = []
    leader = trio.CancelScope()
    async with trio.open_nursery() as nursery:

        async def lead(task_status: trio.TaskStatus[None]) -> None:
            with leader:
                async with hold_leadership("job", backend=store, ttl=10.0):
                    task_status.started()
                    await trio.sleep_forever()

        async def standby() -> None:
            async with hold_leadership("job", backend=link, ttl=10.0):
                elected_at.append(trio.current_time())
                elected.set()
                await trio.sleep_forever()

        await nursery.start(lead)
        nursery.start_soon(standby)
        await trio.sleep(1.0)  # the standby watches
        link.partition()
        await trio.sleep(5.2)  # the watch's attempts: ... 4.15, 6.15, then 8.15
        link.heal()
        healed = trio.current_time()
        with trio.fail_after(10):
            # The try: a read (a create of its own may have landed) that finds the
            # key held.
            while not any(c.op in ("create", "get") and c.time > healed
                          and c.outcome == "ok" for c in link.calls):
                await link.wait_calls(len(link.calls) + 1)
        answered = trio.current_time()
        assert answered < healed + 3.4  # within one campaign backoff (<= renew_interval)
        leader.cancel()
        with trio.fail_after(5):
            await elected.wait()
        assert elected_at[0] - answered < 0.1, (answered, elected_at)
        nursery.cancel_scope.cancel()
