"""Any number of processes may open a fresh SQLite store at once.

Eight processes open one fresh file at the same moment, with a CPU hog running,
again and again: every open succeeds (the switch to WAL and the schema's creation
retry while another process holds the file) and every process then takes part in
the election. ``NOLEADER_LONG=1`` repeats it 50 times instead of 6.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from .harness import ROOT, lines, script

PROCESSES = 8
ROUNDS = 50 if os.environ.get("NOLEADER_LONG") else 6

pytestmark = pytest.mark.skipif(os.name != "posix", reason="uses POSIX processes")


async def one_round(db: Path) -> list[dict[str, object]]:
    events: list[dict[str, object]] = []
    url = f"sqlite://{db}?new_store_grace=off"
    procs = [await trio.lowlevel.open_process(
        script("open_race_candidate", url, f"p{i}"), cwd=ROOT,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE) for i in range(PROCESSES)]
    try:
        async with trio.open_nursery() as nursery:
            async def read(proc: trio.Process) -> None:
                assert proc.stdout is not None
                async for line in lines(proc.stdout):
                    events.append(json.loads(line))

            for proc in procs:
                nursery.start_soon(read, proc)
            # Every process is started (and has imported trio_noleader): go, all at once.
            for proc in procs:
                assert proc.stdin is not None
                await proc.stdin.send_all(b"go\n")
            with trio.fail_after(60):
                for proc in procs:
                    await proc.wait()
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
            with trio.CancelScope(shield=True):
                await proc.wait()
    assert [p.returncode for p in procs] == [0] * PROCESSES, events
    return events


async def test_many_processes_open_a_fresh_file_at_once(tmp_path: Path) -> None:
    hog = await trio.lowlevel.open_process([sys.executable, "-c", "while True: pass"])
    try:
        for round_ in range(ROUNDS):
            db = tmp_path / f"round{round_}" / "leases.db"
            db.parent.mkdir()
            events = await one_round(db)
            failed = [e for e in events if e["event"] == "failed"]
            assert failed == []
            assert sorted(str(e["name"]) for e in events if e["event"] == "opened") == sorted(
                f"p{i}" for i in range(PROCESSES))
            tokens = [e["token"] for e in events if e["event"] == "led"]
            assert len(tokens) == PROCESSES  # everyone took part, one at a time
            assert len(set(tokens)) == PROCESSES
    finally:
        hog.kill()
        await hog.wait()
