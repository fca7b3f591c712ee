"""Candidate names: stored with the lease on every backend, old values still readable."""

from __future__ import annotations

import os
import socket
import uuid
from contextlib import aclosing

import pytest
import trio
import trio.testing

from trio_noleader import (
    Entry,
    LeaderInfo,
    MemoryBackend,
    current_leader,
    hold_leadership,
    run_as_leader,
    watch_leader,
)
from trio_noleader._types import decode_name, decode_value, default_name, encode_value
from trio_noleader.abc import Backend

from .harness import BackendSpec

KEY = "jobs/named"


async def test_the_name_is_stored_with_the_lease(
    spec: BackendSpec, backend: Backend, clock: trio.testing.MockClock | None,
) -> None:
    ttl = spec.ttl
    async with aclosing(watch_leader(KEY, backend=backend)) as updates:
        assert await anext(updates) is None
        async with hold_leadership(KEY, backend=backend, ttl=ttl, name="web-1:4242") as lead:
            assert lead.name == "web-1:4242"
            seen = await anext(updates)
            assert seen is not None
            assert seen.name == "web-1:4242"
            info = await current_leader(KEY, backend=backend)
            assert info is not None
            assert (info.candidate_id, info.token, info.name) == (
                lead.candidate_id, lead.token, "web-1:4242")
            # After renewals the value carries the token, and still the name.
            await trio.sleep(ttl / 3 * 2.5)
            info = await current_leader(KEY, backend=backend)
            assert info is not None
            assert info.revision > lead.token
            assert (info.candidate_id, info.token, info.name) == (
                lead.candidate_id, lead.token, "web-1:4242")
        assert await current_leader(KEY, backend=backend) is None


async def test_the_default_name_is_host_and_pid(
    spec: BackendSpec, backend: Backend, clock: trio.testing.MockClock | None,
) -> None:
    async def body() -> LeaderInfo | None:
        return await current_leader(KEY, backend=backend)

    info = await run_as_leader(KEY, body, backend=backend, ttl=spec.ttl)
    assert info is not None
    assert info.name == default_name()
    assert info.name.endswith(f":{os.getpid()}")
    host = socket.gethostname()
    if host.isascii() and host.replace("-", "").replace(".", "").isalnum():
        assert info.name == f"{host}:{os.getpid()}"


async def test_unnamed_values_of_old_are_still_leases(
    spec: BackendSpec, backend: Backend, clock: trio.testing.MockClock | None,
) -> None:
    # What the Rust crate (and this library before names) wrote: 16 bytes, then 24.
    cid = uuid.uuid4()
    revision = await backend.create(KEY, cid.bytes, ttl=spec.ttl)
    info = await current_leader(KEY, backend=backend)
    assert info == LeaderInfo(cid, revision, revision, info.expires_in if info else None)
    assert info is not None
    assert info.name is None
    revision2 = await backend.update(KEY, encode_value(cid, revision), revision=revision,
                                     ttl=spec.ttl)
    info = await current_leader(KEY, backend=backend)
    assert info is not None
    assert (info.candidate_id, info.token, info.revision, info.name) == (
        cid, revision, revision2, None)
    with pytest.raises(trio.WouldBlock):
        async with hold_leadership(KEY, backend=backend, ttl=spec.ttl, wait=False):
            pytest.fail("elected over an unnamed holder")  # pragma: no cover
    entry = await backend.get(KEY)
    assert entry is not None
    assert entry.revision == revision2


def test_value_format() -> None:
    cid = uuid.uuid4()
    created = encode_value(cid, None, "a:1")
    assert created == cid.bytes + bytes(8) + b"\x01a:1"
    assert decode_value(created, 41) == (cid, 41)  # token zero: the entry's revision
    renewed = encode_value(cid, 41, "a:1")
    assert decode_value(renewed, 57) == (cid, 41)
    assert decode_name(renewed) == "a:1"
    assert LeaderInfo.from_entry(Entry("k", renewed, 57)) == LeaderInfo(cid, 41, 57, None, "a:1")
    # Never 16 bytes: the Rust crate reads an unknown holder, which it leaves alone.
    assert len(created) != 16
    assert len(renewed) != 16
    # Unnamed values as before.
    assert decode_name(cid.bytes) is None
    assert decode_name(encode_value(cid, 3)) is None
    # A corrupt name, a wrong tag, a name too long: a foreign holder, not a candidate.
    for bad in (cid.bytes + bytes(8) + b"\x01a b", cid.bytes + bytes(8) + b"\x02a",
                cid.bytes + bytes(8) + b"\x01", cid.bytes + bytes(8) + b"\x01\xff",
                cid.bytes + bytes(8) + b"\x01" + b"x" * 129):
        assert decode_value(bad, 5) == (None, None), bad
        assert decode_name(bad) is None
    assert decode_name(cid.bytes + bytes(8) + b"\x01" + b"x" * 128) == "x" * 128


def test_default_name_is_a_valid_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "gethostname", lambda: "hôte avec espaces" + "x" * 300)
    name = default_name()
    assert len(name) <= 128
    assert name.endswith(f":{os.getpid()}")
    assert name.startswith("h_te_avec_espaces")
    monkeypatch.setattr(socket, "gethostname", lambda: "")
    assert default_name() == f"localhost:{os.getpid()}"


async def test_a_foreign_value_has_no_name(autojump_clock: trio.testing.MockClock) -> None:
    store = MemoryBackend()
    await store.create(KEY, b"someone else's lock", ttl=10)
    info = await current_leader(KEY, backend=store)
    assert info is not None
    assert (info.candidate_id, info.name) == (None, None)
