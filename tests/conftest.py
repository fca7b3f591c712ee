from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import AsyncIterator, Iterator

import pytest
import spec_memory
import trio.testing
from harness import BackendSpec
from hypothesis import HealthCheck, settings

from trio_noleader.abc import Backend

settings.register_profile(
    "quick", max_examples=60, deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "thorough", max_examples=10_000, deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "quick"))

with contextlib.suppress(ImportError):
    # Session fixtures that start a real nats-server (see nats_fixture.py).
    from nats_fixture import *  # noqa: F403
with contextlib.suppress(ImportError):
    # A session fixture that starts a real PostgreSQL (see postgres_fixture.py).
    from postgres_fixture import *  # noqa: F403

SPECS: list[BackendSpec] = [spec_memory.SPEC]
try:
    import spec_sqlite

    SPECS.append(spec_sqlite.SPEC)
except ImportError:  # the SQLite spec lands with the SQLite backend
    pass
try:
    import spec_nats

    SPECS.append(spec_nats.SPEC)
except ImportError:  # the NATS spec lands with the NATS backend
    pass
try:
    import spec_postgres

    SPECS.append(spec_postgres.SPEC)
except ImportError:  # without the postgres extra
    pass

_MARKS = {"postgres": [pytest.mark.postgres]}


@pytest.fixture(params=[pytest.param(spec, id=spec.name, marks=_MARKS.get(spec.name, []))
                        for spec in SPECS])
def spec(request: pytest.FixtureRequest) -> BackendSpec:
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
