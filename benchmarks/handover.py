"""1. Graceful handover: the leader leaves its block -> the next candidate's body starts.

Two candidates, each with its own connection to the store (memory: one store
object), take turns on one key in one process, so one :func:`time.perf_counter`
times both ends. A trial runs from the last instruction of the leader's body
(just before ``async with hold_leadership(...)`` exits and releases the lease) to
the first instruction of the next candidate's body. The next candidate starts
campaigning only once the leader is elected and the leader holds for a *settle*
time, so the next candidate is already waiting on its watch when the lease is
released, as a standby is. The first few trials of each round warm up and are
not counted; the raw baseline and the library alternate in rounds.

Baseline, same run: :func:`benchmarks._raw.raw_handover`, plain nats-py on asyncio
in its own process: a compare-and-set delete, a second connection's watcher sees
it and creates the key (compare-and-set on the marker's revision, with a TTL).
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import trio

import trio_noleader
from trio_noleader.abc import Backend

from ._common import Env, Target
from ._procs import run_json
from ._stats import Dist, Table, ratio, times

__all__ = ["run", "table", "targets"]

TTL = 5.0
WARMUP = 5
#: Seconds the leader holds before leaving, so that the next candidate is watching.
SETTLE = {"memory": 0.005, "sqlite": 0.04, "nats": 0.03}
TARGET_P50_RATIO = 1.3
TARGET_P99_RATIO = 2.0


async def _alternate(backends: tuple[Backend, Backend], trials: int, settle: float) -> list[float]:
    key = f"bench/handover/{uuid.uuid4().hex}"
    samples: list[float] = []
    left_at: float | None = None
    go = [trio.Event(), trio.Event()]
    go[0].set()

    async def candidate(me: int, nursery: trio.Nursery) -> None:
        nonlocal left_at
        while True:
            await go[me].wait()
            go[me] = trio.Event()
            async with trio_noleader.hold_leadership(key, backend=backends[me], ttl=TTL):
                started = time.perf_counter()
                if left_at is not None:
                    samples.append(started - left_at)
                finished = len(samples) >= trials + WARMUP
                if not finished:
                    go[1 - me].set()
                    await trio.sleep(settle)
                left_at = time.perf_counter()
            if finished:
                nursery.cancel_scope.cancel()
                return

    async with trio.open_nursery() as nursery:
        nursery.start_soon(candidate, 0, nursery)
        nursery.start_soon(candidate, 1, nursery)
    return samples[WARMUP:]


async def _library(env: Env, trials: int) -> dict[str, list[float]]:
    results: dict[str, list[float]] = {}
    # Bounded: a stuck election must not hang the run (CI runs --quick unattended).
    with trio.fail_after(60 + trials * 0.5 * 3):
        await _library_rows(env, trials, results)
    return results


async def _library_rows(env: Env, trials: int, results: dict[str, list[float]]) -> None:
    store = trio_noleader.MemoryBackend()
    results["memory"] = await _alternate((store, store), trials, SETTLE["memory"])
    for name, url in env.library_backends("handover"):
        async with trio_noleader.open_backend(url) as first, \
                trio_noleader.open_backend(url) as second:
            results[name] = await _alternate((first, second), trials, SETTLE[name])


def run(env: Env) -> dict[str, Any]:
    rounds, per_round = (2, 20) if env.quick else (5, 50)
    trials = rounds * per_round
    result: dict[str, Any] = {"trials": trials, "rounds": rounds, "warmup": WARMUP, "ttl": TTL,
                              "settle": SETTLE, "samples": {}}
    samples: dict[str, list[float]] = result["samples"]
    env.progress(f"handover: {rounds} rounds of {per_round} trials per case: "
                 + ("raw nats-py, " if env.nats_url is not None else "")
                 + ", ".join(["memory", *(name for name, _ in env.library_backends("handover"))]))
    # Raw and library alternate, round by round, so that drift of the machine (other
    # load, thermal, the server's own housekeeping) hits both alike.
    for n in range(rounds):
        if env.nats_url is not None:
            raw = run_json("_raw", "handover", env.nats_url, f"bench_raw_{n}",
                           per_round + WARMUP, SETTLE["nats"],
                           timeout=60 + per_round * 0.2, logdir=env.logdir)
            samples.setdefault("raw nats-py", []).extend(raw["samples"][WARMUP:])
        for name, values in trio.run(_library, env, per_round).items():
            samples.setdefault(name, []).extend(values)
    return result


def _label(name: str) -> str:
    return {"raw nats-py": "raw nats-py (asyncio)", "sqlite": "sqlite (2 connections)",
            "nats": "nats (2 connections)"}.get(name, name)


def table(results: dict[str, Any]) -> Table:
    result = results["handover"]
    t = Table("1. Graceful handover: leader leaves its block -> next body starts (ms)",
              ["case", "n", "p50", "p99", "max", "p50 / raw", "p99 / raw"])
    samples: dict[str, list[float]] = result["samples"]
    raw = Dist.of(samples.get("raw nats-py", [])).scaled(1e3)
    for name, values in samples.items():
        d = Dist.of(values).scaled(1e3)
        t.add(_label(name), d.n, d.p50, d.p99, d.max, times(ratio(d.p50, raw.p50)),
              times(ratio(d.p99, raw.p99)))
    if "raw nats-py" not in samples:
        t.note("no nats-server: no raw baseline, ratios omitted")
    t.note(f"{result.get('rounds', 1)} alternating rounds (raw, then the library), "
           f"{WARMUP} warm-up trials each not counted")
    t.note(f"ttl {result['ttl']:g} s; the standby campaigns {SETTLE['nats'] * 1e3:g} ms "
           f"(sqlite {SETTLE['sqlite'] * 1e3:g} ms) before the leader leaves; "
           f"sqlite sees the other connection's write by polling every 25 ms")
    return t


def targets(results: dict[str, Any]) -> list[Target]:
    samples = results.get("handover", {}).get("samples", {})
    rules = (f"p50 <= {TARGET_P50_RATIO:g}x raw p50", f"p99 <= {TARGET_P99_RATIO:g}x raw p99")
    if "nats" not in samples or "raw nats-py" not in samples:
        return [Target(f"graceful handover on NATS, {which}", rule, "-", None)
                for which, rule in zip(("p50", "p99"), rules, strict=True)]
    d = Dist.of(samples["nats"])
    raw = Dist.of(samples["raw nats-py"])
    r50, r99 = ratio(d.p50, raw.p50), ratio(d.p99, raw.p99)
    return [
        Target("graceful handover on NATS, p50", rules[0],
               f"{d.p50 * 1e3:.2f} ms = {times(r50)} of {raw.p50 * 1e3:.2f} ms",
               r50 <= TARGET_P50_RATIO),
        Target("graceful handover on NATS, p99", rules[1],
               f"{d.p99 * 1e3:.2f} ms = {times(r99)} of {raw.p99 * 1e3:.2f} ms",
               r99 <= TARGET_P99_RATIO),
    ]
