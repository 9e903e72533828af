"""Graceful shutdown (issue 4), on the real process with real clients.

The contract (egressgate/proxy/server.py): on SIGTERM readiness fails at once (/readyz 503);
during `limits.shutdown_delay_s` the proxy keeps accepting (endpoint removal takes time); then
the listeners close; idle keep-alive connections close; requests in flight and open tunnels run
on until they end or `limits.drain_timeout_s` passes, then they are closed; exit code 0.
"""

from __future__ import annotations

import signal
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.integration.helpers_ops import (
    EchoTunnel,
    loopback_policy,
    payload,
    proxied_get,
    readyz,
    wait_until,
)
from tests.support.clients import ParsedResponse, read_response
from tests.support.dns import DnsServer
from tests.support.origin import Origin, OriginFactory, RawOrigin, RawOriginFactory
from tests.support.proxy import ProxyFactory, ProxyProcess

StartProxy = Callable[..., ProxyProcess]


@pytest.fixture
def origins(
    dns_server: DnsServer, origin_factory: OriginFactory, raw_origin_factory: RawOriginFactory
) -> tuple[Origin, RawOrigin]:
    dns_server.records["web.test"] = ["127.0.0.1"]
    dns_server.records["echo.test"] = ["127.0.0.1"]
    return origin_factory("web"), raw_origin_factory("echo", mode="echo")


@pytest.fixture
def start_proxy(proxy_factory: ProxyFactory, origins: tuple[Origin, RawOrigin]) -> StartProxy:
    web, echo = origins

    def start(**limits: Any) -> ProxyProcess:
        policy = loopback_policy(
            ["web.test", "echo.test"], http_ports=[web.port], connect_ports=[echo.port]
        )
        return proxy_factory(policy, limits=limits)

    return start


class Pump:
    """Round trips through an echo tunnel from a thread until stopped; counts them and keeps
    the first error (a byte mismatch is an error)."""

    def __init__(self, tunnel: EchoTunnel) -> None:
        self.tunnel = tunnel
        self.rounds = 0
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tunnel-pump", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        seed = 0
        while not self._stop.is_set() and self.error is None:
            seed += 1
            data = payload(16 * 1024, seed)
            try:
                if self.tunnel.roundtrip(data) != data:
                    self.error = f"round {seed}: echoed bytes differ"
            except Exception as exc:
                self.error = f"round {seed}: {type(exc).__name__}: {exc}"
            self.rounds += 1
            time.sleep(0.01)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(15.0)
        assert not self._thread.is_alive(), "the tunnel pump did not stop"


def connection_refused(address: tuple[str, int]) -> bool:
    """True if nothing accepts TCP connections on `address` any more."""
    try:
        with socket.create_connection(address, timeout=1.0):
            return False
    except ConnectionRefusedError:
        return True


def wait_ready_status(proxy: ProxyProcess, status: int, timeout: float) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        got, body = readyz(proxy)
        return body if got == status else None

    return wait_until(check, timeout, f"/readyz answering {status}")


def test_sigterm_fails_readiness_at_once_drains_a_transferring_tunnel_and_exits_0(
    start_proxy: StartProxy, origins: tuple[Origin, RawOrigin]
) -> None:
    _, echo = origins
    proxy = start_proxy(shutdown_delay_s=1.0, drain_timeout_s=15.0)
    tunnel = EchoTunnel(proxy.proxy_address, echo.authority("echo.test"))
    assert tunnel.status == 200
    pump = Pump(tunnel)
    try:
        wait_until(lambda: pump.rounds >= 5, 10, "tunnel round trips before SIGTERM")
        signalled = time.monotonic()
        proxy.signal(signal.SIGTERM)

        body = wait_ready_status(proxy, 503, timeout=0.5)
        assert body["ready"] is False
        assert body["draining"] is True
        assert body["tunnels"] == 1
        proxy.wait_for_event("draining", 2.0)

        # The listener closes after shutdown_delay_s: new connections are refused.
        wait_until(lambda: connection_refused(proxy.proxy_address), 5.0, "the listener to close")
        closed_after = time.monotonic() - signalled
        assert closed_after >= 0.9, f"listener closed {closed_after:.2f}s after SIGTERM"

        # The tunnel keeps relaying while the proxy drains.
        rounds = pump.rounds
        wait_until(lambda: pump.rounds >= rounds + 20, 10, "round trips after the listener closed")
        assert proxy.returncode is None
        assert readyz(proxy)[0] == 503
    finally:
        pump.stop()
    assert pump.error is None, pump.error
    last = payload(100_000, seed=99)
    assert tunnel.roundtrip(last) == last
    tunnel.close()
    ended = time.monotonic()

    assert proxy.wait_exit(10.0) == 0
    assert time.monotonic() - ended < 2.0, "the proxy waited although nothing was left"
    assert proxy.events("stopped")[-1]["forced_closed"] == 0
    (connection,) = echo.wait_for_closed(1)
    assert connection.bytes_received == pump.rounds * 16 * 1024 + 100_000


def test_new_requests_during_shutdown_delay_are_still_served(
    start_proxy: StartProxy, origins: tuple[Origin, RawOrigin]
) -> None:
    web, echo = origins
    proxy = start_proxy(shutdown_delay_s=2.0, drain_timeout_s=5.0)
    proxy.signal(signal.SIGTERM)
    wait_ready_status(proxy, 503, timeout=0.5)

    # Readiness already fails, but clients whose routing has not caught up yet still arrive
    # during the delay: that is what the delay is for ("keep accepting ... endpoint removal").
    try:
        response = proxied_get(proxy.proxy_address, web.url("/", "web.test"))
        outcome = f"{response.status} {response.header('x-egressgate-reason')}"
    except OSError as exc:
        outcome = f"{type(exc).__name__}: {exc}"
    assert outcome == "200 None", f"during shutdown_delay_s a new request got: {outcome}"
    with EchoTunnel(proxy.proxy_address, echo.authority("echo.test")) as tunnel:
        assert tunnel.status == 200
        data = payload(1000, seed=3)
        assert tunnel.roundtrip(data) == data
    assert proxy.wait_exit(10.0) == 0


def test_tunnel_that_never_ends_is_closed_at_drain_timeout_and_the_process_exits_0(
    start_proxy: StartProxy, origins: tuple[Origin, RawOrigin]
) -> None:
    _, echo = origins
    proxy = start_proxy(drain_timeout_s=1.5)
    with EchoTunnel(proxy.proxy_address, echo.authority("echo.test")) as tunnel:
        assert tunnel.status == 200
        data = payload(2048, seed=5)
        assert tunnel.roundtrip(data) == data

        signalled = time.monotonic()
        proxy.signal(signal.SIGTERM)
        code = proxy.wait_exit(10.0)
        took = time.monotonic() - signalled
        assert code == 0
        assert 1.3 <= took <= 4.0, f"exited {took:.2f}s after SIGTERM with drain_timeout_s 1.5"
        assert tunnel.wait_closed(3.0) in ("eof", "reset")
    echo.wait_for_closed(1, timeout=3.0)
    assert proxy.events("stopped")[-1]["forced_closed"] == 1


def test_sigterm_closes_idle_keepalive_connections_promptly_and_finishes_requests_in_flight(
    start_proxy: StartProxy, origins: tuple[Origin, RawOrigin]
) -> None:
    web, echo = origins
    proxy = start_proxy(drain_timeout_s=15.0)
    tunnel = EchoTunnel(proxy.proxy_address, echo.authority("echo.test"))  # keeps it draining
    assert tunnel.status == 200

    idle = socket.create_connection(proxy.proxy_address, timeout=5.0)
    slow_result: list[ParsedResponse | BaseException] = []

    def slow_request() -> None:
        try:
            url = web.url("/slow?delay=1.5", "web.test")
            slow_result.append(proxied_get(proxy.proxy_address, url, timeout=15.0))
        except BaseException as exc:
            slow_result.append(exc)

    slow = threading.Thread(target=slow_request, name="slow-request", daemon=True)
    try:
        idle.sendall(f"GET {web.url('/', 'web.test')} HTTP/1.1\r\nHost: web.test\r\n\r\n".encode())
        first = read_response(idle)
        assert (first.status, first.body_prefix) == (200, b"hello from web")

        slow.start()
        web.wait_for_requests(1, path="/slow")
        signalled = time.monotonic()
        proxy.signal(signal.SIGTERM)

        # The idle keep-alive connection is closed at once, not at keepalive_timeout_s (60 s).
        idle.settimeout(3.0)
        try:
            assert idle.recv(65536) == b""
        except ConnectionResetError:
            pass
        assert time.monotonic() - signalled < 1.0

        # The request in flight gets its whole response.
        slow.join(15.0)
        (result,) = slow_result
        assert isinstance(result, ParsedResponse), result
        assert (result.status, result.body) == (200, b"slow\n")

        # The tunnel still relays; the proxy waits for it, then exits 0.
        assert proxy.returncode is None
        data = payload(8192, seed=11)
        assert tunnel.roundtrip(data) == data
    finally:
        idle.close()
        tunnel.close()
        if slow.ident is not None:
            slow.join(15.0)
    assert proxy.wait_exit(5.0) == 0
    assert proxy.events("stopped")[-1]["forced_closed"] == 0
