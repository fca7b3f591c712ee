"""Play a :class:`Schedule` in virtual time and return a :class:`Trace` to check."""

from __future__ import annotations

import functools
import itertools
import math
import random
import traceback
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field, replace

import trio
import trio.testing

from .._election import RELEASE_TIMEOUT, Leadership, hold_leadership
from .._exceptions import LeadershipLost
from .._helpers import run_as_leader
from .._memory import MemoryBackend
from .._types import decode_value
from ._faults import Call, DroppedEffect, FaultyBackend, StoreSwitch, StoreWrite
from ._fence import FencedResource, FencedWrite
from ._schedule import (
    LEADER,
    Crash,
    Fault,
    Lossy,
    Outage,
    Partition,
    Pause,
    Restart,
    Schedule,
    Slow,
)

__all__ = [
    "DEFAULT_KEY",
    "FaultSpan",
    "IssuedWrite",
    "LeaderContext",
    "Term",
    "Trace",
    "default_body",
    "run_schedule",
    "simulate",
]

#: The election key a simulation uses unless told otherwise.
DEFAULT_KEY = "sim/leader"

#: Steps trio may take at one virtual instant before the run counts as a livelock.
LIVELOCK_STEPS = 20_000


@dataclass
class Term:
    """One leadership term from the leader body's own view.

    Attributes:
        candidate (int): The candidate's index in the schedule.
        name (str): Its name (``c0``, ``c1``, ...).
        token (int): The term's fencing token.
        candidate_id (uuid.UUID | None): The campaign's candidate id.
        start (float): When the body was entered.
        end (float | None): When the body saw its cancellation (or returned);
            ``None`` only while the run is going.
        ended (str): ``"cancelled"``, ``"returned"``, ``"error:<Type>"`` or
            ``"running"``.
        deadline (float | None): The body's deadline when it was entered
            (:attr:`Leadership.deadline`, from the run's start); ``None`` in
            ``"run"`` mode, where the body does not see its :class:`Leadership`.
    """

    candidate: int
    name: str
    token: int
    candidate_id: uuid.UUID | None = field(repr=False)
    start: float
    end: float | None = None
    ended: str = "running"
    deadline: float | None = None

    def __str__(self) -> str:
        return (f"{self.name} token {self.token} [{self.start:.6g}, "
                f"{'...' if self.end is None else f'{self.end:.6g}'}) {self.ended}")

    def leads_at(self, time: float) -> bool:
        """Whether the body was entered and not yet cancelled at *time*."""
        end = math.inf if self.end is None else self.end
        return self.start <= time < end or self.start == end == time


@dataclass(frozen=True, slots=True)
class IssuedWrite:
    """A write a leader body issued to the fenced resource (it may arrive later)."""

    time: float
    writer: str
    token: int
    data: object = None


@dataclass(frozen=True, slots=True)
class FaultSpan:
    """When a fault of the schedule was in effect.

    Attributes:
        kind (str): The fault's class name in lower case (``"partition"``, ...).
        candidate (int | None): The candidate it hit (a :data:`LEADER` target
            resolved to whoever led then), or ``None`` for a store outage.
        start (float): When it began.
        end (float): When it ended: the same instant for a crash; for a
            :class:`Slow` link, once the requests sent during it have arrived;
            for a :class:`Restart`, when the candidate came back. Cut at the end
            of the run.
    """

    kind: str
    candidate: int | None
    start: float
    end: float


class LeaderContext:
    """What a simulated leader body gets: who it is, its term's token, and its I/O.

    Attributes:
        index (int): The candidate's index in the schedule.
        name (str): The candidate's name (``c0``, ...).
        token (int): This term's fencing token. Under ``run_as_leader``, which does
            not hand the token to its function, the runner reads it from the
            candidate's own last write to the store.
        leadership (Leadership | None): The :class:`Leadership` (``None`` in
            ``"run"`` mode).
        resource (FencedResource): The downstream resource of the run.
        backend (FaultyBackend): The candidate's link to the store.
        schedule (Schedule): The schedule being played.
        term (Term): This term's record.
    """

    def __init__(self, sim: _Simulation, index: int, token: int,
                 leadership: Leadership | None, term: Term) -> None:
        self._sim = sim
        self.index = index
        self.name = term.name
        self.token = token
        self.leadership = leadership
        self.resource = sim.resource
        self.backend = sim.backends[index]
        self.schedule = sim.schedule
        self.term = term

    def __repr__(self) -> str:
        return f"<LeaderContext {self.name} token={self.token}>"

    async def write(self, data: object = None) -> bool:
        """Write *data* to the fenced resource with this term's token.

        Goes through the candidate's pause gate (:meth:`FaultyBackend.perform`), so
        a pause holds it up and delivers it late. Returns whether it was accepted.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        now = trio.current_time()
        self._sim.issued.append(IssuedWrite(now, self.name, self.token, data))
        return await self.backend.perform(self.resource.write, self.token, writer=self.name,
                                          data=data, issued=now)


BodyFn = Callable[[LeaderContext], Awaitable[object]]


async def default_body(leader: LeaderContext) -> None:
    """The default leader body: write on entry, then every ``write_every`` seconds."""
    await leader.write("claim")
    while True:
        await trio.sleep(leader.schedule.write_every)
        await leader.write("tick")


def _closed_union(spans: list[tuple[float, float]]) -> list[tuple[float, float]]:
    merged: list[tuple[float, float]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


@dataclass
class Trace:
    """What happened in one simulated run. Times are seconds from the run's start.

    Attributes:
        schedule (Schedule): What was played.
        key (str): The election key.
        terms (list[Term]): Every leadership term, from the bodies' own view.
        fenced (list[FencedWrite]): Every write the fenced resource received.
        issued (list[IssuedWrite]): Every write a body issued.
        store_writes (list[StoreWrite]): Every write that reached the store, from
            every candidate, in arrival order.
        calls (dict[str, list[Call]]): Each candidate's calls, as it saw them.
        dropped (list[DroppedEffect]): Side effects lost with a crashed candidate.
        faults (list[FaultSpan]): When each fault was in effect.
        crashed (dict[int, float]): When each crashed candidate crashed.
        finished (dict[int, float]): Candidates whose campaign ended on its own
            (the body returned), and when.
        errors (list[str]): Exceptions that escaped a candidate other than the
            documented ones, harness self-check failures, and livelocks.
        leftover_tasks (list[str]): Tasks still alive after the run was shut down.
        shutdown_took (float): How long cancelling every candidate took.
        end (float): When the run ended (``schedule.run_until``).
    """

    schedule: Schedule
    key: str
    terms: list[Term] = field(default_factory=list)
    fenced: list[FencedWrite] = field(default_factory=list)
    issued: list[IssuedWrite] = field(default_factory=list)
    store_writes: list[StoreWrite] = field(default_factory=list)
    calls: dict[str, list[Call]] = field(default_factory=dict)
    dropped: list[DroppedEffect] = field(default_factory=list)
    faults: list[FaultSpan] = field(default_factory=list)
    crashed: dict[int, float] = field(default_factory=dict)
    finished: dict[int, float] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    leftover_tasks: list[str] = field(default_factory=list)
    shutdown_took: float = 0.0
    end: float = 0.0

    # -- reading -----------------------------------------------------------------

    def leaders_at(self, time: float) -> list[Term]:
        """The terms whose body was un-cancelled at *time*."""
        return [t for t in self.terms if t.leads_at(time)]

    def timeline(self, start: float = -math.inf, end: float = math.inf,
                 limit: int = 80) -> str:
        """A readable list of what happened between *start* and *end*."""
        events: list[tuple[float, int, str]] = []
        for span in self.faults:
            who = "store" if span.candidate is None else f"c{span.candidate}"
            if span.kind == "crash":
                events.append((span.start, 0, f"{who} crashes"))
            else:
                events.append((span.start, 0, f"{who} {span.kind} begins"))
                events.append((span.end, 0, f"{who} {span.kind} ends"))
        for term in self.terms:
            events.append((term.start, 2, f"{term.name} leads, token {term.token}"))
            if term.end is not None:
                events.append((term.end, 1, f"{term.name} stops leading ({term.ended}), "
                                            f"token {term.token}"))
        for write in self.fenced:
            if not write.accepted or write.held_for > 0:
                verdict = "accepted" if write.accepted else "REJECTED"
                events.append((write.time, 3,
                               f"resource {verdict} {write.writer}'s write, token {write.token}"
                               f" (issued {write.issued:.6g}, highest {write.highest})"))
        events.sort(key=lambda e: (e[0], e[1]))
        lines = [f"{t:10.4f}  {text}" for t, _, text in events if start <= t <= end]
        if len(lines) > limit:
            lines = [*lines[:limit // 2], f"    ... {len(lines) - limit} more ...",
                     *lines[-limit // 2:]]
        return "\n".join(lines)

    def _fail(self, problems: list[str], around: tuple[float, float] | None = None) -> None:
        if not problems:
            return
        shown = problems[:10]
        if len(problems) > 10:
            shown.append(f"... and {len(problems) - 10} more")
        window = (-math.inf, math.inf) if around is None else around
        raise AssertionError(
            "\n".join(shown) + "\n\nschedule:\n" + self.schedule.describe()
            + "\n\ntimeline:\n" + self.timeline(*window))

    # -- the properties ----------------------------------------------------------

    def check_safety(self) -> None:
        """No two leader bodies are un-cancelled at the same virtual instant.

        Also (DESIGN.md rule 3): no body is entered with a deadline too close to
        survive one renewal round trip, i.e. with ``ttl - guard - renew_interval``
        or less left (checked where the body sees its :class:`Leadership`).

        Raises:
            AssertionError: naming the overlapping terms, with a timeline.
        """
        terms = sorted(self.terms, key=lambda t: t.start)
        problems: list[str] = []
        around: tuple[float, float] | None = None
        timing = self.schedule.timing
        margin = timing.ttl - timing.guard - timing.renew_interval
        for term in terms:
            if term.deadline is not None and term.deadline - term.start <= margin - 1e-9:
                problems.append(f"{term} was entered with {term.deadline - term.start:.6g} s "
                                f"left before its deadline (at least {margin:.6g} needed)")
        for i, first in enumerate(terms):
            first_end = self.end if first.end is None else first.end
            for second in terms[i + 1:]:
                if second.start > first_end or (second.start == first_end
                                                 and first.start != first_end):
                    break
                problems.append(f"two leaders at {second.start:.6g}: {first} and {second}")
                if around is None:
                    around = (first.start - self.schedule.timing.ttl,
                              second.start + self.schedule.timing.ttl)
        self._fail(problems, around)

    def check_fencing(self) -> None:
        """Fencing tokens work end to end (DESIGN.md rule 5).

        - terms' tokens strictly increase in the order the terms began;
        - every renewal stored in the key carries the token of the lease it
          renews (the revision of the create it descends from), so an observer
          that arrives mid-term learns the right token;
        - the resource's accepted tokens never decrease;
        - every write a body issued arrived and was accepted or rejected, unless it
          was dropped with a crashed candidate: none is lost silently;
        - a write issued by an un-cancelled body and delivered at once is accepted;
        - a write that arrived after its term ended (held by a pause), once a later
          term has had a write accepted, is rejected.

        Raises:
            AssertionError: naming each violation, with a timeline.
        """
        problems: list[str] = []
        terms = sorted(self.terms, key=lambda t: t.start)
        for before, after in itertools.pairwise(terms):
            if after.token <= before.token:
                problems.append(f"token did not increase: {before} then {after}")
        highest = 0
        for write in self.fenced:
            if write.accepted and write.token < highest:
                problems.append(f"resource accepted token {write.token} at {write.time:.6g} "
                                f"after accepting {highest}")
            if write.accepted:
                highest = max(highest, write.token)
            elif write.token >= write.highest:
                problems.append(f"resource rejected a current token: {write}")
        issued: Counter[tuple[str, object, float]] = Counter(
            (w.writer, w.token, w.time) for w in self.issued)
        arrived: Counter[tuple[str, object, float]] = Counter(
            (w.writer, w.token, w.issued) for w in self.fenced if w.issued is not None)
        dropped: Counter[tuple[str, object, float]] = Counter(
            (str(d.kwargs.get("writer")), d.args[0] if d.args else None, d.issued)
            for d in self.dropped)
        for (writer, token, when), count in (issued - arrived - dropped).items():
            problems.append(f"{count} write(s) by {writer} (token {token}, issued at "
                            f"{when:.6g}) never reached the resource")
        for (writer, token, when), count in (arrived - issued).items():
            problems.append(f"{count} write(s) by {writer} (token {token}, issued at "
                            f"{when:.6g}) reached the resource more often than issued")
        lineage: dict[int, int] = {}
        for stored in self.store_writes:
            if stored.result != "ok" or stored.new_revision is None or stored.value is None:
                continue
            carried = decode_value(stored.value, stored.new_revision)[1]
            expected = carried if stored.op == "create" else lineage.get(
                stored.revision if stored.revision is not None else -1, carried)
            if carried != expected:
                problems.append(f"{stored.candidate} renewed the lease whose token is "
                                f"{expected} with token {carried} (revision "
                                f"{stored.new_revision}, at {stored.time:.6g})")
            if expected is not None:
                lineage[stored.new_revision] = expected
        by_writer: dict[str, list[Term]] = {}
        for term in terms:
            by_writer.setdefault(term.name, []).append(term)
        first_accept: dict[int, float] = {}
        for write in self.fenced:
            if write.accepted:
                first_accept.setdefault(write.token, write.time)
        for write in self.fenced:
            owner = next((t for t in by_writer.get(write.writer, ())
                          if t.token == write.token), None)
            if owner is None or write.issued is None:
                continue
            if write.held_for == 0 and owner.leads_at(write.time) and not write.accepted:
                problems.append(f"the leader's own write was rejected: {write} during {owner}")
            end = self.end if owner.end is None else owner.end
            if write.time > end and write.accepted:
                newer = [t for t in terms if t.start > owner.start
                         and first_accept.get(t.token, math.inf) < write.time]
                if newer:
                    problems.append(f"a stale write was accepted: {write} from {owner}, after "
                                    f"{newer[0]} had written")
        self._fail(problems)

    def check_liveness(self) -> None:
        """Whenever the store has been reachable without faults for ``ttl +
        renew_interval`` by some live candidate, there is a leader, and there stays
        one until the next fault.

        A quiet window is a time with no fault in effect for anyone (a crash, and a
        candidate whose body returned, count as a fault at their instant) and at
        least one started, uncrashed, unfinished candidate.
        The claim assumes that a leg of a call takes at most ``renew_interval / 10``
        and at most a quarter of the slack ``ttl - guard - renew_interval`` (else a
        renewal's reply may arrive after the deadline it was meant to extend); for
        other schedules this check does nothing.

        Raises:
            AssertionError: naming the first instant without a leader.
        """
        timing = self.schedule.timing
        slack = timing.ttl - timing.guard - timing.renew_interval
        if any(c.latency.high > min(timing.renew_interval / 10, slack / 4)
               for c in self.schedule.candidates):
            return
        window = timing.ttl + timing.renew_interval
        disturbed = _closed_union([(s.start, s.end) for s in self.faults]
                                  + [(t, t) for t in self.finished.values()])
        quiet: list[tuple[float, float]] = []
        cursor = 0.0
        for start, end in disturbed:
            if start > cursor:
                quiet.append((cursor, start))
            cursor = max(cursor, end)
        if cursor < self.end:
            quiet.append((cursor, self.end))
        led = _closed_union([(t.start, self.end if t.end is None else t.end)
                             for t in self.terms])
        problems: list[str] = []
        for q0, q1 in quiet:
            starts = [c.start for i, c in enumerate(self.schedule.candidates)
                      if self.crashed.get(i, math.inf) > q0
                      and self.finished.get(i, math.inf) > q0]
            if not starts:
                continue
            from_ = max(q0, min(starts))
            due = from_ + window
            if due >= q1:
                continue
            gap = _first_gap(led, due, q1)
            if gap is not None:
                problems.append(f"no leader at {gap:.6g}, although the store had been "
                                f"reachable without faults since {from_:.6g} "
                                f"(due by {due:.6g}, quiet until {q1:.6g})")
                break
        self._fail(problems)

    def check_handover(self) -> None:
        """A leader that steps down gracefully (a :class:`Restart`) releases at once,
        and a candidate (another, or the same one back from its restart) takes over
        within ``renew_interval / 2`` (a polling candidate's interval) plus 14 legs
        of latency (the worst path: a renewal in flight makes the release delete,
        read and delete again; a poller's attempt in flight, a janitor sweep, a
        create).

        Checked for each restart of a leader when no other fault was in effect
        from ``ttl + renew_interval`` before it (so that the others wait on the
        key) until the bound, and another candidate was up; under the latency
        assumption of :meth:`check_liveness`.

        Raises:
            AssertionError: naming the restart that was not followed in time.
        """
        timing = self.schedule.timing
        slack = timing.ttl - timing.guard - timing.renew_interval
        latencies = [c.latency.high for c in self.schedule.candidates]
        if max(latencies) > min(timing.renew_interval / 10, slack / 4):
            return
        settle = timing.ttl + timing.renew_interval
        bound = timing.renew_interval / 2 + 14 * max(latencies) + 1e-6
        problems: list[str] = []
        for restart in self.faults:
            if restart.kind != "restart":
                continue
            at, who = restart.start, restart.candidate
            if not any(t.candidate == who and t.end is not None and abs(t.end - at) < 1e-6
                       for t in self.terms):
                continue
            if any(span is not restart and span.start <= at + bound
                   and span.end >= at - settle for span in self.faults):
                continue
            if any(t >= at - settle for t in self.finished.values()):
                continue
            others = [i for i, c in enumerate(self.schedule.candidates)
                      if i != who and c.start <= at - settle and i not in self.crashed]
            if not others:
                continue
            # Anyone will do, the restarted candidate too if it is back in time.
            if not any(at - 1e-6 <= t.start <= at + bound for t in self.terms):
                problems.append(f"c{who} stepped down at {at:.6g}, but nobody took over "
                                f"within {bound:.6g} s")
        self._fail(problems)

    def check_hygiene(self) -> None:
        """No candidate ever deletes or overwrites a lease it does not hold.

        Every update and delete the store applied named a revision; the store's
        history (every applied write, from every candidate) says who wrote that
        revision. It must be the same candidate, and a renewal must carry the same
        candidate id as the lease it renews.

        Raises:
            AssertionError: naming each offending write.
        """
        history: dict[int, StoreWrite] = {}
        problems: list[str] = []
        for write in self.store_writes:
            if write.result != "ok":
                continue
            if write.op in ("update", "delete"):
                assert write.revision is not None
                owner = history.get(write.revision)
                if owner is None:
                    problems.append(f"{write.candidate} {write.op}d revision {write.revision}, "
                                    f"which no candidate wrote, at {write.time:.6g}")
                elif owner.candidate != write.candidate:
                    problems.append(f"{write.candidate} {write.op}d {owner.candidate}'s lease "
                                    f"(revision {write.revision}) at {write.time:.6g}")
                elif (write.op == "update" and write.value is not None
                      and owner.value is not None and write.value[:16] != owner.value[:16]):
                    problems.append(f"{write.candidate} overwrote the lease of another of its "
                                    f"campaigns (revision {write.revision}) at {write.time:.6g}")
            if write.new_revision is not None:
                history[write.new_revision] = write
        self._fail(problems)

    def check_clean(self) -> None:
        """No undocumented exception escaped, nothing livelocked, no task was left
        running, and shutting down (cancelling every candidate, which releases)
        took at most ``min(RELEASE_TIMEOUT, ttl)``.

        Raises:
            AssertionError: listing what went wrong.
        """
        problems = list(self.errors)
        if self.leftover_tasks:
            problems.append(f"tasks left running: {self.leftover_tasks}")
        bound = min(RELEASE_TIMEOUT, self.schedule.timing.ttl)
        if self.shutdown_took > bound + 1e-9:
            problems.append(f"shutting down took {self.shutdown_took:.6g} s (bound {bound:.6g})")
        self._fail(problems)

    def check_all(self) -> None:
        """Every check above."""
        self.check_clean()
        self.check_safety()
        self.check_fencing()
        self.check_hygiene()
        self.check_liveness()
        self.check_handover()


def _first_gap(covered: list[tuple[float, float]], start: float, end: float) -> float | None:
    """The first instant in [start, end) not inside one of the merged *covered* spans."""
    at = start
    for s, e in covered:
        if e <= at:
            continue
        if s > at:
            return at
        at = e
        if at >= end:
            return None
    return at if at < end else None


def _seed_scheduler(seed: int) -> None:
    """Seed trio's scheduler, which picks who runs first among tasks ready at once.

    Under Hypothesis (or pytest-trio) trio also sorts each batch before shuffling
    it, so that a seed replays exactly; elsewhere replay is close but not exact.
    """
    try:
        from trio._core import _run
    except ImportError:  # pragma: no cover - a future trio moved it
        return
    rng = getattr(_run, "_r", None)
    if isinstance(rng, random.Random):
        rng.seed(seed)


class _LivelockGuard(trio.abc.Instrument):
    """Cancel the run if trio keeps stepping tasks without virtual time moving."""

    def __init__(self, scope: trio.CancelScope, errors: list[str]) -> None:
        self.scope = scope
        self.errors = errors
        self.last = -math.inf
        self.steps = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        now = trio.current_time()
        if now != self.last:
            self.last = now
            self.steps = 0
            return
        self.steps += 1
        if self.steps == LIVELOCK_STEPS:
            self.errors.append(f"livelock: {LIVELOCK_STEPS} task steps at virtual time "
                               f"{now:.6g} without time moving (last: {task.name})")
            self.scope.cancel()


def _all_tasks() -> Iterator[trio.lowlevel.Task]:
    root = trio.lowlevel.current_root_task()
    stack = [] if root is None else [root]
    while stack:
        task = stack.pop()
        yield task
        for nursery in task.child_nurseries:
            stack.extend(nursery.child_tasks)


class _Link:
    """The fault state of one candidate's link, for overlapping faults."""

    def __init__(self, backend: FaultyBackend, latency: float | Callable[[], float]) -> None:
        self.backend = backend
        self.base_latency = latency
        self.partitions = 0
        self.pauses = 0
        self.lossy: dict[int, Lossy] = {}
        self.slow: dict[int, Slow] = {}

    def refresh(self) -> None:
        backend = self.backend
        backend.lose_requests = max((f.requests for f in self.lossy.values()), default=0.0)
        backend.lose_replies = max((f.replies for f in self.lossy.values()), default=0.0)
        backend.latency = (max(f.latency for f in self.slow.values()) if self.slow
                           else self.base_latency)


class _Simulation:
    def __init__(self, schedule: Schedule, body: BodyFn, key: str,
                 resource: FencedResource, in_flight: trio.Nursery, t0: float,
                 call_timeout: float | None) -> None:
        self.schedule = schedule
        self.body = body
        self.key = key
        self.resource = resource
        self.t0 = t0
        self.store = MemoryBackend()
        self.switch = StoreSwitch()
        self.outages = 0
        self.backends: list[FaultyBackend] = []
        self.links: list[_Link] = []
        for i, spec in enumerate(schedule.candidates):
            rng = random.Random(f"{schedule.seed}/{i}")
            low, high = spec.latency.low, spec.latency.high
            latency: float | Callable[[], float] = (
                low if high <= low else functools.partial(rng.uniform, low, high))
            backend = FaultyBackend(self.store, latency=latency, rng=rng, name=f"c{i}",
                                    switch=self.switch, drift=spec.drift, in_flight=in_flight,
                                    timeout=call_timeout)
            self.backends.append(backend)
            self.links.append(_Link(backend, latency))
        self.scopes = [trio.CancelScope() for _ in schedule.candidates]
        self.resume_at = [c.start for c in schedule.candidates]
        self.up = [False for _ in schedule.candidates]
        self.shutting_down = False
        self.terms: list[Term] = []
        self.issued: list[IssuedWrite] = []
        self.errors: list[str] = []
        self.crashed: dict[int, float] = {}
        self.finished: dict[int, float] = {}
        self.active: dict[int, Fault] = {}
        self.resolved: dict[int, int | None] = {}
        self.span_list: list[FaultSpan] = []

    def now(self) -> float:
        return trio.current_time() - self.t0

    # -- candidates --------------------------------------------------------------

    async def candidate(self, index: int) -> None:
        name = f"c{index}"
        while True:
            await trio.sleep_until(self.t0 + self.resume_at[index])
            if index in self.crashed:
                return
            if self.resume_at[index] > self.now():
                continue  # a restart pushed it back while it slept
            scope = self.scopes[index] = trio.CancelScope()
            self.up[index] = True
            with scope:
                try:
                    await self._campaigns(index)
                except trio.Cancelled:
                    raise
                except BaseException as exc:
                    if isinstance(exc, KeyboardInterrupt | SystemExit):
                        raise
                    self.errors.append(
                        f"{name} at {self.now():.6g}: {type(exc).__name__} escaped: {exc!r}\n"
                        + "".join(traceback.format_exception(exc)))
                    return
                self.finished[index] = self.now()
                return
            self.up[index] = False
            if index in self.crashed or self.shutting_down:
                return
            # Stopped by a Restart: resume_at says when to come back.

    async def _campaigns(self, index: int) -> None:
        timing = self.schedule.timing
        backend = self.backends[index]
        mode = self.schedule.candidates[index].mode
        if mode == "run":
            await run_as_leader(self.key, self._run_mode_body, index, backend=backend,
                                ttl=timing.ttl, renew_interval=timing.renew_interval,
                                guard=timing.guard)
            return
        while True:
            try:
                async with hold_leadership(self.key, backend=backend, ttl=timing.ttl,
                                           renew_interval=timing.renew_interval,
                                           guard=timing.guard, wait=mode != "poll") as lead:
                    if await self._body(index, lead):
                        return
            except LeadershipLost:
                pass
            except trio.WouldBlock:
                if mode != "poll":
                    raise
                await trio.sleep(timing.renew_interval / 2)

    def _term_token(self, index: int) -> tuple[int, uuid.UUID | None]:
        """The token and candidate id of the candidate's last applied lease write."""
        for write in reversed(self.backends[index].writes):
            if write.result == "ok" and write.op in ("create", "update"):
                assert write.value is not None
                assert write.new_revision is not None
                cid, token = decode_value(write.value, write.new_revision)
                return (write.new_revision if token is None else token), cid
        return 0, None

    async def _run_mode_body(self, index: int) -> None:
        await self._body(index, None)

    async def _body(self, index: int, lead: Leadership | None) -> bool:
        """Run the body for one term; return True if it returned on its own."""
        token, cid = self._term_token(index)
        if lead is not None and (lead.token, lead.candidate_id) != (token, cid):
            self.errors.append(f"harness: c{index}'s term has token {lead.token}, but its last "
                               f"write to the store says {token}")
            token, cid = lead.token, lead.candidate_id
        deadline = None if lead is None else lead.deadline - self.t0
        term = Term(index, f"c{index}", token, cid, self.now(), deadline=deadline)
        self.terms.append(term)
        try:
            await self.body(LeaderContext(self, index, token, lead, term))
        except trio.Cancelled:
            term.ended = "cancelled"
            raise
        except BaseException as exc:
            term.ended = f"error:{type(exc).__name__}"
            raise
        else:
            term.ended = "returned"
        finally:
            term.end = self.now()
        return True

    # -- faults ------------------------------------------------------------------

    def spans(self) -> list[FaultSpan]:
        return sorted(self.span_list, key=lambda s: (s.start, s.end))

    def _current_leader(self) -> int | None:
        running = [t for t in self.terms if t.end is None]
        return max(running, key=lambda t: t.start).candidate if running else None

    def _begin(self, seq: int, fault: Fault) -> int | None:
        """Resolve whom a fault hits as it begins, and record its span."""
        index = fault.target
        if index == LEADER:
            index = self._current_leader()
            if index is None:
                return None
        if index is not None and index in self.crashed:
            return None
        self.resolved[seq] = index
        settled = fault.settled if isinstance(fault, Slow) else fault.end
        self.span_list.append(FaultSpan(type(fault).__name__.lower(), index, fault.at,
                                        min(settled, self.schedule.run_until)))
        return index

    def _apply(self, seq: int, fault: Fault, starting: bool) -> None:
        index = self._begin(seq, fault) if starting else self.resolved.get(seq)
        if isinstance(fault, Outage):
            self.outages += 1 if starting else -1
            if self.outages == 1 and starting:
                self.switch.cut()
            elif self.outages == 0:
                self.switch.restore()
            return
        if index is None or (index in self.crashed and not isinstance(fault, Crash)):
            return
        link = self.links[index]
        backend = link.backend
        if isinstance(fault, Crash):
            self.crashed[index] = self.now()
            backend.crash()
            self.scopes[index].cancel()
        elif isinstance(fault, Restart):
            if starting:
                self.resume_at[index] = max(self.resume_at[index], fault.end)
                if self.up[index]:
                    self.scopes[index].cancel()
        elif isinstance(fault, Partition):
            link.partitions += 1 if starting else -1
            if link.partitions == 1 and starting:
                backend.partition()
            elif link.partitions == 0:
                backend.heal()
        elif isinstance(fault, Pause):
            link.pauses += 1 if starting else -1
            if link.pauses == 1 and starting:
                backend.pause()
            elif link.pauses == 0:
                backend.resume()
        elif isinstance(fault, Lossy):
            if starting:
                link.lossy[seq] = fault
            else:
                link.lossy.pop(seq, None)
            link.refresh()
        elif isinstance(fault, Slow):
            if starting:
                link.slow[seq] = fault
            else:
                link.slow.pop(seq, None)
            link.refresh()

    async def play_faults(self) -> None:
        actions: list[tuple[float, int, int, Fault, bool]] = []
        for seq, fault in enumerate(self.schedule.faults):
            if isinstance(fault, Crash | Restart):
                # Instant actions: a restarting candidate comes back by itself.
                actions.append((fault.at, 1, seq, fault, True))
            elif fault.end > fault.at:
                # At one instant, faults that end go before faults that begin.
                actions.append((fault.at, 1, seq, fault, True))
                actions.append((fault.end, 0, seq, fault, False))
        actions.sort(key=lambda a: a[:3])
        for at, _, seq, fault, starting in actions:
            if at >= self.schedule.run_until:
                break
            await trio.sleep_until(self.t0 + at)
            self._apply(seq, fault, starting)
            if starting and not isinstance(fault, Crash | Restart):
                self.active[seq] = fault
            else:
                self.active.pop(seq, None)

    def end_faults(self) -> None:
        """The run is over: every fault still in effect ends now."""
        for seq, fault in self.active.items():
            self._apply(seq, fault, False)
        self.active.clear()


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

    Returns:
        Trace: the terms, writes, calls and faults of the run, with the checks.

    Raises:
        RuntimeError: if the clock is not a MockClock.
    """
    clock = trio.lowlevel.current_clock()
    if not isinstance(clock, trio.testing.MockClock):
        raise RuntimeError(
            "run_schedule needs virtual time: run it under pytest-trio's autojump_clock "
            "fixture or trio.run(..., clock=trio.testing.MockClock(autojump_threshold=0)), "
            "or call simulate(schedule)")
    _seed_scheduler(schedule.seed)
    t0 = trio.current_time()
    resource = FencedResource() if resource is None else resource
    baseline = set(_all_tasks())
    trace = Trace(schedule, key)
    shutdown_started = trio.current_time()
    with trio.CancelScope() as guard_scope:
        guard = _LivelockGuard(guard_scope, trace.errors)
        trio.lowlevel.add_instrument(guard)
        try:
            async with trio.open_nursery() as in_flight:
                sim = _Simulation(schedule, body or default_body, key, resource, in_flight, t0,
                                  call_timeout)
                async with trio.open_nursery() as nursery:
                    for index in range(len(schedule.candidates)):
                        nursery.start_soon(sim.candidate, index, name=f"c{index}")
                    nursery.start_soon(sim.play_faults, name="faults")
                    await trio.sleep_until(t0 + schedule.run_until)
                    sim.end_faults()
                    sim.shutting_down = True
                    shutdown_started = trio.current_time()
                    nursery.cancel_scope.cancel()
                trace.shutdown_took = trio.current_time() - shutdown_started
        finally:
            trio.lowlevel.remove_instrument(guard)
    ancestors: set[trio.lowlevel.Task] = set()
    task: trio.lowlevel.Task | None = trio.lowlevel.current_task()
    while task is not None:
        ancestors.add(task)
        parent = task.parent_nursery
        task = None if parent is None else parent.parent_task
    trace.leftover_tasks = [t.name for t in _all_tasks()
                            if t not in baseline and t not in ancestors]
    _fill(trace, sim, resource, t0)
    return trace


def _fill(trace: Trace, sim: _Simulation, resource: FencedResource, t0: float) -> None:
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
