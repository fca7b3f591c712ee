"""Sharded schedules: the same candidates and faults, each candidate running ``run_sharded``.

Every candidate of a :class:`Schedule` calls ``run_sharded(group, keys, ...)`` on
its own :class:`FaultyBackend`; the faults are those of single-key schedules (a
:class:`Restart` is a graceful leave and a re-join, a :class:`Crash` a crash).
Each key's job writes to its own :class:`FencedResource` through the pause gate.
The result, a :class:`ShardedTrace`, holds one single-key :class:`Trace` per key,
so every single-key check applies per key, and adds the sharded ones.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import trio
import trio.testing

from .._context import services_for
from .._election import current_leadership
from .._release import RELEASE_TIMEOUT
from .._shard_assign import balance_bounds, join_move_bound
from .._sharded import member_key, run_sharded
from ._fence import FencedResource
from ._runner import _logging_into, _play
from ._schedule import Crash, Restart, Schedule
from ._simulation import (
    LivelockGuard,
    Simulation,
    all_tasks,
    default_body,
    leftover_tasks,
    seed_scheduler,
)
from ._trace import IssuedWrite, Term, Trace

__all__ = ["DEFAULT_GROUP", "ShardedTrace", "run_sharded_schedule", "simulate_sharded"]

#: The group a sharded simulation uses unless told otherwise.
DEFAULT_GROUP = "sim/shards"


class _ShardedSimulation(Simulation):
    def __init__(self, schedule: Schedule, group: str, keys: Sequence[str],
                 in_flight: trio.Nursery, t0: float, call_timeout: float | None) -> None:
        super().__init__(schedule, default_body, group, FencedResource(group), in_flight, t0,
                         call_timeout)
        self.group = group
        self.keys = list(keys)
        self.resources = {key: FencedResource(key) for key in self.keys}
        self.key_terms: dict[str, list[Term]] = {key: [] for key in self.keys}
        self.key_issued: dict[str, list[IssuedWrite]] = {key: [] for key in self.keys}

    async def _campaigns(self, index: int) -> None:
        timing = self.schedule.timing
        await run_sharded(self.group, self.keys, functools.partial(self._job, index),
                          backend=self.backends[index], ttl=timing.ttl,
                          renew_interval=timing.renew_interval, guard=timing.guard,
                          name=f"c{index}")

    async def _job(self, index: int, key: str) -> None:
        lead = current_leadership()
        name = f"c{index}"
        term = Term(index, name, lead.token, lead.candidate_id, self.now(),
                    deadline=lead.deadline - self.t0)
        self.terms.append(term)
        self.key_terms[key].append(term)
        backend = self.backends[index]
        resource = self.resources[key]
        try:
            while True:
                await trio.lowlevel.checkpoint_if_cancelled()
                now = trio.current_time()
                self.key_issued[key].append(IssuedWrite(now, name, lead.token, "tick"))
                await backend.perform(resource.write, lead.token, writer=name, data="tick",
                                      issued=now)
                await trio.sleep(self.schedule.write_every)
        except trio.Cancelled:
            term.ended = "cancelled"
            raise
        finally:
            term.end = self.now()


@dataclass
class ShardedTrace:
    """What happened in one sharded run. Times are seconds from the run's start.

    Attributes:
        schedule (Schedule): What was played.
        group (str): The group.
        keys (list[str]): The job keys.
        traces (dict[str, Trace]): One single-key trace per job key (its terms,
            fenced writes, store writes and the run's faults).
        members (Trace): The member slots' store writes and the run's errors.
    """

    schedule: Schedule
    group: str
    keys: list[str]
    traces: dict[str, Trace] = field(default_factory=dict)
    members: Trace | None = None
    #: Fault index in the schedule -> the candidate it hit (LEADER resolved).
    targets: dict[int, int | None] = field(default_factory=dict)

    def owners_at(self, time: float) -> dict[str, list[str]]:
        """Key -> the candidates whose job for it was un-cancelled at *time*."""
        return {key: [t.name for t in trace.leaders_at(time)]
                for key, trace in self.traces.items()}

    def check_clean(self) -> None:
        """No undocumented exception escaped, nothing livelocked, no task was left
        running, and shutting down took at most ``2 * min(RELEASE_TIMEOUT, ttl)``:
        the jobs' releases, then the membership's (a leaver lets go of its keys
        before it leaves, so nobody sees it gone while its keys are still held).
        """
        assert self.members is not None
        problems = list(self.members.errors)
        if self.members.leftover_tasks:
            problems.append(f"tasks left running: {self.members.leftover_tasks}")
        bound = 2 * min(RELEASE_TIMEOUT, self.schedule.timing.ttl)
        if self.members.shutdown_took > bound + 1e-9:
            problems.append(f"shutting down took {self.members.shutdown_took:.6g} s "
                            f"(bound {bound:.6g})")
        if problems:
            raise AssertionError("\n".join(problems))

    def check_one_owner(self) -> None:
        """Never two jobs of one key at once (each key's ``Trace.check_safety``)."""
        for trace in self.traces.values():
            trace.check_safety()

    def check_fencing(self) -> None:
        """Per key: tokens increase, no stale write accepted (``Trace.check_fencing``)."""
        for trace in self.traces.values():
            trace.check_fencing()

    def quiet_since(self) -> float:
        """When the last fault or membership change of the schedule was over."""
        ends = [0.0]
        for fault in self.schedule.faults:
            ends.append(fault.end if not isinstance(fault, Crash) else fault.at)
            settled = getattr(fault, "settled", None)
            if isinstance(settled, float):
                ends.append(settled)
        ends.extend(c.start for c in self.schedule.candidates)
        return max(ends)

    def live_at(self, time: float) -> list[str]:
        """The candidates that are members at *time* by the schedule."""
        live = []
        for i, cand in enumerate(self.schedule.candidates):
            if cand.start > time:
                continue
            gone = False
            for seq, fault in enumerate(self.schedule.faults):
                if self.targets.get(seq, fault.target) != i:
                    continue
                if isinstance(fault, Crash) and fault.at <= time:
                    gone = True
                if isinstance(fault, Restart) and fault.at <= time < fault.end:
                    gone = True
            if not gone:
                live.append(f"c{i}")
        return live

    def settle_bound(self) -> float:
        """How long after the last change every key must be owned again (crash bound)."""
        t = self.schedule.timing
        return t.ttl + 2 * t.renew_interval

    def check_all_owned(self) -> None:
        """Once the run has been quiet for ``ttl + 2 renew_interval``, every key is
        owned by one live member, and the balance bounds hold.

        Skipped (nothing to check) when the run ends too soon after its last change.
        """
        at = self.quiet_since() + self.settle_bound()
        end = self.schedule.run_until
        if at >= end or not self.live_at(end):
            return
        problems = []
        check = (at + end) / 2
        owners = self.owners_at(check)
        live = self.live_at(check)
        counts = dict.fromkeys(live, 0)
        for key, names in owners.items():
            if len(names) != 1:
                problems.append(f"{key} has owners {names} at {check:.6g}")
                continue
            if names[0] not in counts:
                problems.append(f"{key} is owned by {names[0]}, not a live member")
                continue
            counts[names[0]] += 1
        low, high = balance_bounds(len(self.keys), len(live))
        for name, count in counts.items():
            if not low <= count <= high:
                problems.append(f"{name} owns {count} keys at {check:.6g}, not in "
                                f"[{low}, {high}]")
        if problems:
            raise AssertionError("\n".join(problems))

    def check_movement(self) -> None:
        """For each quiet graceful leave and re-join (a :class:`Restart` with no other
        change within the settle bound of it): the leave moves only the leaver's
        keys and the re-join at most ``1.5 N / (M + 1)``."""
        t = self.schedule.timing
        settle = self.settle_bound()
        others = [(f.at, f.end) for f in self.schedule.faults] + [
            (c.start, c.start) for c in self.schedule.candidates]
        problems = []
        for seq, fault in enumerate(self.schedule.faults):
            if not isinstance(fault, Restart) or fault.duration < settle + t.renew_interval:
                continue
            target = self.targets.get(seq, fault.target)
            if target is None or target < 0:
                continue
            before, after_leave = fault.at - 1e-6, fault.at + settle
            rejoin_settled = fault.end + settle
            if fault.at < settle or rejoin_settled >= self.schedule.run_until:
                continue
            near = [(a, b) for a, b in others if (a, b) != (fault.at, fault.end)
                    and a < rejoin_settled and b > fault.at - settle]
            if near:
                continue
            leaver = f"c{target}"
            old, mid = self.owners_at(before), self.owners_at(after_leave)
            new = self.owners_at(rejoin_settled)
            moved = {k for k in self.keys if old[k] != mid[k]}
            theirs = {k for k in self.keys if old[k] == [leaver]}
            if not moved <= theirs:
                problems.append(f"the leave of {leaver} at {fault.at:.6g} moved "
                                f"{sorted(moved - theirs)} too")
            joined = sum(1 for k in self.keys if mid[k] != new[k])
            bound = join_move_bound(len(self.keys), len(self.live_at(rejoin_settled)))
            if joined > bound:
                problems.append(f"the re-join of {leaver} at {fault.end:.6g} moved {joined} "
                                f"keys (bound {bound:.6g})")
        if problems:
            raise AssertionError("\n".join(problems))

    def check_all(self) -> None:
        """Every check above."""
        self.check_clean()
        self.check_one_owner()
        self.check_fencing()
        self.check_all_owned()
        self.check_movement()


async def run_sharded_schedule(schedule: Schedule, keys: Sequence[str], *,
                               group: str = DEFAULT_GROUP,
                               call_timeout: float | None = None) -> ShardedTrace:
    """Play *schedule* with every candidate running ``run_sharded(group, keys)``.

    Like :func:`run_schedule` (virtual time, a fresh memory store, one
    :class:`FaultyBackend` per candidate, the faults on their timeline), but each
    candidate's job for each key writes to that key's :class:`FencedResource`
    every ``write_every`` seconds.
    """
    clock = trio.lowlevel.current_clock()
    if not isinstance(clock, trio.testing.MockClock):
        raise RuntimeError("run_sharded_schedule needs virtual time (see run_schedule)")
    seed_scheduler(schedule.seed)
    t0 = trio.current_time()
    baseline = set(all_tasks())
    members = Trace(schedule, member_key(group, 0))
    with _logging_into(members, t0), trio.CancelScope() as guard_scope:
        guard = LivelockGuard(guard_scope, members.errors)
        trio.lowlevel.add_instrument(guard)
        try:
            async with trio.open_nursery() as in_flight:
                sim = _ShardedSimulation(schedule, group, keys, in_flight, t0, call_timeout)
                async with contextlib.AsyncExitStack() as hosts:
                    for backend in sim.backends:
                        await hosts.enter_async_context(services_for(backend).hosted())
                    await _play(sim, schedule, t0)
                members.shutdown_took = trio.current_time() - sim.shutdown_started
        finally:
            trio.lowlevel.remove_instrument(guard)
    members.leftover_tasks = leftover_tasks(baseline)
    members.errors.extend(sim.errors)
    members.end = schedule.run_until
    writes = sorted((w for b in sim.backends for w in b.writes), key=lambda w: w.time)
    shifted = [replace(w, time=w.time - t0, sent=w.sent - t0) for w in writes]
    members.store_writes = [w for w in shifted if w.key.startswith(group + "/member/")]
    members.faults = sim.spans()
    members.crashed = dict(sim.crashed)
    result = ShardedTrace(schedule, group, list(keys), members=members,
                          targets=dict(sim.resolved))
    dropped = [replace(d, time=d.time - t0, issued=d.issued - t0)
               for b in sim.backends for d in b.dropped]
    for key in keys:
        terms = sim.key_terms[key]
        for term in terms:
            if term.end is None or term.end > schedule.run_until:
                term.end = min(schedule.run_until, math.inf if term.end is None else term.end)
        trace = Trace(schedule, key, terms=terms,
                      fenced=[replace(w, time=w.time - t0,
                                      issued=None if w.issued is None else w.issued - t0)
                              for w in sim.resources[key].writes],
                      issued=[replace(w, time=w.time - t0) for w in sim.key_issued[key]],
                      store_writes=[w for w in shifted if w.key == key],
                      dropped=[d for d in dropped
                               if d.args and getattr(d.fn, "__self__", None)
                               is sim.resources[key]],
                      faults=members.faults, crashed=members.crashed, end=schedule.run_until)
        result.traces[key] = trace
    return result


def simulate_sharded(schedule: Schedule, keys: Sequence[str], *,
                     group: str = DEFAULT_GROUP,
                     call_timeout: float | None = None) -> ShardedTrace:
    """:func:`run_sharded_schedule` in a fresh ``trio.run`` on an autojump clock."""
    return trio.run(functools.partial(run_sharded_schedule, schedule, keys, group=group,
                                      call_timeout=call_timeout),
                    clock=trio.testing.MockClock(autojump_threshold=0))
