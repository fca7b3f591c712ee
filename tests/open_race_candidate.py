"""One process of the open race (tests/test_sqlite_open_race.py).

Usage: ``python -m tests.open_race_candidate URL NAME``. Waits for a line on stdin
(every process gets it at the same moment), opens the store, says ``opened``, takes
part in one election (leads for 20 ms), says ``led`` with its token and exits 0.
A failure to open is printed as ``failed`` with the error, exit 1.
"""

from __future__ import annotations

import json
import sys

import trio

from trio_noleader import BackendUnavailable, hold_leadership, open_backend


def say(name: str, event: str, **fields: object) -> None:
    print(json.dumps({"name": name, "event": event, **fields}), flush=True)


async def main(url: str, name: str) -> int:
    await trio.to_thread.run_sync(sys.stdin.readline)
    try:
        async with open_backend(url):
            say(name, "opened")
            async with hold_leadership("race", ttl=2) as lead:
                await trio.sleep(0.02)
                say(name, "led", token=lead.token)
    except BackendUnavailable as exc:
        say(name, "failed", error=str(exc))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(trio.run(main, sys.argv[1], sys.argv[2]))
