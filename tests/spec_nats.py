"""The NATS backend in the behavioural suite: a fresh bucket per test on a real server."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
import trio_asyncio
from harness import BackendSpec

from trio_noleader import NatsBackend, open_nats_backend
from trio_noleader.abc import Backend


async def delete_bucket(backend: NatsBackend) -> None:
    """Remove the backend's bucket (tests only), shielded and bounded."""
    with trio.move_on_after(5, shield=True):
        await trio_asyncio.aio_as_trio(backend.connection.jetstream().delete_key_value,
                                       loop=backend.loop)(backend.bucket)


@asynccontextmanager
async def open_test_backend(request: pytest.FixtureRequest,
                            bucket: str | None = None) -> AsyncIterator[NatsBackend]:
    """A NATS backend on a new, uniquely named in-memory bucket, deleted afterwards."""
    url: str = request.getfixturevalue("nats_url")
    name = bucket or f"test_{uuid.uuid4().hex[:16]}"
    async with open_nats_backend(url, bucket=name, storage="memory") as backend:
        try:
            yield backend
        finally:
            await delete_bucket(backend)


@asynccontextmanager
async def _open(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    async with open_test_backend(request) as backend:
        yield backend


# Real clock (under MockClock trio-asyncio would hand nats-py virtual time). NATS TTLs
# are whole seconds; the expiry marker comes up to ~0.25 s after the TTL, and the
# server's TTL timer may add to that on a loaded 2-core CI machine.
SPEC = BackendSpec("nats", _open, ttl=2.0, latency=0.25, expiry_slack=1.0,
                   virtual_time=False)
