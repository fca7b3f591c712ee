"""7. Scale: 3,000 candidate tasks in one process on one key, SQLite and NATS.

One process (``benchmarks._worker contention``, one backend instance) runs
``TASKS`` candidate tasks on one key; as in scenario 6 every term lasts ``HOLD``
(100 ms), then the leader resigns and sits out one ``HOLD``. Baseline, same run
and same backend: the same process with 2 tasks (uncontended: one waits while
the other leads). Reported: terms per second, the handover gap (previous body's
end -> next body's start) against the baseline's and against scenario 1's
uncontended handover (two connections), store calls per term, warnings.

Target: terms keep coming at the uncontended rate: terms/s at least
``TARGET_RATE`` of the 2-task baseline's, never two leaders.
"""

from __future__ import annotations

from typing import Any

from . import contention
from ._common import Env, Target
from ._stats import Dist, Table, fmt, ratio, times

__all__ = ["run", "table", "targets"]

TASKS = 3000
BASELINE_TASKS = 2
TARGET_RATE = 0.9


def run(env: Env) -> dict[str, Any]:
    duration = 3.0 if env.quick else 15.0
    result: dict[str, Any] = {"tasks": TASKS, "baseline_tasks": BASELINE_TASKS,
                              "hold": contention.HOLD, "ttl": contention.TTL,
                              "duration": duration, "backends": {}}
    for name, url in env.library_backends("scale"):
        rows: dict[str, Any] = {}
        for tasks in (BASELINE_TASKS, TASKS):
            env.progress(f"scale: {name}, {tasks} tasks in one process, {duration:g} s")
            rows[str(tasks)] = contention.run_workers(env, f"scale-{name}-{tasks}", url, 1,
                                                      tasks, duration)
        result["backends"][name] = rows
    return result


def table(results: dict[str, Any]) -> Table:
    result = results["scale"]
    t = Table(f"7. Scale: candidate tasks in one process on one key, leader resigns every "
              f"{result['hold'] * 1e3:g} ms, {result['duration']:g} s (handover ms)",
              ["case", "terms", "terms/s", "rate / 2 tasks", "overlaps", "p50", "p99", "max",
               "p50 / 2 tasks", "p50 / scenario 1", "CPU s", "store calls/term",
               "lost", "library warnings"])
    for name, rows in result["backends"].items():
        base = rows[str(result["baseline_tasks"])]
        base_rate = contention.terms_per_second(base)
        base_gap = Dist.of(base["gaps"])
        scenario1 = contention.uncontended(results, name)
        for tasks, summary in rows.items():
            d = Dist.of(summary["gaps"])
            rate = contention.terms_per_second(summary)
            t.add(f"{name}, {int(tasks):,} tasks", summary["terms"], fmt(rate),
                  times(ratio(rate, base_rate)), summary["overlaps"], d.p50 * 1e3,
                  d.p99 * 1e3, d.max * 1e3, times(ratio(d.p50, base_gap.p50)),
                  times(ratio(d.p50, scenario1.p50)), sum(summary["cpu"]),
                  contention.per_term(summary, summary["wire"]), summary["lost"],
                  sum(summary["warnings"].values()))
    for name, rows in result["backends"].items():
        summary = rows[str(result["tasks"])]
        t.note(contention.wire_note(f"{name}, {result['tasks']:,} tasks", summary))
        for text, count in sorted(summary["warnings"].items(), key=lambda kv: -kv[1])[:3]:
            t.note(f"{name}: {count} x {text}")
    t.note(f"baseline: the same process with {result['baseline_tasks']} tasks; scenario 1 = "
           "the uncontended handover between two connections; terms/s = terms between "
           "the first start and the last end")
    return t


def targets(results: dict[str, Any]) -> list[Target]:
    result = results.get("scale")
    rule = f"terms/s >= {TARGET_RATE:g} x the 2-task rate, 0 overlaps"
    if not result or not result["backends"]:
        return [Target(f"{TASKS:,} tasks in one process: terms keep coming", rule, "-", None)]
    found: list[Target] = []
    for name, rows in result["backends"].items():
        base = rows[str(result["baseline_tasks"])]
        summary = rows[str(result["tasks"])]
        rate = contention.terms_per_second(summary)
        base_rate = contention.terms_per_second(base)
        r = ratio(rate, base_rate)
        found.append(Target(
            f"{result['tasks']:,} tasks in one process, {name}: terms keep coming", rule,
            f"{rate:.2f} terms/s = {times(r)} of {base_rate:.2f}; "
            f"{summary['overlaps']} overlaps",
            r >= TARGET_RATE and summary["overlaps"] == 0 and summary["terms"] > 0))
    return found
