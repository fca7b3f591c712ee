"""One candidate process for test_sqlite_multiprocess.py.

Usage: ``python sqlite_candidate.py DB NAME KEY TTL POLL_INTERVAL``

Campaigns for KEY over the SQLite file DB and, once elected, holds the lease until
a line arrives on stdin; then it leaves its block (releasing the lease) and exits.
It reports each step as one JSON line on stdout, stamped with :func:`time.time`
(the clock all processes of the host share): ``campaign``, ``start`` (the body
began), ``stop`` (the body ended, before the release), ``lost`` and ``exit``.
"""

from __future__ import annotations

import json
import os
import sys
import time

import trio

from trio_noleader import LeadershipLost, hold_leadership, open_sqlite_backend


def emit(name: str, event: str, token: int | None = None) -> None:
    line = json.dumps({"name": name, "event": event, "time": time.time(), "token": token})
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def wait_for_line() -> None:
    """Return once stdin delivers a line (or closes)."""
    stdin = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
    async with stdin:
        data = b""
        while b"\n" not in data:
            chunk = await stdin.receive_some()
            if not chunk:
                return
            data += chunk


async def main(db: str, name: str, key: str, ttl: float, poll_interval: float) -> int:
    async with open_sqlite_backend(db, poll_interval=poll_interval):
        emit(name, "campaign")
        try:
            async with hold_leadership(key, ttl=ttl) as lead:
                emit(name, "start", lead.token)
                try:
                    await wait_for_line()
                finally:
                    emit(name, "stop", lead.token)
        except LeadershipLost:
            emit(name, "lost")
            return 3
    emit(name, "exit")
    return 0


if __name__ == "__main__":
    db, name, key, ttl, poll = sys.argv[1:6]
    sys.exit(trio.run(main, db, name, key, float(ttl), float(poll)))
