"""Bad input on real stores, beyond tests/test_arguments.py and tests/test_nats.py.

tests/test_arguments.py checks the public functions against a memory store with no
I/O at all; tests/test_nats.py the NATS options it needs for its own cases. Here
every case runs against real stores, each backend of tests/backends.py as in the
behavioural suite (the memory store, an SQLite file, a bucket of the session's
nats-server), through the backend protocol as well as the public functions, and
afterwards the store is read back (``spec.read_state``) to show that nothing changed.
Each case gets the documented exception (``ValueError``/``TypeError`` before any
I/O; ``BackendUnavailable`` for a store that cannot be used) with a message that
names the value and the rule, short enough for a log line.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, aclosing, asynccontextmanager
from typing import TYPE_CHECKING, Any

import pytest
import trio

import trio_noleader
from trio_noleader import (
    BackendUnavailable,
    MemoryBackend,
    NatsBackend,
    current_leader,
    hold_leadership,
    open_backend,
    run_as_leader,
    watch_leader,
)
from trio_noleader.abc import Backend
from trio_noleader.testing import FaultyBackend

from .backends import NATS
from .harness import BackendSpec, free_port
from .nats_fixture import aio, delete_bucket, needs_nats_extra, open_test_backend, stream_state
from .test_arguments import BAD_KEYS, BAD_TIMINGS

if TYPE_CHECKING:
    from trio_noleader._nats import NatsBackend

KEY = "jobs/report"
#: Longer messages than this would flood a log line: values are shown cut short.
MESSAGE_LIMIT = 1500

@asynccontextmanager
async def open_store(spec: BackendSpec, request: pytest.FixtureRequest
                     ) -> AsyncIterator[tuple[Backend, Callable[[], Awaitable[object]]]]:
    """A store with one lease in it, and a function that reads the whole store back."""
    async with spec.open(request) as store:
        await store.create(KEY, uuid.uuid4().bytes, ttl=60)

        async def state() -> object:
            return await spec.read_state(store)

        yield store, state


async def calls_with_key(store: Backend, key: Any) -> list[tuple[str, Callable[[], Any]]]:
    """Every entry point that takes a key, each as a thunk to call."""
    async def hold() -> None:
        async with hold_leadership(key, backend=store, ttl=1):
            pytest.fail("elected under a bad key")  # pragma: no cover

    async def watch() -> None:
        async with store.watch(key):
            pytest.fail("watching a bad key")  # pragma: no cover

    async def follow() -> None:
        async with aclosing(watch_leader(key, backend=store)) as updates:
            await anext(updates)  # pragma: no cover

    return [
        ("create", lambda: store.create(key, b"x" * 16, ttl=1)),
        ("update", lambda: store.update(key, b"x" * 16, revision=1, ttl=1)),
        ("get", lambda: store.get(key)),
        ("delete", lambda: store.delete(key, revision=1)),
        ("watch", watch),
        ("hold_leadership", hold),
        ("current_leader", lambda: current_leader(key, backend=store)),
        ("watch_leader", follow),
        ("run_as_leader", lambda: run_as_leader(key, trio.sleep, 0, backend=store, ttl=1)),
    ]


async def expect_refusal(call: Callable[[], Any], error: type[Exception], message: str
                         ) -> Exception:
    """Run *call* (sync or async); it must raise *error* at once, naming *message*."""
    with trio.fail_after(2), pytest.raises(error) as raised:
        result = call()
        if hasattr(result, "__await__"):
            await result
    text = str(raised.value)
    assert message in text, text
    assert len(text) <= MESSAGE_LIMIT, len(text)
    return raised.value


async def enter(manager: AbstractAsyncContextManager[object]) -> None:
    async with manager:
        pytest.fail("entered")  # pragma: no cover


# -- keys --------------------------------------------------------------------------------


@pytest.mark.parametrize(("key", "error", "message"), BAD_KEYS)
async def test_bad_keys_change_nothing_in_the_store(
    spec: BackendSpec, key: Any, error: type[Exception], message: str,
    request: pytest.FixtureRequest,
) -> None:
    async with open_store(spec, request) as (store, state):
        before = await state()
        for name, call in await calls_with_key(store, key):
            try:
                await expect_refusal(call, error, message)
            except BaseException as exc:
                exc.add_note(f"entry point: {name}")
                raise
        assert await state() == before


@pytest.mark.parametrize("key", ["a..b", "jobs...nightly", "x.." + "y", "a." + "." * 500 + "b"])
async def test_keys_with_empty_tokens_are_refused(
    spec: BackendSpec, key: str, request: pytest.FixtureRequest,
) -> None:
    # Regression: [-/_=.a-zA-Z0-9]+ lets "a..b" through, but a NATS subject has no
    # empty token: the server never stores the write, and the campaign used to retry
    # that as a store outage forever. The rule holds on every backend, so that code
    # moves between them unchanged.
    async with open_store(spec, request) as (store, state):
        before = await state()
        for name, call in await calls_with_key(store, key):
            try:
                exc = await expect_refusal(call, ValueError, "or hold '..'")
            except BaseException as raised:
                raised.add_note(f"entry point: {name}")
                raise
            assert repr(key)[:40] in str(exc)
        assert await state() == before


# -- names --------------------------------------------------------------------------------

BAD_NAMES: list[tuple[Any, type[Exception], str]] = [
    ("", ValueError, "invalid name ''"),
    ("web 1", ValueError, "invalid name 'web 1'"),
    ("h\u00f4te:1", ValueError, "invalid name"),
    ("a\nb", ValueError, "invalid name"),
    ("x" * 129, ValueError, "129 characters long"),
    (b"web-1", TypeError, "name must be a str, got bytes"),
    (7, TypeError, "name must be a str, got int"),
]


@pytest.mark.parametrize(("name", "error", "message"), BAD_NAMES)
async def test_bad_names_fail_before_any_io(name: Any, error: type[Exception],
                                            message: str) -> None:
    store = FaultyBackend(MemoryBackend())
    exc = await expect_refusal(lambda: hold_leadership(KEY, backend=store, name=name),
                               error, message)
    assert "A-Z a-z 0-9" in str(exc) or error is TypeError
    await expect_refusal(lambda: run_as_leader(KEY, trio.sleep, 0, backend=store, name=name),
                         error, message)
    assert store.calls == []


# -- timing --------------------------------------------------------------------------------

MORE_BAD_TIMINGS: list[Any] = [
    ({"ttl": 10, "renew_interval": "1"}, TypeError,
     "renew_interval must be a number of seconds, got str"),
    ({"ttl": 10, "guard": "0.1"}, TypeError, "guard must be a number of seconds, got str"),
    ({"ttl": 10, "renew_interval": math.inf}, ValueError, "renew_interval=inf"),
    ({"ttl": 10, "guard": math.inf}, ValueError, "guard=inf"),
    ({"ttl": -math.inf}, ValueError, "ttl=-inf"),
    ({"ttl": 1.0, "renew_interval": 0.5, "guard": 0.5}, ValueError,
     "guard must be < ttl - renew_interval"),
    ({"ttl": 10**400}, ValueError, "ttl=inf: must be a finite number"),
]


@pytest.mark.parametrize(("options", "error", "message"), BAD_TIMINGS + MORE_BAD_TIMINGS)
async def test_bad_timing_everywhere(options: dict[str, Any], error: type[Exception],
                                     message: str) -> None:
    store = FaultyBackend(MemoryBackend())
    options = {"backend": store, **options}
    await expect_refusal(lambda: hold_leadership(KEY, **options), error, message)
    await expect_refusal(lambda: run_as_leader(KEY, trio.sleep, 0, **options), error, message)
    assert store.calls == []


async def test_a_ttl_no_round_trip_fits_in_is_refused() -> None:
    # Regression: check_timing cannot know the store's latency, and a campaign used
    # to acquire, find the lease expired before it could renew, and start again,
    # forever. Now it gives up after a few such leases, naming the ttl.
    store = FaultyBackend(MemoryBackend())
    with trio.move_on_after(1):
        with pytest.raises(ValueError, match="ttl"):
            async with hold_leadership(KEY, backend=store, ttl=1e-6):
                pytest.fail("elected for a microsecond")  # pragma: no cover
        return
    # Here: still campaigning after a second, having written this many times.
    raise AssertionError(f"no error; {len(store.calls)} store calls in 1 s")


@pytest.mark.nats
@pytest.mark.parametrize("ttl", [9 * 10**9, 10**10, 2**62, 2**64 + 1])
async def test_ttls_nats_server_cannot_keep_are_refused(
    ttl: int, request: pytest.FixtureRequest,
) -> None:
    # Regression: nats-server 2.15 drops a message whose Nats-TTL overflows its clock
    # arithmetic (9e9 s and up) at once, so such a lease vanished from the store
    # while its holder's deadline lay centuries ahead: two leaders.
    async with open_store(NATS, request) as (store, state):
        from trio_noleader._nats import NatsBackend  # the extra is there: the store opened

        assert isinstance(store, NatsBackend)
        before = await state()
        await expect_refusal(lambda: store.check_ttl(ttl), ValueError, f"ttl={ttl!r}")
        await expect_refusal(lambda: store.create("other", b"x" * 16, ttl=ttl),
                             ValueError, "at most 1000000000")
        await expect_refusal(lambda: enter(hold_leadership("other", backend=store, ttl=ttl)),
                             ValueError, "at most 1000000000")
        assert await state() == before


@pytest.mark.nats
async def test_the_longest_nats_ttl_keeps_a_lease(request: pytest.FixtureRequest) -> None:
    async with open_test_backend(request) as store:
        store.check_ttl(10**9)
        revision = await store.create(KEY, b"y" * 16, ttl=10**9)
        await trio.sleep(1.5)  # what a dropped message would have needed to go
        entry = await store.get(KEY)
        assert entry is not None
        assert entry.revision == revision


# -- buckets and servers ---------------------------------------------------------------------

BAD_BUCKETS: list[tuple[Any, type[Exception], str]] = [
    ("a b", ValueError, "invalid bucket name 'a b'"),
    ("jobs*", ValueError, "invalid bucket name 'jobs*'"),
    ("jobs>", ValueError, "invalid bucket name 'jobs>'"),
    ("clé", ValueError, "invalid bucket name 'clé'"),
    ("b" * 253, ValueError, "at most 252 characters"),
    ("b" * 1_000_000, ValueError, "at most 252 characters"),
    ("é" * 1_000_000, ValueError, "invalid bucket name 'ééé"),
    (None, TypeError, "bucket must be a str, got NoneType"),
    (b"bytes", TypeError, "bucket must be a str, got bytes"),
]


@needs_nats_extra
@pytest.mark.parametrize(("bucket", "error", "message"), BAD_BUCKETS)
async def test_bad_bucket_names_fail_before_any_io(bucket: Any, error: type[Exception],
                                                   message: str) -> None:
    from trio_noleader._urls import parse_nats_url

    # Nothing listens there: any I/O would give BackendUnavailable instead.
    url = f"nats://127.0.0.1:{free_port()}"

    async def open_it() -> None:
        async with trio_noleader.open_nats_backend(url, bucket=bucket):
            pytest.fail("opened")  # pragma: no cover

    await expect_refusal(open_it, error, message)
    if isinstance(bucket, str) and "/" not in bucket:
        # The same bucket in a URL path (percent-encoded where it must be).
        path = bucket.replace(" ", "%20").replace("é", "%C3%A9")
        with pytest.raises(ValueError, match="bucket") as raised:
            parse_nats_url(f"{url}/{path}")
        assert len(str(raised.value)) <= MESSAGE_LIMIT


@pytest.mark.nats
async def test_the_longest_bucket_name_works(nats_url: str) -> None:
    bucket = "b" * 240 + uuid.uuid4().hex[:12]
    async with trio_noleader.open_nats_backend(nats_url, bucket=bucket,
                                               storage="memory") as store:
        try:
            async with hold_leadership(KEY, ttl=1) as lead:
                assert lead.token > 0
        finally:
            await delete_bucket(store)


BAD_SERVERS: list[tuple[Any, type[Exception], str]] = [
    (42, TypeError, "servers must be a str or a list of str, got int: 42"),
    (None, TypeError, "servers must be a str or a list of str, got NoneType"),
    (b"nats://127.0.0.1:4222", TypeError, "got bytes"),
    ([42], TypeError, "servers must be a str or a list of str, got list: [42]"),
    ("", ValueError, "at least one NATS server"),
    (" , ", ValueError, "at least one NATS server"),
]


@needs_nats_extra
@pytest.mark.parametrize(("servers", "error", "message"), BAD_SERVERS)
async def test_bad_servers_fail_before_any_io(servers: Any, error: type[Exception],
                                              message: str) -> None:
    async def open_it() -> None:
        async with trio_noleader.open_nats_backend(servers, bucket="b"):
            pytest.fail("opened")  # pragma: no cover

    await expect_refusal(open_it, error, message)


@needs_nats_extra
@pytest.mark.parametrize(("url", "message"), [
    ("nats://:4222/b", "no host"),
    ("nats://host/b%20c", "bucket name"),
    ("nats://host/b?replicas=three", "replicas='three' is no int"),
    ("nats://host/b?storage=disk&replicas=1", "storage='disk'"),
    ("nats://host/b?replicas=9", "replicas=9"),
])
async def test_bad_nats_urls_fail_before_any_io(url: str, message: str) -> None:
    async def open_it() -> None:
        async with open_backend(url):
            pytest.fail("opened")  # pragma: no cover

    await expect_refusal(open_it, ValueError, message)


# -- servers that cannot serve ---------------------------------------------------------------


async def serve_silence(task_status: trio.TaskStatus[int]) -> None:
    """Accept TCP connections and never say a word (no NATS INFO)."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    task_status.started(listeners[0].socket.getsockname()[1])
    held = []
    try:
        while True:
            held.append(await listeners[0].accept())
    finally:
        with trio.CancelScope(shield=True):
            for stream in held:
                await stream.aclose()
            await listeners[0].aclose()


async def serve_http(task_status: trio.TaskStatus[int]) -> None:
    """Answer every connection like an HTTP server would, then hang up."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    task_status.started(listeners[0].socket.getsockname()[1])
    try:
        while True:
            stream = await listeners[0].accept()
            await stream.send_all(b"HTTP/1.1 400 Bad Request\r\n\r\n")
            await stream.aclose()
    finally:
        with trio.CancelScope(shield=True):
            await listeners[0].aclose()


@needs_nats_extra
@pytest.mark.parametrize(("server", "within"), [(serve_silence, 8.0), (serve_http, 3.0)])
async def test_a_server_that_is_not_nats(
    server: Callable[[trio.TaskStatus[int]], Awaitable[None]], within: float,
) -> None:
    async with trio.open_nursery() as nursery:
        port: int = await nursery.start(server)
        started = trio.current_time()
        with trio.fail_after(within + 2), pytest.raises(BackendUnavailable) as raised:
            url = f"nats://bob:n0t-shown@127.0.0.1:{port}"
            async with trio_noleader.open_nats_backend(url):
                pytest.fail("opened")  # pragma: no cover
        assert trio.current_time() - started <= within
        nursery.cancel_scope.cancel()
    assert f"127.0.0.1:{port}" in str(raised.value)
    assert "n0t-shown" not in str(raised.value)


# -- buckets made by someone else ------------------------------------------------------------


@asynccontextmanager
async def foreign_bucket(nats_url: str, config: dict[str, Any]
                         ) -> AsyncIterator[tuple[str, NatsBackend]]:
    """A stream KV_<bucket> made with raw nats-py; the observer is on another bucket."""
    from nats.js import api

    bucket = f"foreign_{uuid.uuid4().hex[:12]}"
    sealed = config.pop("sealed", False)
    async with trio_noleader.open_nats_backend(nats_url, bucket=f"obs_{bucket}",
                                               storage="memory") as obs:
        js = obs.connection.jetstream()
        stream = api.StreamConfig(name=f"KV_{bucket}", subjects=[f"$KV.{bucket}.>"],
                                  storage=api.StorageType.MEMORY, **config)
        await aio(obs, js.add_stream)(stream)
        if sealed:  # a stream is sealed by an update, never at its creation
            stream.sealed = True
            await aio(obs, js.update_stream)(stream)
        try:
            yield bucket, obs
        finally:
            with trio.move_on_after(5, shield=True):
                await aio(obs, js.delete_stream)(f"KV_{bucket}")
            await delete_bucket(obs)


async def stream_config(observer: NatsBackend, bucket: str) -> dict[str, Any]:
    info = await aio(observer, observer.connection.jetstream().stream_info)(f"KV_{bucket}")
    config: dict[str, Any] = info.config.as_dict()
    return config


@pytest.mark.nats
@pytest.mark.parametrize(("config", "message"), [
    ({}, "is not a KV bucket (no per-key history limit)"),
    ({"max_msgs_per_subject": 1, "sealed": True}, "is read-only (sealed or a mirror)"),
    ({"max_msgs_per_subject": 1, "max_msg_size": 16},
     "accepts messages of at most 16 bytes"),
])
async def test_unusable_buckets_are_refused_and_left_alone(
    nats_url: str, config: dict[str, Any], message: str,
) -> None:
    async with foreign_bucket(nats_url, config) as (bucket, observer):
        before = await stream_config(observer, bucket)
        with trio.fail_after(5), pytest.raises(BackendUnavailable) as raised:
            async with trio_noleader.open_nats_backend(nats_url, bucket=bucket):
                pytest.fail("opened an unusable bucket")  # pragma: no cover
        assert message in str(raised.value)
        assert bucket in str(raised.value)
        assert await stream_config(observer, bucket) == before


@pytest.mark.nats
async def test_a_bucket_with_history_works(nats_url: str) -> None:
    # history > 1 is no harm: every read and compare-and-set is on the key's last
    # message, and older ones are never taken for the lease.
    history = {"max_msgs_per_subject": 5, "allow_msg_ttl": True}
    async with foreign_bucket(nats_url, history) as (bucket, _), \
            trio_noleader.open_nats_backend(nats_url, bucket=bucket) as store:
        tokens = []
        for _ in range(3):
            async with hold_leadership(KEY, ttl=1) as lead:
                tokens.append(lead.token)
                await trio.sleep(0.5)  # one renewal at least
        assert tokens == sorted(set(tokens))
        assert await store.get(KEY) is None
        with trio.fail_after(5):
            async with hold_leadership(KEY, ttl=1, wait=False) as lead:
                assert lead.token > tokens[-1]


# -- values that are not ours ----------------------------------------------------------------

GARBAGE = [b"", b"\x00garbage", b"x" * 17, b"y" * 23, bytes(range(256)) * 400]


@pytest.mark.nats
@pytest.mark.parametrize("value", GARBAGE, ids=lambda v: f"{len(v)}-bytes")
async def test_garbage_in_the_key_is_an_unknown_holder_left_alone(
    value: bytes, request: pytest.FixtureRequest,
) -> None:
    async with open_test_backend(request) as store:
        kv = await aio(store, store.connection.jetstream().key_value)(store.bucket)
        revision = await aio(store, kv.put)(KEY, value)  # no TTL: it stays
        before = await stream_state(store)
        info = await current_leader(KEY, backend=store)
        assert info is not None
        assert (info.candidate_id, info.token, info.revision) == (None, revision, revision)
        async with aclosing(watch_leader(KEY, backend=store)) as updates:
            assert await anext(updates) == info
        with trio.fail_after(5), pytest.raises(trio.WouldBlock, match=KEY):
            async with hold_leadership(KEY, backend=store, ttl=1, wait=False):
                pytest.fail("elected over a foreign value")  # pragma: no cover
        if value == GARBAGE[1]:
            # Waiting: past one ttl, when the campaign looks again without the watch.
            with trio.move_on_after(1.5) as waited:
                async with hold_leadership(KEY, backend=store, ttl=1):
                    pytest.fail("elected over a foreign value")  # pragma: no cover
            assert waited.cancelled_caught
        # Not one write: the foreign value is untouched.
        assert await stream_state(store) == before
        entry = await store.get(KEY)
        assert entry is not None
        assert (entry.value, entry.revision) == (value, revision)


@pytest.mark.nats
async def test_status_shows_garbage_as_an_unknown_holder(nats_url: str) -> None:
    bucket = f"garbage_{uuid.uuid4().hex[:12]}"
    async with trio_noleader.open_nats_backend(nats_url, bucket=bucket,
                                               storage="memory") as store:
        try:
            kv = await aio(store, store.connection.jetstream().key_value)(bucket)
            revision = await aio(store, kv.put)(KEY, b"\xff\xfe not a candidate")
            result = await trio.run_process(
                [sys.executable, "-m", "trio_noleader", "status", "--json",
                 "--url", f"{nats_url}/{bucket}"],
                capture_stdout=True, capture_stderr=True, check=False,
                stdin=subprocess.DEVNULL)
            assert result.returncode == 0, result.stderr
            [row] = json.loads(result.stdout)
            assert row["key"] == KEY
            assert (row["held"], row["foreign"], row["leader"], row["token"]) == (
                True, True, None, revision)
        finally:
            await delete_bucket(store)

