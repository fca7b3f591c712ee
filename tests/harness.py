"""Helpers shared by the test modules: what a backend under test is, and child processes.

- :class:`BackendSpec` (and :class:`SharedStore`): what the suites need to know about
  each backend they run against; the backends themselves are in tests/backends.py.
- :class:`Journal` and :func:`lines`: the JSON lines child processes report on.
- :func:`script` and :data:`ROOT`: how a test starts one of the scripts in tests/.
- :func:`free_port`.
"""

from __future__ import annotations

import json
import socket
import sys
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable
from contextlib import AbstractAsyncContextManager, aclosing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio

from trio_noleader.abc import Backend

#: The repository's root, where the scripts in tests/ run from (see :func:`script`).
ROOT = Path(__file__).resolve().parent.parent

#: One JSON line of a child process.
Event = dict[str, Any]


# -- backends under test -------------------------------------------------------------------


@dataclass(frozen=True)
class SharedStore:
    """How OS processes of their own share one store of a backend.

    Attributes:
        url: Given the test's ``request``, an async context manager yielding the URL
            (for ``open_backend``) of a fresh, empty store that other processes can
            open, torn down afterwards.
        ttl: The lease ttl candidate processes use on it (seconds).
        handover: A bound on how long after a leader's body stops a candidate that
            watches the key starts leading, the lease being released (seconds).
    """

    url: Callable[[pytest.FixtureRequest], AbstractAsyncContextManager[str]]
    ttl: float
    handover: float


@dataclass(frozen=True)
class BackendSpec:
    """One backend under test.

    Attributes:
        name: The pytest id.
        open: Given the test's ``request``, an async context manager yielding a fresh,
            empty store (no keys left from other tests) that is torn down afterwards.
        read_state: Reads back everything in the store a backend from :attr:`open`
            is on that any write would change, as a value to compare with ``==``
            (to show that a refused call wrote nothing).
        ttl: The lease ttl the suite uses on this backend (seconds).
        latency: A generous bound on one store round trip plus the delay before a
            watcher sees a change (seconds). Zero in virtual time.
        expiry_slack: A bound on how late after its ttl the store reports an expired
            lease to watchers (seconds).
        virtual_time: True if the suite may run it under ``MockClock(autojump)``.
        marks: The pytest marks of every test that runs on this backend (``nats``
            for one that needs a nats-server: ``-m "not nats"`` deselects them all).
        shared: How several processes share a store, or None for a store that lives
            in one process only.
    """

    name: str
    open: Callable[[pytest.FixtureRequest], AbstractAsyncContextManager[Backend]]
    read_state: Callable[[Backend], Awaitable[object]]
    ttl: float
    latency: float
    expiry_slack: float
    virtual_time: bool
    marks: tuple[pytest.MarkDecorator, ...] = ()
    shared: SharedStore | None = None

    def param(self) -> pytest.ParameterSet:
        """This backend as a pytest parameter, with its id and its marks."""
        return pytest.param(self, id=self.name, marks=self.marks)


# -- child processes -----------------------------------------------------------------------


def script(name: str, *args: str) -> list[str]:
    """The command line that runs the script ``tests/<name>.py`` with *args*.

    It runs as the module ``tests.<name>``, so that it may import other helpers of
    this package; start it with ``cwd=ROOT``, where ``python -m`` finds the package
    whatever directory pytest was started from.
    """
    return [sys.executable, "-m", f"tests.{name}", *args]


async def lines(stream: trio.abc.ReceiveStream, *, unterminated: bool = True
                ) -> AsyncGenerator[bytes]:
    """Each line *stream* delivers, without its newline, until the stream ends.

    Args:
        stream: A child's stdout, say.
        unterminated: Whether to yield the last line too if the stream ends before
            its newline (a process killed while writing leaves half a line).
    """
    pending = b""
    async for chunk in stream:
        pending += chunk
        *complete, pending = pending.split(b"\n")
        for line in complete:
            yield line
    if pending and unterminated:
        yield pending


class Journal:
    """The JSON lines child processes write (one event each), in arrival order.

    Every line is a JSON object with at least ``name`` (the process that wrote it)
    and ``event``. :meth:`read` feeds one process's output in; a test waits for the
    event it expects with :meth:`wait_for`.
    """

    def __init__(self) -> None:
        self.events: list[Event] = []
        self._changed = trio.Event()

    def add(self, event: Event) -> None:
        self.events.append(event)
        self._changed.set()
        self._changed = trio.Event()

    async def read(self, name: str, stream: trio.abc.ReceiveStream) -> None:
        """Add every line of process *name*'s *stream*; at its end add an ``eof`` event.

        A line must carry that *name*. A half-written last line (the process was
        killed while writing) is left out.
        """
        async with aclosing(lines(stream, unterminated=False)) as each:
            async for line in each:
                event: Event = json.loads(line)
                assert event["name"] == name, (name, event)
                self.add(event)
        self.add({"name": name, "event": "eof", "time": time.time()})

    def first(self, match: Callable[[Event], bool]) -> Event | None:
        """The oldest event *match* accepts, if any."""
        return next((event for event in self.events if match(event)), None)

    async def wait_for(self, match: Callable[[Event], bool]) -> Event:
        """The oldest event *match* accepts, once there is one (no time limit)."""
        seen = 0
        while True:
            for event in self.events[seen:]:
                if match(event):
                    return event
            seen = len(self.events)
            await self._changed.wait()

    def tail(self, count: int = 30) -> str:
        """The last *count* events, one JSON line each (for an assertion message)."""
        return "\n".join(json.dumps(event) for event in self.events[-count:])


# -- processes -----------------------------------------------------------------------------


async def stop_processes(processes: Iterable[trio.Process]) -> None:
    """Kill what is still running of *processes* (by PID: only what the test started),
    wait for each and close its pipes; shielded, for a test's ``finally``."""
    processes = list(processes)
    for process in processes:
        if process.returncode is None:
            process.kill()
    with trio.CancelScope(shield=True):
        for process in processes:
            await process.wait()
            for stream in (process.stdin, process.stdout):
                if stream is not None:
                    await stream.aclose()


# -- ports ---------------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago.

    For an address where nothing must answer, or a port a server must be given
    (a cluster route); servers that can pick their own port should (port 0 or
    nats-server's ``-p -1``).
    """
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port
