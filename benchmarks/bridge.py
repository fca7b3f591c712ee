"""5. Bridge overhead: the library's renewal call against the raw client, same run.

Library: ``backend.update(key, value, revision=..., ttl=...)``, the call a renewal
makes, sequentially, in a trio process (``benchmarks._worker cas``): for NATS that
crosses trio-asyncio into nats-py; for SQLite it runs the transaction in a worker
thread. Raw: the same compare-and-set with a TTL written directly, with no trio
(``benchmarks._raw``): nats-py on plain asyncio publishing with
``Nats-Expected-Last-Subject-Sequence`` and ``Nats-TTL`` headers, and sqlite3
running the same transaction in the calling thread. For NATS two more sides split
the difference: the raw compare-and-set called from trio through
``trio_asyncio.aio_as_trio`` once per call, without the library (the bridge
alone), and ``aio_as_trio`` of an asyncio coroutine that returns at once (the
fixed price of one crossing).

What batching buys: ``backend.update_many`` of ``BATCH`` updates on as many keys
per call (``benchmarks._worker cas-many``; one bridged call on NATS, one
transaction on SQLite), and for NATS the raw client sending ``BATCH``
compare-and-set publishes at once (``asyncio.gather``); CPU is per update.

The sides alternate in rounds of fresh processes, so drift of the machine hits
all alike. Each call is timed with :func:`time.perf_counter`; each process also
reports its CPU time over the timed calls (the per-call baseline of scenario 4).

Where the CPU goes (when profiling is on: the full run, or ``--profile``): one
more process per side runs the same loop under py-spy (``--gil``: samples of
running Python) and counts the asyncio callbacks it runs
(:mod:`benchmarks._profile`); these runs are not part of the figures above.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from . import _profile
from ._common import Env, Target
from ._procs import run_json
from ._stats import Dist, Table, fmt, ratio, times

__all__ = ["cpu_per_call", "run", "table", "targets"]

TTL = 15
WARMUP = 50
BATCH = 100
#: Calls per profiled run (updates: four times as many for the batched sides).
PROFILE_CALLS = 3000

#: (store, side) -> label, in the order they are printed.
LABELS = {
    ("nats", "raw"): "nats: raw nats-py on asyncio",
    ("nats", "bridged"): "nats: same, via trio-asyncio, no library",
    ("nats", "library"): "nats: backend.update (trio-asyncio)",
    ("nats", "noop"): "nats: aio_as_trio of a no-op (one crossing)",
    ("nats", "raw batch"): f"nats: raw, {BATCH} publishes gathered, per update",
    ("nats", "library batch"): f"nats: backend.update_many({BATCH}), per update",
    ("nats", "raw pipelined"): f"nats: raw, {BATCH} publishes, one future (prototype)",
    ("nats", "bridged pipelined"): "nats: same, via trio-asyncio (prototype)",
    ("sqlite", "raw"): "sqlite: raw sqlite3, same transaction",
    ("sqlite", "library"): "sqlite: backend.update (trio thread)",
    ("sqlite", "library batch"): f"sqlite: backend.update_many({BATCH}), per update",
}


def _sides(env: Env, calls: int) -> list[tuple[str, list[tuple[str, str, tuple[object, ...]]]]]:
    """(store, [(side, module, args)]): the sides of one store alternate in each round."""
    stores: list[tuple[str, list[tuple[str, str, tuple[object, ...]]]]] = []
    batched_calls = max(calls, BATCH) * 4
    if env.nats_url is not None and env.nats_skip is None:
        stores.append(("nats", [
            ("raw", "_raw", ("nats-cas", env.nats_url, "bench_raw", calls, WARMUP, TTL)),
            ("bridged", "_worker", ("bridged-cas", env.nats_url, "bench_bridged", calls,
                                    WARMUP, TTL)),
            ("library", "_worker", ("cas", env.nats_bucket_url("bench-bridge"), calls,
                                    WARMUP, TTL)),
            ("noop", "_worker", ("bridged-noop", calls * 10, WARMUP)),
            ("raw batch", "_raw", ("nats-gather", env.nats_url, "bench_raw", batched_calls,
                                   BATCH * 2, TTL, BATCH)),
            ("library batch", "_worker", ("cas-many", env.nats_bucket_url("bench-bridge"),
                                          batched_calls, BATCH * 2, TTL, BATCH)),
            ("raw pipelined", "_raw", ("nats-pipelined", env.nats_url, "bench_raw",
                                       batched_calls, BATCH * 2, TTL, BATCH)),
            ("bridged pipelined", "_worker", ("bridged-pipelined", env.nats_url,
                                              "bench_bridged", batched_calls, BATCH * 2, TTL,
                                              BATCH)),
        ]))
    stores.append(("sqlite", [
        ("raw", "_raw", ("sqlite-cas", env.tmp / "raw-cas.db", calls, WARMUP, TTL)),
        ("library", "_worker", ("cas", env.sqlite_url("bridge"), calls, WARMUP, TTL)),
        ("library batch", "_worker", ("cas-many", env.sqlite_url("bridge-many"),
                                      batched_calls, BATCH * 2, TTL, BATCH)),
    ]))
    return stores


def _updates(out: dict[str, Any]) -> int:
    """Updates in one side's output: calls, or updates for the batched sides."""
    return int(out.get("updates") or len(out["samples"]))


def run(env: Env) -> dict[str, Any]:
    rounds, calls = (1, 150) if env.quick else (5, 400)
    result: dict[str, Any] = {"rounds": rounds, "calls_per_round": calls, "warmup": WARMUP,
                              "ttl": TTL, "batch": BATCH, "pairs": {}, "profiles": {}}
    for name, sides in _sides(env, calls):
        env.progress(f"bridge: {name}, {rounds} rounds per side: "
                     + ", ".join(side for side, _, _ in sides))
        merged: dict[str, dict[str, Any]] = {
            side: {"samples": [], "cpu": 0.0, "wall": 0.0, "updates": 0}
            for side, _, _ in sides}
        for _ in range(rounds):
            for side, module, args in sides:
                out = run_json(module, *args, timeout=120, logdir=env.logdir)
                merged[side]["samples"] += out["samples"]
                merged[side]["cpu"] += out["cpu"]
                merged[side]["wall"] += out["wall"]
                merged[side]["updates"] += _updates(out)
        result["pairs"][name] = merged
    if env.profile_dir is not None:
        # Long enough that py-spy's start (about 0.1 s to attach) does not matter.
        for name, sides in _sides(env, PROFILE_CALLS):
            for side, module, args in sides:
                if side == "noop" or (module == "_raw" and name == "sqlite"):
                    continue
                result["profiles"][f"{name} {side}"] = _profiled(env, name, side, module, args)
    return result


def _profiled(env: Env, name: str, side: str, module: str,
              args: tuple[object, ...]) -> dict[str, Any]:
    """One more run of a side under py-spy, counting asyncio callbacks."""
    assert env.profile_dir is not None
    path = env.profile_dir / f"bridge-{name}-{side.replace(' ', '-')}.txt"
    env.progress(f"bridge: {name} {side}, profiled (py-spy)")
    out = run_json(module, *args, timeout=180, logdir=env.logdir,
                   env={_profile.PROFILE_ENV: str(path), _profile.CALLBACKS_ENV: "1"})
    profile: dict[str, Any] = {"updates": _updates(out), "callbacks": out.get("callbacks"),
                               "cpu": out["cpu"], "file": str(path)}
    if path.exists():
        profile["summary"] = _profile.summarise(Path(path))
    else:
        profile["summary"] = None
        profile["error"] = (path.with_name(path.name + ".log").read_text(errors="replace")[-500:]
                            if path.with_name(path.name + ".log").exists() else "no output")
    return profile


def cpu_per_call(results: dict[str, Any], name: str, side: str) -> float | None:
    """CPU seconds per compare-and-set update measured here (None if not measured)."""
    pair = results.get("bridge", {}).get("pairs", {}).get(name)
    if pair is None or side not in pair or not pair[side]["samples"]:
        return None
    return float(pair[side]["cpu"]) / int(pair[side].get("updates") or
                                          len(pair[side]["samples"]))


def table(results: dict[str, Any]) -> Table:
    result = results["bridge"]
    t = Table("5. Bridge overhead: CAS update with a TTL, library vs raw client "
              "(ms per call; CPU us per update)",
              ["case", "n", "p50", "p99", "max", "CPU us", "CPU ratio", "p50 ratio",
               "p99 ratio", "asyncio callbacks/update"])
    profiles: dict[str, Any] = result.get("profiles", {})
    for (name, side), label in LABELS.items():
        pair = result["pairs"].get(name)
        if pair is None or side not in pair:
            continue
        batched = side.endswith(("batch", "pipelined"))
        raw_side = "raw batch" if batched and "raw batch" in pair else "raw"
        raw = Dist.of(pair[raw_side]["samples"]).scaled(1e3)
        d = Dist.of(pair[side]["samples"]).scaled(1e3)
        cpu = cpu_per_call(results, name, side)
        raw_cpu = cpu_per_call(results, name, raw_side)
        prof = profiles.get(f"{name} {side}")
        callbacks = "-"
        if prof and prof.get("callbacks") is not None and prof["updates"]:
            callbacks = fmt(prof["callbacks"] / prof["updates"])
        same = side == raw_side
        t.add(label, d.n, d.p50, d.p99, d.max, None if cpu is None else cpu * 1e6,
              "1.00x" if same else times(ratio(cpu or math.nan, raw_cpu or math.nan)),
              times(ratio(d.p50, raw.p50)), times(ratio(d.p99, raw.p99)),
              callbacks)
    t.note(f"{result['rounds']} alternating rounds of {result['calls_per_round']} calls "
           f"(after {result['warmup']} warm-up calls each), ttl {result['ttl']} s; batched "
           f"sides: calls of {result['batch']} updates, latency per call, CPU per update, "
           "ratios against the raw batch (NATS) or the raw single CAS (SQLite)")
    for key, prof in profiles.items():
        if prof.get("summary"):
            t.note(f"profile, {key}: {_profile.describe(prof['summary'])}")
        else:
            t.note(f"profile, {key}: none ({prof.get('error', '?')})")
    if profiles:
        t.note("profile = py-spy samples holding the GIL in one extra, unmeasured run per "
               "side, charged to the component of the innermost frame; asyncio callbacks "
               "= asyncio.Handle._run calls in that run")
    return t


def targets(results: dict[str, Any]) -> list[Target]:
    result = results.get("bridge", {})
    pair = result.get("pairs", {}).get("nats")
    rule = "report, with a profile"
    name = "bridge overhead on one call (NATS)"
    if pair is None:
        return [Target(name, rule, "-", None)]
    raw = Dist.of(pair["raw"]["samples"])
    lib = Dist.of(pair["library"]["samples"])
    bridged = Dist.of(pair["bridged"]["samples"])
    cpu = {side: cpu_per_call(results, "nats", side) or math.nan for side in pair}
    measured = (f"p50 {times(ratio(lib.p50, raw.p50))} raw ({times(ratio(bridged.p50, raw.p50))}"
                f" without the library); CPU {cpu['library'] * 1e6:.0f} us = "
                f"{times(ratio(cpu['library'], cpu['raw']))} raw; batched "
                f"{cpu['library batch'] * 1e6:.0f} us/update = "
                f"{times(ratio(cpu['library batch'], cpu['raw batch']))} raw batch")
    return [Target(name, rule, measured, None, "reported")]
