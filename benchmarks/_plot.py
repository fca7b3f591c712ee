"""The one figure: handover and failover distributions (matplotlib, if installed)."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

__all__ = ["plot"]


def plot(results: dict[str, Any], path: Path, title: str) -> str:
    """Draw the figure to *path*; return a sentence saying what happened."""
    try:
        import matplotlib
    except ImportError:
        return "no plot: matplotlib is not installed (pip install 'trio-noleader[bench]')"
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    handover = results.get("handover", {}).get("samples", {})
    failover = {**results.get("failover", {}).get("raw_expiry", {}),
                **results.get("failover", {}).get("groups", {})}
    if not handover and not failover:
        return "no plot: neither handover nor failover ran"
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8), dpi=100)
    labels = {"raw nats-py": "raw nats-py (asyncio)", "memory": "memory",
              "sqlite": "sqlite", "nats": "nats"}
    colours = {"raw nats-py": "C0", "raw nats-py, 2 processes": "C0", "nats": "C3",
               "nats, 2 processes": "C3", "memory": "C1", "sqlite": "C2"}
    for name, samples in handover.items():
        if not samples:
            continue
        ordered = sorted(s * 1e3 for s in samples)
        fractions = [(i + 1) / len(ordered) for i in range(len(ordered))]
        left.step(ordered, fractions, where="post", label=labels.get(name, name),
                  color=colours.get(name), linestyle="--" if "processes" in name else "-")
    left.set_xscale("log")
    left.set_xlabel("leader leaves its block -> next body starts (ms)")
    left.set_ylabel("fraction of trials")
    left.set_title("Graceful handover")
    left.grid(True, which="both", alpha=0.3)
    slowest = max((max(v) for v in handover.values() if v), default=0.0) * 1e3
    if slowest > 0:
        left.set_xlim(right=slowest * 12)  # room for the legend, right of the curves
    left.legend(fontsize="x-small", loc="lower right")

    rng = random.Random(0)
    names = list(failover)
    marked = False
    for i, name in enumerate(names):
        group = failover[name]
        late = [(s - float(group["ttl"])) * 1e3 for s in group["samples"]]
        if not late:
            continue
        if not name.startswith("raw"):
            # The earliest a crash can be noticed: the kill came just before a renewal.
            right.hlines(-float(group["ttl"]) / 3 * 1e3, i - 0.35, i + 0.35, colors="grey",
                         linestyles=":", label=None if marked else "-ttl/3 (earliest)")
            marked = True
        right.boxplot([late], positions=[i], widths=0.5, showfliers=False)
        right.scatter([i + rng.uniform(-0.15, 0.15) for _ in late], late, s=10, alpha=0.6)
    right.axhline(0, color="grey", lw=0.8)
    right.axhline(500, color="red", lw=0.8, ls="--", label="target: ttl + 0.5 s")
    ticks = [n.replace("raw nats-py", "raw\nexpiry").replace(" ttl=", "\nttl=") for n in names]
    right.set_xticks(range(len(names)), ticks, fontsize="x-small")
    right.set_ylabel("failover - ttl (ms)")
    right.set_title("Crash failover (SIGKILL)")
    right.grid(True, axis="y", alpha=0.3)
    right.legend(fontsize="small", loc="lower left")

    fig.suptitle(title, fontsize="medium")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return f"plot written to {path}"
