"""The ``noleader`` command line: run a command only while leader, status, watch, demo."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from contextlib import aclosing
from pathlib import Path
from typing import Any

import trio

from ._election import hold_leadership
from ._exceptions import BackendUnavailable, LeadershipLost, NoLeaderError, RevisionMismatch
from ._helpers import current_leader, watch_leader
from ._open import open_backend
from ._types import LeaderInfo, check_key, check_seconds, check_timing
from ._unwrap import bare_exceptions
from ._urls import redact_url
from ._version import __version__

#: Exit codes of ``noleader`` itself (``run`` otherwise exits with the command's code).
EXIT_USAGE = 2
EXIT_LOST = 120
EXIT_NOT_ELECTED = 121
EXIT_UNAVAILABLE = 122
EXIT_SIGNAL_BASE = 128

EXIT_CODES_HELP = f"""\
exit codes:
  0..255  noleader run: the command's own exit code (128+N if it died of signal N)
  {EXIT_USAGE}       bad usage: unknown option, invalid key, malformed URL
  {EXIT_LOST}     noleader run: leadership was lost, the command was stopped
  {EXIT_NOT_ELECTED}     noleader run --no-wait: someone else leads; the command did not start
  {EXIT_UNAVAILABLE}     the store could not be reached or refused us
  130/143 noleader itself got SIGINT/SIGTERM (the command was stopped, the lease released)
"""


def default_url() -> str:
    """``$NOLEADER_URL``, else an SQLite file under the user's state directory."""
    url = os.environ.get("NOLEADER_URL")
    if url:
        return url
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(Path.home(), ".local", "state")
    return f"sqlite://{os.path.abspath(os.path.join(state, 'noleader', 'leases.db'))}"


class _Exit(Exception):
    def __init__(self, code: int, message: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _say(message: str) -> None:
    print(f"noleader: {message}", file=sys.stderr, flush=True)


def _describe(info: LeaderInfo | None) -> str:
    if info is None:
        return "no leader"
    holder = str(info.candidate_id) if info.candidate_id is not None else "unknown holder"
    left = "" if info.expires_in is None else f", {info.expires_in:.1f} s left"
    return f"{holder} (token {info.token}{left})"


def _info_json(key: str, info: LeaderInfo | None) -> dict[str, Any]:
    return {
        "key": key,
        "leader": None if info is None or info.candidate_id is None
        else str(info.candidate_id),
        "held": info is not None,
        "foreign": info is not None and info.candidate_id is None,
        "token": None if info is None else info.token,
        "revision": None if info is None else info.revision,
        "expires_in": None if info is None else info.expires_in,
        "time": time.time(),
    }


async def _with_signals(body: Callable[[], Awaitable[int]]) -> int:
    """Run *body*; SIGINT/SIGTERM cancel it cleanly and give 128 + the signal number."""
    received: list[int] = []
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals, \
            bare_exceptions():
        async with trio.open_nursery() as nursery:
            async def _watch_signals() -> None:
                async for signum in signals:
                    received.append(signum)
                    nursery.cancel_scope.cancel()
                    return

            nursery.start_soon(_watch_signals)
            code = await body()
            nursery.cancel_scope.cancel()
    if received:
        return EXIT_SIGNAL_BASE + received[0]
    return code


# -- run -------------------------------------------------------------------------


def _die_with_parent() -> None:
    """In the child, before exec: get SIGKILL if noleader dies (Linux only).

    A leader-only command must not outlive the process that holds its lease: if
    noleader is SIGKILLed, the lease expires and another replica starts the command,
    so this one must stop too. Linux ties this to the *thread* that forked, so the
    child is started from trio's own thread (see :func:`_run_child`), which lives
    as long as noleader. Elsewhere this is a no-op.
    """
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


async def _wait_child(popen: subprocess.Popen[bytes]) -> int:
    """Wait for *popen* to exit without blocking trio; return its exit status."""
    if hasattr(os, "pidfd_open"):
        fd = os.pidfd_open(popen.pid)
        try:
            await trio.lowlevel.wait_readable(fd)
        finally:
            os.close(fd)
    else:  # pragma: no cover - not Linux
        await trio.to_thread.run_sync(popen.wait, abandon_on_cancel=True)
    return popen.wait()


async def _run_child(command: list[str], env: dict[str, str], grace: float) -> int:
    """Run *command* to its end; if cancelled, SIGTERM it, then SIGKILL after *grace*.

    Not ``trio.run_process``: that forks from a worker thread, and a worker thread
    that idles for 10 s exits, which would fire the child's parent-death signal.
    """
    # A few milliseconds of blocking, on purpose: see the docstring.
    popen = subprocess.Popen(command, env=env, preexec_fn=_die_with_parent)  # noqa: ASYNC220
    try:
        return await _wait_child(popen)
    except BaseException:
        with trio.CancelScope(shield=True):
            if popen.poll() is None:
                popen.terminate()
                with trio.move_on_after(grace) as waiting:
                    await _wait_child(popen)
                if waiting.cancelled_caught:
                    _say(f"command did not exit {grace:g} s after SIGTERM; sending SIGKILL")
                    popen.kill()
                    await _wait_child(popen)
        raise


async def cmd_run(args: argparse.Namespace) -> int:
    async def body() -> int:
        try:
            async with open_backend(args.url), hold_leadership(
                args.key, ttl=args.ttl, wait=not args.no_wait
            ) as lead:
                _say(f"leader of {args.key} with token {lead.token}; starting "
                     f"{' '.join(args.command)}")
                env = dict(os.environ, NOLEADER_KEY=args.key, NOLEADER_TOKEN=str(lead.token))
                code = await _run_child(args.command, env, args.grace)
                return code if code >= 0 else EXIT_SIGNAL_BASE - code
        except trio.WouldBlock:
            _say(f"{args.key} is held by someone else; not starting the command (--no-wait)")
            return EXIT_NOT_ELECTED
        except LeadershipLost as exc:
            _say(f"lost leadership ({exc}); the command was stopped")
            return EXIT_LOST
        except FileNotFoundError as exc:
            raise _Exit(127, f"cannot run {args.command[0]!r}: {exc.strerror}") from None

    return await _with_signals(body)


# -- status, watch, reset --------------------------------------------------------


async def cmd_status(args: argparse.Namespace) -> int:
    async with open_backend(args.url) as backend:
        keys = args.keys or await backend.keys()
        rows = [(key, await current_leader(key)) for key in keys]
    if args.json:
        print(json.dumps([_info_json(key, info) for key, info in rows], indent=2))
        return 0
    if not rows:
        print(f"no elections in {redact_url(args.url)}")
        return 0
    width = max(len(key) for key, _ in rows)
    print(f"{'KEY':<{width}}  {'LEADER':<36}  {'TOKEN':>8}  {'TIME LEFT':>9}")
    for key, info in rows:
        if info is None:
            print(f"{key:<{width}}  {'-':<36}  {'-':>8}  {'-':>9}")
            continue
        holder = str(info.candidate_id) if info.candidate_id else "(unknown holder)"
        left = "?" if info.expires_in is None else f"{info.expires_in:.1f}s"
        print(f"{key:<{width}}  {holder:<36}  {info.token:>8}  {left:>9}")
    return 0


async def cmd_watch(args: argparse.Namespace) -> int:
    async def body() -> int:
        async with open_backend(args.url), aclosing(watch_leader(args.key)) as updates:
            async for info in updates:
                if args.json:
                    print(json.dumps(_info_json(args.key, info)), flush=True)
                else:
                    stamp = time.strftime("%H:%M:%S")
                    print(f"{stamp}  {args.key}: {_describe(info)}", flush=True)
        return 0

    code = await _with_signals(body)
    return 0 if code == EXIT_SIGNAL_BASE + signal.SIGINT else code


async def cmd_reset(args: argparse.Namespace) -> int:
    if not args.force:
        raise _Exit(EXIT_USAGE, "reset deletes whatever lease is on the key, even a live "
                    "leader's; add --force if that is what you mean")
    async with open_backend(args.url) as backend:
        entry = await backend.get(args.key)
        if entry is None:
            print(f"{args.key}: no lease to clear")
            return 0
        info = LeaderInfo.from_entry(entry)
        try:
            await backend.delete(args.key, revision=entry.revision)
        except RevisionMismatch:
            raise _Exit(1, f"{args.key} changed while clearing it; run reset again") from None
    print(f"{args.key}: cleared the lease of {_describe(info)}")
    return 0


# -- demo ------------------------------------------------------------------------


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

    return await _with_signals(body)


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
            return await _with_signals(body)
        finally:
            await demo.stop_all()


# -- parsing and main ------------------------------------------------------------


def _key(text: str) -> str:
    try:
        return check_key(text)
    except (TypeError, ValueError) as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _seconds(text: str) -> float:
    try:
        return check_seconds("seconds", float(text))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: must be a finite number of seconds > 0") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="noleader",
        description="Leader election for replicas: run a command on exactly one of them.",
        epilog=EXIT_CODES_HELP + "\nstore: --url, else $NOLEADER_URL, else an SQLite file "
        "under $XDG_STATE_HOME/noleader (~/.local/state/noleader).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"noleader {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", default=None,
                        help="store URL: sqlite:///path, nats://host:port/bucket, "
                             "postgresql://user:pw@host/db, memory://")
    sub = parser.add_subparsers(dest="command_name", required=True, metavar="COMMAND")

    run = sub.add_parser("run", parents=[common], help="run a command only while leader",
                         usage="noleader run [-h] [--url URL] [--ttl S] [--no-wait] "
                         "[--grace S] KEY -- CMD [ARGS...]",
                         description="Campaign for KEY; while leader, run CMD with "
                         "NOLEADER_KEY and NOLEADER_TOKEN in its environment. On loss "
                         "of the lease, or SIGINT/SIGTERM, stop CMD with SIGTERM (SIGKILL "
                         "after --grace) and release.",
                         epilog=EXIT_CODES_HELP,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument("key", type=_key, metavar="KEY")
    run.add_argument("--ttl", type=_seconds, default=15.0, help="lease ttl in seconds (15)")
    run.add_argument("--no-wait", action="store_true",
                     help=f"exit {EXIT_NOT_ELECTED} at once if someone else leads")
    run.add_argument("--grace", type=_seconds, default=10.0,
                     help="seconds between SIGTERM and SIGKILL when stopping CMD (10)")

    status = sub.add_parser("status", parents=[common], help="who leads each election")
    status.add_argument("keys", nargs="*", type=_key, metavar="KEY")
    status.add_argument("--json", action="store_true", help="machine-readable output")

    watch = sub.add_parser("watch", parents=[common], help="print a line per leader change")
    watch.add_argument("key", type=_key, metavar="KEY")
    watch.add_argument("--json", action="store_true", help="one JSON object per line")

    reset = sub.add_parser("reset", parents=[common],
                           help="clear a stuck or foreign lease (operator command)")
    reset.add_argument("key", type=_key, metavar="KEY")
    reset.add_argument("--force", action="store_true", help="required: yes, clear it")

    demo = sub.add_parser("demo", parents=[common],
                          help="watch candidates elect, hand over and fail over",
                          description="Start candidate processes on a fresh store (a "
                          "temporary SQLite file unless --url is given), show who leads, "
                          "stop the leader gracefully and then kill it, and show how long "
                          "each takeover took. Ends by itself unless --forever.")
    demo.add_argument("--candidates", type=int, default=3, help="candidate processes (3)")
    demo.add_argument("--rounds", type=int, default=2,
                      help="graceful + crash rounds before ending (2)")
    demo.add_argument("--forever", action="store_true", help="keep going until Ctrl-C")
    demo.add_argument("--ttl", type=_seconds, default=2.0, help="lease ttl in seconds (2)")
    demo.add_argument("--pause", type=float, default=1.0,
                      help="seconds each leader leads before it is stopped (1)")
    demo.add_argument("--key", type=_key, default="demo", help="election key (demo)")

    candidate = sub.add_parser("_candidate", parents=[common])
    candidate.add_argument("key", type=_key)
    candidate.add_argument("--ttl", type=_seconds, default=2.0)
    candidate.add_argument("--name", default="candidate")
    return parser


COMMANDS: dict[str, Callable[[argparse.Namespace], Awaitable[int]]] = {
    "run": cmd_run,
    "status": cmd_status,
    "watch": cmd_watch,
    "reset": cmd_reset,
    "demo": cmd_demo,
    "_candidate": cmd_candidate,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``noleader`` console script."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    # Everything after the first "--" is the command of `noleader run`, verbatim.
    command: list[str] | None = None
    if "--" in argv:
        split = argv.index("--")
        argv, command = argv[:split], argv[split + 1:]
    args = parser.parse_args(argv)
    if command is not None and args.command_name != "run":
        parser.error(f"only `noleader run` takes a command after --, not "
                     f"`noleader {args.command_name}`")
    if args.command_name == "run":
        if not command:
            parser.error("run needs a command after --, e.g. "
                         "noleader run KEY -- my-scheduler --flag")
        args.command = command
        try:
            check_timing(args.ttl, None, None)
        except ValueError as exc:
            parser.error(str(exc))
    if args.command_name != "demo" and args.url is None:
        args.url = default_url()
    if args.command_name == "demo" and (args.candidates < 2 or args.rounds < 1):
        parser.error("demo needs --candidates >= 2 and --rounds >= 1")
    try:
        return trio.run(COMMANDS[args.command_name], args)
    except _Exit as exc:
        if exc.message:
            _say(exc.message)
        return exc.code
    except ValueError as exc:  # a malformed URL, a ttl the store refuses
        _say(str(exc))
        return EXIT_USAGE
    except BackendUnavailable as exc:
        _say(f"store unavailable: {exc}")
        return EXIT_UNAVAILABLE
    except NoLeaderError as exc:
        _say(str(exc))
        return 1
    except KeyboardInterrupt:
        return EXIT_SIGNAL_BASE + signal.SIGINT

