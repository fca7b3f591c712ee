"""The noleader command line, run as real subprocesses against an SQLite file."""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
import trio

from .cli_procs import JOB, Proc, death_of, noleader, read_log, run_cli
from .nats_fixture import needs_nats_extra


@pytest.fixture
def url(tmp_path: Path) -> str:
    # A fresh file per test, never replaced: no grace for the first lease.
    return f"sqlite://{tmp_path / 'leases.db'}?new_store_grace=off"


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
            await death_of(pid)


async def test_status_and_watch(url: str, tmp_path: Path) -> None:
    # Read-only commands never create a store: a missing one is an error naming it.
    for command in (["status"], ["watch", "w"], ["reset", "w", "--force"]):
        code, out = await run_cli(command[0], "--url", url, *command[1:])
        assert code == 122, out
        assert f"no SQLite lease store at '{tmp_path / 'leases.db'}'" in out
        assert os.listdir(tmp_path) == []
    await status_and_watch(url)


async def status_and_watch(url: str) -> None:
    """``status`` after a term, and ``watch`` following one, on the store *url* names."""
    code, out = await run_cli("run", "--url", url, "w", "--", "true")
    assert code == 0, out
    code, out = await run_cli("status", "--url", url)
    assert code == 0
    assert "no elections" in out
    async with noleader("watch", "--url", url, "w", "--json") as watcher:
        await watcher.expect('"held": false')
        code, out = await run_cli("run", "--url", url, "w", "--", "sleep", "0.3")
        assert code == 0, out
        held = await watcher.expect(r'"held": true.*"token": (\d+)')
        assert int(held.group(1)) > 0
        # The release, after the held line (not the first line's "held": false).
        held_at = next(i for i, line in enumerate(watcher.lines) if '"held": true' in line)
        await watcher.expect('"held": false', after=held_at + 1)
        watcher.process.send_signal(signal.SIGINT)
        assert await watcher.wait() == 130
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
        (["run", "k", "--", "/etc/passwd"], 126, "Permission denied"),
        (["run", "--url", "sqlite:///proc/no/such/dir/x.db", "k", "--", "true"], 122,
         "the directory '/proc/no/such/dir' does not exist"),
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


# -- conventions: usage, hints, help, exit codes ----------------------------------------


@pytest.mark.parametrize("command", ["run", "status", "watch", "reset", "demo"])
async def test_memory_urls_are_refused_for_every_command(command: str) -> None:
    args = {"run": ["k", "--", "true"], "watch": ["k"], "reset": ["k", "--force"]}
    for spelling in (["--url", "memory://", command], [command, "--url", "memory://"]):
        code, out = await run_cli(*spelling, *args.get(command, []), limit=20)
        assert code == 2, out
        assert f"noleader {command}: error: memory:// is a store inside one process" in out
        assert "sqlite:///" in out


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["run", "--tll", "3", "k", "--", "true"],
         ["usage: noleader run", "unrecognized arguments: --tll", "did you mean --ttl?"]),
        (["status", "--jsn"], ["usage: noleader status", "did you mean --json?"]),
        (["run", "k", "sleep", "5"],
         ["usage: noleader run", "the command goes after --, as in: noleader run KEY -- "
          "sleep 5"]),
        (["run", "k"], ["usage: noleader run", "run needs a command after --"]),
        (["status", "k", "--", "true"], ["only `noleader run` takes a command after --"]),
        (["run", "--ttl", "15", "--grace", "10", "k", "--", "true"],
         ["--grace 10 does not fit --ttl 15", "ttl - guard - renew_interval",
          "15 - 1.5 - 5 = 8.5 s"]),
        (["run", "--ttl", "3", "--grace", "1.7", "k", "--", "true"],
         ["--grace 1.7 does not fit --ttl 3", "= 1.7 s"]),
    ],
)
async def test_usage_errors_name_the_subcommand_and_help(args: list[str], words: list[str],
                                                         url: str) -> None:
    code, out = await run_cli(args[0], "--url", url, *args[1:])
    assert code == 2, out
    for word in words:
        assert word in out, (word, out)
    assert "usage: noleader [-h]" not in out  # the subcommand's usage, not the top level's
    assert "Traceback" not in out


async def test_an_unknown_command_does_not_list_the_internal_one() -> None:
    code, out = await run_cli("stauts")
    assert code == 2
    assert "invalid choice: 'stauts'" in out
    assert "'status'" in out
    assert "_candidate" not in out


async def test_help_texts_and_one_spelling_of_each_option() -> None:
    for command, words in [
        ("run", ["--ttl SECONDS", "--grace SECONDS", "KEY -- CMD", "the election key",
                 "process group", "SIGKILL"]),
        ("status", ["the election key", "exits 122", "3 if one of the KEYs", "--json"]),
        ("watch", ["the election key", "exit 130", "143"]),
        ("reset", ["the election key", "two commands may run", "--force"]),
    ]:
        code, out = await run_cli(command, "--help")
        assert code == 0, out
        for word in words:
            assert word in out, (command, word)
    code, out = await run_cli("run", "--help")
    usage = out.split("\n\n")[0]
    options = out[out.index("options:"):]
    for option in ("--ttl SECONDS", "--grace SECONDS"):
        assert option in usage
        assert option in options


async def test_url_before_the_subcommand_and_the_quoted_start_line(url: str) -> None:
    code, out = await run_cli("--url", url, "run", "k", "--", "sh", "-c", "exit 0")
    assert code == 0, out
    assert "started sh -c 'exit 0' (pid " in out
    code, out = await run_cli("--url", url, "status")
    assert code == 0, out
    assert "no elections in sqlite://" in out
    # After the subcommand wins when both are given.
    code, out = await run_cli("--url", "sqlite:///proc/no/x.db", "status", "--url", url)
    assert code == 0, out


async def test_status_key_is_a_health_check(url: str, tmp_path: Path) -> None:
    log = tmp_path / "job.log"
    async with noleader("run", "--url", url, "--ttl", "5", "job", "--",
                        sys.executable, "-c", JOB, str(log)) as leader:
        await leader.expect("job started")
        assert (await run_cli("status", "--url", url, "job"))[0] == 0
        assert (await run_cli("status", "--url", url, "--json", "job"))[0] == 0
        code, out = await run_cli("status", "--url", url, "job", "other")
        assert code == 3, out
        assert re.search(r"^other +- ", out, re.M), out
        assert (await run_cli("status", "--url", url, "other", "--json"))[0] == 3
        assert (await run_cli("status", "--url", url))[0] == 0  # a listing, not a check
        leader.process.send_signal(signal.SIGTERM)
        assert await leader.wait() == 143
    assert (await run_cli("status", "--url", url, "job"))[0] == 3


async def test_watch_exits_143_on_sigterm(url: str) -> None:
    assert (await run_cli("run", "--url", url, "w", "--", "true"))[0] == 0
    async with noleader("watch", "--url", url, "w") as watcher:
        await watcher.expect("w: no leader")
        watcher.process.send_signal(signal.SIGTERM)
        assert await watcher.wait() == 143


async def test_the_default_store_directory_is_created_on_demand_only(tmp_path: Path) -> None:
    env = {"NOLEADER_URL": "", "XDG_STATE_HOME": str(tmp_path / "state")}
    async with noleader("status", env=env) as proc:
        assert await proc.wait() == 122
    assert f"no store yet at '{tmp_path / 'state' / 'noleader' / 'leases.db'}'" in proc.output
    assert os.listdir(tmp_path) == []
    async with noleader("run", "k", "--", "true", env=env) as proc:
        assert await proc.wait() == 0, proc.output
    state = tmp_path / "state" / "noleader"
    assert (state / "leases.db").is_file()
    assert state.stat().st_mode & 0o777 == 0o700
    async with noleader("status", "--json", env=env) as proc:
        assert await proc.wait() == 0, proc.output
@pytest.mark.postgres
async def test_status_and_watch_on_postgres(postgres_url: str) -> None:
    from .postgres_fixture import drop_tables

    table = f"cli_{os.getpid()}_{time.time_ns()}"
    try:
        # Read-only commands never create the table: twice the same refusal.
        for _ in range(2):
            code, out = await run_cli("status", "--url", f"{postgres_url}?table={table}")
            assert code == 122, out
            assert f"no lease table '{table}'" in out
        await status_and_watch(f"{postgres_url}?table={table}")
    finally:
        await drop_tables(postgres_url, table)
