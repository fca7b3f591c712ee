"""The simulation engine: candidates on faulty links to one store, faults on a timeline."""

from __future__ import annotations

import functools
import math
import random
import traceback
import uuid
from collections.abc import Awaitable, Callable, Iterator

import trio
import trio.testing

from .._election import Leadership, hold_leadership
from .._exceptions import LeadershipLost
from .._helpers import run_as_leader
from .._memory import MemoryBackend
from .._types import decode_value
from ._faults import FaultyBackend, StoreSwitch
from ._fence import FencedResource
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
from ._trace import FaultSpan, IssuedWrite, Term

__all__ = [
    "BodyFn",
    "LeaderContext",
    "LivelockGuard",
    "Simulation",
    "all_tasks",
    "default_body",
    "seed_scheduler",
]

#: Steps trio may take at one virtual instant before the run counts as a livelock.
LIVELOCK_STEPS = 20_000


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

    def __init__(self, sim: Simulation, index: int, token: int,
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


def seed_scheduler(seed: int) -> None:
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


class LivelockGuard(trio.abc.Instrument):
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


def all_tasks() -> Iterator[trio.lowlevel.Task]:
    root = trio.lowlevel.current_root_task()
    stack = [] if root is None else [root]
    while stack:
        task = stack.pop()
        yield task
        for nursery in task.child_nurseries:
            stack.extend(nursery.child_tasks)


def leftover_tasks(baseline: set[trio.lowlevel.Task]) -> list[str]:
    """The names of the tasks running now that are neither in *baseline* nor our
    own ancestors: what a run left behind."""
    ancestors: set[trio.lowlevel.Task] = set()
    task: trio.lowlevel.Task | None = trio.lowlevel.current_task()
    while task is not None:
        ancestors.add(task)
        parent = task.parent_nursery
        task = None if parent is None else parent.parent_task
    return [t.name for t in all_tasks() if t not in baseline and t not in ancestors]


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


class Simulation:
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
                                    timeout=call_timeout, reads_overtake=spec.reads_overtake)
            self.backends.append(backend)
            self.links.append(_Link(backend, latency))
        self.scopes = [trio.CancelScope() for _ in schedule.candidates]
        self.resume_at = [c.start for c in schedule.candidates]
        self.up = [False for _ in schedule.candidates]
        self.shutting_down = False
        self.shutdown_started = 0.0
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
            # Its scheduled time, not now(): trio's clock less t0 is off by a few
            # ulps, and the checks compare crash times with the schedule's.
            self.crashed[index] = fault.at
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


