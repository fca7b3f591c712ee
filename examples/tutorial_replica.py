"""The tutorial's replica: campaign for "report", make reports while leader.

Run one, then two more in other terminals, all on the same store:

    python examples/tutorial_replica.py sqlite:///tmp/tutorial.db
    python examples/tutorial_replica.py nats://127.0.0.1:4222/tutorial

One of them leads; Ctrl-C it and another takes over at once. The URL comes from
the command line, else ``$NOLEADER_URL``, else an SQLite file in the temporary
directory. It runs until Ctrl-C, or for ``$NOLEADER_EXAMPLE_SECONDS`` if set.
"""

from __future__ import annotations

import os
import socket
import sys
import tempfile

import trio

import trio_noleader

DEFAULT_URL = "sqlite://" + os.path.join(tempfile.gettempdir(), "noleader-tutorial.db")
URL = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("NOLEADER_URL", DEFAULT_URL)
SECONDS = os.environ.get("NOLEADER_EXAMPLE_SECONDS")
NAME = f"{socket.gethostname()}:{os.getpid()}"


async def make_reports(token: int) -> None:
    """The work only the leader does. Runs until the lease is lost or we leave."""
    number = 0
    while True:
        number += 1
        print(f"{NAME}: report #{number} (fencing token {token})", flush=True)
        await trio.sleep(1)


async def replica() -> None:
    async with trio_noleader.open_backend(URL):
        print(f"{NAME}: campaigning for 'report' on {URL}", flush=True)
        async with trio_noleader.hold_leadership("report", ttl=5) as lead:
            print(f"{NAME}: elected with token {lead.token}", flush=True)
            await make_reports(lead.token)


async def main() -> None:
    if SECONDS is None:
        await replica()
    else:
        with trio.move_on_after(float(SECONDS)):
            await replica()
        print(f"{NAME}: time is up; the lease, if any, is released", flush=True)


if __name__ == "__main__":
    try:
        trio.run(main)
    except KeyboardInterrupt:
        # Ctrl-C cancelled the block: the lease was released on the way out.
        print(f"{NAME}: stopped; the lease, if any, is released", flush=True)
