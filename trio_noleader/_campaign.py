"""One campaign for one key: its writes, its renewals and its release.

A :class:`Campaign` is the bookkeeping behind one entry into ``hold_leadership``:
its candidate id, the revision it last knows it wrote, the send time that the
lease deadline counts from, and the writes of its own whose fate is unknown. The
rules it keeps are those of docs/guarantees.rst.

Store-call time limits come from the lease, not from a fixed timeout: a create
answered later than :func:`~trio_noleader._types.max_round_trip` could not be kept
anyway; a renewal may take until the deadline it is trying to move.
"""

from __future__ import annotations

import collections
import logging
import math
from collections.abc import Awaitable, Callable
from typing import TypeVar

import trio

from . import _batch, _observe
from ._exceptions import BackendUnavailable, KeyExists, NewStore, RevisionMismatch
from ._hub import UNKNOWN, KeyHub, hub_for
from ._observe import LeadershipEvent
from ._release import RELEASE_TIMEOUT, janitor_for, release_if_ours
from ._types import Entry, decode_value, encode_value, max_round_trip, new_candidate_id
from ._util import Backoff
from .abc import Backend, Update

__all__ = ["Campaign", "Cut", "Lost"]

logger = logging.getLogger("trio_noleader")

T = TypeVar("T")

#: A campaign whose fresh leases expire this many times in a row before it can renew
#: them, while every recent store round trip took longer than ``max_round_trip``,
#: has a ttl that no round trip fits in: it gives up with ValueError. (Expiries
#: alone, say after an operator's reset, only make it back off.)
MAX_EXPIRED_IN_A_ROW = 3

#: Likewise for calls cut at the lease's own time limit while the store answers
#: other calls, too slowly: a store that answers nothing is an outage instead.
MAX_CUT_IN_A_ROW = 5
#: ... for at least this many ttls.
CUT_PATIENCE = 10

#: Renewals wake on a grid of ``max(RENEW_GRID, renew_interval / 50)`` seconds
#: (never later than due, at most 2 % of the interval early), so that leases that
#: fall due close together, such as a sharded member's claims, go in one batch.
RENEW_GRID = 0.005


#: A campaign's reads may always take this long (seconds), whatever the ttl: a read
#: risks nothing, and its answer tells a slow store from a missing one.
READ_FLOOR = 1.0


#: The least time a renewal on its way is given to answer when its term ends.
STOP_WAIT_MIN = 0.05


class Cut(BackendUnavailable):
    """A store call got no answer within the time the lease allows it."""


class Lost(Exception):
    """The store shows that the lease is not ours any more."""

    def __init__(self, reason: str, *, expired: bool = False, kind: str = "taken") -> None:
        super().__init__(reason)
        self.expired = expired
        # The loss's reason for observers (LeadershipEvent.reason).
        self.kind = "expired" if expired else kind


class Campaign:
    """The state of one campaign: its candidate id and what it knows of its writes."""

    def __init__(self, backend: Backend, key: str, ttl: float, renew_interval: float,
                 guard: float, wait: bool, name: str | None = None) -> None:
        self.backend = backend
        self.key = key
        # Stored with the lease; None writes the bare 16/24-byte values of old.
        self.name = name
        self.ttl = ttl
        self.renew_interval = renew_interval
        self.guard = guard
        self.wait = wait
        self.max_round_trip = max_round_trip(ttl, renew_interval, guard)
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
        # For statistics(): renewals of the term that were applied, those that failed,
        # and the last applied one's call time and end (trio time).
        self.renewals = 0
        self.renew_failures = 0
        self.last_renew_seconds: float | None = None
        self.last_renewed_at: float | None = None
        # Round trips of the last few calls the store answered (seconds).
        self.recent: collections.deque[float] = collections.deque(maxlen=3)
        self.batched = _batch.batches_renewals(backend)
        self._grid = max(RENEW_GRID, renew_interval / 50)
        # The renewal loop's sleep, and its store call when one is on its way.
        self._sleeping: trio.CancelScope | None = None
        self._calling: trio.CancelScope | None = None
        self._stopping = False

    # -- helpers -----------------------------------------------------------------

    @property
    def deadline(self) -> float:
        return self.base + self.ttl - self.guard

    @property
    def round_trip(self) -> float:
        """The slowest of the recent answered round trips (0 before any)."""
        return max(self.recent, default=0.0)

    def event(self, kind: str, *, seconds: float | None = None, deadline: float | None = None,
              reason: str | None = None, error: str | None = None,
              retry_in: float | None = None) -> LeadershipEvent:
        """A :class:`LeadershipEvent` of this campaign, now."""
        return LeadershipEvent(kind, self.key, self.candidate_id, self.name, self.token,
                               self.revision, trio.current_time(), seconds, deadline, reason,
                               error, retry_in)

    def ours(self, entry: object) -> bool:
        return (isinstance(entry, Entry)
                and decode_value(entry.value, entry.revision)[0] == self.candidate_id)

    def entry(self) -> Entry:
        """Our lease as the store holds it, as far as we know."""
        assert self.revision is not None
        return Entry(self.key, encode_value(self.candidate_id, self.token, self.name),
                     self.revision)

    async def _call(self, fn: Callable[[], Awaitable[T]], deadline: float) -> T:
        """Run one store call, cut at *deadline*; a cut is a transient failure."""
        start = trio.current_time()
        try:
            with trio.fail_at(deadline):
                result = await fn()
        except trio.TooSlowError as exc:
            raise Cut(
                f"store call on {self.key!r} got no answer within {deadline - start:.3g} s"
            ) from exc
        except (KeyExists, RevisionMismatch):
            self.recent.append(trio.current_time() - start)
            raise
        self.recent.append(trio.current_time() - start)
        return result

    async def _send(self, write: Callable[[], Awaitable[int]], deadline: float) -> int:
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
            revision = await self._call(write, deadline)
        except (KeyExists, RevisionMismatch):
            self.unresolved = earlier
            raise
        self.revision = revision
        self.base = sent
        self.unresolved = None
        self.renew_now = False
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
                raise Lost(f"our candidate id is at revision {entry.revision}, "
                           "which no write of ours can explain", kind="conflict")
            self.base = self.unresolved
            self.unresolved = None
        self.revision = entry.revision
        self.renew_now = True

    # -- campaign ----------------------------------------------------------------

    async def campaign(self) -> None:
        """Return once elected with a deadline that can survive a renewal round trip.

        With ``wait`` the campaign queues in the key's local hub: one store write
        per vacancy for the whole process, first come first served.
        """
        if not self.wait:
            await self._contend(None)
            return
        hub = hub_for(self.backend, self.key)
        ticket = hub.join()
        try:
            await ticket.turn.wait()
            await self._contend(hub)
        finally:
            hub.leave(ticket)

    async def _contend(self, hub: KeyHub | None) -> None:
        # Capped at renew_interval: after an outage a candidate is back within one
        # renewal period of the store, not a whole ttl.
        backoff = Backoff(min(0.1, self.renew_interval / 4), min(5.0, self.renew_interval))
        expired_in_a_row = 0
        cut_in_a_row = 0
        cut_since = math.inf
        seen = -1
        while True:
            try:
                if hub is not None:
                    seen = await self._await_chance(hub, seen)
                if await self._try_acquire(hub):
                    await self._make_safe()
                    if hub is not None:
                        hub.elected(self.entry())
                    return
                if hub is None:
                    raise trio.WouldBlock(f"{self.key!r} is held by another candidate")
                hub.store_answered()
                backoff.reset()
                cut_in_a_row, cut_since = 0, math.inf
            except NewStore as exc:
                # Not an outage: the store is younger than a ttl (see NewStore).
                logger.info("campaign for %s: %s", self.key, exc)
                await trio.sleep(exc.retry_after)
            except BackendUnavailable as exc:
                # Cut at the lease's own limit while the store does answer, only too
                # slowly: the ttl is too short for this store. (No answer at all is
                # an outage, which we ride out.)
                slow = isinstance(exc, Cut) and self._too_slow()
                cut_in_a_row = cut_in_a_row + 1 if slow else 0
                if not slow:
                    cut_since = math.inf
                elif cut_in_a_row == 1:
                    cut_since = trio.current_time()
                # And for long enough that a slow spell of the store is ruled out.
                if (cut_in_a_row >= MAX_CUT_IN_A_ROW
                        and trio.current_time() - cut_since >= CUT_PATIENCE * self.ttl):
                    raise self._no_round_trip_fits(f"{cut_in_a_row} store calls in a row "
                                                   "got no answer in time") from None
                delay = backoff.next()
                logger.warning("campaign for %s: store unavailable (%s); retrying in %.2g s",
                               self.key, exc, delay)
                await trio.sleep(delay)
                if hub is not None and hub.watch_broken:
                    # The backoff was the wait: try again now (unless the key shows
                    # held) rather than wait a ttl for news from a watch that broke
                    # with the store and is backing off too. (A watch that works
                    # shows what our write did, with no read.)
                    seen = -1
            except Lost as exc:
                self.revision = None
                expired_in_a_row = expired_in_a_row + 1 if exc.expired else 0
                if expired_in_a_row >= MAX_EXPIRED_IN_A_ROW and self._too_slow():
                    raise self._no_round_trip_fits(
                        f"{expired_in_a_row} leases in a row expired in the store before "
                        "they could be renewed") from None
                delay = backoff.next()
                logger.info("campaign for %s: %s; campaigning again in %.2g s",
                            self.key, exc, delay)
                await trio.sleep(delay)

    def _too_slow(self) -> bool:
        return bool(self.recent) and min(self.recent) >= self.max_round_trip

    def _no_round_trip_fits(self, what: str) -> ValueError:
        return ValueError(
            f"ttl={self.ttl!r}: {what}; store round trips take {min(self.recent):.3g} s or "
            f"more, and a lease can be kept only while they take less than "
            f"min(ttl - guard - renew_interval, (ttl - guard) / 2) = "
            f"{self.max_round_trip:.3g} s")

    async def _await_chance(self, hub: KeyHub, seen: int) -> int:
        """Wait, on the hub's shared watch, until trying the store makes sense.

        That is: the key showed vacant since the last try (and since the last local
        election took the previous vacancy), our own create showed up, or the watch
        knows nothing (not open yet, broken). After a ttl without news, try anyway.
        Returns the hub version acted on.
        """
        deadline = trio.current_time() + self.ttl
        while True:
            state = hub.state
            fresh = hub.version > seen
            if self.ours(state) or trio.current_time() >= deadline or (fresh and (
                    state is UNKNOWN or (state is None and hub.version > hub.floor))):
                return hub.version
            hub.start_watching()
            await hub.wait_change(hub.version, deadline)

    async def _try_acquire(self, hub: KeyHub | None) -> bool:
        if self.revision is not None or self.unresolved is not None:
            # A write of ours may be in the store: look before writing again. The
            # shared watch may already show it; a read may not (see _release).
            shown = None if hub is None else hub.state
            entry = shown if self.ours(shown) else await self._call(
                lambda: self.backend.get(self.key),
                trio.current_time() + max(self.ttl, READ_FLOOR))
            if self.ours(entry):
                assert isinstance(entry, Entry)
                self._adopt(entry)
                return True
            if entry is not None:
                return False
        try:
            self.token = await self._send(
                lambda: self.backend.create(
                    self.key, encode_value(self.candidate_id, None, self.name), ttl=self.ttl),
                trio.current_time() + self.max_round_trip)
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
            await self.renew_once(max(self.deadline,
                                      trio.current_time() + self.max_round_trip))

    # -- term --------------------------------------------------------------------

    async def renew_once(self, deadline: float) -> bool:
        """One renewal, cut at *deadline*: True if applied, False if we adopted our entry.

        Raises ``Lost`` or ``BackendUnavailable``.
        """
        assert self.revision is not None
        update = Update(self.key, encode_value(self.candidate_id, self.token, self.name),
                        self.revision, self.ttl)
        try:
            if self.batched:
                await self._send(lambda: _batch.renew(self.backend, update, deadline),
                                 deadline)
            else:
                await self._send(lambda: self.backend.update(
                    update.key, update.value, revision=update.revision, ttl=update.ttl),
                    deadline)
        except RevisionMismatch:
            # This write was not applied, but an earlier one of ours may have been.
            entry = await self._call(lambda: self.backend.get(self.key), deadline)
            if self.ours(entry):
                assert entry is not None
                self._adopt(entry)
                return False
            if entry is None:
                raise Lost("the lease expired or was deleted in the store",
                           expired=True) from None
            info = decode_value(entry.value, entry.revision)[0]
            holder = f"candidate {info}" if info is not None else "an unknown holder"
            raise Lost(f"the store shows {holder} at revision {entry.revision}") from None
        return True

    def _due(self) -> float:
        due = self.base + self.renew_interval
        if self.batched:
            due = math.floor(due / self._grid) * self._grid
        return due

    async def renew_loop(self, scope: trio.CancelScope,
                         lose: Callable[[str, str], None]) -> None:
        """The sibling task: keep the lease, move *scope*'s deadline, or call *lose*."""
        backoff = Backoff(self.renew_interval / 10, self.renew_interval / 2)
        retry_at: float | None = None
        while not self._stopping:
            # A pending retry's backoff wins over an adoption's "renew now": a link
            # that loses every reply must not turn into a hot loop.
            if retry_at is not None:
                wake = retry_at
            elif self.renew_now:
                wake = trio.current_time()
            else:
                wake = self._due()
            with trio.CancelScope() as self._sleeping:
                if self.batched:
                    await _batch.sleep_until(self.backend, min(wake, self.deadline))
                else:
                    await trio.sleep_until(min(wake, self.deadline))
            self._sleeping = None
            if self._stopping:
                return
            started = trio.current_time()
            if started >= self.deadline:
                lose(self.deadline_passed(), "deadline")
                return
            applied = False
            try:
                with trio.CancelScope() as self._calling:
                    applied = await self.renew_once(self.deadline)
            except Lost as exc:
                lose(str(exc), exc.kind)
                return
            except BackendUnavailable as exc:
                self.failures += 1
                self.renew_failures += 1
                self.last_error = exc
                now = trio.current_time()
                # Back off, but always leave one more try before the deadline: a
                # store that comes back just in time must not find us asleep.
                last_chance = self.deadline - max(2 * self.round_trip, backoff.initial)
                retry_at = max(now + backoff.initial, min(now + backoff.next(), last_chance))
                if _observe.observers:
                    _observe.emit(self.event("renew_failed", seconds=now - started,
                                             deadline=self.deadline, error=str(exc),
                                             retry_in=retry_at - now))
                continue
            finally:
                self._calling = None
            if self._stopping:
                return
            retry_at = None
            if applied:
                self.failures = 0
                self.last_error = None
                backoff.reset()
            if not scope.cancel_called:
                scope.deadline = self.deadline
            now = trio.current_time()
            self.renewals += 1
            self.last_renew_seconds = now - started
            self.last_renewed_at = now
            if _observe.renewals_watched():
                _observe.emit(self.event("renewed", seconds=now - started,
                                         deadline=self.deadline))

    def stop_renewing(self) -> None:
        """End the renewal loop: at once if it sleeps, after its answer if a renewal
        is on its way (shielded, for at most a few round trips), so that the release
        that follows knows the revision to delete."""
        self._stopping = True
        if self._sleeping is not None:
            self._sleeping.cancel()
        if self._calling is not None:
            self._calling.shield = True
            wait = max(3 * self.round_trip, STOP_WAIT_MIN)
            self._calling.deadline = min(self.deadline, trio.current_time() + wait)

    # -- the end -----------------------------------------------------------------

    async def release(self) -> str | None:
        """Release our lease, shielded and bounded; leave the rest to the janitor.

        Also for a campaign that ended unelected: a create of ours may still land,
        and only a watch can tell, so the janitor watches for it. Returns
        ``"released"`` (deleted), ``"gone"`` (not ours any more), ``"unconfirmed"``
        (left to the janitor) or None (nothing of ours to release).
        """
        if self.revision is None and self.unresolved is None:
            return None
        janitor = janitor_for(self.backend)
        if self.revision is None:
            assert self.unresolved is not None
            until = self.unresolved + self.max_round_trip
            self.unresolved = None
            janitor.add(self.backend, self.key, self.candidate_id, watch_until=until,
                        give_up_at=until + self.ttl,
                        reason="the campaign ended while a create of its own was on its way")
            return "unconfirmed"
        with trio.CancelScope(shield=True) as scope:
            scope.deadline = trio.current_time() + min(RELEASE_TIMEOUT, self.ttl)
            try:
                released = await release_if_ours(self.backend, self.key,
                                                 self.candidate_id, self.revision)
            except BackendUnavailable as exc:
                logger.debug("release of %s failed: %s", self.key, exc)
            else:
                self.revision = None
                self.unresolved = None
                return "released" if released else "gone"
        now = trio.current_time()
        janitor.add(self.backend, self.key, self.candidate_id,
                    watch_until=now + self.max_round_trip,
                    give_up_at=now + self.max_round_trip + self.ttl,
                    reason="the store did not answer the release")
        self.revision = None
        self.unresolved = None
        return "unconfirmed"
