"""Where a benchmark process spends its CPU: py-spy on itself, and a count of asyncio callbacks.

Both are opt-in per process, through the environment, so that the measured runs
stay unprofiled and the scenarios run a separate, profiled process:

- ``NOLEADER_BENCH_PROFILE=PATH``: :meth:`Probe.start` starts ``py-spy record`` on the
  process itself (``--gil``: only samples holding the GIL, that is, running
  Python; ``--nonblocking``: the process is never paused) and stops it with
  SIGINT at :meth:`Probe.stop`, which makes py-spy write its raw (collapsed
  stacks) file to PATH. Needs py-spy (``pip install py-spy``) and the right to
  trace the process (root, or ``kernel.yama.ptrace_scope`` 0).
- ``NOLEADER_BENCH_CALLBACKS=1``: the probe counts the asyncio callbacks run
  between the two (``asyncio.Handle._run``, through which asyncio and trio-asyncio
  alike run every callback, timers included); :meth:`Probe.stop` returns it.

:func:`summarise` turns a raw file into shares of the samples by component.
"""

from __future__ import annotations

import asyncio
import collections
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

__all__ = ["CALLBACKS_ENV", "PROFILE_ENV", "Probe", "describe", "py_spy", "summarise"]

PROFILE_ENV = "NOLEADER_BENCH_PROFILE"
CALLBACKS_ENV = "NOLEADER_BENCH_CALLBACKS"
#: Samples per second. py-spy reads the process's memory from outside; at this
#: rate it costs the process nothing measurable.
RATE = 500


def py_spy() -> str | None:
    """The py-spy next to this python, else the one on PATH, else None."""
    beside = Path(sys.executable).parent / "py-spy"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("py-spy")


class Probe:
    """Profiles and/or counts callbacks between :meth:`start` and :meth:`stop`.

    Does nothing unless the environment asks for it (see the module).
    """

    def __init__(self) -> None:
        self._spy: subprocess.Popen[bytes] | None = None
        self._original: Any = None
        self._count = 0

    @classmethod
    def start(cls) -> Probe:
        probe = cls()
        out = os.environ.get(PROFILE_ENV)
        binary = py_spy()
        if out and binary:
            with open(out + ".log", "wb") as log:
                probe._spy = subprocess.Popen(
                    [binary, "record", "--pid", str(os.getpid()), "--rate", str(RATE),
                     "--gil", "--nonblocking", "--format", "raw", "-o", out],
                    stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        if os.environ.get(CALLBACKS_ENV) == "1":
            original = probe._original = asyncio.Handle._run

            def counted(handle: asyncio.Handle) -> None:
                probe._count += 1
                original(handle)

            asyncio.Handle._run = counted  # type: ignore[method-assign,assignment]
        return probe

    def stop(self) -> int | None:
        """End the window; the asyncio callbacks run in it, if counted."""
        callbacks = None
        if self._original is not None:
            asyncio.Handle._run = self._original  # type: ignore[method-assign]
            self._original = None
            callbacks = self._count
        spy, self._spy = self._spy, None
        if spy is not None:
            # py-spy writes its file when interrupted, as on Ctrl-C.
            spy.send_signal(signal.SIGINT)
            try:
                spy.wait(timeout=30)
            except subprocess.TimeoutExpired:
                spy.kill()
                spy.wait()
        return callbacks


#: Frames that only pass the call on: a sample in one is charged to its caller.
_GLUE = ("contextlib.py", "outcome/", "<attrs generated", "functools.py", "<frozen abc>",
         "<string>", "_util.py (trio", "abc.py")

#: (component, test on a frame's file) in order; the first match names the frame.
_COMPONENTS: list[tuple[str, str]] = [
    ("trio-asyncio", "trio_asyncio/"),
    ("trio-noleader", "trio_noleader/"),
    ("nats-py", "nats/"),
    ("asyncio", "asyncio/"),
    ("trio: scheduler, cancel scopes, I/O wait", "trio/_core/"),
    ("trio: timeouts, channels, events, threads", "trio/"),
    ("benchmark harness", "benchmarks/"),
    ("json", "json/"),
]


def _file(frame: str) -> str:
    match = re.search(r"\(([^()]*):\d+\)\s*$", frame)
    return match.group(1) if match else frame


def _component(frames: list[str]) -> str:
    for frame in reversed(frames):
        name = _file(frame)
        if any(glue in frame for glue in _GLUE):
            continue
        for component, test in _COMPONENTS:
            if test in name:
                return component
        return "other: " + name.rsplit("/", 1)[-1]
    return "other"


def summarise(path: Path) -> dict[str, Any]:
    """Shares of the samples in a py-spy raw file, by component.

    ``self``: each sample charged to the component of its innermost frame (glue
    frames such as ``contextlib`` charged to their caller), except that a sample
    in a trio worker thread is charged to "worker thread (SQLite)". ``under``:
    the share of samples with a given function anywhere on the stack.
    """
    self_: collections.Counter[str] = collections.Counter()
    under: collections.Counter[str] = collections.Counter()
    marks = {"asyncio callbacks run by trio-asyncio": "BaseTrioEventLoop._main_loop_one",
             "the election core (trio_noleader/_campaign.py, _batch.py, _hub.py)":
                 "trio_noleader/_campaign.py",
             "nats-py": "(nats/",
             "worker threads": "WorkerThread._handle_job"}
    total = 0
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        stack, _, n = line.rpartition(" ")
        count = int(n)
        frames = [f for f in stack.split(";")
                  if not f.startswith(("process ", "thread "))]
        total += count
        if any("WorkerThread._handle_job" in f for f in frames):
            self_["worker thread (SQLite)"] += count
        else:
            self_[_component(frames)] += count
        for label, test in marks.items():
            if any(test in f for f in frames) or (
                    label.startswith("the election core")
                    and any(t in stack for t in ("_batch.py", "_hub.py"))):
                under[label] += count
    return {"samples": total,
            "self": {k: v / total for k, v in self_.most_common()} if total else {},
            "under": {k: v / total for k, v in under.most_common()} if total else {}}


def describe(summary: dict[str, Any], limit: int = 6) -> str:
    """One line: the largest shares of a :func:`summarise` result."""
    shares = list(summary["self"].items())[:limit]
    text = ", ".join(f"{name} {100 * share:.0f} %" for name, share in shares)
    return f"{text} ({summary['samples']} samples)"
