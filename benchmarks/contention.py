"""6. Contention: 100 candidates (tasks across 4 processes) on one key.

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

Store calls are counted in the candidate processes, from "go" to the end of the
run (the releases at the end included), in two ways (:mod:`benchmarks._count`):
calls of the backend's public methods (a watch opened counts one), and what goes
on the wire: every JetStream request on NATS (publishes awaiting an ack, reads,
consumer creates and deletes), every round trip to the file on SQLite (a
transaction, a lone read, a watch poll of ``PRAGMA data_version``), with the SQL
statements they are made of. The target is judged on the wire count, all kinds
included; SQLite's watch polls (every ``poll_interval``, 25 ms, in each process
that watches, whatever happens) also get a row of their own.
"""

from __future__ import annotations

import itertools
import math
import uuid
from pathlib import Path
from typing import Any

import trio

from . import _profile
from ._common import Env, Target
from ._procs import Worker
from ._stats import Dist, Table, fmt, ratio, times

__all__ = ["analyse", "run", "run_workers", "table", "targets"]

PROCESSES = 4
TASKS = 25
HOLD = 0.1
TTL = 5.0
#: Seconds of the extra, profiled run (full run, or --profile).
PROFILE_DURATION = 8.0
TARGET_P50_RATIO = 3.0
TARGET_P99 = 0.050


def target_calls(processes: int) -> int:
    """The most store calls per term the target allows: 2 x processes + 3."""
    return 2 * processes + 3


async def _workers(env: Env, label: str, url: str, key: str, processes: int, tasks: int,
                   duration: float, profile: Path | None) -> list[dict[str, Any]]:
    logdir: Path = env.logdir
    workers: list[Worker] = []
    try:
        for p in range(processes):
            extra = None
            if profile is not None and p == 0:
                extra = {_profile.PROFILE_ENV: str(profile), _profile.CALLBACKS_ENV: "1"}
            workers.append(await Worker.start(f"{label}-{p}", "contention", url, key, tasks,
                                              TTL, HOLD, duration, f"p{p}", logdir=logdir,
                                              env=extra))
        with trio.fail_after(60):
            for worker in workers:
                await worker.wait_event("ready")
        for worker in workers:
            await worker.send_line("go")
        done: list[dict[str, Any]] = []
        with trio.fail_after(duration + 120):
            for worker in workers:
                done.append(await worker.wait_event("done"))
    finally:
        for worker in workers:
            await worker.aclose(grace=5.0)
    return done


def _merge(done: list[dict[str, Any]], field: str) -> dict[str, int]:
    merged: dict[str, int] = {}
    for d in done:
        for name, count in d[field].items():
            merged[name] = merged.get(name, 0) + count
    return merged


def run_workers(env: Env, label: str, url: str, processes: int, tasks: int,
                duration: float, profile: Path | None = None) -> dict[str, Any]:
    """Run one contention group (*processes* x *tasks* candidates); its summary.

    With *profile*, the first process runs under py-spy (written there) and
    counts its asyncio callbacks.
    """
    key = f"bench/{label}/{uuid.uuid4().hex[:8]}"
    done = trio.run(_workers, env, label, url, key, processes, tasks, duration, profile)
    terms = sorted((term for d in done for term in d["terms"]), key=lambda t: t["start"])
    summary: dict[str, Any] = analyse(terms)
    calls = _merge(done, "calls")
    summary.update(processes=processes, tasks=tasks, duration=duration,
                   lost=sum(d["lost"] for d in done), cpu=[d["cpu"] for d in done],
                   warnings=_merge(done, "warnings"), calls=calls, wire=_merge(done, "wire"),
                   span=(terms[-1]["end"] - terms[0]["start"]) if terms else 0.0,
                   callbacks=[d.get("callbacks") for d in done])
    if profile is not None and profile.exists():
        summary["profile"] = _profile.summarise(profile)
        summary["profile_file"] = str(profile)
    return summary


def per_term(summary: dict[str, Any], counts: dict[str, int], *,
             exclude: tuple[str, ...] = ("sql statements",)) -> float:
    terms = int(summary["terms"])
    if not terms:
        return math.nan
    return sum(v for k, v in counts.items() if k not in exclude) / terms


def method_calls(summary: dict[str, Any]) -> int:
    return sum(v for k, v in summary["calls"].items() if k != "updates_in_batches")


def analyse(terms: list[dict[str, Any]]) -> dict[str, Any]:
    """Overlaps, handover gaps and token order of terms sorted by start.

    ``gaps_same`` / ``gaps_other`` split the gaps by whether the next leader is in
    the previous leader's process (candidate names are ``PROCESS/TASK``).
    """
    overlaps = 0
    worst_overlap = 0.0
    gaps: list[float] = []
    same: list[float] = []
    other: list[float] = []
    token_inversions = 0
    repeats = 0
    latest_end = -float("inf")
    for prev, term in itertools.pairwise(terms):
        latest_end = max(latest_end, prev["end"])
        if term["start"] < latest_end:
            overlaps += 1
            worst_overlap = max(worst_overlap, latest_end - term["start"])
        gap = term["start"] - prev["end"]
        gaps.append(gap)
        if term["who"].split("/")[0] == prev["who"].split("/")[0]:
            same.append(gap)
        else:
            other.append(gap)
        if term["token"] <= prev["token"]:
            token_inversions += 1
        if term["who"] == prev["who"]:
            repeats += 1
    return {"terms": len(terms), "overlaps": overlaps, "worst_overlap_s": worst_overlap,
            "gaps": gaps, "gaps_same": same, "gaps_other": other,
            "token_inversions": token_inversions,
            "holders": len({t["who"] for t in terms}), "repeats": repeats}


def terms_per_second(summary: dict[str, Any]) -> float:
    """Terms per second between the first term's start and the last term's end."""
    span = float(summary.get("span", 0.0))
    return int(summary["terms"]) / span if span > 0 else math.nan


def run(env: Env) -> dict[str, Any]:
    duration = 3.0 if env.quick else 20.0
    result: dict[str, Any] = {"processes": PROCESSES, "tasks_per_process": TASKS,
                              "hold": HOLD, "ttl": TTL, "duration": duration, "backends": {}}
    for name, url in env.library_backends("contention"):
        env.progress(f"contention: {name}, {PROCESSES} x {TASKS} candidates, "
                     f"{duration:g} s")
        result["backends"][name] = run_workers(env, f"contention-{name}", url, PROCESSES,
                                               TASKS, duration)
    if env.profile_dir is not None:
        result["profiles"] = {}
        for name, url in env.library_backends("contention"):
            env.progress(f"contention: {name}, one more run of {PROFILE_DURATION:g} s, its "
                         "first process under py-spy")
            path = env.profile_dir / f"contention-{name}-p0.txt"
            summary = run_workers(env, f"contention-{name}-profiled", url, PROCESSES, TASKS,
                                  PROFILE_DURATION, profile=path)
            p0_calls = summary["callbacks"][0]
            result["profiles"][name] = {
                "terms": summary["terms"], "cpu": summary["cpu"], "callbacks_p0": p0_calls,
                "summary": summary.get("profile"), "file": str(path)}
    return result


def uncontended(results: dict[str, Any], name: str) -> Dist:
    """Scenario 1's handover on backend *name*, in seconds (empty if it did not run)."""
    return Dist.of(results.get("handover", {}).get("samples", {}).get(name, []))


def wire_note(name: str, summary: dict[str, Any]) -> str:
    terms = max(summary["terms"], 1)
    parts = [f"{kind} {count / terms:.2f}" for kind, count in
             sorted(summary["wire"].items(), key=lambda kv: -kv[1])]
    calls = [f"{kind} {count / terms:.2f}" for kind, count in
             sorted(summary["calls"].items(), key=lambda kv: -kv[1]) if count]
    return (f"{name}, per term: on the wire: {', '.join(parts) or 'nothing'}; "
            f"backend methods: {', '.join(calls) or 'none'}")


def table(results: dict[str, Any]) -> Table:
    result = results["contention"]
    t = Table(f"6. Contention: {result['processes'] * result['tasks_per_process']} "
              f"candidates in {result['processes']} processes on one key, leader resigns "
              f"every {result['hold'] * 1e3:g} ms, {result['duration']:g} s (handover ms)",
              ["case", "terms", "terms/s", "overlaps", "token inversions", "p50", "p99",
               "max", "p50 / uncontended", "distinct leaders", "CPU s",
               "store calls/term", "method calls/term", "library warnings"])
    for name, summary in result["backends"].items():
        d = Dist.of(summary["gaps"]).scaled(1e3)
        base = uncontended(results, name).scaled(1e3)
        t.add(name, summary["terms"], fmt(terms_per_second(summary)), summary["overlaps"],
              summary["token_inversions"], d.p50, d.p99, d.max,
              times(ratio(d.p50, base.p50), 2), summary["holders"], sum(summary["cpu"]),
              per_term(summary, summary["wire"]),
              method_calls(summary) / max(summary["terms"], 1),
              sum(summary["warnings"].values()))
    for name, summary in result["backends"].items():
        same = Dist.of(summary.get("gaps_same", [])).scaled(1e3)
        other = Dist.of(summary.get("gaps_other", [])).scaled(1e3)
        t.note(f"{name}: next leader in the same process {same.n} times (p50 "
               f"{fmt(same.p50)} ms, p99 {fmt(same.p99)}), in another {other.n} times "
               f"(p50 {fmt(other.p50)} ms, p99 {fmt(other.p99)})")
        t.note(wire_note(name, summary))
        for text, count in sorted(summary["warnings"].items(), key=lambda kv: -kv[1])[:3]:
            t.note(f"{name}: {count} x {text}")
    for name, prof in result.get("profiles", {}).items():
        terms = max(int(prof["terms"]), 1)
        cpu = ", ".join(f"{1e3 * c / terms:.1f}" for c in prof["cpu"])
        callbacks = prof.get("callbacks_p0")
        line = f"profile, {name} (one more run): CPU ms per term in each process {cpu}"
        if callbacks:
            line += f"; first process: {callbacks / terms:.1f} asyncio callbacks per term"
        if prof.get("summary"):
            line += f"; {_profile.describe(prof['summary'])}"
        t.note(line)
    t.note("store calls = what reaches the store: JetStream requests (NATS), round trips "
           "to the file (SQLite: transactions, lone reads, watch polls); method calls = "
           "calls of the backend's methods, a watch opened counting one; CPU s = the "
           "candidate processes' CPU over the run, summed")
    t.note("overlap = a body started before the previous one ended (never more than one "
           "leader means 0); uncontended = scenario 1, same backend (there the next "
           "candidate is in another process or connection; here some are in the "
           "leader's own process, which sees its release at once)")
    return t


def targets(results: dict[str, Any]) -> list[Target]:
    found: list[Target] = []
    backends = results.get("contention", {}).get("backends", {})
    limit = target_calls(PROCESSES)
    if not backends:
        return [Target("contention (100 candidates, 4 processes)", "-", "-", None)]
    for name, summary in backends.items():
        d = Dist.of(summary["gaps"])
        base = uncontended(results, name)
        found.append(Target(f"contention, {name}: at most one leader", "0 overlaps",
                            f"{summary['overlaps']} overlaps in {summary['terms']} terms",
                            summary["overlaps"] == 0 and summary["terms"] > 0))
        rule = f"p50 <= {TARGET_P50_RATIO:g}x uncontended"
        if base.n:
            r = ratio(d.p50, base.p50)
            found.append(Target(f"contention, {name}: handover p50", rule,
                                f"{d.p50 * 1e3:.2f} ms = {times(r)} of {base.p50 * 1e3:.2f} ms",
                                r <= TARGET_P50_RATIO))
        else:
            found.append(Target(f"contention, {name}: handover p50", rule, "-", None,
                                "not measured (needs the handover scenario)"))
        found.append(Target(f"contention, {name}: handover p99",
                            f"p99 < {TARGET_P99 * 1e3:g} ms", f"p99 {d.p99 * 1e3:.1f} ms",
                            d.p99 < TARGET_P99))
        calls = per_term(summary, summary["wire"])
        found.append(Target(f"contention, {name}: store calls per term",
                            f"<= 2 x {PROCESSES} processes + 3 = {limit}",
                            f"{calls:.2f} per term", calls <= limit))
        if "watch poll" in summary["wire"]:
            events = per_term(summary, summary["wire"],
                              exclude=("sql statements", "watch poll"))
            polls = summary["wire"]["watch poll"] / max(summary["terms"], 1)
            found.append(Target(f"contention, {name}: store calls per term, polls aside",
                                f"<= {limit}",
                                f"{events:.2f} per term (+ {polls:.2f} watch polls)",
                                events <= limit))
    return found
