"""Three OS processes contend for one key in a shared store (tests/lease_candidate.py).

Once per backend whose store processes can share (``SHARED_BACKENDS`` of
tests/backends.py: an SQLite file, a bucket of the session's nats-server), with
that backend's own ttl and handover bound. The first leader is SIGKILLed right
after a renewal: another process must lead within ttl + 1 s of the kill, and not
before the expiry the store showed for the killed leader's last write. The new
leader then leaves its block: the third must lead within the handover bound (it
was watching the key). Throughout, the start and stop times the processes log on
the host's one wall clock never show two leaders at once, and fencing tokens grow
from term to term; at the end the store holds no lease.
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import time

import pytest
import trio

from trio_noleader import open_backend

from .backends import SHARED_BACKENDS
from .harness import ROOT, BackendSpec, Event, Journal, script, stop_processes

pytestmark = pytest.mark.skipif(os.name != "posix", reason="uses POSIX signals and pipes")

KEY = "jobs/exclusive"


def first(journal: Journal, event: str, name: str | None = None,
          others_than: tuple[str, ...] = ()) -> Event | None:
    return journal.first(lambda item: item["event"] == event
                         and item["name"] not in others_than
                         and (name is None or item["name"] == name))


async def wait(journal: Journal, event: str, name: str | None = None,
               others_than: tuple[str, ...] = ()) -> Event:
    return await journal.wait_for(lambda item: item["event"] == event
                                  and item["name"] not in others_than
                                  and (name is None or item["name"] == name))


async def tell(process: trio.Process, line: bytes) -> None:
    assert process.stdin is not None
    await process.stdin.send_all(line)


@pytest.mark.parametrize("spec", SHARED_BACKENDS)
async def test_three_processes_one_leader(spec: BackendSpec,
                                          request: pytest.FixtureRequest) -> None:
    assert spec.shared is not None
    ttl = spec.shared.ttl
    names = ("a", "b", "c")
    journal = Journal()
    processes: dict[str, trio.Process] = {}
    reaped: dict[str, float] = {}
    async with spec.shared.url(request) as url:
        try:
            with trio.fail_after(45):
                async with trio.open_nursery() as nursery:
                    for name in names:
                        processes[name] = await trio.lowlevel.open_process(
                            script("lease_candidate", url, name, KEY, str(ttl)),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=ROOT)
                        stdout = processes[name].stdout
                        assert stdout is not None
                        nursery.start_soon(journal.read, name, stdout)
                    for name in names:
                        await wait(journal, "campaign", name)
                    first_start = await wait(journal, "start")
                    first_leader = first_start["name"]

                    async with open_backend(url) as observer:
                        # 1. Kill the first leader right after a renewal: no release,
                        # so the lease has to run out in the store.
                        async with observer.watch(KEY) as updates:
                            async for entry in updates:
                                if entry is not None and entry.revision > first_start["token"]:
                                    break
                        before = time.time()
                        seen = await observer.get(KEY)
                        assert seen is not None
                        assert seen.expires_in is not None
                        # That write lives until at least here: no later write can
                        # move the expiry earlier.
                        expires_no_earlier = before + seen.expires_in
                        processes[first_leader].send_signal(signal.SIGKILL)
                        killed = time.time()
                        await processes[first_leader].wait()
                        reaped[first_leader] = time.time()
                        second_start = await wait(journal, "start", others_than=(first_leader,))
                        second = second_start["name"]
                        assert second_start["time"] - killed <= ttl + 1.0, journal.events
                        assert second_start["time"] >= expires_no_earlier, journal.events

                        # 2. The second leader leaves its block: the third is watching.
                        await tell(processes[second], b"exit\n")
                        stop = await wait(journal, "stop", second)
                        third_start = await wait(journal, "start",
                                                 others_than=(first_leader, second))
                        third = third_start["name"]
                        handover = third_start["time"] - stop["time"]
                        assert handover <= spec.shared.handover, (handover, journal.events)

                        # 3. The last one leaves as well; everyone has ended.
                        await tell(processes[third], b"exit\n")
                        for name in names:
                            await wait(journal, "eof", name)
                        for name in names:
                            await processes[name].wait()
                        assert await observer.keys() == []
        finally:
            await stop_processes(processes.values())

    assert processes[first_leader].returncode == -signal.SIGKILL
    assert processes[second].returncode == 0
    assert processes[third].returncode == 0
    assert first(journal, "lost") is None, journal.events
    for name in (second, third):
        assert first(journal, "exit", name) is not None, journal.events

    # One leader at every moment the processes logged. The killed leader's term
    # ended no later than when it was reaped.
    terms: list[tuple[float, float, str, int]] = []
    for name in names:
        began = first(journal, "start", name)
        assert began is not None, journal.events
        if name in reaped:
            ended = reaped[name]
        else:
            stopped = first(journal, "stop", name)
            assert stopped is not None, journal.events
            ended = stopped["time"]
        terms.append((began["time"], ended, name, began["token"]))
    terms.sort()
    for (_, end, who, token), (start, _, nxt, next_token) in itertools.pairwise(terms):
        assert end <= start, f"{nxt} started while {who} led: {terms}"
        assert next_token > token, terms
