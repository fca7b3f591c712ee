"""Play a :class:`Schedule` in virtual time and return a :class:`Trace` to check."""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import replace

import trio
import trio.testing

from .._context import services_for
from ._fence import FencedResource
from ._schedule import (
    Schedule,
)
from ._simulation import (
    BodyFn,
    LivelockGuard,
    Simulation,
    all_tasks,
    default_body,
    leftover_tasks,
    seed_scheduler,
)
from ._trace import Trace

__all__ = ["DEFAULT_KEY", "run_schedule", "simulate"]

#: The election key a simulation uses unless told otherwise.
DEFAULT_KEY = "sim/leader"

#: The trace (and the run's start) of the simulation the current task belongs to.
_RUN: ContextVar[tuple[Trace, float] | None] = ContextVar(
    "trio_noleader_testing_run", default=None)


class _KeepInTrace(logging.Filter):
    """On the library's logger: a simulation's records go to its trace, not further.

    By context, not globally: tasks of the simulation log into its trace while
    the rest of the program (another test's tasks, say) logs as usual.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        run = _RUN.get()
        if run is None:
            return True
        trace, t0 = run
        try:
            record.virtual_time = trio.current_time() - t0
        except RuntimeError:  # logged outside the run (cannot happen from its tasks)
            record.virtual_time = None
        trace.log.append(record)
        return False


_KEEP_IN_TRACE = _KeepInTrace()


@contextmanager
def _logging_into(trace: Trace, t0: float) -> Iterator[None]:
    logger = logging.getLogger("trio_noleader")
    if _KEEP_IN_TRACE not in logger.filters:
        logger.addFilter(_KEEP_IN_TRACE)
    token = _RUN.set((trace, t0))
    try:
        yield
    finally:
        _RUN.reset(token)


async def run_schedule(schedule: Schedule, *, body: BodyFn | None = None,
                       key: str = DEFAULT_KEY, resource: FencedResource | None = None,
                       call_timeout: float | None = None) -> Trace:
    """Play *schedule* in virtual time and return what happened.

    Each candidate gets its own :class:`FaultyBackend` over one fresh
    :class:`~trio_noleader.MemoryBackend` (all sharing a :class:`StoreSwitch`, and
    keeping requests in flight when their callers give up), campaigns as its
    ``mode`` says, and runs *body* whenever it leads. The faults are applied at
    their times. At ``run_until`` every fault still in effect ends and every
    candidate is cancelled, which makes leaders release.

    Must run under a :class:`trio.testing.MockClock` with ``autojump_threshold=0``:
    pytest-trio's ``autojump_clock`` fixture, or ``trio.run(...,
    clock=MockClock(autojump_threshold=0))``; :func:`simulate` does the latter.
    The run seeds trio's scheduler from ``schedule.seed``.

    Args:
        schedule (Schedule): What to play.
        body: ``async def body(leader: LeaderContext)``, the leader-only code under
            test; by default :func:`default_body`. It runs until cancelled; if it
            returns, that candidate steps down and stops campaigning.
        key (str): The election key.
        resource (FencedResource | None): The downstream resource the bodies write
            to through :meth:`LeaderContext.write`; a fresh one by default.
        call_timeout (float | None): A client-side timeout for every store call
            (``FaultyBackend(timeout=...)``), as a real backend client has; by
            default calls wait as long as the link makes them.

    What the library logs from the run's tasks is kept in :attr:`Trace.log`, not
    passed on to your handlers (nor, without any, printed on stderr): a run fails
    renewals and loses terms on purpose, hundreds of times.

    Returns:
        Trace: the terms, writes, calls, faults and log of the run, with the checks.

    Raises:
        RuntimeError: if the clock is not a MockClock.
    """
    clock = trio.lowlevel.current_clock()
    if not isinstance(clock, trio.testing.MockClock):
        raise RuntimeError(
            "run_schedule needs virtual time: run it under pytest-trio's autojump_clock "
            "fixture or trio.run(..., clock=trio.testing.MockClock(autojump_threshold=0)), "
            "or call simulate(schedule)")
    seed_scheduler(schedule.seed)
    t0 = trio.current_time()
    resource = FencedResource() if resource is None else resource
    baseline = set(all_tasks())
    trace = Trace(schedule, key)
    shutdown_started = trio.current_time()
    with _logging_into(trace, t0), trio.CancelScope() as guard_scope:
        guard = LivelockGuard(guard_scope, trace.errors)
        trio.lowlevel.add_instrument(guard)
        try:
            async with trio.open_nursery() as in_flight:
                sim = Simulation(schedule, body or default_body, key, resource, in_flight, t0,
                                 call_timeout)
                async with contextlib.AsyncExitStack() as hosts:
                    # The core's background tasks for each candidate (janitor, shared
                    # watch) run here, and end with the run.
                    for backend in sim.backends:
                        await hosts.enter_async_context(services_for(backend).hosted())
                    await _play(sim, schedule, t0)
                    shutdown_started = sim.shutdown_started
                trace.shutdown_took = trio.current_time() - shutdown_started
        finally:
            trio.lowlevel.remove_instrument(guard)
    trace.leftover_tasks = leftover_tasks(baseline)
    _fill(trace, sim, resource, t0)
    return trace


async def _play(sim: Simulation, schedule: Schedule, t0: float) -> None:
    async with trio.open_nursery() as nursery:
        for index in range(len(schedule.candidates)):
            nursery.start_soon(sim.candidate, index, name=f"c{index}")
        nursery.start_soon(sim.play_faults, name="faults")
        await trio.sleep_until(t0 + schedule.run_until)
        sim.end_faults()
        sim.shutting_down = True
        sim.shutdown_started = trio.current_time()
        nursery.cancel_scope.cancel()


def _fill(trace: Trace, sim: Simulation, resource: FencedResource, t0: float) -> None:
    trace.end = sim.schedule.run_until
    for term in sim.terms:
        if term.end is None:
            term.end = trace.end
    trace.terms = sim.terms
    trace.fenced = [replace(w, time=w.time - t0,
                            issued=None if w.issued is None else w.issued - t0)
                    for w in resource.writes]
    trace.issued = [replace(w, time=w.time - t0) for w in sim.issued]
    writes = [w for backend in sim.backends for w in backend.writes]
    writes.sort(key=lambda w: w.time)
    trace.store_writes = [replace(w, time=w.time - t0, sent=w.sent - t0) for w in writes]
    trace.calls = {b.name: [replace(c, time=c.time - t0,
                                    sent=None if c.sent is None else c.sent - t0)
                            for c in b.calls] for b in sim.backends}
    trace.dropped = [replace(d, time=d.time - t0, issued=d.issued - t0)
                     for b in sim.backends for d in b.dropped]
    trace.faults = sim.spans()
    trace.crashed = dict(sim.crashed)
    trace.finished = dict(sim.finished)
    trace.errors.extend(sim.errors)


def simulate(schedule: Schedule, *, body: BodyFn | None = None, key: str = DEFAULT_KEY,
             resource: FencedResource | None = None,
             call_timeout: float | None = None) -> Trace:
    """Run :func:`run_schedule` in a fresh ``trio.run`` on a fresh autojump clock.

    The synchronous entry point: call it from a plain (non-async) test, e.g. one
    decorated with ``@hypothesis.given(schedules())``, or to replay a schedule
    that a failing test printed.
    """
    return trio.run(functools.partial(run_schedule, schedule, body=body, key=key,
                                      resource=resource, call_timeout=call_timeout),
                    clock=trio.testing.MockClock(autojump_threshold=0))
