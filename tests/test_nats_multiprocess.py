"""Three OS processes contend for one key over NATS (tests/lease_candidate.py).

The first leader is SIGKILLed right after a renewal: another process must lead
within ttl + 1 s of the kill, and not before the expiry the store showed for the
killed leader's last write. The new leader then leaves its block: the third must
lead within 200 ms (it was watching the key). Throughout, the start and stop times
the processes log on the host's one wall clock never show two leaders at once, and
fencing tokens grow from term to term.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trio
from spec_nats import delete_bucket

from trio_noleader import open_nats_backend

pytestmark = [
    pytest.mark.nats,
    pytest.mark.skipif(os.name != "posix", reason="uses POSIX signals and pipes"),
]

CANDIDATE = Path(__file__).with_name("lease_candidate.py")
KEY = "jobs/exclusive"
TTL = 2  # NATS TTLs are whole seconds


@dataclass
class Journal:
    """The candidates' JSON lines, in the order they arrived."""

    events: list[dict[str, Any]] = field(default_factory=list)
    changed: trio.Event = field(default_factory=trio.Event)

    def add(self, event: dict[str, Any]) -> None:
        self.events.append(event)
        self.changed.set()
        self.changed = trio.Event()

    def first(self, event: str, name: str | None = None,
              others_than: tuple[str, ...] = ()) -> dict[str, Any] | None:
        return next((item for item in self.events
                     if item["event"] == event and item["name"] not in others_than
                     and (name is None or item["name"] == name)), None)

    async def wait(self, event: str, name: str | None = None,
                   others_than: tuple[str, ...] = ()) -> dict[str, Any]:
        while (item := self.first(event, name, others_than)) is None:
            await self.changed.wait()
        return item


async def collect(name: str, process: trio.Process, journal: Journal) -> None:
    """Feed one candidate's stdout lines into the journal; note its end of output."""
    assert process.stdout is not None
    pending = b""
    while chunk := await process.stdout.receive_some():
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            item = json.loads(line)
            assert item["name"] == name
            journal.add(item)
    journal.add({"name": name, "event": "eof", "time": time.time(), "token": None})


async def tell(process: trio.Process, line: bytes) -> None:
    assert process.stdin is not None
    await process.stdin.send_all(line)


async def test_three_processes_one_leader_over_nats(nats_url: str) -> None:
    bucket = f"mp_{uuid.uuid4().hex[:16]}"
    names = ("a", "b", "c")
    journal = Journal()
    processes: dict[str, trio.Process] = {}
    reaped: dict[str, float] = {}
    try:
        with trio.fail_after(45):
            async with trio.open_nursery() as nursery:
                for name in names:
                    processes[name] = await trio.lowlevel.open_process(
                        [sys.executable, str(CANDIDATE),
                         f"{nats_url}/{bucket}?storage=memory", name, KEY, str(TTL)],
                        stdin=subprocess.PIPE, stdout=subprocess.PIPE)
                    nursery.start_soon(collect, name, processes[name], journal)
                for name in names:
                    await journal.wait("campaign", name)
                first_start = await journal.wait("start")
                first = first_start["name"]

                async with open_nats_backend(nats_url, bucket=bucket,
                                             storage="memory") as observer:
                    # 1. Kill the first leader right after a renewal: no release, so
                    # the lease has to run out in the store.
                    async with observer.watch(KEY) as updates:
                        async for entry in updates:
                            if entry is not None and entry.revision > first_start["token"]:
                                break
                    before = time.time()
                    seen = await observer.get(KEY)
                    assert seen is not None
                    assert seen.expires_in is not None
                    # That write lives until at least here (its server timestamp + ttl).
                    expires_no_earlier = before + seen.expires_in
                    processes[first].send_signal(signal.SIGKILL)
                    killed = time.time()
                    await processes[first].wait()
                    reaped[first] = time.time()
                    second_start = await journal.wait("start", others_than=(first,))
                    second = second_start["name"]
                    assert second_start["time"] - killed <= TTL + 1.0, journal.events
                    assert second_start["time"] >= expires_no_earlier, journal.events

                    # 2. The second leader leaves its block: the third is watching.
                    await tell(processes[second], b"exit\n")
                    stop = await journal.wait("stop", second)
                    third_start = await journal.wait("start", others_than=(first, second))
                    third = third_start["name"]
                    handover = third_start["time"] - stop["time"]
                    assert handover <= 0.2, (handover, journal.events)

                    # 3. The last one leaves as well.
                    await tell(processes[third], b"exit\n")
                    for name in names:
                        await journal.wait("eof", name)
                    for name in names:
                        await processes[name].wait()
                    assert await observer.keys() == []
                    await delete_bucket(observer)
    finally:
        for process in processes.values():
            if process.returncode is None:
                process.kill()  # by PID: only the processes this test started
            with trio.CancelScope(shield=True):
                await process.wait()
                for stream in (process.stdin, process.stdout):
                    if stream is not None:
                        await stream.aclose()

    assert processes[first].returncode == -signal.SIGKILL
    assert processes[second].returncode == 0
    assert processes[third].returncode == 0
    assert journal.first("lost") is None, journal.events
    assert journal.first("exit", second) is not None
    assert journal.first("exit", third) is not None

    # One leader at every moment the processes logged. The killed leader's term
    # ended no later than when it was reaped.
    terms = []
    for name in names:
        began = journal.first("start", name)
        assert began is not None, journal.events
        if name in reaped:
            ended = reaped[name]
        else:
            stopped = journal.first("stop", name)
            assert stopped is not None, journal.events
            ended = stopped["time"]
        terms.append((began["time"], ended, name, began["token"]))
    terms.sort()
    for (_, end, who, token), (start, _, nxt, next_token) in itertools.pairwise(terms):
        assert end <= start, f"{nxt} started while {who} led: {terms}"
        assert next_token > token, terms
