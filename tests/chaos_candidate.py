"""One candidate process for tests/test_chaos.py.

Usage (from the repository's root): ``python -m tests.chaos_candidate --servers URLS
--bucket B --key K --ttl T --recorder DB --name N [--replicas R]
[--no-sigterm-handler]``

It opens the NATS backend and campaigns for KEY; after a lost term it campaigns
again. While leader, its body writes to the fenced recorder (tests/chaos_recorder.py)
every WRITE_INTERVAL seconds with the term's token, and once more on its way out in a
shielded ``finally`` (an in-flight side effect, as real bodies make). Commands arrive
one per line on stdin:

- ``exit``: the body returns; the block is left normally and the process exits 0;
- ``raise``: the body raises ``Boom``; it leaves the block and the process exits 0;
- ``cancel``: a scope *around* ``hold_leadership`` is cancelled from another task;
  the process exits 0.

SIGTERM cancels everything the same way (exit 143), unless ``--no-sigterm-handler``:
then Python's default action applies and the process dies at once.

Every step is one JSON line on stdout stamped with :func:`time.time` (one clock for
all processes of the host): ``ready`` and ``connected`` (with the server address),
``campaign``, ``start`` and ``renewed`` (token; when the lease's last write was
sent and the deadline it gives), ``stop`` (the body ends, before the
release), ``lost``, ``raised``, ``cancelled``, ``sigterm``, ``exit``. Logging goes to
stderr at DEBUG (the test checks it never shows a secret).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
from typing import Any

import trio

from tests.chaos_recorder import Recorder
from trio_noleader import Leadership, LeadershipLost, hold_leadership, open_nats_backend

#: Seconds between two writes of a body.
WRITE_INTERVAL = 0.05


class Boom(Exception):
    """What the body raises when told ``raise``."""


class Candidate:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.name: str = args.name
        self.recorder = Recorder(args.recorder)
        self.command: str | None = None
        self.commanded = trio.Event()
        self.outer = trio.CancelScope()
        self.how = ""

    def emit(self, event: str, **fields: Any) -> None:
        print(json.dumps({"name": self.name, "event": event, "time": time.time(),
                          "pid": os.getpid(), **fields}), flush=True)

    async def read_commands(self) -> None:
        async with trio.lowlevel.FdStream(os.dup(sys.stdin.fileno())) as stdin:
            pending = b""
            while chunk := await stdin.receive_some():
                pending += chunk
                while b"\n" in pending:
                    line, pending = pending.split(b"\n", 1)
                    self.command = line.decode().strip()
                    self.commanded.set()
                    if self.command == "cancel":
                        self.how = "cancelled"
                        self.outer.cancel()

    async def watch_sigterm(self) -> None:
        with trio.open_signal_receiver(signal.SIGTERM) as signals:
            async for _ in signals:
                self.how = "sigterm"
                self.outer.cancel()
                return

    def lease(self, lead: Leadership) -> tuple[float, float]:
        """``(sent, deadline)`` of the term's last successful write, in wall-clock time.

        ``sent`` is when that acquire or renewal was sent: the deadline minus
        ``ttl - guard`` (the default guard, ttl/10).
        """
        ttl = float(self.args.ttl)
        deadline = time.time() + (lead.deadline - trio.current_time())
        return deadline - (ttl - ttl / 10), deadline

    async def write(self, lead: Leadership, note: str) -> bool:
        sent, deadline = self.lease(lead)
        accepted: bool = await trio.to_thread.run_sync(
            self.recorder.write, self.name, os.getpid(), lead.token, time.time(), sent,
            deadline, note)
        return accepted

    async def body(self, lead: Leadership) -> None:
        sent, deadline = self.lease(lead)
        self.emit("start", token=lead.token, sent=sent, deadline=deadline)
        known = lead.deadline
        try:
            while True:
                if self.command == "exit":
                    return
                if self.command == "raise":
                    raise Boom("told to raise")
                if lead.deadline != known:
                    known = lead.deadline
                    sent, deadline = self.lease(lead)
                    self.emit("renewed", token=lead.token, sent=sent, deadline=deadline)
                await self.write(lead, "body")
                with trio.move_on_after(WRITE_INTERVAL):
                    await self.commanded.wait()
        finally:
            with trio.CancelScope(shield=True):
                accepted = await self.write(lead, "final")
            self.emit("stop", token=lead.token, final_accepted=accepted)

    async def campaign(self) -> int:
        args = self.args

        async def reconnected() -> None:
            self.emit("connected", address=self.address(backend))

        async with open_nats_backend(args.servers, bucket=args.bucket,
                                     replicas=args.replicas, storage="file",
                                     reconnected_cb=reconnected) as backend:
            self.emit("ready", address=self.address(backend))
            while True:
                self.emit("campaign")
                try:
                    async with hold_leadership(args.key, ttl=args.ttl) as lead:
                        await self.body(lead)
                    return 0
                except LeadershipLost as exc:
                    self.emit("lost", reason=str(exc))
                except Boom:
                    self.emit("raised")
                    return 0

    @staticmethod
    def address(backend: Any) -> str:
        url = backend.connection.connected_url
        return "" if url is None else str(url.netloc.rpartition("@")[2])

    async def main(self) -> int:
        code = 0
        with self.outer:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self.read_commands)
                if self.args.sigterm_handler:
                    nursery.start_soon(self.watch_sigterm)
                code = await self.campaign()
                nursery.cancel_scope.cancel()
        if self.how:
            self.emit(self.how)
            code = 128 + signal.SIGTERM if self.how == "sigterm" else 0
        self.emit("exit", code=code)
        return code


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--servers", required=True)
    parser.add_argument("--bucket", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--ttl", type=int, required=True)
    parser.add_argument("--recorder", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--replicas", type=int, default=1)
    parser.add_argument("--no-sigterm-handler", dest="sigterm_handler",
                        action="store_false")
    return parser.parse_args(argv)


if __name__ == "__main__":
    logging.basicConfig(level=logging.DEBUG, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    sys.exit(trio.run(Candidate(parse(sys.argv[1:])).main))
