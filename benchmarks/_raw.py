"""Baselines without trio-noleader and without trio: plain asyncio nats-py, plain sqlite3.

Run as a subprocess by the scenarios, so that no trio or trio-asyncio is even
imported here::

    python -m benchmarks._raw handover URL BUCKET TRIALS SETTLE
    python -m benchmarks._raw nats-cas URL BUCKET CALLS WARMUP TTL
    python -m benchmarks._raw expiry URL BUCKET TRIALS TTL[,TTL...]
    python -m benchmarks._raw sqlite-cas PATH CALLS WARMUP TTL

Each prints one JSON object on stdout: ``samples`` (seconds per trial or call),
and for the CAS loops ``cpu`` (process CPU seconds over the timed calls) and
``wall``.
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
        cpu0, wall0 = cpu_seconds(), time.perf_counter()
        for _ in range(calls):
            t0 = time.perf_counter()
            revision = await publish_cas(js, subject, value, revision, ttl)
            samples.append(time.perf_counter() - t0)
        cpu, wall = cpu_seconds() - cpu0, time.perf_counter() - wall0
        return {"samples": samples, "cpu": cpu, "wall": wall}
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
        cpu0, wall0 = cpu_seconds(), time.perf_counter()
        for _ in range(calls):
            t0 = time.perf_counter()
            revision = cas(revision)
            samples.append(time.perf_counter() - t0)
        cpu, wall = cpu_seconds() - cpu0, time.perf_counter() - wall0
        return {"samples": samples, "cpu": cpu, "wall": wall}
    finally:
        conn.close()


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
    else:
        raise SystemExit(f"unknown role {role!r}")
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
