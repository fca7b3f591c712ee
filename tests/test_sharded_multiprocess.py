"""run_sharded across OS processes (tests/sharded_candidate.py) on SQLite and NATS.

Three replicas share 60 keys; a fourth joins, one stops gracefully, one is
SIGKILLed. After each change the processes' own logs must show the new quotas
(balance), the keys that moved within the rule's bound, and the change settled
within its bound (graceful: ``2 * renew_interval`` plus round trips and the
store's watch delay; crash: ``ttl + 2 * renew_interval`` plus the store's expiry
slack). Throughout, no key has two jobs at once on the host's one wall clock, and
replaying every job's writes through one FencedResource per key accepts them all
in time order (tokens never go back).
"""

from __future__ import annotations

import functools
import itertools
import os
import signal
import subprocess
import time

import pytest
import trio

from trio_noleader import _shard_assign as assign
from trio_noleader import open_backend
from trio_noleader.testing import FencedResource

from .backends import SHARED_BACKENDS
from .harness import ROOT, BackendSpec, Event, Journal, script, stop_processes

pytestmark = pytest.mark.skipif(os.name != "posix", reason="uses POSIX signals and pipes")

N = 60
TTL = 2.0
RENEW = TTL / 3
BACKENDS = [p for p in SHARED_BACKENDS
            if getattr(p.values[0], "name", None) in ("sqlite", "nats")]


def is_eof(name: str, event: Event) -> bool:
    return bool(event["event"] == "eof" and event["name"] == name)


def counts(journal: Journal, names: list[str]) -> dict[str, int]:
    latest: dict[str, int] = {}
    for event in journal.events:
        if event["event"] == "owned" and event["name"] in names:
            latest[event["name"]] = event["count"]
    return latest


def owners(journal: Journal, until: float = float("inf")) -> dict[str, str]:
    """key -> the process running it, from the start/stop events up to *until*."""
    current: dict[str, str] = {}
    for event in journal.events:
        if event["time"] > until:
            break
        if event["event"] == "start":
            current[event["key"]] = event["name"]
        elif event["event"] == "stop" and current.get(event["key"]) == event["name"]:
            del current[event["key"]]
    return current


async def settled(journal: Journal, live: list[str], within: float) -> float:
    """Wait until the live processes hold exactly their quotas of all N keys."""
    start = time.time()
    expected = sorted([N // len(live) + 1] * (N % len(live))
                      + [N // len(live)] * (len(live) - N % len(live)))
    with trio.fail_after(within + 5):  # fail with the numbers, below, if late
        while True:
            have = counts(journal, live)
            if sorted(have.get(n, 0) for n in live) == expected and \
                    len(owners(journal)) == N:
                break
            await trio.sleep(0.02)
    took = time.time() - start
    assert took <= within, (took, within, counts(journal, live))
    return took


@pytest.mark.parametrize("spec", BACKENDS)
async def test_sharded_processes(spec: BackendSpec, request: pytest.FixtureRequest) -> None:
    assert spec.shared is not None
    graceful = 2 * RENEW + 1.0  # round trips, watch and poll delays on a loaded CI host
    crash = TTL + 2 * RENEW + 1.5  # plus the store's expiry slack
    journal = Journal()
    processes: dict[str, trio.Process] = {}
    reaped: dict[str, float] = {}
    figures: dict[str, float] = {}

    async def start(nursery: trio.Nursery, name: str) -> None:
        processes[name] = await trio.lowlevel.open_process(
            script("sharded_candidate", url, name, str(TTL), str(N)),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=ROOT)
        stdout = processes[name].stdout
        assert stdout is not None
        nursery.start_soon(journal.read, name, stdout)

    async with spec.shared.url(request) as url:
        try:
            with trio.fail_after(90):
                async with trio.open_nursery() as nursery:
                    live = ["a", "b", "c"]
                    for name in live:
                        await start(nursery, name)
                    await settled(journal, live, 10.0)
                    await trio.sleep(RENEW)

                    # A join: moves at most 1.5 N / (M + 1) keys, settles gracefully.
                    before = owners(journal)
                    await start(nursery, "d")
                    await journal.wait_for(lambda e: e["event"] == "joined"
                                           and e["name"] == "d")
                    live.append("d")
                    figures["join_settle"] = await settled(journal, live, graceful)
                    moved = sum(1 for k, o in owners(journal).items() if before[k] != o)
                    figures["join_moved"] = moved
                    assert moved <= assign.join_move_bound(N, 4), moved

                    # A graceful leave: only the leaver's keys move.
                    await trio.sleep(RENEW)
                    before = owners(journal)
                    assert processes["b"].stdin is not None
                    await processes["b"].stdin.send_all(b"exit\n")
                    await journal.wait_for(lambda e: e["event"] == "exit"
                                           and e["name"] == "b")
                    live.remove("b")
                    figures["leave_settle"] = await settled(journal, live, graceful)
                    after = owners(journal)
                    moved_keys = {k for k in after if after[k] != before[k]}
                    assert moved_keys == {k for k, o in before.items() if o == "b"}
                    figures["leave_moved"] = len(moved_keys)

                    # A crash: SIGKILL, no release; the leases run out in the store.
                    await trio.sleep(RENEW)
                    before = owners(journal)
                    processes["c"].send_signal(signal.SIGKILL)
                    killed = time.time()
                    await processes["c"].wait()
                    reaped["c"] = time.time()
                    live.remove("c")
                    # The killed process logs no stop: its keys' terms end at the kill.
                    for key, owner in before.items():
                        if owner == "c":
                            journal.add({"name": "c", "event": "stop", "time": killed,
                                         "key": key, "token": None})
                    figures["crash_settle"] = await settled(journal, live, crash)
                    after = owners(journal)
                    assert {k for k in after if after[k] != before[k]} == {
                        k for k, o in before.items() if o == "c"}

                    for name in live:
                        stdin = processes[name].stdin
                        assert stdin is not None
                        await stdin.send_all(b"exit\n")
                    for name in ("a", "b", "c", "d"):
                        await journal.wait_for(functools.partial(is_eof, name))
                    async with open_backend(url) as observer:
                        assert await observer.keys() == []
        finally:
            await stop_processes(processes.values())

    # Never two jobs of one key at once, on the host's wall clock.
    terms: dict[str, list[tuple[float, float, str, int]]] = {}
    opened: dict[tuple[str, str], tuple[float, int]] = {}
    for event in journal.events:
        if event["event"] == "start":
            opened[(event["key"], event["name"])] = (event["time"], event["token"])
        elif event["event"] == "stop" and (event["key"], event["name"]) in opened:
            began, token = opened.pop((event["key"], event["name"]))
            terms.setdefault(event["key"], []).append(
                (began, event["time"], event["name"], token))
    assert not opened, opened
    for key, spans in terms.items():
        spans.sort()
        for (_, end, who, token), (start_, _, nxt, next_token) in itertools.pairwise(spans):
            assert end <= start_, f"{key}: {nxt} started while {who} ran it: {spans}"
            assert next_token > token, (key, spans)
    # A fenced recorder per key, fed every job's writes in time order.
    fences = {key: FencedResource(key) for key in terms}
    for event in sorted((e for e in journal.events if e["event"] == "write"),
                        key=lambda e: e["time"]):
        fences[event["key"]].write(event["token"], writer=event["name"])
    assert all(not fence.rejected for fence in fences.values())
    assert sum(len(fence.accepted) for fence in fences.values()) > N
    print(spec.name, figures)
