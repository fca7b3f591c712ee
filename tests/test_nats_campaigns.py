"""Campaigns on a real nats-server: one round trip per create, no leaked lease."""

from __future__ import annotations

import logging
import random
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio

from trio_noleader import NatsBackend, current_leader, hold_leadership, open_nats_backend
from trio_noleader._types import max_round_trip

pytestmark = pytest.mark.nats

KEY = "jobs/campaign"
TTL = 2


@asynccontextmanager
async def two_backends(nats_url: str) -> AsyncIterator[tuple[NatsBackend, NatsBackend]]:
    """Two connections (two "processes") on one fresh in-memory bucket."""
    bucket = f"camp_{uuid.uuid4().hex[:12]}"
    async with open_nats_backend(nats_url, bucket=bucket, storage="memory",
                                 new_store_grace=False) as first, \
            open_nats_backend(nats_url, bucket=bucket, new_store_grace=False) as second:
        yield first, second


def count_calls(backend: NatsBackend, name: str) -> list[str]:
    """Record each call of the backend's asyncio-side helper *name* (on this instance)."""
    seen: list[str] = []
    original: Callable[..., Awaitable[Any]] = getattr(backend, name)

    async def counted(*args: Any, **kwargs: Any) -> Any:
        seen.append(name)
        return await original(*args, **kwargs)

    setattr(backend, name, counted)
    return seen


async def elected_on(backend: NatsBackend, ready: trio.Event, done: trio.Event) -> None:
    async with hold_leadership(KEY, backend=backend, ttl=TTL):
        ready.set()
        await done.wait()


@pytest.mark.parametrize("vacated_by", ["release", "expiry"])
async def test_a_create_after_a_release_or_an_expiry_is_one_publish(
    nats_url: str, vacated_by: str,
) -> None:
    async with two_backends(nats_url) as (first, second), trio.open_nursery() as nursery:
        if vacated_by == "release":
            leader_ready, leader_done = trio.Event(), trio.Event()
            nursery.start_soon(elected_on, first, leader_ready, leader_done)
            await leader_ready.wait()
        else:
            # A lease nobody renews: the server's expiry marker vacates the key.
            await first.create(KEY, uuid.uuid4().bytes, ttl=1)
        elected, done = trio.Event(), trio.Event()
        nursery.start_soon(elected_on, second, elected, done)
        # Let the candidate try once, fail, and settle on its watch.
        assert await current_leader(KEY, backend=second) is not None
        await trio.sleep(0.3)
        assert not elected.is_set()
        publishes = count_calls(second, "_aio_publish")
        reads = count_calls(second, "_aio_last")
        if vacated_by == "release":
            leader_done.set()
        with trio.fail_after(TTL + 3):
            await elected.wait()
        # The create expected the sequence of the delete or marker that the watch
        # delivered: one publish, no read, no retry.
        assert publishes == ["_aio_publish"]
        assert reads == []
        done.set()


async def test_cancelled_campaigns_leave_no_lease(nats_url: str,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    """Campaigns cancelled at random points, many times: the store is clean after each.

    The create of a cancelled campaign may still be on its way, and a read may not
    see it yet; the janitor watches the key and deletes what lands.
    """
    limit = max_round_trip(TTL, TTL / 3, TTL / 10)
    caplog.set_level(logging.INFO, logger="trio_noleader")
    rng = random.Random(7)
    landed = 0
    async with two_backends(nats_url) as (backend, observer):
        for _ in range(200):
            with trio.move_on_after(rng.uniform(0, 0.004)):
                async with hold_leadership(KEY, backend=backend, ttl=TTL):
                    await trio.sleep(1)  # pragma: no cover - cancelled before
            # Whatever landed must be gone within one create's time limit, never
            # left to run out its ttl.
            with trio.fail_after(limit + 0.5):
                async with observer.watch(KEY) as updates:
                    async for entry in updates:
                        if entry is None:
                            break
                        landed += 1
        assert await backend.keys() == []
    # The test means something only if some campaigns were cancelled with their
    # create on its way (handed to the janitor), and some of those creates landed.
    in_flight = sum("a create of its own was on its way" in r.message for r in caplog.records)
    cleaned = sum("janitor released" in r.message for r in caplog.records)
    assert in_flight > 0, (in_flight, cleaned, landed)
    assert cleaned > 0, (in_flight, cleaned, landed)
