"""9. Sharded work: N = 1,000 keys over M = 5 replica processes, SQLite and NATS.

Four processes (``benchmarks._sharded_worker``) run ``run_sharded`` over the same
1,000 keys and settle; a fifth joins; after a steady window one is SIGKILLed.
Reported per backend: CPU per replica per second and store calls per second in
the steady window (5 members, ttl 15 s: renewals only), the settle time after
the join (graceful bound ``2 * renew_interval`` plus round trips) and after the
crash (bound ``ttl + 2 * renew_interval``), and the keys moved by each change
against the rule (join: ``1.5 N / (M + 1)``; crash: exactly the dead member's).
``--quick`` uses ttl 3 s and shorter windows.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

import trio

from trio_noleader import _shard_assign as assign

from ._common import Env, Target
from ._procs import Worker, WorkerFailed
from ._stats import Table, fmt

__all__ = ["run", "table", "targets"]

N = 1000
M = 5


def _owners(workers: list[Worker]) -> dict[str, str]:
    events = sorted(((e["t"], w.name, e) for w in workers for e in w.events
                     if e.get("event") == "owned"), key=lambda x: x[0])
    owner: dict[str, str] = {}
    for _, name, e in events:
        for key in e["removed"]:
            if owner.get(key) == name:
                del owner[key]
        for key in e["added"]:
            owner[key] = name
    return owner


def _counts(workers: list[Worker]) -> dict[str, int]:
    latest: dict[str, int] = {}
    for w in workers:
        for e in w.events:
            if e.get("event") == "owned":
                latest[w.name] = e["count"]
    return latest


async def _settle(workers: list[Worker], limit: float) -> float:
    start = time.time()
    m = len(workers)
    expected = sorted([N // m + 1] * (N % m) + [N // m] * (m - N % m))
    with trio.move_on_after(limit):
        while True:
            counts = _counts(workers)
            if sorted(counts.get(w.name, 0) for w in workers) == expected \
                    and len(_owners(workers)) == N:
                return time.time() - start
            await trio.sleep(0.02)
    return float("nan")


def _window(workers: list[Worker], since: float) -> tuple[float, float, float]:
    """CPU s per replica per s, store calls per s (all replicas), renewals per s."""
    cpu = calls = renewals = 0.0
    span = 0.0
    for w in workers:
        ticks = [e for e in w.events if e.get("event") == "tick" and e["t"] >= since]
        if len(ticks) < 2:
            continue
        first, last = ticks[0], ticks[-1]
        dt = last["t"] - first["t"]
        span = max(span, dt)
        cpu += (last["cpu"] - first["cpu"]) / dt / len(workers)
        calls += (last["calls"] - first["calls"]) / dt
        renewals += (last["renewals"] - first["renewals"]) / dt
    return cpu, calls, renewals


async def _scenario(env: Env, name: str, url: str, ttl: float, steady: float
                    ) -> dict[str, Any]:
    renew = ttl / 3
    workers: list[Worker] = []
    result: dict[str, Any] = {"ttl": ttl, "renew_interval": renew}
    try:
        async with trio.open_nursery() as nursery:

            async def start(label: str) -> Worker:
                w = await Worker.start(f"sharded-{name}-{label}", url, label, ttl, N,
                                       logdir=env.logdir, module="_sharded_worker")
                workers.append(w)

                async def pump() -> None:
                    with contextlib.suppress(WorkerFailed):  # its end (the kill, or ours)
                        while True:
                            await w.receive()

                nursery.start_soon(pump)
                while not any(e.get("event") == "joined" for e in w.events):  # noqa: ASYNC110
                    await trio.sleep(0.02)
                return w

            for i in range(M - 1):
                await start(f"r{i}")
            result["initial_settle"] = await _settle(workers, 60 + ttl)
            before = _owners(workers)
            await start(f"r{M - 1}")
            result["join_settle"] = await _settle(workers, 30 + ttl)
            after = _owners(workers)
            result["join_moved"] = sum(1 for k, o in after.items() if before.get(k) != o)
            await trio.sleep(renew)
            since = time.time()
            await trio.sleep(steady)
            cpu, calls, renewals = _window(workers, since)
            result.update(cpu_per_replica=cpu, store_calls_per_s=calls,
                          renewals_per_s=renewals, steady=steady)
            before = _owners(workers)
            victim = workers[1]
            killed = time.time()
            victim.kill()
            await victim.process.wait()
            workers.remove(victim)
            result["crash_settle"] = await _settle(workers, 30 + 3 * ttl)
            after = _owners([*workers, victim])
            dead = {k for k, o in before.items() if o == victim.name}
            moved = {k for k, o in after.items() if before.get(k) != o and o != victim.name}
            result["crash_moved"] = len(moved)
            result["crash_dead_keys"] = len(dead)
            result["crash_only_dead"] = moved == dead
            claims = sorted(e["t"] - killed for w in workers for e in w.events
                            if e.get("event") == "owned" and e["t"] >= killed
                            and e["added"])
            result["crash_claims"] = [round(c, 3) for c in claims]
            nursery.cancel_scope.cancel()
    finally:
        for w in [*workers]:
            await w.aclose(grace=5.0)
    return result


def run(env: Env) -> dict[str, Any]:
    ttl = 3.0 if env.quick else 15.0
    steady = 5.0 if env.quick else 30.0
    result: dict[str, Any] = {"keys": N, "members": M, "backends": {}}
    for name, url in env.library_backends("sharded"):
        env.progress(f"sharded: {name}, {N} keys over {M} processes, ttl {ttl:g} s")
        result["backends"][name] = trio.run(_scenario, env, name, url, ttl, steady)
    return result


def table(results: dict[str, Any]) -> Table:
    result = results["sharded"]
    t = Table(f"9. Sharded work: {result['keys']:,} keys over {result['members']} processes",
              ["backend", "ttl s", "CPU s/s per replica", "store calls/s", "renewals/s",
               "join settle s", "join bound s", "join moved", "join move bound",
               "crash settle s", "crash bound s", "crash moved", "dead member's keys"])
    for name, r in result["backends"].items():
        renew = r["renew_interval"]
        t.add(name, r["ttl"], fmt(r["cpu_per_replica"]), fmt(r["store_calls_per_s"]),
              fmt(r["renewals_per_s"]), fmt(r["join_settle"]), fmt(2 * renew),
              r["join_moved"], fmt(assign.join_move_bound(result["keys"], result["members"])),
              fmt(r["crash_settle"]), fmt(r["ttl"] + 2 * renew), r["crash_moved"],
              r["crash_dead_keys"])
    t.note("steady window: 5 members, every key owned, only renewals (and the member "
           "slots' watches); CPU = user + system of each replica process")
    return t


def targets(results: dict[str, Any]) -> list[Target]:
    result = results.get("sharded")
    name = f"{N:,} keys over {M} processes"
    if not result or not result["backends"]:
        return [Target(name, "DESIGN 9 settle and movement bounds", "-", None)]
    found = []
    for backend, r in result["backends"].items():
        renew = r["renew_interval"]
        join_ok = r["join_settle"] <= 2 * renew + 1.0 and \
            r["join_moved"] <= assign.join_move_bound(N, M)
        crash_ok = r["crash_settle"] <= r["ttl"] + 2 * renew and r["crash_only_dead"]
        found.append(Target(
            f"{name}, {backend}: join and crash", "join settles in 2 x renew_interval "
            "(+1 s round trips) moving <= 1.5 N/(M+1); crash settles in ttl + 2 x "
            "renew_interval moving only the dead member's keys",
            f"join {r['join_settle']:.2f} s, {r['join_moved']} moved; crash "
            f"{r['crash_settle']:.2f} s, {r['crash_moved']} moved of {r['crash_dead_keys']}",
            join_ok and crash_ok))
    return found
