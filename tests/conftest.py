from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Iterator

import pytest
import trio.testing
from hypothesis import HealthCheck, settings

from trio_noleader.abc import Backend

from .backends import BACKENDS
from .harness import BackendSpec
from .nats_fixture import (
    nats_url,  # noqa: F401  (the session's nats-server)
    require_nats_extra,
)
from .postgres_fixture import (
    postgres_url,  # noqa: F401  (the session's PostgreSQL)
    require_postgres_extra,
)

settings.register_profile(
    "quick", max_examples=60, deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "thorough", max_examples=10_000, deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "quick"))


def pytest_runtest_setup(item: pytest.Item) -> None:
    # Before any fixture: a skip raised inside trio.run (an async fixture that asks
    # for nats_url) would lose its reason.
    if item.get_closest_marker("nats") is not None:
        require_nats_extra()
    if item.get_closest_marker("postgres") is not None:
        require_postgres_extra()


@pytest.fixture(params=BACKENDS)
def spec(request: pytest.FixtureRequest) -> BackendSpec:
    """The backend under test: each test that takes it runs once per backend in
    tests/backends.py, with that backend's marks."""
    result: BackendSpec = request.param
    return result


@pytest.fixture
def clock(spec: BackendSpec) -> trio.testing.MockClock | None:
    """Virtual time where the backend allows it. Suite tests must take this argument:
    pytest-trio picks the clock from the test's own arguments."""
    return trio.testing.MockClock(autojump_threshold=0) if spec.virtual_time else None


@pytest.fixture
async def backend(
    spec: BackendSpec, clock: trio.testing.MockClock | None, request: pytest.FixtureRequest
) -> AsyncIterator[Backend]:
    async with spec.open(request) as store:
        yield store


@pytest.fixture
def quiet_core_logging() -> Iterator[None]:
    """Only errors from the library: simulations log thousands of retries and losses,
    and pytest would keep every record."""
    logger = logging.getLogger("trio_noleader")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)
