"""Distributions, targets and the printed table."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["Dist", "Table", "fmt", "ratio", "times"]


def _quantile(ordered: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default method)."""
    if not ordered:
        return math.nan
    position = (len(ordered) - 1) * q
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@dataclass(frozen=True)
class Dist:
    """Summary of one sample: count, p50, p99, max (and min, mean)."""

    n: int
    p50: float
    p99: float
    max: float
    min: float
    mean: float

    @classmethod
    def of(cls, samples: Iterable[float]) -> Dist:
        ordered = sorted(samples)
        if not ordered:
            return cls(0, math.nan, math.nan, math.nan, math.nan, math.nan)
        return cls(len(ordered), _quantile(ordered, 0.5), _quantile(ordered, 0.99),
                   ordered[-1], ordered[0], sum(ordered) / len(ordered))

    def scaled(self, factor: float) -> Dist:
        return Dist(self.n, self.p50 * factor, self.p99 * factor, self.max * factor,
                    self.min * factor, self.mean * factor)

    def as_json(self) -> dict[str, Any]:
        return {"n": self.n, "p50": self.p50, "p99": self.p99, "max": self.max,
                "min": self.min, "mean": self.mean}


def ratio(value: float, baseline: float) -> float:
    if not (math.isfinite(value) and math.isfinite(baseline)) or baseline <= 0:
        return math.nan
    return value / baseline


def times(value: float, digits: int = 2) -> str:
    """A ratio for the table: ``3.05x``, or '-' when it could not be computed."""
    return f"{value:.{digits}f}x" if math.isfinite(value) else "-"


def fmt(value: float | int | None, digits: int = 3) -> str:
    """A number for the table: about *digits* significant digits, '-' when absent."""
    if value is None:
        return "-"
    if isinstance(value, int):
        return str(value)
    if not math.isfinite(value):
        return "-"
    if value == 0:
        return "0"
    magnitude = math.floor(math.log10(abs(value)))
    decimals = max(0, digits - 1 - magnitude)
    return f"{value:.{decimals}f}"


class Table:
    """A plain-text table: a title, a header line and aligned rows."""

    def __init__(self, title: str, headers: Sequence[str]) -> None:
        self.title = title
        self.headers = list(headers)
        self.rows: list[list[str]] = []
        self.notes: list[str] = []

    def add(self, *cells: object) -> None:
        row = [c if isinstance(c, str) else fmt(c) if isinstance(c, float | int) else str(c)
               for c in cells]
        row += [""] * (len(self.headers) - len(row))
        self.rows.append(row)

    def note(self, text: str) -> None:
        self.notes.append(text)

    def render(self) -> str:
        widths = [max(len(h), *(len(r[i]) for r in self.rows)) if self.rows else len(h)
                  for i, h in enumerate(self.headers)]

        def line(cells: Sequence[str]) -> str:
            first = cells[0].ljust(widths[0])
            rest = [c.rjust(w) for c, w in zip(cells[1:-1], widths[1:-1], strict=True)]
            last = [cells[-1].ljust(widths[-1])] if len(cells) > 1 else []
            return "  " + "  ".join([first, *rest, *last]).rstrip()

        out = [self.title, line(self.headers)]
        out += [line(r) for r in self.rows]
        out += [f"  note: {n}" for n in self.notes]
        return "\n".join(out)
