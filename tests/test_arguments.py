"""Bad input gets a clear error before any I/O, naming the value and the rule."""

from __future__ import annotations

import math
from typing import Any

import pytest
import trio

from trio_noleader import (
    MemoryBackend,
    current_leader,
    hold_leadership,
    open_backend,
    run_as_leader,
    watch_leader,
)
from trio_noleader.testing import FaultyBackend

BAD_KEYS: list[tuple[Any, type[Exception], str]] = [
    ("", ValueError, "invalid key ''"),
    ("a b", ValueError, "invalid key 'a b'"),
    (".hidden", ValueError, "not start or end with '.'"),
    ("trailing.", ValueError, "not start or end with '.'"),
    ("jobs.*", ValueError, "invalid key 'jobs.*'"),
    ("jobs.>", ValueError, "invalid key 'jobs.>'"),
    ("clé", ValueError, "invalid key 'clé'"),
    ("x\n", ValueError, "invalid key"),
    ("k" * 1_000_000, ValueError, "at most 1024 characters"),
    (None, TypeError, "key must be a str, got NoneType"),
    (b"bytes", TypeError, "key must be a str, got bytes"),
    (42, TypeError, "key must be a str, got int"),
]

BAD_TIMINGS: list[tuple[dict[str, Any], type[Exception], str]] = [
    ({"ttl": 0}, ValueError, "ttl=0: must be a finite number of seconds > 0"),
    ({"ttl": -1}, ValueError, "ttl=-1: must be a finite number of seconds > 0"),
    ({"ttl": math.nan}, ValueError, "ttl=nan: must be a finite number"),
    ({"ttl": math.inf}, ValueError, "ttl=inf: must be a finite number"),
    ({"ttl": "15"}, TypeError, "ttl must be a number of seconds, got str"),
    ({"ttl": True}, TypeError, "ttl must be a number of seconds, got bool"),
    ({"ttl": None}, TypeError, "ttl must be a number of seconds, got NoneType"),
    ({"ttl": 10, "renew_interval": 0}, ValueError,
     "renew_interval=0: must be a finite number of seconds > 0"),
    ({"ttl": 10, "renew_interval": 10}, ValueError, "renew_interval must be < ttl"),
    ({"ttl": 10, "renew_interval": 12}, ValueError, "renew_interval must be < ttl"),
    ({"ttl": 10, "renew_interval": -2}, ValueError, "renew_interval=-2: must be"),
    ({"ttl": 10, "guard": -1}, ValueError, "guard=-1: must be a finite number of seconds >= 0"),
    ({"ttl": 10, "renew_interval": 5, "guard": 5}, ValueError,
     "guard must be < ttl - renew_interval"),
    ({"ttl": 10, "guard": math.nan}, ValueError, "guard=nan"),
    ({"wait": "no"}, TypeError, "wait must be a bool, got str"),
    ({"backend": "memory://"}, TypeError, "backend must be a trio_noleader.abc.Backend"),
]


@pytest.mark.parametrize(("key", "error", "message"), BAD_KEYS)
async def test_bad_key(key: Any, error: type[Exception], message: str) -> None:
    store = FaultyBackend(MemoryBackend())
    with pytest.raises(error, match=_literal(message)):
        hold_leadership(key, backend=store)
    with pytest.raises(error, match=_literal(message)):
        await current_leader(key, backend=store)
    with pytest.raises(error, match=_literal(message)):
        watch_leader(key, backend=store)
    with pytest.raises(error, match=_literal(message)):
        await run_as_leader(key, trio.sleep, 0, backend=store)
    assert store.calls == []  # no I/O at all


@pytest.mark.parametrize(("options", "error", "message"), BAD_TIMINGS)
async def test_bad_timing(options: dict[str, Any], error: type[Exception], message: str) -> None:
    store = FaultyBackend(MemoryBackend())
    options = {"backend": store, **options}
    with pytest.raises(error, match=_literal(message)):
        hold_leadership("k", **options)
    assert store.calls == []


async def test_good_edges_are_accepted() -> None:
    store = MemoryBackend()
    for key in ("a", "A-b_c/d=e.f", "x" * 1024, "0"):
        async with hold_leadership(key, backend=store, ttl=1, guard=0, wait=False) as lead:
            assert lead.key == key


@pytest.mark.parametrize(
    ("url", "error", "message"),
    [
        ("redis://localhost", ValueError, "unknown backend URL 'redis://localhost'"),
        ("", ValueError, "unknown backend URL ''"),
        ("nats://[::1", ValueError, "malformed backend URL"),
        ("redis://user:hunter2@host/", ValueError, "redis://user:\\*\\*\\*@host/"),
        (None, TypeError, "url must be a str"),
        ("redis://" + "h" * 1_000_000, ValueError, "unknown backend URL 'redis://hhh"),
    ],
)
async def test_bad_url(url: Any, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message) as info:
        async with open_backend(url):
            pass  # pragma: no cover
    assert "hunter2" not in str(info.value)
    assert len(str(info.value)) < 500


def _literal(text: str) -> str:
    import re

    return re.escape(text)
