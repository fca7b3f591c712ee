"""3. Distance: graceful handover on NATS with a round trip of 0.3 s, ttl 3.

A :class:`trio_noleader.testing.FaultProxy` in a process of its own
(``benchmarks._worker proxy``) stands between the candidates and our nats-server
and delays every byte by ``LATENCY`` (0.15 s) in each direction, on every
connection: a round trip of 0.3 s, as to a server in another region. Two
candidates, each with its own connection through the proxy, take turns on one
key in this process exactly as in scenario 1 (:func:`benchmarks.handover.alternate`), with
``ttl = 3``; the leader holds for ``SETTLE`` so that the standby is waiting on
its watch and no renewal is in flight when it leaves. The connections are opened
before the latency is switched on (opening takes several round trips that are
not under test).

Baselines, same run: the round trip through the proxy (``nc.flush()``, a PING and
its PONG, raw nats-py), the watch delay on loopback (raw nats-py: from sending a
compare-and-set delete to a second connection's watcher seeing it, no proxy),
and (full run only) the raw nats-py handover of scenario 1 through the proxy,
for reference. The target: a
handover costs the delete reaching the standby through its watch (one round trip
and the watch delay) plus one create (one round trip), with 10 % to spare:
``p50 <= 1.1 x (2 x RTT + watch delay)``; and elections never stop (every trial
elects within its time limit).
"""

from __future__ import annotations

import math
import uuid
from typing import Any
from urllib.parse import urlsplit

import trio

import trio_noleader

from . import handover
from ._common import Env, Target
from ._procs import Worker, run_json
from ._stats import Dist, Table, ratio, times

__all__ = ["run", "table", "targets"]

LATENCY = 0.15
TTL = 3
#: Seconds the leader holds: the standby's watch is open by then, and with ttl 3
#: (a renewal every second, answered 0.3 s later) no renewal is in flight at the end.
SETTLE = 1.2
SLACK = 1.1
#: The raw baseline's watchers stay open: a short hold and one warm-up trial do.
RAW_SETTLE = 0.4
RAW_WARMUP = 1
#: Seconds one trial may take before the election counts as stopped.
TRIAL_LIMIT = 10 * TTL


def _available() -> str | None:
    try:
        from trio_noleader.testing import FaultProxy  # noqa: F401
    except ImportError as exc:
        return f"trio_noleader.testing.FaultProxy is not available ({exc})"
    return None


async def _open_proxy(env: Env) -> tuple[Worker, str]:
    assert env.nats_url is not None
    address = urlsplit(env.nats_url)
    worker = await Worker.start("distance-proxy", "proxy", address.hostname, address.port,
                                logdir=env.logdir)
    with trio.fail_after(30):
        ready = await worker.wait_event("ready")
    return worker, f"nats://127.0.0.1:{ready['port']}"


class _Latency:
    """Sets the proxy's latency, and waits for it to say so."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.count = 0

    async def set(self, seconds: float) -> None:
        self.count += 1
        await self.worker.send_line(f"latency {seconds}")
        with trio.fail_after(10):
            await self.worker.wait_event(f"latency-{self.count}")


async def _measure(env: Env, trials: int, result: dict[str, Any]) -> None:
    proxy, url = await _open_proxy(env)
    latency = _Latency(proxy)
    try:
        bucket = f"bench-distance-{uuid.uuid4().hex[:8]}"
        async with trio_noleader.open_backend(f"{url}/{bucket}?new_store_grace=off") as first, \
                trio_noleader.open_backend(f"{url}/{bucket}?new_store_grace=off") as second:
            await latency.set(LATENCY)
            env.progress(f"distance: library, {trials} handovers at RTT {2 * LATENCY:g} s, "
                         f"ttl {TTL}")
            stalled = 0
            samples: list[float] = []
            for _ in range(trials):
                # One trial per call, each bounded: a stalled election is counted, and
                # the next trial starts afresh.
                with trio.move_on_after(TRIAL_LIMIT) as scope:
                    got = await handover.alternate((first, second), 1, SETTLE, warmup=0,
                                                   ttl=TTL)
                    samples += got
                if scope.cancelled_caught:
                    stalled += 1
            result["samples"]["library"] = samples
            result["stalled"] = stalled
        env.progress("distance: raw nats-py baselines (round trip and handover through the "
                     "proxy, watch delay on loopback)")
        pings = 10 if env.quick else 30
        bucket_raw = f"bench_raw_distance_{uuid.uuid4().hex[:6]}"
        out: dict[str, dict[str, Any]] = {}

        async def raw(name: str, *args: object) -> None:
            out[name] = await trio.to_thread.run_sync(lambda: run_json(
                "_raw", *args, timeout=120 + trials * 3, logdir=env.logdir))

        # Both mostly wait on the proxy's latency: run together, they do not disturb
        # each other (each has its own connection).
        async with trio.open_nursery() as nursery:
            nursery.start_soon(raw, "rtt", "ping", url, pings)
            if not env.quick:  # a reference, not the target's baseline
                nursery.start_soon(raw, "raw", "handover", url, bucket_raw,
                                   trials + RAW_WARMUP, RAW_SETTLE)
        result["samples"]["rtt"] = out["rtt"]["samples"]
        if "raw" in out:
            result["samples"]["raw nats-py"] = out["raw"]["samples"][RAW_WARMUP:]
        await latency.set(0)
    finally:
        await proxy.aclose(grace=5.0)
    assert env.nats_url is not None
    url0 = env.nats_url
    watch = await trio.to_thread.run_sync(lambda: run_json(
        "_raw", "watch-delay", url0, "bench_raw_watch", 50, timeout=120, logdir=env.logdir))
    result["samples"]["watch delay"] = watch["samples"]


def run(env: Env) -> dict[str, Any]:
    trials = 3 if env.quick else 30
    result: dict[str, Any] = {"latency": LATENCY, "ttl": TTL, "settle": SETTLE,
                              "trials": trials, "samples": {}, "skipped": None}
    why = env.nats_skip or (None if env.nats_url else "no nats-server") or _available()
    if why:
        env.progress(f"distance: skipped: {why}")
        result["skipped"] = why
        return result
    trio.run(_measure, env, trials, result)
    return result


def budget(result: dict[str, Any]) -> tuple[float, float, float]:
    """(RTT p50, watch delay p50, the target: 1.1 x (2 RTT + watch delay)), seconds."""
    rtt = Dist.of(result["samples"].get("rtt", [])).p50
    watch = Dist.of(result["samples"].get("watch delay", [])).p50
    return rtt, watch, SLACK * (2 * rtt + watch)


def table(results: dict[str, Any]) -> Table:
    result = results["distance"]
    t = Table(f"3. Distance: graceful handover on NATS through a proxy adding "
              f"{result['latency'] * 1e3:g} ms each way, ttl {result['ttl']} s (ms)",
              ["case", "n", "p50", "p99", "max", "p50 / budget", "max / budget"])
    if result.get("skipped"):
        t.note(f"not measured: {result['skipped']}")
        return t
    rtt, watch, target = budget(result)
    labels = {"rtt": "round trip through the proxy (raw PING)",
              "watch delay": "watch delay on loopback (raw)",
              "raw nats-py": "raw nats-py handover through the proxy",
              "library": "trio-noleader handover (2 connections)"}
    for name, label in labels.items():
        if name not in result["samples"]:
            continue
        d = Dist.of(result["samples"][name]).scaled(1e3)
        handover_row = name in ("raw nats-py", "library")
        t.add(label, d.n, d.p50, d.p99, d.max,
              times(ratio(d.p50, target * 1e3)) if handover_row else "",
              times(ratio(d.max, target * 1e3)) if handover_row else "")
    t.note(f"budget = {SLACK:g} x (2 x RTT p50 + watch delay p50) = {SLACK:g} x "
           f"(2 x {rtt * 1e3:.1f} + {watch * 1e3:.2f}) ms = {target * 1e3:.1f} ms")
    t.note(f"{result.get('stalled', 0)} of {result['trials']} trials found no leader within "
           f"{TRIAL_LIMIT:g} s; the leader holds {result['settle']:g} s before it leaves")
    return t


def targets(results: dict[str, Any]) -> list[Target]:
    result = results.get("distance")
    rule = f"p50 <= {SLACK:g} x (2 RTT + watch delay)"
    name = f"handover at RTT {2 * LATENCY:g} s, ttl {TTL}"
    if not result or result.get("skipped") or not result["samples"].get("library"):
        why = (result or {}).get("skipped") or "no trial elected"
        return [Target(name, rule, "-", None, f"not measured ({why})")]
    target = budget(result)[2]
    d = Dist.of(result["samples"]["library"])
    r = ratio(d.p50, target)
    stalled = int(result.get("stalled", 0))
    return [
        Target(name, rule,
               f"p50 {d.p50 * 1e3:.0f} ms = {times(r)} of {target * 1e3:.0f} ms "
               f"(max {d.max * 1e3:.0f} ms)", r <= 1.0 if math.isfinite(r) else False),
        Target(f"{name}: elections never stop", "every trial elects",
               f"{result['trials'] - stalled} of {result['trials']}", stalled == 0),
    ]
