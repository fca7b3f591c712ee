"""Small utilities with no concept of their own: backoff, public-name metadata."""

from __future__ import annotations

import types
from collections.abc import Iterable
from typing import Any

__all__ = ["Backoff", "fixup_module_metadata"]


class Backoff:
    """Capped exponential backoff: *initial* seconds, doubling up to *cap*."""

    def __init__(self, initial: float, cap: float) -> None:
        self.initial = initial
        self.cap = max(cap, initial)
        self.delay = initial

    def reset(self) -> None:
        """Start again from *initial*."""
        self.delay = self.initial

    def next(self) -> float:
        """The delay to wait now; the one after it is twice as long (up to the cap)."""
        delay = self.delay
        self.delay = min(self.delay * 2, self.cap)
        return delay


def fixup_module_metadata(module_name: str, namespace: dict[str, Any],
                          names: Iterable[str]) -> None:
    """Make the public *names* of *namespace* report *module_name* as their home.

    Users (and tracebacks, reprs and docs) then see ``trio_noleader.Leadership``,
    never ``trio_noleader._election.Leadership``; the methods and nested classes of
    a public class get the new ``__qualname__`` prefix too. trio does the same in
    ``trio._util.fixup_module_metadata``.
    """
    seen: set[int] = set()

    def fix(obj: object, qualname: str) -> None:
        if id(obj) in seen:
            return
        seen.add(id(obj))
        mod = getattr(obj, "__module__", None)
        if mod is None or not mod.startswith("trio_noleader."):
            return
        obj.__module__ = module_name
        if isinstance(obj, type | types.FunctionType):
            obj.__qualname__ = qualname
        if isinstance(obj, type):
            for attr, value in obj.__dict__.items():
                if isinstance(value, type | types.FunctionType):
                    fix(value, f"{qualname}.{attr}")

    for name in names:
        if name in namespace:
            fix(namespace[name], name)
