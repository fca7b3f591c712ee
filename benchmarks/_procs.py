"""Starting the benchmark's own subprocesses, reading their JSON lines, stopping them by PID."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import trio

__all__ = ["Worker", "WorkerFailed", "run_json"]

#: The directory that holds the ``benchmarks`` package.
ROOT = Path(__file__).resolve().parent.parent


class WorkerFailed(RuntimeError):
    """A benchmark subprocess exited early, printed garbage or took too long."""


def _command(module: str, args: Sequence[object]) -> list[str]:
    return [sys.executable, "-m", f"benchmarks.{module}", *map(str, args)]


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.update(extra or {})
    return env


def _tail(path: Path, limit: int = 2000) -> str:
    try:
        return path.read_text(errors="replace")[-limit:]
    except OSError:
        return ""


def run_json(module: str, *args: object, timeout: float, logdir: Path,
             env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run ``python -m benchmarks.<module> ARGS`` to completion; return its last JSON line.

    ``subprocess.run`` kills the child (by its PID) if it outlives *timeout*.
    *env* adds variables to the child's environment.
    """
    log = logdir / f"{module.strip('_')}-{args[0]}-{os.urandom(3).hex()}.stderr"
    with log.open("wb") as stderr:
        try:
            out = subprocess.run(_command(module, args), stdin=subprocess.DEVNULL,
                                 stdout=subprocess.PIPE, stderr=stderr, env=_env(env),
                                 timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            raise WorkerFailed(f"{module} {args[0]} took longer than {timeout:g} s; "
                               f"stderr: {_tail(log)}") from None
    lines = out.stdout.decode(errors="replace").strip().splitlines()
    if out.returncode != 0 or not lines:
        raise WorkerFailed(f"{module} {args[0]} exited with {out.returncode}; "
                           f"stderr: {_tail(log)}")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


class Worker:
    """One long-running subprocess (``benchmarks._worker`` or ``_raw``) writing JSON lines."""

    def __init__(self, process: trio.Process, name: str, log: Path) -> None:
        self.process = process
        self.name = name
        self.log = log
        self.events: list[dict[str, Any]] = []
        self._buffer = b""

    @classmethod
    async def start(cls, name: str, *args: object, logdir: Path,
                    env: dict[str, str] | None = None, module: str = "_worker") -> Worker:
        """Start ``python -m benchmarks.<module> ARGS`` (``_worker`` by default)."""
        log = logdir / f"{name}.stderr"
        with log.open("wb") as stderr:
            process = await trio.lowlevel.open_process(
                _command(module, args), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=stderr, env=_env(env))
        return cls(process, name, log)

    @property
    def pid(self) -> int:
        return self.process.pid

    async def receive(self) -> dict[str, Any]:
        """The next JSON line; raise :class:`WorkerFailed` if the output ends first."""
        assert self.process.stdout is not None
        while b"\n" not in self._buffer:
            chunk = await self.process.stdout.receive_some()
            if not chunk:
                await self.process.wait()
                raise WorkerFailed(f"worker {self.name} (pid {self.pid}) exited with "
                                   f"{self.process.returncode}; stderr: {_tail(self.log)}")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        event: dict[str, Any] = json.loads(line)
        self.events.append(event)
        return event

    async def wait_event(self, name: str) -> dict[str, Any]:
        for event in self.events:
            if event.get("event") == name:
                return event
        while True:
            event = await self.receive()
            if event.get("event") == name:
                return event

    async def send_line(self, text: str) -> None:
        assert self.process.stdin is not None
        await self.process.stdin.send_all(text.encode() + b"\n")

    def kill(self) -> None:
        """SIGKILL this worker's PID (and only it), if it is still running."""
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)

    async def aclose(self, grace: float = 0.0) -> None:
        """Close its stdin (candidates exit on EOF), wait up to *grace* s, then kill it."""
        with trio.CancelScope(shield=True):
            if self.process.stdin is not None:
                with contextlib.suppress(trio.BrokenResourceError):
                    await self.process.stdin.aclose()
            with trio.move_on_after(grace):
                await self.process.wait()
            self.kill()
            await self.process.wait()
