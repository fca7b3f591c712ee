"""The card's spelling: three replicas, one leader, handover when it leaves.

Run: python examples/hello_leader.py [URL]   (default: memory://; try sqlite:///tmp/x.db)
"""

from __future__ import annotations

import os
import sys

import trio

import trio_noleader

URL = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("NOLEADER_URL", "memory://")
SECONDS = float(os.environ.get("NOLEADER_EXAMPLE_SECONDS", "6"))


async def replica(name: str, term_seconds: float) -> None:
    """Lead once for *term_seconds*, then step down and let another replica lead."""
    async with trio_noleader.hold_leadership("hello", ttl=3) as scope:
        print(f"{trio.current_time():8.3f}  {name} leads with token {scope.token}")
        await trio.sleep(term_seconds)
        print(f"{trio.current_time():8.3f}  {name} steps down")


async def main() -> None:
    async with trio_noleader.open_backend(URL), trio.open_nursery() as nursery:
        for name in ("alpha", "beta", "gamma"):
            nursery.start_soon(replica, name, SECONDS / 3)
    print("every replica has led once")


if __name__ == "__main__":
    trio.run(main)
