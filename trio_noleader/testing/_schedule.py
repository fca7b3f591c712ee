"""Schedules: plain, printable, replayable descriptions of a simulated election.

A :class:`Schedule` says how many candidates there are and how each behaves, the
lease timing, and a timeline of faults. Its ``repr`` is valid Python once the
names are imported from :mod:`trio_noleader.testing`, so a counterexample that
Hypothesis prints can be pasted into a test and replayed.
All times are virtual seconds from the start of the run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .._types import check_seconds, check_timing

__all__ = [
    "LEADER",
    "Candidate",
    "Crash",
    "Fault",
    "Latency",
    "Lossy",
    "Outage",
    "Partition",
    "Pause",
    "Restart",
    "Schedule",
    "Slow",
    "Timing",
]

#: A fault's ``candidate`` may be ``LEADER`` (-1): whoever leads when the fault
#: begins (the candidate whose body most recently started and is still running),
#: resolved during the run; if nobody leads then, the fault does nothing.
LEADER = -1

Mode = Literal["hold", "run", "poll"]
MODES: tuple[Mode, ...] = ("hold", "run", "poll")


@dataclass(frozen=True)
class Timing:
    """The lease timing every candidate uses (the rules of :func:`hold_leadership`).

    Attributes:
        ttl (float): Lease time to live.
        renew_interval (float): Seconds between renewals.
        guard (float): Safety margin subtracted from the local deadline.
    """

    ttl: float = 15.0
    renew_interval: float = 5.0
    guard: float = 1.5

    def __post_init__(self) -> None:
        check_timing(self.ttl, self.renew_interval, self.guard)


@dataclass(frozen=True)
class Latency:
    """Per-leg latency of a candidate's link to the store: uniform in [low, high]."""

    low: float = 0.0
    high: float = 0.0

    def __post_init__(self) -> None:
        check_seconds("low", self.low, allow_zero=True)
        check_seconds("high", self.high, allow_zero=True)
        if self.high < self.low:
            raise ValueError(f"latency high={self.high!r} is below low={self.low!r}")


@dataclass(frozen=True)
class Candidate:
    """One simulated replica.

    Attributes:
        mode (str): How it campaigns: ``"hold"`` loops over
            ``async with hold_leadership(...)``, re-entering after each
            ``LeadershipLost``; ``"run"`` calls ``run_as_leader``; ``"poll"`` loops
            over ``hold_leadership(..., wait=False)``, sleeping ``renew_interval / 2``
            after each ``trio.WouldBlock``.
        start (float): When it starts campaigning.
        latency (Latency): Its link's latency to the store.
        drift (float): How much faster the store's clock runs than this
            candidate's (see :class:`FaultyBackend`); the library's guarantee needs
            ``drift < guard / ttl``.
        reads_overtake (bool): Its reads reach the store ahead of its writes still
            on their way (see :class:`FaultyBackend`), as on NATS.
    """

    mode: Mode = "hold"
    start: float = 0.0
    latency: Latency = Latency()
    drift: float = 0.0
    reads_overtake: bool = False

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode={self.mode!r}: must be one of {MODES}")
        check_seconds("start", self.start, allow_zero=True)
        if not 0.0 <= self.drift < 1.0:
            raise ValueError(f"drift={self.drift!r}: must be >= 0 and < 1")


class Fault:
    """Base class of the timeline's faults. Each has ``at`` and ``end`` (seconds)."""

    __slots__ = ()

    at: float

    @property
    def end(self) -> float:
        """When the fault stops (its start for a crash, which never stops)."""
        return self.at + getattr(self, "duration", 0.0)

    @property
    def target(self) -> int | None:
        """The candidate it hits (:data:`LEADER` for whoever leads when it begins),
        or None for the whole store."""
        candidate: int | None = getattr(self, "candidate", None)
        return candidate

    def __post_init__(self) -> None:
        # Every fault dataclass runs this; the subclasses add their own checks.
        check_seconds("at", self.at, allow_zero=True)
        duration = getattr(self, "duration", 0.0)
        check_seconds("duration", duration, allow_zero=True)
        target = self.target
        if target is not None and (isinstance(target, bool) or not isinstance(target, int)
                                   or target < LEADER):
            raise ValueError(f"candidate={target!r}: must be an index >= 0, or LEADER (-1)")


@dataclass(frozen=True)
class Partition(Fault):
    """The candidate cannot reach the store (requests and replies lost, watches break)."""

    candidate: int
    at: float
    duration: float


@dataclass(frozen=True)
class Outage(Fault):
    """The whole store is unreachable for everyone (a :class:`StoreSwitch` is cut)."""

    at: float
    duration: float


@dataclass(frozen=True)
class Pause(Fault):
    """The candidate's process is paused (GC, SIGSTOP): see :class:`FaultyBackend`."""

    candidate: int
    at: float
    duration: float


@dataclass(frozen=True)
class Crash(Fault):
    """The candidate vanishes for good without releasing its lease."""

    candidate: int
    at: float


@dataclass(frozen=True)
class Restart(Fault):
    """The candidate stops gracefully (its tasks are cancelled, so a leader releases
    at once), stays down for ``duration``, then campaigns again."""

    candidate: int
    at: float
    duration: float


@dataclass(frozen=True)
class Lossy(Fault):
    """For a while, each request of the candidate is lost with probability
    ``requests`` before reaching the store, and each write that is applied has its
    reply lost with probability ``replies`` (the ambiguous case)."""

    candidate: int
    at: float
    duration: float
    requests: float = 0.0
    replies: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("requests", "replies"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name}={value!r}: must be a probability in [0, 1]")


@dataclass(frozen=True)
class Slow(Fault):
    """For a while, each leg of the candidate's calls takes ``latency`` seconds.

    Requests sent during the window may outlive their caller's timeout and land
    late (the runner keeps them in flight); their effects can last until
    ``end + latency``.
    """

    candidate: int
    at: float
    duration: float
    latency: float

    def __post_init__(self) -> None:
        super().__post_init__()
        check_seconds("latency", self.latency, allow_zero=True)

    @property
    def settled(self) -> float:
        """When the last request sent during the window has arrived."""
        return self.end + self.latency


@dataclass(frozen=True)
class Schedule:
    """A whole simulated run: candidates, lease timing and a timeline of faults.

    Attributes:
        timing (Timing): The lease timing.
        candidates (tuple[Candidate, ...]): The replicas, named ``c0``, ``c1``, ...
        faults (tuple[Fault, ...]): The fault timeline (any order).
        write_every (float): Seconds between the default leader body's writes to
            the fenced resource (it also writes once on entry).
        run_until (float): When the run ends: every fault still active ends, then
            every candidate is cancelled (and releases).
        seed (int): Seeds trio's scheduler (which task runs first when several are
            ready at one virtual instant) and each candidate's random draws.
    """

    timing: Timing
    candidates: tuple[Candidate, ...]
    faults: tuple[Fault, ...] = ()
    write_every: float = 1.0
    run_until: float = 60.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.candidates:
            raise ValueError("a schedule needs at least one candidate")
        check_seconds("write_every", self.write_every)
        check_seconds("run_until", self.run_until, allow_zero=True)
        for fault in self.faults:
            if not isinstance(fault, Fault):
                raise TypeError(f"not a fault: {fault!r}")
            target = fault.target
            if target is not None and target >= len(self.candidates):
                raise ValueError(f"{fault!r} names candidate {target}, but there are "
                                 f"only {len(self.candidates)}")

    @property
    def names(self) -> list[str]:
        """The candidates' names: ``c0``, ``c1``, ..."""
        return [f"c{i}" for i in range(len(self.candidates))]

    def describe(self) -> str:
        """A multi-line, human-readable rendering (the ``repr`` is the replayable one)."""
        t = self.timing
        lines = [f"ttl={t.ttl} renew_interval={t.renew_interval} guard={t.guard} "
                 f"write_every={self.write_every} run_until={self.run_until} seed={self.seed}"]
        for name, c in zip(self.names, self.candidates, strict=True):
            lines.append(f"  {name}: {c.mode} from {c.start}, latency {c.latency.low}-"
                         f"{c.latency.high}, drift {c.drift}")
        for fault in sorted(self.faults, key=lambda f: f.at):
            lines.append(f"  {fault!r}")
        if any(f.target == LEADER for f in self.faults):
            lines.append("  (candidate=-1: whoever leads when the fault begins)")
        return "\n".join(lines)
