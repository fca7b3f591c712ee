"""Running ``noleader`` as real subprocesses, for the command line's tests."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import trio

__all__ = ["JOB", "NOLEADER", "Proc", "death_of", "noleader", "read_log", "run_cli"]

NOLEADER = [sys.executable, "-m", "trio_noleader"]

# A leader-only command: logs its start and its SIGTERM to a shared file, then waits.
JOB = r"""
import os, signal, sys, time
log = sys.argv[1]
def write(event):
    with open(log, "a") as f:
        f.write(f"{event} {os.getpid()} {time.time()!r} {os.environ['NOLEADER_TOKEN']}\n")
def on_term(*_):
    write("end")
    sys.exit(0)
signal.signal(signal.SIGTERM, on_term)
write("start")
print("job", "started", flush=True)
while True:
    time.sleep(3600)
"""


class Proc:
    """A subprocess whose output lines can be awaited."""

    def __init__(self, process: trio.Process) -> None:
        self.process = process
        self.lines: list[str] = []
        self._changed = trio.Event()

    async def _pump(self, stream: trio.abc.ReceiveStream) -> None:
        buffer = b""
        async for chunk in stream:
            buffer += chunk
            *complete, buffer = buffer.split(b"\n")
            self.lines.extend(line.decode() for line in complete)
            self._changed.set()
            self._changed = trio.Event()
        if buffer:
            self.lines.append(buffer.decode())
        self._changed.set()

    async def expect(self, pattern: str, limit: float = 20, *,
                     after: int = 0) -> re.Match[str]:
        """Wait up to *limit* seconds for a line matching *pattern* (from line *after* on)."""
        with trio.fail_after(limit):
            seen = after
            while True:
                for line in self.lines[seen:]:
                    match = re.search(pattern, line)
                    if match:
                        return match
                seen = len(self.lines)
                if self.process.returncode is not None and self._changed.is_set():
                    raise AssertionError(f"exited before {pattern!r}: {self.lines}")
                await self._changed.wait()

    async def wait(self, limit: float = 30) -> int:
        with trio.fail_after(limit):
            return await self.process.wait()

    @property
    def output(self) -> str:
        return "\n".join(self.lines)


@asynccontextmanager
async def noleader(*args: str, env: dict[str, str] | None = None) -> AsyncIterator[Proc]:
    process = await trio.lowlevel.open_process(
        [*NOLEADER, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL, env={**os.environ, **(env or {})})
    proc = Proc(process)
    async with trio.open_nursery() as nursery:
        assert process.stdout is not None
        nursery.start_soon(proc._pump, process.stdout)
        try:
            yield proc
        finally:
            with trio.CancelScope(shield=True):
                if process.returncode is None:
                    process.kill()
                await process.wait()


async def run_cli(*args: str, limit: float = 60) -> tuple[int, str]:
    async with noleader(*args) as proc:
        code = await proc.wait(limit)
    return code, proc.output


def read_log(path: Path) -> list[tuple[str, int, float, int]]:
    if not path.exists():
        return []
    events = []
    for line in path.read_text().splitlines():
        event, pid, stamp, token = line.split()
        events.append((event, int(pid), float(stamp), int(token)))
    return events


async def death_of(pid: int) -> None:
    """Wait until process *pid* (not our child) has exited."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        await trio.lowlevel.wait_readable(fd)
    finally:
        os.close(fd)
