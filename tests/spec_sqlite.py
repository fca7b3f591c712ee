"""The SQLite backend in the behavioural suite: a fresh database file per test."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from harness import BackendSpec

from trio_noleader._sqlite import open_sqlite_backend
from trio_noleader.abc import Backend

#: Fast polling keeps the suite quick; the default (25 ms) is meant for production.
POLL_INTERVAL = 0.01


@asynccontextmanager
async def _open(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    tmp_path: Path = request.getfixturevalue("tmp_path")
    async with open_sqlite_backend(tmp_path / "leases.db",
                                   poll_interval=POLL_INTERVAL) as backend:
        yield backend


# Real clock: a short ttl keeps expiry tests quick, with room for a loaded 2-core CI.
SPEC = BackendSpec("sqlite", _open, ttl=1.0, latency=0.25, expiry_slack=0.25,
                   virtual_time=False)
