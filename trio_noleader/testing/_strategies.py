"""Hypothesis strategies that build :class:`Schedule` objects.

Every number is drawn as whole milliseconds, so schedules print short, and the
draws shrink towards simple cases: the library's default timing, candidates that
start at once with no latency, fewer and shorter faults, seed 0.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence

from hypothesis import strategies as st

from .._types import check_timing
from ._schedule import (
    LEADER,
    MODES,
    Candidate,
    Crash,
    Fault,
    Latency,
    Lossy,
    Mode,
    Outage,
    Partition,
    Pause,
    Restart,
    Schedule,
    Slow,
    Timing,
)

__all__ = ["FAULT_KINDS", "LOSS_PROBABILITIES", "schedules", "timings"]

#: Every kind of fault :func:`schedules` can put on a timeline.
FAULT_KINDS: tuple[type[Fault], ...] = (Partition, Outage, Pause, Crash, Lossy, Slow, Restart)

#: The loss probabilities a :class:`Lossy` fault draws from by default.
LOSS_PROBABILITIES: tuple[float, ...] = (1.0, 0.5, 0.0, 0.25)


def _ms(value: int) -> float:
    return value / 1000


def _max_leg_latency(timing: Timing) -> float:
    return min(timing.renew_interval / 10,
               (timing.ttl - timing.guard - timing.renew_interval) / 4)


@st.composite
def timings(draw: st.DrawFn, *, min_ttl: float = 0.2, max_ttl: float = 60.0,
            max_renewals_per_ttl: int = 20) -> Timing:
    """Lease timings that obey the rules: ``ttl > 0``, ``0 < renew_interval < ttl``,
    ``0 <= guard < ttl - renew_interval``.

    Shrinks towards the library's defaults (``renew_interval = ttl/3``,
    ``guard = ttl/10``). ``renew_interval`` stays at least
    ``ttl / max_renewals_per_ttl`` so that a run has a bounded number of renewals.

    Args:
        min_ttl (float): Smallest ttl, seconds (at least 0.01).
        max_ttl (float): Largest ttl, seconds.
        max_renewals_per_ttl (int): Bound on ``ttl / renew_interval``.
    """
    low = max(10, round(min_ttl * 1000))
    high = max(low, round(max_ttl * 1000))
    common = [ms for ms in (10_000, 1_000, 15_000, 60_000, 300) if low <= ms <= high]
    ttl_ms = draw(st.sampled_from(common) | st.integers(low, high) if common
                  else st.integers(low, high))
    min_renew = max(1, math.ceil(ttl_ms / max_renewals_per_ttl))
    max_renew = ttl_ms - 1
    default_renew = round(ttl_ms / 3)
    renew_ms = draw(st.just(default_renew) | st.integers(min_renew, max_renew)
                    if min_renew <= default_renew <= max_renew
                    else st.integers(min_renew, max_renew))
    max_guard = ttl_ms - renew_ms - 1
    default_guard = round(ttl_ms / 10)
    guard_ms = draw(st.just(default_guard) | st.integers(0, max_guard)
                    if default_guard <= max_guard else st.integers(0, max_guard))
    ttl, renew, guard = _ms(ttl_ms), _ms(renew_ms), _ms(guard_ms)
    check_timing(ttl, renew, guard)
    return Timing(ttl, renew, guard)


@st.composite
def _candidate(draw: st.DrawFn, timing: Timing, modes: Sequence[Mode],
               max_drift: float) -> Candidate:
    ttl_ms = round(timing.ttl * 1000)
    # Liveness needs a renewal's round trip to fit well inside the per-call timeout
    # (renew_interval) and inside the slack ttl - guard - renew_interval.
    max_latency_ms = math.floor(1000 * _max_leg_latency(timing))
    mode = draw(st.sampled_from(list(modes)))
    start = _ms(draw(st.just(0) | st.integers(0, ttl_ms)))
    low_ms = draw(st.integers(0, max_latency_ms))
    high_ms = draw(st.integers(low_ms, max_latency_ms))
    # Rate drift in millionths, strictly below max_drift * guard / ttl; at the
    # edge of that bound as often as anywhere inside it, since that is where the
    # guard is all that keeps the lease safe.
    bound_ppm = math.ceil(max_drift * timing.guard / timing.ttl * 1_000_000) - 1
    drift_ppm = (draw(st.just(0) | st.just(bound_ppm) | st.integers(0, bound_ppm))
                 if bound_ppm > 0 else 0)
    overtake = draw(st.booleans())
    return Candidate(mode, start, Latency(_ms(low_ms), _ms(high_ms)), drift_ppm / 1_000_000,
                     overtake)


@st.composite
def _fault(draw: st.DrawFn, kinds: Sequence[type[Fault]], candidates: int, timing: Timing,
           horizon_ms: int, request_loss: Sequence[float],
           reply_loss: Sequence[float]) -> Fault:
    ttl_ms = round(timing.ttl * 1000)
    renew_ms = round(timing.renew_interval * 1000)
    kind = draw(st.sampled_from(list(kinds)))
    at = _ms(draw(st.integers(0, horizon_ms)))
    # Faults that hit the leader matter most for safety: draw "whoever leads"
    # as often as a fixed candidate (and shrink towards it).
    who = draw(st.just(LEADER) | st.integers(0, candidates - 1))
    duration = _ms(draw(st.integers(0, 2 * ttl_ms)))
    if kind is Crash:
        return Crash(who, at)
    if kind is Outage:
        return Outage(at, duration)
    if kind is Partition:
        return Partition(who, at, duration)
    if kind is Pause:
        return Pause(who, at, duration)
    if kind is Restart:
        return Restart(who, at, duration)
    if kind is Lossy:
        return Lossy(who, at, duration, requests=draw(st.sampled_from(request_loss)),
                     replies=draw(st.sampled_from(reply_loss)))
    if kind is Slow:
        # From slow-but-in-time (a round trip within renew_interval) to slow
        # enough that calls time out and land late.
        latency = _ms(draw(st.integers(max(1, renew_ms // 10), 3 * renew_ms)))
        return Slow(who, at, duration, latency)
    raise ValueError(f"unknown fault kind {kind!r}; use some of {FAULT_KINDS}")


@st.composite
def _handover(draw: st.DrawFn, timing: Timing, timeline: Sequence[Fault],
              candidates: Sequence[Candidate]) -> Restart:
    ttl_ms = round(timing.ttl * 1000)
    renew_ms = round(timing.renew_interval * 1000)
    quiet = max([*(f.settled if isinstance(f, Slow) else f.end for f in timeline),
                 *(c.start for c in candidates)])
    # A fault-free ttl + renew_interval elects a leader (check_liveness) and is
    # what check_handover wants before a step-down; the extra wait moves the
    # step-down about within the leader's renewal cycle.
    settle_ms = ttl_ms + renew_ms
    at = _ms(math.ceil(quiet * 1000) + settle_ms + draw(st.integers(0, renew_ms)))
    return Restart(LEADER, at, _ms(draw(st.integers(0, 2 * ttl_ms))))


@st.composite
def schedules(draw: st.DrawFn, *, min_candidates: int = 1, max_candidates: int = 8,
              modes: Collection[Mode] = MODES,
              faults: Collection[type[Fault]] = FAULT_KINDS, max_faults: int = 8,
              timing: st.SearchStrategy[Timing] | None = None, horizon: float = 3.0,
              max_drift: float = 0.99,
              request_loss: Sequence[float] = LOSS_PROBABILITIES,
              reply_loss: Sequence[float] = LOSS_PROBABILITIES,
              handover: bool = False) -> Schedule:
    """Schedules of an election under faults: candidates, timing and a fault timeline.

    Example::

        from hypothesis import given
        from trio_noleader.testing import schedules, simulate

        @given(schedules(max_candidates=4))
        def test_my_leader(schedule):
            simulate(schedule, body=my_body).check_all()

    Args:
        min_candidates (int): Fewest candidates (at least 1).
        max_candidates (int): Most candidates.
        modes (Collection[str]): Campaign styles to draw from: ``"hold"``,
            ``"run"``, ``"poll"`` (see :class:`Candidate`).
        faults (Collection[type[Fault]]): Kinds of fault to draw from; empty for
            none. Default: all of :data:`FAULT_KINDS`.
        max_faults (int): Most faults on the timeline.
        timing: A strategy for the :class:`Timing`; default :func:`timings`.
        horizon (float): Faults start within ``horizon * ttl`` of the start.
            Durations go up to ``2 * ttl``.
        max_drift (float): Candidates' clock drift is drawn below
            ``max_drift * guard / ttl``; the library's guarantee holds below 1.
            Above 1 the schedules break the documented assumption (useful to see
            the safety check fail).
        request_loss (Sequence[float]): The probabilities a :class:`Lossy` fault
            draws for losing a request (shrinking towards the first).
        reply_loss (Sequence[float]): Likewise for losing a write's reply.
        handover (bool): Also end the timeline with a :class:`Restart` of
            :data:`LEADER` (a graceful step-down) in a quiet stretch: at least
            ``ttl + renew_interval`` after every other fault has ended and every
            candidate has started, so that someone leads then and the others wait
            on the key, and with at least two candidates. Then
            :meth:`Trace.check_handover` has a step-down to check in most examples
            (not in all: a crash may have left nobody else). Random restarts
            rarely meet those conditions (about 1 schedule in 200).

    The run lasts until every fault has ended (and a slow link's requests have
    landed), plus two ``ttl + renew_interval`` windows, so that liveness is
    checked at the end of every run.
    """
    if not 1 <= min_candidates <= max_candidates:
        raise ValueError(f"need 1 <= min_candidates <= max_candidates, got "
                         f"{min_candidates}, {max_candidates}")
    if handover and max_candidates < 2:
        raise ValueError(f"handover needs max_candidates >= 2 (someone to take over), "
                         f"got {max_candidates}")
    if not modes:
        raise ValueError("modes must not be empty")
    unknown = [kind for kind in faults if kind not in FAULT_KINDS]
    if unknown:
        raise ValueError(f"unknown fault kinds {unknown}; use some of {FAULT_KINDS}")
    if not request_loss or not reply_loss:
        raise ValueError("request_loss and reply_loss must not be empty")
    drawn_timing = draw(timing if timing is not None else timings())
    count = draw(st.integers(max(min_candidates, 2) if handover else min_candidates,
                             max_candidates))
    candidates = tuple(draw(_candidate(drawn_timing, sorted(modes), max_drift))
                       for _ in range(count))
    ttl_ms = round(drawn_timing.ttl * 1000)
    renew_ms = round(drawn_timing.renew_interval * 1000)
    horizon_ms = max(0, round(horizon * ttl_ms))
    timeline: list[Fault] = []
    if faults and max_faults > 0:
        timeline = draw(st.lists(_fault(sorted(faults, key=FAULT_KINDS.index), count,
                                        drawn_timing, horizon_ms, list(request_loss),
                                        list(reply_loss)),
                                 max_size=max_faults))
    timeline.sort(key=lambda f: (f.at, repr(f)))
    write_every = _ms(draw(st.just(max(1, renew_ms // 2))
                           | st.integers(max(1, renew_ms // 4), 2 * renew_ms)))
    if handover:
        timeline.append(draw(_handover(drawn_timing, timeline, candidates)))
    settled = max([max(f.settled if isinstance(f, Slow) else f.end for f in timeline),
                   *(c.start for c in candidates)] if timeline
                  else [c.start for c in candidates])
    run_until = round(settled + 2 * (drawn_timing.ttl + drawn_timing.renew_interval), 3)
    seed = draw(st.integers(0, 2**32 - 1))
    return Schedule(drawn_timing, candidates, tuple(timeline), write_every, run_until, seed)
