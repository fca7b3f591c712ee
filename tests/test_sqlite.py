"""What only the SQLite backend has to prove: one file, many connections, real clock.

The behavioural suite (test_contract.py) runs against SQLite too; these tests cover
what it cannot see: several backend instances (connections) on one file, the file
format, the wall-clock TTL, the polled watch, locking and unusable paths.
"""

from __future__ import annotations

import os
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import (
    AbstractAsyncContextManager,
    AsyncExitStack,
    asynccontextmanager,
    closing,
    contextmanager,
)
from pathlib import Path
from typing import Any

import pytest
import trio

from trio_noleader import (
    BackendUnavailable,
    Entry,
    KeyExists,
    RevisionMismatch,
    SQLiteBackend,
    current_leader,
    hold_leadership,
    open_backend,
)
from trio_noleader import (
    open_sqlite_backend as _open_sqlite_backend,
)
from trio_noleader._urls import path_from_url


# Each test makes a fresh file and none replaces one: the first lease of a store
# need not wait out a ttl here (tests/test_store_identity.py covers that grace).
def open_sqlite_backend(*args: Any, **options: Any) -> AbstractAsyncContextManager[SQLiteBackend]:
    return _open_sqlite_backend(*args, new_store_grace=False, **options)

KEY = "jobs/compactor"


@asynccontextmanager
async def two_backends(db: Path, **options: Any) -> AsyncIterator[tuple[SQLiteBackend,
                                                                          SQLiteBackend]]:
    """Two connections to one file: as two processes would see it."""
    async with open_sqlite_backend(db, **options) as a, open_sqlite_backend(db, **options) as b:
        yield a, b


@contextmanager
def raw(db: Path) -> Iterator[sqlite3.Connection]:
    """A plain sqlite3 connection in autocommit mode: another program on the file."""
    with closing(sqlite3.connect(db, isolation_level=None)) as conn:
        yield conn


async def next_item(updates: AsyncIterator[Entry | None], within: float = 2.0) -> Entry | None:
    with trio.fail_after(within):
        return await anext(updates)


# -- URLs and paths ------------------------------------------------------------------


@pytest.mark.parametrize(("url", "path"), [
    ("sqlite:///abs/path.db", "/abs/path.db"),
    ("sqlite:////double/slash.db", "//double/slash.db"),
    ("sqlite://rel.db", "rel.db"),
    ("sqlite://sub/dir/rel.db", "sub/dir/rel.db"),
    ("sqlite:rel.db", "rel.db"),
    ("sqlite:/abs.db", "/abs.db"),
    ("SQLITE:///abs.db", "/abs.db"),
    ("sqlite:///with%20space.db", "/with space.db"),
])
def test_path_from_url(url: str, path: str) -> None:
    assert path_from_url(url) == path


@pytest.mark.parametrize(("url", "why"), [
    ("sqlite://", "names no file"),
    ("sqlite:", "names no file"),
    ("sqlite:///", "names a directory"),
    ("sqlite:///var/lib/", "names a directory"),
    ("sqlite:///x.db?mode=ro", "unknown parameter 'mode'"),
    ("sqlite:///x.db?new_store_grace=maybe", "none of on, off"),
    ("sqlite:///x.db#frag", "fragments"),
    ("sqlite:///x.db?", "an empty query string"),
    ("sqlite://user:secret@host/x.db", "not a user"),
    ("sqlite:///x%00.db", "NUL"),
    ("memory://", "scheme must be sqlite"),
    ("/plain/path.db", "scheme must be sqlite"),
    ("sqlite://[::1/x.db", "malformed"),
])
def test_path_from_url_rejects_malformed(url: str, why: str) -> None:
    with pytest.raises(ValueError, match="malformed SQLite URL") as info:
        path_from_url(url)
    assert why in str(info.value)
    assert "sqlite:///absolute/path.db" in str(info.value)


def test_path_from_url_rejects_non_str() -> None:
    with pytest.raises(TypeError, match="url must be a str"):
        path_from_url(b"sqlite:///x.db")  # type: ignore[arg-type]


async def test_open_backend_url_creates_the_file_and_sets_default(tmp_path: Path) -> None:
    db = tmp_path / "there.db"
    async with open_backend(f"sqlite://{db}") as backend:
        assert isinstance(backend, SQLiteBackend)
        assert backend.path == str(db)
        assert str(db) in repr(backend)
        assert db.is_file()
        # The contextvar: no backend= needed.
        async with hold_leadership(KEY, ttl=2.0) as lead:
            info = await current_leader(KEY)
            assert info is not None
            assert info.candidate_id == lead.candidate_id
    assert "closed" in repr(backend)


async def test_relative_path_is_taken_from_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub").mkdir()
    async with open_backend("sqlite://sub/rel.db?new_store_grace=off") as backend:
        assert isinstance(backend, SQLiteBackend)
        assert backend.path == str(tmp_path / "sub" / "rel.db")
        await backend.create(KEY, b"x", ttl=5)
    assert (tmp_path / "sub" / "rel.db").is_file()


# -- opening: the file format and unusable paths ---------------------------------------


async def test_file_is_in_wal_mode_with_schema(tmp_path: Path) -> None:
    db = tmp_path / "leases.db"
    async with open_sqlite_backend(db):
        with raw(db) as conn:
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
            tables = {row[0] for row in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'")}
            assert {"noleader_counter", "noleader_lease"} <= tables


@pytest.mark.parametrize("how", ["open_sqlite_backend", "open_backend"])
async def test_a_missing_directory_is_an_error_naming_it(tmp_path: Path, how: str) -> None:
    # A typo in a directory name must not create a store (and an election) of its own.
    db = tmp_path / "typo" / "deeper" / "leases.db"
    opener = (open_sqlite_backend(db) if how == "open_sqlite_backend"
              else open_backend(f"sqlite://{db}"))
    with pytest.raises(BackendUnavailable, match="does not exist") as info:
        async with opener:
            pytest.fail("opened")  # pragma: no cover
    assert repr(str(db.parent)) in str(info.value)
    assert not (tmp_path / "typo").exists()


@pytest.mark.parametrize("how", ["open_sqlite_backend", "open_backend"])
async def test_create_false_never_creates_the_file(tmp_path: Path, how: str) -> None:
    db = tmp_path / "leases.db"

    def opener() -> Any:
        if how == "open_sqlite_backend":
            return open_sqlite_backend(db, create=False)
        return open_backend(f"sqlite://{db}", create=False)

    with pytest.raises(BackendUnavailable, match="no SQLite lease store") as info:
        async with opener():
            pytest.fail("opened")  # pragma: no cover
    assert repr(str(db)) in str(info.value)
    assert os.listdir(tmp_path) == []
    # Once someone has created the store, create=False opens it as it is.
    async with open_sqlite_backend(db) as backend:
        await backend.create(KEY, b"x", ttl=30)
    async with opener() as backend:
        entry = await backend.get(KEY)
        assert entry is not None
        assert entry.value == b"x"


async def test_create_must_be_a_bool(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="create must be a bool, got str"):
        async with _open_sqlite_backend(tmp_path / "x.db", create="no"):  # type: ignore[arg-type]
            pytest.fail("opened")  # pragma: no cover
    assert os.listdir(tmp_path) == []


async def test_a_directory_is_refused_naming_the_path(tmp_path: Path) -> None:
    with pytest.raises(BackendUnavailable, match="is a directory") as info:
        async with open_sqlite_backend(tmp_path):
            pytest.fail("opened a directory")  # pragma: no cover
    assert str(tmp_path) in str(info.value)


async def test_a_file_in_place_of_the_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    db = tmp_path / "file" / "leases.db"
    with pytest.raises(BackendUnavailable) as info:
        async with open_sqlite_backend(db):
            pytest.fail("opened under a file")  # pragma: no cover
    assert str(db) in str(info.value)
    assert isinstance(info.value.__cause__, OSError)


async def test_a_file_that_is_not_a_database_is_refused_and_left_alone(tmp_path: Path) -> None:
    db = tmp_path / "notes.txt"
    content = b"these are my notes, not a database\n" * 200
    db.write_bytes(content)
    with pytest.raises(BackendUnavailable) as info:
        async with open_sqlite_backend(db):
            pytest.fail("opened a text file")  # pragma: no cover
    assert str(db) in str(info.value)
    assert isinstance(info.value.__cause__, sqlite3.DatabaseError)
    assert db.read_bytes() == content


async def test_another_programs_database_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "app.db"
    with raw(db) as conn:
        conn.execute("PRAGMA user_version = 7")
    with pytest.raises(BackendUnavailable, match="user_version is 7"):
        async with open_sqlite_backend(db):
            pytest.fail("opened a foreign database")  # pragma: no cover


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0,
                    reason="needs POSIX permissions and a non-root user")
async def test_a_directory_without_permission_is_refused(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        with pytest.raises(BackendUnavailable) as info:
            async with open_sqlite_backend(locked / "leases.db"):
                pytest.fail("opened in a read-only directory")  # pragma: no cover
        assert str(locked / "leases.db") in str(info.value)
    finally:
        locked.chmod(0o700)


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux /proc")
@pytest.mark.parametrize("path", ["/proc/leases.db", "/proc/noleader/leases.db"])
async def test_a_path_nobody_can_write_is_refused(path: str) -> None:
    # /proc refuses new files even to root, so this runs where permissions cannot.
    with pytest.raises(BackendUnavailable, match="cannot open SQLite database") as info:
        async with open_sqlite_backend(path):
            pytest.fail("opened under /proc")  # pragma: no cover
    assert repr(path) in str(info.value)
    assert info.value.__cause__ is not None


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"path": ""}, ValueError, "must be the path of a database file"),
    ({"path": ":memory:"}, ValueError, "memory://"),
    ({"path": "file:x.db?mode=ro"}, ValueError, "not empty, a URI"),
    ({"path": b"/tmp/x.db"}, TypeError, "path must be a str"),
    ({"path": 3}, TypeError, "path must be a str"),
    ({"path": "x.db", "poll_interval": 0}, ValueError, "poll_interval=0"),
    ({"path": "x.db", "poll_interval": float("nan")}, ValueError, "poll_interval=nan"),
    ({"path": "x.db", "busy_timeout": -1}, ValueError, "busy_timeout=-1"),
    ({"path": "x.db", "busy_timeout": "5"}, TypeError, "busy_timeout must be a number"),
])
async def test_bad_arguments_raise_before_io(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kwargs: dict[str, object],
    error: type[Exception], match: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(error, match=match):
        async with _open_sqlite_backend(**kwargs):  # type: ignore[arg-type]
            pytest.fail("opened")  # pragma: no cover
    assert not any(await trio.to_thread.run_sync(lambda: list(tmp_path.iterdir())))


async def test_bad_keys_and_ttls_raise_before_io(tmp_path: Path) -> None:
    async with open_sqlite_backend(tmp_path / "leases.db") as backend:
        with pytest.raises(ValueError, match="invalid key"):
            await backend.create("has space", b"x", ttl=1)
        with pytest.raises(ValueError, match="invalid key"):
            backend.watch(".hidden")
        with pytest.raises(ValueError, match="ttl=0"):
            await backend.create(KEY, b"x", ttl=0)
        with pytest.raises(ValueError, match="ttl=inf"):
            await backend.update(KEY, b"x", revision=1, ttl=float("inf"))
        assert await backend.keys() == []


async def test_closed_backend_refuses_calls(tmp_path: Path) -> None:
    async with open_sqlite_backend(tmp_path / "leases.db") as backend:
        await backend.create(KEY, b"x", ttl=5)
    with pytest.raises(trio.ClosedResourceError):
        await backend.get(KEY)
    with pytest.raises(trio.ClosedResourceError):
        backend.watch(KEY)
    await backend.aclose()  # idempotent
    assert "closed" in repr(backend)


# -- revisions, compare-and-set across connections -------------------------------------


async def test_revisions_strictly_increase_across_instances_keys_and_reopening(
    tmp_path: Path,
) -> None:
    db = tmp_path / "leases.db"
    revisions: list[int] = []
    async with two_backends(db) as (a, b):
        for i in range(6):
            writer, other = (a, b) if i % 2 else (b, a)
            key = f"k{i % 3}"
            rev = await writer.create(key, b"v", ttl=5)
            revisions.append(rev)
            rev = await other.update(key, b"w", revision=rev, ttl=5)
            revisions.append(rev)
            entry = await writer.get(key)
            assert entry is not None
            assert entry.revision == rev
            await writer.delete(key, revision=rev)
    # The counter lives in the file: a new connection continues from it.
    async with open_sqlite_backend(db) as c:
        revisions.append(await c.create("k0", b"v", ttl=5))
    assert revisions == sorted(set(revisions)), revisions
    assert revisions[0] >= 1


async def test_compare_and_set_across_instances(tmp_path: Path) -> None:
    async with two_backends(tmp_path / "leases.db") as (a, b):
        rev = await a.create(KEY, b"a", ttl=5)
        with pytest.raises(KeyExists):
            await b.create(KEY, b"b", ttl=5)
        new = await b.update(KEY, b"b", revision=rev, ttl=5)
        # a's view is stale now: its CAS writes must fail and change nothing.
        with pytest.raises(RevisionMismatch, match=f"expected revision {rev}, found {new}"):
            await a.update(KEY, b"a2", revision=rev, ttl=5)
        with pytest.raises(RevisionMismatch):
            await a.delete(KEY, revision=rev)
        entry = await a.get(KEY)
        assert entry is not None
        assert (entry.value, entry.revision) == (b"b", new)
        await a.delete(KEY, revision=new)
        assert await b.get(KEY) is None
        with pytest.raises(RevisionMismatch, match="found nothing"):
            await b.delete(KEY, revision=new)


async def test_concurrent_creates_from_two_instances_exactly_one_wins(tmp_path: Path) -> None:
    keys = [f"race/{i}" for i in range(20)]
    outcomes: dict[tuple[str, str], int | None] = {}
    async with two_backends(tmp_path / "leases.db") as (a, b):

        async def create(backend: SQLiteBackend, name: str, key: str) -> None:
            try:
                outcomes[key, name] = await backend.create(key, name.encode(), ttl=5)
            except KeyExists:
                outcomes[key, name] = None

        async with trio.open_nursery() as nursery:
            for key in keys:
                nursery.start_soon(create, a, "a", key)
                nursery.start_soon(create, b, "b", key)
        for key in keys:
            won = [name for name in "ab" if outcomes[key, name] is not None]
            assert len(won) == 1, (key, outcomes)
            for backend in (a, b):
                entry = await backend.get(key)
                assert entry is not None
                assert entry.value == won[0].encode()
                assert entry.revision == outcomes[key, won[0]]


# -- the wall-clock TTL --------------------------------------------------------------


async def test_expiry_is_seen_by_a_watcher_and_by_get(tmp_path: Path) -> None:
    ttl = 0.4
    # A long poll interval: the watcher must wake for the expiry on its own.
    async with two_backends(tmp_path / "leases.db", poll_interval=30) as (a, b):
        before = time.time()
        rev = await a.create(KEY, b"v", ttl=ttl)
        after = time.time()
        async with b.watch(KEY) as updates:
            entry = await next_item(updates)
            assert entry is not None
            assert entry.revision == rev
            assert entry.expires_in is not None
            assert 0 < entry.expires_in <= ttl
            assert await next_item(updates, within=ttl + 2) is None
            seen_none = time.time()
        assert before + ttl <= seen_none <= after + ttl + 0.25, (seen_none - before)
        assert await a.get(KEY) is None
        assert await b.get(KEY) is None
        assert await a.keys() == []
        # Expired counts as absent for writes too.
        with pytest.raises(RevisionMismatch, match="found nothing"):
            await a.update(KEY, b"v", revision=rev, ttl=ttl)
        with pytest.raises(RevisionMismatch, match="found nothing"):
            await a.delete(KEY, revision=rev)
        assert await b.create(KEY, b"w", ttl=5) > rev


async def test_renewal_restarts_the_ttl_and_fills_expires_in(tmp_path: Path) -> None:
    async with open_sqlite_backend(tmp_path / "leases.db") as backend:
        rev = await backend.create(KEY, b"v", ttl=0.5)
        entry = await backend.get(KEY)
        assert entry is not None
        assert entry.expires_in is not None
        assert 0.3 < entry.expires_in <= 0.5
        rev = await backend.update(KEY, b"v", revision=rev, ttl=60)
        entry = await backend.get(KEY)
        assert entry is not None
        assert entry.expires_in is not None
        assert 59 < entry.expires_in <= 60


async def test_keys_are_sorted_and_live_only(tmp_path: Path) -> None:
    async with open_sqlite_backend(tmp_path / "leases.db") as backend:
        for key in ("b", "a/x", "c"):
            await backend.create(key, b"v", ttl=30)
        await backend.create("short", b"v", ttl=0.1)
        assert await backend.keys() == ["a/x", "b", "c", "short"]
        async with backend.watch("short") as updates:
            while await next_item(updates) is not None:
                pass
        assert await backend.keys() == ["a/x", "b", "c"]


# -- watching ------------------------------------------------------------------------


async def test_watch_sees_other_connections_writes_and_a_vacancy_between_polls(
    tmp_path: Path,
) -> None:
    async with (
        two_backends(tmp_path / "leases.db", poll_interval=0.2) as (watcher, writer),
        watcher.watch(KEY) as updates,
    ):
        assert await next_item(updates) is None
        rev1 = await writer.create(KEY, b"1", ttl=30)
        first = await next_item(updates)
        assert first is not None
        assert first.revision == rev1
        # A renewal is a new entry, not a vacancy.
        rev2 = await writer.update(KEY, b"2", revision=rev1, ttl=30)
        renewed = await next_item(updates)
        assert renewed is not None
        assert (renewed.revision, renewed.value) == (rev2, b"2")
        # Delete and re-create back to back, well within one poll interval: the
        # watcher may never see the row missing, yet must report the vacancy.
        await writer.delete(KEY, revision=rev2)
        rev3 = await writer.create(KEY, b"3", ttl=30)
        items = [await next_item(updates)]
        while items[-1] is None:
            items.append(await next_item(updates))
        assert len(items) >= 2, items
        last = items[-1]
        assert last is not None
        assert (last.revision, last.value) == (rev3, b"3")


async def test_own_writes_wake_watchers_without_polling(tmp_path: Path) -> None:
    async with (
        open_sqlite_backend(tmp_path / "leases.db", poll_interval=30) as backend,
        backend.watch(KEY) as updates,
    ):
        assert await next_item(updates) is None
        rev = await backend.create(KEY, b"v", ttl=30)
        entry = await next_item(updates, within=1)
        assert entry is not None
        assert entry.revision == rev
        await backend.delete(KEY, revision=rev)
        assert await next_item(updates, within=1) is None


async def test_many_watchers_on_one_backend_see_each_change(tmp_path: Path) -> None:
    async with two_backends(tmp_path / "leases.db", poll_interval=0.02) as (watcher, writer):
        seen: dict[int, list[int | None]] = {i: [] for i in range(5)}
        progress = trio.Event()

        async def watch(i: int, task_status: trio.TaskStatus[None]) -> None:
            nonlocal progress
            async with watcher.watch(KEY) as updates:
                task_status.started()
                async for entry in updates:
                    seen[i].append(None if entry is None else entry.revision)
                    progress.set()
                    progress = trio.Event()
                    if len(seen[i]) == 3:
                        return

        async def until(n: int) -> None:
            while min(len(items) for items in seen.values()) < n:
                await progress.wait()

        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                for i in range(5):
                    await nursery.start(watch, i)
                await until(1)
                rev = await writer.create(KEY, b"v", ttl=30)
                await until(2)
                await writer.delete(KEY, revision=rev)
        assert seen == {i: [None, rev, None] for i in range(5)}


# -- locking and ambiguity -----------------------------------------------------------


async def test_a_locked_file_raises_backend_unavailable_and_reads_go_on(tmp_path: Path) -> None:
    db = tmp_path / "leases.db"
    async with open_sqlite_backend(db, busy_timeout=0.1) as backend:
        rev = await backend.create(KEY, b"v", ttl=30)
        with raw(db) as other:
            other.execute("BEGIN IMMEDIATE")
            with pytest.raises(BackendUnavailable, match="locked") as info:
                await backend.update(KEY, b"w", revision=rev, ttl=30)
            assert isinstance(info.value.__cause__, sqlite3.OperationalError)
            assert str(db) in str(info.value)
            # WAL: readers do not wait for the writer.
            entry = await backend.get(KEY)
            assert entry is not None
            assert entry.revision == rev
            other.execute("ROLLBACK")
        assert await backend.update(KEY, b"w", revision=rev, ttl=30) > rev


async def test_a_cancelled_write_stops_waiting_and_frees_the_connection(
    tmp_path: Path,
) -> None:
    db = tmp_path / "leases.db"
    async with open_sqlite_backend(db, busy_timeout=10) as backend:
        with raw(db) as other:
            other.execute("BEGIN IMMEDIATE")
            with trio.move_on_after(0.2) as scope:
                await backend.create(KEY, b"late", ttl=30)
            assert scope.cancelled_caught
            # The abandoned worker gives up within one busy slice instead of holding
            # the connection for the whole busy timeout: a read gets through at once.
            with trio.fail_after(1):
                assert await backend.get(KEY) is None
            other.execute("ROLLBACK")
        # The cancelled create was never applied, even now that the lock is free.
        assert await backend.get(KEY) is None
        assert await backend.keys() == []


async def test_an_abandoned_write_that_lands_is_seen_by_watchers(tmp_path: Path) -> None:
    db = tmp_path / "leases.db"
    async with (
        two_backends(db, poll_interval=0.02) as (backend, b),
        backend.watch(KEY) as updates,
    ):
        assert await next_item(updates) is None
        # Seeing b's writes proves the poller has its baseline: from here on only
        # a change to the file wakes the watcher.
        rev = await b.create(KEY, b"b", ttl=30)
        assert await next_item(updates) is not None
        await b.delete(KEY, revision=rev)
        assert await next_item(updates) is None

        def slow_create(conn: sqlite3.Connection) -> int:
            # A write already past the lock when its caller gives up (a slow disk,
            # say) still lands: the ambiguity the election core resolves by reading.
            time.sleep(0.3)
            return backend._create_sync(KEY, b"late", 30.0, conn)

        with trio.move_on_after(0.05) as scope:
            await backend._run(slow_create, write=True)
        assert scope.cancelled_caught
        # No caller was told of this commit; the poller counts it all the same.
        entry = await next_item(updates, within=5)
        assert entry is not None
        assert entry.value == b"late"


# -- values that are not ours --------------------------------------------------------


@pytest.mark.parametrize("value", [b"\x00garbage", "text written by another tool"])
async def test_foreign_values_are_reported_and_left_alone(
    tmp_path: Path, value: bytes | str,
) -> None:
    db = tmp_path / "leases.db"
    async with open_sqlite_backend(db) as backend:
        with raw(db) as conn:
            # Another program writes the lease table directly, with its own value.
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("UPDATE noleader_counter SET revision = revision + 1")
            (rev,) = conn.execute("SELECT revision FROM noleader_counter").fetchone()
            conn.execute("INSERT INTO noleader_lease VALUES (?, ?, ?, ?, ?)",
                         (KEY, value, rev, rev, time.time() + 600))
            conn.execute("COMMIT")
        info = await current_leader(KEY, backend=backend)
        assert info is not None
        assert info.candidate_id is None
        assert info.token == info.revision == rev
        with pytest.raises(trio.WouldBlock):
            async with hold_leadership(KEY, backend=backend, ttl=1.0, wait=False):
                pytest.fail("elected over a foreign holder")  # pragma: no cover
        with trio.move_on_after(0.5) as scope:
            async with hold_leadership(KEY, backend=backend, ttl=1.0):
                pytest.fail("elected over a foreign holder")  # pragma: no cover
        assert scope.cancelled_caught
        with raw(db) as conn:
            row = conn.execute("SELECT value, revision FROM noleader_lease WHERE key = ?",
                               (KEY,)).fetchone()
        assert tuple(row) == (value, rev)


async def test_a_leader_across_two_instances_is_one_leader(tmp_path: Path) -> None:
    db = tmp_path / "leases.db"
    async with AsyncExitStack() as stack:
        a = await stack.enter_async_context(open_sqlite_backend(db, poll_interval=0.01))
        b = await stack.enter_async_context(open_sqlite_backend(db, poll_interval=0.01))
        with trio.fail_after(10):
            async with hold_leadership(KEY, backend=a, ttl=1.0) as lead_a:
                with pytest.raises(trio.WouldBlock):
                    async with hold_leadership(KEY, backend=b, ttl=1.0, wait=False):
                        pytest.fail("two leaders")  # pragma: no cover
                info = await current_leader(KEY, backend=b)
                assert info is not None
                assert info.candidate_id == lead_a.candidate_id
                assert isinstance(info.candidate_id, uuid.UUID)
            async with hold_leadership(KEY, backend=b, ttl=1.0, wait=False) as lead_b:
                assert lead_b.token > lead_a.token
