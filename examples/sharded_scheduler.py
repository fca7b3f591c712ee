"""A cron-like scheduler whose jobs spread over the replicas, each job on exactly one.

Every replica calls ``run_sharded`` with the same job list. Each job runs on one
replica at a time, inside its own lease (``current_leadership().token`` is its
fencing token), and the jobs spread evenly: here two replicas start, a third
joins and takes its share, then the first leaves and its jobs move to the others.

Run: python examples/sharded_scheduler.py [URL]   (default: memory://)
"""

from __future__ import annotations

import os
import sys
from collections.abc import Awaitable, Callable

import trio

import trio_noleader

URL = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("NOLEADER_URL", "memory://")
SECONDS = float(os.environ.get("NOLEADER_EXAMPLE_SECONDS", "6"))

#: job name -> period in seconds (a crontab's worth of jobs).
JOBS = {f"report-{i:02d}": 0.5 + (i % 4) * 0.25 for i in range(12)}


RUNS: dict[str, int] = dict.fromkeys(JOBS, 0)


def job(replica: str) -> Callable[[str], Awaitable[None]]:
    async def run(key: str) -> None:
        token = trio_noleader.current_leadership().token
        print(f"[{replica}] took {key} (token {token})")
        while True:
            await trio.sleep(JOBS[key])  # the job's schedule
            RUNS[key] += 1  # the job's work, fenced by token downstream

    return run


async def replica(name: str, task_status: trio.TaskStatus[trio_noleader.ShardGroup]) -> None:
    await trio_noleader.run_sharded("cron", JOBS, job(name), ttl=3, name=name,
                                    task_status=task_status)


async def main() -> None:
    step = SECONDS / 4
    async with trio_noleader.open_backend(URL), trio.open_nursery() as nursery:
        handles: dict[str, trio_noleader.ShardGroup] = {}
        scopes: dict[str, trio.CancelScope] = {}
        for name in ("r1", "r2", "r3"):
            if name == "r3":
                await trio.sleep(step)
                report(handles)
                print("-- r3 joins")
            scope = scopes[name] = trio.CancelScope()

            async def run(name: str = name, scope: trio.CancelScope = scope, *,
                          task_status: trio.TaskStatus[trio_noleader.ShardGroup]) -> None:
                with scope:
                    await replica(name, task_status)

            handles[name] = await nursery.start(run)
        await trio.sleep(step)
        report(handles)
        print("-- r1 leaves")
        scopes["r1"].cancel()
        del handles["r1"]
        await trio.sleep(step)
        report(handles)
        nursery.cancel_scope.cancel()
    print(f"all jobs released; {sum(RUNS.values())} job runs")


def report(handles: dict[str, trio_noleader.ShardGroup]) -> None:
    for name, handle in handles.items():
        print(f"[{name}] runs {len(handle.owned)} jobs: {', '.join(sorted(handle.owned))}")


if __name__ == "__main__":
    trio.run(main)
