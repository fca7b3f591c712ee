"""Subprocess roles that use trio-noleader (one process each)::

    python -m benchmarks._worker candidate URL KEY TTL
    python -m benchmarks._worker handover-peer URL KEY TTL
    python -m benchmarks._worker renewal URL PREFIX LEASES TTL ROUNDS MODE
        (MODE: batched, unbatched, metrics = batched with Prometheus metrics on,
        silent = batched with no observer, not even logging's)
    python -m benchmarks._worker contention URL KEY TASKS TTL HOLD DURATION NAME
    python -m benchmarks._worker proxy HOST PORT
    python -m benchmarks._worker cas URL CALLS WARMUP TTL
    python -m benchmarks._worker cas-many URL CALLS WARMUP TTL BATCH
    python -m benchmarks._worker bridged-cas URL BUCKET CALLS WARMUP TTL
    python -m benchmarks._worker bridged-noop CALLS WARMUP
    python -m benchmarks._worker bridged-pipelined URL BUCKET CALLS WARMUP TTL BATCH

MODE is ``batched`` (the backend as it is) or ``unbatched`` (through a wrapper
without ``update_many``, so that each renewal is its own call).

Each writes JSON lines on stdout. Times that other processes compare are
:func:`time.monotonic` (CLOCK_MONOTONIC on Linux: one clock for the whole host,
immune to wall-clock steps).
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
import re
import sys
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio

import trio_noleader
from trio_noleader.abc import Backend, Update

from ._count import CountingBackend, UnbatchedCountingBackend, WireCounter
from ._profile import Probe

__all__ = ["main"]

#: How many leases the renewal role checks at once at the end.
CHECKS_AT_ONCE = 20


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


@asynccontextmanager
async def counted_backend(url: str, *, batched: bool = True, on_wire: bool = True
                          ) -> AsyncIterator[tuple[Backend, CountingBackend, WireCounter]]:
    """Open *url*; yield the backend, a counting wrapper of it, and its wire counter.

    Campaigns go through the wrapper (``backend=``). The wire counter also counts
    what opening the backend cost: reset it where the measurement starts. With
    *on_wire* False it counts nothing (it costs a little CPU per request).
    """
    wire = WireCounter()
    with wire.sqlite_connections() if on_wire else contextlib.nullcontext():
        async with trio_noleader.open_backend(url) as inner:
            if on_wire:
                wire.attach_nats(inner)
            wrapper = CountingBackend(inner) if batched else UnbatchedCountingBackend(inner)
            yield inner, wrapper, wire


# -- crash failover -------------------------------------------------------------------


async def candidate(url: str, key: str, ttl: float) -> None:
    """Campaign; report ``start`` once elected; hold until killed or stdin closes."""
    async with trio_noleader.open_backend(url):
        emit(event="campaign", t=time.monotonic())
        async with trio_noleader.hold_leadership(key, ttl=ttl) as lead:
            emit(event="start", t=time.monotonic(), token=lead.token)
            await wait_for_stdin_line()


async def handover_peer(url: str, key: str, ttl: float) -> None:
    """One candidate of a handover between two processes, driven by lines on stdin.

    Commands, each answered by events numbered N from 1 (times on CLOCK_MONOTONIC):

    - ``campaign``: enter ``hold_leadership``: ``campaigning-N`` at once, then
      ``started-N`` with the time of the body's first instruction.
    - ``leave``: the body's last instruction takes the time, the block exits (and
      releases the lease), then ``left-N`` reports that time.
    """
    async with trio_noleader.open_backend(url) as backend:
        stdin = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
        leave = trio.Event()

        async def lead(n: int) -> None:
            emit(event=f"campaigning-{n}")
            async with trio_noleader.hold_leadership(key, backend=backend, ttl=ttl):
                emit(event=f"started-{n}", t=time.monotonic())
                await leave.wait()
                left = time.monotonic()
            emit(event=f"left-{n}", t=left)

        async with stdin, trio.open_nursery() as nursery:
            buffer = b""
            n = 0
            while True:
                chunk = await stdin.receive_some()
                if not chunk:
                    nursery.cancel_scope.cancel()
                    return
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    n += 1
                    if line.strip() == b"campaign":
                        nursery.start_soon(lead, n)
                    elif line.strip() == b"leave":
                        leave.set()
                        leave = trio.Event()


# -- renewal cost ---------------------------------------------------------------------


async def renewal(url: str, prefix: str, leases: int, ttl: float, rounds: int,
                  mode: str) -> None:
    """Hold *leases* leases; measure CPU over exactly *rounds* renewal rounds.

    Every lease renews every ``ttl/3`` s (the default), all in the same phase since
    they were acquired together. The window starts half a renewal interval after
    the last acquisition and lasts ``rounds`` intervals, so it holds exactly
    ``rounds`` renewals of every lease. *mode* ``unbatched`` renews through a
    wrapper without ``update_many``: one call per renewal.
    """
    renew_interval = ttl / 3
    if mode == "metrics":
        # Prometheus metrics on, into a registry of their own (nobody scrapes).
        from prometheus_client import CollectorRegistry

        from trio_noleader import metrics

        metrics.enable(CollectorRegistry())
    elif mode == "silent":
        # No observer at all, not even logging's: what the hook's check alone costs.
        from trio_noleader._observe import log_event

        trio_noleader.remove_observer(log_event)
    # Not counted on the wire: the CPU figures must not pay for the counting.
    async with counted_backend(url, batched=mode != "unbatched",
                               on_wire=False) as (inner, backend, wire):
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
            wire.reset()
            probe = Probe.start()
            cpu0, wall0 = cpu_seconds(), time.perf_counter()
            # One reading per renewal interval: each slice holds one round of renewals.
            round_cpu: list[float] = []
            start = trio.current_time()
            for r in range(1, rounds + 1):
                before = cpu_seconds()
                await trio.sleep_until(start + r * renew_interval)
                round_cpu.append(cpu_seconds() - before)
            cpu, wall = cpu_seconds() - cpu0, time.perf_counter() - wall0
            callbacks = probe.stop()
            calls = {name: backend.calls[name] - calls0[name] for name in calls0}
            on_wire = wire.snapshot()
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

            # A few at a time: a thousand reads at once would queue in front of the
            # renewals still running, and measure the read queue, not the leases.
            limiter = trio.CapacityLimiter(CHECKS_AT_ONCE)

            async def limited(i: int, lead: trio_noleader.Leadership) -> None:
                async with limiter:
                    await check(i, lead)

            async with trio.open_nursery() as checks:
                for i, lead in held.items():
                    checks.start_soon(limited, i, lead)
            done.set()
        emit(leases=leases, ttl=ttl, renew_interval=renew_interval, rounds=rounds, cpu=cpu,
             wall=wall, round_cpu=round_cpu, calls=calls, wire=on_wire, mode=mode,
             callbacks=callbacks,
             renewals=calls["update"] + calls["updates_in_batches"],
             held_locally=held_locally,
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
    async with counted_backend(url) as (_, backend, wire):
        emit(event="ready")
        if not await wait_for_stdin_line():
            return
        wire.reset()
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

        probe = Probe.start()
        cpu0 = cpu_seconds()
        with trio.move_on_after(duration):
            async with trio.open_nursery() as nursery:
                for j in range(tasks):
                    nursery.start_soon(one, j)
        cpu = cpu_seconds() - cpu0
        callbacks = probe.stop()
        # Taken here, before the backend closes: the store calls of the window and of
        # the releases at its end.
        emit(event="done", terms=terms, lost=lost, cpu=cpu, warnings=dict(warnings.counts),
             calls=backend.calls, wire=wire.snapshot(), callbacks=callbacks)


# -- distance -------------------------------------------------------------------------


async def proxy(host: str, port: int) -> None:
    """A :class:`~trio_noleader.testing.FaultProxy` to *host*:*port*, driven by stdin.

    Reports ``ready`` with its port; each line ``latency SECONDS`` sets the one-way
    latency of both directions (for open connections too) and is answered by an
    event ``latency-N`` (N counting from 1). Exits when stdin closes.
    """
    from trio_noleader.testing import FaultProxy

    async with FaultProxy(host, port) as fault_proxy:
        emit(event="ready", port=fault_proxy.port)
        stdin = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
        async with stdin:
            buffer = b""
            done = 0
            while True:
                chunk = await stdin.receive_some()
                if not chunk:
                    return
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    command, _, value = line.decode().partition(" ")
                    if command == "latency":
                        fault_proxy.set_latency(float(value))
                        done += 1
                        emit(event=f"latency-{done}", latency=float(value))


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
        probe = Probe.start()
        cpu0, wall0 = cpu_seconds(), time.perf_counter()
        for _ in range(calls):
            t0 = time.perf_counter()
            revision = await backend.update(key, value, revision=revision, ttl=ttl)
            samples.append(time.perf_counter() - t0)
        cpu, wall = cpu_seconds() - cpu0, time.perf_counter() - wall0
        callbacks = probe.stop()
        await backend.delete(key, revision=revision)
    emit(samples=samples, cpu=cpu, wall=wall, callbacks=callbacks)


async def cas_many(url: str, calls: int, warmup: int, ttl: float, batch: int) -> None:
    """``backend.update_many`` of *batch* compare-and-set updates per call, on as many keys.

    The shape of a batched renewal round. ``samples`` are seconds per call (a whole
    batch); ``cpu`` is over all *calls* updates, so CPU per update is ``cpu / calls``.
    """
    async with trio_noleader.open_backend(url) as backend:
        prefix = f"bench/cas-many/{uuid.uuid4().hex}"
        value = uuid.uuid4().bytes + (1).to_bytes(8, "big")
        revisions: dict[str, int] = {}

        async def make(i: int) -> None:
            revisions[f"{prefix}/{i}"] = await backend.create(f"{prefix}/{i}", value, ttl=ttl)

        async with trio.open_nursery() as nursery:
            for i in range(batch):
                nursery.start_soon(make, i)
        keys = sorted(revisions)

        async def one_batch() -> None:
            results = await backend.update_many(
                [Update(key, value, revisions[key], ttl) for key in keys])
            for key, result in zip(keys, results, strict=True):
                if not isinstance(result, int):
                    raise RuntimeError(f"a renewal in the batch failed: {result!r}")
                revisions[key] = result

        for _ in range(max(1, warmup // batch)):
            await one_batch()
        samples: list[float] = []
        rounds = max(1, calls // batch)
        probe = Probe.start()
        cpu0, wall0 = cpu_seconds(), time.perf_counter()
        for _ in range(rounds):
            t0 = time.perf_counter()
            await one_batch()
            samples.append(time.perf_counter() - t0)
        cpu, wall = cpu_seconds() - cpu0, time.perf_counter() - wall0
        callbacks = probe.stop()
    emit(samples=samples, cpu=cpu, wall=wall, updates=rounds * batch, batch=batch,
         callbacks=callbacks)


async def bridged_noop(calls: int, warmup: int) -> None:
    """``trio_asyncio.aio_as_trio`` of an asyncio coroutine that returns at once.

    The fixed price of one crossing into asyncio and back, whatever the call.
    """
    import trio_asyncio

    async def noop() -> None:
        return None

    async with trio_asyncio.open_loop():
        bridged = trio_asyncio.aio_as_trio(noop)
        for _ in range(warmup):
            await bridged()
        samples: list[float] = []
        probe = Probe.start()
        cpu0, wall0 = cpu_seconds(), time.perf_counter()
        for _ in range(calls):
            t0 = time.perf_counter()
            await bridged()
            samples.append(time.perf_counter() - t0)
        cpu, wall = cpu_seconds() - cpu0, time.perf_counter() - wall0
        callbacks = probe.stop()
    emit(samples=samples, cpu=cpu, wall=wall, callbacks=callbacks)


async def bridged_pipelined(url: str, bucket: str, calls: int, warmup: int, ttl: int,
                            batch: int) -> None:
    """:func:`benchmarks._raw.publish_pipelined` of *batch* updates per call, from trio
    through one ``trio_asyncio.aio_as_trio`` per batch, without trio-noleader: what a
    batched renewal could cost through the bridge with one future per batch."""
    import nats
    import trio_asyncio

    from ._raw import MARKER_TTL, publish_pipelined

    async with trio_asyncio.open_loop():
        nc = await trio_asyncio.aio_as_trio(nats.connect)(url)
        try:
            js = nc.jetstream()
            await trio_asyncio.aio_as_trio(js.create_key_value)(
                bucket=bucket, history=1, limit_marker_ttl=MARKER_TTL)
            subjects = [f"$KV.{bucket}.bridged-pipe-{os.getpid()}-{i}" for i in range(batch)]
            value = os.urandom(24)
            publish = trio_asyncio.aio_as_trio(publish_pipelined)
            revisions = await publish(nc, [(s, value, 0) for s in subjects], ttl)

            async def one_batch() -> None:
                revisions[:] = await publish(
                    nc, [(s, value, r) for s, r in zip(subjects, revisions, strict=True)], ttl)

            for _ in range(max(1, warmup // batch)):
                await one_batch()
            rounds = max(1, calls // batch)
            samples: list[float] = []
            probe = Probe.start()
            cpu0, wall0 = cpu_seconds(), time.perf_counter()
            for _ in range(rounds):
                t0 = time.perf_counter()
                await one_batch()
                samples.append(time.perf_counter() - t0)
            cpu, wall = cpu_seconds() - cpu0, time.perf_counter() - wall0
            callbacks = probe.stop()
        finally:
            await trio_asyncio.aio_as_trio(nc.close)()
    emit(samples=samples, cpu=cpu, wall=wall, updates=rounds * batch, batch=batch,
         callbacks=callbacks)


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
            probe = Probe.start()
            cpu0, wall0 = cpu_seconds(), time.perf_counter()
            for _ in range(calls):
                t0 = time.perf_counter()
                revision = await publish(js, subject, value, revision, ttl)
                samples.append(time.perf_counter() - t0)
            cpu, wall = cpu_seconds() - cpu0, time.perf_counter() - wall0
            callbacks = probe.stop()
        finally:
            await trio_asyncio.aio_as_trio(nc.close)()
    emit(samples=samples, cpu=cpu, wall=wall, callbacks=callbacks)


def main(argv: list[str]) -> int:
    role, *args = argv
    if role == "candidate":
        url, key, ttl = args
        trio.run(candidate, url, key, float(ttl))
    elif role == "handover-peer":
        url, key, ttl = args
        trio.run(handover_peer, url, key, float(ttl))
    elif role == "renewal":
        url, prefix, leases, ttl, rounds, mode = args
        if mode not in ("batched", "unbatched", "metrics", "silent"):
            raise SystemExit("renewal: MODE must be batched, unbatched, metrics or silent, "
                             f"not {mode!r}")
        trio.run(renewal, url, prefix, int(leases), float(ttl), int(rounds), mode)
    elif role == "contention":
        url, key, tasks, ttl, hold, duration, name = args
        trio.run(contention, url, key, int(tasks), float(ttl), float(hold), float(duration),
                 name)
    elif role == "proxy":
        host, port = args
        trio.run(proxy, host, int(port))
    elif role == "cas":
        url, calls, warmup, ttl = args
        trio.run(cas, url, int(calls), int(warmup), float(ttl))
    elif role == "cas-many":
        url, calls, warmup, ttl, batch = args
        trio.run(cas_many, url, int(calls), int(warmup), float(ttl), int(batch))
    elif role == "bridged-noop":
        calls, warmup = args
        trio.run(bridged_noop, int(calls), int(warmup))
    elif role == "bridged-pipelined":
        url, bucket, calls, warmup, ttl, batch = args
        trio.run(bridged_pipelined, url, bucket, int(calls), int(warmup), int(ttl), int(batch))
    elif role == "bridged-cas":
        url, bucket, calls, warmup, ttl = args
        trio.run(bridged_cas, url, bucket, int(calls), int(warmup), int(ttl))
    else:
        raise SystemExit(f"unknown role {role!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
