"""What every scenario gets: the run's settings, where the stores are, progress output."""

from __future__ import annotations

import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["DEBUG_ENV", "Env", "Target", "nats_backend_available"]

#: Set (to anything) to keep the worker logs and have the sharded workers log at
#: DEBUG into them.
DEBUG_ENV = "NOLEADER_BENCH_DEBUG"


def nats_backend_available() -> str | None:
    """None if trio-noleader's NATS backend imports, else why not."""
    try:
        from trio_noleader import _nats  # noqa: F401
    except ImportError as exc:
        return f"the NATS backend does not import ({exc})"
    return None


@dataclass
class Env:
    """The settings of one benchmark run."""

    quick: bool
    tmp: Path
    seed: int
    #: ``nats://127.0.0.1:PORT`` of our own server, or None.
    nats_url: str | None
    #: Why the library's NATS rows are skipped (None: they run).
    nats_skip: str | None
    #: Where py-spy profiles go (None: no profiled runs).
    profile_dir: Path | None = None
    started: float = field(default_factory=time.monotonic)

    @property
    def logdir(self) -> Path:
        path = self.tmp / "logs"
        path.mkdir(parents=True, exist_ok=True)
        return path

    # The benchmarks make fresh stores and never replace one: the first lease of a
    # new store need not wait out a ttl (new_store_grace), which would only delay
    # each scenario's first election.

    def sqlite_url(self, name: str) -> str:
        return f"sqlite://{self.tmp / (name + '.db')}?new_store_grace=off"

    def nats_bucket_url(self, bucket: str) -> str:
        assert self.nats_url is not None
        return f"{self.nats_url}/{bucket}?new_store_grace=off"

    def library_backends(self, scenario: str) -> list[tuple[str, str]]:
        """``(name, url)`` of the stores the library is measured on in *scenario*.

        Each scenario gets a file and a bucket of its own, so that what one leaves
        behind (NATS keeps a closed watcher's consumer for a while, and a stream
        takes at most 1,000 consumers by default since nats-server 2.15) cannot
        slow or fail the next.
        """
        stores = [("sqlite", self.sqlite_url(f"{scenario}-{uuid.uuid4().hex[:8]}"))]
        if self.nats_url is not None and self.nats_skip is None:
            stores.append(("nats", self.nats_bucket_url(f"bench-{scenario}")))
        return stores

    def progress(self, message: str) -> None:
        elapsed = time.monotonic() - self.started
        sys.stderr.write(f"[{elapsed:6.1f} s] {message}\n")
        sys.stderr.flush()


@dataclass(frozen=True)
class Target:
    """One target, and whether this run met it.

    ``met`` is None when there is no verdict: the target was not measured in this
    run (``status`` says why, default "not measured"), or it is a figure to report
    rather than a rule to pass (``status="reported"``).
    """

    name: str
    rule: str
    measured: str
    met: bool | None
    status: str = "not measured"

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "rule": self.rule, "measured": self.measured,
                "met": self.met, "verdict": self.verdict}

    @property
    def verdict(self) -> str:
        if self.met is None:
            return self.status
        return "met" if self.met else "MISSED"
