"""trio_noleader.metrics: the exposition, read back with prometheus_client's own parser."""

from __future__ import annotations

import functools
from collections.abc import Iterator

import pytest
import trio
import trio.testing
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from trio_noleader import (
    LeadershipLost,
    MemoryBackend,
    ShardGroup,
    hold_leadership,
    metrics,
    run_sharded,
)
from trio_noleader._observe import observers
from trio_noleader.testing import FaultyBackend

KEY = "jobs/metered"
TTL = 9.0


@pytest.fixture
def registry() -> Iterator[CollectorRegistry]:
    registry = CollectorRegistry()
    metrics.enable(registry)
    try:
        yield registry
    finally:
        metrics.disable(registry)


def samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the exposition: (name, sorted labels) -> value."""
    text = generate_latest(registry).decode()
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return samples(registry).get((name, tuple(sorted({"key": KEY, **labels}.items()))))


async def test_a_term_in_metrics(autojump_clock: trio.testing.MockClock,
                                 registry: CollectorRegistry) -> None:
    assert value(registry, "noleader_is_leader") is None  # no campaign yet
    store = FaultyBackend(MemoryBackend(), latency=0.005)
    async with hold_leadership(KEY, backend=store, ttl=TTL) as lead:
        assert value(registry, "noleader_is_leader") == 1
        assert value(registry, "noleader_terms_total") == 1
        assert value(registry, "noleader_campaign_seconds_count") == 1
        assert value(registry, "noleader_campaign_seconds_sum") == pytest.approx(0.01)
        assert value(registry, "noleader_renewals_total", outcome="ok") == 0
        remaining = value(registry, "noleader_lease_remaining_seconds")
        assert remaining is not None
        assert 0 < remaining <= lead.deadline - trio.current_time()
        await trio.sleep(3 * 3.0 + 0.5)
        assert value(registry, "noleader_renewals_total", outcome="ok") == 3
        assert value(registry, "noleader_renew_seconds_count") == 3
        assert value(registry, "noleader_renew_seconds_sum") == pytest.approx(0.03)
        assert value(registry, "noleader_renew_seconds_bucket", le="0.025") == 3
        assert value(registry, "noleader_renew_seconds_bucket", le="0.005") == 0
        store.partition()
        await trio.sleep(3.0 + 0.5)
        failed = value(registry, "noleader_renewals_total", outcome="failed")
        assert failed is not None
        assert failed >= 1
        store.heal()
    # Released: 0, and nothing counted as a loss.
    assert value(registry, "noleader_is_leader") == 0
    assert value(registry, "noleader_lease_remaining_seconds") == 0
    assert not any(name == "noleader_losses_total" for name, _ in samples(registry))
    # A second term, then a loss by deadline: 0 -> 1 -> 0 and one loss.
    with pytest.raises(LeadershipLost):
        async with hold_leadership(KEY, backend=store, ttl=TTL):
            assert value(registry, "noleader_is_leader") == 1
            assert value(registry, "noleader_terms_total") == 2
            store.partition()
            await trio.sleep_forever()
    assert value(registry, "noleader_is_leader") == 0
    assert value(registry, "noleader_losses_total", reason="deadline") == 1
    assert value(registry, "noleader_terms_total") == 2


async def test_losses_by_reason_and_two_keys(autojump_clock: trio.testing.MockClock,
                                             registry: CollectorRegistry) -> None:
    store = MemoryBackend()
    with pytest.raises(LeadershipLost):
        async with hold_leadership(KEY, backend=store, ttl=TTL), \
                hold_leadership("other", backend=store, ttl=TTL):
            assert value(registry, "noleader_is_leader") == 1
            assert samples(registry)[("noleader_is_leader", (("key", "other"),))] == 1
            entry = await store.get(KEY)
            assert entry is not None
            await store.delete(KEY, revision=entry.revision)
            await trio.sleep_forever()
    assert value(registry, "noleader_losses_total", reason="expired") == 1
    assert samples(registry)[("noleader_is_leader", (("key", "other"),))] == 0
    assert value(registry, "noleader_is_leader") == 0


async def test_enable_is_idempotent_and_disable_undoes_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    registry = CollectorRegistry()
    before = len(observers)
    first = metrics.enable(registry)
    assert metrics.enable(registry) is first
    assert len(observers) == before + 1
    metrics.disable(registry)
    assert len(observers) == before
    assert generate_latest(registry) == b""
    metrics.disable(registry)  # again: nothing to do
    with pytest.raises(TypeError, match="registry must be a prometheus_client"):
        metrics.enable("default")  # type: ignore[arg-type]


def test_default_registry() -> None:
    import prometheus_client

    try:
        made = metrics.enable()
        assert made.registry is prometheus_client.REGISTRY
        assert metrics.enable(prometheus_client.REGISTRY) is made
    finally:
        metrics.disable()


async def test_enabled_in_the_middle_of_a_term(autojump_clock: trio.testing.MockClock) -> None:
    registry = CollectorRegistry()
    try:
        async with hold_leadership(KEY, backend=MemoryBackend(), ttl=TTL):
            metrics.enable(registry)
            assert value(registry, "noleader_is_leader") is None
            await trio.sleep(3.5)  # the first renewal is the first news
            assert value(registry, "noleader_is_leader") == 1
            assert value(registry, "noleader_renewals_total", outcome="ok") == 1
            assert value(registry, "noleader_terms_total") == 0
        assert value(registry, "noleader_is_leader") == 0
    finally:
        metrics.disable(registry)


async def test_shards_owned_per_group(autojump_clock: trio.testing.MockClock,
                                      registry: CollectorRegistry) -> None:
    def owned(group: str) -> float | None:
        return samples(registry).get(("noleader_shards_owned", (("group", group),)))

    async def job(key: str) -> None:
        await trio.sleep_forever()

    async def settled(handle: ShardGroup, count: int) -> None:
        for _ in range(200):
            if len(handle.owned) == count:
                return
            await trio.sleep(0.1)
        pytest.fail(f"owned {sorted(handle.owned)}, not {count} keys")

    assert owned("cron") is None  # no group runs
    async with MemoryBackend() as backend, trio.open_nursery() as nursery:
        keys = [f"cron/job-{n}" for n in range(6)]
        handle = await nursery.start(functools.partial(
            run_sharded, "cron", keys, job, backend=backend, ttl=TTL))
        await settled(handle, 6)
        assert owned("cron") == 6
        handle.set_keys(keys[:4])
        await settled(handle, 4)
        assert owned("cron") == 4
        nursery.cancel_scope.cancel()
    assert owned("cron") is None  # the group ended
