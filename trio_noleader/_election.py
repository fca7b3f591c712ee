"""The election core: campaign, the lease as a cancel-scope deadline, renewal, release."""

from __future__ import annotations

import logging
import math
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager, suppress
from contextvars import ContextVar
from typing import TypeVar

import trio

from ._context import resolve_backend
from ._exceptions import (
    BackendUnavailable,
    KeyExists,
    LeadershipLost,
    NoLeaderError,
    RevisionMismatch,
)
from ._reentry import one_per_task
from ._release import RELEASE_TIMEOUT, janitor_for, release_if_ours
from ._types import (
    Entry,
    check_key,
    check_timing,
    decode_value,
    encode_value,
    new_candidate_id,
    type_error,
)
from ._unwrap import bare_exceptions
from ._util import Backoff
from .abc import Backend

__all__ = ["Leadership", "current_leadership", "hold_leadership"]

logger = logging.getLogger("trio_noleader")

T = TypeVar("T")


class _Lost(Exception):
    """Internal: the store shows that the lease is not ours any more."""

    def __init__(self, reason: str, *, expired: bool = False) -> None:
        super().__init__(reason)
        self.expired = expired

#: A campaign whose fresh leases expire this many times in a row before it can renew
#: them, while store round trips take longer than ``ttl - guard - renew_interval``,
#: has a ttl that no round trip fits in: it gives up with ValueError. (Expiries
#: alone, say after an operator's reset, only make it back off.)
MAX_EXPIRED_IN_A_ROW = 3


class Leadership:
    """One term of leadership, yielded by :func:`hold_leadership`.

    Attributes:
        key (str): The election key.
        candidate_id (uuid.UUID): This campaign's candidate id (a fresh UUIDv7).
        token (int): The fencing token of this term: the store revision of the
            acquiring write. Tokens strictly increase across terms of a key; pass it
            to every downstream system you write to so that it can reject stale
            writers.
        cancel_scope (trio.CancelScope): The scope around the body. Its deadline is
            the local lease deadline.
    """

    def __init__(self, key: str, candidate_id: uuid.UUID, token: int, deadline: float) -> None:
        self.key = key
        self.candidate_id = candidate_id
        self.token = token
        self.cancel_scope = trio.CancelScope(deadline=deadline)
        self._resigned = False
        self._lost: str | None = None

    @property
    def deadline(self) -> float:
        """The body's deadline in :func:`trio.current_time` units: ``t_sent + ttl - guard``.

        ``t_sent`` is the local time just before the last successful acquire or
        renewal was sent. Each renewal moves it out. Always finite.
        """
        return self.cancel_scope.deadline

    @property
    def resigned(self) -> bool:
        """True once :meth:`resign` was called."""
        return self._resigned

    def resign(self) -> None:
        """Step down: cancel the body, release the lease, leave the block quietly.

        Synchronous, like :meth:`trio.CancelScope.cancel`; safe to call from any task
        and more than once. The ``async with`` then exits without an exception.
        """
        if not self._resigned and self._lost is None:
            logger.info("resigning %s (candidate %s, token %d)",
                        self.key, self.candidate_id, self.token)
        self._resigned = True
        self.cancel_scope.cancel()

    def _lose(self, reason: str) -> None:
        if self._lost is None and not self._resigned:
            self._lost = reason
            logger.warning("lost leadership of %s (candidate %s, token %d): %s",
                           self.key, self.candidate_id, self.token, reason)
        self.cancel_scope.cancel()

    def __repr__(self) -> str:
        return (f"<Leadership key={self.key!r} candidate_id={self.candidate_id} "
                f"token={self.token} deadline={self.deadline:.3f}>")


_current_leadership: ContextVar[Leadership | None] = ContextVar(
    "trio_noleader_current_leadership", default=None)


def current_leadership() -> Leadership:
    """The :class:`Leadership` of the innermost ``hold_leadership`` block around the caller.

    Child tasks started inside the block see it too. Most useful with
    :func:`run_as_leader`, whose function is not handed its term: call this to get
    the term's fencing token.

    Raises:
        NoLeaderError: outside any ``hold_leadership`` block.
    """
    lead = _current_leadership.get()
    if lead is None:
        raise NoLeaderError("current_leadership() called outside hold_leadership/run_as_leader")
    return lead


class _Campaign:
    """The state of one campaign: its candidate id and what it knows of its writes."""

    def __init__(self, backend: Backend, key: str, ttl: float, renew_interval: float,
                 guard: float, wait: bool) -> None:
        self.backend = backend
        self.key = key
        self.ttl = ttl
        self.renew_interval = renew_interval
        self.guard = guard
        self.wait = wait
        self.candidate_id = new_candidate_id()
        # The revision we last know we wrote, and the local time just before it was sent.
        self.revision: int | None = None
        self.base = -math.inf
        self.token = 0
        # The send time of the earliest write of ours whose fate is unknown (it timed
        # out, was cancelled or lost its reply): it may have been applied, late even.
        self.unresolved: float | None = None
        self.renew_now = False
        self.failures = 0
        self.last_error: BaseException | None = None
        # The slowest store round trip of a successful write so far (seconds).
        self.round_trip = 0.0

    # -- helpers -----------------------------------------------------------------

    @property
    def deadline(self) -> float:
        return self.base + self.ttl - self.guard

    def _ours(self, entry: Entry | None) -> bool:
        return (entry is not None
                and decode_value(entry.value, entry.revision)[0] == self.candidate_id)

    async def _call(self, fn: Callable[[], Awaitable[T]]) -> T:
        """Run one store call with a time limit; a timeout is a transient failure."""
        try:
            with trio.fail_after(max(self.renew_interval, 0.001)):
                return await fn()
        except trio.TooSlowError as exc:
            raise BackendUnavailable(
                f"store call on {self.key!r} took longer than {self.renew_interval:.3g} s"
            ) from exc

    async def _send(self, write: Callable[[], Awaitable[int]]) -> int:
        """Send one lease write (create or renewal), keeping the books on its fate.

        Until it answers, the write may land, now or late: ``unresolved`` keeps the
        send time of the earliest such write. A definite refusal (``KeyExists``,
        ``RevisionMismatch``) puts the books back as they were; success makes the
        write's send time the base of the deadline. Returns the new revision.
        """
        sent = trio.current_time()
        earlier = self.unresolved
        self.unresolved = sent if earlier is None else earlier
        try:
            revision = await self._call(write)
        except (KeyExists, RevisionMismatch):
            self.unresolved = earlier
            raise
        self.revision = revision
        self.base = sent
        self.unresolved = None
        self.renew_now = False
        self.round_trip = max(self.round_trip, trio.current_time() - sent)
        return revision

    def deadline_passed(self) -> str:
        """Why a term whose deadline passed was lost (the one message for it)."""
        reason = "renewals did not succeed before the lease deadline"
        if self.last_error is not None:
            reason += f" ({self.failures} failed, last: {self.last_error})"
        return reason

    def _adopt(self, entry: Entry) -> None:
        """Our candidate id is in the store: the lease is ours at that revision."""
        _, token = decode_value(entry.value, entry.revision)
        # The entry holds our id, so its value is what we wrote: its token is this
        # term's (a campaign that lost a lease and re-created it has a new one).
        self.token = token if token is not None else entry.revision
        if entry.revision != self.revision:
            # Written by one of our unresolved writes: its TTL runs from no earlier
            # than the earliest of those was sent. (At our last known revision, the
            # TTL still runs from that write's send time, self.base.)
            if self.unresolved is None:
                raise _Lost(f"our candidate id is at revision {entry.revision}, "
                            "which no write of ours can explain")
            self.base = self.unresolved
            self.unresolved = None
        self.revision = entry.revision
        self.renew_now = True

    # -- campaign ----------------------------------------------------------------

    async def campaign(self) -> None:
        """Return once elected with a deadline that can survive a renewal round trip."""
        janitor = janitor_for(self.backend)
        if len(janitor):
            # Leases we failed to release earlier go first, but never hold us up.
            with trio.move_on_after(self.renew_interval), suppress(BackendUnavailable):
                await janitor.sweep(self.backend)
        # Capped at renew_interval: after an outage a candidate is back within one
        # renewal period of the store, not a whole ttl.
        backoff = Backoff(min(0.1, self.renew_interval / 4), min(5.0, self.renew_interval))
        expired_in_a_row = 0
        while True:
            try:
                if await self._try_acquire():
                    await self._make_safe()
                    return
                if not self.wait:
                    raise trio.WouldBlock(f"{self.key!r} is held by another candidate")
                await self._await_vacancy()
                backoff.reset()
            except BackendUnavailable as exc:
                delay = backoff.next()
                logger.warning("campaign for %s: store unavailable (%s); retrying in %.2g s",
                               self.key, exc, delay)
                await trio.sleep(delay)
            except _Lost as exc:
                self.revision = None
                expired_in_a_row = expired_in_a_row + 1 if exc.expired else 0
                room = self.ttl - self.guard - self.renew_interval
                if expired_in_a_row >= MAX_EXPIRED_IN_A_ROW and self.round_trip >= room:
                    raise ValueError(
                        f"ttl={self.ttl!r}: {expired_in_a_row} leases in a row expired "
                        "in the store before they could be renewed; store round trips "
                        f"take up to {self.round_trip:.3g} s, and the ttl must leave room "
                        "for a renewal round trip after guard and renew_interval"
                    ) from None
                delay = backoff.next()
                logger.info("campaign for %s: %s; campaigning again in %.2g s",
                            self.key, exc, delay)
                await trio.sleep(delay)

    async def _try_acquire(self) -> bool:
        if self.revision is not None or self.unresolved is not None:
            # A write of ours may be in the store: look before writing again.
            entry = await self._call(lambda: self.backend.get(self.key))
            if self._ours(entry):
                assert entry is not None
                self._adopt(entry)
                return True
            if entry is not None:
                return False
        try:
            self.token = await self._send(
                lambda: self.backend.create(self.key, self.candidate_id.bytes, ttl=self.ttl))
        except KeyExists:
            return False
        return True

    async def _make_safe(self) -> None:
        """Renew first if the acquisition resolved too late to enter the body.

        Renewing is a compare-and-set on the revision we adopted, so it is safe even
        after our local deadline: it succeeds only if the store still has our lease,
        and then the deadline counts afresh from its send time.
        """
        while self.renew_now or trio.current_time() >= self.base + self.renew_interval:
            await self.renew_once()

    async def _await_vacancy(self) -> None:
        """Wait on the key's watch until it is free (or ours); fall back after a ttl."""
        with trio.move_on_after(self.ttl):
            async with self.backend.watch(self.key) as updates:
                maybe_ours = self.revision is not None or self.unresolved is not None
                async for entry in updates:
                    if entry is None or (maybe_ours and self._ours(entry)):
                        return

    # -- term --------------------------------------------------------------------

    async def renew_once(self) -> bool:
        """One renewal: True if it was applied, False if we only adopted our entry.

        Raises ``_Lost`` or ``BackendUnavailable``.
        """
        assert self.revision is not None
        value = encode_value(self.candidate_id, self.token)
        revision = self.revision
        try:
            await self._send(lambda: self.backend.update(
                self.key, value, revision=revision, ttl=self.ttl))
        except RevisionMismatch:
            # This write was not applied, but an earlier one of ours may have been.
            entry = await self._call(lambda: self.backend.get(self.key))
            if self._ours(entry):
                assert entry is not None
                self._adopt(entry)
                return False
            if entry is None:
                raise _Lost("the lease expired or was deleted in the store",
                            expired=True) from None
            info = decode_value(entry.value, entry.revision)[0]
            holder = f"candidate {info}" if info is not None else "an unknown holder"
            raise _Lost(f"the store shows {holder} at revision {entry.revision}") from None
        return True

    async def renew_loop(self, lead: Leadership) -> None:
        """The sibling task: keep the lease, move the body's deadline, or cancel it."""
        backoff = Backoff(self.renew_interval / 10, self.renew_interval / 2)
        retry_at: float | None = None
        while True:
            # A pending retry's backoff wins over an adoption's "renew now": a link
            # that loses every reply must not turn into a hot loop.
            if retry_at is not None:
                wake = retry_at
            elif self.renew_now:
                wake = trio.current_time()
            else:
                wake = self.base + self.renew_interval
            await trio.sleep_until(min(wake, self.deadline))
            if trio.current_time() >= self.deadline:
                lead._lose(self.deadline_passed())
                return
            try:
                applied = await self.renew_once()
            except _Lost as exc:
                lead._lose(str(exc))
                return
            except BackendUnavailable as exc:
                self.failures += 1
                self.last_error = exc
                now = trio.current_time()
                # Back off, but always leave one more try before the deadline: a
                # store that comes back just in time must not find us asleep.
                last_chance = self.deadline - max(2 * self.round_trip, backoff.initial)
                retry_at = max(now + backoff.initial, min(now + backoff.next(), last_chance))
                logger.warning("renewing %s failed (%s); retrying in %.2g s",
                               self.key, exc, retry_at - now)
                continue
            retry_at = None
            if applied:
                self.failures = 0
                self.last_error = None
                backoff.reset()
            if not lead.cancel_scope.cancel_called:
                lead.cancel_scope.deadline = self.deadline
            logger.debug("renewed %s (token %d, revision %d)", self.key, self.token,
                         self.revision)

    async def release(self) -> None:
        """Release our lease, shielded and bounded; leave it to the janitor on failure.

        Also for a campaign that ended unelected: a create of ours may have landed.
        """
        if self.revision is None and self.unresolved is None:
            return
        released = False
        with trio.CancelScope(shield=True) as scope:
            scope.deadline = trio.current_time() + min(RELEASE_TIMEOUT, self.ttl)
            try:
                released = await release_if_ours(self.backend, self.key,
                                                 self.candidate_id, self.revision)
            except BackendUnavailable as exc:
                logger.debug("release of %s failed: %s", self.key, exc)
            else:
                if released:
                    logger.info("released %s (candidate %s, token %d)",
                                self.key, self.candidate_id, self.token)
                self.revision = None
                self.unresolved = None
                return
        janitor_for(self.backend).add(self.key, self.candidate_id)
        self.revision = None
        self.unresolved = None


def hold_leadership(
    key: str,
    *,
    backend: Backend | None = None,
    ttl: float = 15.0,
    renew_interval: float | None = None,
    guard: float | None = None,
    wait: bool = True,
) -> AbstractAsyncContextManager[Leadership]:
    """Campaign for *key*, then run the block as leader while the lease holds.

    The block runs inside :attr:`Leadership.cancel_scope`, whose deadline is the
    local lease deadline ``t_sent + ttl - guard``. A sibling task renews the lease
    every *renew_interval* and moves the deadline out; if renewals stop succeeding
    the body is cancelled by its own deadline, before the store can expire the lease
    and elect someone else. Leaving the block (normally, by an exception or by
    cancellation from outside) releases the lease at once.

    Example::

        async with trio_noleader.hold_leadership("scheduler") as lead:
            await run_scheduler(fencing_token=lead.token)

    Args:
        key (str): The election key: ``[-/_=.a-zA-Z0-9]+``, not starting or ending
            with ``.``.
        backend (Backend | None): The store. ``None`` uses the innermost
            ``async with open_backend(...)`` (or other ``open_*``) of this task.
        ttl (float): Lease time to live in the store, in seconds.
        renew_interval (float | None): Seconds between renewals; default ``ttl/3``.
        guard (float | None): Safety margin in seconds subtracted from the local
            deadline; default ``ttl/10``. It absorbs clock rate drift up to
            ``guard/ttl``.
        wait (bool): If False, raise :class:`trio.WouldBlock` at once when someone
            else holds the key.

    Raises:
        LeadershipLost: out of the ``async with`` if the lease was lost mid-body.
        trio.WouldBlock: on entry with ``wait=False`` when the key is held.
        NoLeaderError: on entry if *backend* is None and no backend is open.
        RuntimeError: on entry outside trio (say, from asyncio code: see
            README.rst, "From asyncio"), or if this task already holds or
            campaigns for *key* on the same backend (it would wait for itself).
        ValueError, TypeError: at once for a bad key or timing (see the rules:
            ``ttl`` finite and > 0, ``0 < renew_interval < ttl``,
            ``0 <= guard < ttl - renew_interval``), or for a ttl the backend
            cannot keep (``Backend.check_ttl``). ``ValueError`` also comes, after
            I/O, when leases keep expiring before they can be renewed because the
            store's round trips do not fit in ``ttl - guard - renew_interval``.

    Transient store errors while campaigning are logged and retried with capped
    backoff. Exceptions come out bare, never wrapped in an ``ExceptionGroup``.
    """
    check_key(key)
    timing = check_timing(ttl, renew_interval, guard)
    if not isinstance(wait, bool):
        raise type_error("wait", wait, "a bool")
    if backend is not None:
        resolve_backend(backend)
    return one_per_task(_hold(key, backend, *timing, wait), key, backend)


@asynccontextmanager
async def _hold(key: str, backend_arg: Backend | None, ttl: float, renew_interval: float,
                guard: float, wait: bool) -> AsyncIterator[Leadership]:
    backend = resolve_backend(backend_arg)
    backend.check_ttl(ttl)
    with bare_exceptions():
        campaign = _Campaign(backend, key, ttl, renew_interval, guard, wait)
        try:
            await campaign.campaign()
        except BaseException:
            await campaign.release()
            raise
        lead = Leadership(key, campaign.candidate_id, campaign.token, campaign.deadline)
        logger.info("elected for %s (candidate %s, token %d)", key, lead.candidate_id,
                    lead.token)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(campaign.renew_loop, lead)
                token = _current_leadership.set(lead)
                try:
                    with lead.cancel_scope:
                        yield lead
                finally:
                    _current_leadership.reset(token)
                    nursery.cancel_scope.cancel()
        finally:
            await campaign.release()
        if lead._lost is None and lead.cancel_scope.cancelled_caught and not lead.resigned:
            lead._lose(campaign.deadline_passed())
        if lead._lost is not None:
            await trio.lowlevel.checkpoint_if_cancelled()
            raise LeadershipLost(f"{key}: {lead._lost}")
