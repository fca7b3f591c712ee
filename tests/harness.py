"""What the behavioural suite needs to know about each backend it runs against."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass

import pytest

from trio_noleader.abc import Backend


@dataclass(frozen=True)
class BackendSpec:
    """One backend under test.

    Attributes:
        name: The pytest id.
        open: Given the test's ``request``, an async context manager yielding a fresh,
            empty store (no keys left from other tests) that is torn down afterwards.
        ttl: The lease ttl the suite uses on this backend (seconds).
        latency: A generous bound on one store round trip plus the delay before a
            watcher sees a change (seconds). Zero in virtual time.
        expiry_slack: A bound on how late after its ttl the store reports an expired
            lease to watchers (seconds).
        virtual_time: True if the suite may run it under ``MockClock(autojump)``.
    """

    name: str
    open: Callable[[pytest.FixtureRequest], AbstractAsyncContextManager[Backend]]
    ttl: float
    latency: float
    expiry_slack: float
    virtual_time: bool
