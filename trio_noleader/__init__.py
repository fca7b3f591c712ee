"""trio-noleader: leader election and distributed leases for Trio.

Exactly one of your replicas runs the work; the others wait and take over in
milliseconds when it leaves, or one lease TTL after it crashes. See docs/ (the tutorial first).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import abc as abc
from ._election import Leadership as Leadership
from ._election import LeadershipStatistics as LeadershipStatistics
from ._election import current_leadership as current_leadership
from ._election import hold_leadership as hold_leadership
from ._exceptions import BackendUnavailable as BackendUnavailable
from ._exceptions import KeyExists as KeyExists
from ._exceptions import LeadershipLost as LeadershipLost
from ._exceptions import NewStore as NewStore
from ._exceptions import NoLeaderError as NoLeaderError
from ._exceptions import RevisionMismatch as RevisionMismatch
from ._helpers import current_leader as current_leader
from ._helpers import run_as_leader as run_as_leader
from ._helpers import watch_leader as watch_leader
from ._memory import MemoryBackend as MemoryBackend
from ._observe import LeadershipEvent as LeadershipEvent
from ._observe import add_observer as add_observer
from ._observe import remove_observer as remove_observer
from ._open import open_backend as open_backend
from ._sharded import ShardGroup as ShardGroup
from ._sharded import run_sharded as run_sharded
from ._sqlite import SQLiteBackend as SQLiteBackend
from ._sqlite import open_sqlite_backend as open_sqlite_backend
from ._types import Entry as Entry
from ._types import LeaderInfo as LeaderInfo
from ._util import fixup_module_metadata
from ._version import __version__ as __version__

if TYPE_CHECKING:
    from ._nats import NatsBackend as NatsBackend
    from ._nats_setup import open_nats_backend as open_nats_backend
    from ._postgres import PostgresBackend as PostgresBackend
    from ._postgres_setup import open_postgres_backend as open_postgres_backend

__all__ = [
    "BackendUnavailable",
    "Entry",
    "KeyExists",
    "LeaderInfo",
    "Leadership",
    "LeadershipEvent",
    "LeadershipLost",
    "LeadershipStatistics",
    "MemoryBackend",
    "NatsBackend",
    "NewStore",
    "NoLeaderError",
    "PostgresBackend",
    "RevisionMismatch",
    "SQLiteBackend",
    "ShardGroup",
    "__version__",
    "abc",
    "add_observer",
    "current_leader",
    "current_leadership",
    "hold_leadership",
    "open_backend",
    "open_nats_backend",
    "open_postgres_backend",
    "open_sqlite_backend",
    "remove_observer",
    "run_as_leader",
    "run_sharded",
    "watch_leader",
]

#: Names served on first use, because they need an optional extra (name -> module).
_LAZY = {
    "NatsBackend": "._nats",
    "open_nats_backend": "._nats_setup",
    "PostgresBackend": "._postgres",
    "open_postgres_backend": "._postgres_setup",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(module, __name__), name)
    fixup_module_metadata(__name__, {name: value}, [name])
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


fixup_module_metadata(__name__, globals(), __all__)
