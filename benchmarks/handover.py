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
from ._procs import Worker, run_json
from ._stats import Dist, Table, ratio, times

__all__ = ["alternate", "run", "table", "targets"]

TTL = 5.0
WARMUP = 5
#: Seconds the leader holds before leaving, so that the next candidate is watching.
SETTLE = {"memory": 0.005, "sqlite": 0.04, "nats": 0.03}
#: Seconds a handover peer may take to answer a command.
PEER_TIMEOUT = 30.0
TARGET_P50_RATIO = 1.3
TARGET_P99_RATIO = 2.0


async def alternate(backends: tuple[Backend, Backend], trials: int, settle: float, *,
                    warmup: int = WARMUP, ttl: float = TTL) -> list[float]:
    """*trials* handovers (after *warmup* more, not returned) between two candidates.

    Each holds for *settle* seconds before it leaves, the other one campaigning
    meanwhile; returns the seconds from the leader's last instruction in its body
    to the next one's first.
    """
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
            async with trio_noleader.hold_leadership(key, backend=backends[me], ttl=ttl):
                started = time.perf_counter()
                if left_at is not None:
                    samples.append(started - left_at)
                finished = len(samples) >= trials + warmup
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
    return samples[warmup:]


async def _library(env: Env, trials: int) -> dict[str, list[float]]:
    results: dict[str, list[float]] = {}
    # Bounded: a stuck election must not hang the run (CI runs --quick unattended).
    with trio.fail_after(60 + trials * 0.5 * 3):
        await _library_rows(env, trials, results)
    return results


async def _library_rows(env: Env, trials: int, results: dict[str, list[float]]) -> None:
    store = trio_noleader.MemoryBackend()
    results["memory"] = await alternate((store, store), trials, SETTLE["memory"])
    for name, url in env.library_backends("handover"):
        async with trio_noleader.open_backend(url) as first, \
                trio_noleader.open_backend(url) as second:
            results[name] = await alternate((first, second), trials, SETTLE[name])


class _Peer:
    """One side of a handover between processes (``handover-peer`` of a module)."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.sent = 0

    async def send(self, command: str) -> int:
        """Send *command*; its number (the N of the events that answer it)."""
        self.sent += 1
        await self.worker.send_line(command)
        return self.sent

    async def event(self, name: str) -> dict[str, Any]:
        with trio.fail_after(PEER_TIMEOUT):
            return await self.worker.wait_event(name)


async def _library_peers(env: Env, url: str, trials: int, settle: float) -> list[float]:
    """*trials* library handovers between two processes (after WARMUP more)."""
    key = f"bench/handover-peers/{uuid.uuid4().hex}"
    peers: list[_Peer] = []
    try:
        for i in range(2):
            peers.append(_Peer(await Worker.start(f"handover-peer-{i}-{uuid.uuid4().hex[:4]}",
                                                  "handover-peer", url, key, TTL,
                                                  logdir=env.logdir)))
        term = [await peers[0].send("campaign"), 0]
        await peers[0].event(f"started-{term[0]}")
        holder = 0
        samples: list[float] = []
        for _ in range(trials + WARMUP):
            standby = 1 - holder
            term[standby] = await peers[standby].send("campaign")
            await peers[standby].event(f"campaigning-{term[standby]}")
            await trio.sleep(settle)
            await peers[holder].send("leave")
            left = await peers[holder].event(f"left-{term[holder]}")
            started = await peers[standby].event(f"started-{term[standby]}")
            samples.append(started["t"] - left["t"])
            holder = standby
        return samples[WARMUP:]
    finally:
        for peer in peers:
            await peer.worker.aclose(grace=5.0)


async def _raw_peers(env: Env, url: str, trials: int, settle: float) -> list[float]:
    """*trials* raw nats-py handovers between two processes (after WARMUP more)."""
    bucket = f"bench_raw_peers_{uuid.uuid4().hex[:8]}"
    peers: list[_Peer] = []
    try:
        for i in range(2):
            peers.append(_Peer(await Worker.start(f"raw-handover-peer-{i}-{uuid.uuid4().hex[:4]}",
                                                  "handover-peer", url, bucket, "peers",
                                                  logdir=env.logdir, module="_raw")))
        n = await peers[0].send("hold")
        revision = (await peers[0].event(f"held-{n}"))["revision"]
        holder = 0
        samples: list[float] = []
        for _ in range(trials + WARMUP):
            standby = 1 - holder
            take = await peers[standby].send(f"take {revision}")
            await peers[standby].event(f"waiting-{take}")
            await trio.sleep(settle)
            release = await peers[holder].send("release")
            released = await peers[holder].event(f"released-{release}")
            taken = await peers[standby].event(f"taken-{take}")
            samples.append(taken["t"] - released["t"])
            revision = taken["revision"]
            holder = standby
        return samples[WARMUP:]
    finally:
        for peer in peers:
            await peer.worker.aclose(grace=5.0)


async def _peer_rows(env: Env, trials: int) -> dict[str, list[float]]:
    assert env.nats_url is not None
    rows = {"raw nats-py, 2 processes": await _raw_peers(env, env.nats_url, trials,
                                                         SETTLE["nats"])}
    if env.nats_skip is None:
        rows["nats, 2 processes"] = await _library_peers(
            env, env.nats_bucket_url("bench-handover"), trials, SETTLE["nats"])
    return rows


def run(env: Env) -> dict[str, Any]:
    rounds, per_round = (2, 15) if env.quick else (5, 50)
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
        if env.nats_url is not None:
            for name, values in trio.run(_peer_rows, env, per_round).items():
                samples.setdefault(name, []).extend(values)
    return result


def _label(name: str) -> str:
    return {"raw nats-py": "raw nats-py (asyncio), 2 connections",
            "sqlite": "sqlite, 2 connections", "nats": "nats, 2 connections",
            }.get(name, name)


def _baseline(name: str) -> str:
    """The raw row a row's ratios are taken against."""
    return "raw nats-py, 2 processes" if name.endswith("2 processes") else "raw nats-py"


def table(results: dict[str, Any]) -> Table:
    result = results["handover"]
    t = Table("1. Graceful handover: leader leaves its block -> next body starts (ms)",
              ["case", "n", "p50", "p99", "max", "p50 / raw", "p99 / raw"])
    samples: dict[str, list[float]] = result["samples"]
    order = ["raw nats-py", "memory", "sqlite", "nats", "raw nats-py, 2 processes",
             "nats, 2 processes"]
    for name in sorted(samples, key=lambda n: order.index(n) if n in order else len(order)):
        raw = Dist.of(samples.get(_baseline(name), [])).scaled(1e3)
        d = Dist.of(samples[name]).scaled(1e3)
        t.add(_label(name), d.n, d.p50, d.p99, d.max, times(ratio(d.p50, raw.p50)),
              times(ratio(d.p99, raw.p99)))
    if "raw nats-py" not in samples:
        t.note("no nats-server: no raw baseline, ratios omitted")
    t.note(f"{result.get('rounds', 1)} alternating rounds (raw, then the library), "
           f"{WARMUP} warm-up trials each not counted; '2 connections': both candidates in "
           "this process (one thread handles the leader's release and the standby's "
           "create); '2 processes': each in its own process, timed on CLOCK_MONOTONIC, "
           "ratios against the raw 2-process row")
    t.note(f"ttl {result['ttl']:g} s; the standby campaigns {SETTLE['nats'] * 1e3:g} ms "
           f"(sqlite {SETTLE['sqlite'] * 1e3:g} ms) before the leader leaves; "
           f"sqlite sees the other connection's write by polling every 25 ms")
    return t


def targets(results: dict[str, Any]) -> list[Target]:
    samples = results.get("handover", {}).get("samples", {})
    rules = (f"p50 <= {TARGET_P50_RATIO:g}x raw p50", f"p99 <= {TARGET_P99_RATIO:g}x raw p99")
    found: list[Target] = []
    for name, label in (("nats", "2 connections, 1 process"), ("nats, 2 processes",
                                                               "2 processes")):
        base = _baseline(name)
        if name not in samples or base not in samples:
            found += [Target(f"graceful handover on NATS ({label}), {which}", rule, "-", None)
                      for which, rule in zip(("p50", "p99"), rules, strict=True)]
            continue
        d = Dist.of(samples[name])
        raw = Dist.of(samples[base])
        r50, r99 = ratio(d.p50, raw.p50), ratio(d.p99, raw.p99)
        found += [
            Target(f"graceful handover on NATS ({label}), p50", rules[0],
                   f"{d.p50 * 1e3:.2f} ms = {times(r50)} of {raw.p50 * 1e3:.2f} ms",
                   r50 <= TARGET_P50_RATIO),
            Target(f"graceful handover on NATS ({label}), p99", rules[1],
                   f"{d.p99 * 1e3:.2f} ms = {times(r99)} of {raw.p99 * 1e3:.2f} ms",
                   r99 <= TARGET_P99_RATIO),
        ]
    return found
