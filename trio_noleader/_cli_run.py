"""``noleader run``: a command that runs only while leader, and never past the lease.

The rules this module keeps (docs/reference/cli.rst):

- The lease is held, and renewed, for as long as any process of the command's tree
  runs. SIGINT/SIGTERM to noleader do not end the ``hold_leadership`` block: they
  ask the command to stop (SIGTERM to its process group, SIGKILL after ``--grace``),
  and the lease is released once the last process of the tree has exited.
- When renewals fail, the command is stopped so that it is dead before the local
  lease deadline (:attr:`Leadership.deadline`, which moves with each renewal): the
  SIGTERM goes out ``--grace`` plus a margin before it, the SIGKILL a margin before
  it at the latest. Hence the rule ``grace < ttl - guard - renew_interval``, checked
  at start: with a longer grace, a lease could not be renewed even once before the
  command had to be told to stop.
- When the store shows the lease gone (an operator's ``noleader reset --force``),
  noleader notices within :data:`OWN_KEY_CHECK` (it looks at its key that often,
  and renewals would notice too) and stops the command the same way.
- The command runs under :mod:`trio_noleader._supervisor`, in a session of its own;
  no process of its tree outlives noleader, even a SIGKILLed noleader.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import math
import os
import shlex
import signal
import socket
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import trio

from ._cli_common import (
    EXIT_LOST,
    EXIT_NOT_ELECTED,
    EXIT_SIGNAL_BASE,
    EXIT_USAGE,
    Exit,
    describe,
    say,
)
from ._election import Leadership, hold_leadership
from ._exceptions import BackendUnavailable, LeadershipLost
from ._helpers import current_leader
from ._open import open_backend
from ._types import check_timing
from ._unwrap import bare_exceptions

__all__ = ["check_grace", "cmd_run", "default_grace"]

#: The script that runs the command (see its docstring).
SUPERVISOR = str(Path(__file__).with_name("_supervisor.py"))

#: The command is dead this long before the lease deadline at the latest (seconds):
#: room for the SIGKILL to take effect and for the supervisor to report it. Shrunk
#: to fit short leases (see :func:`kill_margin`).
KILL_MARGIN = 0.25

#: Seconds between two looks at our own key while the command runs (at most
#: ``renew_interval``): how soon a ``noleader reset --force`` stops the command.
OWN_KEY_CHECK = 1.0


def grace_room(ttl: float) -> float:
    """``ttl - guard - renew_interval`` at noleader run's timing: ``--grace`` stays below."""
    ttl, renew_interval, guard = check_timing(ttl, None, None)
    return ttl - guard - renew_interval


def default_grace(ttl: float) -> float:
    """``ttl / 3`` (5 s at the default ttl 15): always below :func:`grace_room` (0.57 ttl)."""
    return ttl / 3


def check_grace(ttl: float, grace: float) -> None:
    """Raise ``ValueError`` (naming the rule) for a ``--grace`` that cannot fit the lease."""
    ttl, renew_interval, guard = check_timing(ttl, None, None)
    room = ttl - guard - renew_interval
    # Within rounding of the room counts as the room: 3 - 0.3 - 1 is 1.7000000000000002.
    if grace >= room - 1e-9:
        raise ValueError(
            f"--grace {grace:g} does not fit --ttl {ttl:g}: the command must be dead before "
            f"the lease can run out, so --grace must be < ttl - guard - renew_interval = "
            f"{ttl:g} - {guard:g} - {renew_interval:.4g} = {room:.4g} s (guard = ttl/10, "
            "renew_interval = ttl/3); lower --grace or raise --ttl")


def kill_margin(ttl: float, grace: float) -> float:
    """How long before the deadline the command must be dead: at most :data:`KILL_MARGIN`.

    Never more than half of what ``--grace`` leaves of :func:`grace_room`, so that
    a healthy lease is always renewed before its SIGTERM would be due.
    """
    return min(KILL_MARGIN, (grace_room(ttl) - grace) / 2)


class _Stop:
    """What noleader has been asked to do, and a wake-up call for the loop that acts."""

    def __init__(self) -> None:
        self.signals: list[int] = []
        self.leading = False
        self.campaign = trio.CancelScope()
        #: Why the lease is lost (or no longer shown in the store), once it is.
        self.lost: str | None = None
        self.finished = False
        self._changed = trio.Event()

    def changed(self) -> trio.Event:
        """The event the next :meth:`poke` sets (take it before looking at the state)."""
        return self._changed

    def poke(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def lose(self, why: str) -> None:
        if self.lost is None:
            self.lost = why
        self.poke()


class Command:
    """The command of ``noleader run``, under its supervisor (see :func:`open_command`)."""

    def __init__(self, process: trio.Process, stream: trio.SocketStream, stop: _Stop) -> None:
        self.process = process
        self._stream = stream
        self._stop = stop
        self.pid: int | None = None
        self.start_error: int | None = None
        #: The command's own exit code (-N: killed by signal N), once it exited.
        self.exit_code: int | None = None
        #: Processes of its tree still running when it exited.
        self.left_behind = 0
        self.started = trio.Event()
        #: Set once no process of the tree is left (or the supervisor is gone).
        self.done = trio.Event()

    async def _read(self) -> None:
        buffer = b""
        try:
            async for chunk in self._stream:
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    self._handle(line.decode().split())
        except trio.BrokenResourceError:
            pass
        finally:
            # End of file: the supervisor exited (after "done", or it was killed).
            self.started.set()
            self.done.set()
            self._stop.poke()

    def _handle(self, words: list[str]) -> None:
        if words[0] == "pid":
            self.pid = int(words[1])
            self.started.set()
        elif words[0] == "error":
            self.start_error = int(words[1])
            self.started.set()
        elif words[0] == "exit":
            self.exit_code = int(words[1])
            self.left_behind = int(words[2]) if len(words) > 2 else 0
        elif words[0] == "done":
            self.done.set()
        self._stop.poke()

    async def _send(self, line: bytes) -> None:
        # If the supervisor is gone, then so is the tree.
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await self._stream.send_all(line)

    async def term(self) -> None:
        """SIGTERM to the command's process group and every other process of its tree."""
        await self._send(b"term\n")

    async def kill(self) -> None:
        """SIGKILL to every process of the tree, until none is left."""
        await self._send(b"kill\n")


@asynccontextmanager
async def open_command(argv: list[str], env: dict[str, str],
                       stop: _Stop) -> AsyncIterator[Command]:
    """Start *argv* under the supervisor; on leaving, make sure its whole tree is gone.

    Raises:
        Exit: 127 if the command does not exist, 126 if it cannot be executed.
    """
    ours, theirs = socket.socketpair()
    try:
        process = await trio.lowlevel.open_process(
            [sys.executable, "-I", "-S", SUPERVISOR, str(theirs.fileno()), *argv],
            env=env, pass_fds=(theirs.fileno(),))
    except BaseException:
        ours.close()
        raise
    finally:
        theirs.close()
    stream = trio.SocketStream(trio.socket.from_stdlib_socket(ours))
    command = Command(process, stream, stop)
    try:
        with bare_exceptions():
            async with trio.open_nursery() as nursery:
                nursery.start_soon(command._read)
                try:
                    await command.started.wait()
                    if command.start_error is not None or command.pid is None:
                        code = command.start_error or 0
                        raise Exit(127 if code == errno.ENOENT else 126,
                                   f"cannot run {argv[0]!r}: "
                                   f"{os.strerror(code) if code else 'it did not start'}")
                    yield command
                finally:
                    # Whatever happened here, nothing of the command may outlive this.
                    with trio.CancelScope(shield=True):
                        if not command.done.is_set():
                            await command.kill()
                            await command.done.wait()
                    nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            await stream.aclose()
            await process.wait()


def _signame(signum: int) -> str:
    return signal.Signals(signum).name


async def _supervise(command: Command, lead: Leadership, stop: _Stop, grace: float,
                     margin: float) -> int | None:
    """Wait for the command's tree to be gone, stopping it when it must stop.

    Returns:
        The exit code noleader gives: ``None`` if the command ended by itself (its
        own code then), else 128 + the signal, or ``EXIT_LOST``.
    """
    term_at: float | None = None
    killed = False
    outcome: int | None = None
    while not command.done.is_set():
        changed = stop.changed()
        now = trio.current_time()
        kill_by = lead.deadline - margin
        if term_at is None:
            why = None
            if stop.signals:
                why = f"got {_signame(stop.signals[0])}"
                outcome = EXIT_SIGNAL_BASE + stop.signals[0]
            elif stop.lost is not None:
                why = stop.lost
                outcome = EXIT_LOST
            elif now >= kill_by - grace:
                why = ("renewals are failing, and the command must be gone before the lease "
                       "can run out")
                outcome = EXIT_LOST
            elif command.exit_code is not None and command.left_behind:
                why = (f"the command exited, leaving {command.left_behind} process"
                       f"{'es' if command.left_behind > 1 else ''} of its own running")
            if why is not None:
                left = max(0.0, min(grace, kill_by - now))
                kept = "" if stop.lost else "; the lease is kept until it has exited"
                say(f"{why}: stopping the command (SIGTERM now, SIGKILL in {left:.3g} s if it is "
                    f"still running){kept}")
                await command.term()
                term_at = now
        kill_at = kill_by if term_at is None else min(term_at + grace, kill_by)
        if not killed and (len(stop.signals) > 1 or now >= kill_at):
            if len(stop.signals) > 1:
                say(f"got {_signame(stop.signals[-1])} again: sending SIGKILL")
            elif term_at is not None and now >= term_at + grace:
                say(f"the command did not exit {grace:g} s after SIGTERM: sending SIGKILL")
            else:
                say("the lease deadline is near: sending SIGKILL")
            await command.kill()
            killed = True
        if killed:
            wake = math.inf
        elif term_at is None:
            wake = kill_by - grace
        else:
            wake = kill_at
        with trio.move_on_at(wake):
            await changed.wait()
    if outcome is None and stop.signals:
        outcome = EXIT_SIGNAL_BASE + stop.signals[0]  # came while leftovers were stopped
    return outcome


async def _notice_loss(stop: _Stop) -> None:
    """Sleep in the lease's scope: its cancellation means the lease is lost."""
    try:
        await trio.sleep_forever()
    finally:
        if not stop.finished:
            stop.lose("leadership was lost")


async def _check_own_key(lead: Leadership, stop: _Stop, every: float) -> None:
    """Notice soon that the store no longer shows our lease (say, after a reset).

    Renewals notice too, one ``renew_interval`` later at the latest (5 s at the
    default ttl); a look every *every* seconds shortens that. A look, not a watch:
    a watch on SQLite polls the file 40 times a second, about 3 % of a core for an
    idle ``noleader run`` on a small machine; a look a second costs next to nothing.

    A read may be served by a replica that lags (NATS KV), so only what no lagging
    replica can show counts: after our lease was seen, a newer term than ours, or
    no lease at all twice in a row. A stale read costs nothing but a second look.
    """
    seen_ours = False
    vacant = 0
    wait = 0.0  # the first look at once: our lease is there to be seen
    while True:
        await trio.sleep(wait)
        wait = every
        try:
            info = await current_leader(lead.key)
        except BackendUnavailable:
            continue  # the renewals see the store too
        if info is not None and info.candidate_id == lead.candidate_id:
            seen_ours, vacant = True, 0
            continue
        if not seen_ours:
            continue
        vacant = vacant + 1 if info is None else 0
        if vacant >= 2 or (info is not None and info.token > lead.token):
            shown = "no lease" if info is None else describe(info)
            stop.lose(f"the store shows {shown} on {lead.key} (reset by an operator?), "
                      "not our lease")
            return


async def _lead(args: argparse.Namespace, lead: Leadership, stop: _Stop) -> int:
    env = dict(os.environ, NOLEADER_KEY=args.key, NOLEADER_TOKEN=str(lead.token))
    margin = kill_margin(args.ttl, args.grace)
    _, renew_interval, _ = check_timing(args.ttl, None, None)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_notice_loss, stop)
        nursery.start_soon(_check_own_key, lead, stop, min(OWN_KEY_CHECK, renew_interval))
        try:
            # The lease's scope is cancelled when the lease is lost; the command is
            # stopped by our own rules instead, and only then is the block left.
            with trio.CancelScope(shield=True):
                async with open_command(args.command, env, stop) as command:
                    say(f"leader of {args.key} with token {lead.token}; started "
                        f"{shlex.join(args.command)} (pid {command.pid})")
                    outcome = await _supervise(command, lead, stop, args.grace, margin)
        finally:
            stop.finished = True
            nursery.cancel_scope.cancel()
    if outcome is not None:
        return outcome
    if command.exit_code is None:
        say("the command's supervisor exited unexpectedly (killed?); the command dies with it")
        return 1
    code = command.exit_code
    return code if code >= 0 else EXIT_SIGNAL_BASE - code


async def _campaign_and_run(args: argparse.Namespace, stop: _Stop) -> int:
    try:
        async with open_backend(args.url), hold_leadership(
            args.key, ttl=args.ttl, wait=not args.no_wait, name=args.name
        ) as lead:
            stop.leading = True
            if stop.signals:  # arrived as we were elected: do not start
                return EXIT_SIGNAL_BASE + stop.signals[0]
            return await _lead(args, lead, stop)
    except trio.WouldBlock:
        say(f"{args.key} is held by someone else; not starting the command (--no-wait)")
        return EXIT_NOT_ELECTED
    except LeadershipLost:
        # The library has said why; the command has been stopped.
        return EXIT_LOST


@contextlib.contextmanager
def _metrics(args: argparse.Namespace) -> Iterator[None]:
    """``--metrics-port``: the lease's metrics over HTTP while noleader runs."""
    port: int | None = getattr(args, "metrics_port", None)
    if port is None:
        yield
        return
    try:
        from . import metrics
    except ImportError:
        raise Exit(EXIT_USAGE, "--metrics-port needs the metrics extra: "
                   "pip install 'trio-noleader[metrics]'") from None
    try:
        server = metrics.serve(port, args.metrics_addr)
        bound = server.__enter__()
    except OSError as exc:
        raise Exit(EXIT_USAGE, f"--metrics-port {port}: {exc}") from None
    try:
        say(f"metrics on http://{args.metrics_addr}:{bound}/metrics")
        yield
    finally:
        server.__exit__(None, None, None)


async def cmd_run(args: argparse.Namespace) -> int:
    """``noleader run KEY -- CMD...`` (see the module's docstring)."""
    stop = _Stop()
    code: int | None = None
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals, \
            bare_exceptions():
        async with trio.open_nursery() as nursery:
            async def take_signals() -> None:
                async for signum in signals:
                    stop.signals.append(signum)
                    if not stop.leading:
                        stop.campaign.cancel()  # still campaigning: just stop
                    stop.poke()

            nursery.start_soon(take_signals)
            with stop.campaign, _metrics(args):
                code = await _campaign_and_run(args, stop)
            nursery.cancel_scope.cancel()
    if code is None:
        return EXIT_SIGNAL_BASE + stop.signals[0]
    return code
