"""FaultyBackend: one candidate's view of a store, with faults injected on demand.

Also :class:`StoreSwitch`, a switch in front of the store that all wrappers of one
store consult, for whole-store outages.
"""

from __future__ import annotations

import random
import weakref
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Generic, ParamSpec, TypeVar

import trio

from .._exceptions import BackendUnavailable
from .._types import Entry
from ..abc import Backend

__all__ = ["Call", "DroppedEffect", "FaultyBackend", "StoreSwitch", "StoreWrite"]

T = TypeVar("T")
P = ParamSpec("P")


@dataclass(frozen=True, slots=True)
class Call:
    """One call through a :class:`FaultyBackend`, as the caller saw it.

    Attributes:
        time (float): When the call returned or raised (trio time).
        op (str): ``"create"``, ``"update"``, ``"get"``, ``"delete"``, ``"keys"`` or
            ``"watch"``.
        key (str): The key.
        outcome (str): ``"ok"``; ``"error:<Type>"`` (the store raised it);
            ``"lost-request"`` (never reached the store); ``"lost-reply"`` (reached
            the store, but the caller was told it failed: for a write, the
            ambiguous case); ``"timeout"`` (the wrapper's own ``timeout`` fired); or
            ``"cancelled"`` (the caller gave up). After a timeout or a cancellation,
            :attr:`FaultyBackend.writes` tells whether a write reached the store.
        sent (float | None): When the caller issued it.
    """

    time: float
    op: str
    key: str
    outcome: str
    sent: float | None = None


@dataclass(frozen=True, slots=True)
class StoreWrite:
    """One write that reached the store through a :class:`FaultyBackend`.

    The store's own view: every create, update and delete that arrived, whether
    or not its caller ever learnt the result. Together, the records of every
    wrapper over a store are that store's write history.

    Attributes:
        time (float): When the write reached the store.
        sent (float): When its caller issued it (earlier by the latency, a pause,
            or a slow link).
        candidate (str): The wrapper's ``name``.
        op (str): ``"create"``, ``"update"`` or ``"delete"``.
        key (str): The key.
        revision (int | None): The compare-and-set revision of an update or delete.
        value (bytes | None): The bytes a create or update wrote.
        result (str): ``"ok"`` or the name of the exception the store raised
            (``"KeyExists"``, ``"RevisionMismatch"``).
        new_revision (int | None): The revision an applied create or update made.
    """

    time: float
    sent: float
    candidate: str
    op: str
    key: str
    revision: int | None
    value: bytes | None
    result: str
    new_revision: int | None


@dataclass(frozen=True, slots=True)
class DroppedEffect:
    """A side effect held by a paused candidate that crashed before it resumed.

    Attributes:
        time (float): When it was dropped (the crash).
        issued (float): When the candidate issued it.
        fn (Callable[..., object]): The callable that was never called.
        args (tuple[object, ...]): Its positional arguments.
        kwargs (dict[str, object]): Its keyword arguments.
    """

    time: float
    issued: float
    fn: Callable[..., object]
    args: tuple[object, ...]
    kwargs: dict[str, object]


class StoreSwitch:
    """A switch in front of one store, for whole-store outages.

    Pass the same switch to every :class:`FaultyBackend` over a store; while it is
    cut, every call through any of them fails as if the store were down (requests
    lost, replies lost, watches broken), whatever each wrapper's own faults are.
    """

    def __init__(self) -> None:
        self._down = False
        self._wrappers: weakref.WeakSet[FaultyBackend] = weakref.WeakSet()

    def __repr__(self) -> str:
        return f"<StoreSwitch {'down' if self._down else 'up'}>"

    @property
    def down(self) -> bool:
        """True while the store is cut off."""
        return self._down

    def cut(self) -> None:
        """Take the store away from everyone until :meth:`restore`."""
        self._down = True
        for wrapper in list(self._wrappers):
            wrapper._break_watches()

    def restore(self) -> None:
        """Bring the store back."""
        self._down = False

    @asynccontextmanager
    async def outage(self) -> AsyncIterator[None]:
        """Cut the store for the duration of the block."""
        self.cut()
        try:
            yield
        finally:
            self.restore()


@dataclass(eq=False)
class _Flight(Generic[T]):
    """One request on its way to the store, and what became of it."""

    done: trio.Event = field(default_factory=trio.Event)
    lost: bool = False
    result: Any = None
    error: Exception | None = None


@dataclass(eq=False)
class _Held:
    """A side effect waiting at a paused candidate's gate."""

    issued: float
    fn: Callable[..., object]
    args: tuple[object, ...]
    kwargs: dict[str, object]
    done: trio.Event = field(default_factory=trio.Event)
    result: object = None
    error: Exception | None = None


class FaultyBackend(Backend):
    """Wrap *inner* so that tests can break the link between one candidate and the store.

    Give each simulated candidate its own ``FaultyBackend`` over one shared store;
    each fault then hits that candidate only. Faults, all settable at any time:

    - ``latency``: seconds (or a zero-argument callable drawing them, e.g.
      ``lambda: rng.uniform(0.001, 0.02)``) each call waits before it reaches the
      store, and again before its reply returns; also each watch item;
    - ``lose_requests``: probability that a call is lost before reaching the store;
    - ``lose_replies``: probability that a *write* is applied but its reply is lost
      (the caller gets ``BackendUnavailable``: the ambiguous case);
      ``lose_next_replies``: a count of writes whose replies are lost for certain;
    - :meth:`partition` / :meth:`heal`, or ``async with injector.partitioned():``:
      every call fails with ``BackendUnavailable`` and open watches break;
    - a :class:`StoreSwitch` shared by all wrappers of a store: a whole-store outage;
    - :meth:`pause` / :meth:`resume`: a process pause (see below);
    - :meth:`crash`: the candidate vanishes without releasing (cancel its tasks
      afterwards);
    - ``timeout``: like a real client's request timeout, a call that takes longer
      than this many seconds fails with ``BackendUnavailable`` (with ``in_flight``
      its request may still land);
    - ``drift``: the store's clock runs fast by this fraction relative to the
      candidate's, modelled by asking the store for ``ttl * (1 - drift)`` on every
      create and update. The library is safe while ``drift < guard / ttl``;
    - ``reads_overtake``: a read reaches the store at once, ahead of this
      candidate's writes still on their way, as NATS may answer a read before it
      applies a publish sent earlier on the same connection. A read then never
      proves that an earlier write of its own did not land.

    Requests in flight: without ``in_flight``, cancelling a caller also cancels its
    request wherever it is. With ``in_flight`` (a nursery that outlives the
    candidate) a request that has left the candidate keeps travelling when its
    caller gives up (a timeout, a cancellation, a crash) and is applied when it
    arrives, like a packet already on the wire: the "applied long after it was
    sent" case of docs/guarantees.rst (ambiguous writes).

    The pause model: trio cannot freeze a task, so a pause freezes the candidate's
    I/O instead. While paused, requests wait at a gate before they are sent,
    replies and watch items wait at the gate before the candidate sees them, and
    side effects sent through :meth:`perform` (for example writes to a
    :class:`FencedResource`) are held. On :meth:`resume` the held side effects are
    performed in order, at the resume instant, *even if the task that issued them
    was cancelled meanwhile*: a write issued just before or during the pause
    reaches its target after the pause with the old token, which is exactly what
    fencing must reject. Limits of the model: the candidate's timers keep running,
    so its renewals time out during the pause and its body is cancelled at its
    deadline rather than at the resume (a real paused process would notice only
    after resuming); side effects that bypass :meth:`perform` are not held.

    Random draws come from ``rng`` (a :class:`random.Random`), so a seeded run
    replays exactly. Every call is recorded in :attr:`calls`, every write that
    reached the store in :attr:`writes`.
    """

    def __init__(self, inner: Backend, *, latency: float | Callable[[], float] = 0.0,
                 lose_requests: float = 0.0, lose_replies: float = 0.0,
                 rng: random.Random | None = None, name: str = "",
                 switch: StoreSwitch | None = None, drift: float = 0.0,
                 in_flight: trio.Nursery | None = None,
                 timeout: float | None = None, reads_overtake: bool = False) -> None:
        if not 0.0 <= drift < 1.0:
            raise ValueError(f"drift={drift!r}: must be >= 0 and < 1")
        self.inner = inner
        self.latency = latency
        self.lose_requests = lose_requests
        self.lose_replies = lose_replies
        self.rng = rng if rng is not None else random.Random(0)
        self.name = name
        self.switch = switch
        self.drift = drift
        self.in_flight = in_flight
        self.timeout = timeout
        self.reads_overtake = reads_overtake
        self.lose_next_replies = 0
        #: Every call, as its caller saw it.
        self.calls: list[Call] = []
        #: Every write that reached the store, as the store saw it.
        self.writes: list[StoreWrite] = []
        #: Side effects dropped because the candidate crashed while paused.
        self.dropped: list[DroppedEffect] = []
        self._partitioned = False
        self._crashed = False
        self._paused = False
        self._resumed = trio.Event()
        self._held: list[_Held] = []
        self._changed = trio.Event()
        self._recorded = trio.Event()
        if switch is not None:
            switch._wrappers.add(self)

    def __repr__(self) -> str:
        return f"<FaultyBackend {self.name!r} over {self.inner!r}>"

    # -- controls ----------------------------------------------------------------

    @property
    def down(self) -> bool:
        """True while partitioned, while the switch is cut, or after a crash."""
        return self._network_down() or self._crashed

    @property
    def crashed(self) -> bool:
        """True after :meth:`crash`."""
        return self._crashed

    @property
    def paused(self) -> bool:
        """True between :meth:`pause` and :meth:`resume`."""
        return self._paused

    def partition(self) -> None:
        """Cut this candidate off the store until :meth:`heal`."""
        self._partitioned = True
        self._break_watches()

    def heal(self) -> None:
        """End a partition (a crash is permanent)."""
        self._partitioned = False

    def crash(self) -> None:
        """The candidate vanishes: it sends nothing more and hears nothing more.

        Side effects held by a pause are dropped (see :attr:`dropped`). Requests it
        already sent still arrive when ``in_flight`` is set. Cancel the candidate's
        tasks afterwards: a crashed process does not release its lease.
        """
        self._crashed = True
        now = trio.current_time()
        held, self._held = self._held, []
        for item in held:
            self.dropped.append(DroppedEffect(now, item.issued, item.fn, item.args, item.kwargs))
        self._paused = False
        self._resumed.set()
        self._break_watches()

    def pause(self) -> None:
        """Freeze the candidate's I/O until :meth:`resume` (see the pause model)."""
        if not self._paused and not self._crashed:
            self._paused = True
            self._resumed = trio.Event()

    def resume(self) -> None:
        """End a pause: perform held side effects in order, then release the gate."""
        if not self._paused:
            return
        self._paused = False
        held, self._held = self._held, []
        for item in held:
            try:
                item.result = item.fn(*item.args, **item.kwargs)
            except Exception as exc:
                item.error = exc
            item.done.set()
        self._resumed.set()

    @asynccontextmanager
    async def partitioned(self) -> AsyncIterator[None]:
        """Partition for the duration of the block."""
        self.partition()
        try:
            yield
        finally:
            self.heal()

    async def wait_calls(self, count: int) -> None:
        """Wait until at least *count* calls have been recorded in :attr:`calls`."""
        while len(self.calls) < count:
            await self._recorded.wait()

    async def perform(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Call ``fn(*args, **kwargs)``, a side effect of this candidate, through its gate.

        Not paused: call it now (this is a checkpoint; a pending cancellation
        prevents it). Paused: hold it until :meth:`resume`, which calls it even if
        this call was cancelled meanwhile: the effect had already left. *fn* is a
        plain synchronous callable, e.g. :meth:`FencedResource.write`.
        After :meth:`crash` nothing is performed (the effect is recorded in
        :attr:`dropped`) and the call never returns: cancel the candidate's tasks.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        now = trio.current_time()
        if self._crashed:
            self.dropped.append(DroppedEffect(now, now, fn, args, dict(kwargs)))
            await trio.sleep_forever()
        if not self._paused:
            result = fn(*args, **kwargs)
            await trio.lowlevel.cancel_shielded_checkpoint()
            return result
        item = _Held(now, fn, args, dict(kwargs))
        self._held.append(item)
        await item.done.wait()
        if item.error is not None:
            raise item.error
        return item.result  # type: ignore[return-value]

    # -- plumbing ----------------------------------------------------------------

    def _network_down(self) -> bool:
        return self._partitioned or (self.switch is not None and self.switch.down)

    def _break_watches(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def _record(self, call: Call) -> None:
        self.calls.append(call)
        self._recorded.set()
        self._recorded = trio.Event()

    def check_ttl(self, ttl: float) -> None:
        self.inner.check_ttl(ttl)

    def _store_ttl(self, ttl: float) -> float:
        return ttl * (1.0 - self.drift) if self.drift else ttl

    async def _delay(self) -> None:
        delay = self.latency() if callable(self.latency) else self.latency
        if delay > 0:
            await trio.sleep(delay)

    async def _gate(self) -> None:
        while self._paused:
            await self._resumed.wait()

    def _unavailable(self, what: str) -> BackendUnavailable:
        return BackendUnavailable(f"injected fault: {what} ({self.name or 'candidate'})")

    async def _fly(self, flight: _Flight[T], op: str, key: str, sent: float,
                   call: Callable[[], Awaitable[T]], write: bool, revision: int | None,
                   value: bytes | None) -> None:
        """Carry one request to the store and apply it there."""
        try:
            if write or not self.reads_overtake:
                await self._delay()
            if self._network_down() or (
                    self.lose_requests and self.rng.random() < self.lose_requests):
                flight.lost = True
                return
            try:
                flight.result = await call()
            except Exception as exc:
                flight.error = exc
            if write:
                new_revision = flight.result if op != "delete" and flight.error is None else None
                self.writes.append(StoreWrite(
                    trio.current_time(), sent, self.name, op, key, revision, value,
                    "ok" if flight.error is None else type(flight.error).__name__,
                    new_revision))
        finally:
            flight.done.set()

    async def _through(self, op: str, key: str, call: Callable[[], Awaitable[T]],
                       *, write: bool, revision: int | None = None,
                       value: bytes | None = None) -> T:
        sent = trio.current_time()
        try:
            if self.timeout is None:
                return await self._exchange(op, key, sent, call, write, revision, value)
            with trio.move_on_after(self.timeout):
                return await self._exchange(op, key, sent, call, write, revision, value)
            self._record(Call(trio.current_time(), op, key, "timeout", sent))
            raise self._unavailable(f"no answer within {self.timeout:.3g} s")
        except trio.Cancelled:
            self._record(Call(trio.current_time(), op, key, "cancelled", sent))
            raise

    async def _exchange(self, op: str, key: str, sent: float,
                        call: Callable[[], Awaitable[T]], write: bool,
                        revision: int | None, value: bytes | None) -> T:
        """Send one request, let it reach the store, bring the reply back."""
        record = self._record
        await self._gate()
        if self._crashed:
            record(Call(trio.current_time(), op, key, "lost-request", sent))
            raise self._unavailable("crashed")
        flight: _Flight[T] = _Flight()
        if self.in_flight is None:
            await self._fly(flight, op, key, sent, call, write, revision, value)
        else:
            self.in_flight.start_soon(self._fly, flight, op, key, sent, call, write,
                                      revision, value)
            await flight.done.wait()
        if flight.lost:
            record(Call(trio.current_time(), op, key, "lost-request", sent))
            raise self._unavailable("request lost")
        if flight.error is not None:
            record(Call(trio.current_time(), op, key,
                        f"error:{type(flight.error).__name__}", sent))
            raise flight.error
        lost = self.down
        if write and not lost and self.lose_next_replies > 0:
            self.lose_next_replies -= 1
            lost = True
        if write and not lost and self.lose_replies:
            lost = self.rng.random() < self.lose_replies
        if not lost:
            await self._delay()
            await self._gate()
            lost = self.down
        if lost:
            record(Call(trio.current_time(), op, key, "lost-reply", sent))
            raise self._unavailable("reply lost")
        record(Call(trio.current_time(), op, key, "ok", sent))
        result: T = flight.result
        return result

    # -- the protocol ------------------------------------------------------------

    async def create(self, key: str, value: bytes, *, ttl: float) -> int:
        store_ttl = self._store_ttl(ttl)
        return await self._through(
            "create", key, lambda: self.inner.create(key, value, ttl=store_ttl),
            write=True, value=bytes(value))

    async def update(self, key: str, value: bytes, *, revision: int, ttl: float) -> int:
        store_ttl = self._store_ttl(ttl)
        return await self._through(
            "update", key,
            lambda: self.inner.update(key, value, revision=revision, ttl=store_ttl),
            write=True, revision=revision, value=bytes(value))

    async def get(self, key: str) -> Entry | None:
        return await self._through("get", key, lambda: self.inner.get(key), write=False)

    async def delete(self, key: str, *, revision: int) -> None:
        await self._through("delete", key, lambda: self.inner.delete(key, revision=revision),
                            write=True, revision=revision)

    async def keys(self) -> list[str]:
        return await self._through("keys", "", self.inner.keys, write=False)

    def watch(self, key: str) -> AbstractAsyncContextManager[AsyncIterator[Entry | None]]:
        return self._watch(key)

    @asynccontextmanager
    async def _watch(self, key: str) -> AsyncIterator[AsyncIterator[Entry | None]]:
        sent = trio.current_time()
        await self._gate()
        await self._delay()
        if self.down:
            self._record(Call(trio.current_time(), "watch", key, "lost-request", sent))
            raise self._unavailable("watch refused")
        async with self.inner.watch(key) as updates:
            iterator = self._iterate(updates)
            try:
                yield iterator
            finally:
                await iterator.aclose()

    async def _iterate(self, updates: AsyncIterator[Entry | None]
                       ) -> AsyncGenerator[Entry | None, None]:
        while True:
            if self.down:
                raise self._unavailable("watch broken")
            item = await _next_or_break(updates, self._changed)
            if self.down:
                raise self._unavailable("watch broken")
            await self._delay()
            await self._gate()
            if self.down:
                raise self._unavailable("watch broken")
            yield item


async def _next_or_break(updates: AsyncIterator[Entry | None],
                         changed: trio.Event) -> Entry | None:
    """The next item of *updates*, or BackendUnavailable if *changed* fires first."""
    result: list[Entry | None] = []
    error: list[BaseException] = []
    async with trio.open_nursery() as nursery:
        async def _next() -> None:
            try:
                result.append(await anext(updates))
            except Exception as exc:
                # Re-raised below, bare: never let it out wrapped in a group.
                error.append(exc)
            nursery.cancel_scope.cancel()

        async def _watch_partition() -> None:
            await changed.wait()
            nursery.cancel_scope.cancel()

        nursery.start_soon(_next)
        nursery.start_soon(_watch_partition)
    if error:
        raise error[0]
    if not result:
        raise BackendUnavailable("injected fault: watch broken")
    return result[0]
