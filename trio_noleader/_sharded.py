"""Sharded work: many keys spread over the live replicas, each key on exactly one.

Membership. The Backend protocol has no prefix listing or prefix watch, so a
group has a fixed number of member slots, ``<group>/member/00`` ..
``<group>/member/15`` (:data:`MEMBER_SLOTS`). A replica joins by taking a free
slot with ``hold_leadership(slot, wait=False)`` (a normal lease, renewed like any
other) and watches every slot, so joins, graceful leaves (a CAS delete) and
crashes (TTL expiry) all arrive by watch. A member is named by its slot lease's
candidate id, fresh at every join.

Keys. Each job key is its own lease, taken with ``hold_leadership(key,
wait=False)`` only when it is free, and the job's ``async_fn(key)`` runs in that
lease's cancel scope. The quota-capped, sticky rule of :mod:`._shard_assign`
decides: a replica keeps what it runs while it is within its quota
(``floor(N / M)`` or one more, the quotas adding up to N); over it, it drains
and releases the keys it likes least; under it, it looks for free keys
(one ``Backend.keys()`` call, at once on a membership change and every
``renew_interval / 4`` while it has room) and claims them after a delay of
``rank * renew_interval / (4 M)``, so the member that prefers a key most tries
first. A claim that finds its key taken is followed at once by one for the next
free key of the same listing. A replica with no room makes no store calls beyond
its renewals and its slot watches.

Hysteresis. A member seen joining counts for the others' quotas only after it has
been a member for ``renew_interval / 2`` (the settle delay): a member that flaps
faster than that moves nothing. Members present before we joined count at once;
a leave counts at once.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
from collections.abc import Awaitable, Callable, Iterable
from typing import NoReturn

import trio

from . import _shard_assign as assign
from ._context import require_trio, resolve_backend
from ._election import Leadership, hold_leadership
from ._exceptions import BackendUnavailable, LeadershipLost
from ._types import (
    Entry,
    LeaderInfo,
    check_key,
    check_name,
    check_timing,
    decode_value,
    default_name,
    type_error,
)
from ._unwrap import bare_exceptions
from ._util import Backoff
from .abc import Backend

__all__ = ["MEMBER_SLOTS", "ShardGroup", "member_key", "run_sharded"]

logger = logging.getLogger("trio_noleader")

#: Member slots per group: at most this many replicas share one group's keys.
MEMBER_SLOTS = 16

#: The infix of member keys: ``<group>/member/NN``.
MEMBER_INFIX = "/member/"


def member_key(group: str, slot: int) -> str:
    """The store key of member slot *slot* of *group*."""
    return f"{group}{MEMBER_INFIX}{slot:02d}"


def _check_keys(group: str, keys: object) -> frozenset[str]:
    if isinstance(keys, str | bytes) or not isinstance(keys, Iterable):
        raise type_error("keys", keys, "an iterable of key strings")
    checked = frozenset(check_key(key) for key in keys)
    for key in checked:
        if key.startswith(group + MEMBER_INFIX):
            raise ValueError(f"key {key!r}: {group + MEMBER_INFIX}* is reserved for the "
                             "group's member slots")
    return checked


#: The groups running in this process, for scrape-time metrics (read from any thread).
_running: list[ShardGroup] = []
_running_lock = threading.Lock()


def running_groups() -> list[ShardGroup]:
    """A snapshot of the :class:`ShardGroup` handles of this process's running groups."""
    with _running_lock:
        return list(_running)


class ShardGroup:
    """This replica's view of a sharded group, from ``nursery.start(run_sharded, ...)``.

    Attributes:
        group (str): The group.
        name (str): This replica's member label.
    """

    def __init__(self, group: str, name: str, keys: frozenset[str]) -> None:
        self.group = group
        self.name = name
        self._keys = keys
        self._owned: set[str] = set()
        self._labels: dict[int, str] = {}
        self._changed = trio.Event()
        self._members_changed = trio.Event()

    @property
    def owned(self) -> frozenset[str]:
        """The keys whose job runs on this replica now."""
        return frozenset(self._owned)

    @property
    def members(self) -> frozenset[str]:
        """The labels of the live members this replica sees, its own included."""
        return frozenset(self._labels.values())

    @property
    def keys(self) -> frozenset[str]:
        """The group's key set."""
        return self._keys

    def set_keys(self, keys: Iterable[str]) -> None:
        """Change the key set: keys dropped are drained and released, new ones claimed.

        Every replica should be given the same set (balance needs it, safety does
        not). Synchronous; takes effect at the runner's next step.

        Raises:
            TypeError, ValueError: for a bad key, before anything changes.
        """
        self._keys = _check_keys(self.group, keys)
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def __repr__(self) -> str:
        return (f"<ShardGroup group={self.group!r} name={self.name!r} "
                f"owned={len(self._owned)}/{len(self._keys)} members={len(self._labels)}>")


class _Runner:
    def __init__(self, handle: ShardGroup, async_fn: Callable[[str], Awaitable[object]],
                 backend: Backend, ttl: float, renew_interval: float, guard: float) -> None:
        self.handle = handle
        self.async_fn = async_fn
        self.backend = backend
        self.ttl = ttl
        self.renew_interval = renew_interval
        self.guard = guard
        self.join_delay = renew_interval / 2
        self.scan_interval = renew_interval / 4
        #: slot -> (member id, label, first seen); first seen -inf: count at once.
        self.slots: dict[int, tuple[str, str, float]] = {}
        self.joined = False
        self.me: str | None = None
        self.my_slot: int | None = None
        self.tasks: dict[str, trio.CancelScope] = {}
        #: Keys the last listing found free that we have not tried yet, the most
        #: preferred *last* (ranked for :attr:`free_for`, the members then).
        self.free: list[str] = []
        self.free_for: list[str] | None = None
        #: Slots whose watch delivered its first state; we join once all have.
        self.reported: set[int] = set()
        self.ready = trio.Event()

    def _lease(self, key: str) -> contextlib.AbstractAsyncContextManager[Leadership]:
        # The one place leases are taken, member slots and job keys alike.
        return hold_leadership(key, backend=self.backend, ttl=self.ttl,
                               renew_interval=self.renew_interval, guard=self.guard,
                               wait=False, name=self.handle.name)

    # -- membership --------------------------------------------------------------

    def members(self) -> list[str]:
        """The member ids that count for the quotas now (settle delay applied)."""
        now = trio.current_time()
        ids = {ident for slot, (ident, _, seen) in self.slots.items()
               if slot != self.my_slot and seen + self.join_delay <= now}
        if self.me is not None:
            ids.add(self.me)
        return sorted(ids)

    def _next_maturity(self) -> float:
        now = trio.current_time()
        pending = [seen + self.join_delay for _, _, seen in self.slots.values()
                   if seen + self.join_delay > now]
        return min(pending, default=math.inf)

    def _set_labels(self) -> None:
        labels = {slot: label for slot, (_, label, _) in self.slots.items()}
        if self.my_slot is not None:
            labels[self.my_slot] = self.handle.name
        self.handle._labels = labels

    async def watch_slot(self, slot: int) -> None:
        key = member_key(self.handle.group, slot)
        backoff = Backoff(0.05, max(self.renew_interval, 0.05))
        while True:
            try:
                async with self.backend.watch(key) as updates:
                    async for entry in updates:
                        backoff.reset()
                        self.reported.add(slot)
                        if len(self.reported) == MEMBER_SLOTS:
                            self.ready.set()
                        if entry is None:
                            known = self.slots.pop(slot, None) is not None
                        else:
                            ident = _member_id(entry.value, entry.revision, slot)
                            old = self.slots.get(slot)
                            known = old is None or old[0] != ident
                            if known:
                                seen = trio.current_time() if self.joined else -math.inf
                                self.slots[slot] = (ident, _label(entry, slot, self.handle),
                                                    seen)
                        if known:
                            self._set_labels()
                            self.handle._members_changed.set()
                            self.handle._members_changed = trio.Event()
                            self.handle._wake()
            except BackendUnavailable as exc:
                logger.debug("watch of %s broke: %s", key, exc)
            await trio.sleep(backoff.next())

    async def serve(self) -> NoReturn:
        backoff = Backoff(0.05, max(self.renew_interval, 0.05))
        # Join with the others in view, so that they count for our quota at once.
        with trio.move_on_after(self.renew_interval):
            await self.ready.wait()
        while True:
            free = [s for s in range(MEMBER_SLOTS) if s not in self.slots]
            order = free + [s for s in range(MEMBER_SLOTS) if s in self.slots]
            for slot in order:
                try:
                    async with self._lease(member_key(self.handle.group, slot)) as lead:
                        backoff.reset()
                        await self._as_member(slot, lead)
                except trio.WouldBlock:
                    continue
                except LeadershipLost as exc:
                    logger.warning("sharded %s: membership lost (%s); joining again",
                                   self.handle.group, exc)
                finally:
                    self.joined = False
                    self.me = self.my_slot = None
                    self._set_labels()
                break
            else:
                # Every slot is taken: wait for one to free up.
                changed = self.handle._members_changed
                with trio.move_on_after(self.renew_interval):
                    await changed.wait()
                continue
            await trio.sleep(backoff.next())

    async def _as_member(self, slot: int, lead: Leadership) -> None:
        self.me = lead.candidate_id.hex
        self.my_slot = slot
        self.free, self.free_for = [], None
        self.joined = True
        self._set_labels()
        logger.info("sharded %s: joined as member %d (%s)", self.handle.group, slot,
                    self.handle.name)
        async with trio.open_nursery() as jobs:
            await self._steer(jobs)

    # -- the keys ---------------------------------------------------------------

    async def _steer(self, jobs: trio.Nursery) -> NoReturn:
        next_scan = -math.inf
        last_members: list[str] = []
        while True:
            changed = self.handle._changed
            keys = self.handle._keys
            members = self.members()
            assert self.me is not None
            limit = assign.quota(self.me, members, len(keys))
            for key, scope in list(self.tasks.items()):
                if key not in keys:
                    scope.cancel()
            running = [k for k in self.handle._owned if k in keys]
            if len(running) > limit:
                shed = assign.shed_order(self.me, running)[:len(running) - limit]
                logger.info("sharded %s: over its quota (%d > %d), shedding %d",
                            self.handle.group, len(running), limit, len(shed))
                for key in shed:
                    self.tasks[key].cancel()
            live_tasks = sum(1 for s in self.tasks.values() if not s.cancel_called)
            room = limit - live_tasks
            now = trio.current_time()
            if room > 0 and (now >= next_scan or members != last_members):
                last_members = members
                next_scan = now + self.scan_interval
                await self._list(keys)
                continue
            last_members = members
            if room > 0 and self.free:
                self._claim(jobs, keys, members, room)
                continue
            wake = min(self._next_maturity(), next_scan if room > 0 else math.inf)
            with trio.move_on_at(wake):
                await changed.wait()

    async def _list(self, keys: frozenset[str]) -> None:
        """Refresh :attr:`free`: the keys no lease holds, from one listing."""
        started = trio.current_time()
        try:
            live = set(await self.backend.keys())
        except BackendUnavailable as exc:
            logger.debug("sharded %s: listing keys failed: %s", self.handle.group, exc)
            return
        self.free = [k for k in keys if k not in live and k not in self.tasks]
        self.free_for = None
        logger.debug("sharded %s: %d keys free (listing took %.3f s)", self.handle.group,
                     len(self.free), trio.current_time() - started)

    def _claim(self, jobs: trio.Nursery, keys: frozenset[str], members: list[str],
               room: int) -> None:
        """Try for up to *room* of :attr:`free`, the keys we prefer most first.

        A try that finds its key taken frees its room again, and the next free key
        of the same listing is tried at once: a listing goes stale while others
        claim, and a fresh one costs a full scan of the store.
        """
        assert self.me is not None
        me = self.me
        if self.free_for != members:
            # Once per listing or membership change, not per lost claim: ranking
            # costs O(free keys x members) hashes.
            ranks = {k: assign.rank(me, members, k) for k in self.free}
            self.free.sort(key=lambda k: (ranks[k], -assign.score(me, k)), reverse=True)
            self.free_for = members
        step = self.renew_interval / (4 * max(len(members), 1))
        while room > 0 and self.free:
            key = self.free.pop()
            if key not in keys or key in self.tasks:
                continue
            room -= 1
            scope = trio.CancelScope()
            self.tasks[key] = scope
            jobs.start_soon(self._run_key, key, assign.rank(me, members, key) * step, scope)

    async def _run_key(self, key: str, delay: float, scope: trio.CancelScope) -> None:
        try:
            with scope:
                await trio.sleep(delay)
                try:
                    async with self._lease(key) as lead:
                        self.handle._owned.add(key)
                        self.handle._wake()
                        logger.debug("sharded %s: running %s (token %d)",
                                     self.handle.group, key, lead.token)
                        await self.async_fn(key)
                        # A job that returned keeps its key: nobody else starts it.
                        await trio.sleep_forever()
                except trio.WouldBlock:
                    pass
                except LeadershipLost as exc:
                    logger.info("sharded %s: %s", self.handle.group, exc)
        finally:
            self.handle._owned.discard(key)
            if self.tasks.get(key) is scope:
                del self.tasks[key]
            self.handle._wake()


def _member_id(value: bytes, revision: int, slot: int) -> str:
    candidate, _ = decode_value(value, revision)
    return candidate.hex if candidate is not None else f"foreign-{slot}"


def _label(entry: Entry, slot: int, handle: ShardGroup) -> str:
    name = LeaderInfo.from_entry(entry).name
    return name if name is not None else f"{handle.group}#{slot}"


async def run_sharded(
    group: str,
    keys: Iterable[str],
    async_fn: Callable[[str], Awaitable[object]],
    *,
    backend: Backend | None = None,
    ttl: float = 15.0,
    renew_interval: float | None = None,
    guard: float | None = None,
    name: str | None = None,
    task_status: trio.TaskStatus[ShardGroup] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """Run ``async_fn(key)`` for every key of *keys*, each on exactly one replica.

    Every replica calls this with the same *group* and *keys*. Each key is its own
    lease (``hold_leadership(key)``, so :func:`current_leadership` inside
    ``async_fn`` gives the key's fencing token, and ``current_leader(key)`` and
    ``noleader status`` show it); membership lives in member slots under
    ``<group>/member/``. Keys spread over the live members, ``floor(N / M)`` or
    one more each, and stay where they run until their owner leaves or is over
    its quota; a key changes hands only by drain-then-release: the old job
    is cancelled and its lease released before the new owner's create can
    succeed. A job that returns keeps its key (nobody else runs it) until the key
    moves.

    Use with :meth:`trio.Nursery.start` to get the :class:`ShardGroup` handle
    (``.owned``, ``.members``, ``.set_keys()``).

    Args:
        group (str): The group, a key (``[-/_=.a-zA-Z0-9]+``).
        keys (Iterable[str]): The job keys.
        async_fn: Called as ``await async_fn(key)`` while this replica owns *key*.
        backend, ttl, renew_interval, guard: As for :func:`hold_leadership`, for
            the member lease and every key's lease.
        name (str | None): This replica's member label; default
            ``"<hostname>:<pid>"``.

    Raises:
        Whatever ``async_fn`` raises, bare; the other keys are released first.
        ValueError, TypeError: at once for a bad group, key, timing or name.
    """
    group = check_key(group)
    check_key(member_key(group, 0))
    key_set = _check_keys(group, keys)
    timing = check_timing(ttl, renew_interval, guard)
    if not callable(async_fn):
        raise type_error("async_fn", async_fn, "an async function")
    name = default_name() if name is None else check_name(name)
    require_trio("run_sharded()")
    store = resolve_backend(backend)
    store.check_ttl(timing[0])
    handle = ShardGroup(group, name, key_set)
    runner = _Runner(handle, async_fn, store, *timing)
    with _running_lock:
        _running.append(handle)
    try:
        with bare_exceptions():
            async with trio.open_nursery() as nursery:
                for slot in range(MEMBER_SLOTS):
                    nursery.start_soon(runner.watch_slot, slot)
                task_status.started(handle)
                await runner.serve()
    finally:
        with _running_lock:
            _running.remove(handle)
    raise AssertionError("unreachable")  # pragma: no cover
