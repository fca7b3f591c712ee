"""NATS JetStream Key-Value backend, driven from Trio through trio-asyncio.

nats-py is an asyncio library: every call into it goes through
``trio_asyncio.aio_as_trio`` (see :mod:`trio_noleader._aio`) on the loop the
backend was opened with. This module is the key-value protocol and its watch;
:mod:`trio_noleader._nats_setup` connects and provisions the bucket. Only these
two import ``nats`` (the ``nats`` extra).

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
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, TypeVar

import nats.errors
import nats.js.errors
import nats.js.kv
import trio
import trio.lowlevel

from . import _aio
from ._exceptions import (
    BackendUnavailable,
    KeyExists,
    NewStore,
    NoLeaderError,
    RevisionMismatch,
)
from ._nats_base import (
    _EXPECTED_LAST,
    _KV_OPERATION,
    _MSG_TTL,
    _STREAM_NOT_FOUND,
    _TRANSIENT,
    _WRONG_LAST_SEQUENCE,
    IDENTITY_INTERVAL,
    MAX_TTL,
    REQUEST_TIMEOUT,
    WATCH_INACTIVE_THRESHOLD,
    _describe,
    _is_absent,
    _Link,
    _parse_duration,
)
from ._nats_watch import Updates
from ._types import Entry, check_key, type_error
from .abc import Backend, Update

__all__ = ["NatsBackend"]

logger = logging.getLogger("trio_noleader")

T = TypeVar("T")

# -- the backend ----------------------------------------------------------------


class _AckBatch:
    """The acks of one batch of publishes, as they come."""

    def __init__(self, number: int, size: int, done: asyncio.Future[None]) -> None:
        self.number = number
        self.acks: list[dict[str, Any] | None] = [None] * size
        self.left = size
        self.done = done


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
        created (str): When the bucket's stream was created, as the server says:
            the identity of the store. A bucket deleted and created again, or lost
            with a server's memory storage, is another store (see
            :meth:`guard_identity`).
        new_store_grace (bool): Whether the first lease on a new bucket waits out
            one ttl (see :func:`open_nats_backend`).
    """

    def __init__(self, *, loop: Any, nc: Any, bucket: str, max_age: float,
                 address: str, link: _Link | None = None,
                 provision: Callable[[], Awaitable[tuple[float, str, float]]] | None = None,
                 new_store_grace: bool = True) -> None:
        self.loop = loop
        self.connection = nc
        self.bucket = bucket
        self.max_age = max_age
        self.created = ""
        self.new_store_grace = new_store_grace
        # When the store was made, on our clock (from its age by the server's).
        self._born = -math.inf
        self._provision = provision
        self._check_now = trio.Event()
        # The link's disconnect count when the bucket's identity was last checked.
        self._identity_epoch = 0
        self._address = address
        self._link = link if link is not None else _Link()
        self._js = nc.jetstream(timeout=REQUEST_TIMEOUT)
        self._stream = f"KV_{bucket}"
        self._prefix = f"$KV.{bucket}."
        self._kv = nats.js.kv.KeyValue(name=bucket, stream=self._stream, pre=self._prefix,
                                       js=self._js, direct=False)
        # (key, revision) pairs known to be live values, not markers: see _aio_require_value.
        self._values: OrderedDict[tuple[str, int], None] = OrderedDict()
        # key -> sequence of the last delete, purge or expiry marker seen on it: a
        # create expects it, which takes one round trip instead of three.
        self._absent: OrderedDict[str, int] = OrderedDict()
        self._closed = False
        # Renewal batches: one reply subscription for their acks (_aio_publish_all).
        self._acks_sub: Any = None
        self._acks_prefix = ""
        self._acks_next = 0
        self._acks_batches: dict[int, _AckBatch] = {}

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
            result: T = await _aio.call(self.loop, fn, *args, **kwargs)
        except nats.js.errors.NotFoundError as exc:
            if exc.err_code == _STREAM_NOT_FOUND:
                self._check_now.set()  # re-create it, as a new store
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

    # -- identity ----------------------------------------------------------------

    async def guard_identity(self) -> None:
        """Runs beside the backend: notice a bucket that is not the one we opened.

        Every :data:`IDENTITY_INTERVAL` seconds (so within a second of a
        reconnect), and at once when a call finds the bucket gone, the stream's
        creation time is checked. A missing bucket is created again with the
        settings it was opened with; a bucket created anew (by us, an operator, or a
        restarted server that kept it in memory) is a new store: what this backend
        knew of the old one is forgotten and open watches break (they resume with
        the new store's state), so that nothing is ever taken for a lease of the old
        store. Leases of the old store are lost: their renewals find no such
        revision, and their holders step down by their deadlines.
        """
        if self._provision is None:
            return
        while not self._closed:
            with trio.move_on_after(IDENTITY_INTERVAL):
                await self._check_now.wait()
            self._check_now = trio.Event()
            try:
                await self.check_identity()
            except BackendUnavailable as exc:
                logger.debug("checking bucket %r at %s: %s", self.bucket, self._address, exc)

    async def check_identity(self) -> bool:
        """Check the bucket now (creating it if it is missing); True if it was replaced."""
        assert self._provision is not None
        before = self.created
        epoch = self._link.disconnects
        if not self.learn(*await self._call(f"check bucket {self.bucket!r}",
                                            self._provision)):
            self._identity_epoch = epoch
            return False
        self._values.clear()
        self._absent.clear()
        self._link.disconnects += 1  # open watches saw the old store: break them
        self._identity_epoch = self._link.disconnects
        logger.warning("NATS KV bucket %r at %s is a new store (created %s; the one opened "
                       "was created %s): leases of the old one are gone",
                       self.bucket, self._address, self.created, before)
        return True

    def learn(self, max_age: float, created: str, age: float) -> bool:
        """Take in the bucket's settings and identity; True if the identity changed."""
        self.max_age = max_age
        if created == self.created:
            return False
        self.created = created
        self._born = trio.current_time() - age
        return True

    def _remember(self, key: str, revision: int) -> None:
        self._values[(key, revision)] = None
        self._values.move_to_end((key, revision))
        while len(self._values) > 4096:
            self._values.popitem(last=False)
        self._absent.pop(key, None)

    def _vacated(self, key: str, revision: int) -> None:
        """*key*'s last message is the delete, purge or marker at *revision*."""
        if revision > self._absent.get(key, 0):
            self._absent[key] = revision
            self._absent.move_to_end(key)
            while len(self._absent) > 4096:
                self._absent.popitem(last=False)

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
        # A compare-and-set on the key's last sequence: that of the marker, delete
        # or purge we last saw on it (the watch or a read delivered it), else 0
        # (never written). Only if that is stale, read the last message and retry.
        expected = self._absent.get(key, 0)
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
                self._vacated(key, last.seq)
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
        # nats-py's kv.keys() raises when empty and leaks its watcher on errors; its
        # updates(timeout=...) wraps every entry in a task of its own (asyncio's
        # wait_for), which was most of a listing's cost. One timeout instead, pushed
        # on while entries keep coming: a big bucket may take longer than one
        # REQUEST_TIMEOUT, a silent server may not.
        watcher: Any = await self._kv.watchall(ignore_deletes=True, meta_only=True,
                                               inactive_threshold=WATCH_INACTIVE_THRESHOLD)
        keys: set[str] = set()
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT) as limit:
                async for update in watcher:
                    if update is None:  # nats-py: the initial state has been delivered
                        break
                    keys.add(update.key)
                    if len(keys) % 256 == 0:
                        limit.reschedule(loop.time() + REQUEST_TIMEOUT)
        finally:
            await watcher.stop()
        return sorted(keys)

    # -- the protocol ------------------------------------------------------------

    def check_ttl(self, ttl: float) -> None:
        """Refuse a lease TTL this bucket cannot keep.

        Raises:
            TypeError: if *ttl* is not a number.
            ValueError: unless *ttl* is a whole number of seconds, at least 1 (NATS
                per-message TTLs), and no longer than the bucket's max age when it
                has one (the store would drop the lease before its holder's
                deadline).
        """
        if isinstance(ttl, bool) or not isinstance(ttl, int | float):
            raise type_error("ttl", ttl, "a number of seconds")
        if not math.isfinite(ttl) or ttl < 1 or ttl != int(ttl):
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
        if (self.new_store_grace and self._provision is not None
                and self._link.disconnects != self._identity_epoch):
            # Across a disconnect the server may have lost the bucket and another
            # replica made it anew: know which store this is before the first lease
            # on it (one more round trip, only after a reconnect).
            await self.check_identity()
        young = self._born + ttl - trio.current_time()
        if self.new_store_grace and young > 0:
            # A leader of the store this one replaced may still be in its term: its
            # deadline lies less than a ttl after its last renewal, which came
            # before this store existed.
            raise NewStore(
                f"create {key!r}: bucket {self.bucket!r} at {self._address} is a new "
                f"store; the first lease waits out one ttl ({young:.3g} s more)", young)
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

    async def update_many(self, updates: Sequence[Update]) -> list[int | NoLeaderError]:
        """Publish all the renewals at once, in one call across the asyncio bridge.

        Each is its own compare-and-set with its own outcome; nats-py pipelines the
        publishes on the one connection.
        """
        for update in updates:
            check_key(update.key)
            self.check_ttl(update.ttl)
        results = await self._call(f"update {len(updates)} keys", self._aio_update_many,
                                   updates)
        for update, result in zip(updates, results, strict=True):
            if isinstance(result, int):
                self._remember(update.key, result)
        return results

    async def _aio_update_many(self, updates: Sequence[Update]) -> list[int | NoLeaderError]:
        results: list[int | NoLeaderError | None] = [None] * len(updates)
        messages: list[tuple[str, bytes, dict[str, str]]] = []
        sent: list[int] = []
        for i, update in enumerate(updates):
            try:
                await self._aio_require_value(update.key, update.revision)
            except RevisionMismatch as exc:
                results[i] = exc
                continue
            headers = {_EXPECTED_LAST: str(update.revision), _MSG_TTL: str(int(update.ttl))}
            messages.append((self._subject(update.key), bytes(update.value), headers))
            sent.append(i)
        for i, ack in zip(sent, await self._aio_publish_all(messages), strict=True):
            key = updates[i].key
            if ack is None:
                results[i] = BackendUnavailable(
                    f"update {key!r} at {self._address}: no acknowledgement within "
                    f"{REQUEST_TIMEOUT:g} s (it may still have been applied)")
            elif "error" in ack:
                error = ack["error"]
                if error.get("err_code") in _WRONG_LAST_SEQUENCE:
                    results[i] = RevisionMismatch(
                        f"{key}: expected revision {updates[i].revision}, the store has "
                        f"another ({error.get('description')})")
                else:
                    results[i] = BackendUnavailable(
                        f"update {key!r} at {self._address}: {error.get('description')} "
                        f"(err_code {error.get('err_code')})")
            else:
                results[i] = int(ack["seq"])
        return [r for r in results if r is not None]

    async def _aio_publish_all(self, messages: Sequence[tuple[str, bytes, dict[str, str]]]
                               ) -> list[dict[str, Any] | None]:
        """Publish *messages* at once; return each one's JetStream ack (None if none came).

        ``JetStreamContext.publish`` costs a future, a done callback and a timer per
        message, and each of those is a scheduler pass under trio-asyncio. Here a
        batch shares one wildcard reply subscription (kept for the backend's life)
        and one future, set when the last ack has come.
        """
        if not messages:
            return []
        loop = asyncio.get_running_loop()
        if self._acks_sub is None:
            self._acks_prefix = self.connection.new_inbox()
            self._acks_sub = await self.connection.subscribe(f"{self._acks_prefix}.*",
                                                             cb=self._aio_on_ack)
        self._acks_next += 1
        batch = _AckBatch(self._acks_next, len(messages), loop.create_future())
        self._acks_batches[batch.number] = batch
        try:
            for i, (subject, value, headers) in enumerate(messages):
                await self.connection.publish(subject, value, headers=headers,
                                              reply=f"{self._acks_prefix}.{batch.number}_{i}")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(batch.done), REQUEST_TIMEOUT)
        finally:
            self._acks_batches.pop(batch.number, None)
        return batch.acks

    async def _aio_on_ack(self, msg: Any) -> None:
        token = msg.subject.rpartition(".")[2]
        number, _, index = token.partition("_")
        batch = self._acks_batches.get(int(number)) if number.isdigit() else None
        if batch is None or not index.isdigit() or int(index) >= len(batch.acks):
            return  # the batch gave up waiting
        try:
            ack = json.loads(msg.data)
        except ValueError:
            ack = {"error": {"description": "no responders or a malformed acknowledgement"}}
        if not isinstance(ack, dict):
            ack = {"error": {"description": "a malformed acknowledgement"}}
        slot = int(index)
        if batch.acks[slot] is None:
            batch.acks[slot] = ack
            batch.left -= 1
            if batch.left == 0 and not batch.done.done():
                batch.done.set_result(None)

    def _unavailable(self, what: str, exc: BaseException) -> BackendUnavailable:
        error = BackendUnavailable(f"{what} at {self._address}: {_describe(exc)}")
        error.__cause__ = exc
        return error

    async def get(self, key: str) -> Entry | None:
        check_key(key)
        msg = await self._call(f"get {key!r}", self._aio_last, key)
        if msg is None:
            return None
        if _is_absent(msg.headers):
            self._vacated(key, msg.seq)
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
        sequence = await self._call(f"delete {key!r}", self._aio_cas, key, b"", revision,
                                    None, {_KV_OPERATION: "DEL"})
        self._values.pop((key, revision), None)
        self._vacated(key, sequence)

    async def keys(self) -> list[str]:
        return await self._call("list keys", self._aio_keys)

    def watch(self, key: str) -> AbstractAsyncContextManager[AsyncIterator[Entry | None]]:
        check_key(key)
        return self._watch(key)

    @asynccontextmanager
    async def _watch(self, key: str) -> AsyncIterator[AsyncIterator[Entry | None]]:
        watcher = await self._call(f"watch {key!r}", self._kv.watch, key,
                                   inactive_threshold=WATCH_INACTIVE_THRESHOLD)
        updates = Updates(self, key, watcher)
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
                await _aio.call(self.loop, self.connection.close)
            except (*_TRANSIENT, asyncio.CancelledError) as exc:
                logger.debug("closing the NATS connection to %s: %s", self._address, exc)
        if scope.cancelled_caught:
            logger.warning("closing the NATS connection to %s took longer than %g s",
                           self._address, REQUEST_TIMEOUT)
