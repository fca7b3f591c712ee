"""Tools to test election churn: fault injection, a fenced resource, simulation.

Public API for users who want to property-test their own leader-only code in
virtual time. See the guide docs/howto/testing.rst.

- :class:`FaultyBackend` wraps a store for one candidate and injects faults:
  latency, lost requests, lost replies, partitions, process pauses, crashes;
  :class:`StoreSwitch` takes the whole store away from everyone.
- :class:`FencedResource` is a downstream system that rejects stale tokens.
- :class:`Schedule` (with :class:`Timing`, :class:`Candidate`, the faults
  :class:`Partition`, :class:`Outage`, :class:`Pause`, :class:`Crash`,
  :class:`Restart`, :class:`Lossy`, :class:`Slow`) describes a run; :func:`schedules` and
  :func:`timings` are Hypothesis strategies for them, and
  :func:`simulation_settings` (profile :data:`HYPOTHESIS_PROFILE`) the settings
  for tests that simulate: no deadline, ``too_slow`` suppressed (importing these
  needs ``hypothesis``).
- :func:`run_schedule` / :func:`simulate` play a schedule in virtual time and
  return a :class:`Trace`, whose ``check_*`` methods assert the properties;
  :func:`run_sharded_schedule` / :func:`simulate_sharded` play one with every
  candidate running ``run_sharded`` and return a :class:`ShardedTrace`.
- :class:`FaultProxy` is a real TCP proxy for tests against real servers: one-way
  latency per direction, a black hole, resets and refused connections, on demand.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .._util import fixup_module_metadata
from ._faults import Call as Call
from ._faults import DroppedEffect as DroppedEffect
from ._faults import FaultyBackend as FaultyBackend
from ._faults import StoreSwitch as StoreSwitch
from ._faults import StoreWrite as StoreWrite
from ._fence import FencedResource as FencedResource
from ._fence import FencedWrite as FencedWrite
from ._proxy import FaultProxy as FaultProxy
from ._proxy import ProxyStatistics as ProxyStatistics
from ._runner import DEFAULT_KEY as DEFAULT_KEY
from ._runner import run_schedule as run_schedule
from ._runner import simulate as simulate
from ._schedule import LEADER as LEADER
from ._schedule import Candidate as Candidate
from ._schedule import Crash as Crash
from ._schedule import Fault as Fault
from ._schedule import Latency as Latency
from ._schedule import Lossy as Lossy
from ._schedule import Outage as Outage
from ._schedule import Partition as Partition
from ._schedule import Pause as Pause
from ._schedule import Restart as Restart
from ._schedule import Schedule as Schedule
from ._schedule import Slow as Slow
from ._schedule import Timing as Timing
from ._servers import NatsServer as NatsServer
from ._servers import PostgresServer as PostgresServer
from ._sharded import ShardedTrace as ShardedTrace
from ._sharded import run_sharded_schedule as run_sharded_schedule
from ._sharded import simulate_sharded as simulate_sharded
from ._simulation import LeaderContext as LeaderContext
from ._simulation import default_body as default_body
from ._trace import FaultSpan as FaultSpan
from ._trace import IssuedWrite as IssuedWrite
from ._trace import Term as Term
from ._trace import Trace as Trace

if TYPE_CHECKING:
    from ._strategies import FAULT_KINDS as FAULT_KINDS
    from ._strategies import HYPOTHESIS_PROFILE as HYPOTHESIS_PROFILE
    from ._strategies import LOSS_PROBABILITIES as LOSS_PROBABILITIES
    from ._strategies import schedules as schedules
    from ._strategies import simulation_settings as simulation_settings
    from ._strategies import timings as timings

_STRATEGIES = ("FAULT_KINDS", "HYPOTHESIS_PROFILE", "LOSS_PROBABILITIES", "schedules",
               "simulation_settings", "timings")

__all__ = [
    "DEFAULT_KEY",
    "FAULT_KINDS",
    "HYPOTHESIS_PROFILE",
    "LEADER",
    "LOSS_PROBABILITIES",
    "Call",
    "Candidate",
    "Crash",
    "DroppedEffect",
    "Fault",
    "FaultProxy",
    "FaultSpan",
    "FaultyBackend",
    "FencedResource",
    "FencedWrite",
    "IssuedWrite",
    "Latency",
    "LeaderContext",
    "Lossy",
    "NatsServer",
    "Outage",
    "Partition",
    "Pause",
    "PostgresServer",
    "ProxyStatistics",
    "Restart",
    "Schedule",
    "ShardedTrace",
    "Slow",
    "StoreSwitch",
    "StoreWrite",
    "Term",
    "Timing",
    "Trace",
    "default_body",
    "run_schedule",
    "run_sharded_schedule",
    "schedules",
    "simulate",
    "simulate_sharded",
    "simulation_settings",
    "timings",
]


def __getattr__(name: str) -> Any:
    # Hypothesis is needed only by the strategies: import it on first use.
    if name not in _STRATEGIES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from . import _strategies

    value = getattr(_strategies, name)
    fixup_module_metadata(__name__, {name: value}, [name])
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_STRATEGIES))


fixup_module_metadata(__name__, globals(), __all__)
