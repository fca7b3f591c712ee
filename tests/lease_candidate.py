"""One candidate process for tests/test_multiprocess.py (any backend a URL opens).

Usage (from the repository's root): ``python -m tests.lease_candidate URL NAME KEY TTL``
(URL as for ``open_backend``).

Opens the backend, campaigns for KEY and, once elected, leads until a line arrives
on stdin (or stdin closes); then it leaves its block, which releases the lease, and
exits. Every step is one JSON line on stdout stamped with :func:`time.time` (all
processes of the host share that clock): ``campaign``, ``start`` (the body began),
``stop`` (the body is ending, before the release), ``lost`` and ``exit``.
"""

from __future__ import annotations

import json
import os
import sys
import time

import trio

from trio_noleader import LeadershipLost, hold_leadership, open_backend


def report(name: str, event: str, token: int | None = None) -> None:
    print(json.dumps({"name": name, "event": event, "time": time.time(), "token": token}),
          flush=True)


async def until_told() -> None:
    """Return when stdin delivers a line or closes."""
    async with trio.lowlevel.FdStream(os.dup(sys.stdin.fileno())) as stdin:
        received = b""
        while b"\n" not in received:
            chunk = await stdin.receive_some()
            if not chunk:
                return
            received += chunk


async def main(url: str, name: str, key: str, ttl: float) -> int:
    async with open_backend(url):
        report(name, "campaign")
        try:
            async with hold_leadership(key, ttl=ttl) as lead:
                report(name, "start", lead.token)
                try:
                    await until_told()
                finally:
                    report(name, "stop", lead.token)
        except LeadershipLost:
            report(name, "lost")
            return 3
    report(name, "exit")
    return 0


if __name__ == "__main__":
    url, name, key, ttl = sys.argv[1:5]
    sys.exit(trio.run(main, url, name, key, float(ttl)))
