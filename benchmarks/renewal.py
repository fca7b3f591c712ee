"""4. Renewal cost: one process holding many leases on distinct keys, against raw clients.

One fresh process per row (``benchmarks._worker renewal``) enters one
``hold_leadership`` per key, all at once, with the default ``renew_interval =
ttl/3``. Once every lease is held it waits half an interval, then measures process
CPU (:func:`time.process_time`: user + system, every thread) over exactly
``rounds`` renewal intervals, so the window holds ``rounds`` renewals of every
lease; renewals are counted at the backend (a delegating wrapper adds one integer
per call). At the end it checks every lease twice, the store's answer first and
the holder's own deadline right after: held means both say so; a lease whose
body would still run while the store no longer shows it is reported as UNSAFE
(the design makes that impossible).

Each backend is measured twice at the target's lease count: *batched* (the
backend as it is: renewals that fall due together go to the store in one
``update_many``, one bridged call on NATS, one transaction on SQLite) and
*unbatched* (through a wrapper class without ``update_many``, so every renewal is
its own ``update`` call): what batching buys.

Two more batched rows measure the observer hook (``trio_noleader.add_observer``):
*metrics* with :mod:`trio_noleader.metrics` enabled (every renewal is a counter, a
histogram observation and a deadline update), and *silent* with no observer at all,
not even the logging one that is on by default (the renewal path then pays one list
check). Each is compared with the plain batched row of the same run.

Baselines, same run, same lease count, ttl and window, no trio
(:mod:`benchmarks._raw`): nats-py on plain asyncio with one task per lease, each
sleeping until due and sending one compare-and-set publish with the TTL header
(due together, the publishes are pipelined on the connection); sqlite3 in one
thread running the same compare-and-set transaction once per renewal ("each") or
once per round for all ("batch"). The target compares the library's batched CPU
per renewal with the raw client's: the per-lease tasks on NATS, a transaction per
renewal on SQLite (the raw client's CAS; the raw "batch" row shows what a raw
client gains by batching too).
"""

from __future__ import annotations

import math
import uuid
from typing import Any

from . import _profile, bridge
from ._common import Env, Target
from ._procs import run_json
from ._stats import Table, fmt, ratio, times

__all__ = ["run", "table", "targets"]

TARGET_RATIO = 1.5
TARGET_CORE_PERCENT = 10.0
#: The raw row each backend's target compares with.
BASELINE = {"nats": "raw nats-py, a task per lease", "sqlite": "raw sqlite3, each"}


def _settings(quick: bool) -> tuple[float, int, int, list[int]]:
    """ttl, rounds, the target's lease count, and the lease counts of batched rows."""
    if quick:
        return 3.0, 2, 300, [300]
    return 15.0, 3, 1000, [1, 100, 1000]


def run(env: Env) -> dict[str, Any]:
    ttl, rounds, leases, counts = _settings(env.quick)
    rows: list[dict[str, Any]] = []
    timeout = 180 + rounds * ttl

    profiles: dict[str, Any] = {}

    def library(name: str, url: str, n: int, mode: str, profile: bool = False) -> None:
        env.progress(f"renewal: {name} ({mode}), {n} leases, ttl {ttl:g} s, "
                     f"{rounds} rounds of {ttl / 3:g} s" + (", profiled" if profile else ""))
        prefix = f"bench/renew/{uuid.uuid4().hex[:8]}"
        extra = None
        path = None
        if profile:
            assert env.profile_dir is not None
            path = env.profile_dir / f"renewal-{name}-{mode}-{n}.txt"
            extra = {_profile.PROFILE_ENV: str(path), _profile.CALLBACKS_ENV: "1"}
        out = run_json("_worker", "renewal", url, prefix, n, ttl, rounds, mode,
                       timeout=timeout, logdir=env.logdir, env=extra)
        if path is not None:
            profiles[f"{name}, {mode}"] = {
                "renewals": out["renewals"], "cpu": out["cpu"],
                "callbacks": out.get("callbacks"), "file": str(path),
                "summary": _profile.summarise(path) if path.exists() else None}
            return
        out.update(backend=name, side="library", label=f"{name}, {mode}")
        rows.append(out)

    def raw(name: str, label: str, module_args: tuple[object, ...]) -> None:
        env.progress(f"renewal: {label}, {leases} leases, ttl {ttl:g} s, {rounds} rounds")
        out = run_json("_raw", *module_args, timeout=timeout, logdir=env.logdir)
        out.update(backend=name, side="raw", label=label)
        rows.append(out)

    for name, url in env.library_backends("renewal"):
        if name == "nats":
            assert env.nats_url is not None
            raw(name, BASELINE["nats"], ("nats-renewal", env.nats_url, "bench_raw_renew",
                                         leases, int(ttl), rounds))
        else:
            for mode in ("each", "batch"):
                raw(name, f"raw sqlite3, {mode}",
                    ("sqlite-renewal", env.tmp / f"raw-renew-{mode}.db", leases, ttl,
                     rounds, mode))
        for n in counts:
            library(name, url, n, "batched")
        # The observer hook's cost: metrics on, and no observer at all (same leases).
        library(name, url, leases, "metrics")
        library(name, url, leases, "silent")
        library(name, url, leases, "unbatched")
        if env.profile_dir is not None:
            # One more run, under py-spy: where a batched renewal's CPU goes.
            library(name, url, leases, "batched", profile=True)
    return {"ttl": ttl, "rounds": rounds, "leases": leases, "rows": rows,
            "profiles": profiles}


def _per_renewal(row: dict[str, Any]) -> float:
    renewals = int(row["renewals"])
    return float(row["cpu"]) / renewals if renewals else math.nan


def _baseline(result: dict[str, Any], backend: str) -> dict[str, Any] | None:
    rows: list[dict[str, Any]] = result["rows"]
    for row in rows:
        if row["side"] == "raw" and row["label"] == BASELINE.get(backend):
            return row
    return None


def _held(row: dict[str, Any]) -> str:
    held = f"{row['held_in_store']}/{row['leases']}"
    if row["held_locally"] != row["held_in_store"] or row["lost"]:
        held += f" (local {row['held_locally']}, lost {row['lost']})"
    if row.get("unsafe"):
        held += f", {row['unsafe']} UNSAFE (body on, store gone)"
    if row["errors"]:
        held += f", {row['errors']} failed: {', '.join(row['error_kinds'])}"
    return held


def _raw_note(row: dict[str, Any]) -> str:
    late = int(row.get("lost", 0)) + int(row.get("failures", 0))
    return f"{late} renewals came too late" if late else "all in time"


def table(results: dict[str, Any]) -> Table:
    result = results["renewal"]
    t = Table(f"4. Renewal cost: one process holding N leases, ttl {result['ttl']:g} s, "
              f"renew every {result['ttl'] / 3:g} s, {result['rounds']} rounds",
              ["case", "leases", "renewals", "CPU s", "% of a core", "CPU us/renewal",
               "vs raw", "vs one raw CAS", "calls/renewal", "held at end"])
    for row in result["rows"]:
        per = _per_renewal(row)
        core = 100 * row["cpu"] / row["wall"]
        base = _baseline(result, row["backend"])
        versus = times(ratio(per, _per_renewal(base))) if base is not None else "-"
        one_cas = bridge.cpu_per_call(results, row["backend"], "raw")
        calls = "-"
        if row["side"] == "library" and row["renewals"]:
            calls = fmt((row["calls"]["update"] + row["calls"]["update_many"])
                        / row["renewals"])
        label = row["label"] if row["side"] == "raw" else f"library: {row['label']}"
        t.add(label, row["leases"], int(row["renewals"]), row["cpu"], fmt(core), per * 1e6,
              versus, "-" if one_cas is None else times(ratio(per, one_cas), 1), calls,
              _held(row) if row["side"] == "library" else _raw_note(row))
    t.note("vs raw = CPU per renewal / that of the raw client doing the same renewals in "
           "this run (NATS: " + BASELINE["nats"] + "; SQLite: " + BASELINE["sqlite"]
           + "); vs one raw CAS = / the CPU of one sequential raw compare-and-set "
           "(scenario 5)")
    t.note("calls/renewal = backend calls (update, or update_many for a batch) per renewal "
           "in the window: on NATS one bridged call, on SQLite one transaction each; "
           "batched: leases due together go in one update_many, unbatched: one update "
           "each; on NATS every renewal is still one JetStream publish")
    for line in hook_cost(result):
        t.note(line)
    if result["ttl"] != 15:
        t.note(f"--quick uses ttl {result['ttl']:g} s; the full run judges at ttl 15 s")
    for key, prof in result.get("profiles", {}).items():
        if not prof.get("summary"):
            t.note(f"profile, {key}: none")
            continue
        callbacks = prof.get("callbacks")
        per_renewal = (f"{callbacks / prof['renewals']:.2f} asyncio callbacks per renewal; "
                       if callbacks and prof["renewals"] else "")
        t.note(f"profile, {key} ({result['leases']:,} leases, one more run): {per_renewal}"
               f"{_profile.describe(prof['summary'])}")
    return t


def targets(results: dict[str, Any]) -> list[Target]:
    result = results.get("renewal")
    rule = f"CPU/renewal <= {TARGET_RATIO:g}x raw"
    if result is None:
        return [Target("renewals of 1,000 leases (ttl 15 s)", rule, "-", None)]
    found: list[Target] = []
    for row in result["rows"]:
        if row["side"] != "library" or row["leases"] != result["leases"]:
            continue
        base = _baseline(result, row["backend"])
        all_held = (row["held_in_store"] == row["leases"] == row["held_locally"]
                    and not row.get("unsafe"))
        per = _per_renewal(row)
        name = (f"renewals of {row['leases']:,} leases (ttl {result['ttl']:g} s), "
                f"{row['label']}")
        if row["mode"] == "batched":
            if base is None:
                found.append(Target(name, rule, "-", None, "not measured (no raw row)"))
                continue
            r = ratio(per, _per_renewal(base))
            found.append(Target(name, rule,
                                f"{per * 1e6:.0f} us = {times(r)} of {base['label']} "
                                f"{_per_renewal(base) * 1e6:.0f} us; "
                                f"{row['held_in_store']}/{row['leases']} held",
                                r <= TARGET_RATIO and all_held))
            core = 100 * row["cpu"] / row["wall"]
            found.append(Target(f"{name}: share of a core",
                                f"< {TARGET_CORE_PERCENT:g} % of one core",
                                f"{core:.2f} %", core < TARGET_CORE_PERCENT and all_held))
        elif row["mode"] == "unbatched":
            r = ratio(per, _per_renewal(base)) if base is not None else math.nan
            found.append(Target(name, "without batching (for comparison)",
                                f"{per * 1e6:.0f} us = {times(r)} raw", None, "reported"))
        else:
            plain = _batched(result, row["backend"])
            r = ratio(per, _per_renewal(plain)) if plain is not None else math.nan
            found.append(Target(name, "observer hook: CPU/renewal vs plain batched",
                                f"{per * 1e6:.0f} us = {times(r)} of batched", None,
                                "reported"))
    return found


def _batched(result: dict[str, Any], backend: str) -> dict[str, Any] | None:
    """The plain batched row of *backend* at the target's lease count."""
    for row in result["rows"]:
        if (row["side"] == "library" and row["backend"] == backend
                and row["mode"] == "batched" and row["leases"] == result["leases"]):
            return dict(row)
    return None


def hook_cost(result: dict[str, Any]) -> list[str]:
    """One line per backend: CPU per renewal with metrics on and with no observer,
    each over the plain batched row (the default: the logging observer only)."""
    lines = []
    for backend in sorted({row["backend"] for row in result["rows"]}):
        plain = _batched(result, backend)
        if plain is None:
            continue
        parts = []
        for row in result["rows"]:
            if row["backend"] == backend and row.get("mode") in ("metrics", "silent"):
                r = ratio(_per_renewal(row), _per_renewal(plain))
                parts.append(f"{row['mode']} {times(r)}")
        if parts:
            lines.append(f"observer hook, {backend}: CPU/renewal vs batched "
                         f"({_per_renewal(plain) * 1e6:.1f} us): " + ", ".join(parts))
    return lines
