"""A TCP proxy that puts a bad network between a client and its server, on demand.

:class:`FaultProxy` listens on 127.0.0.1 and forwards every connection to one
upstream address. Faults can be switched at any time, from any task of the trio
program that runs it: one-way latency per direction, a black hole that keeps the
connections open but drops every byte, an RST of every open connection, and new
connections refused. It is how the test suite puts real NATS clients at distance
from a real nats-server.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import socket
import struct
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from types import TracebackType

import trio

__all__ = ["FaultProxy", "ProxyStatistics"]

#: How much one read takes from a socket (bytes).
CHUNK = 65536

#: ``struct linger`` with ``l_onoff=1, l_linger=0``: close() then sends an RST.
_LINGER_RST = struct.pack("ii", 1, 0)

def _check_latency(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number of seconds, got {value!r}")
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be finite and >= 0 seconds, got {value!r}")
    return float(value)


def _rst(stream: trio.SocketStream) -> None:
    """Close *stream* at once with an RST (no FIN, unsent bytes discarded)."""
    sock = stream.socket
    if sock.fileno() == -1:
        return
    with contextlib.suppress(OSError):  # the peer may be gone already
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
    sock.close()


@dataclasses.dataclass(frozen=True)
class ProxyStatistics:
    """What a :class:`FaultProxy` has done so far (from :meth:`FaultProxy.statistics`).

    Attributes:
        open_connections (int): Client connections open now.
        accepted (int): Client connections accepted since the start.
        refused (int): Connections reset on arrival while :attr:`FaultProxy.refuse`
            was set, or because the upstream could not be reached.
        reset (int): Connections reset by :meth:`FaultProxy.reset`.
        bytes_to_upstream (int): Bytes delivered from clients to the upstream.
        bytes_to_client (int): Bytes delivered from the upstream to clients.
        bytes_dropped (int): Bytes dropped by the black hole, both directions.
    """

    open_connections: int
    accepted: int
    refused: int
    reset: int
    bytes_to_upstream: int
    bytes_to_client: int
    bytes_dropped: int


class _Connection:
    """One client connection and its upstream twin, with their shared cancel scope."""

    def __init__(self, client: trio.SocketStream, upstream: trio.SocketStream) -> None:
        self.client = client
        self.upstream = upstream
        self.scope = trio.CancelScope()

    def reset(self) -> None:
        _rst(self.client)
        _rst(self.upstream)
        self.scope.cancel()


class FaultProxy:
    """A TCP proxy on 127.0.0.1 in front of one upstream address, with faults on demand.

    Use it as an async context manager inside a trio program (a pytest-trio test, a
    benchmark): it listens on a free port from entry and, on exit, closes every
    connection and stops every task it started. Connect your client to
    :attr:`port` (or :meth:`url`) instead of the server's own address::

        async with FaultProxy("127.0.0.1", nats_port, latency=0.15) as proxy:
            async with open_nats_backend(proxy.url("nats")):
                ...                       # every round trip now takes 0.3 s more
                proxy.black_hole = True   # the network dies; connections stay open
                proxy.reset()             # every connection gets an RST

    Every fault may be changed at any time and applies to the connections already
    open as well as to new ones:

    - **Latency** (:attr:`latency_to_upstream`, :attr:`latency_to_client`, or both
      with :meth:`set_latency`): every chunk of bytes is delivered that many seconds
      after the proxy read it, in order. Each direction has a queue of chunks
      stamped with their due time, so latency adds delay without limiting
      throughput (a chunk read while another waits is not held back further). When
      the latency drops, a chunk never overtakes an earlier one. The TCP handshake
      itself is not delayed: a client's connect completes at once.
    - **Black hole** (:attr:`black_hole`): the connections stay open, but every
      byte, in both directions, is *dropped*: bytes read while it is on, and bytes
      already queued that fall due while it is on. That is what a dead network
      looks like to an application (nothing arrives, nothing fails, until its own
      timeouts or keep-alives give up), except that the sender's writes never
      block, because the proxy keeps reading. Bytes dropped are gone: after the
      black hole lifts, a connection carries a stream with a gap in it, so reset
      the connections too when the network "comes back" (a TCP connection whose
      retransmissions gave up would be dead as well).
    - **Reset** (:meth:`reset`): every open connection is closed with an RST on both
      sides (``SO_LINGER`` 0, then close): the client and the upstream see a
      connection reset, not an orderly end. New connections are unaffected.
    - **Refuse** (:attr:`refuse`): while set, each new connection is accepted and
      at once reset, before any byte passes; open connections are unaffected. (The
      listener stays open so that the port cannot be taken by someone else: a
      client sees its connect succeed and its first read fail with a reset, where
      a closed port would have refused the connect itself.)

    An orderly end (EOF) on one side is passed on, after the latency, as an EOF to
    the other side; an error on one side resets the other. Bytes still queued when
    the proxy closes are discarded.

    Args:
        host (str): The upstream's host (an address or a name).
        port (int): The upstream's TCP port.
        latency (float): The initial one-way latency of both directions, seconds.
        black_hole (bool): Start with the black hole on.
        refuse (bool): Start refusing connections.

    Raises:
        ValueError, TypeError: for a negative or non-finite latency, or a port out
            of range (at construction, or when a latency is set).
    """

    def __init__(self, host: str, port: int, *, latency: float = 0.0,
                 black_hole: bool = False, refuse: bool = False) -> None:
        if not isinstance(host, str) or not host:
            raise TypeError(f"host must be a non-empty str, got {host!r}")
        if isinstance(port, bool) or not isinstance(port, int):
            raise TypeError(f"port must be an int, got {port!r}")
        if not 0 < port < 65536:
            raise ValueError(f"port must be in 1..65535, got {port!r}")
        self.upstream_host = host
        self.upstream_port = port
        self._latency_to_upstream = _check_latency("latency", latency)
        self._latency_to_client = self._latency_to_upstream
        self.black_hole: bool = black_hole
        """Drop every byte in both directions while True (connections stay open)."""
        self.refuse: bool = refuse
        """Reset every new connection on arrival while True."""
        self._port: int | None = None
        self._connections: set[_Connection] = set()
        self._stack: AsyncExitStack | None = None
        self._accepted = 0
        self._refused = 0
        self._reset = 0
        self._to_upstream = 0
        self._to_client = 0
        self._dropped = 0

    # -- faults ----------------------------------------------------------------

    @property
    def latency_to_upstream(self) -> float:
        """One-way latency from clients to the upstream, in seconds (settable)."""
        return self._latency_to_upstream

    @latency_to_upstream.setter
    def latency_to_upstream(self, seconds: float) -> None:
        self._latency_to_upstream = _check_latency("latency_to_upstream", seconds)

    @property
    def latency_to_client(self) -> float:
        """One-way latency from the upstream to clients, in seconds (settable)."""
        return self._latency_to_client

    @latency_to_client.setter
    def latency_to_client(self, seconds: float) -> None:
        self._latency_to_client = _check_latency("latency_to_client", seconds)

    def set_latency(self, seconds: float) -> None:
        """Set the one-way latency of both directions: a round trip gains ``2 * seconds``.

        Raises:
            ValueError, TypeError: if *seconds* is negative, not finite or not a number.
        """
        value = _check_latency("latency", seconds)
        self._latency_to_upstream = self._latency_to_client = value

    def reset(self) -> int:
        """Reset every open connection (RST to both the client and the upstream).

        Synchronous: the RSTs are sent before it returns. Connections made later
        are unaffected. Returns how many connections were reset.
        """
        connections = list(self._connections)
        for connection in connections:
            self._connections.discard(connection)
            connection.reset()
        self._reset += len(connections)
        return len(connections)

    # -- where it listens ------------------------------------------------------

    @property
    def host(self) -> str:
        """The address the proxy listens on: always ``127.0.0.1``."""
        return "127.0.0.1"

    @property
    def port(self) -> int:
        """The port the proxy listens on (a free one, picked on entry).

        Raises:
            RuntimeError: before the ``async with`` block was entered.
        """
        if self._port is None:
            raise RuntimeError("the proxy is not running: use it in 'async with'")
        return self._port

    def url(self, scheme: str) -> str:
        """``<scheme>://127.0.0.1:<port>``, say ``proxy.url("nats")`` for a NATS client."""
        return f"{scheme}://{self.host}:{self.port}"

    def statistics(self) -> ProxyStatistics:
        """Counters of connections and bytes, as a frozen snapshot."""
        return ProxyStatistics(
            open_connections=len(self._connections), accepted=self._accepted,
            refused=self._refused, reset=self._reset, bytes_to_upstream=self._to_upstream,
            bytes_to_client=self._to_client, bytes_dropped=self._dropped)

    def __repr__(self) -> str:
        where = f"127.0.0.1:{self._port}" if self._port is not None else "not running"
        return (f"<FaultProxy {where} -> {self.upstream_host}:{self.upstream_port} "
                f"latency={self._latency_to_upstream:g}/{self._latency_to_client:g} s "
                f"black_hole={self.black_hole} refuse={self.refuse}>")

    # -- running ---------------------------------------------------------------

    async def __aenter__(self) -> FaultProxy:
        if self._stack is not None:
            raise RuntimeError("this FaultProxy is already running")
        stack = AsyncExitStack()
        try:
            await stack.enter_async_context(self._run())
        except BaseException:
            await stack.aclose()
            raise
        self._stack = stack
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc_value: BaseException | None,
                        traceback: TracebackType | None) -> bool | None:
        stack, self._stack = self._stack, None
        assert stack is not None
        return await stack.__aexit__(exc_type, exc_value, traceback)

    @asynccontextmanager
    async def _run(self) -> AsyncIterator[None]:
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(
                functools.partial(trio.serve_tcp, self._handle, 0, host=self.host))
            self._port = listeners[0].socket.getsockname()[1]
            try:
                yield
            finally:
                # Every connection's tasks unwind and close its sockets (orderly).
                nursery.cancel_scope.cancel()
                self._port = None

    async def _handle(self, client: trio.SocketStream) -> None:
        self._accepted += 1
        if self.refuse:
            self._refused += 1
            _rst(client)
            return
        try:
            upstream = await trio.open_tcp_stream(self.upstream_host, self.upstream_port)
        except OSError:
            self._refused += 1
            _rst(client)
            return
        connection = _Connection(client, upstream)
        self._connections.add(connection)
        try:
            with connection.scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._pipe, connection, client, upstream, True)
                    nursery.start_soon(self._pipe, connection, upstream, client, False)
        finally:
            self._connections.discard(connection)
            # Both directions ended by EOF: an orderly close (closing twice is harmless).
            client.socket.close()
            upstream.socket.close()

    async def _pipe(self, connection: _Connection, source: trio.SocketStream,
                    sink: trio.SocketStream, to_upstream: bool) -> None:
        """One direction: read, stamp, queue; deliver each chunk when it falls due."""
        send, receive = trio.open_memory_channel[tuple[float, bytes]](math.inf)

        async def read() -> None:
            with send:
                while True:
                    data = await source.receive_some(CHUNK)
                    latency = (self._latency_to_upstream if to_upstream
                               else self._latency_to_client)
                    if self.black_hole:
                        # A dead network loses the end of the stream (FIN) as well.
                        self._dropped += len(data)
                        if not data:
                            return
                        continue
                    # b"" (EOF) is queued too: the end comes after the last bytes.
                    send.send_nowait((trio.current_time() + latency, data))
                    if not data:
                        return

        async def deliver() -> None:
            with receive:
                async for due, data in receive:
                    await trio.sleep_until(due)
                    if self.black_hole:
                        self._dropped += len(data)
                        if not data:
                            return
                        continue
                    if not data:
                        await sink.send_eof()
                        return
                    await sink.send_all(data)
                    if to_upstream:
                        self._to_upstream += len(data)
                    else:
                        self._to_client += len(data)

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(read)
                nursery.start_soon(deliver)
        except* (trio.BrokenResourceError, trio.ClosedResourceError):
            # One side failed (or was reset by us): the other side sees a reset too.
            if connection in self._connections:
                self._connections.discard(connection)
                connection.reset()
