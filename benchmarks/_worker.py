"""Subprocess roles that use trio-noleader (one process each)::

    python -m benchmarks._worker candidate URL KEY TTL
    python -m benchmarks._worker renewal URL PREFIX LEASES TTL ROUNDS
    python -m benchmarks._worker contention URL KEY TASKS TTL HOLD DURATION NAME
    python -m benchmarks._worker cas URL CALLS WARMUP TTL
    python -m benchmarks._worker bridged-cas URL BUCKET CALLS WARMUP TTL

Each writes JSON lines on stdout. Times that other processes compare are
:func:`time.monotonic` (CLOCK_MONOTONIC on Linux: one clock for the whole host,
immune to wall-clock steps).
"""

from __future__ import annotations

import collections
import json
import logging
import os
import re
import sys
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

import trio

import trio_noleader
from trio_noleader import NoLeaderError
from trio_noleader.abc import Backend, Entry, Update

__all__ = ["CountingBackend", "main"]


def emit(**fields: Any) -> None:
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


class WarningCounter(logging.Handler):
    """Counts the library's warnings (store errors while campaigning, failed renewals).

    Keyed by the message with the election key and numbers stripped, so that one
    kind of failure is one line of the report.
    """

    def __init__(self, key: str) -> None:
        super().__init__(logging.WARNING)
        self.key = key
        self.counts: collections.Counter[str] = collections.Counter()

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage().replace(self.key, "KEY")
        text = re.sub(r"\d+\.\d+|\b[0-9a-f]{8}-[0-9a-f-]{27}\b", "N", text)
        self.counts[text[:200]] += 1

    @classmethod
    def install(cls, key: str) -> WarningCounter:
        counter = cls(key)
        logger = logging.getLogger("trio_noleader")
        logger.addHandler(counter)
        logger.propagate = False
        return counter


def cpu_seconds() -> float:
    """User + system CPU of this process, every thread included (SQLite's workers too)."""
    return time.process_time()


async def wait_for_stdin_line() -> bool:
    """Return True when a line arrives on stdin, False when it closes first."""
    stdin = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
    async with stdin:
        data = b""
        while b"\n" not in data:
            chunk = await stdin.receive_some()
            if not chunk:
                return False
            data += chunk
    return True


class CountingBackend(Backend):
    """Delegates to another backend and counts the calls (one integer add per call)."""

    def __init__(self, inner: Backend) -> None:
        self.inner = inner
        self.calls: dict[str, int] = {"create": 0, "update": 0, "get": 0, "delete": 0,
                                      "watch": 0}

    async def create(self, key: str, value: bytes, *, ttl: float) -> int:
        self.calls["create"] += 1
        return await self.inner.create(key, value, ttl=ttl)

    async def update(self, key: str, value: bytes, *, revision: int, ttl: float) -> int:
        self.calls["update"] += 1
        return await self.inner.update(key, value, revision=revision, ttl=ttl)

    async def update_many(self, updates: Sequence[Update]) -> list[int | NoLeaderError]:
        # Delegated, so that the core batches renewals as it does on the bare backend.
        self.calls["update"] += len(updates)
        return await self.inner.update_many(updates)

    async def get(self, key: str) -> Entry | None:
        self.calls["get"] += 1
        return await self.inner.get(key)

    async def delete(self, key: str, *, revision: int) -> None:
        self.calls["delete"] += 1
        await self.inner.delete(key, revision=revision)

    def watch(self, key: str) -> AbstractAsyncContextManager[AsyncIterator[Entry | None]]:
        self.calls["watch"] += 1
        return self.inner.watch(key)

    async def keys(self) -> list[str]:
        return await self.inner.keys()

    def check_ttl(self, ttl: float) -> None:
        self.inner.check_ttl(ttl)


# -- crash failover -------------------------------------------------------------------


async def candidate(url: str, key: str, ttl: float) -> None:
    """Campaign; report ``start`` once elected; hold until killed or stdin closes."""
    async with trio_noleader.open_backend(url):
        emit(event="campaign", t=time.monotonic())
        async with trio_noleader.hold_leadership(key, ttl=ttl) as lead:
            emit(event="start", t=time.monotonic(), token=lead.token)
            await wait_for_stdin_line()


# -- renewal cost ---------------------------------------------------------------------


async def renewal(url: str, prefix: str, leases: int, ttl: float, rounds: int) -> None:
    """Hold *leases* leases; measure CPU over exactly *rounds* renewal rounds.

    Every lease renews every ``ttl/3`` s (the default), all in the same phase since
    they were acquired together. The window starts half a renewal interval after
    the last acquisition and lasts ``rounds`` intervals, so it holds exactly
    ``rounds`` renewals of every lease.
    """
    renew_interval = ttl / 3
    async with trio_noleader.open_backend(url) as inner:
        backend = CountingBackend(inner)
        held: dict[int, trio_noleader.Leadership] = {}
        lost: list[str] = []
        # Campaigns or terms that died of anything else: reported, not fatal, so that
        # the run still prints what it measured.
        errors: list[str] = []
        all_elected = trio.Event()
        done = trio.Event()
        acquired_at: list[float] = []

        def settled() -> None:
            if len(held) + len(errors) >= leases:
                all_elected.set()

        async def hold(i: int) -> None:
            try:
                async with trio_noleader.hold_leadership(f"{prefix}/{i}", backend=backend,
                                                         ttl=ttl) as lead:
                    held[i] = lead
                    acquired_at.append(trio.current_time())
                    settled()
                    await done.wait()
            except trio_noleader.LeadershipLost as exc:
                lost.append(str(exc))
            except Exception as exc:
                errors.append(f"{type(exc).__module__}.{type(exc).__qualname__}: {exc}"[:300])
                settled()

        t_begin = trio.current_time()
        async with trio.open_nursery() as nursery:
            for i in range(leases):
                nursery.start_soon(hold, i)
            await all_elected.wait()
            acquire_s = trio.current_time() - t_begin
            last = max(acquired_at, default=trio.current_time())
            spread = last - min(acquired_at, default=last)
            await trio.sleep_until(last + renew_interval / 2)
            calls0 = dict(backend.calls)
            cpu0, wall0 = cpu_seconds(), time.perf_counter()
            # One reading per renewal interval: each slice holds one round of renewals.
            round_cpu: list[float] = []
            start = trio.current_time()
            for r in range(1, rounds + 1):
                before = cpu_seconds()
                await trio.sleep_until(start + r * renew_interval)
                round_cpu.append(cpu_seconds() - before)
            cpu, wall = cpu_seconds() - cpu0, time.perf_counter() - wall0
            calls = {name: backend.calls[name] - calls0[name] for name in calls0}
            # Still held? Per lease, what the store says and, right after, what the
            # holder's own deadline says. The two must agree except in one direction: a
            # body may stop (its deadline passed) before the store drops the lease, never
            # run on after the store dropped it ("unsafe" counts that, and must be 0).
            held_in_store = held_locally = unsafe = 0

            async def check(i: int, lead: trio_noleader.Leadership) -> None:
                nonlocal held_in_store, held_locally, unsafe
                info = await trio_noleader.current_leader(f"{prefix}/{i}", backend=inner)
                in_store = info is not None and info.candidate_id == lead.candidate_id
                local = (not lead.cancel_scope.cancel_called
                         and lead.deadline > trio.current_time())
                held_in_store += in_store
                held_locally += local
                unsafe += local and not in_store

            async with trio.open_nursery() as checks:
                for i, lead in held.items():
                    checks.start_soon(check, i, lead)
            done.set()
        emit(leases=leases, ttl=ttl, renew_interval=renew_interval, rounds=rounds, cpu=cpu,
             wall=wall, round_cpu=round_cpu, calls=calls, held_locally=held_locally,
             held_in_store=held_in_store, unsafe=unsafe, lost=len(lost), errors=len(errors),
             error_kinds=sorted({e.split(":", 1)[0] for e in errors}), acquire_s=acquire_s,
             acquire_spread_s=spread)


# -- contention -----------------------------------------------------------------------


async def contention(url: str, key: str, tasks: int, ttl: float, hold: float,
                     duration: float, name: str) -> None:
    """*tasks* candidates on one key; each term lasts *hold* s, then the leader resigns.

    A candidate that resigned sits out *hold* s before it campaigns again.

    Reports ``ready`` once the backend is open, waits for a line on stdin, runs for
    *duration* s and reports every term it had: monotonic start and end of the
    body (the end taken before the lease is released) and the fencing token.
    """
    warnings = WarningCounter.install(key)
    async with trio_noleader.open_backend(url) as inner:
        backend = CountingBackend(inner)
        emit(event="ready")
        if not await wait_for_stdin_line():
            return
        terms: list[dict[str, Any]] = []
        lost = 0

        async def one(j: int) -> None:
            nonlocal lost
            while True:
                try:
                    async with trio_noleader.hold_leadership(key, backend=backend,
                                                             ttl=ttl) as lead:
                        start = time.monotonic()
                        try:
                            await trio.sleep(hold)
                        finally:
                            terms.append({"start": start, "end": time.monotonic(),
                                          "token": lead.token, "who": f"{name}/{j}"})
                        lead.resign()
                        await trio.lowlevel.checkpoint()
                except trio_noleader.LeadershipLost:
                    lost += 1
                # A candidate that campaigns again at once is first at the free key
                # (it need not wait for a watch notice) and would lead again: sit out
                # one term so that the handover goes to one of the others.
                await trio.sleep(hold)

        cpu0 = cpu_seconds()
        with trio.move_on_after(duration):
            async with trio.open_nursery() as nursery:
                for j in range(tasks):
                    nursery.start_soon(one, j)
        emit(event="done", terms=terms, lost=lost, cpu=cpu_seconds() - cpu0,
             warnings=dict(warnings.counts), calls=backend.calls)


# -- bridge overhead ------------------------------------------------------------------


async def cas(url: str, calls: int, warmup: int, ttl: float) -> None:
    """Sequential ``backend.update`` calls: the library's renewal path into the store."""
    async with trio_noleader.open_backend(url) as backend:
        key = f"bench/cas/{uuid.uuid4().hex}"
        value = uuid.uuid4().bytes + (1).to_bytes(8, "big")
        revision = await backend.create(key, value, ttl=ttl)
        for _ in range(warmup):
            revision = await backend.update(key, value, revision=revision, ttl=ttl)
        samples: list[float] = []
        cpu0, wall0 = cpu_seconds(), time.perf_counter()
        for _ in range(calls):
            t0 = time.perf_counter()
            revision = await backend.update(key, value, revision=revision, ttl=ttl)
            samples.append(time.perf_counter() - t0)
        cpu, wall = cpu_seconds() - cpu0, time.perf_counter() - wall0
        await backend.delete(key, revision=revision)
    emit(samples=samples, cpu=cpu, wall=wall)


async def bridged_cas(url: str, bucket: str, calls: int, warmup: int, ttl: int) -> None:
    """The raw baseline's compare-and-set (:func:`benchmarks._raw.publish_cas`) called
    from trio through ``trio_asyncio.aio_as_trio`` once per call, as the library
    calls nats-py, but without trio-noleader: what the bridge alone costs."""
    import nats
    import trio_asyncio

    from ._raw import MARKER_TTL, publish_cas

    async with trio_asyncio.open_loop():
        nc = await trio_asyncio.aio_as_trio(nats.connect)(url)
        try:
            js = nc.jetstream()
            await trio_asyncio.aio_as_trio(js.create_key_value)(
                bucket=bucket, history=1, limit_marker_ttl=MARKER_TTL)
            subject = f"$KV.{bucket}.bridged-cas-{os.getpid()}"
            value = os.urandom(24)
            publish = trio_asyncio.aio_as_trio(publish_cas)
            revision = await publish(js, subject, value, 0, ttl)
            for _ in range(warmup):
                revision = await publish(js, subject, value, revision, ttl)
            samples: list[float] = []
            cpu0, wall0 = cpu_seconds(), time.perf_counter()
            for _ in range(calls):
                t0 = time.perf_counter()
                revision = await publish(js, subject, value, revision, ttl)
                samples.append(time.perf_counter() - t0)
            cpu, wall = cpu_seconds() - cpu0, time.perf_counter() - wall0
        finally:
            await trio_asyncio.aio_as_trio(nc.close)()
    emit(samples=samples, cpu=cpu, wall=wall)


def main(argv: list[str]) -> int:
    role, *args = argv
    if role == "candidate":
        url, key, ttl = args
        trio.run(candidate, url, key, float(ttl))
    elif role == "renewal":
        url, prefix, leases, ttl, rounds = args
        trio.run(renewal, url, prefix, int(leases), float(ttl), int(rounds))
    elif role == "contention":
        url, key, tasks, ttl, hold, duration, name = args
        trio.run(contention, url, key, int(tasks), float(ttl), float(hold), float(duration),
                 name)
    elif role == "cas":
        url, calls, warmup, ttl = args
        trio.run(cas, url, int(calls), int(warmup), float(ttl))
    elif role == "bridged-cas":
        url, bucket, calls, warmup, ttl = args
        trio.run(bridged_cas, url, bucket, int(calls), int(warmup), int(ttl))
    else:
        raise SystemExit(f"unknown role {role!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
