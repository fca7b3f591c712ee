"""Opening a NATS backend: connect, check the server, provision the bucket.

The other half of the NATS backend (:mod:`trio_noleader._nats` is the key-value
protocol and its watch). Like it, this module needs the ``nats`` extra.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import functools
import itertools
import logging
import re
import ssl
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import nats.aio.client
import nats.errors
import nats.js.errors

from . import _aio
from ._context import backend_scope, require_trio, services_for
from ._exceptions import BackendUnavailable
from ._nats import NatsBackend
from ._nats_base import _TRANSIENT, MARKER_TTL, REQUEST_TIMEOUT, _describe, _js_api, _Link
from ._types import check_type, type_error
from ._unwrap import bare_exceptions
from ._urls import DEFAULT_BUCKET, Default, check_bucket_name, merge_server_settings, redact_url

__all__ = ["open_nats_backend"]

logger = logging.getLogger("trio_noleader")

#: The oldest server with per-message TTLs and expiry markers (2.10 ignores Nats-TTL).
MIN_SERVER_VERSION = (2, 11, 2)

#: Default seconds for one connection attempt: an unreachable server fails fast.
CONNECT_TIMEOUT = 2.0

#: Bytes a bucket must accept in one message (``max_msg_size``): a renewal is up to
#: 153 bytes of value (with a 128-character name) and about 95 of headers, a release
#: about 90 of headers.
MIN_MSG_SIZE = 384

_VERSION_RE = re.compile(r"v?(\d+)\.(\d+)\.(\d+)")

# JSStreamNameExistErr: a concurrent opener created the bucket with another config.
_STREAM_NAME_EXISTS = 10058


def _scrub(text: str, secrets: Sequence[str]) -> str:
    """*text* with every known secret replaced by ``***`` (for error messages)."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def _server_version(nc: Any) -> str:
    """The version string of the server *nc* is connected to (tests patch this)."""
    version = nc.connected_server_version
    text = f"{version.major}.{version.minor}.{version.patch}"
    if version.prerelease:
        text += f"-{version.prerelease}"
    return text


def _version_tuple(text: str) -> tuple[int, int, int] | None:
    match = _VERSION_RE.match(text.strip())
    if match is None:
        return None
    return int(match.group(1)), int(match.group(2)), int(match.group(3))


def _is_refusal(exc: BaseException) -> bool:
    """A login or certificate the server refused: retrying cannot help."""
    return (isinstance(exc, nats.errors.AuthorizationError | ssl.SSLCertVerificationError)
            or "authorization violation" in str(exc).lower())


async def _aio_connect(servers: str | list[str], address: str, secrets: Sequence[str],
                       options: dict[str, Any], link: _Link) -> Any:
    """Connect (asyncio side) failing fast, then reconnect forever once connected."""
    errors: list[BaseException] = []
    refused = asyncio.Event()
    user_error_cb = options.pop("error_cb", None)
    user_disconnected_cb = options.pop("disconnected_cb", None)
    user_reconnected_cb = options.pop("reconnected_cb", None)
    nc = nats.aio.client.Client()

    async def error_cb(exc: Exception) -> None:
        errors.append(exc)
        del errors[:-20]
        if not link.connected and _is_refusal(exc):
            refused.set()
        if link.connected and not link.closing and nc.is_connected:
            logger.warning("NATS %s: %s", address, _scrub(_describe(exc), secrets))
        else:  # failed attempts while connecting or reconnecting: one warning said it
            logger.debug("NATS %s: %s", address, _scrub(_describe(exc), secrets))
        if user_error_cb is not None:
            await user_error_cb(exc)

    async def disconnected_cb() -> None:
        link.disconnects += 1
        if link.connected and not link.closing:
            logger.warning("NATS connection to %s lost; reconnecting", address)
        if user_disconnected_cb is not None:
            await user_disconnected_cb()

    async def reconnected_cb() -> None:
        logger.info("NATS connection to %s re-established", address)
        if user_reconnected_cb is not None:
            await user_reconnected_cb()

    settings: dict[str, Any] = {
        "name": "trio-noleader",
        "connect_timeout": CONNECT_TIMEOUT,
        "reconnect_time_wait": 1,
        # A dead TCP connection is noticed in about 10 s, not nats-py's 4 minutes.
        "ping_interval": 5,
        "max_outstanding_pings": 2,
        "allow_reconnect": True,
    }
    settings.update(options)
    budget: float | None = None
    reconnect_forever = "max_reconnect_attempts" not in options
    if reconnect_forever:
        # nats-py retries the *first* connect up to max_reconnect_attempts times per
        # server (allow_reconnect=False does not stop that): two tries, then fail.
        settings["max_reconnect_attempts"] = 1
        # nats-py 2.16 can also hang for good after a failed TLS handshake: bound it.
        count = 1 if isinstance(servers, str) else len(servers)
        budget = 2 * count * (float(settings["connect_timeout"])
                              + float(settings["reconnect_time_wait"])) + 1
    connecting = asyncio.ensure_future(nc.connect(
        servers, error_cb=error_cb, disconnected_cb=disconnected_cb,
        reconnected_cb=reconnected_cb, **settings))
    giving_up = asyncio.ensure_future(refused.wait())
    try:
        await asyncio.wait({connecting, giving_up}, timeout=budget,
                           return_when=asyncio.FIRST_COMPLETED)
    finally:
        giving_up.cancel()
        if not connecting.done():
            # Refused, too slow, or we are being cancelled: stop nats-py retrying.
            connecting.cancel()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait({connecting}, timeout=1)
                await asyncio.wait_for(nc.close(), REQUEST_TIMEOUT)
    failure = None if connecting.cancelled() else connecting.exception()
    if isinstance(failure, TypeError):
        raise failure  # a misspelt connect option: the caller's bug, not the store's
    if failure is not None or connecting.cancelled() or nc.is_closed:
        # NoServersError says nothing, and a cancelled attempt nothing either: the
        # errors the callback saw say why. A refused login or certificate is the one
        # to report even if a socket reset came after it.
        if errors and (failure is None or isinstance(failure, nats.errors.NoServersError)):
            seen = errors
        else:
            seen = [failure or TimeoutError(f"no connection within {budget} s")]
        refusals = [e for e in seen if _is_refusal(e)]
        cause = refusals[-1] if refusals else seen[-1]
        if refusals and not isinstance(cause, ssl.SSLError):
            why = "authorization failed (check user/password, token or credentials)"
        else:
            why = _scrub(_describe(cause), secrets)
        raise BackendUnavailable(f"cannot connect to NATS at {address}: {why}") from cause
    if reconnect_forever:
        # Once connected, a lease store should ride out any outage: reconnect forever.
        nc.options["max_reconnect_attempts"] = -1
    link.connected = True
    return nc


async def _aio_setup(nc: Any, address: str, bucket: str, replicas: int,
                     storage: str, create: bool = True) -> tuple[float, str, float]:
    """Check the server and the bucket (asyncio side); see :func:`_aio_provision`."""
    version = _server_version(nc)
    parsed = _version_tuple(version)
    if parsed is None or parsed < MIN_SERVER_VERSION:
        minimum = ".".join(map(str, MIN_SERVER_VERSION))
        raise BackendUnavailable(
            f"NATS at {address} runs nats-server {version}; trio-noleader needs "
            f"{minimum} or newer (older servers ignore per-message TTLs, so a lease "
            "would never expire)")
    js = nc.jetstream(timeout=REQUEST_TIMEOUT)
    try:
        await js.account_info()
    except (nats.errors.NoRespondersError, nats.js.errors.ServiceUnavailableError,
            nats.js.errors.APIError) as exc:
        raise BackendUnavailable(
            f"NATS at {address} has no JetStream for this account ({_describe(exc)}): "
            "start nats-server with -js (or enable JetStream for the account)") from exc
    return await _aio_provision(nc, address, bucket, replicas, storage, create)


def first_sequence() -> int:
    """The first stream sequence (so the first revision) of a bucket created now.

    The wall clock in microseconds: a bucket created later, after the old one was
    deleted or lost (a server restart with memory storage, a wiped store), starts
    above every revision the old one handed out, so fencing tokens keep growing as
    long as the wall clock does not step back and the old bucket took fewer than a
    million writes a second. Far below 2**63, as databases that store a token as a
    signed 64-bit integer need.
    """
    return time.time_ns() // 1000


async def _aio_create_bucket(nc: Any, bucket: str, replicas: int,
                             storage: str) -> dict[str, Any]:
    """Create the lease bucket's stream (asyncio side); return the stream's info.

    The stream of a KV bucket as nats-py's ``create_key_value`` makes it (history
    1, per-message TTLs, expiry markers), created here so that its first sequence
    can be set (:func:`first_sequence`).
    """
    config = {
        "name": f"KV_{bucket}",
        "description": "trio-noleader leases",
        "subjects": [f"$KV.{bucket}.>"],
        "retention": "limits",
        "max_consumers": -1,
        "max_msgs": -1,
        "max_bytes": -1,
        "max_age": 0,
        "max_msgs_per_subject": 1,
        "max_msg_size": -1,
        "discard": "new",
        "storage": storage,
        "num_replicas": replicas,
        "duplicate_window": 120 * 1_000_000_000,
        "allow_direct": True,
        "allow_rollup_hdrs": True,
        "deny_delete": True,
        "allow_msg_ttl": True,
        "subject_delete_marker_ttl": int(MARKER_TTL * 1_000_000_000),
        "first_seq": first_sequence(),
    }
    info: dict[str, Any] = await _js_api(nc, f"STREAM.CREATE.KV_{bucket}", config)
    return info


async def _aio_provision(nc: Any, address: str, bucket: str, replicas: int,
                         storage: str, create: bool = True) -> tuple[float, str, float]:
    """Make sure the bucket exists and fits (asyncio side).

    Returns:
        tuple: ``(max_age, created, age)``: the bucket's max age in seconds (0 for
        none), its stream's creation time (the store's identity), and its age in
        seconds by the server's clock.
    """
    stream = f"KV_{bucket}"
    try:
        info = await _js_api(nc, f"STREAM.INFO.{stream}")
    except nats.js.errors.NotFoundError:
        if not create:
            raise BackendUnavailable(
                f"no bucket {bucket!r} at {address} (a typo? nothing has run there yet?)"
            ) from None
        try:
            info = await _aio_create_bucket(nc, bucket, replicas, storage)
            logger.info("created NATS KV bucket %r at %s (first revision %d)", bucket,
                        address, info.get("config", {}).get("first_seq", 1))
            return 0.0, str(info.get("created")), _age(info)
        except nats.js.errors.APIError as exc:
            if exc.err_code != _STREAM_NAME_EXISTS:
                raise
            # Another process created it first, perhaps with another config: check it.
            info = await _js_api(nc, f"STREAM.INFO.{stream}")
    max_age = await _aio_adapt_bucket(nc, address, bucket, info["config"])
    return max_age, str(info.get("created")), _age(info)


def _timestamp(text: str) -> float:
    """Seconds since the epoch of a JetStream RFC 3339 time (nanoseconds allowed)."""
    whole, _, rest = text.rstrip("Z").partition(".")
    digits = "".join(itertools.takewhile(str.isdigit, rest))
    stamp = datetime.datetime.fromisoformat(whole).replace(tzinfo=datetime.UTC).timestamp()
    return stamp + (int(digits) / 10 ** len(digits) if digits else 0.0)


def _age(info: dict[str, Any]) -> float:
    """How old the stream is, by the server's own clock (0 if it does not say)."""
    try:
        return max(0.0, _timestamp(info["ts"]) - _timestamp(info["created"]))
    except (KeyError, ValueError, TypeError):
        return 0.0


async def _aio_adapt_bucket(nc: Any, address: str, bucket: str,
                            config: dict[str, Any]) -> float:
    """Make an existing bucket fit for leases; return its max age in seconds.

    A bucket made by another client (the Rust noleader creates one with history 1
    and max age 60 s) lacks per-message TTLs and expiry markers. Both are switched
    on here, which servers >= 2.11 allow on a live stream; values written without a
    TTL (the Rust crate's) keep living by the bucket's max age as before.
    """
    if config.get("sealed") or config.get("mirror"):
        raise BackendUnavailable(
            f"bucket {bucket!r} at {address} is read-only (sealed or a mirror)")
    if config.get("max_msgs_per_subject", 0) < 1:
        raise BackendUnavailable(
            f"stream KV_{bucket} at {address} is not a KV bucket (no per-key history limit)")
    max_msg_size = config.get("max_msg_size", -1)
    if 0 < max_msg_size < MIN_MSG_SIZE:
        # Every write would be refused, and a campaign would take that for an outage.
        raise BackendUnavailable(
            f"bucket {bucket!r} at {address} accepts messages of at most {max_msg_size} "
            f"bytes (max_msg_size, a KV bucket's max value size); a lease needs "
            f"{MIN_MSG_SIZE} with its headers: raise it or use another bucket")
    changes = []
    if not config.get("allow_msg_ttl"):
        config["allow_msg_ttl"] = True
        changes.append("per-message TTLs")
    if not config.get("subject_delete_marker_ttl"):
        config["subject_delete_marker_ttl"] = int(MARKER_TTL * 1_000_000_000)
        changes.append(f"expiry markers ({MARKER_TTL:g} s)")
    if changes:
        try:
            response = await _js_api(nc, f"STREAM.UPDATE.KV_{bucket}", config)
        except nats.js.errors.APIError as exc:
            raise BackendUnavailable(
                f"bucket {bucket!r} at {address} lacks {' and '.join(changes)}, and "
                f"enabling them failed ({_describe(exc)}); enable them or use another "
                "bucket") from exc
        config = response["config"]
        logger.warning("NATS KV bucket %r at %s: enabled %s (needed for leases)",
                       bucket, address, " and ".join(changes))
    max_age: float = config.get("max_age", 0) / 1_000_000_000
    return max_age


def _server_list(servers: object) -> list[str]:
    if isinstance(servers, str):
        result = [s.strip() for s in servers.split(",") if s.strip()]
    elif (isinstance(servers, Sequence) and not isinstance(servers, bytes | bytearray)
          and all(isinstance(s, str) for s in servers)):
        result = [s.strip() for s in servers if s.strip()]
    else:
        raise type_error("servers", servers, "a str or a list of str")
    if not result:
        raise ValueError(f"servers must name at least one NATS server, got {servers!r:.80}")
    return result


def _secrets(servers: Sequence[str], options: Mapping[str, Any]) -> list[str]:
    found = [value for name in ("password", "token")
             if isinstance(value := options.get(name), str) and value]
    for server in servers:
        userinfo, at, _ = server.partition("://")[2].rpartition("@")
        if at:
            user, colon, password = userinfo.partition(":")
            found += [password] if colon else [user]
    return [secret for secret in found if secret]


@asynccontextmanager
async def open_nats_backend(
    servers: str | Sequence[str] = "nats://127.0.0.1:4222",
    *,
    bucket: str = Default(DEFAULT_BUCKET),
    replicas: int = 1,
    storage: str = "file",
    new_store_grace: bool = True,
    create: bool = True,
    **connect_options: Any,
) -> AsyncIterator[NatsBackend]:
    """Open a NATS JetStream KV bucket as the lease store, and make it the default.

    Runs nats-py on a trio-asyncio loop: the one already running in this task (from
    ``trio_asyncio.open_loop()``), else a loop of its own for the block. Inside the
    block the backend is the default of ``hold_leadership`` and friends.

    On open it checks the server (nats-server 2.11.2 or newer, JetStream enabled),
    then creates the bucket if it is absent (history 1, per-message TTLs, expiry
    markers kept for :data:`MARKER_TTL` seconds, no max age). An existing bucket is
    used as it is, except that **per-message TTLs and expiry markers are switched on
    if missing** (a stream config update, allowed on live streams since 2.11): the
    Rust noleader's bucket (history 1, max age 60 s) lacks both, and with that
    change both libraries share it, each excluding the other. A bucket's max age
    limits the lease TTLs it accepts (see :meth:`NatsBackend.check_ttl`).

    Once connected the client reconnects forever (unless you pass
    ``max_reconnect_attempts``): calls made during an outage raise
    :class:`~trio_noleader.BackendUnavailable` and the election rides it out.

    Args:
        servers (str | Sequence[str]): One or more server URLs (``nats://`` or
            ``tls://``, credentials in the URL allowed), comma-separated or a list.
            A URL may name the bucket as its path and bucket options as its query,
            as in :func:`open_backend`: ``nats://host:4222/apps?replicas=3``.
        bucket (str): The KV bucket's name (``[A-Za-z0-9_-]+``); default the one a
            server URL names, else ``noleader``. A bucket given here and one in a
            server URL must be the same (``ValueError`` naming both otherwise: two
            spellings must never mean two elections).
        replicas (int): Replicas of a bucket created here (1 to 5); a server URL's
            ``?replicas=`` replaces the default 1.
        storage (str): ``"file"`` or ``"memory"``, for a bucket created here; a
            server URL's ``?storage=`` replaces the default.
        new_store_grace (bool): Refuse the first lease on a bucket younger than
            the lease's ttl (``BackendUnavailable``, which a campaign rides out),
            because a leader of the bucket it replaced (deleted, or lost with a
            server's memory storage) may still be in its term. Turn it off only
            where a bucket is never replaced, as in tests that make a fresh one
            each time.
        create (bool): Create the bucket if it does not exist (the default). With
            ``False`` a missing bucket is a :class:`BackendUnavailable`: for tools
            that only look, where a typo must not create a bucket.
        **connect_options: Passed to ``nats.connect``: ``user``/``password``,
            ``token``, ``user_credentials``, ``nkeys_seed``, ``tls`` (an
            ``ssl.SSLContext``), ``tls_hostname``, callbacks, ... Defaults here:
            ``name="trio-noleader"``, ``connect_timeout=2``, ``ping_interval=5``,
            ``reconnect_time_wait=1``.

    Raises:
        ValueError, TypeError: for bad arguments, before any I/O.
        BackendUnavailable: if no server can be reached (the cause chained), the
            server is older than 2.11.2 or has no JetStream, or the bucket cannot
            be used. Messages name the server, never a password or token.

    Exceptions come out bare, never wrapped in an ``ExceptionGroup``.
    """
    server_list = _server_list(servers)
    check_bucket_name(bucket)
    server_list, settings = merge_server_settings(server_list, {
        "bucket": bucket,
        "replicas": None if replicas == 1 and not isinstance(replicas, bool) else replicas,
        "storage": None if storage == "file" else storage})
    bucket = str(settings["bucket"])
    replicas = 1 if settings["replicas"] is None else settings["replicas"]
    storage = "file" if settings["storage"] is None else settings["storage"]
    if not isinstance(create, bool):
        raise type_error("create", create, "a bool")
    if isinstance(replicas, bool) or not isinstance(replicas, int) or not 1 <= replicas <= 5:
        raise ValueError(f"replicas={replicas!r}: must be an int from 1 to 5")
    if storage not in ("file", "memory"):
        raise ValueError(f"storage={storage!r}: must be 'file' or 'memory'")
    check_type("new_store_grace", new_store_grace, bool, "a bool")
    if "servers" in connect_options:
        raise TypeError("pass the servers as the first argument, not servers=")
    address = ", ".join(redact_url(server) for server in server_list)
    secrets = _secrets(server_list, connect_options)
    connect_to: str | list[str] = server_list[0] if len(server_list) == 1 else server_list
    require_trio("open_nats_backend()")

    with bare_exceptions():
        async with AsyncExitStack() as stack:
            loop = await stack.enter_async_context(_aio.asyncio_loop())
            link = _Link()
            nc = await _aio.call(loop, _aio_connect, connect_to, address, secrets,
                                 dict(connect_options), link)
            backend = NatsBackend(loop=loop, nc=nc, bucket=bucket, max_age=0.0,
                                  provision=functools.partial(
                                      _aio_provision, nc, address, bucket, replicas, storage,
                                      create),
                                  new_store_grace=new_store_grace,
                                  address=address, link=link)
            stack.push_async_callback(backend.aclose)
            try:
                backend.learn(*await _aio.call(
                    loop, _aio_setup, nc, address, bucket, replicas, storage, create))
            except (*_TRANSIENT, asyncio.CancelledError) as exc:
                raise BackendUnavailable(
                    f"setting up bucket {bucket!r} at {address}: "
                    f"{_scrub(_describe(exc), secrets)}") from exc
            logger.debug("opened %r", backend)
            async with backend_scope(backend):
                services_for(backend).start(backend.guard_identity,
                                            name=f"trio_noleader bucket {bucket}")
                yield backend
