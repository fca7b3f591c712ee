"""Chaos: candidate processes on real nats-servers, and real faults.

Each test starts its own nats-server(s) on 127.0.0.1 and free ports (it pauses and
kills them, so never the session's server) with a password the candidates pass in
their URL, and a fleet of candidate processes (tests/chaos_candidate.py) contending
for one key with a lease ttl of 2 s. While leader, a candidate's body writes every
50 ms to a fencing-checking recorder shared by all processes (tests/chaos_recorder.py:
a write is accepted only with a token >= the highest seen) and logs when it starts
and stops on the host's one wall clock. The faults:

- SIGKILL the leader: another leads within ttl + 1 s, and not before the killed
  body's own lease deadline;
- SIGSTOP the leader for 2 x ttl, then SIGCONT: another leads within ttl + 1 s of
  the stop; the paused body is cancelled at its first checkpoint after resuming, its
  last write (stamped after the new leader started) is rejected by the fence, and
  its lease deadline, as it knew it before the pause, came before the new leader's
  start;
- SIGSTOP the nats-server for 2 x ttl, and kill -9 it and restart it on the same
  store dir and port: the leader keeps its lease or its body stops by its own
  deadline, and leadership is back within a bound after the server is;
- a three-node cluster with a replicas=3 bucket: kill the node the leader is
  connected to, then the stream leader's node;
- the leader's body raises, is cancelled from outside, or its process gets SIGTERM:
  the lease is released (the next leader starts well under a second later); a
  process without a SIGTERM handler dies at once and its lease has to expire.

After every test: the bodies' own start/stop times never overlap (a killed body ends
when it was reaped; a paused body at the last deadline it knew before the pause),
tokens grow from term to term, no two terms' accepted writes interleave, the fence
rejected only writes a paused body made after resuming, and no candidate's output
(logs at DEBUG) shows the password.

The CI versions run a few rounds; NOLEADER_LONG=1 selects the long versions
(``slow``). Failover times are printed (``pytest -s``) for the README's table.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import signal
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

# The candidates need the nats extra: without it the module is skipped.
pytest.importorskip("nats", reason="the nats extra is not installed")

import trio

from trio_noleader.testing import NatsServer

from .chaos_recorder import Recorder, Write
from .harness import ROOT, Event, Journal, free_port, script
from .nats_fixture import nats_server_binary

pytestmark = [
    pytest.mark.nats,
    pytest.mark.skipif(os.name != "posix", reason="uses POSIX signals"),
]

LONG = os.environ.get("NOLEADER_LONG") == "1"

F = TypeVar("F", bound=Callable[..., Any])


def slow(test: F) -> F:
    """The long version of a chaos test: marked ``slow``, run with NOLEADER_LONG=1."""
    marked: F = pytest.mark.slow(
        pytest.mark.skipif(not LONG, reason="long chaos run: set NOLEADER_LONG=1")(test))
    return marked


KEY = "chaos/job"
TTL = 2  # NATS TTLs are whole seconds
RENEW = TTL / 3  # the candidates use the default renew_interval (and guard, ttl/10)
USER = "alice"
SECRET = "ch4os-pa55word"
#: A write made after the body's deadline, on the body's way out, may take this long.
CANCEL_LATENCY = 0.3
SEED = int(os.environ.get("NOLEADER_CHAOS_SEED", "0")) or random.randrange(1 << 32)


def report(what: str, values: list[float]) -> None:
    """Print measured times (seen with ``pytest -s`` or on failure)."""
    shown = ", ".join(f"{value:.3f}" for value in values)
    if values:
        shown += f"  (min {min(values):.3f}, max {max(values):.3f} s)"
    print(f"\n[chaos seed {SEED}] {what}: {shown}", flush=True)


# -- servers ---------------------------------------------------------------------------


class ChaosServer(NatsServer):
    """A nats-server with a password that a test may pause, kill -9 and restart."""

    def __init__(self, workdir: Path, args: list[str] | None = None) -> None:
        super().__init__(workdir, args=["--user", USER, "--pass", SECRET, *(args or [])],
                         binary=nats_server_binary())
        self.paused = False

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def secret_url(self) -> str:
        return f"nats://{USER}:{SECRET}@{self.address}"

    def _signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)  # by PID: a server this test started

    def pause(self) -> None:
        self._signal(signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        self._signal(signal.SIGCONT)
        self.paused = False

    def kill9(self) -> None:
        process, self.process = self.process, None
        assert process is not None
        process.kill()
        process.wait()

    def stop(self) -> None:
        if self.process is not None and self.paused:
            self.resume()
        super().stop()


class Cluster:
    """Three nats-servers on 127.0.0.1 with routes between them and JetStream."""

    def __init__(self, workdir: Path) -> None:
        routes = [free_port() for _ in range(3)]
        self.nodes: list[ChaosServer] = []
        for index, port in enumerate(routes):
            others = ",".join(f"nats://127.0.0.1:{p}" for p in routes if p != port)
            self.nodes.append(ChaosServer(workdir / f"n{index}", args=[
                "--server_name", f"n{index}", "--cluster_name", "chaos",
                "--cluster", f"nats://127.0.0.1:{port}", "--routes", others]))

    def start(self) -> None:
        for node in self.nodes:
            node.start()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    @property
    def secret_urls(self) -> str:
        return ",".join(node.secret_url for node in self.nodes)

    def by_address(self, address: str) -> ChaosServer:
        return next(node for node in self.nodes if node.address == address)

    def by_name(self, name: str) -> ChaosServer:
        return self.nodes[int(name.removeprefix("n"))]


# -- the candidates --------------------------------------------------------------------


@dataclass
class Member:
    name: str
    process: trio.Process
    stderr: Path
    reaped: float | None = None


@dataclass(frozen=True)
class Term:
    name: str
    token: int
    start: float
    end: float


class Fleet:
    """Candidate processes, their JSON lines, and the shared recorder."""

    def __init__(self, nursery: trio.Nursery, workdir: Path, servers: str, bucket: str,
                 replicas: int) -> None:
        self.nursery = nursery
        self.workdir = workdir
        self.servers = servers
        self.bucket = bucket
        self.replicas = replicas
        self.recorder = Recorder.create(workdir / "recorder.db")
        self.members: dict[str, Member] = {}
        self.journal = Journal()
        self._count = itertools.count()
        self.died: list[str] = []

    # -- processes ---------------------------------------------------------------

    async def spawn(self, *, sigterm_handler: bool = True) -> str:
        name = f"c{next(self._count)}"
        stderr = self.workdir / f"{name}.stderr"
        command = script("chaos_candidate", "--servers", self.servers,
                         "--bucket", self.bucket, "--key", KEY, "--ttl", str(TTL),
                         "--recorder", str(self.recorder.path), "--name", name,
                         "--replicas", str(self.replicas))
        if not sigterm_handler:
            command.append("--no-sigterm-handler")
        with stderr.open("wb") as err:
            process = await trio.lowlevel.open_process(
                command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, cwd=ROOT)
        self.members[name] = Member(name, process, stderr)
        assert process.stdout is not None
        self.nursery.start_soon(self.journal.read, name, process.stdout)
        return name

    async def tell(self, name: str, line: str) -> None:
        stdin = self.members[name].process.stdin
        assert stdin is not None
        await stdin.send_all(line.encode() + b"\n")

    def signal(self, name: str, signum: int) -> None:
        self.members[name].process.send_signal(signum)  # by PID: our own child

    async def kill(self, name: str) -> float:
        """SIGKILL a candidate; return when it was reaped (wall clock)."""
        member = self.members[name]
        member.process.kill()
        await member.process.wait()
        member.reaped = time.time()
        return member.reaped

    async def reap(self, name: str) -> int:
        member = self.members[name]
        code = await member.process.wait()
        member.reaped = time.time()
        return code

    async def stop_all(self) -> None:
        """Kill every candidate still running (by PID) and wait for each."""
        with trio.CancelScope(shield=True):
            for member in self.members.values():
                if member.process.returncode is not None and member.reaped is None:
                    self.died.append(member.name)  # exited without being told to
                if member.process.returncode is None:
                    member.process.send_signal(signal.SIGCONT)
                    member.process.kill()
                await member.process.wait()
                if member.reaped is None:
                    member.reaped = time.time()
                for stream in (member.process.stdin, member.process.stdout):
                    if stream is not None:
                        await stream.aclose()

    # -- events --------------------------------------------------------------------

    @property
    def events(self) -> list[Event]:
        """Every line the candidates wrote, in arrival order."""
        return self.journal.events

    async def wait_for(self, match: Callable[[Event], bool], what: str,
                       limit: float) -> Event:
        """The first event (oldest first) that *match* accepts, within *limit* s."""
        with trio.move_on_after(limit):
            return await self.journal.wait_for(match)
        dead = [m.name for m in self.members.values()
                if m.process.returncode is not None and m.reaped is None]
        raise AssertionError(f"no {what} within {limit} s; exited by themselves: {dead}; "
                             f"events: {self.tail()}")

    async def next_start(self, after_token: int, limit: float) -> Event:
        return await self.wait_for(
            lambda e: e["event"] == "start" and e["token"] > after_token,
            f"leader after token {after_token}", limit)

    async def wait_stop(self, name: str, token: int, limit: float) -> Event:
        def match(event: Event) -> bool:
            return event["event"] == "stop" and (event["name"], event["token"]) == (name, token)

        return await self.wait_for(match, f"{name} to stop", limit)

    async def wait_event(self, kind: str, name: str, since: float, limit: float) -> Event:
        def match(event: Event) -> bool:
            return (event["event"], event["name"]) == (kind, name) and event["time"] >= since

        return await self.wait_for(match, f"{kind} from {name}", limit)

    async def leading_since(self, since: float, limit: float) -> Event:
        """The first proof that the store gives someone the lease after *since*.

        That is a body starting after *since*, or a renewal sent after it (the
        reply to a write sent before may have come from before the fault).
        """
        return await self.wait_for(
            lambda e: (e["event"] == "start" and e["time"] >= since)
            or (e["event"] == "renewed" and e["sent"] >= since),
            f"a lease given after {since:.2f}", limit)

    def find(self, event: str, name: str, token: int | None = None) -> Event | None:
        return self.journal.first(lambda e: e["event"] == event and e["name"] == name
                                  and (token is None or e.get("token") == token))

    def tail(self, count: int = 30) -> str:
        return self.journal.tail(count)

    # -- checks ----------------------------------------------------------------------

    def check(self, paused: dict[tuple[str, int], float] | None = None) -> list[Write]:
        """The invariants of every chaos run; call after :meth:`stop_all`.

        *paused* maps a term ``(name, token)`` to the wall time its process was
        SIGSTOPped: such a body cannot log while stopped, so its term ends, by its
        own clock, at the last lease deadline it knew before the pause.
        """
        paused = paused or {}
        for name in self.died:
            log = self.members[name].stderr.read_text(errors="replace")
            raise AssertionError(f"candidate {name} exited by itself:\n{log[-3000:]}")
        writes = self.recorder.writes()
        terms = []
        for start in (e for e in self.events if e["event"] == "start"):
            name, token = start["name"], start["token"]
            stop = self.find("stop", name, token)
            if (name, token) in paused:
                stopped = paused[(name, token)]
                known = [w.deadline for w in writes
                         if (w.name, w.token) == (name, token) and w.issued < stopped]
                end = max([start["deadline"], *known])
            elif stop is not None:
                end = stop["time"]
            else:
                reaped = self.members[name].reaped
                assert reaped is not None, f"{name}'s term {token} never ended"
                end = reaped
            terms.append(Term(name, token, start["time"], end))
        terms.sort(key=lambda term: term.start)
        assert terms, "nobody was ever elected"
        for before, after in itertools.pairwise(terms):
            assert before.end <= after.start, f"{after} began while {before} led: {terms}"
            assert after.token > before.token, terms

        by_term = {(term.name, term.token): term for term in terms}
        for write in writes:
            term = by_term[(write.name, write.token)]
            assert write.issued >= term.start, (write, term)
            if write.issued > term.end:
                # Only a paused body acts after its term: the fence stops it.
                assert (write.name, write.token) in paused, (write, term)
                assert not write.accepted, (write, term)
            else:
                assert write.accepted, (write, term)
        accepted = sorted((w for w in writes if w.accepted), key=lambda w: w.issued)
        tokens = [w.token for w in accepted]
        assert tokens == sorted(tokens), "accepted writes of two terms interleave"
        for member in self.members.values():
            text = member.stderr.read_bytes().decode(errors="replace")
            assert SECRET not in text, f"{member.name}'s log shows the password"
        assert SECRET not in json.dumps(self.events)
        return writes


def new_bucket() -> str:
    return f"chaos_{uuid.uuid4().hex[:12]}"


@asynccontextmanager
async def open_fleet(workdir: Path, servers: str, count: int, replicas: int = 1,
                     bucket: str | None = None) -> AsyncIterator[Fleet]:
    """*count* candidates on a (fresh) bucket; every one is killed on the way out."""
    await trio.Path(workdir).mkdir(parents=True, exist_ok=True)
    bucket = bucket or new_bucket()
    async with trio.open_nursery() as nursery:
        fleet = Fleet(nursery, workdir, servers, bucket, replicas)
        try:
            names = [await fleet.spawn() for _ in range(count)]
            for name in names:
                # Opening the store is no campaign yet: faults come after it.
                await fleet.wait_event("campaign", name, since=0, limit=30)
            yield fleet
        finally:
            await fleet.stop_all()
            fleet.recorder.close()
            fleet.recorder = Recorder(fleet.recorder.path)  # for check() afterwards
            nursery.cancel_scope.cancel()


def wall(event: Event) -> float:
    value: float = event["time"]
    return value


# -- SIGKILL the leader ------------------------------------------------------------------


async def sigkill_rounds(tmp_path: Path, rounds: int) -> None:
    rng = random.Random(SEED)
    failovers = []
    with ChaosServer(tmp_path / "server") as server:
        async with open_fleet(tmp_path / "fleet", server.secret_url, 3) as fleet:
            with trio.fail_after(30 + rounds * (TTL + 4)):
                leader = await fleet.next_start(0, limit=20)
                for _ in range(rounds):
                    # Kill at a random phase of the renewal cycle.
                    await trio.sleep(rng.uniform(0.05, 1.5 * RENEW))
                    killed = time.time()
                    await fleet.kill(leader["name"])
                    await fleet.spawn()
                    successor = await fleet.next_start(leader["token"], limit=TTL + 5)
                    took = wall(successor) - killed
                    failovers.append(took)
                    assert took <= TTL + 1.0, (took, fleet.tail())
                    # Not before the killed body's own deadline: it might have been
                    # acting until then, for all the store knew.
                    deadlines = [w.deadline for w in fleet.recorder.writes()
                                 if (w.name, w.token) == (leader["name"], leader["token"])]
                    assert wall(successor) >= max([leader["deadline"], *deadlines])
                    leader = successor
        fleet.check()
    report(f"SIGKILL leader x{rounds}, failover after the kill", failovers)


async def test_sigkill_the_leader(tmp_path: Path) -> None:
    await sigkill_rounds(tmp_path, 3)


@slow
async def test_sigkill_the_leader_long(tmp_path: Path) -> None:
    await sigkill_rounds(tmp_path, 20)


# -- SIGSTOP the leader ------------------------------------------------------------------


async def sigstop_leader_rounds(tmp_path: Path, rounds: int) -> None:
    rng = random.Random(SEED)
    failovers, wakeups = [], []
    paused: dict[tuple[str, int], float] = {}
    with ChaosServer(tmp_path / "server") as server:
        async with open_fleet(tmp_path / "fleet", server.secret_url, 3) as fleet:
            with trio.fail_after(30 + rounds * (3 * TTL + 6)):
                leader = await fleet.next_start(0, limit=20)
                for _ in range(rounds):
                    name, token = leader["name"], leader["token"]
                    await trio.sleep(rng.uniform(0.05, 1.5 * RENEW))
                    stopped = time.time()
                    fleet.signal(name, signal.SIGSTOP)
                    paused[(name, token)] = stopped
                    successor = await fleet.next_start(token, limit=TTL + 5)
                    failovers.append(wall(successor) - stopped)
                    assert wall(successor) - stopped <= TTL + 1.0, fleet.tail()
                    await trio.sleep(max(0.0, stopped + 2 * TTL - time.time()))
                    resumed = time.time()
                    fleet.signal(name, signal.SIGCONT)
                    # Cancelled at its first checkpoint after resuming; its last write,
                    # made on the way out, is refused by the fence.
                    stop = await fleet.wait_stop(name, token, limit=5)
                    wakeups.append(wall(stop) - resumed)
                    assert wall(stop) - resumed <= CANCEL_LATENCY + 0.2, fleet.tail()
                    assert stop["final_accepted"] is False, stop
                    await fleet.wait_event("lost", name, since=resumed, limit=5)
                    # It campaigns again; the successor still leads.
                    assert fleet.find("stop", successor["name"], successor["token"]) is None
                    stale = [w for w in fleet.recorder.writes()
                             if (w.name, w.token) == (name, token)
                             and w.issued >= wall(successor)]
                    assert stale, "the paused body made no write after resuming"
                    assert not any(w.accepted for w in stale), stale
                    leader = successor
        writes = fleet.check(paused)
    rejected = [w for w in writes if not w.accepted]
    assert {(w.name, w.token) for w in rejected} == set(paused), rejected
    report(f"SIGSTOP leader 2 x ttl x{rounds}, failover after the stop", failovers)
    report("  paused body stopped after SIGCONT", wakeups)


async def test_sigstop_the_leader(tmp_path: Path) -> None:
    await sigstop_leader_rounds(tmp_path, 1)


@slow
async def test_sigstop_the_leader_long(tmp_path: Path) -> None:
    await sigstop_leader_rounds(tmp_path, 6)


# -- the nats-server paused, or killed and restarted ------------------------------------


async def server_fault_rounds(tmp_path: Path, rounds: int, fault: str) -> None:
    """*fault* is ``pause`` (SIGSTOP 2 x ttl) or ``kill`` (kill -9, restart)."""
    rng = random.Random(SEED)
    recoveries, kept = [], 0
    with ChaosServer(tmp_path / "server") as server:
        async with open_fleet(tmp_path / "fleet", server.secret_url, 3) as fleet:
            with trio.fail_after(30 + rounds * (4 * TTL + 15)):
                await fleet.next_start(0, limit=20)
                for round_ in range(rounds):
                    await trio.sleep(rng.uniform(0.05, 1.5 * RENEW))
                    down = time.time()
                    if fault == "pause":
                        server.pause()
                        await trio.sleep(2 * TTL)
                        server.resume()
                    else:
                        server.kill9()
                        # Short outages (the leader may keep its lease) and long ones.
                        await trio.sleep(0.5 if round_ % 2 == 0 else 2 * TTL)
                        server.start()  # same port, same store dir
                    back = time.time()
                    lead = await fleet.leading_since(back, limit=4 * TTL + 10)
                    recoveries.append(wall(lead) - back)
                    start = fleet.find("start", lead["name"], lead["token"])
                    assert start is not None
                    kept += wall(start) < down
                    assert wall(lead) - back <= SERVER_BACK_BOUND, (recoveries, fleet.tail())
                    # The next fault only once the lease has been renewed since.
                    await fleet.leading_since(wall(lead) + 0.01, limit=TTL + 5)
        writes = fleet.check()
    check_steps_down_by_deadline(fleet, writes)
    what = "SIGSTOP server 2 x ttl" if fault == "pause" else "kill -9 + restart server"
    report(f"{what} x{rounds}, leading again after the server is back "
           f"(the old lease kept {kept} times)", recoveries)


#: How soon after the server is back someone leads again. The target is
#: ttl + renew_interval; but after a lost connection nats-py retries the server every
#: reconnect_time_wait (1 s), and a candidate whose campaign met the outage retries
#: after a backoff capped at min(ttl, 5 s): the worst case is about 1 s + ttl.
SERVER_BACK_BOUND = 1.0 + TTL + 0.5


def check_steps_down_by_deadline(fleet: Fleet, writes: list[Write]) -> None:
    """Every body that stopped without being told stopped by its own lease deadline."""
    for stop in (e for e in fleet.events if e["event"] == "stop"):
        own = [w for w in writes if (w.name, w.token) == (stop["name"], stop["token"])
               and w.note == "body"]
        if not own:
            continue
        deadline = max(w.deadline for w in own)
        assert wall(stop) <= deadline + CANCEL_LATENCY, (stop, deadline)


async def test_sigstop_the_server(tmp_path: Path) -> None:
    await server_fault_rounds(tmp_path, 1, "pause")


async def test_kill_and_restart_the_server(tmp_path: Path) -> None:
    await server_fault_rounds(tmp_path, 2, "kill")


@slow
async def test_sigstop_the_server_long(tmp_path: Path) -> None:
    await server_fault_rounds(tmp_path, 6, "pause")


@slow
async def test_kill_and_restart_the_server_long(tmp_path: Path) -> None:
    await server_fault_rounds(tmp_path, 8, "kill")


# -- a three-node cluster ----------------------------------------------------------------


def current_term(fleet: Fleet) -> Event:
    """The start event of the term that is running now (its body has not stopped)."""
    running = [e for e in fleet.events if e["event"] == "start"
               and fleet.find("stop", e["name"], e["token"]) is None
               and fleet.members[e["name"]].reaped is None]
    assert running, fleet.tail()
    return running[-1]


def connected_to(fleet: Fleet, name: str) -> str:
    """The address of the server the candidate is connected to, as it last said."""
    said = [e for e in fleet.events if e["name"] == name
            and e["event"] in ("ready", "connected")]
    address: str = said[-1]["address"]
    return address


async def probe(cluster: Cluster, command: str, bucket: str) -> str:
    """Run tests/chaos_cluster_probe.py: ``create`` the bucket, or name the ``leader``."""
    result = await trio.run_process(
        script("chaos_cluster_probe", command, cluster.secret_urls, bucket),
        capture_stdout=True, capture_stderr=True, check=False, stdin=subprocess.DEVNULL,
        cwd=ROOT)
    assert result.returncode == 0, result.stderr.decode(errors="replace")[-3000:]
    assert SECRET.encode() not in result.stdout + result.stderr
    return result.stdout.decode().strip()


#: A bound on how long a JetStream cluster takes to elect a new stream leader after
#: losing the old one's node: nats-server's Raft waits a random 4 to 9 s before it
#: calls an election. Leading again took 5.4-9.9 s in our runs (that wait, then a
#: campaign's backoff).
STREAM_LEADER_FAILOVER = 12.0


async def cluster_rounds(tmp_path: Path, rounds: int) -> None:
    rng = random.Random(SEED)
    targets = ("node the leader is connected to", "stream leader's node")
    recoveries: dict[str, list[float]] = {}
    cluster = Cluster(tmp_path / "cluster")
    bucket = new_bucket()
    try:
        cluster.start()
        with trio.fail_after(60 + rounds * 120):
            await probe(cluster, "create", bucket)
            async with open_fleet(tmp_path / "fleet", cluster.secret_urls, 3, replicas=3,
                                  bucket=bucket) as fleet:
                await fleet.next_start(0, limit=30)
                for _ in range(rounds):
                    for target in targets:
                        stream_leader = cluster.by_name(await probe(cluster, "leader", bucket))
                        await trio.sleep(rng.uniform(0.05, 1.5 * RENEW))
                        if target.startswith("node the leader"):
                            lead = current_term(fleet)
                            node = cluster.by_address(connected_to(fleet, lead["name"]))
                        else:
                            node = stream_leader
                        down = time.time()
                        node.kill9()
                        lead = await fleet.leading_since(down, limit=60)
                        took = wall(lead) - down
                        label = target
                        if node is stream_leader and target is targets[0]:
                            label += ", which led the stream too"
                        recoveries.setdefault(label, []).append(took)
                        if node is stream_leader:
                            # JetStream first elects another stream leader; the store
                            # takes no write until then.
                            assert took <= STREAM_LEADER_FAILOVER + TTL + RENEW, took
                        else:
                            # The client moves to another node at once; the stream is fine.
                            assert took <= TTL + RENEW, took
                        node.start()  # same port, same store dir
                        await probe(cluster, "leader", bucket)
                        # The next fault once a lease has been written since.
                        await fleet.leading_since(time.time(), limit=60)
        writes = fleet.check()
        check_steps_down_by_deadline(fleet, writes)
    finally:
        cluster.stop()
    for target, times in recoveries.items():
        report(f"3-node cluster, kill -9 the {target} x{rounds}, leading again after", times)


async def test_cluster_node_failures(tmp_path: Path) -> None:
    await cluster_rounds(tmp_path, 1)


@slow
async def test_cluster_node_failures_long(tmp_path: Path) -> None:
    await cluster_rounds(tmp_path, 5)


# -- the leader leaves: body raises, cancelled from outside, SIGTERM ----------------------


#: "Well under a second", from a body's stop to the next body's start: measured 4-70 ms
#: (once 0.34 s with the other core busy). Without the release the next leader would
#: wait for the lease to expire: at least ttl - renew_interval = 1.33 s.
HANDOVER_BOUND = 0.75


async def release_rounds(tmp_path: Path, rounds: int) -> None:
    rng = random.Random(SEED)
    modes = ("exit", "raise", "cancel", "sigterm")
    handovers: dict[str, list[float]] = {mode: [] for mode in modes}
    outcome = {"exit": ("exit", 0), "raise": ("raised", 0), "cancel": ("cancelled", 0),
               "sigterm": ("sigterm", 128 + signal.SIGTERM)}
    with ChaosServer(tmp_path / "server") as server:
        async with open_fleet(tmp_path / "fleet", server.secret_url, 3) as fleet:
            with trio.fail_after(30 + rounds * len(modes) * 4 + 3 * TTL + 20):
                leader = await fleet.next_start(0, limit=20)
                for mode in [mode for _ in range(rounds) for mode in modes]:
                    name, token = leader["name"], leader["token"]
                    await trio.sleep(rng.uniform(0.05, 1.5 * RENEW))
                    if mode == "sigterm":
                        fleet.signal(name, signal.SIGTERM)
                    else:
                        await fleet.tell(name, mode)
                    stop = await fleet.wait_stop(name, token, limit=5)
                    successor = await fleet.next_start(token, limit=TTL + 5)
                    gap = wall(successor) - wall(stop)
                    handovers[mode].append(gap)
                    assert gap <= HANDOVER_BOUND, (mode, gap, fleet.tail())
                    event, code = outcome[mode]
                    assert await fleet.reap(name) == code, fleet.tail()
                    if mode != "exit":
                        assert fleet.find(event, name) is not None, fleet.tail()
                    await fleet.spawn()
                    leader = successor

                # Without a SIGTERM handler Python dies at once: nothing is released,
                # the lease has to expire (the reason to handle SIGTERM, as
                # `noleader run` does).
                plain = await fleet.spawn(sigterm_handler=False)
                while leader["name"] != plain:
                    await fleet.tell(leader["name"], "exit")
                    successor = await fleet.next_start(leader["token"], limit=TTL + 5)
                    assert await fleet.reap(leader["name"]) == 0
                    leader = successor
                await fleet.spawn()
                await fleet.wait_for(lambda e: e["event"] == "campaign"
                                     and e["time"] > wall(leader)
                                     and e["name"] != plain, "a candidate", limit=10)
                await trio.sleep(rng.uniform(0.05, 1.5 * RENEW))
                terminated = time.time()
                fleet.signal(plain, signal.SIGTERM)
                assert await fleet.reap(plain) == -signal.SIGTERM
                successor = await fleet.next_start(leader["token"], limit=TTL + 5)
                deadlines = [w.deadline for w in fleet.recorder.writes()
                             if (w.name, w.token) == (plain, leader["token"])]
                assert wall(successor) >= max([leader["deadline"], *deadlines])
                assert wall(successor) - terminated <= TTL + 1.0
                assert fleet.find("stop", plain) is None
        fleet.check()
    for mode, gaps in handovers.items():
        report(f"handover x{rounds} after the body's {mode}, from its stop to the next start",
               gaps)
    report("SIGTERM without a handler, failover after the signal",
           [wall(successor) - terminated])


async def test_leaving_releases_the_lease(tmp_path: Path) -> None:
    await release_rounds(tmp_path, 1)


@slow
async def test_leaving_releases_the_lease_long(tmp_path: Path) -> None:
    await release_rounds(tmp_path, 10)
