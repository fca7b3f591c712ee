"""trio-noleader: leader election and distributed leases for Trio.

Exactly one of your replicas runs the work; the others wait and take over in
milliseconds when it leaves, or one lease TTL after it crashes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import abc as abc
from ._election import Leadership as Leadership
from ._election import current_leadership as current_leadership
from ._election import hold_leadership as hold_leadership
from ._exceptions import BackendUnavailable as BackendUnavailable
from ._exceptions import KeyExists as KeyExists
from ._exceptions import LeadershipLost as LeadershipLost
from ._exceptions import NoLeaderError as NoLeaderError
from ._exceptions import RevisionMismatch as RevisionMismatch
from ._helpers import current_leader as current_leader
from ._helpers import run_as_leader as run_as_leader
from ._helpers import watch_leader as watch_leader
from ._memory import MemoryBackend as MemoryBackend
from ._open import open_backend as open_backend
from ._sqlite import open_sqlite_backend as open_sqlite_backend
from ._types import Entry as Entry
from ._types import LeaderInfo as LeaderInfo
from ._version import __version__ as __version__

if TYPE_CHECKING:
    from ._nats import open_nats_backend as open_nats_backend


def __getattr__(name: str) -> Any:
    # nats-py and trio-asyncio are an optional extra: import them on first use.
    if name == "open_nats_backend":
        from ._nats import open_nats_backend

        open_nats_backend.__module__ = __name__
        return open_nats_backend
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


for _obj in (Leadership, current_leadership, hold_leadership, BackendUnavailable, KeyExists,
             LeadershipLost, NoLeaderError, RevisionMismatch, current_leader, run_as_leader,
             watch_leader, MemoryBackend, open_backend, open_sqlite_backend, Entry, LeaderInfo):
    _obj.__module__ = __name__
del _obj
