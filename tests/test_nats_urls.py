"""One store, whatever the spelling: a bucket in a server URL, query options, create=False."""

from __future__ import annotations

import socket
import subprocess
import sys
import uuid
from typing import Any

import pytest

pytest.importorskip("nats", reason="the nats extra is not installed")

import nats.js.errors
import trio
import trio_asyncio

from trio_noleader import (
    BackendUnavailable,
    NatsBackend,
    current_leader,
    hold_leadership,
    open_backend,
    open_nats_backend,
)
from trio_noleader._urls import Default, merge_server_settings

from .nats_fixture import delete_bucket

KEY = "urls/job"


def _unset() -> dict[str, Any]:
    return {"bucket": Default("noleader"), "replicas": None, "storage": None}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# -- pure: the merge ----------------------------------------------------------------


def test_a_url_bucket_and_options_replace_the_defaults() -> None:
    servers, merged = merge_server_settings(
        ["nats://bob:pw@h1:4222/apps?replicas=3&storage=memory"], _unset())
    assert servers == ["nats://bob:pw@h1:4222"]  # credentials stay for nats-py
    assert merged == {"bucket": "apps", "replicas": 3, "storage": "memory"}


def test_urls_without_a_path_keep_the_defaults() -> None:
    servers, merged = merge_server_settings(["nats://h1:4222", "tls://h2"], _unset())
    assert servers == ["nats://h1:4222", "tls://h2"]
    assert merged["bucket"] == "noleader"
    assert isinstance(merged["bucket"], Default)


def test_an_explicit_bucket_that_agrees_is_fine() -> None:
    _, merged = merge_server_settings(["nats://h1/apps", "nats://h2"],
                                      {**_unset(), "bucket": "apps"})
    assert merged["bucket"] == "apps"


@pytest.mark.parametrize(
    ("servers", "given", "first", "second"),
    [
        (["nats://h:4222/apps"], {"bucket": "noleader"}, "'apps' in the server URL",
         "bucket='noleader'"),
        (["nats://h:1/a", "nats://h:2/b"], {}, "'b' in the server URL 'nats://h:2/b'",
         "'a' in the server URL 'nats://h:1/a'"),
        (["nats://h/x?replicas=3"], {"replicas": 5}, "3 in the server URL", "replicas=5"),
        (["nats://u:s3cret@h/apps"], {"bucket": "other"}, "'nats://u:***@h/apps'",
         "bucket='other'"),
    ],
)
def test_a_disagreement_is_a_value_error_naming_both(
    servers: list[str], given: dict[str, Any], first: str, second: str
) -> None:
    with pytest.raises(ValueError, match="disagrees with") as info:
        merge_server_settings(servers, {**_unset(), **given})
    assert first in str(info.value)
    assert second in str(info.value)
    assert "s3cret" not in str(info.value)


def test_a_bad_bucket_or_option_in_a_server_url_is_refused() -> None:
    with pytest.raises(ValueError, match="the path must be a bucket name"):
        merge_server_settings(["nats://h/a.b"], _unset())
    with pytest.raises(ValueError, match="unknown parameter 'replica'"):
        merge_server_settings(["nats://h/a?replica=3"], _unset())


async def test_open_nats_backend_refuses_a_disagreement_before_any_io() -> None:
    # Nothing listens there: any I/O would be BackendUnavailable instead.
    url = f"nats://127.0.0.1:{free_port()}/apps"
    with pytest.raises(ValueError, match="disagrees with bucket='noleader'"):
        async with open_nats_backend(url, bucket="noleader"):
            pytest.fail("opened")  # pragma: no cover
    with pytest.raises(TypeError, match="create must be a bool"):
        async with open_nats_backend(url, create=1):  # type: ignore[arg-type]
            pytest.fail("opened")  # pragma: no cover


# -- a real server ------------------------------------------------------------------


async def _stream_config(backend: NatsBackend) -> dict[str, Any]:
    js = backend.connection.jetstream()
    info = await trio_asyncio.aio_as_trio(js.stream_info, loop=backend.loop)(
        f"KV_{backend.bucket}")
    config: dict[str, Any] = info.config.as_dict()
    return config


@pytest.mark.nats
async def test_two_spellings_of_one_bucket_are_one_election(nats_url: str) -> None:
    bucket = f"apps_{uuid.uuid4().hex[:12]}"
    async with open_nats_backend(f"{nats_url}/{bucket}?storage=memory") as first:
        try:
            assert first.bucket == bucket
            assert (await _stream_config(first))["storage"] == "memory"
            async with open_backend(f"{nats_url}/{bucket}") as second, \
                    open_nats_backend(nats_url, bucket=bucket) as third:
                assert isinstance(second, NatsBackend)
                assert second.bucket == third.bucket == bucket
                async with hold_leadership(KEY, backend=first, ttl=2) as lead:
                    for other in (second, third):
                        info = await current_leader(KEY, backend=other)
                        assert info is not None
                        assert info.candidate_id == lead.candidate_id
        finally:
            await delete_bucket(first)


@pytest.mark.nats
@pytest.mark.parametrize("how", ["open_nats_backend", "open_backend"])
async def test_create_false_never_creates_a_bucket(nats_url: str, how: str) -> None:
    bucket = f"typo_{uuid.uuid4().hex[:12]}"
    opener = (open_nats_backend(nats_url, bucket=bucket, create=False)
              if how == "open_nats_backend"
              else open_backend(f"{nats_url}/{bucket}", create=False))
    with pytest.raises(BackendUnavailable, match=f"no bucket '{bucket}'"):
        async with opener:
            pytest.fail("opened")  # pragma: no cover
    # Nothing was created: the server does not know the bucket's stream.
    other = f"other_{uuid.uuid4().hex[:12]}"
    async with open_nats_backend(nats_url, bucket=other, storage="memory") as backend:
        try:
            js = backend.connection.jetstream()
            with pytest.raises(nats.js.errors.NotFoundError):
                await trio_asyncio.aio_as_trio(js.stream_info, loop=backend.loop)(
                    f"KV_{bucket}")
            async with open_backend(f"{nats_url}/{other}", create=False) as looking:
                assert await looking.keys() == []  # an existing bucket opens
        finally:
            await delete_bucket(backend)


@pytest.mark.nats
async def test_noleader_status_never_creates_a_bucket(nats_url: str) -> None:
    bucket = f"typo_{uuid.uuid4().hex[:12]}"
    result = await trio.run_process(
        [sys.executable, "-m", "trio_noleader", "status", "--url", f"{nats_url}/{bucket}"],
        capture_stdout=True, capture_stderr=True, check=False, stdin=subprocess.DEVNULL)
    assert result.returncode == 122, result.stderr
    assert f"no bucket '{bucket}'" in result.stderr.decode()
