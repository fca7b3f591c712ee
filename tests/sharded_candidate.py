"""One replica process for tests/test_sharded_multiprocess.py and the sharded benchmark.

Usage (from the repository's root):
``python -m tests.sharded_candidate URL NAME TTL NKEYS [WRITE_EVERY]``.

Runs ``run_sharded("shards", job-000 .. job-NNN, ...)`` until a line arrives on
stdin (or stdin closes), then leaves (drain-then-release) and exits. Logs one JSON
line per step, stamped with :func:`time.time`: ``joined``; ``start``/``stop`` with
the key and its fencing token (``stop`` as the job is cancelled, before its
release); ``write`` (each job writes its token every WRITE_EVERY seconds, for a
fenced recorder replayed by the test); ``owned`` (the count, on every change);
``exit``.
"""

from __future__ import annotations

import json
import sys
import time

import trio

from trio_noleader import current_leadership, open_backend, run_sharded

from .lease_candidate import until_told


def report(name: str, event: str, **fields: object) -> None:
    print(json.dumps({"name": name, "event": event, "time": time.time(), **fields}),
          flush=True)


async def main(url: str, name: str, ttl: float, nkeys: int, write_every: float) -> int:
    keys = [f"job-{i:03d}" for i in range(nkeys)]

    async def job(key: str) -> None:
        token = current_leadership().token
        report(name, "start", key=key, token=token)
        try:
            while True:
                if write_every > 0:
                    report(name, "write", key=key, token=token)
                    await trio.sleep(write_every)
                else:
                    await trio.sleep_forever()
        finally:
            report(name, "stop", key=key, token=token)

    async with open_backend(url), trio.open_nursery() as nursery:
        handle = await nursery.start(lambda task_status: run_sharded(
            "shards", keys, job, ttl=ttl, name=name, task_status=task_status))
        report(name, "joined")

        async def counts() -> None:
            last = -1
            while True:
                if len(handle.owned) != last:
                    last = len(handle.owned)
                    report(name, "owned", count=last, members=len(handle.members))
                await trio.sleep(0.05)

        nursery.start_soon(counts)
        await until_told()
        nursery.cancel_scope.cancel()
    report(name, "exit")
    return 0


if __name__ == "__main__":
    url, name, ttl, nkeys = sys.argv[1:5]
    every = float(sys.argv[5]) if len(sys.argv) > 5 else 0.5
    sys.exit(trio.run(main, url, name, float(ttl), int(nkeys), every))
