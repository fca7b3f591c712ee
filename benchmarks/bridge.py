"""4. Bridge overhead: the library's renewal path against the raw client, same run.

Library: ``backend.update(key, value, revision=..., ttl=...)``, the call a renewal
makes, sequentially, in a trio process (``benchmarks._worker cas``): for NATS that
crosses trio-asyncio into nats-py; for SQLite it runs the transaction in a worker
thread. Raw: the same compare-and-set with a TTL written directly, with no trio
(``benchmarks._raw``): nats-py on plain asyncio publishing with
``Nats-Expected-Last-Subject-Sequence`` and ``Nats-TTL`` headers, and sqlite3
running the same transaction in the calling thread. For NATS a third side splits
the difference: the raw compare-and-set called from trio through
``trio_asyncio.aio_as_trio`` once per call, without the library (the bridge
alone). The sides alternate in rounds of fresh processes, so drift of the machine
hits all alike. Each call is
timed with :func:`time.perf_counter`; each process also reports its CPU time over
the timed calls (the renewal scenario's per-call baseline).
"""

from __future__ import annotations

from typing import Any

from ._common import Env, Target
from ._procs import run_json
from ._stats import Dist, Table, ratio, times

__all__ = ["run", "table", "targets"]

TTL = 15
WARMUP = 50
TARGET_RATIO = 1.3


def run(env: Env) -> dict[str, Any]:
    rounds, calls = (2, 150) if env.quick else (5, 400)
    result: dict[str, Any] = {"rounds": rounds, "calls_per_round": calls, "warmup": WARMUP,
                              "ttl": TTL, "pairs": {}}
    # (store, [(side, module, args)]): the sides of one store alternate in each round.
    stores: list[tuple[str, list[tuple[str, str, tuple[object, ...]]]]] = []
    if env.nats_url is not None and env.nats_skip is None:
        stores.append(("nats", [
            ("raw", "_raw", ("nats-cas", env.nats_url, "bench_raw", calls, WARMUP, TTL)),
            ("bridged", "_worker", ("bridged-cas", env.nats_url, "bench_bridged", calls,
                                    WARMUP, TTL)),
            ("library", "_worker", ("cas", env.nats_bucket_url("bench-bridge"), calls,
                                    WARMUP, TTL)),
        ]))
    stores.append(("sqlite", [
        ("raw", "_raw", ("sqlite-cas", env.tmp / "raw-cas.db", calls, WARMUP, TTL)),
        ("library", "_worker", ("cas", env.sqlite_url("bridge"), calls, WARMUP, TTL)),
    ]))
    for name, sides in stores:
        env.progress(f"bridge: {name}, {rounds} rounds of {calls} calls per side: "
                     + ", ".join(side for side, _, _ in sides))
        merged: dict[str, dict[str, Any]] = {
            side: {"samples": [], "cpu": 0.0, "wall": 0.0} for side, _, _ in sides}
        for _ in range(rounds):
            for side, module, args in sides:
                out = run_json(module, *args, timeout=60, logdir=env.logdir)
                merged[side]["samples"] += out["samples"]
                merged[side]["cpu"] += out["cpu"]
                merged[side]["wall"] += out["wall"]
        result["pairs"][name] = merged
    return result


def cpu_per_call(results: dict[str, Any], name: str, side: str) -> float | None:
    """CPU seconds per compare-and-set call measured here (None if not measured)."""
    pair = results.get("bridge", {}).get("pairs", {}).get(name)
    if pair is None or not pair[side]["samples"]:
        return None
    return float(pair[side]["cpu"]) / len(pair[side]["samples"])


def table(results: dict[str, Any]) -> Table:
    result = results["bridge"]
    t = Table("4. Bridge overhead: sequential CAS update with a TTL, library vs raw client "
              "(ms per call; CPU us per call)",
              ["case", "n", "p50", "p99", "max", "CPU", "p50 ratio", "p99 ratio", "target"])
    labels = {("nats", "raw"): "nats: raw nats-py on asyncio",
              ("nats", "bridged"): "nats: same, via trio-asyncio, no library",
              ("nats", "library"): "nats: backend.update (trio-asyncio)",
              ("sqlite", "raw"): "sqlite: raw sqlite3, same transaction",
              ("sqlite", "library"): "sqlite: backend.update (trio thread)"}
    for name, pair in result["pairs"].items():
        raw = Dist.of(pair["raw"]["samples"]).scaled(1e3)
        for side in pair:
            d = Dist.of(pair[side]["samples"]).scaled(1e3)
            cpu = cpu_per_call(results, name, side)
            target = ""
            if side == "library" and name == "nats":
                met = ratio(d.p50, raw.p50) <= TARGET_RATIO
                target = f"p50 ratio <= {TARGET_RATIO}: {'met' if met else 'MISSED'}"
            t.add(labels[name, side], d.n, d.p50, d.p99, d.max,
                  None if cpu is None else cpu * 1e6,
                  times(ratio(d.p50, raw.p50)), times(ratio(d.p99, raw.p99)), target)
    t.note(f"{result['rounds']} alternating rounds of {result['calls_per_round']} calls "
           f"(after {result['warmup']} warm-up calls each), ttl {result['ttl']} s")
    return t


def targets(results: dict[str, Any]) -> list[Target]:
    pair = results.get("bridge", {}).get("pairs", {}).get("nats")
    rule = f"p50 ratio <= {TARGET_RATIO}"
    if pair is None:
        return [Target("bridge overhead (NATS renewal path)", rule, "-", None)]
    raw = Dist.of(pair["raw"]["samples"])
    lib = Dist.of(pair["library"]["samples"])
    r50, r99 = ratio(lib.p50, raw.p50), ratio(lib.p99, raw.p99)
    return [Target("bridge overhead (NATS renewal path)", rule,
                   f"p50 {r50:.2f}x, p99 {r99:.2f}x", r50 <= TARGET_RATIO)]
