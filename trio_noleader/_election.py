"""The election core: campaign, the lease as a cancel-scope deadline, renewal, release."""

from __future__ import annotations

import logging
import math
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TypeVar

import trio

from . import _observe
from ._campaign import Campaign
from ._context import resolve_backend
from ._exceptions import (
    LeadershipLost,
    NoLeaderError,
)
from ._reentry import one_per_task
from ._types import (
    check_key,
    check_name,
    check_timing,
    default_name,
    type_error,
)
from ._unwrap import bare_exceptions
from .abc import Backend

__all__ = ["Leadership", "LeadershipStatistics", "current_leadership", "hold_leadership"]

logger = logging.getLogger("trio_noleader")

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class LeadershipStatistics:
    """How a term is going: returned by :meth:`Leadership.statistics`.

    Times are :func:`trio.current_time` units unless they say otherwise.

    Attributes:
        key (str): The election key.
        name (str | None): The name stored with the lease.
        candidate_id (uuid.UUID): This campaign's candidate id.
        token (int): The term's fencing token.
        revision (int | None): The store revision we last know we wrote (None once
            released).
        elected_at (float): When the term began (the body was entered).
        elected_at_unix (float): The same moment by the wall clock (Unix seconds).
        campaign_seconds (float): How long the campaign took until elected.
        renewals (int): Renewals of this term that succeeded.
        renew_failures (int): Renewals of this term that got no answer (each retried).
        consecutive_failures (int): Of those, how many in a row up to now.
        last_renew_seconds (float | None): How long the last successful renewal
            took, from send to answer; None before the first.
        last_renewed_at (float | None): When it was answered.
        last_error (str | None): The last renewal failure of the current run of
            failures, if any.
        deadline (float): The lease deadline (:attr:`Leadership.deadline`).
        time_left (float): Seconds until the deadline, never below 0.
        ttl (float), renew_interval (float), guard (float): The lease timing.
        lost (str | None): Why the term was lost, once it was.
    """

    key: str
    name: str | None
    candidate_id: uuid.UUID
    token: int
    revision: int | None
    elected_at: float
    elected_at_unix: float
    campaign_seconds: float
    renewals: int
    renew_failures: int
    consecutive_failures: int
    last_renew_seconds: float | None
    last_renewed_at: float | None
    last_error: str | None
    deadline: float
    time_left: float
    ttl: float
    renew_interval: float
    guard: float
    lost: str | None


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
        name (str | None): The name stored with the lease (``hold_leadership(name=...)``).
    """

    def __init__(self, key: str, candidate_id: uuid.UUID, token: int, deadline: float,
                 name: str | None = None) -> None:
        self.key = key
        self.name = name
        self.candidate_id = candidate_id
        self.token = token
        self.cancel_scope = trio.CancelScope(deadline=deadline)
        self._resigned = False
        self._lost: str | None = None
        self._campaign: Campaign | None = None
        self._elected_at = trio.current_time()
        self._elected_at_unix = time.time()
        self._campaign_seconds = 0.0

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

        Example:
            >>> import trio, trio_noleader
            >>> async def main():
            ...     async with trio_noleader.open_backend("memory://"):
            ...         async with trio_noleader.hold_leadership("cron") as lead:
            ...             lead.resign()  # no await
            ...             await trio.sleep(60)  # cancelled at once
            ...         print(lead.resigned, await trio_noleader.current_leader("cron"))
            >>> trio.run(main)
            True None
        """
        if not self._resigned and self._lost is None:
            logger.info("resigning %s (candidate %s, token %d)",
                        self.key, self.candidate_id, self.token)
        self._resigned = True
        self.cancel_scope.cancel()

    def statistics(self) -> LeadershipStatistics:
        """How this term is going (trio's ``statistics()`` convention): a snapshot.

        Cheap, synchronous, and fine to call from any task of the run, also after
        the term ended.
        """
        campaign = self._campaign
        now = trio.current_time()
        deadline = self.deadline
        return LeadershipStatistics(
            key=self.key, name=self.name, candidate_id=self.candidate_id,
            token=self.token, revision=None if campaign is None else campaign.revision,
            elected_at=self._elected_at, elected_at_unix=self._elected_at_unix,
            campaign_seconds=self._campaign_seconds,
            renewals=0 if campaign is None else campaign.renewals,
            renew_failures=0 if campaign is None else campaign.renew_failures,
            consecutive_failures=0 if campaign is None else campaign.failures,
            last_renew_seconds=None if campaign is None else campaign.last_renew_seconds,
            last_renewed_at=None if campaign is None else campaign.last_renewed_at,
            last_error=None if campaign is None or campaign.last_error is None
            else str(campaign.last_error),
            deadline=deadline, time_left=max(0.0, deadline - now),
            ttl=math.nan if campaign is None else campaign.ttl,
            renew_interval=math.nan if campaign is None else campaign.renew_interval,
            guard=math.nan if campaign is None else campaign.guard,
            lost=self._lost)

    def _lose(self, reason: str, kind: str = "deadline") -> None:
        if self._lost is None and not self._resigned:
            self._lost = reason
            if _observe.observers and self._campaign is not None:
                _observe.emit(self._campaign.event("lost", reason=kind, error=reason,
                                                   deadline=self.deadline))
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


def hold_leadership(
    key: str,
    *,
    backend: Backend | None = None,
    ttl: float = 15.0,
    renew_interval: float | None = None,
    guard: float | None = None,
    wait: bool = True,
    name: str | None = None,
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
        name (str | None): A label for this candidate, stored with the lease so that
            :func:`current_leader` and ``noleader status`` show who leads; default
            ``"<hostname>:<pid>"``. 1 to 128 of ``A-Z a-z 0-9 - . _ : @ / + = ~``.

    Raises:
        LeadershipLost: out of the ``async with`` if the lease was lost mid-body.
        trio.WouldBlock: on entry with ``wait=False`` when the key is held.
        NoLeaderError: on entry if *backend* is None and no backend is open.
        RuntimeError: on entry outside trio (say, from asyncio code: see the
            guide "Call it from asyncio through trio-asyncio"), or if this task
            already holds or
            campaigns for *key* on the same backend (it would wait for itself).
        ValueError, TypeError: at once for a bad key or timing (see the rules:
            ``ttl`` finite and > 0, ``0 < renew_interval < ttl``,
            ``0 <= guard < ttl - renew_interval``), for a bad *name*, or for a ttl the backend
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
    name = default_name() if name is None else check_name(name)
    if backend is not None:
        resolve_backend(backend)
    return one_per_task(_hold(key, backend, *timing, wait, name), key, backend)


@asynccontextmanager
async def _hold(key: str, backend_arg: Backend | None, ttl: float, renew_interval: float,
                guard: float, wait: bool, name: str) -> AsyncIterator[Leadership]:
    backend = resolve_backend(backend_arg)
    backend.check_ttl(ttl)
    with bare_exceptions():
        campaign = Campaign(backend, key, ttl, renew_interval, guard, wait, name)
        started = trio.current_time()
        if _observe.observers:
            _observe.emit(campaign.event("campaign"))
        try:
            await campaign.campaign()
        except BaseException:
            if await campaign.release() == "released" and _observe.observers:
                _observe.emit(campaign.event("released", reason="released"))
            raise
        lead = Leadership(key, campaign.candidate_id, campaign.token, campaign.deadline,
                          name)
        lead._campaign = campaign
        lead._campaign_seconds = lead._elected_at - started
        if _observe.observers:
            _observe.emit(campaign.event("elected", seconds=lead._campaign_seconds,
                                         deadline=campaign.deadline))
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(campaign.renew_loop, lead.cancel_scope, lead._lose)
                token = _current_leadership.set(lead)
                try:
                    with lead.cancel_scope:
                        yield lead
                finally:
                    _current_leadership.reset(token)
                    # A renewal on its way is let finish (bounded): released at the
                    # revision it makes, the lease goes in one round trip, where a
                    # delete on the old revision would fail once it lands.
                    campaign.stop_renewing()
            if (lead._lost is None and lead.cancel_scope.cancelled_caught
                    and not lead.resigned):
                lead._lose(campaign.deadline_passed())
        finally:
            released = await campaign.release()
            if lead._lost is None and _observe.observers:
                _observe.emit(campaign.event("released", reason=released or "gone"))
        if lead._lost is not None:
            await trio.lowlevel.checkpoint_if_cancelled()
            raise LeadershipLost(f"{key}: {lead._lost}")
