"""Chaos: a client that vanishes mid-upload, mid-download, or mid-tunnel. The proxy closes the
upstream side at once, logs one record that says the client left, counts it, and holds no more
descriptors than before (counted in /proc/PID/fd).
"""

from __future__ import annotations

import socket
import time

import pytest

from tests.chaos.support import (
    REQUESTS,
    fd_count,
    no_tracebacks,
    peer_closed,
    read_head,
    record_of,
    scripted_origin,
    wait_fds_back,
    wait_metric,
)
from tests.integration.helpers_core import http_request, start_proxy
from tests.integration.helpers_ops import EchoTunnel, payload, wait_until
from tests.support.dns import DnsServer
from tests.support.origin import RawOriginFactory
from tests.support.proxy import ProxyFactory, ProxyProcess

BODY_BYTES = 64 * 1024 * 1024


def start(proxy_factory: ProxyFactory, port: int) -> ProxyProcess:
    return start_proxy(proxy_factory, allow=["up.test"], ports=[port])


def _sink(sock: socket.socket) -> None:
    """Read the request head and then the body until the proxy closes."""
    sock.settimeout(10)
    read_head(sock)
    peer_closed(sock, 10)


def _big_download(sock: socket.socket) -> None:
    sock.settimeout(10)
    read_head(sock)
    sock.sendall(f"HTTP/1.1 200 OK\r\nContent-Length: {BODY_BYTES}\r\n\r\n".encode())
    block = b"d" * 65536
    for _ in range(BODY_BYTES // len(block)):  # ends early when the proxy lets go
        sock.sendall(block)


@pytest.mark.parametrize("leaves", ["close", "reset"])
def test_client_vanishing_mid_upload_closes_the_upstream_and_leaks_nothing(
    proxy_factory: ProxyFactory, dns_server: DnsServer, leaves: str
) -> None:
    with scripted_origin(_sink) as upstream:
        dns_server.records["up.test"] = [upstream.host]
        proxy = start(proxy_factory, upstream.port)
        baseline = fd_count(proxy.pid)
        client = socket.create_connection(proxy.proxy_address, timeout=5)
        head = http_request(
            f"http://up.test:{upstream.port}/upload",
            method="POST",
            headers=[("Content-Length", str(BODY_BYTES))],
        )
        client.sendall(head + b"u" * 1_000_000)
        wait_until(lambda: upstream.accepted == 1, 5, "the upload to reach the upstream")
        time.sleep(0.1)
        if leaves == "reset":
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
        client.close()
        wait_until(lambda: upstream.finished == 1, 5, "the proxy to close the upstream")
        record = record_of(proxy, host="up.test")
        assert record["status"] == 499, record
        assert 0 < record["bytes_up"] < BODY_BYTES, record
        wait_metric(proxy, REQUESTS, 1, kind="http", reason="allowed")
        wait_fds_back(proxy.pid, baseline)
        no_tracebacks(proxy)


def test_client_vanishing_mid_download_closes_the_upstream_and_leaks_nothing(
    proxy_factory: ProxyFactory, dns_server: DnsServer
) -> None:
    with scripted_origin(_big_download) as upstream:
        dns_server.records["up.test"] = [upstream.host]
        proxy = start(proxy_factory, upstream.port)
        baseline = fd_count(proxy.pid)
        with socket.create_connection(proxy.proxy_address, timeout=5) as client:
            client.sendall(http_request(f"http://up.test:{upstream.port}/big"))
            got = 0
            for _ in range(10_000):  # bounded: 1 MiB, then leave
                chunk = client.recv(65536)
                assert chunk
                got += len(chunk)
                if got >= 1024 * 1024:
                    break
        wait_until(lambda: upstream.finished == 1, 5, "the proxy to close the upstream")
        record = record_of(proxy, host="up.test")
        assert record["status"] == 200, record
        assert 0 < record["bytes_down"] < BODY_BYTES, record
        assert "client closed" in (record["detail"] or ""), record
        wait_metric(proxy, REQUESTS, 1, kind="http", reason="allowed")
        wait_fds_back(proxy.pid, baseline)
        no_tracebacks(proxy)


def test_client_vanishing_mid_tunnel_closes_the_upstream_and_leaks_nothing(
    proxy_factory: ProxyFactory, dns_server: DnsServer, raw_origin_factory: RawOriginFactory
) -> None:
    echo = raw_origin_factory("echo", mode="echo")
    dns_server.records["up.test"] = [echo.host]
    proxy = start(proxy_factory, echo.port)
    baseline = fd_count(proxy.pid)
    tunnel = EchoTunnel(proxy.proxy_address, echo.authority("up.test"))
    data = payload(100_000, seed=3)
    assert tunnel.roundtrip(data) == data
    tunnel.sock.sendall(b"q" * 500_000)  # in flight when the client vanishes
    tunnel.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
    tunnel.close()
    echo.wait_for_closed(1, timeout=5)
    record = record_of(proxy, host="up.test", method="CONNECT")
    assert record["status"] == 200, record
    assert record["bytes_up"] >= 100_000, record
    wait_metric(proxy, REQUESTS, 1, kind="tunnel", reason="allowed")
    wait_metric(proxy, "egressgate_active_tunnels", 0)
    wait_fds_back(proxy.pid, baseline)
    no_tracebacks(proxy)
