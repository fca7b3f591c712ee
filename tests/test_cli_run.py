"""``noleader run`` at the edges, with real processes: exactly one command at a time.

Each command prints its fencing token and the wall-clock time every 0.1 s, so the
tests read "who ran when" from what the commands themselves wrote, not from what
noleader says. The default versions use short leases (ttl 3 s); NOLEADER_LONG=1
adds the same with noleader's defaults (ttl 15 s, grace 5 s).
"""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import pytest
import trio

from trio_noleader import open_sqlite_backend

from .cli_procs import Proc, death_of, noleader, run_cli

LONG = os.environ.get("NOLEADER_LONG") == "1"

#: Ignores SIGTERM; prints "TOKEN TIME" every 0.1 s until SIGKILLed.
STUBBORN = ('trap "" TERM; while :; do echo "tick $NOLEADER_TOKEN $(date +%s.%N)"; '
            'sleep 0.1; done')


def ticks(proc: Proc) -> list[tuple[int, float]]:
    """``(token, time)`` of every line the command printed."""
    return [(int(m.group(1)), float(m.group(2))) for line in proc.lines
            if (m := re.fullmatch(r"tick (\d+) (\d+\.\d+)", line))]


def noleader_lines(proc: Proc) -> list[str]:
    return [line for line in proc.lines if line.startswith("noleader:")]


def assert_nothing_said_twice(proc: Proc) -> None:
    lines = noleader_lines(proc)
    assert len(lines) == len(set(lines)), lines
    assert "Traceback" not in proc.output


@pytest.mark.parametrize("timing", [
    pytest.param(("6", "2.5"), id="ttl6-grace2.5"),
    pytest.param((None, None), id="defaults", marks=[
        pytest.mark.slow,
        pytest.mark.skipif(not LONG, reason="ttl 15: set NOLEADER_LONG=1")]),
])
async def test_sigterm_keeps_the_lease_until_the_command_has_exited(
    tmp_path: Path, timing: tuple[str | None, str | None]
) -> None:
    db = tmp_path / "leases.db"
    url = f"sqlite://{db}?new_store_grace=off"
    ttl, grace = timing
    options = [*(["--ttl", ttl] if ttl else []), *(["--grace", grace] if grace else [])]
    ttl_s = float(ttl) if ttl else 15.0
    grace_s = float(grace) if grace else ttl_s / 3
    command = ["run", "--url", url, *options, "job", "--", "sh", "-c", STUBBORN]
    async with noleader(*command) as first, open_sqlite_backend(db) as store, \
            store.watch("job") as entries:
        await first.expect("^tick ")
        async with noleader(*command) as second:
            # A second of the first command's ticks: time for the second noleader
            # to start and campaign, so that it is ready to take over.
            for _ in range(10):
                await first.expect("^tick ", after=len(first.lines))
            signalled = time.time()
            first.process.send_signal(signal.SIGTERM)
            entry = await store.get("job")
            assert entry is not None
            if grace_s > ttl_s / 3:
                # While the command winds down, the lease is still renewed (a
                # renewal every ttl/3 comes within the grace).
                with trio.fail_after(grace_s):
                    async for renewed in entries:
                        if renewed is None or renewed.revision > entry.revision:
                            break
                assert renewed is not None
                assert renewed.value[:16] == entry.value[:16]  # the same candidate
            assert await first.wait(limit=grace_s + 10) == 128 + signal.SIGTERM
            await second.expect("^tick ", limit=20)
            second.process.kill()  # its supervisor SIGKILLs the tree
            await second.wait()
    old, new = ticks(first), ticks(second)
    assert {token for token, _ in old} != {token for token, _ in new}
    # The first command ran on through its grace (it ignores SIGTERM), under the
    # lease: the second started only after its last line.
    assert max(t for _, t in old) > signalled + grace_s / 2, (signalled, old[-3:])
    assert max(t for _, t in old) < min(t for _, t in new), (old[-3:], new[:3])
    said = first.output
    assert "got SIGTERM: stopping the command (SIGTERM now, SIGKILL in" in said
    assert "the lease is kept until it has exited" in said
    assert f"did not exit {grace_s:g} s after SIGTERM: sending SIGKILL" in said
    assert_nothing_said_twice(first)


async def test_a_second_signal_kills_at_once(tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path / 'leases.db'}?new_store_grace=off"
    async with noleader("run", "--url", url, "--ttl", "30", "--grace", "10", "job", "--",
                        "sh", "-c", STUBBORN) as proc:
        await proc.expect("^tick ")
        proc.process.send_signal(signal.SIGINT)
        await proc.expect("got SIGINT: stopping the command")
        again = time.time()
        proc.process.send_signal(signal.SIGINT)
        assert await proc.wait(limit=8) == 128 + signal.SIGINT
    assert "got SIGINT again: sending SIGKILL" in proc.output
    assert max(t for _, t in ticks(proc)) < again + 2  # not the 10 s grace


def _started_pid(proc: Proc) -> int:
    match = re.search(r"started .* \(pid (\d+)\)$", proc.output, re.M)
    assert match, proc.output
    return int(match.group(1))


async def test_no_process_of_the_tree_outlives_a_sigkilled_noleader(tmp_path: Path) -> None:
    # A grandchild in the command's group, and one that left it (setsid, its parent
    # gone: re-parented). PR_SET_PDEATHSIG alone would leave both running.
    tree = ('sleep 300 & a=$!; '
            'b=$(setsid sh -c \'sleep 301 >/dev/null 2>&1 & echo $!\'); '
            'echo "children $a $b"; wait')
    url = f"sqlite://{tmp_path / 'leases.db'}?new_store_grace=off"
    async with noleader("run", "--url", url, "job", "--", "sh", "-c", tree) as proc:
        children = await proc.expect(r"^children (\d+) (\d+)$")
        pids = [_started_pid(proc), int(children.group(1)), int(children.group(2))]
        for pid in pids:
            os.kill(pid, 0)  # all running
        proc.process.kill()
        await proc.wait()
    with trio.fail_after(5):
        for pid in pids:
            await death_of(pid)


async def test_what_the_command_leaves_behind_is_stopped_before_the_release(
    tmp_path: Path
) -> None:
    url = f"sqlite://{tmp_path / 'leases.db'}?new_store_grace=off"
    code, out = await run_cli("run", "--url", url, "job", "--", "sh", "-c",
                              'sleep 300 & echo "child $!"; exit 3')
    assert code == 3, out
    assert "the command exited, leaving 1 process of its own running" in out
    found = re.search(r"child (\d+)", out)
    assert found, out
    pid = int(found.group(1))
    with trio.fail_after(1):
        await death_of(pid)  # already gone when noleader exited


async def test_a_reset_costs_about_a_second_of_two_commands_not_a_renewal(
    tmp_path: Path
) -> None:
    # ttl 15: a renewal every 5 s; the look at the key every second notices first.
    url = f"sqlite://{tmp_path / 'leases.db'}?new_store_grace=off"
    polite = ('trap "exit 0" TERM; while :; do echo "tick $NOLEADER_TOKEN $(date +%s.%N)"; '
              'sleep 0.1; done')
    command = ["run", "--url", url, "job", "--", "sh", "-c", polite]
    async with noleader(*command) as first:
        await first.expect("^tick ")
        async with noleader(*command) as second:
            for _ in range(10):  # time for the second noleader to campaign
                await first.expect("^tick ", after=len(first.lines))
            code, out = await run_cli("reset", "--url", url, "job", "--force")
            assert code == 0, out
            assert await first.wait(limit=10) == 120
            await second.expect("^tick ")
            second.process.send_signal(signal.SIGTERM)
            assert await second.wait() == 128 + signal.SIGTERM
    old, new = ticks(first), ticks(second)
    overlap = max(t for _, t in old) - min(t for _, t in new)
    # The second command starts at once; the first stops at the next look (1 s)
    # plus its own exit, not at the next renewal (up to 5 s).
    assert 0 < overlap < 2.5, overlap
    said = first.output
    assert "on job (reset by an operator?), not our lease: stopping the command" in said
    assert "the lease is kept" not in said
    assert_nothing_said_twice(first)


@pytest.mark.nats
async def test_failing_renewals_stop_the_command_before_the_lease_deadline(
    tmp_path: Path
) -> None:
    from .nats_fixture import nats_server

    ttl, grace = 3.0, 0.5
    guard = ttl / 10
    with nats_server(tmp_path / "nats") as server:
        url = f"{server.url}/run_{os.getpid()}?new_store_grace=off"
        assert server.process is not None
        async with noleader("run", "--url", url, "--ttl", str(ttl), "--grace", str(grace),
                            "job", "--", "sh", "-c", STUBBORN) as proc:
            await proc.expect("^tick ")
            await trio.sleep(ttl / 2)  # a renewal or so, under way
            stopped = time.time()
            os.kill(server.process.pid, signal.SIGSTOP)
            try:
                assert await proc.wait(limit=30) == 120
            finally:
                os.kill(server.process.pid, signal.SIGCONT)
        pid = _started_pid(proc)
        with trio.fail_after(1):
            await death_of(pid)
    last = max(t for _, t in ticks(proc))
    # The last renewal the server applied was sent before it stopped, so the local
    # deadline (and the store's expiry, later still) is at most stopped + ttl - guard.
    assert last < stopped + ttl - guard, (stopped, last)
    said = proc.output
    assert "renewals are failing" in said
    assert "SIGKILL" in said
    assert_nothing_said_twice(proc)
    # The library says the lease is lost; noleader says what it did, not that again.
    assert said.count("lost leadership") <= 1, said
    assert said.count("renewals did not succeed") <= 1, said
