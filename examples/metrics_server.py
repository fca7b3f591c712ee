"""Prometheus metrics next to a trio app: two replicas take turns leading "reports".

Run: python examples/metrics_server.py [URL]   (needs the extra: pip install
trio-noleader[metrics]), then curl http://127.0.0.1:9464/metrics (NOLEADER_METRICS_PORT;
0 picks a free port). The server is prometheus_client's own start_http_server: plain
threads beside trio's, which the metrics are thread-safe for. Ends by itself after
NOLEADER_EXAMPLE_SECONDS (default 20); prints what it served midway.
"""

from __future__ import annotations

import os
import sys
import urllib.request

import prometheus_client
import trio

import trio_noleader
import trio_noleader.metrics

URL = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("NOLEADER_URL", "memory://")
SECONDS = float(os.environ.get("NOLEADER_EXAMPLE_SECONDS", "20"))
PORT = int(os.environ.get("NOLEADER_METRICS_PORT", "9464"))


async def replica(name: str) -> None:
    """Lead for a while, step down, campaign again: terms for the metrics to count."""
    await trio.sleep(0.05 if name.endswith("b") else 0)
    while True:
        async with trio_noleader.hold_leadership("reports", ttl=2, name=name) as lead:
            print(f"{name} leads (token {lead.token})")
            await trio.sleep(SECONDS / 4)
        await trio.sleep(0.1)  # let the other replica take its turn


def _fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=5) as page:
        body: bytes = page.read()
        return body


async def scrape(port: int) -> None:
    """What a scraper sees while a replica leads (fetched from the server)."""
    await trio.sleep(SECONDS * 0.6)
    text: bytes = await trio.to_thread.run_sync(_fetch, f"http://127.0.0.1:{port}/metrics")
    print("\n".join(line for line in text.decode().splitlines()
                    if line.startswith("noleader_") and "_bucket" not in line
                    and "_created" not in line))


async def main() -> None:
    trio_noleader.metrics.enable()
    server, thread = prometheus_client.start_http_server(PORT, addr="127.0.0.1")
    port = server.server_address[1]
    print(f"metrics on http://127.0.0.1:{port}/metrics")
    try:
        async with trio_noleader.open_backend(URL):
            with trio.move_on_after(SECONDS):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(replica, "replica-a")
                    nursery.start_soon(replica, "replica-b")
                    nursery.start_soon(scrape, port)
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


if __name__ == "__main__":
    trio.run(main)
