"""Property-test your own leader-only code with trio_noleader.testing.

The code under test is ``advance_watermark``: while leader, it publishes how far a
pipeline has got (a "watermark") once a second. Its promise to the rest of the
system: the published watermark never goes backwards, whoever leads, whatever
fails. That needs the fencing token: a leader that was paused (a GC pause, a VM
migration) wakes up after someone else took over and publishes a stale value.

Part 1 runs it over hundreds of generated schedules (partitions, outages, pauses,
crashes, lossy and slow links) in virtual time and checks both the library's
properties and our own. Part 2 shows why the token matters: publish to a sink that
ignores tokens and Hypothesis finds, and shrinks, the pause that breaks the promise.

Run it: ``python examples/property_test_my_leader.py`` (needs hypothesis; about 10 s).
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Awaitable, Callable

import trio
from hypothesis import find, given
from hypothesis import strategies as st

from trio_noleader.testing import (
    LeaderContext,
    Pause,
    Schedule,
    Timing,
    Trace,
    schedules,
    simulate,
    simulation_settings,
)

# -- the code under test: what a user would ship --------------------------------------


def current_watermark() -> int:
    """How far the pipeline has got (here: milliseconds of trio time)."""
    return round(trio.current_time() * 1000)


async def advance_watermark(publish: Callable[[int], Awaitable[object]],
                            period: float = 1.0) -> None:
    """Leader-only: publish the watermark every *period* seconds, forever.

    In production *publish* writes to a database with the term's fencing token,
    e.g. ``UPDATE marks SET mark = :mark, token = :token WHERE token <= :token``.
    """
    while True:
        await publish(current_watermark())
        await trio.sleep(period)


# -- the harness: plug it into the simulation -----------------------------------------


async def fenced_body(leader: LeaderContext) -> None:
    # leader.write sends the mark to the run's FencedResource with this term's
    # token, through the candidate's pause gate.
    await advance_watermark(leader.write)


def published_marks(trace: Trace) -> list[int]:
    """The watermark as the rest of the system saw it: the accepted writes."""
    return [w.data for w in trace.fenced if w.accepted and isinstance(w.data, int)]


def check_watermark_never_goes_back(trace: Trace) -> None:
    marks = published_marks(trace)
    for before, after in itertools.pairwise(marks):
        assert after >= before, f"watermark went back from {before} to {after}"


def play(schedule: Schedule, body: Callable[[LeaderContext], Awaitable[object]]) -> Trace:
    return simulate(schedule, body=body)


SCHEDULES = schedules(max_candidates=4, max_faults=6)


# simulation_settings: no deadline, too_slow suppressed (a run takes real time).
@simulation_settings(max_examples=200, database=None)
@given(SCHEDULES)
def test_watermark_with_fencing(schedule: Schedule) -> None:
    trace = play(schedule, fenced_body)
    trace.check_all()  # the library's promises: safety, fencing, liveness, hygiene
    check_watermark_never_goes_back(trace)  # ours


# -- part 2: the same code publishing to a sink that ignores tokens --------------------


def unfenced_run(schedule: Schedule) -> list[int]:
    sink: list[int] = []

    async def body(leader: LeaderContext) -> None:
        async def publish(mark: int) -> None:
            # Still held up by a pause like any side effect, but never refused.
            await leader.backend.perform(sink.append, mark)

        await advance_watermark(publish)

    play(schedule, body)
    return sink


def goes_back(schedule: Schedule) -> bool:
    marks = unfenced_run(schedule)
    return any(after < before for before, after in itertools.pairwise(marks))


def main() -> int:
    print("part 1: advance_watermark over 200 generated schedules, with fencing ...")
    test_watermark_with_fencing()
    print("  every property held")

    print("part 2: the same code with a sink that ignores tokens; searching ...")
    counterexample = find(
        schedules(max_candidates=2, faults=(Pause,), max_faults=2,
                  timing=st.just(Timing(ttl=10.0, renew_interval=3.333, guard=1.0))),
        goes_back,
        settings=simulation_settings(max_examples=500, database=None, derandomize=True),
    )
    print("  Hypothesis found (and shrank) a schedule that moves the watermark back:")
    print("    " + counterexample.describe().replace("\n", "\n    "))
    print(f"  as Python, to replay: {counterexample!r}")
    print("  replay it with simulate(schedule); with FencedResource the stale write is "
          "rejected:")
    trace = play(counterexample, fenced_body)
    trace.check_all()
    check_watermark_never_goes_back(trace)
    for write in trace.fenced:
        if not write.accepted:
            print(f"    rejected: {write.writer}'s mark {write.data} with token {write.token}"
                  f" (issued at {write.issued:.3f}, arrived at {write.time:.3f}, "
                  f"highest token {write.highest})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
