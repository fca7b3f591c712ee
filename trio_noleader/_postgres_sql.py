"""The PostgreSQL lease table: its names and its SQL text (pure, no I/O).

Nothing here imports asyncpg: the SQL can be read (and the benchmarks' raw
baseline can run it) in one place. URLs and table names are checked in ``_urls``.

The schema (``table`` defaults to ``noleader_leases``)::

    CREATE SEQUENCE <table>_revision AS bigint;    -- starts at the wall clock in us
    CREATE TABLE <table> (
        key        text PRIMARY KEY,
        value      bytea NOT NULL,
        revision   bigint NOT NULL,                 -- from the sequence, every write
        term       bigint NOT NULL,                 -- revision of the create: the token
        expires_at timestamptz NOT NULL             -- by the server's clock
    );

A row whose ``expires_at`` has passed is absent to every statement. A delete
leaves the row in place with ``expires_at = '-infinity'``, so that the next create
of the key is an update of that row under its row lock: its revision is then drawn
after every earlier write of the key has committed, and tokens grow strictly per key
even when writers race.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ._urls import MAX_IDENTIFIER, SEQUENCE_SUFFIX

__all__ = ["TableNames", "regclass_literal", "schema_sql", "shape_problems"]

#: The columns of the lease table, as ``format_type`` spells their types.
COLUMNS: dict[str, str] = {
    "key": "text",
    "value": "bytea",
    "revision": "bigint",
    "term": "bigint",
    "expires_at": "timestamp with time zone",
}

#: Values up to this many bytes travel in the NOTIFY payload (which holds < 8000);
#: a watcher reads longer ones back.
NOTIFY_VALUE_LIMIT = 1000

#: First argument of ``pg_advisory_xact_lock(int, int)`` while creating the schema
#: ("nl" in ASCII); the second is a hash of the table's name.
ADVISORY_LOCK_CLASS = 0x6E6C


def _quote(*parts: str) -> str:
    # Safe: every part matched _IDENTIFIER_RE (no quotes, no dots).
    return ".".join(f'"{part}"' for part in parts)


@dataclass(frozen=True)
class TableNames:
    """The lease table, its sequence and its NOTIFY channel, by resolved schema."""

    schema: str
    table: str

    @property
    def qualified(self) -> str:
        """``schema.table``, unquoted (for messages)."""
        return f"{self.schema}.{self.table}"

    @property
    def table_sql(self) -> str:
        return _quote(self.schema, self.table)

    @property
    def sequence_sql(self) -> str:
        return _quote(self.schema, self.table + SEQUENCE_SUFFIX)

    @property
    def channel(self) -> str:
        """The NOTIFY channel every write of this table notifies (payload: the key)."""
        name = f"noleader.{self.qualified}"
        if len(name.encode()) <= MAX_IDENTIFIER:
            return name
        return "noleader." + hashlib.sha256(self.qualified.encode()).hexdigest()[:40]

    # -- the statements; each is one round trip ------------------------------------

    def _expiry(self, param: str) -> str:
        return f"clock_timestamp() + {param}::bigint * interval '1 microsecond'"

    @property
    def create_sql(self) -> str:
        """$1 key, $2 value, $3 ttl in microseconds -> revision, or no row."""
        fresh = f"SELECT nextval('{self.sequence_sql}') AS n"
        return (
            f"WITH w AS (INSERT INTO {self.table_sql} AS l "
            "(key, value, revision, term, expires_at) "
            f"SELECT $1, $2, s.n, s.n, {self._expiry('$3')} FROM ({fresh}) s "
            # Naming the key among the columns set makes this take the row's FOR UPDATE
            # lock, which waits for fenced transactions (FOR KEY SHARE): no new term
            # begins until they end. Renewals set no key and do not wait for them.
            "ON CONFLICT (key) DO UPDATE SET (key, value, revision, term, expires_at) = "
            f"(SELECT $1, $2, t.n, t.n, {self._expiry('$3')} FROM ({fresh}) t) "
            "WHERE l.expires_at <= clock_timestamp() "
            "RETURNING l.revision, l.term) "
            f"SELECT w.revision, {self._notify_set('$3', '$2', '$1::text')} FROM w"
        )

    @property
    def update_sql(self) -> str:
        """$1 key, $2 value, $3 revision, $4 ttl in microseconds -> revision, or no row."""
        return (
            f"WITH w AS (UPDATE {self.table_sql} SET value = $2, "
            f"revision = nextval('{self.sequence_sql}'), expires_at = {self._expiry('$4')} "
            "WHERE key = $1 AND revision = $3 AND expires_at > clock_timestamp() "
            "RETURNING revision, term) "
            f"SELECT w.revision, {self._notify_set('$4', '$2', '$1::text')} FROM w"
        )

    @property
    def update_many_sql(self) -> str:
        """$1 keys, $2 values, $3 revisions, $4 ttls in microseconds (arrays, distinct
        keys) -> (key, revision) of each update applied; one statement for them all."""
        return (
            "WITH a AS (SELECT * FROM unnest($1::text[], $2::bytea[], $3::bigint[], "
            "$4::bigint[]) AS a(key, value, revision, ttl)), "
            f"w AS (UPDATE {self.table_sql} AS l SET value = a.value, "
            f"revision = nextval('{self.sequence_sql}'), expires_at = "
            f"{self._expiry('a.ttl')} FROM a WHERE l.key = a.key "
            "AND l.revision = a.revision AND l.expires_at > clock_timestamp() "
            "RETURNING l.key, l.revision, l.term, l.value, a.ttl) "
            f"SELECT w.key, w.revision, {self._notify_set('w.ttl', 'w.value', 'w.key')} "
            "FROM w"
        )

    @property
    def delete_sql(self) -> str:
        """$1 key, $2 revision -> one row if deleted, else none."""
        return (
            f"WITH w AS (UPDATE {self.table_sql} SET expires_at = '-infinity' "
            "WHERE key = $1 AND revision = $2 AND expires_at > clock_timestamp() "
            "RETURNING revision) "
            f"SELECT w.revision, pg_notify('{self.channel}', "
            "concat_ws(' ', 'd', w.revision, $1::text)) FROM w"
        )

    def _notify_set(self, ttl: str, value: str, key: str) -> str:
        # "s <revision> <term> <ttl us> <value hex, or - if long> <key>": a watcher
        # learns the write without reading it back (keys hold no spaces).
        return (
            f"pg_notify('{self.channel}', concat_ws(' ', 's', w.revision, w.term, "
            f"{ttl}::bigint, CASE WHEN octet_length({value}::bytea) <= {NOTIFY_VALUE_LIMIT} "
            f"THEN encode({value}::bytea, 'hex') ELSE '-' END, {key}))"
        )

    @property
    def watch_sql(self) -> str:
        """$1 key -> (value, revision, term, seconds left; <= 0 if gone), or no row.

        Unlike :attr:`get_sql` it shows a deleted or expired row too: its revision
        orders the notifications that a watcher receives after the read.
        """
        return (
            "SELECT value, revision, term, "
            "extract(epoch FROM expires_at - clock_timestamp())::float8 "
            f"FROM {self.table_sql} WHERE key = $1"
        )

    @property
    def get_sql(self) -> str:
        """$1 key -> (value, revision, term, seconds left), or no row."""
        return (
            "SELECT value, revision, term, "
            "extract(epoch FROM expires_at - clock_timestamp())::float8 "
            f"FROM {self.table_sql} WHERE key = $1 AND expires_at > clock_timestamp()"
        )

    @property
    def keys_sql(self) -> str:
        return f"SELECT key FROM {self.table_sql} WHERE expires_at > clock_timestamp()"

    @property
    def fence_sql(self) -> str:
        """$1 key, $2 token -> one row while that term holds the lease.

        ``FOR KEY SHARE`` holds off the next term's create (see :attr:`create_sql`)
        until the transaction ends, and lets the holder's renewals through.
        """
        return (
            f"SELECT 1 FROM {self.table_sql} WHERE key = $1 AND term = $2 "
            "AND expires_at > clock_timestamp() FOR KEY SHARE"
        )


def schema_sql(schema: str | None, table: str) -> list[str]:
    """The statements that create the table and its sequence (run under a lock)."""
    names = (schema,) if schema is not None else ()
    table_sql = _quote(*names, table)
    sequence_sql = _quote(*names, table + SEQUENCE_SUFFIX)
    return [
        f"CREATE SEQUENCE IF NOT EXISTS {sequence_sql} AS bigint",
        f"CREATE TABLE {table_sql} (key text PRIMARY KEY, value bytea NOT NULL, "
        "revision bigint NOT NULL, term bigint NOT NULL, "
        "expires_at timestamptz NOT NULL)",
        f"ALTER SEQUENCE {sequence_sql} OWNED BY {table_sql}.revision",
        f"COMMENT ON TABLE {table_sql} IS 'trio-noleader leases'",
        # A fresh store's tokens start at the wall clock in microseconds, above those
        # of any store it replaces; a sequence left behind never goes back.
        f"SELECT setval('{sequence_sql}', greatest("
        f"(SELECT last_value FROM {sequence_sql}), "
        "(extract(epoch FROM clock_timestamp()) * 1000000)::bigint))",
    ]


def regclass_literal(schema: str | None, name: str) -> str:
    """The text ``to_regclass`` takes for *name* (search_path applies without schema)."""
    return _quote(*((schema,) if schema is not None else ()), name)


def shape_problems(columns: Sequence[tuple[str, str, bool]], primary_key: Sequence[str],
                   relkind: str, sequence: Mapping[str, Any] | None) -> list[str]:
    """What is wrong with an existing table and sequence, from the catalogs.

    Args:
        columns: ``(name, format_type, not_null)`` of every column.
        primary_key: The primary key's column names.
        relkind: ``pg_class.relkind`` of the table.
        sequence: ``type``, ``increment``, ``cycle`` of the sequence, or None if absent.
    """
    if relkind not in ("r", "p"):
        return [f"it is not a table (relkind {relkind!r})"]
    problems = []
    found = {name: (type_, not_null) for name, type_, not_null in columns}
    for name, type_ in COLUMNS.items():
        if name not in found:
            problems.append(f"column {name} is missing")
        elif found[name][0] != type_:
            problems.append(f"column {name} is {found[name][0]}, not {type_}")
        elif not found[name][1]:
            problems.append(f"column {name} allows NULL")
    extra = sorted(set(found) - set(COLUMNS))
    if extra:
        problems.append(f"unexpected column(s) {', '.join(extra)}")
    if list(primary_key) != ["key"]:
        shown = ", ".join(primary_key) or "none"
        problems.append(f"the primary key is ({shown}), not (key)")
    if sequence is None:
        problems.append("its sequence is missing")
    else:
        if sequence["type"] != "bigint":
            problems.append(f"its sequence is of type {sequence['type']}, not bigint")
        if sequence["increment"] <= 0 or sequence["cycle"]:
            problems.append("its sequence does not only grow (increment <= 0 or CYCLE)")
    return problems
