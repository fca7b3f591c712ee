"""One replica of the sharded benchmark: ``python -m benchmarks._sharded_worker URL NAME TTL N``.

Runs ``run_sharded("bench-shards", N keys, ...)`` through a counting wrapper of the
backend. Prints JSON lines: ``joined``; ``owned`` on every change of its key set
(the count and the keys added and removed, stamped with ``time.time()``);
``tick`` every second (this process's CPU seconds and store calls so far). Leaves
(drain-then-release) and exits when stdin closes. With ``NOLEADER_BENCH_DEBUG``
set it logs at DEBUG (claims, listings, elections) into its stderr log.
"""

from __future__ import annotations

import logging
import os
import sys
import time

import trio

import trio_noleader

from ._common import DEBUG_ENV
from ._worker import counted_backend, cpu_seconds, emit, wait_for_stdin_line


async def main(url: str, name: str, ttl: float, n: int) -> None:
    keys = [f"shard-{i:04d}" for i in range(n)]

    async def job(key: str) -> None:
        await trio.sleep_forever()

    async with counted_backend(url, on_wire=False) as (_, backend, _wire), \
            trio.open_nursery() as nursery:
        handle: trio_noleader.ShardGroup = await nursery.start(
            lambda task_status: trio_noleader.run_sharded(
                "bench-shards", keys, job, backend=backend, ttl=ttl, name=name,
                task_status=task_status))
        emit(event="joined", name=name, t=time.time())

        async def watch_owned() -> None:
            last: frozenset[str] = frozenset()
            while True:
                now = handle.owned
                if now != last:
                    emit(event="owned", name=name, t=time.time(), count=len(now),
                         added=sorted(now - last), removed=sorted(last - now))
                    last = now
                await trio.sleep(0.02)

        async def ticks() -> None:
            while True:
                emit(event="tick", name=name, t=time.time(), cpu=cpu_seconds(),
                     calls=backend.store_calls(), renewals=backend.renewals(),
                     members=len(handle.members))
                await trio.sleep(1.0)

        nursery.start_soon(watch_owned)
        nursery.start_soon(ticks)
        await wait_for_stdin_line()
        nursery.cancel_scope.cancel()


if __name__ == "__main__":
    if os.environ.get(DEBUG_ENV):
        # Into the worker's stderr log, stamped like the JSON lines (time.time()).
        logging.basicConfig(level=logging.DEBUG, format="%(created).3f %(message)s")
    url, name, ttl, n = sys.argv[1:5]
    trio.run(main, url, name, float(ttl), int(n))
