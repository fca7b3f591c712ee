from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from harness import BackendSpec

from trio_noleader import MemoryBackend
from trio_noleader.abc import Backend


@asynccontextmanager
async def _open(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    async with MemoryBackend() as backend:
        yield backend


SPEC = BackendSpec("memory", _open, ttl=15.0, latency=0.0, expiry_slack=0.0, virtual_time=True)
