"""``noleader demo``: candidate processes elect, hand over and fail over, timed."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import aclosing

import trio

from ._cli_common import with_signals
from ._election import hold_leadership
from ._exceptions import LeadershipLost
from ._helpers import watch_leader
from ._open import open_backend
from ._urls import redact_url

__all__ = ["cmd_candidate", "cmd_demo"]


async def cmd_candidate(args: argparse.Namespace) -> int:
    """Hidden: one demo candidate. Prints one JSON line per event on stdout."""
    def emit(event: str, **fields: object) -> None:
        print(json.dumps({"event": event, "name": args.name, "pid": os.getpid(), **fields}),
              flush=True)

    async def body() -> int:
        async with open_backend(args.url):
            while True:
                try:
                    async with hold_leadership(args.key, ttl=args.ttl) as lead:
                        emit("elected", candidate=str(lead.candidate_id), token=lead.token)
                        await trio.sleep_forever()
                except LeadershipLost:
                    emit("lost")

    return await with_signals(body)


class _Demo:
    def __init__(self, args: argparse.Namespace, url: str) -> None:
        self.args = args
        self.url = url
        self.procs: dict[str, trio.Process] = {}
        self.names: dict[str, str] = {}  # candidate id -> candidate name
        self.leader: tuple[str, int] | None = None  # (name, token)
        self.leader_changed = trio.Event()
        self.names_changed = trio.Event()
        self.start = time.monotonic()
        self.counter = 0

    def log(self, message: str) -> None:
        print(f"[{time.monotonic() - self.start:6.2f}s] {message}", flush=True)

    async def spawn(self, nursery: trio.Nursery) -> None:
        self.counter += 1
        name = f"candidate-{self.counter}"
        proc = await trio.lowlevel.open_process(
            [sys.executable, "-m", "trio_noleader", "_candidate", self.args.key,
             "--url", self.url, "--ttl", str(self.args.ttl), "--name", name],
            stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
        )
        self.procs[name] = proc
        self.log(f"started {name} (pid {proc.pid})")
        nursery.start_soon(self._read, name, proc)

    async def _read(self, name: str, proc: trio.Process) -> None:
        assert proc.stdout is not None
        buffer = b""
        async for chunk in proc.stdout:
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                event = json.loads(line)
                if event["event"] == "elected":
                    self.names[event["candidate"]] = name
                    self.names_changed.set()
                    self.names_changed = trio.Event()

    async def follow(self) -> None:
        async with aclosing(watch_leader(self.args.key)) as updates:
            async for info in updates:
                if info is None:
                    self.leader = None
                    self.log("no leader")
                else:
                    cid = str(info.candidate_id)
                    # The candidate says who it is on its stdout; give it a moment.
                    with trio.move_on_after(1):
                        while cid not in self.names:
                            await self.names_changed.wait()
                    name = self.names.get(cid, f"candidate {cid[:8]}")
                    self.leader = (name, info.token)
                    self.log(f"{name} leads, fencing token {info.token}")
                self.leader_changed.set()
                self.leader_changed = trio.Event()

    async def wait_leader(self, not_name: str | None = None) -> tuple[str, int]:
        while self.leader is None or self.leader[0] == not_name:
            await self.leader_changed.wait()
        return self.leader

    async def round(self, nursery: trio.Nursery, how: str) -> float:
        await self.wait_leader()
        await trio.sleep(self.args.pause)  # let the reader see who leads
        name, token = await self.wait_leader()
        proc = self.procs.pop(name)
        sig = signal.SIGTERM if how == "graceful" else signal.SIGKILL
        verb = "stops gracefully (SIGTERM)" if how == "graceful" else "is killed (SIGKILL)"
        self.log(f"{name} {verb}")
        killed = time.monotonic()
        proc.send_signal(sig)
        new_name, new_token = await self.wait_leader(not_name=name)
        took = time.monotonic() - killed
        await proc.wait()
        self.log(f"takeover by {new_name} after {took * 1000:.0f} ms "
                 f"(token {token} -> {new_token})")
        await self.spawn(nursery)
        return took

    async def stop_all(self) -> None:
        with trio.CancelScope(shield=True):
            for proc in self.procs.values():
                if proc.returncode is None:
                    proc.terminate()
            with trio.move_on_after(5):
                for proc in self.procs.values():
                    await proc.wait()
            for proc in self.procs.values():
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()


async def cmd_demo(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="noleader-demo-") as tmp:
        url = args.url or f"sqlite://{os.path.join(tmp, 'demo.db')}"
        demo = _Demo(args, url)

        async def body() -> int:
            graceful: list[float] = []
            crash: list[float] = []
            print(f"noleader demo: {args.candidates} candidate processes contend for "
                  f"{args.key!r} on {redact_url(url)} (lease ttl {args.ttl:g} s)", flush=True)
            async with open_backend(url), trio.open_nursery() as nursery:
                try:
                    nursery.start_soon(demo.follow)
                    for _ in range(args.candidates):
                        await demo.spawn(nursery)
                    rounds = 0
                    while args.forever or rounds < args.rounds:
                        rounds += 1
                        graceful.append(await demo.round(nursery, "graceful"))
                        crash.append(await demo.round(nursery, "crash"))
                finally:
                    await demo.stop_all()
                nursery.cancel_scope.cancel()
            print(flush=True)
            print(f"graceful handover (leader left its block): "
                  f"{', '.join(f'{t * 1000:.0f} ms' for t in graceful)}")
            print(f"crash failover (leader SIGKILLed, lease ttl {args.ttl:g} s): "
                  f"{', '.join(f'{t:.2f} s' for t in crash)}")
            print("every candidate process has been stopped; the demo is over.")
            return 0

        try:
            return await with_signals(body)
        finally:
            await demo.stop_all()
