"""The record of a simulated run (:class:`Trace`) and the checks of the library's promises.

Data and plain functions of it: nothing here runs a simulation or does I/O, so a
test may build a :class:`Trace` by hand to check a story of its own.
"""

from __future__ import annotations

import itertools
import logging
import math
import uuid
from collections import Counter
from dataclasses import dataclass, field

from .._release import RELEASE_TIMEOUT
from .._types import decode_value
from ._faults import Call, DroppedEffect, StoreWrite
from ._fence import FencedWrite
from ._schedule import (
    Schedule,
)

__all__ = ["FaultSpan", "IssuedWrite", "Term", "Trace"]


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
        log (list[logging.LogRecord]): What the library logged during the run (the
            ``trio_noleader`` logger, at the level it is set to), kept here rather
            than passed on to the application's handlers: a run logs hundreds of
            failed renewals and lost terms on purpose. ``record.virtual_time`` is
            the run's time of each (seconds from its start).
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
    log: list[logging.LogRecord] = field(default_factory=list, repr=False)

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

        Also (docs/guarantees.rst: ambiguous writes): no body is
        entered with a deadline too close to survive one renewal round trip, i.e.
        with ``ttl - guard - renew_interval`` or less left (checked where the body
        sees its :class:`Leadership`).

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
        """Fencing tokens work end to end (docs/guarantees.rst).

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

    def check_no_leaks(self) -> None:
        """A campaign that ended unelected leaves no lease behind to expire.

        A create that landed for a campaign that never entered its body (it was
        stopped, or the run ended, while the reply was on its way) must be deleted
        by compare-and-set, not left to run out its ttl while others wait. Leases
        whose candidate crashed or lost its link (partition, outage, pause, lossy or
        slow link) before they expired are exempt, as are those still live at the
        end of the run.

        Raises:
            AssertionError: naming each lease left to expire.
        """
        elected = {term.candidate_id for term in self.terms}
        applied = [w for w in self.store_writes if w.result == "ok"]
        problems = []
        for i, write in enumerate(applied):
            if write.op != "create" or write.value is None or len(write.value) < 16:
                continue
            if uuid.UUID(bytes=bytes(write.value[:16])) in elected:
                continue
            index = int(write.candidate[1:])
            store_ttl = self.schedule.timing.ttl * (1 - self.schedule.candidates[index].drift)
            revision, expires, deleted = write.new_revision, write.time + store_ttl, False
            for later in applied[i + 1:]:
                if later.time >= expires:
                    break
                if later.revision == revision and later.op == "update":
                    revision, expires = later.new_revision, later.time + store_ttl
                elif later.revision == revision and later.op == "delete":
                    deleted = True
                    break
            if deleted or expires >= self.end:
                continue
            if index in self.crashed and self.crashed[index] <= expires:
                continue
            if any(span.kind in _LINK_FAULTS and span.candidate in (None, index)
                   and span.start <= expires and span.end >= write.sent
                   for span in self.faults):
                continue
            problems.append(f"{write.candidate}'s create (revision {write.new_revision}, "
                            f"landed at {write.time:.6g}) was never elected, never deleted, "
                            f"and expired at {expires:.6g}")
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
        self.check_no_leaks()
        self.check_liveness()
        self.check_handover()


#: Faults that cut a candidate off the store (a crash is counted apart).
_LINK_FAULTS = frozenset({"partition", "outage", "pause", "lossy", "slow"})


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


