"""5. Contention: 100 candidates (tasks across 4 processes) on one key.

Each of 4 processes (``benchmarks._worker contention``) opens one connection and
runs 25 candidate tasks; each task campaigns in a loop, and every term lasts
``HOLD`` (100 ms) before the leader calls ``resign()``; a candidate that resigned
sits out one ``HOLD`` before campaigning again (one that campaigns again at once
is first at the free key and leads again, which is no handover). Every body logs its start
and end on CLOCK_MONOTONIC (the end before the lease is released). Afterwards all
terms are merged and sorted: a term that starts before an earlier one ended is an
overlap (two leaders at once); the gap between consecutive terms is the contended
handover, compared with the uncontended handover of scenario 1 on the same
backend. Fencing tokens must increase from term to term.
"""

from __future__ import annotations

import itertools
import uuid
from pathlib import Path
from typing import Any

import trio

from ._common import Env, Target
from ._procs import Worker
from ._stats import Dist, Table, ratio, times

__all__ = ["run", "table", "targets"]

PROCESSES = 4
TASKS = 25
HOLD = 0.1
TTL = 5.0


async def _one(env: Env, backend: str, url: str, duration: float) -> dict[str, Any]:
    key = f"bench/contention/{uuid.uuid4().hex[:8]}"
    logdir: Path = env.logdir
    workers: list[Worker] = []
    try:
        for p in range(PROCESSES):
            workers.append(await Worker.start(f"contention-{backend}-{p}", "contention", url,
                                              key, TASKS, TTL, HOLD, duration, f"p{p}",
                                              logdir=logdir))
        with trio.fail_after(60):
            for worker in workers:
                await worker.wait_event("ready")
        for worker in workers:
            await worker.send_line("go")
        done: list[dict[str, Any]] = []
        with trio.fail_after(duration + 60):
            for worker in workers:
                done.append(await worker.wait_event("done"))
    finally:
        for worker in workers:
            await worker.aclose(grace=5.0)
    terms = sorted((term for d in done for term in d["terms"]), key=lambda t: t["start"])
    warnings: dict[str, int] = {}
    for d in done:
        for text, count in d["warnings"].items():
            warnings[text] = warnings.get(text, 0) + count
    calls: dict[str, int] = {}
    for d in done:
        for op, count in d["calls"].items():
            calls[op] = calls.get(op, 0) + count
    return {"terms": terms, "lost": sum(d["lost"] for d in done),
            "cpu": [d["cpu"] for d in done], "warnings": warnings, "calls": calls}


def analyse(terms: list[dict[str, Any]]) -> dict[str, Any]:
    """Overlaps, handover gaps and token order of terms sorted by start."""
    overlaps = 0
    worst_overlap = 0.0
    gaps: list[float] = []
    token_inversions = 0
    repeats = 0
    latest_end = -float("inf")
    for prev, term in itertools.pairwise(terms):
        latest_end = max(latest_end, prev["end"])
        if term["start"] < latest_end:
            overlaps += 1
            worst_overlap = max(worst_overlap, latest_end - term["start"])
        gaps.append(term["start"] - prev["end"])
        if term["token"] <= prev["token"]:
            token_inversions += 1
        if term["who"] == prev["who"]:
            repeats += 1
    return {"terms": len(terms), "overlaps": overlaps, "worst_overlap_s": worst_overlap,
            "gaps": gaps, "token_inversions": token_inversions,
            "holders": len({t["who"] for t in terms}), "repeats": repeats}


def run(env: Env) -> dict[str, Any]:
    duration = 3.0 if env.quick else 20.0
    result: dict[str, Any] = {"processes": PROCESSES, "tasks_per_process": TASKS,
                              "hold": HOLD, "ttl": TTL, "duration": duration, "backends": {}}
    for name, url in env.library_backends("contention"):
        env.progress(f"contention: {name}, {PROCESSES} x {TASKS} candidates, "
                     f"{duration:g} s")
        raw = trio.run(_one, env, name, url, duration)
        summary = analyse(raw["terms"])
        summary.update(lost=raw["lost"], cpu=raw["cpu"], warnings=raw["warnings"],
                       calls=raw["calls"])
        result["backends"][name] = summary
    return result


def table(results: dict[str, Any]) -> Table:
    result = results["contention"]
    t = Table(f"5. Contention: {result['processes'] * result['tasks_per_process']} "
              f"candidates in {result['processes']} processes on one key, leader resigns "
              f"every {result['hold'] * 1e3:g} ms, {result['duration']:g} s (handover ms)",
              ["case", "terms", "overlaps", "token inversions", "p50", "p99", "max",
               "p50 / uncontended", "distinct leaders", "CPU s", "store calls/term",
               "library warnings"])
    uncontended = results.get("handover", {}).get("samples", {})
    for name, summary in result["backends"].items():
        d = Dist.of(summary["gaps"]).scaled(1e3)
        base = Dist.of(uncontended.get(name, [])).scaled(1e3)
        t.add(name, summary["terms"], summary["overlaps"], summary["token_inversions"],
              d.p50, d.p99, d.max, times(ratio(d.p50, base.p50), 1), summary["holders"],
              sum(summary["cpu"]),
              sum(summary["calls"].values()) / max(summary["terms"], 1),
              sum(summary["warnings"].values()))
        for text, count in sorted(summary["warnings"].items(), key=lambda kv: -kv[1])[:3]:
            t.note(f"{name}: {count} x {text}")
    t.note("CPU s = the candidate processes' CPU time over the run, summed; store calls "
           "= create, update, get, delete and watch calls of all candidates")
    t.note("overlap = a body started before the previous one ended (never more than one "
           "leader means 0); uncontended = scenario 1, same backend (there the next "
           "candidate is in another process or connection; here some are in the "
           "leader's own process, which sees its release at once)")
    return t


def targets(results: dict[str, Any]) -> list[Target]:
    found: list[Target] = []
    for name, summary in results.get("contention", {}).get("backends", {}).items():
        found.append(Target(f"contention, {name}: at most one leader", "0 overlaps",
                            f"{summary['overlaps']} overlaps in {summary['terms']} terms",
                            summary["overlaps"] == 0 and summary["terms"] > 0))
    return found
