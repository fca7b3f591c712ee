"""The noleader command line, run as real subprocesses against an SQLite file."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import aclosing, asynccontextmanager
from pathlib import Path

import pytest
import trio

from .harness import lines
from .nats_fixture import needs_nats_extra

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
        async with aclosing(lines(stream)) as each:
            async for line in each:
                self.lines.append(line.decode())
                self._changed.set()
                self._changed = trio.Event()
        self._changed.set()

    async def expect(self, pattern: str, limit: float = 20) -> re.Match[str]:
        """Wait up to *limit* seconds for a line matching *pattern*."""
        with trio.fail_after(limit):
            seen = 0
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


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite://{tmp_path / 'leases.db'}"


def read_log(path: Path) -> list[tuple[str, int, float, int]]:
    if not path.exists():
        return []
    events = []
    for line in path.read_text().splitlines():
        event, pid, stamp, token = line.split()
        events.append((event, int(pid), float(stamp), int(token)))
    return events


async def test_help_lists_commands_and_exit_codes() -> None:
    code, out = await run_cli("--help")
    assert code == 0
    for word in ("run", "status", "watch", "reset", "demo", "120", "121", "122"):
        assert word in out
    assert "_candidate" not in out


async def test_run_passes_exit_code_and_environment(url: str) -> None:
    code, out = await run_cli("run", "--url", url, "nightly", "--",
                              sys.executable, "-c",
                              "import os; print(os.environ['NOLEADER_KEY'], "
                              "os.environ['NOLEADER_TOKEN']); raise SystemExit(7)")
    assert code == 7, out
    assert re.search(r"^nightly \d+$", out, re.M), out
    # Released on exit: the next run is elected at once.
    code, out = await run_cli("run", "--url", url, "--no-wait", "nightly", "--", "true")
    assert code == 0, out


async def test_run_no_wait_while_held_and_sigterm(url: str, tmp_path: Path) -> None:
    log = tmp_path / "job.log"
    async with noleader("run", "--url", url, "--ttl", "2", "job", "--",
                        sys.executable, "-c", JOB, str(log)) as leader:
        await leader.expect("job started")
        code, out = await run_cli("run", "--url", url, "--no-wait", "job", "--", "true")
        assert code == 121, out
        assert "held by someone else" in out
        code, out = await run_cli("status", "--url", url, "--json")
        assert code == 0, out
        [row] = json.loads(out)
        assert row["key"] == "job"
        assert row["held"] is True
        assert row["token"] == read_log(log)[0][3]
        leader.process.send_signal(signal.SIGTERM)
        assert await leader.wait() == 128 + signal.SIGTERM
    assert [e[0] for e in read_log(log)] == ["start", "end"]
    code, out = await run_cli("status", "--url", url, "--json")
    assert json.loads(out) == []  # the lease was released


async def test_run_stops_the_command_when_leadership_is_lost(url: str, tmp_path: Path) -> None:
    log = tmp_path / "job.log"
    async with noleader("run", "--url", url, "--ttl", "1", "job", "--",
                        sys.executable, "-c", JOB, str(log)) as leader:
        await leader.expect("job started")
        code, out = await run_cli("reset", "--url", url, "job")
        assert code == 2, out
        assert "--force" in out
        code, out = await run_cli("reset", "--url", url, "job", "--force")
        assert code == 0, out
        assert "cleared" in out
        assert await leader.wait() == 120
        await leader.expect("lost leadership")
    assert [e[0] for e in read_log(log)] == ["start", "end"]


async def test_the_command_outlives_idle_threads_but_not_noleader(
    url: str, tmp_path: Path
) -> None:
    # Regression: the command used to be forked from a trio worker thread, and its
    # parent-death signal fired when that thread idled out after 10 s.
    log = tmp_path / "job.log"
    async with noleader("run", "--url", url, "--ttl", "60", "job", "--",
                        sys.executable, "-c", JOB, str(log)) as leader:
        await leader.expect("job started")
        await trio.sleep(12)
        [(_, pid, _, _)] = read_log(log)
        os.kill(pid, 0)  # still running
        # SIGKILL noleader: its command must die with it, not run on unleased.
        leader.process.kill()
        await leader.wait()
        with trio.fail_after(5):
            await _death_of(pid)


async def _death_of(pid: int) -> None:
    """Wait until process *pid* (not our child) has exited."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        await trio.lowlevel.wait_readable(fd)
    finally:
        os.close(fd)


async def test_status_and_watch(url: str) -> None:
    code, out = await run_cli("status", "--url", url)
    assert code == 0
    assert "no elections" in out
    async with noleader("watch", "--url", url, "w", "--json") as watcher:
        await watcher.expect('"held": false')
        code, out = await run_cli("run", "--url", url, "w", "--", "sleep", "0.3")
        assert code == 0, out
        held = await watcher.expect(r'"held": true.*"token": (\d+)')
        assert int(held.group(1)) > 0
        watcher.process.send_signal(signal.SIGINT)
        assert await watcher.wait() == 0
    lines = [json.loads(line) for line in watcher.lines if line.startswith("{")]
    assert [line["held"] for line in lines] == [False, True, False]


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["run", "bad key", "--", "true"], 2, "invalid key 'bad key'"),
        (["run", "k"], 2, "run needs a command"),
        (["run", "k", "--ttl", "0", "--", "true"], 2, "must be a finite number of seconds > 0"),
        (["run", "k", "--ttl", "nan", "--", "true"], 2, "must be a finite number of seconds > 0"),
        (["status", "--url", "redis://h"], 2, "unknown backend URL 'redis://h'"),
        pytest.param(["status", "--url", "nats://user:s3cret@127.0.0.1:1/b"], 122,
                     "store unavailable", marks=needs_nats_extra),
        (["status", "--url", "sqlite:///proc/no/such/dir/x.db"], 122, "/proc/no/such/dir"),
        (["status", "--url", "postgresql://user:s3cret@127.0.0.1:1/db"], 122,
         "cannot connect to PostgreSQL at postgresql://user@127.0.0.1:1/db"),
        (["status", "--url", "postgresql://user:s3cret@h/db?table=Bad"], 2,
         "invalid table name 'Bad'"),
        (["run", "k", "--", "no-such-command-here"], 127, "cannot run"),
    ],
)
async def test_bad_input(args: Sequence[str], code: int, message: str, url: str) -> None:
    if "--url" not in args:
        args = [args[0], "--url", url, *args[1:]]
    got, out = await run_cli(*args)
    assert got == code, out
    assert message in out
    assert "s3cret" not in out
    assert "Traceback" not in out


@pytest.mark.parametrize("store", ["sqlite", pytest.param("nats", marks=pytest.mark.nats),
                                   pytest.param("postgres", marks=pytest.mark.postgres)])
async def test_demo_ends_by_itself(store: str, request: pytest.FixtureRequest) -> None:
    url = []
    if store == "nats":
        url = ["--url", f"{request.getfixturevalue('nats_url')}/demo_{os.getpid()}"]
    elif store == "postgres":
        table = f"demo_{os.getpid()}_{time.time_ns()}"
        url = ["--url", f"{request.getfixturevalue('postgres_url')}?table={table}"]
    try:
        code, out = await run_cli("demo", "--rounds", "1", "--pause", "0.2", "--ttl", "1",
                                  *url, limit=60)
    finally:
        if store == "postgres":
            from .postgres_fixture import drop_tables

            await drop_tables(request.getfixturevalue("postgres_url"), table)
    assert code == 0, out
    assert "graceful handover" in out
    assert "crash failover" in out
    assert len(re.findall(r"takeover by candidate-\d+", out)) == 2, out


async def test_three_runners_run_the_command_once_at_a_time(url: str, tmp_path: Path) -> None:
    log = tmp_path / "job.log"
    ttl = 1.0
    async with trio.open_nursery() as nursery:
        runners: list[Proc] = []
        for _ in range(3):
            cm = noleader("run", "--url", url, "--ttl", str(ttl), "job", "--",
                          sys.executable, "-c", JOB, str(log))
            runners.append(await _enter(nursery, cm))
        # Whoever printed "job started" leads; SIGKILL it (its command dies with it).
        killed_at = []
        for _ in range(2):
            leader = await _first_started(runners)
            runners.remove(leader)
            killed_at.append(time.time())
            leader.process.kill()
            await leader.wait()
        leader = await _first_started(runners)
        stopped_at = time.time()
        leader.process.send_signal(signal.SIGTERM)
        assert await leader.wait() == 128 + signal.SIGTERM
        nursery.cancel_scope.cancel()
    events = read_log(log)
    starts = [e for e in events if e[0] == "start"]
    assert len(starts) == 3, events
    # Takeover after each kill: not before the kill, within ttl + 1 s.
    for kill, start in zip(killed_at, starts[1:], strict=True):
        assert kill <= start[2] <= kill + ttl + 1, (kill, start)
    # Once at a time: each start comes after the previous holder died or ended.
    assert starts[0][2] < killed_at[0] < starts[1][2] < killed_at[1] < starts[2][2] < stopped_at
    tokens = [s[3] for s in starts]
    assert tokens == sorted(set(tokens))


async def _enter(nursery: trio.Nursery, cm: object) -> Proc:
    """Enter an async context manager in a background task; return its value."""
    async def hold(task_status: trio.TaskStatus[Proc]) -> None:
        async with cm as proc:  # type: ignore[attr-defined]
            task_status.started(proc)
            await trio.sleep_forever()

    result: Proc = await nursery.start(hold)
    return result


async def _first_started(runners: list[Proc]) -> Proc:
    """The runner whose command prints "job started" (the others wait to be elected)."""
    winner: list[Proc] = []
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            for runner in runners:
                async def wait_one(runner: Proc = runner) -> None:
                    seen = sum("job started" in line for line in runner.lines)
                    if seen:
                        winner.append(runner)
                        nursery.cancel_scope.cancel()
                        return
                    await runner.expect("job started", limit=30)
                    winner.append(runner)
                    nursery.cancel_scope.cancel()

                nursery.start_soon(wait_one)
    return winner[0]


@pytest.mark.postgres
async def test_status_and_watch_on_postgres(postgres_url: str) -> None:
    from .postgres_fixture import drop_tables

    table = f"cli_{os.getpid()}_{time.time_ns()}"
    try:
        await test_status_and_watch(f"{postgres_url}?table={table}")
    finally:
        await drop_tables(postgres_url, table)
