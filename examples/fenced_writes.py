"""Fencing tokens: a downstream store that rejects writes from a stale leader.

A lease cannot stop a paused process from acting after its lease ran out (a GC
pause, SIGSTOP, a VM migration). The fencing token can: every term's token is
higher than the last, so a store that remembers the highest token it accepted
turns a stale leader's late write into a clean rejection.

Here the downstream store is a small SQLite table. Leader "old" takes the lease,
"pauses" while holding a write in hand, loses the lease, and the write it sends
after waking up is rejected because "new" has written with a higher token.

Run: python examples/fenced_writes.py
"""

from __future__ import annotations

import sqlite3

import trio

import trio_noleader


class FencedTable:
    """Accepts a write only if its token is >= the highest token seen so far."""

    def __init__(self) -> None:
        self.db = sqlite3.connect(":memory:")
        self.db.execute("CREATE TABLE fence (id INTEGER PRIMARY KEY CHECK (id = 1), token INT)")
        self.db.execute("CREATE TABLE data (value TEXT, token INT)")
        self.db.execute("INSERT INTO fence VALUES (1, 0)")

    def write(self, value: str, token: int) -> bool:
        with self.db:  # one transaction: check and write together
            (highest,) = self.db.execute("SELECT token FROM fence").fetchone()
            if token < highest:
                return False
            self.db.execute("UPDATE fence SET token = ?", (token,))
            self.db.execute("INSERT INTO data VALUES (?, ?)", (value, token))
            return True


async def main() -> None:
    table = FencedTable()
    store = trio_noleader.MemoryBackend()
    async with trio_noleader.hold_leadership("writer", backend=store, ttl=2) as old:
        assert table.write("from old leader", old.token)
        stale_token = old.token
        old.resign()  # stands in for a pause long enough to lose the lease
    async with trio_noleader.hold_leadership("writer", backend=store, ttl=2) as new:
        assert table.write("from new leader", new.token)
    accepted = table.write("late write from the paused old leader", stale_token)
    print(f"old token {stale_token}, new token {new.token}; late write accepted: {accepted}")
    assert not accepted, "the fence must reject the stale leader"
    for row in table.db.execute("SELECT value, token FROM data"):
        print("stored:", row)


if __name__ == "__main__":
    trio.run(main)
