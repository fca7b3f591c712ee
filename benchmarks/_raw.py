"""Baselines without trio-noleader and without trio: plain asyncio nats-py, plain sqlite3.

Run as a subprocess by the scenarios, so that no trio or trio-asyncio is even
imported here::

    python -m benchmarks._raw handover URL BUCKET TRIALS SETTLE
    python -m benchmarks._raw handover-peer URL BUCKET KEY
    python -m benchmarks._raw nats-cas URL BUCKET CALLS WARMUP TTL
    python -m benchmarks._raw expiry URL BUCKET TRIALS TTL[,TTL...]
    python -m benchmarks._raw sqlite-cas PATH CALLS WARMUP TTL
    python -m benchmarks._raw nats-renewal URL BUCKET LEASES TTL ROUNDS
    python -m benchmarks._raw sqlite-renewal PATH LEASES TTL ROUNDS MODE
    python -m benchmarks._raw nats-gather URL BUCKET CALLS WARMUP TTL BATCH
    python -m benchmarks._raw nats-pipelined URL BUCKET CALLS WARMUP TTL BATCH
    python -m benchmarks._raw watch-delay URL BUCKET TRIALS
    python -m benchmarks._raw ping URL TRIALS

Each prints one JSON object on stdout: ``samples`` (seconds per trial or call),
and for the CAS loops ``cpu`` (process CPU seconds over the timed calls) and
``wall``; the renewal roles print ``cpu``, ``wall`` and ``renewals`` over their
window.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import sqlite3
import sys
import time
from typing import Any

from ._profile import Probe

#: Seconds an expiry marker stays in a bucket made here (as the library's buckets do).
MARKER_TTL = 30
EXPECTED_LAST = "Nats-Expected-Last-Subject-Sequence"
MSG_TTL = "Nats-TTL"


def cpu_seconds() -> float:
    """User + system CPU of this process, all threads included."""
    return time.process_time()


async def _kv(nc: Any, bucket: str) -> Any:
    """The bucket, made like the library makes its own: history 1, TTLs, expiry markers."""
    js = nc.jetstream()
    return await js.create_key_value(bucket=bucket, history=1, limit_marker_ttl=MARKER_TTL)


async def publish_cas(js: Any, subject: str, value: bytes, expected: int, ttl: int) -> int:
    """One compare-and-set write with a per-message TTL; returns the new revision."""
    ack = await js.publish(subject, value,
                           headers={EXPECTED_LAST: str(expected), MSG_TTL: str(ttl)})
    seq: int = ack.seq
    return seq


async def publish_pipelined(nc: Any, items: list[tuple[str, bytes, int]], ttl: int,
                            limit: float = 5.0) -> list[int]:
    """Compare-and-set publishes, all at once, their acks collected by one subscription.

    A prototype of a batched renewal without a future, a task and a timer per
    publish (what ``JetStreamContext.publish`` costs each): one wildcard reply
    subscription for the batch, every publish sent with its own reply subject, one
    future set when the last ack has arrived. *items* are ``(subject, value,
    expected revision)``; returns the new revisions (raises on any error ack, or
    when not every ack came within *limit* seconds).
    """
    loop = asyncio.get_running_loop()
    inbox = nc.new_inbox()
    acks: list[Any] = [None] * len(items)
    left = len(items)
    done: asyncio.Future[None] = loop.create_future()

    async def on_ack(msg: Any) -> None:
        nonlocal left
        acks[int(msg.subject.rsplit(".", 1)[1])] = msg.data
        left -= 1
        if left == 0 and not done.done():
            done.set_result(None)

    sub = await nc.subscribe(f"{inbox}.*", cb=on_ack)
    try:
        for i, (subject, value, expected) in enumerate(items):
            await nc.publish(subject, value, reply=f"{inbox}.{i}",
                             headers={EXPECTED_LAST: str(expected), MSG_TTL: str(ttl)})
        await asyncio.wait_for(done, limit)
    finally:
        await sub.unsubscribe()
    revisions: list[int] = []
    for data in acks:
        ack = json.loads(data)
        if "error" in ack:
            raise RuntimeError(f"a compare-and-set in the batch failed: {ack['error']}")
        revisions.append(int(ack["seq"]))
    return revisions


async def raw_handover(url: str, bucket: str, trials: int, settle: float) -> dict[str, Any]:
    """Delete a key; a second connection's watcher sees it and creates the key.

    One trial runs from just before the holder's compare-and-set delete is sent to
    the moment the other connection's create (a compare-and-set on the delete
    marker's revision, with a TTL) is acknowledged. The two connections then swap
    roles. Both watchers are long-lived, as a waiting candidate's would be.
    """
    import nats

    ttl = 5
    conns = [await nats.connect(url), await nats.connect(url)]
    try:
        kvs = [await _kv(conns[0], bucket)]
        kvs.append(await conns[1].jetstream().key_value(bucket))
        jss = [c.jetstream() for c in conns]
        key = f"raw-handover-{os.getpid()}"
        subject = f"$KV.{bucket}.{key}"
        queues: list[asyncio.Queue[Any]] = [asyncio.Queue(), asyncio.Queue()]
        watchers = [await kv.watch(key) for kv in kvs]

        async def pump(watcher: Any, queue: asyncio.Queue[Any]) -> None:
            async for entry in watcher:
                queue.put_nowait(entry)

        pumps = [asyncio.create_task(pump(w, q)) for w, q in zip(watchers, queues, strict=True)]
        revision = 0

        async def take_over(me: int, after: int) -> float:
            while True:
                entry = await queues[me].get()
                if (entry is not None and entry.revision > after
                        and entry.operation in ("DEL", "PURGE")):
                    break
            nonlocal revision
            revision = await publish_cas(jss[me], subject, b"candidate-%d" % me, entry.revision,
                                      ttl)
            return time.perf_counter()

        revision = await publish_cas(jss[0], subject, b"candidate-0", 0, ttl)
        holder = 0
        samples: list[float] = []
        for _ in range(trials):
            await asyncio.sleep(settle)
            waiter = 1 - holder
            taker = asyncio.create_task(take_over(waiter, revision))
            started = time.perf_counter()
            await kvs[holder].delete(key, last=revision)
            samples.append(await taker - started)
            holder = waiter
        for watcher in watchers:
            await watcher.stop()
        for task in pumps:
            task.cancel()
        await asyncio.gather(*pumps, return_exceptions=True)
        return {"samples": samples}
    finally:
        for conn in conns:
            await conn.close()


def _emit(**fields: Any) -> None:
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


async def raw_handover_peer(url: str, bucket: str, key: str) -> dict[str, Any]:
    """One side of a handover between two processes, driven by lines on stdin.

    One connection and one watcher of *key*, open for the whole run. Commands,
    each answered by an event numbered N from 1 (times on CLOCK_MONOTONIC, one
    clock for the host):

    - ``hold``: create the key (compare-and-set on revision 0): ``held-N``.
    - ``take REVISION``: wait until the watcher shows a delete newer than
      REVISION, create over it (compare-and-set on the delete's revision, with a
      TTL): ``waiting-N`` at once, then ``taken-N`` with the time of the ack.
    - ``release``: the time, then a compare-and-set delete of our revision:
      ``released-N``.
    """
    import nats

    ttl = 5
    nc = await nats.connect(url)
    try:
        kv = await _kv(nc, bucket)
        js = nc.jetstream()
        subject = f"$KV.{bucket}.{key}"
        queue: asyncio.Queue[Any] = asyncio.Queue()
        watcher: Any = await kv.watch(key)

        async def pump() -> None:
            async for entry in watcher:
                queue.put_nowait(entry)

        pumping = asyncio.create_task(pump())
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        revision = 0
        n = 0
        while line := (await reader.readline()).decode().strip():
            n += 1
            command, _, argument = line.partition(" ")
            if command == "hold":
                revision = await publish_cas(js, subject, b"raw", 0, ttl)
                _emit(event=f"held-{n}", revision=revision)
            elif command == "take":
                after = int(argument)
                _emit(event=f"waiting-{n}")
                while True:
                    entry = await queue.get()
                    if (entry is not None and entry.revision > after
                            and entry.operation in ("DEL", "PURGE")):
                        break
                revision = await publish_cas(js, subject, b"raw", entry.revision, ttl)
                _emit(event=f"taken-{n}", t=time.monotonic(), revision=revision)
            elif command == "release":
                t = time.monotonic()
                await kv.delete(key, last=revision)
                _emit(event=f"released-{n}", t=t)
        await watcher.stop()
        pumping.cancel()
        await asyncio.gather(pumping, return_exceptions=True)
        return {"done": n}
    finally:
        await nc.close()


async def raw_nats_cas(url: str, bucket: str, calls: int, warmup: int,
                       ttl: int) -> dict[str, Any]:
    """Sequential compare-and-set updates carrying a TTL, as a renewal is, on asyncio."""
    import nats

    nc = await nats.connect(url)
    try:
        await _kv(nc, bucket)
        js = nc.jetstream()
        subject = f"$KV.{bucket}.raw-cas-{os.getpid()}"
        value = os.urandom(24)
        revision = await publish_cas(js, subject, value, 0, ttl)
        for _ in range(warmup):
            revision = await publish_cas(js, subject, value, revision, ttl)
        samples: list[float] = []
        probe = Probe.start()
        cpu0, wall0 = cpu_seconds(), time.perf_counter()
        for _ in range(calls):
            t0 = time.perf_counter()
            revision = await publish_cas(js, subject, value, revision, ttl)
            samples.append(time.perf_counter() - t0)
        cpu, wall = cpu_seconds() - cpu0, time.perf_counter() - wall0
        callbacks = probe.stop()
        return {"samples": samples, "cpu": cpu, "wall": wall, "callbacks": callbacks}
    finally:
        await nc.close()


async def raw_expiry(url: str, bucket: str, trials: int, ttls: list[int]) -> dict[str, Any]:
    """How late after its TTL the store lets a waiter take a key over, with no renewals.

    Per trial: one connection writes a key with a TTL (a compare-and-set create)
    and never renews it, as a killed leader would; another connection watches the
    key, and when the expiry marker arrives writes over it (a compare-and-set on the
    marker's revision). Reported per ttl: from the send of the first write to the
    acknowledgement of the takeover, in seconds, the ttl included. Trials of all
    ttls run at once, each starting at a random time within the first second.
    """
    import nats

    writer, taker = await nats.connect(url), await nats.connect(url)
    try:
        await _kv(writer, bucket)
        kv = await taker.jetstream().key_value(bucket)
        wjs, tjs = writer.jetstream(), taker.jetstream()
        prefix = f"raw-expiry-{os.getpid()}"

        rng = random.Random()

        async def one(ttl: int, i: int) -> float:
            # At a random phase: the server finds expired messages on a timer.
            await asyncio.sleep(rng.uniform(0, 1))
            key = f"{prefix}-{ttl}-{i}"
            subject = f"$KV.{bucket}.{key}"
            watcher: Any = await kv.watch(key)
            try:
                sent = time.perf_counter()
                await publish_cas(wjs, subject, b"leader", 0, ttl)
                async for entry in watcher:
                    if entry is not None and entry.operation in ("DEL", "PURGE"):
                        await publish_cas(tjs, subject, b"taker", entry.revision, ttl)
                        return time.perf_counter() - sent
                raise RuntimeError("the watch ended before the key expired")
            finally:
                await watcher.stop()

        jobs = [(ttl, i) for ttl in ttls for i in range(trials)]
        times = await asyncio.gather(*(one(ttl, i) for ttl, i in jobs))
        result: dict[str, list[float]] = {str(ttl): [] for ttl in ttls}
        for (ttl, _), elapsed in zip(jobs, times, strict=True):
            result[str(ttl)].append(elapsed)
        return {"samples": result}
    finally:
        await writer.close()
        await taker.close()


def raw_sqlite_cas(path: str, calls: int, warmup: int, ttl: float) -> dict[str, Any]:
    """The SQLite backend's renewal transaction, written directly against sqlite3.

    WAL, ``synchronous = FULL``, ``BEGIN IMMEDIATE``; check the live revision, bump
    a counter, write the row, commit: the same statements a renewal needs, in the
    calling thread, with no trio and no worker thread.
    """
    conn = sqlite3.connect(path, timeout=5, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("CREATE TABLE IF NOT EXISTS counter (id INTEGER PRIMARY KEY, n INTEGER)")
        conn.execute("INSERT OR IGNORE INTO counter VALUES (1, 0)")
        conn.execute("CREATE TABLE IF NOT EXISTS lease (key TEXT PRIMARY KEY, value BLOB,"
                     " revision INTEGER, expires_at REAL)")
        key = f"raw-cas-{os.getpid()}"
        value = os.urandom(24)
        conn.execute("INSERT OR REPLACE INTO lease VALUES (?, ?, 0, ?)",
                     (key, value, time.time() + ttl))

        def cas(revision: int) -> int:
            conn.execute("BEGIN IMMEDIATE")
            try:
                now = time.time()
                row = conn.execute("SELECT revision, expires_at FROM lease WHERE key = ?",
                                   (key,)).fetchone()
                if row is None or row[0] != revision or not row[1] > now:
                    raise RuntimeError("lost the lease in a single-writer loop")
                conn.execute("UPDATE counter SET n = n + 1 WHERE id = 1")
                (new,) = conn.execute("SELECT n FROM counter WHERE id = 1").fetchone()
                conn.execute("UPDATE lease SET value = ?, revision = ?, expires_at = ?"
                             " WHERE key = ?", (value, new, now + ttl, key))
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            return int(new)

        revision = 0
        for _ in range(warmup):
            revision = cas(revision)
        samples: list[float] = []
        probe = Probe.start()
        cpu0, wall0 = cpu_seconds(), time.perf_counter()
        for _ in range(calls):
            t0 = time.perf_counter()
            revision = cas(revision)
            samples.append(time.perf_counter() - t0)
        cpu, wall = cpu_seconds() - cpu0, time.perf_counter() - wall0
        callbacks = probe.stop()
        return {"samples": samples, "cpu": cpu, "wall": wall, "callbacks": callbacks}
    finally:
        conn.close()


async def raw_nats_gather(url: str, bucket: str, calls: int, warmup: int, ttl: int,
                          batch: int, pipelined: bool = False) -> dict[str, Any]:
    """*batch* compare-and-set updates on as many keys, sent together (``asyncio.gather``).

    What one batched renewal round costs a raw client. ``samples`` are seconds per
    batch; CPU per update is ``cpu / updates``. *pipelined*: through
    :func:`publish_pipelined` instead of one ``js.publish`` per update.
    """
    import nats

    nc = await nats.connect(url)
    try:
        await _kv(nc, bucket)
        js = nc.jetstream()
        subjects = [f"$KV.{bucket}.raw-gather-{os.getpid()}-{i}" for i in range(batch)]
        value = os.urandom(24)
        revisions = list(await asyncio.gather(
            *(publish_cas(js, subject, value, 0, ttl) for subject in subjects)))

        async def one_batch() -> None:
            if pipelined:
                revisions[:] = await publish_pipelined(
                    nc, [(subject, value, revision)
                         for subject, revision in zip(subjects, revisions, strict=True)], ttl)
                return
            revisions[:] = await asyncio.gather(
                *(publish_cas(js, subject, value, revision, ttl)
                  for subject, revision in zip(subjects, revisions, strict=True)))

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
        return {"samples": samples, "cpu": cpu, "wall": wall, "callbacks": callbacks,
                "updates": rounds * batch,
                "batch": batch}
    finally:
        await nc.close()


def _window(leases: int, ttl: float, rounds: int) -> tuple[float, float]:
    """The renewal interval, and the window's length: ``rounds`` intervals."""
    interval = ttl / 3
    return interval, rounds * interval


async def raw_nats_renewal(url: str, bucket: str, leases: int, ttl: int,
                           rounds: int) -> dict[str, Any]:
    """*leases* keys, each renewed by its own asyncio task every ``ttl/3`` s.

    The raw client doing what the library's renewals do, as plainly as asyncio
    allows: one task per lease, sleeping until due, then one compare-and-set
    publish with the TTL header. The tasks start together, so their publishes go
    out together (asyncio pipelines them on the one connection). CPU is measured
    over exactly *rounds* intervals, starting half an interval after the last
    create, as in the library's renewal worker.
    """
    import nats

    interval, length = _window(leases, ttl, rounds)
    nc = await nats.connect(url)
    try:
        await _kv(nc, bucket)
        js = nc.jetstream()
        value = os.urandom(24)
        loop = asyncio.get_running_loop()
        renewals = 0
        counting = False
        created: list[float] = []
        all_created = asyncio.Event()
        failures = 0

        async def lease(i: int) -> None:
            nonlocal renewals, failures
            subject = f"$KV.{bucket}.raw-renew-{os.getpid()}-{i}"
            sent = loop.time()
            revision = await publish_cas(js, subject, value, 0, ttl)
            created.append(loop.time())
            if len(created) == leases:
                all_created.set()
            while True:
                await asyncio.sleep(max(0.0, sent + interval - loop.time()))
                sent = loop.time()
                try:
                    revision = await publish_cas(js, subject, value, revision, ttl)
                except Exception:
                    failures += 1
                    raise
                if counting:
                    renewals += 1

        tasks = [asyncio.create_task(lease(i)) for i in range(leases)]
        await all_created.wait()
        await asyncio.sleep(max(0.0, max(created) + interval / 2 - loop.time()))
        counting = True
        probe = Probe.start()
        cpu0, wall0 = cpu_seconds(), time.perf_counter()
        await asyncio.sleep(length)
        cpu, wall = cpu_seconds() - cpu0, time.perf_counter() - wall0
        callbacks = probe.stop()
        counting = False
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return {"cpu": cpu, "wall": wall, "callbacks": callbacks, "renewals": renewals,
                "leases": leases,
                "failures": failures}
    finally:
        await nc.close()


def raw_sqlite_renewal(path: str, leases: int, ttl: float, rounds: int,
                       mode: str) -> dict[str, Any]:
    """*leases* rows renewed every ``ttl/3`` s by plain sqlite3 in one thread.

    *mode* ``each``: one transaction per renewal (what :func:`raw_sqlite_cas` does
    once); ``batch``: all renewals due together in one transaction. The window is
    as in :func:`raw_nats_renewal`.
    """
    interval, length = _window(leases, ttl, rounds)
    conn = sqlite3.connect(path, timeout=5, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("CREATE TABLE IF NOT EXISTS counter (id INTEGER PRIMARY KEY, n INTEGER)")
        conn.execute("INSERT OR IGNORE INTO counter VALUES (1, 0)")
        conn.execute("CREATE TABLE IF NOT EXISTS lease (key TEXT PRIMARY KEY, value BLOB,"
                     " revision INTEGER, expires_at REAL)")
        keys = [f"raw-renew-{os.getpid()}-{i}" for i in range(leases)]
        value = os.urandom(24)
        revisions = dict.fromkeys(keys, 0)
        lost = 0
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany("INSERT OR REPLACE INTO lease VALUES (?, ?, 0, ?)",
                         [(key, value, time.time() + ttl) for key in keys])
        conn.execute("COMMIT")

        def cas(key: str, now: float) -> None:
            nonlocal lost
            row = conn.execute("SELECT revision, expires_at FROM lease WHERE key = ?",
                               (key,)).fetchone()
            if row is None or row[0] != revisions[key] or not row[1] > now:
                # Renewed too late (the disk could not keep up): counted, taken again.
                lost += 1
            conn.execute("UPDATE counter SET n = n + 1 WHERE id = 1")
            (new,) = conn.execute("SELECT n FROM counter WHERE id = 1").fetchone()
            conn.execute("UPDATE lease SET value = ?, revision = ?, expires_at = ?"
                         " WHERE key = ?", (value, new, now + ttl, key))
            revisions[key] = int(new)

        def transaction(batch: list[str]) -> None:
            conn.execute("BEGIN IMMEDIATE")
            try:
                now = time.time()
                for key in batch:
                    cas(key, now)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

        def renew_all() -> None:
            if mode == "batch":
                transaction(keys)
            else:
                for key in keys:
                    transaction([key])

        renew_all()
        start = time.monotonic() + interval / 2
        time.sleep(max(0.0, start - time.monotonic()))
        probe = Probe.start()
        cpu0, wall0 = cpu_seconds(), time.perf_counter()
        renewals = 0
        for r in range(rounds):
            due = start + r * interval
            time.sleep(max(0.0, due - time.monotonic()))
            renew_all()
            renewals += leases
        time.sleep(max(0.0, start + length - time.monotonic()))
        cpu, wall = cpu_seconds() - cpu0, time.perf_counter() - wall0
        callbacks = probe.stop()
        return {"cpu": cpu, "wall": wall, "callbacks": callbacks, "renewals": renewals,
                "leases": leases, "mode": mode, "lost": lost}
    finally:
        conn.close()


async def raw_ping(url: str, trials: int) -> dict[str, Any]:
    """Round trips to the server: ``flush()`` (a PING answered by a PONG), one at a time."""
    import nats

    nc = await nats.connect(url)
    try:
        await nc.flush()
        samples: list[float] = []
        for _ in range(trials):
            t0 = time.perf_counter()
            await nc.flush()
            samples.append(time.perf_counter() - t0)
        return {"samples": samples}
    finally:
        await nc.close()


async def raw_watch_delay(url: str, bucket: str, trials: int) -> dict[str, Any]:
    """From sending a compare-and-set delete to a second connection's watcher seeing it.

    The "watch delay" of the distance target: how long the store and the client
    take to deliver a change to a watcher, network aside (measured on loopback).
    """
    import nats

    conns = [await nats.connect(url), await nats.connect(url)]
    try:
        kv = await _kv(conns[0], bucket)
        other = await conns[1].jetstream().key_value(bucket)
        js = conns[0].jetstream()
        key = f"raw-watch-{os.getpid()}"
        subject = f"$KV.{bucket}.{key}"
        watcher: Any = await other.watch(key)
        queue: asyncio.Queue[Any] = asyncio.Queue()

        async def pump() -> None:
            async for entry in watcher:
                queue.put_nowait((time.perf_counter(), entry))

        pumping = asyncio.create_task(pump())
        samples: list[float] = []
        revision = 0
        for _ in range(trials):
            revision = await publish_cas(js, subject, b"x", revision, 5)
            await asyncio.sleep(0.01)
            while not queue.empty():
                queue.get_nowait()
            sent = time.perf_counter()
            await kv.delete(key, last=revision)
            while True:
                seen, entry = await queue.get()
                if entry is not None and entry.operation in ("DEL", "PURGE"):
                    samples.append(seen - sent)
                    revision = entry.revision
                    break
        await watcher.stop()
        pumping.cancel()
        await asyncio.gather(pumping, return_exceptions=True)
        return {"samples": samples}
    finally:
        for conn in conns:
            await conn.close()


def main(argv: list[str]) -> int:
    role, *args = argv
    result: dict[str, Any]
    if role == "handover":
        url, bucket, trials, settle = args
        result = asyncio.run(raw_handover(url, bucket, int(trials), float(settle)))
    elif role == "nats-cas":
        url, bucket, calls, warmup, ttl = args
        result = asyncio.run(raw_nats_cas(url, bucket, int(calls), int(warmup), int(ttl)))
    elif role == "expiry":
        url, bucket, trials, ttls = args
        result = asyncio.run(raw_expiry(url, bucket, int(trials),
                                        [int(t) for t in ttls.split(",")]))
    elif role == "sqlite-cas":
        path, calls, warmup, ttl = args
        result = raw_sqlite_cas(path, int(calls), int(warmup), float(ttl))
    elif role in ("nats-gather", "nats-pipelined"):
        url, bucket, calls, warmup, ttl, batch = args
        result = asyncio.run(raw_nats_gather(url, bucket, int(calls), int(warmup), int(ttl),
                                             int(batch), pipelined=role == "nats-pipelined"))
    elif role == "nats-renewal":
        url, bucket, leases, ttl, rounds = args
        result = asyncio.run(raw_nats_renewal(url, bucket, int(leases), int(float(ttl)),
                                              int(rounds)))
    elif role == "sqlite-renewal":
        path, leases, ttl, rounds, mode = args
        if mode not in ("each", "batch"):
            raise SystemExit(f"sqlite-renewal: MODE must be each or batch, not {mode!r}")
        result = raw_sqlite_renewal(path, int(leases), float(ttl), int(rounds), mode)
    elif role == "handover-peer":
        url, bucket, key = args
        result = asyncio.run(raw_handover_peer(url, bucket, key))
    elif role == "ping":
        url, trials = args
        result = asyncio.run(raw_ping(url, int(trials)))
    elif role == "watch-delay":
        url, bucket, trials = args
        result = asyncio.run(raw_watch_delay(url, bucket, int(trials)))
    else:
        raise SystemExit(f"unknown role {role!r}")
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
