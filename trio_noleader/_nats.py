"""NATS JetStream Key-Value backend, driven from Trio through trio-asyncio.

nats-py is an asyncio library: every call into it goes through
``trio_asyncio.aio_as_trio`` on the loop the backend was opened with. This is the
only module that imports ``nats`` and ``trio_asyncio`` (the ``nats`` extra).

A lease is one KV key whose last message is the holder's value, written with a
per-message TTL (the ``Nats-TTL`` header, nats-server 2.11+). Every write is a
compare-and-set on the key's last subject sequence
(``Nats-Expected-Last-Subject-Sequence``); the stream sequence of a write is its
revision. When a TTL runs out the server leaves an expiry marker (a message with a
``Nats-Marker-Reason`` header, thanks to the bucket's ``subject_delete_marker_ttl``)
so that watchers learn of the expiry. Markers, deletes and purges all read as
"absent".

Where nats-py 2.16 falls short, this module talks to the stream itself:

- ``KeyValue.update`` cannot carry a TTL, so a renewal would make the lease
  immortal: renewals publish to the key's subject with both the
  expected-last-sequence and the TTL headers.
- ``KeyValue.create`` and ``KeyValue.get`` take an expiry marker for a live value:
  reads check the marker headers themselves, and a create that finds a marker,
  delete or purge on the key writes over it with a compare-and-set on its sequence.
- A stale compare-and-set delete raises a bare ``BadRequestError`` (err_code
  10071): deletes are published here, and 10071/10164 become
  :class:`~trio_noleader.RevisionMismatch`.
- A compare-and-set on the sequence of a marker would succeed at the server, yet
  a marker is no live entry: ``update`` and ``delete`` first check that the
  revision names a live value of the key (once per revision; race-free, since a
  stream sequence never changes its message).

Calls made while the connection is down fail at once with
:class:`~trio_noleader.BackendUnavailable` instead of being buffered by nats-py and
sent after reconnecting (a write landing long after its caller gave up is exactly
what the election has to guard against), and an open watch breaks with
``BackendUnavailable`` on a lost connection rather than going quiet; the caller
watches afresh and gets the current state first.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import logging
import math
import re
import ssl
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from typing import Any, TypeVar
from urllib.parse import parse_qsl, unquote, urlsplit

import nats.aio.client
import nats.errors
import nats.js.errors
import nats.js.kv
import trio
import trio_asyncio
from nats.js import api

from ._context import backend_scope
from ._exceptions import BackendUnavailable, KeyExists, RevisionMismatch
from ._open import redact_url
from ._types import Entry, check_key
from ._unwrap import bare_exceptions
from .abc import Backend

__all__ = ["NatsBackend", "open_nats_backend", "open_nats_backend_from_url"]

logger = logging.getLogger("trio_noleader")

T = TypeVar("T")

#: The oldest server with per-message TTLs and expiry markers (2.10 ignores Nats-TTL).
MIN_SERVER_VERSION = (2, 11, 2)

#: Seconds the server keeps an expiry marker (the bucket's ``limit_marker_ttl``).
#: Long enough for a watcher whose consumer was reset after missed heartbeats
#: (about 10 s) to still see the marker; short, because a client that does not know
#: markers (nats-py's own ``kv.create``, perhaps the Rust crate's) takes one for a
#: live value until it is gone.
MARKER_TTL = 30.0

#: Seconds for one JetStream API request (nats-py's own default is 5 s too).
REQUEST_TIMEOUT = 5.0

#: Default seconds for one connection attempt: an unreachable server fails fast.
CONNECT_TIMEOUT = 2.0

#: How often a waiting watcher checks that the connection is still alive.
WATCH_LIVENESS_INTERVAL = 1.0

#: Seconds the server keeps a watcher's consumer after its subscriber went away. A
#: watch breaks on any disconnect anyway, so the consumer need not outlive an outage.
WATCH_INACTIVE_THRESHOLD = 15.0

DEFAULT_BUCKET = "noleader"

#: The longest bucket name: its stream, ``KV_<bucket>``, may have 255 characters.
MAX_BUCKET_LENGTH = 252

#: The longest lease TTL in seconds. nats-server (2.15) drops a message at once when
#: its ``Nats-TTL`` overflows the server's nanosecond clock arithmetic (from about
#: 9.2e9 s less the current Unix time): such a lease would vanish from the store
#: while its holder's deadline lay centuries ahead.
MAX_TTL = 10**9

#: Bytes a bucket must accept in one message (``max_msg_size``): a renewal is 24
#: bytes of value and about 95 of headers, a release about 90 of headers.
MIN_MSG_SIZE = 256

_BUCKET_RE = re.compile(r"[a-zA-Z0-9_-]+")
_VERSION_RE = re.compile(r"v?(\d+)\.(\d+)\.(\d+)")

# JSStreamWrongLastSequenceErrF and JSStreamWrongLastSequenceConstantErr.
_WRONG_LAST_SEQUENCE = frozenset({10071, 10164})
# JSStreamNotFoundErr: the bucket itself is gone, not just the key.
_STREAM_NOT_FOUND = 10059
# JSStreamNameExistErr: a concurrent opener created the bucket with another config.
_STREAM_NAME_EXISTS = 10058

_EXPECTED_LAST = api.Header.EXPECTED_LAST_SUBJECT_SEQUENCE.value
_KV_OPERATION = "KV-Operation"
_MARKER_REASON = "Nats-Marker-Reason"
_MSG_TTL = api.Header.MSG_TTL.value

# Errors from nats-py that mean "the store did not answer usefully (now)".
_TRANSIENT = (nats.errors.Error, OSError, asyncio.TimeoutError)


# -- small helpers --------------------------------------------------------------


def _scrub(text: str, secrets: Sequence[str]) -> str:
    """*text* with every known secret replaced by ``***`` (for error messages)."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def _describe(exc: BaseException) -> str:
    name = type(exc).__name__
    if isinstance(exc, nats.js.errors.APIError):
        # nats-py's str() of an API error repeats itself and prints "None"s.
        details = [f"{label} {value}" for label, value in
                   (("code", exc.code), ("err_code", exc.err_code)) if value is not None]
        text = f"{name} ({', '.join(details)})" if details else name
        return f"{text}: {exc.description}" if exc.description else text
    text = str(exc).strip()
    return f"{name}: {text}" if text and text != name else name


def _is_absent(headers: Mapping[str, str] | None) -> bool:
    """True for a delete, a purge or a server marker (TTL or max-age expiry)."""
    if not headers:
        return False
    return headers.get(_KV_OPERATION) in ("DEL", "PURGE") or _MARKER_REASON in headers


def _parse_duration(text: str) -> float | None:
    """Seconds in a ``Nats-TTL`` header ("5", "5s", "2m", "1h"), or None."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h)?", text.strip())
    if match is None:
        return None
    unit = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}[match.group(2) or "s"]
    return float(match.group(1)) * unit


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


def _check_bucket_name(bucket: object) -> str:
    if not isinstance(bucket, str):
        raise TypeError(f"bucket must be a str, got {type(bucket).__name__}: {bucket!r:.80}")
    if not _BUCKET_RE.fullmatch(bucket):
        raise ValueError(
            f"invalid bucket name {bucket!r:.80}: NATS KV bucket names are 1 or more of the "
            "characters A-Z a-z 0-9 _ -"
        )
    if len(bucket) > MAX_BUCKET_LENGTH:
        raise ValueError(
            f"bucket name {bucket[:40]!r}... is {len(bucket)} characters long; NATS KV "
            f"bucket names are at most {MAX_BUCKET_LENGTH} characters (the stream name "
            "KV_<bucket> at most 255)")
    return bucket


async def _js_api(nc: Any, subject: str, payload: Mapping[str, Any] | None = None
                  ) -> dict[str, Any]:
    """One raw JetStream API request (asyncio side); raises nats-py's APIError."""
    data = json.dumps(payload).encode() if payload is not None else b""
    msg = await nc.request(f"$JS.API.{subject}", data, timeout=REQUEST_TIMEOUT)
    response: dict[str, Any] = json.loads(msg.data)
    if "error" in response:
        nats.js.errors.APIError.from_error(response["error"])  # always raises
    return response


# -- the backend ----------------------------------------------------------------


class NatsBackend(Backend):
    """A JetStream KV bucket as a lease store. Made by :func:`open_nats_backend`.

    Revisions are stream sequences: they grow across all keys of the bucket, and
    expiry markers and deletes take sequences too. TTLs are whole seconds, at least
    1, and no longer than the bucket's max age (if it has one): see
    :meth:`check_ttl`. Methods are trio-async; each one is one or a few JetStream
    requests on the backend's trio-asyncio loop.

    Attributes:
        bucket (str): The KV bucket's name.
        max_age (float): The bucket's max age in seconds, 0 for none.
        connection (nats.aio.client.Client): The nats-py connection (an escape
            hatch: call it from asyncio code, for example through
            ``trio_asyncio.aio_as_trio(..., loop=backend.loop)``).
        loop: The trio-asyncio loop the connection lives on.
    """

    def __init__(self, *, loop: Any, nc: Any, bucket: str, max_age: float,
                 address: str, link: _Link | None = None) -> None:
        self.loop = loop
        self.connection = nc
        self.bucket = bucket
        self.max_age = max_age
        self._address = address
        self._link = link if link is not None else _Link()
        self._js = nc.jetstream(timeout=REQUEST_TIMEOUT)
        self._stream = f"KV_{bucket}"
        self._prefix = f"$KV.{bucket}."
        self._kv = nats.js.kv.KeyValue(name=bucket, stream=self._stream, pre=self._prefix,
                                       js=self._js, direct=False)
        # (key, revision) pairs known to be live values, not markers: see _aio_require_value.
        self._values: OrderedDict[tuple[str, int], None] = OrderedDict()
        self._closed = False

    def __repr__(self) -> str:
        state = " closed" if self._closed else ""
        max_age = f" max_age={self.max_age:g}s" if self.max_age else ""
        return f"<NatsBackend bucket={self.bucket!r} servers={self._address!r}{max_age}{state}>"

    # -- bridging ----------------------------------------------------------------

    def _subject(self, key: str) -> str:
        return self._prefix + key

    async def _call(self, what: str, fn: Callable[..., Awaitable[T]], *args: Any,
                    **kwargs: Any) -> T:
        """Run the asyncio coroutine function *fn* on our loop; map transport errors."""
        if self._closed:
            raise trio.ClosedResourceError(f"{self!r} is closed")
        if not self.connection.is_connected:
            # nats-py would buffer the request and send it after reconnecting: a write
            # could then land long after the caller gave up on it. Refuse instead.
            raise BackendUnavailable(f"{what}: not connected to NATS at {self._address} "
                                     "(reconnecting)")
        try:
            result: T = await trio_asyncio.aio_as_trio(fn, loop=self.loop)(*args, **kwargs)
        except nats.js.errors.NotFoundError as exc:
            if exc.err_code == _STREAM_NOT_FOUND:
                raise BackendUnavailable(
                    f"{what}: bucket {self.bucket!r} not found at {self._address} "
                    "(was it deleted?)") from exc
            raise BackendUnavailable(f"{what} at {self._address}: {_describe(exc)}") from exc
        except _TRANSIENT as exc:
            raise BackendUnavailable(f"{what} at {self._address}: {_describe(exc)}") from exc
        except asyncio.CancelledError as exc:
            # trio's own cancellation arrives as trio.Cancelled; this one came from
            # the asyncio side (the loop shutting down under us).
            raise BackendUnavailable(f"{what}: the asyncio loop cancelled the call") from exc
        return result

    def _remember(self, key: str, revision: int) -> None:
        self._values[(key, revision)] = None
        self._values.move_to_end((key, revision))
        while len(self._values) > 4096:
            self._values.popitem(last=False)

    # -- asyncio side ------------------------------------------------------------

    async def _aio_last(self, key: str) -> Any:
        """The last message on *key*'s subject (a value or a marker), or None."""
        try:
            return await self._js.get_msg(self._stream, subject=self._subject(key))
        except nats.js.errors.NotFoundError as exc:
            if exc.err_code == _STREAM_NOT_FOUND:
                raise
            return None

    async def _aio_publish(self, key: str, value: bytes, expected: int,
                           ttl: float | None, extra: Mapping[str, str] | None = None) -> int:
        """Publish on *key* if its last sequence is *expected*; return the new revision.

        Raises nats-py's ``APIError`` (err_code 10071 or 10164) if it is not.
        """
        headers = {_EXPECTED_LAST: str(expected), **(extra or {})}
        ack = await self._js.publish(self._subject(key), value, headers=headers,
                                     msg_ttl=ttl)
        seq: int = ack.seq
        return seq

    async def _aio_create(self, key: str, value: bytes, ttl: float) -> int:
        expected = 0
        # Each retry follows a concurrent change; a live value ends the loop.
        for _ in range(10):
            try:
                return await self._aio_publish(key, value, expected, ttl)
            except nats.js.errors.APIError as exc:
                if exc.err_code not in _WRONG_LAST_SEQUENCE:
                    raise
            last = await self._aio_last(key)
            if last is None:
                expected = 0
            elif _is_absent(last.headers):
                # A marker, delete or purge: the key is free; write over it by CAS.
                expected = last.seq
            else:
                raise KeyExists(key)
        raise KeyExists(f"{key}: changed under every attempt to create it")

    async def _aio_require_value(self, key: str, revision: int) -> None:
        """Raise RevisionMismatch unless *revision* is a live value of *key*.

        The server would accept a compare-and-set on the sequence of a marker or
        delete, but the protocol says such a key has no live entry.
        """
        if (key, revision) in self._values:
            return
        if revision < 1:
            raise RevisionMismatch(f"{key}: no live entry has revision {revision}")
        try:
            msg = await self._js.get_msg(self._stream, seq=revision)
        except nats.js.errors.NotFoundError as exc:
            if exc.err_code == _STREAM_NOT_FOUND:
                raise
            raise RevisionMismatch(
                f"{key}: revision {revision} is not the live entry (superseded or gone)"
            ) from None
        if msg.subject != self._subject(key):
            raise RevisionMismatch(f"{key}: revision {revision} belongs to another key")
        if _is_absent(msg.headers):
            raise RevisionMismatch(
                f"{key}: revision {revision} is a delete or expiry marker, not a live entry")
        self._remember(key, revision)

    async def _aio_cas(self, key: str, value: bytes, revision: int, ttl: float | None,
                       extra: Mapping[str, str] | None = None) -> int:
        await self._aio_require_value(key, revision)
        try:
            return await self._aio_publish(key, value, revision, ttl, extra)
        except nats.js.errors.APIError as exc:
            if exc.err_code in _WRONG_LAST_SEQUENCE:
                raise RevisionMismatch(
                    f"{key}: expected revision {revision}, the store has another "
                    f"({exc.description})") from None
            raise

    async def _aio_keys(self) -> list[str]:
        # nats-py's kv.keys() raises when empty and leaks its watcher on errors.
        watcher: Any = await self._kv.watchall(ignore_deletes=True, meta_only=True,
                                               inactive_threshold=WATCH_INACTIVE_THRESHOLD)
        keys: set[str] = set()
        try:
            while True:
                update = await watcher.updates(timeout=REQUEST_TIMEOUT)
                if update is None:  # nats-py: the initial state has been delivered
                    break
                keys.add(update.key)
        finally:
            await watcher.stop()
        return sorted(keys)

    # -- the protocol ------------------------------------------------------------

    def check_ttl(self, ttl: float) -> None:
        """Refuse a lease TTL this bucket cannot keep.

        Raises:
            ValueError: unless *ttl* is a whole number of seconds, at least 1 (NATS
                per-message TTLs), and no longer than the bucket's max age when it
                has one (the store would drop the lease before its holder's
                deadline).
        """
        if (isinstance(ttl, bool) or not isinstance(ttl, int | float)
                or not math.isfinite(ttl) or ttl < 1 or ttl != int(ttl)):
            raise ValueError(
                f"ttl={ttl!r}: NATS per-message TTLs are whole seconds, at least 1 "
                "(use ttl=1, 2, 15, ...)")
        if ttl > MAX_TTL:
            raise ValueError(
                f"ttl={ttl!r}: NATS per-message TTLs are whole seconds, at least 1 and at "
                f"most {MAX_TTL} (nats-server drops a message with a much longer TTL at "
                "once, while its holder would lead on)")
        if self.max_age and ttl > self.max_age:
            raise ValueError(
                f"ttl={ttl!r} is longer than the max age of bucket {self.bucket!r} "
                f"({self.max_age:g} s): the store would drop the lease before its "
                "holder's deadline; use a ttl <= max age, or a bucket with max age 0")

    async def create(self, key: str, value: bytes, *, ttl: float) -> int:
        check_key(key)
        self.check_ttl(ttl)
        revision = await self._call(f"create {key!r}", self._aio_create, key, bytes(value),
                                    ttl)
        self._remember(key, revision)
        return revision

    async def update(self, key: str, value: bytes, *, revision: int, ttl: float) -> int:
        check_key(key)
        self.check_ttl(ttl)
        new_revision = await self._call(f"update {key!r}", self._aio_cas, key, bytes(value),
                                        revision, ttl)
        self._remember(key, new_revision)
        return new_revision

    async def get(self, key: str) -> Entry | None:
        check_key(key)
        msg = await self._call(f"get {key!r}", self._aio_last, key)
        if msg is None or _is_absent(msg.headers):
            return None
        self._remember(key, msg.seq)
        return Entry(key, bytes(msg.data or b""), msg.seq, self._expires_in(msg))

    def _expires_in(self, msg: Any) -> float | None:
        """Seconds the entry has left, for display (client and server clocks differ)."""
        limits: list[float] = []
        if msg.headers and _MSG_TTL in msg.headers:
            ttl = _parse_duration(msg.headers[_MSG_TTL])
            if ttl is not None:
                limits.append(ttl)
        if self.max_age:
            limits.append(self.max_age)
        if not limits or msg.time is None:
            return None
        sent: datetime.datetime = msg.time
        age = (datetime.datetime.now(datetime.UTC) - sent).total_seconds()
        return max(0.0, min(limits) - age)

    async def delete(self, key: str, *, revision: int) -> None:
        check_key(key)
        await self._call(f"delete {key!r}", self._aio_cas, key, b"", revision, None,
                         {_KV_OPERATION: "DEL"})
        self._values.pop((key, revision), None)

    async def keys(self) -> list[str]:
        return await self._call("list keys", self._aio_keys)

    def watch(self, key: str) -> AbstractAsyncContextManager[AsyncIterator[Entry | None]]:
        check_key(key)
        return self._watch(key)

    @asynccontextmanager
    async def _watch(self, key: str) -> AsyncIterator[AsyncIterator[Entry | None]]:
        watcher = await self._call(f"watch {key!r}", self._kv.watch, key,
                                   inactive_threshold=WATCH_INACTIVE_THRESHOLD)
        updates = _Updates(self, key, watcher)
        try:
            yield updates
        finally:
            await updates.aclose()

    async def aclose(self) -> None:
        """Close the connection (flushing what is pending); bounded and shielded."""
        if self._closed:
            return
        self._closed = True
        self._link.closing = True
        with trio.CancelScope(shield=True) as scope:
            scope.deadline = trio.current_time() + REQUEST_TIMEOUT
            try:
                await trio_asyncio.aio_as_trio(self.connection.close, loop=self.loop)()
            except (*_TRANSIENT, asyncio.CancelledError) as exc:
                logger.debug("closing the NATS connection to %s: %s", self._address, exc)
        if scope.cancelled_caught:
            logger.warning("closing the NATS connection to %s took longer than %g s",
                           self._address, REQUEST_TIMEOUT)


class _Updates:
    """The async iterator of :meth:`NatsBackend.watch`.

    Each item is fetched by one bridged call, so no trio cancel scope or nursery
    stays open between items: the iterator may be driven from async generators and
    from different tasks, and a cancelled ``__anext__`` loses nothing (the
    asyncio-side read of the watcher's queue survives it and is reused).
    """

    def __init__(self, backend: NatsBackend, key: str, watcher: Any) -> None:
        self._backend = backend
        self._key = key
        self._watcher = watcher
        self._getter: asyncio.Task[Any] | None = None
        self._yielded = False
        self._last: int | None = None  # revision of the last Entry yielded, None for None
        self._closed = False
        self._disconnects = backend._link.disconnects

    def __aiter__(self) -> _Updates:
        return self

    async def _aio_next(self) -> Any:
        while True:
            if self._backend._link.disconnects != self._disconnects:
                # The ordered consumer may take 10 s or more to resume, and may miss what
                # expired meanwhile: break the watch; the caller watches afresh.
                raise BackendUnavailable(
                    f"watch of {self._key!r} broke: the connection to NATS at "
                    f"{self._backend._address} was lost")
            if self._getter is None:
                self._getter = asyncio.ensure_future(self._watcher._updates.get())
            # asyncio.wait (unlike wait_for) never cancels the getter: an item that
            # arrives while we are being cancelled stays for the next call.
            done, _ = await asyncio.wait({self._getter}, timeout=WATCH_LIVENESS_INTERVAL)
            if done:
                getter, self._getter = self._getter, None
                return getter.result()

    async def __anext__(self) -> Entry | None:
        if self._closed:
            raise StopAsyncIteration
        while True:
            update = await self._backend._call(f"watch {self._key!r}", self._aio_next)
            if isinstance(update, nats.js.kv.StopIterSentinel):
                raise StopAsyncIteration
            if update is None:
                # nats-py's "initial state delivered" sentinel: the key had no message.
                if self._yielded:
                    continue
                state: Entry | None = None
            elif update.operation in ("DEL", "PURGE"):  # also expiry markers
                state = None
            else:
                state = Entry(self._key, bytes(update.value or b""), update.revision)
            revision = None if state is None else state.revision
            if self._yielded and revision == self._last:
                # A second marker (say a purge after the expiry marker) is no change.
                continue
            if state is not None:
                self._backend._remember(self._key, state.revision)
            self._yielded = True
            self._last = revision
            return state

    async def aclose(self) -> None:
        """Stop the watcher (unsubscribe); idempotent, shielded and bounded."""
        if self._closed:
            return
        self._closed = True
        getter, self._getter = self._getter, None
        if getter is not None:
            getter.cancel()
        if self._backend._closed:
            return
        with trio.move_on_after(REQUEST_TIMEOUT, shield=True):
            try:
                await trio_asyncio.aio_as_trio(self._aio_stop, loop=self._backend.loop)()
            except (*_TRANSIENT, asyncio.CancelledError) as exc:
                logger.debug("stopping a watcher of %s: %s", self._key, exc)

    async def _aio_stop(self) -> None:
        await self._watcher.stop()
        # Every campaign that waits opens a watch. Left to the server, a closed
        # watch's consumer lingers for WATCH_INACTIVE_THRESHOLD, and a stream takes
        # at most 1,000 consumers by default (nats-server 2.15): many candidates
        # churning would run out. Delete it now; the threshold is the backstop.
        sub = getattr(self._watcher, "_sub", None)
        stream, consumer = getattr(sub, "_stream", None), getattr(sub, "_consumer", None)
        if stream and consumer:
            with contextlib.suppress(nats.js.errors.NotFoundError):
                await self._backend._js.delete_consumer(stream, consumer)


# -- opening --------------------------------------------------------------------


class _Link:
    """Connection state shared by the callbacks, the backend and its watchers."""

    def __init__(self) -> None:
        self.connected = False  # the first connect succeeded
        self.closing = False  # aclose() began: a disconnect now is ours
        self.disconnects = 0  # a watcher opened before a disconnect may have missed news


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
                     storage: str) -> float:
    """Check the server and the bucket (asyncio side); return the bucket's max age."""
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
    stream = f"KV_{bucket}"
    try:
        info = await _js_api(nc, f"STREAM.INFO.{stream}")
    except nats.js.errors.NotFoundError:
        try:
            await js.create_key_value(
                bucket=bucket, history=1, replicas=replicas,
                storage=api.StorageType(storage), limit_marker_ttl=MARKER_TTL,
                description="trio-noleader leases")
            logger.info("created NATS KV bucket %r at %s", bucket, address)
            return 0.0
        except nats.js.errors.APIError as exc:
            if exc.err_code != _STREAM_NAME_EXISTS:
                raise
            # Another process created it first, perhaps with another config: check it.
            info = await _js_api(nc, f"STREAM.INFO.{stream}")
    return await _aio_adapt_bucket(nc, address, bucket, info["config"])


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
        raise TypeError(f"servers must be a str or a list of str, got "
                        f"{type(servers).__name__}: {servers!r:.80}")
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
    bucket: str = DEFAULT_BUCKET,
    replicas: int = 1,
    storage: str = "file",
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
        bucket (str): The KV bucket's name (``[A-Za-z0-9_-]+``).
        replicas (int): Replicas of a bucket created here (1 to 5).
        storage (str): ``"file"`` or ``"memory"``, for a bucket created here.
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
    _check_bucket_name(bucket)
    if isinstance(replicas, bool) or not isinstance(replicas, int) or not 1 <= replicas <= 5:
        raise ValueError(f"replicas={replicas!r}: must be an int from 1 to 5")
    if storage not in ("file", "memory"):
        raise ValueError(f"storage={storage!r}: must be 'file' or 'memory'")
    if "servers" in connect_options:
        raise TypeError("pass the servers as the first argument, not servers=")
    address = ", ".join(redact_url(server) for server in server_list)
    secrets = _secrets(server_list, connect_options)
    connect_to: str | list[str] = server_list[0] if len(server_list) == 1 else server_list

    with bare_exceptions():
        async with AsyncExitStack() as stack:
            loop = trio_asyncio.current_loop.get()
            if loop is None or loop.is_closed():
                loop = await stack.enter_async_context(trio_asyncio.open_loop())
            link = _Link()
            nc = await _bridge(loop, _aio_connect, connect_to, address, secrets,
                               dict(connect_options), link)
            backend = NatsBackend(loop=loop, nc=nc, bucket=bucket, max_age=0.0,
                                  address=address, link=link)
            stack.push_async_callback(backend.aclose)
            try:
                backend.max_age = await _bridge(loop, _aio_setup, nc, address, bucket,
                                                replicas, storage)
            except (*_TRANSIENT, asyncio.CancelledError) as exc:
                raise BackendUnavailable(
                    f"setting up bucket {bucket!r} at {address}: "
                    f"{_scrub(_describe(exc), secrets)}") from exc
            logger.debug("opened %r", backend)
            async with backend_scope(backend):
                yield backend


async def _bridge(loop: Any, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
    result: T = await trio_asyncio.aio_as_trio(fn, loop=loop)(*args)
    return result


def parse_nats_url(url: str) -> tuple[list[str], str, dict[str, Any]]:
    """Split ``nats://[user:password@|token@]host[:port][,host...][/bucket]``.

    Returns:
        tuple: ``(servers, bucket, options)``: server URLs without credentials, the
        bucket (default ``noleader``), and keyword arguments for
        :func:`open_nats_backend` (``user``/``password`` or ``token``, plus the
        query parameters ``replicas`` and ``storage``).

    Raises:
        ValueError: for a malformed URL (the message never shows a secret).
    """
    shown = redact_url(url)
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in ("nats", "tls"):
        raise ValueError(f"not a NATS URL: {shown!r} (expected nats://host:port/bucket)")
    # Hosts and bucket names never contain "@": the last one ends the credentials.
    userinfo, at, after = rest.rpartition("@")
    hostlist, slash, tail = after.partition("/")
    hostlist, question, query = hostlist.partition("?")
    parts = urlsplit(f"x:///{tail}" if slash else f"x:///?{query}" if question else "x:///")
    if parts.fragment or "#" in hostlist:
        raise ValueError(f"NATS URL {shown!r}: a fragment (#...) means nothing here")
    options: dict[str, Any] = {}
    if at:
        user, colon, password = userinfo.partition(":")
        if colon:
            options["user"] = unquote(user)
            options["password"] = unquote(password)
        elif user:
            options["token"] = unquote(user)
    servers = []
    for host in hostlist.split(","):
        try:
            hostport = urlsplit(f"{scheme}://{host}")
            port = hostport.port or 4222
        except ValueError:
            raise ValueError(f"NATS URL {shown!r}: bad host or port {host!r}") from None
        if not hostport.hostname:
            raise ValueError(f"NATS URL {shown!r}: no host")
        name = hostport.hostname
        servers.append(f"{scheme}://{f'[{name}]' if ':' in name else name}:{port}")
    path = unquote(parts.path.strip("/"))
    bucket = path or DEFAULT_BUCKET
    try:
        _check_bucket_name(bucket)
    except ValueError as exc:
        raise ValueError(
            f"NATS URL {shown!r:.120}: the path must be a bucket name, like "
            f"nats://host:4222/noleader: {exc}") from None
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name == "replicas":
            try:
                options["replicas"] = int(value)
            except ValueError:
                raise ValueError(f"NATS URL {shown!r}: replicas={value!r} is no int") from None
        elif name == "storage":
            options["storage"] = value
        else:
            raise ValueError(
                f"NATS URL {shown!r}: unknown parameter {name!r} (known: replicas, storage)")
    return servers, bucket, options


def open_nats_backend_from_url(url: str) -> AbstractAsyncContextManager[NatsBackend]:
    """:func:`open_nats_backend` for ``nats://user:password@host:port/bucket``.

    The bucket comes from the path (default ``noleader``); ``token@host`` passes a
    token; several servers are comma-separated (``nats://h1:4222,h2:4222/b``);
    ``?replicas=3&storage=memory`` apply to a bucket created here. ``tls://`` asks
    for TLS.

    Raises:
        ValueError: for a malformed URL, at once.
    """
    servers, bucket, options = parse_nats_url(url)
    return open_nats_backend(servers, bucket=bucket, **options)
