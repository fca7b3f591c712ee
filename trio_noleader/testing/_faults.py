"""FaultyBackend: one candidate's view of a store, with faults injected on demand."""

from __future__ import annotations

import random
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import TypeVar

import trio

from .._exceptions import BackendUnavailable
from .._types import Entry
from ..abc import Backend

__all__ = ["Call", "FaultyBackend"]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Call:
    """One call through a :class:`FaultyBackend`, as the injector saw it.

    ``outcome`` is ``"ok"``, ``"error:<Type>"`` (the store raised it), ``"lost-request"``
    (never reached the store), ``"lost-reply"`` (applied, but the caller was told it
    failed) or ``"cancelled"``.
    """

    time: float
    op: str
    key: str
    outcome: str


class FaultyBackend(Backend):
    """Wrap *inner* so that tests can break the link between one candidate and the store.

    Give each simulated candidate its own ``FaultyBackend`` over one shared store;
    each fault then hits that candidate only. Faults, all settable at any time:

    - ``latency``: seconds (or a zero-argument callable drawing them) each call waits
      before it reaches the store, and again before its reply returns;
    - ``lose_requests``: probability that a call fails before reaching the store;
    - ``lose_replies``: probability that a *write* is applied but its reply is lost
      (the caller gets ``BackendUnavailable``: the ambiguous case);
      ``lose_next_replies``: a count of writes whose replies are lost for certain;
    - :meth:`partition` / :meth:`heal`, or ``async with injector.partitioned():``:
      every call fails with ``BackendUnavailable`` and open watches break;
    - :meth:`crash`: a permanent partition (the candidate vanishes without
      releasing; cancel its tasks afterwards).

    Random draws come from ``rng`` (a :class:`random.Random`), so a seeded run
    replays exactly. Every call is recorded in :attr:`calls`.
    """

    def __init__(self, inner: Backend, *, latency: float | Callable[[], float] = 0.0,
                 lose_requests: float = 0.0, lose_replies: float = 0.0,
                 rng: random.Random | None = None, name: str = "") -> None:
        self.inner = inner
        self.latency = latency
        self.lose_requests = lose_requests
        self.lose_replies = lose_replies
        self.rng = rng if rng is not None else random.Random(0)
        self.name = name
        self.lose_next_replies = 0
        self.calls: list[Call] = []
        self._down = False
        self._crashed = False
        self._changed = trio.Event()
        self._recorded = trio.Event()

    def __repr__(self) -> str:
        return f"<FaultyBackend {self.name!r} over {self.inner!r}>"

    # -- controls ----------------------------------------------------------------

    @property
    def down(self) -> bool:
        """True while partitioned or after a crash."""
        return self._down or self._crashed

    def partition(self) -> None:
        """Cut this candidate off the store until :meth:`heal`."""
        self._down = True
        self._changed.set()
        self._changed = trio.Event()

    def heal(self) -> None:
        """End a partition (a crash is permanent)."""
        self._down = False

    def crash(self) -> None:
        """Cut this candidate off for good."""
        self._crashed = True
        self.partition()

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

    # -- plumbing ----------------------------------------------------------------

    def _record(self, call: Call) -> None:
        self.calls.append(call)
        self._recorded.set()
        self._recorded = trio.Event()

    def check_ttl(self, ttl: float) -> None:
        self.inner.check_ttl(ttl)

    async def _delay(self) -> None:
        delay = self.latency() if callable(self.latency) else self.latency
        if delay > 0:
            await trio.sleep(delay)

    def _unavailable(self, what: str) -> BackendUnavailable:
        return BackendUnavailable(f"injected fault: {what} ({self.name or 'candidate'})")

    async def _through(self, op: str, key: str, call: Callable[[], Awaitable[T]],
                       *, write: bool) -> T:
        record = self._record
        try:
            await self._delay()
            if self.down or (self.lose_requests and self.rng.random() < self.lose_requests):
                record(Call(trio.current_time(), op, key, "lost-request"))
                raise self._unavailable("request lost")
            try:
                result = await call()
            except BaseException as exc:
                if not isinstance(exc, trio.Cancelled):
                    record(Call(trio.current_time(), op, key, f"error:{type(exc).__name__}"))
                raise
            lost: bool = self.down
            if write and not lost and self.lose_next_replies > 0:
                self.lose_next_replies -= 1
                lost = True
            if write and not lost and self.lose_replies:
                lost = self.rng.random() < self.lose_replies
            if not lost:
                await self._delay()
                lost = self.down
            if lost:
                record(Call(trio.current_time(), op, key, "lost-reply"))
                raise self._unavailable("reply lost")
            record(Call(trio.current_time(), op, key, "ok"))
            return result
        except trio.Cancelled:
            record(Call(trio.current_time(), op, key, "cancelled"))
            raise

    # -- the protocol ------------------------------------------------------------

    async def create(self, key: str, value: bytes, *, ttl: float) -> int:
        return await self._through("create", key,
                                   lambda: self.inner.create(key, value, ttl=ttl), write=True)

    async def update(self, key: str, value: bytes, *, revision: int, ttl: float) -> int:
        return await self._through(
            "update", key, lambda: self.inner.update(key, value, revision=revision, ttl=ttl),
            write=True)

    async def get(self, key: str) -> Entry | None:
        return await self._through("get", key, lambda: self.inner.get(key), write=False)

    async def delete(self, key: str, *, revision: int) -> None:
        await self._through("delete", key,
                            lambda: self.inner.delete(key, revision=revision), write=True)

    async def keys(self) -> list[str]:
        return await self._through("keys", "", self.inner.keys, write=False)

    def watch(self, key: str) -> AbstractAsyncContextManager[AsyncIterator[Entry | None]]:
        return self._watch(key)

    @asynccontextmanager
    async def _watch(self, key: str) -> AsyncIterator[AsyncIterator[Entry | None]]:
        await self._delay()
        if self.down:
            self._record(Call(trio.current_time(), "watch", key, "lost-request"))
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
            item = await _next_or_partition(updates, self._changed)
            if self.down:
                raise self._unavailable("watch broken")
            await self._delay()
            yield item


async def _next_or_partition(updates: AsyncIterator[Entry | None],
                             changed: trio.Event) -> Entry | None:
    """The next item of *updates*, or BackendUnavailable if *changed* fires first."""
    result: list[Entry | None] = []
    async with trio.open_nursery() as nursery:
        async def _next() -> None:
            result.append(await anext(updates))
            nursery.cancel_scope.cancel()

        async def _watch_partition() -> None:
            await changed.wait()
            nursery.cancel_scope.cancel()

        nursery.start_soon(_next)
        nursery.start_soon(_watch_partition)
    if not result:
        raise BackendUnavailable("injected fault: watch broken")
    return result[0]
