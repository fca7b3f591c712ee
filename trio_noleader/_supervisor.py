"""The supervisor between ``noleader run`` and its command. A script: stdlib only.

``noleader run`` starts it as ``python -I -S _supervisor.py FD CMD [ARGS...]``, where
FD is one end of a socket pair whose other end only noleader holds. It runs CMD in
a session (so a process group) of its own and keeps the whole tree of CMD on a
leash, so that no process of it can outlive noleader's lease:

- On Linux it is a *child subreaper* (``PR_SET_CHILD_SUBREAPER``): a process of the
  tree whose parent exits is re-parented to it, not to init, even one that left the
  process group (``setsid``, a double fork). Every descendant stays findable in
  ``/proc`` by its parent links.
- When noleader dies, however it dies (SIGKILL included), the kernel closes its end
  of the socket: the supervisor reads end-of-file and SIGKILLs every process of the
  tree, again until none is left, then exits. (``PR_SET_PDEATHSIG`` alone reaches
  only a direct child: ``sh -c 'sleep 300 & wait'`` would leave ``sleep`` running.)
- CMD itself also gets ``PR_SET_PDEATHSIG`` = SIGKILL, in case the supervisor is
  killed on its own.

The protocol, one line each way:

- to noleader: ``pid N`` once CMD runs; ``error ERRNO`` if it could not be started;
  ``exit CODE LEFT`` when CMD itself exits (CODE ``-N`` for signal N; LEFT processes
  of its tree still run, as far as ``/proc`` shows); ``done`` when no process of the
  tree is left (then the supervisor exits).
- from noleader: ``term`` (SIGTERM to CMD's process group, and to every other
  descendant), ``kill`` (SIGKILL to every process of the tree, until none is left).

It ignores SIGINT and SIGTERM itself (noleader decides when to stop): they reach it
when they are sent to noleader's process group, from a terminal's Ctrl-C say.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import socket
import subprocess
import sys

#: prctl(2) options (linux/prctl.h).
PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36

#: Seconds between two sweeps for new processes while killing the tree.
SWEEP_INTERVAL = 0.05


def _prctl(option: int, value: int) -> bool:
    """Call prctl(2) on Linux; False elsewhere or if it failed."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    return bool(libc.prctl(option, value, 0, 0, 0) == 0)


def tree() -> list[tuple[int, int]]:
    """``(pid, process group)`` of every live descendant of this process (Linux).

    Read from ``/proc``: each process's parent and group, then a walk down from
    here. Elsewhere (no ``/proc``) the list is empty and only the process group
    is signalled.
    """
    children: dict[int, list[tuple[int, int]]] = {}
    try:
        names = os.listdir("/proc")
    except OSError:
        return []
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue  # gone meanwhile
        # "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses.
        fields = stat[stat.rindex(b")") + 2:].split()
        if fields[0] in (b"Z", b"X"):
            continue  # a zombie waits for its reaping, it runs nothing
        children.setdefault(int(fields[1]), []).append((int(name), int(fields[2])))
    found: list[tuple[int, int]] = []
    todo = [os.getpid()]
    while todo:
        for pid, group in children.get(todo.pop(), ()):
            found.append((pid, group))
            todo.append(pid)
    return found


class Supervisor:
    def __init__(self, channel: socket.socket, command: list[str]) -> None:
        self.channel = channel
        self.command = command
        self.group = 0  # CMD's process group: its pid (a session leader)
        self.main_running = False
        self.noleader_gone = False
        self.killing = False

    def send(self, line: str) -> None:
        if self.noleader_gone:
            return
        try:
            self.channel.sendall(f"{line}\n".encode())
        except OSError:
            self.noleader_gone = True
            self.killing = True

    def signal_tree(self, signum: int) -> None:
        """Send *signum* to CMD's group and to every other process of the tree."""
        members = tree()
        # The group is CMD's pid: safe to signal while CMD is unreaped or a member
        # still runs (the number cannot be reused while the group exists).
        if self.main_running or any(group == self.group for _, group in members):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.group, signum)
        for pid, group in members:
            if group != self.group or signum == signal.SIGKILL:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signum)

    def reap(self) -> bool:
        """Reap every exited child; True once no child is left."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return True
            if pid == 0:
                return False
            if pid == self.group:
                self.main_running = False
                left = len(tree())
                self.send(f"exit {os.waitstatus_to_exitcode(status)} {left}")

    def start(self) -> bool:
        def in_child() -> None:
            # Runs between fork and exec, in a single-threaded process.
            _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)

        try:
            child = subprocess.Popen(self.command, start_new_session=True,
                                     preexec_fn=in_child)
        except OSError as exc:
            self.send(f"error {exc.errno or 0}")
            return False
        # We reap with waitpid(-1) ourselves: keep Popen from trying too.
        child.returncode = 0
        self.group = child.pid
        self.main_running = True
        self.send(f"pid {child.pid}")
        return True

    def run(self) -> int:
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_r, False)
        os.set_blocking(wake_w, False)
        signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        if not self.start():
            return 0
        selector = selectors.DefaultSelector()
        selector.register(wake_r, selectors.EVENT_READ)
        selector.register(self.channel, selectors.EVENT_READ)
        buffer = b""
        while True:
            if self.killing:
                self.signal_tree(signal.SIGKILL)
            if self.reap() and not self.main_running:
                self.send("done")
                return 0
            timeout = SWEEP_INTERVAL if self.killing else None
            for key, _ in selector.select(timeout):
                if key.fileobj == wake_r:
                    with contextlib.suppress(BlockingIOError):
                        while os.read(wake_r, 512):
                            pass
                    continue
                try:
                    data = self.channel.recv(512)
                except OSError:
                    data = b""
                if not data:
                    # noleader is gone: nothing of its command may run on unleased.
                    self.noleader_gone = True
                    self.killing = True
                    selector.unregister(self.channel)
                    continue
                buffer += data
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    if line == b"term":
                        self.signal_tree(signal.SIGTERM)
                    elif line == b"kill":
                        self.killing = True


def main(argv: list[str]) -> int:
    for signum in (signal.SIGINT, signal.SIGTERM):
        # A handler, not SIG_IGN: exec resets handlers, but would pass SIG_IGN on.
        signal.signal(signum, lambda *_: None)
    channel = socket.socket(fileno=int(argv[1]))
    _prctl(PR_SET_CHILD_SUBREAPER, 1)
    return Supervisor(channel, argv[2:]).run()


if __name__ == "__main__":
    sys.exit(main(sys.argv))
