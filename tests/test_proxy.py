"""FaultProxy against a trivial echo server: latency, black hole, reset, refusal, shutdown.

Real sockets on 127.0.0.1 and the real clock; time bounds are generous (the
machine may be busy with other suites), and each is far from what a wrong
implementation would give.
"""

from __future__ import annotations

import math
import socket
from collections.abc import AsyncIterator

import pytest
import trio

from trio_noleader.testing import FaultProxy, ProxyStatistics

#: Slack on top of any expected delay: loaded CI machines are slow, never early.
SLACK = 1.0


class EchoServer:
    """Echoes every byte back; records what it saw, for the tests to wait on."""

    def __init__(self) -> None:
        self.port = 0
        self.received = bytearray()
        self.data = trio.Event()
        self.errors: list[BaseException] = []
        self.ended = trio.Event()

    async def handle(self, stream: trio.SocketStream) -> None:
        try:
            while data := await stream.receive_some():
                self.received += data
                self.data.set()
                self.data = trio.Event()
                await stream.send_all(data)
            await stream.send_eof()
        except trio.BrokenResourceError as exc:
            self.errors.append(exc)
        finally:
            self.ended.set()

    async def wait_for(self, data: bytes) -> None:
        while data not in self.received:
            await self.data.wait()


@pytest.fixture
async def echo(nursery: trio.Nursery) -> EchoServer:
    server = EchoServer()
    listeners = await nursery.start(trio.serve_tcp, server.handle, 0)
    server.port = listeners[0].socket.getsockname()[1]
    return server


@pytest.fixture
async def proxy(echo: EchoServer) -> AsyncIterator[FaultProxy]:
    async with FaultProxy("127.0.0.1", echo.port) as running:
        yield running


async def receive_exactly(stream: trio.SocketStream, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = await stream.receive_some(size - len(data))
        assert chunk, f"EOF after {bytes(data)!r}"
        data += chunk
    return bytes(data)


async def round_trip(stream: trio.SocketStream, data: bytes) -> float:
    start = trio.current_time()
    await stream.send_all(data)
    assert await receive_exactly(stream, len(data)) == data
    return trio.current_time() - start


async def nothing_arrives(stream: trio.SocketStream, seconds: float) -> None:
    with trio.move_on_after(seconds) as waited:
        data = await stream.receive_some()
        raise AssertionError(f"received {data!r} through the black hole")
    assert waited.cancelled_caught


def assert_reset(exc: BaseException) -> None:
    assert isinstance(exc, trio.BrokenResourceError), repr(exc)
    assert isinstance(exc.__cause__, ConnectionResetError), repr(exc.__cause__)


# -- plain forwarding --------------------------------------------------------------


async def test_bytes_and_the_end_of_the_stream_pass_both_ways(
    proxy: FaultProxy, echo: EchoServer,
) -> None:
    assert proxy.url("nats") == f"nats://127.0.0.1:{proxy.port}"
    stream = await trio.open_tcp_stream(proxy.host, proxy.port)
    async with stream:
        payload = bytes(range(256)) * 64
        await stream.send_all(payload)
        await stream.send_eof()
        echoed = bytearray()
        while chunk := await stream.receive_some():
            echoed += chunk
    assert echoed == payload
    with trio.fail_after(SLACK):
        await echo.ended.wait()
    assert echo.errors == []
    stats = proxy.statistics()
    assert stats.bytes_to_upstream == stats.bytes_to_client == len(payload)
    assert (stats.accepted, stats.refused, stats.reset, stats.bytes_dropped) == (1, 0, 0, 0)


# -- latency -----------------------------------------------------------------------


async def test_latency_delays_each_direction_by_its_own_amount(proxy: FaultProxy) -> None:
    async with await trio.open_tcp_stream(proxy.host, proxy.port) as stream:
        fast = await round_trip(stream, b"ping")
        proxy.latency_to_upstream = 0.2
        proxy.latency_to_client = 0.1
        slow = await round_trip(stream, b"ping")
        proxy.set_latency(0.15)
        even = await round_trip(stream, b"ping")
        proxy.set_latency(0)
        back = await round_trip(stream, b"ping")
    assert fast < 0.2
    assert 0.3 <= slow < 0.3 + SLACK
    assert 0.3 <= even < 0.3 + SLACK
    assert back < 0.2
    assert (proxy.latency_to_upstream, proxy.latency_to_client) == (0, 0)


async def test_latency_does_not_serialise_the_stream(proxy: FaultProxy) -> None:
    # Ten small messages sent 50 ms apart, round trip 0.4 s: each comes back 0.4 s
    # after it left. A proxy sleeping per chunk would return the last after >= 2 s.
    proxy.set_latency(0.2)
    count, spacing = 10, 0.05
    sent: list[float] = []
    arrived: dict[int, float] = {}
    async with await trio.open_tcp_stream(proxy.host, proxy.port) as stream:

        async def receive() -> None:
            while len(arrived) < count:
                chunk = await stream.receive_some()
                assert chunk
                for byte in chunk:
                    arrived[byte] = trio.current_time()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(receive)
            for index in range(count):
                sent.append(trio.current_time())
                await stream.send_all(bytes([index]))
                await trio.sleep(spacing)  # the traffic's shape, not a synchronisation
    delays = [arrived[i] - sent[i] for i in range(count)]
    assert min(delays) >= 0.4
    assert max(delays) < 0.4 + SLACK, delays
    assert arrived[count - 1] - sent[0] < (count - 1) * spacing + 0.4 + SLACK


async def test_latency_does_not_throttle_throughput(proxy: FaultProxy) -> None:
    # 4 MiB in 64 KiB reads is 64 chunks; with 0.1 s each way, a proxy that waited
    # per chunk would need 12.8 s. This one needs one round trip plus the copying.
    proxy.set_latency(0.1)
    payload = b"x" * (4 << 20)
    async with await trio.open_tcp_stream(proxy.host, proxy.port) as stream:
        start = trio.current_time()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(stream.send_all, payload)
            assert await receive_exactly(stream, len(payload)) == payload
        elapsed = trio.current_time() - start
    assert 0.2 <= elapsed < 0.2 + 3 * SLACK


async def test_a_lower_latency_never_reorders_bytes(proxy: FaultProxy) -> None:
    proxy.set_latency(0.3)
    async with await trio.open_tcp_stream(proxy.host, proxy.port) as stream:
        await stream.send_all(b"first ")
        proxy.set_latency(0)
        await stream.send_all(b"second")
        assert await receive_exactly(stream, 12) == b"first second"


# -- black hole --------------------------------------------------------------------


async def test_the_black_hole_drops_bytes_and_keeps_the_connection(
    proxy: FaultProxy, echo: EchoServer,
) -> None:
    async with await trio.open_tcp_stream(proxy.host, proxy.port) as stream:
        await round_trip(stream, b"hello")
        proxy.black_hole = True
        await stream.send_all(b"lost")
        await nothing_arrives(stream, 0.5)
        assert b"lost" not in echo.received  # dropped on the way in
        assert proxy.statistics().bytes_dropped == 4
        assert proxy.statistics().open_connections == 1
        proxy.black_hole = False
        # The connection still works; what the black hole took is gone for good.
        await round_trip(stream, b"found")
    assert echo.received == b"hellofound"
    assert echo.errors == []


async def test_the_black_hole_drops_bytes_already_on_their_way(
    proxy: FaultProxy, echo: EchoServer,
) -> None:
    proxy.latency_to_client = 0.3
    async with await trio.open_tcp_stream(proxy.host, proxy.port) as stream:
        await stream.send_all(b"late")
        with trio.fail_after(SLACK):
            await echo.wait_for(b"late")  # the reply is now queued in the proxy
        proxy.black_hole = True
        await nothing_arrives(stream, 0.6)
        assert proxy.statistics().bytes_dropped == 4
        assert proxy.statistics().bytes_to_client == 0


# -- reset and refusal -------------------------------------------------------------


async def test_reset_is_seen_as_a_connection_reset_on_both_sides(
    proxy: FaultProxy, echo: EchoServer,
) -> None:
    stream = await trio.open_tcp_stream(proxy.host, proxy.port)
    async with stream:
        await round_trip(stream, b"hello")
        assert proxy.reset() == 1
        with pytest.raises(trio.BrokenResourceError) as raised:
            await stream.receive_some()
        assert_reset(raised.value)
    with trio.fail_after(SLACK):
        await echo.ended.wait()
    assert len(echo.errors) == 1
    assert_reset(echo.errors[0])
    assert proxy.statistics().reset == 1
    assert proxy.statistics().open_connections == 0
    # New connections are not affected.
    async with await trio.open_tcp_stream(proxy.host, proxy.port) as again:
        await round_trip(again, b"again")


async def test_refused_connections_are_reset_and_open_ones_keep_working(
    proxy: FaultProxy, echo: EchoServer,
) -> None:
    async with await trio.open_tcp_stream(proxy.host, proxy.port) as kept:
        await round_trip(kept, b"before")
        proxy.refuse = True
        async with await trio.open_tcp_stream(proxy.host, proxy.port) as refused:
            with pytest.raises(trio.BrokenResourceError) as raised:
                await refused.receive_some()
            assert_reset(raised.value)
        await round_trip(kept, b"during")
        proxy.refuse = False
        async with await trio.open_tcp_stream(proxy.host, proxy.port) as later:
            await round_trip(later, b"after")
    assert proxy.statistics().refused == 1
    assert echo.received == b"beforeduringafter"


async def test_an_unreachable_upstream_resets_the_client() -> None:
    with socket.socket() as probe:  # a port with nobody listening on it
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    async with FaultProxy("127.0.0.1", port) as proxy:
        async with await trio.open_tcp_stream(proxy.host, proxy.port) as stream:
            with pytest.raises(trio.BrokenResourceError) as raised:
                await stream.receive_some()
            assert_reset(raised.value)
        assert proxy.statistics().refused == 1


# -- lifetime and arguments --------------------------------------------------------


async def test_leaving_the_block_closes_every_connection_and_the_port(
    echo: EchoServer,
) -> None:
    async with FaultProxy("127.0.0.1", echo.port, latency=0.05) as proxy:
        port = proxy.port
        stream = await trio.open_tcp_stream(proxy.host, port)
        await round_trip(stream, b"hi")
        await stream.send_all(b"queued")  # still in the proxy when it closes
    assert proxy.statistics().open_connections == 0
    with pytest.raises(RuntimeError, match="not running"):
        proxy.port  # noqa: B018
    async with stream:
        assert await stream.receive_some() == b""  # an orderly end, not a reset
    with trio.fail_after(SLACK):
        await echo.ended.wait()
    assert echo.errors == []
    with pytest.raises(OSError, match=r"(?i)refused|connect"):
        await trio.open_tcp_stream("127.0.0.1", port)


async def test_a_proxy_can_run_again_after_it_stopped(echo: EchoServer) -> None:
    proxy = FaultProxy("127.0.0.1", echo.port)
    for _ in range(2):
        async with proxy:
            with pytest.raises(RuntimeError, match="already running"):
                await proxy.__aenter__()
            async with await trio.open_tcp_stream(proxy.host, proxy.port) as stream:
                await round_trip(stream, b"hi")
    assert proxy.statistics().accepted == 2


@pytest.mark.parametrize(("value", "error", "message"), [
    (-0.1, ValueError, "finite and >= 0"),
    (math.inf, ValueError, "finite and >= 0"),
    (math.nan, ValueError, "finite and >= 0"),
    (True, TypeError, "number of seconds"),
    ("0.1", TypeError, "number of seconds"),
])
def test_a_bad_latency_is_refused(value: object, error: type[Exception],
                                  message: str) -> None:
    with pytest.raises(error, match=message):
        FaultProxy("127.0.0.1", 4222, latency=value)  # type: ignore[arg-type]
    proxy = FaultProxy("127.0.0.1", 4222)
    for attribute in ("latency_to_upstream", "latency_to_client"):
        with pytest.raises(error, match=f"{attribute} must"):
            setattr(proxy, attribute, value)
    with pytest.raises(error, match=message):
        proxy.set_latency(value)  # type: ignore[arg-type]
    assert (proxy.latency_to_upstream, proxy.latency_to_client) == (0, 0)


@pytest.mark.parametrize(("host", "port", "error"), [
    ("", 4222, TypeError), ("127.0.0.1", 0, ValueError), ("127.0.0.1", 65536, ValueError),
    ("127.0.0.1", "4222", TypeError),
])
def test_a_bad_upstream_is_refused(host: str, port: int, error: type[Exception]) -> None:
    with pytest.raises(error, match=r"host|port"):
        FaultProxy(host, port)


def test_statistics_are_a_frozen_snapshot() -> None:
    stats = FaultProxy("127.0.0.1", 4222).statistics()
    assert stats == ProxyStatistics(0, 0, 0, 0, 0, 0, 0)
    with pytest.raises(AttributeError):
        stats.accepted = 1  # type: ignore[misc]
    assert "not running" in repr(FaultProxy("127.0.0.1", 4222))
