"""Three OS processes contend for one key over one SQLite file (tests/lease_candidate.py).

The leader is SIGKILLed after a renewal: another must lead within ttl + 1 s, and not
before the expiry the store last showed for the killed one's lease. Then the next
leader leaves its block: the third must lead at once (within 200 ms plus one poll
interval). Throughout, the start and stop times the processes log (one host, one
wall clock) never show two leaders at once.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trio

from trio_noleader import open_sqlite_backend
from trio_noleader._sqlite import DEFAULT_POLL_INTERVAL

pytestmark = pytest.mark.skipif(os.name != "posix", reason="uses POSIX signals and pipes")

SCRIPT = Path(__file__).with_name("lease_candidate.py")
KEY = "jobs/exclusive"
TTL = 1.5
POLL_INTERVAL = DEFAULT_POLL_INTERVAL  # what the candidates' backends use


@dataclass
class Log:
    """Every line the candidates wrote, in arrival order."""

    events: list[dict[str, Any]] = field(default_factory=list)
    changed: trio.Event = field(default_factory=trio.Event)

    def add(self, event: dict[str, Any]) -> None:
        self.events.append(event)
        self.changed.set()
        self.changed = trio.Event()

    def find(self, event: str, name: str | None = None,
             exclude: tuple[str, ...] = ()) -> dict[str, Any] | None:
        for item in self.events:
            if item["event"] == event and (name is None or item["name"] == name) \
                    and item["name"] not in exclude:
                return item
        return None

    async def wait(self, event: str, name: str | None = None,
                   exclude: tuple[str, ...] = ()) -> dict[str, Any]:
        while (found := self.find(event, name, exclude)) is None:
            await self.changed.wait()
        return found


async def read_lines(name: str, process: trio.Process, log: Log) -> None:
    assert process.stdout is not None
    buffer = b""
    while chunk := await process.stdout.receive_some():
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            event = json.loads(line)
            assert event["name"] == name
            log.add(event)
    log.add({"name": name, "event": "eof", "time": time.time(), "token": None})


async def test_three_processes_one_leader_kill_and_handover(tmp_path: Path) -> None:
    db = tmp_path / "leases.db"
    names = ("a", "b", "c")
    log = Log()
    processes: dict[str, trio.Process] = {}
    killed_at: dict[str, tuple[float, float]] = {}
    try:
        with trio.fail_after(40):
            async with trio.open_nursery() as nursery:
                for name in names:
                    process = await trio.lowlevel.open_process(
                        [sys.executable, str(SCRIPT), f"sqlite://{db}", name, KEY, str(TTL)],
                        stdin=subprocess.PIPE, stdout=subprocess.PIPE)
                    processes[name] = process
                    nursery.start_soon(read_lines, name, process, log)
                for name in names:
                    await log.wait("campaign", name)

                # 1. SIGKILL the first leader mid-term (after a renewal): it cannot
                # release, so the lease must run out in the store.
                first_start = await log.wait("start")
                first = first_start["name"]
                async with open_sqlite_backend(db, poll_interval=0.01) as observer, \
                        observer.watch(KEY) as updates:
                    async for entry in updates:
                        if entry is not None and entry.revision > first_start["token"]:
                            break
                    # No write can move the expiry earlier than this.
                    before = time.time()
                    seen = await observer.get(KEY)
                    assert seen is not None
                    assert seen.expires_in is not None
                    expires_no_earlier = before + seen.expires_in
                processes[first].send_signal(signal.SIGKILL)
                sent = time.time()
                await processes[first].wait()
                killed_at[first] = (sent, time.time())
                second_start = await log.wait("start", exclude=(first,))
                second = second_start["name"]
                assert second_start["time"] - sent <= TTL + 1.0, log.events
                assert second_start["time"] >= expires_no_earlier, log.events

                # 2. The second leader leaves its block: the third takes over at once.
                stdin = processes[second].stdin
                assert stdin is not None
                await stdin.send_all(b"exit\n")
                stop = await log.wait("stop", second)
                third_start = await log.wait("start", exclude=(first, second))
                third = third_start["name"]
                handover = third_start["time"] - stop["time"]
                assert handover <= 0.2 + POLL_INTERVAL, (handover, log.events)

                # 3. The last one leaves too; everyone has ended.
                stdin = processes[third].stdin
                assert stdin is not None
                await stdin.send_all(b"exit\n")
                for name in names:
                    await log.wait("eof", name)
                for name in names:
                    await processes[name].wait()
    finally:
        for process in processes.values():
            if process.returncode is None:
                process.kill()
            with trio.CancelScope(shield=True):
                await process.wait()
                for stream in (process.stdin, process.stdout):
                    if stream is not None:
                        await stream.aclose()

    assert processes[first].returncode == -signal.SIGKILL
    assert processes[second].returncode == 0
    assert processes[third].returncode == 0
    assert log.find("lost") is None, log.events
    for name in (second, third):
        assert log.find("exit", name) is not None, log.events

    # Never two leaders at once, by the times the processes logged. The killed
    # leader's term ends no later than the moment it was reaped.
    terms: list[tuple[float, float, str, int]] = []
    for name in names:
        began = log.find("start", name)
        ended = log.find("stop", name)
        assert began is not None, log.events
        if name in killed_at:
            end = killed_at[name][1]
        else:
            assert ended is not None, log.events
            end = ended["time"]
        terms.append((began["time"], end, name, began["token"]))
    terms.sort()
    for (_, end, who, token), (next_start, _, nxt, next_token) in itertools.pairwise(terms):
        assert end <= next_start, f"{nxt} started while {who} led: {terms}"
        assert next_token > token, terms
