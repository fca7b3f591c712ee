"""A service whose cron-like scheduler runs on exactly one replica.

The scheduler is embedded in the service's nursery with ``run_as_leader``: the
service does its other work on every replica, while the scheduler runs only where
the lease is held and re-campaigns by itself after a loss.

Run: python examples/scheduler.py [URL]   (default: memory://)
"""

from __future__ import annotations

import os
import sys

import trio

import trio_noleader

URL = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("NOLEADER_URL", "memory://")
SECONDS = float(os.environ.get("NOLEADER_EXAMPLE_SECONDS", "5"))


async def scheduler(replica: str) -> None:
    """The leader-only work: fire a job every second until cancelled."""
    tick = 0
    while True:
        tick += 1
        print(f"[{replica}] scheduler: job #{tick}")
        await trio.sleep(1)


async def serve_requests(replica: str) -> None:
    """Work every replica does, leader or not."""
    while True:
        await trio.sleep(2)
        print(f"[{replica}] served a request")


async def service(replica: str, task_status: trio.TaskStatus[None]) -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve_requests, replica)
        task_status.started()
        lead = await nursery.start(
            lambda task_status: trio_noleader.run_as_leader(
                "cron", scheduler, replica, ttl=3, task_status=task_status))
        print(f"[{replica}] elected scheduler with token {lead.token}")


async def main() -> None:
    async with trio_noleader.open_backend(URL):
        with trio.move_on_after(SECONDS):
            async with trio.open_nursery() as nursery:
                for replica in ("r1", "r2"):
                    await nursery.start(service, replica)
        keys = await trio_noleader.current_leader("cron")
        print("after shutdown the lease is", "released" if keys is None else f"held: {keys}")


if __name__ == "__main__":
    trio.run(main)
