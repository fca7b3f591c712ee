"""2. Crash failover: SIGKILL the leader process -> the next body starts in another process.

Per (backend, ttl) group: a leader process (``benchmarks._worker candidate``) holds
the key; a standby process starts, campaigns and waits on its watch; after a
random extra delay of up to one renewal interval (so the kill falls at a random
phase of the renewal cycle) the leader is SIGKILLed by PID. A trial runs from
just before the kill to the standby's first instruction in its body, both read
from CLOCK_MONOTONIC (one clock for the host). The standby is the next trial's
leader. Reported as ``failover - ttl`` and ``failover / ttl``.

Expected: the store drops the lease ``ttl`` after the last renewal it applied,
and that renewal came at most ``renew_interval = ttl/3`` before the kill, so a
failover lies in ``(ttl - ttl/3, ttl]`` plus the store's expiry notice and one
create. The groups run concurrently (their processes are idle between renewals),
but start their processes one at a time: a Python start-up takes a core for a
while, and a ttl=1 leader starved of CPU past its guard would lose its lease (a
lease lost before the kill is counted, not timed).

Baseline, same run (NATS): :func:`benchmarks._raw.raw_expiry`, plain nats-py on
asyncio: a key written with the same ttl and never renewed, taken over by a second
connection when the expiry marker arrives: the store's own expiry latency.
"""

from __future__ import annotations

import random
import time
import uuid
from pathlib import Path
from typing import Any

import trio

from ._common import Env, Target
from ._procs import Worker, run_json
from ._stats import Dist, Table, ratio

__all__ = ["run", "table", "targets"]

#: Seconds a standby gets after it reports ``campaign`` to reach its watch.
STANDBY_SETTLE = 0.3
TARGET_SLACK = 0.5


async def _group(env: Env, backend: str, url: str, ttl: float, trials: int, seed: int,
                 spawn: trio.Lock, out: dict[str, Any]) -> None:
    rng = random.Random(seed)
    key = f"bench/failover/{backend}-{ttl:g}-{uuid.uuid4().hex[:8]}"
    renew_interval = ttl / 3
    logdir: Path = env.logdir
    samples: list[float] = []
    out["samples"] = samples
    out["lost_before_kill"] = 0
    workers: list[Worker] = []

    async def start(n: int, event: str) -> Worker:
        # One start-up at a time across all groups: a python start-up takes a core
        # for a while, and a leader starved of CPU beyond its guard loses its lease.
        async with spawn:
            worker = await Worker.start(f"failover-{backend}-{ttl:g}-{n}", "candidate", url,
                                        key, ttl, logdir=logdir)
            workers.append(worker)
            with trio.fail_after(30):
                await worker.wait_event(event)
        return worker

    try:
        leader = await start(0, "start")
        for i in range(1, trials + 1):
            standby = await start(i, "campaign")
            await trio.sleep(STANDBY_SETTLE + rng.uniform(0, renew_interval))
            killed_at = time.monotonic()
            leader.kill()
            with trio.fail_after(ttl + 15):
                started = await standby.wait_event("start")
            if started["t"] < killed_at:
                # The leader lost its lease before the kill (its renewals were late,
                # and its own deadline stopped it): no failover to time. Counted.
                out["lost_before_kill"] += 1
            else:
                samples.append(started["t"] - killed_at)
            await leader.aclose()
            leader = standby
    finally:
        for worker in workers:
            await worker.aclose(grace=1.0)


async def _all(env: Env, groups: list[tuple[str, str, float]], trials: int,
               results: dict[str, dict[str, Any]]) -> None:
    longest = max(ttl for _, _, ttl in groups)
    spawn = trio.Lock()
    # Bounded: per trial a start-up, a settle, a phase and a ttl, with room to spare.
    with trio.fail_after(60 + trials * (longest * 2 + 10)):
        async with trio.open_nursery() as nursery:
            for n, (backend, url, ttl) in enumerate(groups):
                slot: dict[str, Any] = {"backend": backend, "ttl": ttl}
                results[f"{backend} ttl={ttl:g}"] = slot
                nursery.start_soon(_group, env, backend, url, ttl, trials, env.seed + n,
                                   spawn, slot)


def run(env: Env) -> dict[str, Any]:
    ttls = [1.0] if env.quick else [1.0, 2.0, 5.0]
    trials = 3 if env.quick else 10
    groups = [(name, url, ttl) for name, url in env.library_backends("failover") for ttl in ttls]
    raw: dict[str, list[float]] = {}
    if env.nats_url is not None:
        env.progress(f"failover: raw nats-py baseline (write with a ttl, never renew, take "
                     f"over at the expiry marker), {trials} trials per ttl")
        out = run_json("_raw", "expiry", env.nats_url, "bench_raw_expiry", trials,
                       ",".join(str(int(ttl)) for ttl in ttls),
                       timeout=60 + max(ttls) * 2, logdir=env.logdir)
        raw = out["samples"]
    env.progress(f"failover: {len(groups)} groups (backend x ttl) concurrently, "
                 f"{trials} kills each")
    results: dict[str, dict[str, Any]] = {}
    trio.run(_all, env, groups, trials, results)
    return {"trials": trials, "ttls": ttls, "standby_settle": STANDBY_SETTLE,
            "raw_expiry": {f"raw nats-py ttl={float(ttl):g}": {"ttl": float(ttl),
                                                               "samples": samples}
                           for ttl, samples in raw.items()},
            "groups": results}


def table(results: dict[str, Any]) -> Table:
    result = results["failover"]
    t = Table("2. Crash failover: SIGKILL the leader -> next body starts in another process",
              ["case", "n", "failover-ttl p50 (ms)", "p99", "max", "failover/ttl p50",
               "p99", "max", "target"])
    raw = result.get("raw_expiry", {})
    for name, group in [*raw.items(), *result["groups"].items()]:
        ttl = float(group["ttl"])
        samples = group["samples"]
        late = Dist.of(s - ttl for s in samples).scaled(1e3)
        rel = Dist.of(ratio(s, ttl) for s in samples)
        target = ""
        if name not in raw:
            met = late.max < TARGET_SLACK * 1e3
            target = f"< ttl + {TARGET_SLACK:g} s: {'met' if met else 'MISSED'}"
            if group.get("lost_before_kill"):
                target += f"; {group['lost_before_kill']} lost the lease before the kill"
        t.add(name, late.n, late.p50, late.p99, late.max, f"{rel.p50:.3f}",
              f"{rel.p99:.3f}", f"{rel.max:.3f}", target)
    if raw:
        t.note("raw nats-py = the store's own floor: a key written with a ttl and never "
               "renewed, a second connection takes it over when the expiry marker arrives "
               "(timed from the write's send)")
    t.note("failover/ttl is the ratio to the baseline a crash must wait for (the ttl); "
           "renew_interval = ttl/3, so failover - ttl can be down to -ttl/3")
    return t


def targets(results: dict[str, Any]) -> list[Target]:
    groups = results.get("failover", {}).get("groups", {})
    found: list[Target] = []
    for name, group in groups.items():
        samples = group["samples"]
        if not samples:
            continue
        worst = max(s - float(group["ttl"]) for s in samples)
        found.append(Target(f"crash failover, {name}", f"< ttl + {TARGET_SLACK:g} s",
                            f"max failover - ttl {worst * 1e3:+.1f} ms",
                            worst < TARGET_SLACK))
    if not found:
        found.append(Target("crash failover", f"< ttl + {TARGET_SLACK:g} s", "-", None))
    return found
