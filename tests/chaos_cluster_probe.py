"""Looks at a nats-server cluster for tests/test_chaos.py, from a process of its own.

Usage (from the repository's root):
``python -m tests.chaos_cluster_probe create|leader URLS BUCKET``

- ``create``: create the replicas=3 bucket, retrying until the cluster's JetStream
  is up (it elects its leader first); prints ``created``.
- ``leader``: wait until the bucket's stream has a leader and two current
  followers; prints the leader's server name.

Exits 1 after 60 s without success. It runs apart from the test because nats-py
2.16 leaves a socket open (for the garbage collector to close, with a
``ResourceWarning``) when a reconnect attempt fails after its TCP connect, as
happens while cluster nodes die and restart; the test process runs with warnings
as errors.
"""

from __future__ import annotations

import sys
from typing import Any

import trio
import trio_asyncio

from trio_noleader import BackendUnavailable, open_nats_backend

ATTEMPT = 5.0


async def create(urls: str, bucket: str) -> str:
    while True:
        try:
            with trio.fail_after(ATTEMPT * 2):
                async with open_nats_backend(urls, bucket=bucket, replicas=3,
                                             storage="file"):
                    return "created"
        except (BackendUnavailable, TimeoutError):
            await trio.sleep(0.3)


async def leader(urls: str, bucket: str) -> str:
    while True:
        try:
            with trio.fail_after(ATTEMPT * 2):
                async with open_nats_backend(urls, bucket=bucket) as backend:
                    js = backend.connection.jetstream(timeout=1)
                    while True:
                        info: Any = await trio_asyncio.aio_as_trio(
                            js.stream_info, loop=backend.loop)(f"KV_{bucket}")
                        cluster = info.cluster
                        if (cluster is not None and cluster.leader and cluster.replicas
                                and len(cluster.replicas) == 2
                                and all(peer.current and not peer.offline
                                        for peer in cluster.replicas)):
                            name: str = cluster.leader
                            return name
                        await trio.sleep(0.1)
        except Exception:  # no stream leader yet, a node away, a timeout: look again
            await trio.sleep(0.2)


async def main(command: str, urls: str, bucket: str) -> int:
    with trio.move_on_after(60):
        print(await {"create": create, "leader": leader}[command](urls, bucket), flush=True)
        return 0
    return 1


if __name__ == "__main__":
    command, urls, bucket = sys.argv[1:4]
    sys.exit(trio.run(main, command, urls, bucket))
