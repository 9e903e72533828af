"""Chaos: upstreams that fail. One that accepts and never answers, one that resets mid-body,
one whose response never ends (head or body), one that is blackholed. Each case asserts what
the client sees, the access-log record and the metric, and that the proxy keeps serving.

Blackholed is a loopback listener whose accept queue is full (the kernel drops further SYNs:
the technique of tests/integration/test_connect_deadline.py, which also covers many blackholed
addresses against `connect_total_timeout_s`).
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Callable

from tests.chaos.support import (
    REQUESTS,
    UPSTREAM_ERRORS,
    fd_count,
    no_tracebacks,
    read_head,
    record_of,
    scripted_origin,
    wait_fds_back,
    wait_metric,
)
from tests.integration.helpers_core import (
    assert_raw_refusal,
    http_request,
    send_raw,
    single_response,
    start_proxy,
)
from tests.integration.helpers_ops import wait_until
from tests.integration.test_connect_deadline import Blackholes
from tests.support.clients import parse_responses
from tests.support.dns import DnsServer
from tests.support.origin import Origin, OriginFactory, RawOriginFactory
from tests.support.proxy import ProxyFactory, ProxyProcess

TIMEOUT_S = 1.0


def start(proxy_factory: ProxyFactory, ports: list[int], allow: list[str]) -> ProxyProcess:
    limits = {
        "connect_timeout_s": TIMEOUT_S,
        "connect_total_timeout_s": TIMEOUT_S * 2,
        "response_timeout_s": TIMEOUT_S,
    }
    return start_proxy(proxy_factory, allow=allow, ports=ports, limits=limits)


def still_serves(proxy: ProxyProcess, origin: Origin) -> None:
    result = send_raw(proxy, http_request(f"http://ok.test:{origin.port}/", close=True))
    assert single_response(result).body == f"hello from {origin.name}".encode()


def test_upstream_that_accepts_and_never_answers_is_a_504_after_response_timeout(
    proxy_factory: ProxyFactory,
    dns_server: DnsServer,
    origin: Origin,
    raw_origin_factory: RawOriginFactory,
) -> None:
    silent = raw_origin_factory("silent", mode="sink")
    dns_server.records["silent.test"] = [silent.host]
    dns_server.records["ok.test"] = [origin.host]
    proxy = start(proxy_factory, [silent.port, origin.port], ["silent.test", "ok.test"])
    started = time.monotonic()
    result = send_raw(
        proxy, http_request(f"http://silent.test:{silent.port}/", close=True), read_timeout=5
    )
    elapsed = time.monotonic() - started
    assert_raw_refusal(result, 504, "upstream-timeout", host="silent.test")
    assert TIMEOUT_S - 0.1 <= elapsed < TIMEOUT_S + 1.5, elapsed
    record = record_of(proxy, host="silent.test")
    assert (record["status"], record["reason"]) == (504, "upstream-timeout"), record
    wait_metric(proxy, REQUESTS, 1, reason="upstream-timeout")
    wait_metric(proxy, UPSTREAM_ERRORS, 1, reason="upstream-timeout")
    silent.wait_for_closed(1, timeout=5)  # the proxy let go of the silent upstream
    still_serves(proxy, origin)
    no_tracebacks(proxy)


def _reset_mid_body(sock: socket.socket) -> None:
    sock.settimeout(5)
    read_head(sock)
    sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"x" * 30000)
    time.sleep(0.2)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST


def test_upstream_reset_mid_body_cuts_the_client_short_and_is_logged_upstream_reset(
    proxy_factory: ProxyFactory, dns_server: DnsServer, origin: Origin
) -> None:
    dns_server.records["ok.test"] = [origin.host]
    with scripted_origin(_reset_mid_body) as upstream:
        dns_server.records["reset.test"] = [upstream.host]
        proxy = start(proxy_factory, [upstream.port, origin.port], ["reset.test", "ok.test"])
        result = send_raw(proxy, http_request(f"http://reset.test:{upstream.port}/"))
        assert result.data.startswith(b"HTTP/1.1 200"), result.data[:200]
        responses, _ = parse_responses(result.data)
        assert responses == [], "an incomplete body must not look complete"
        assert result.closed or result.reset, "the client was left hanging"
        assert len(result.data) < 100000
        record = record_of(proxy, host="reset.test")
        assert record["reason"] == "upstream-reset", record
        assert 0 < record["bytes_down"] < 100000, record
        wait_metric(proxy, REQUESTS, 1, reason="upstream-reset")
        still_serves(proxy, origin)
        no_tracebacks(proxy)


def _endless_body(sock: socket.socket) -> None:
    sock.settimeout(10)
    read_head(sock)
    sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n\r\n")
    block = b"e" * 65536
    for _ in range(100_000):  # bounded (6.5 GB); ends when the proxy lets go
        sock.sendall(block)


def _endless_head(sock: socket.socket) -> None:
    sock.settimeout(10)
    read_head(sock)
    sock.sendall(b"HTTP/1.1 200 OK\r\n")
    for number in range(100_000):  # bounded; ends when the proxy lets go
        sock.sendall(f"X-Endless-{number}: {'h' * 100}\r\n".encode())


def test_endless_response_body_streams_until_the_client_leaves_then_upstream_is_closed(
    proxy_factory: ProxyFactory, dns_server: DnsServer, origin: Origin
) -> None:
    dns_server.records["ok.test"] = [origin.host]
    with scripted_origin(_endless_body) as upstream:
        dns_server.records["endless.test"] = [upstream.host]
        proxy = start(proxy_factory, [upstream.port, origin.port], ["endless.test", "ok.test"])
        baseline = fd_count(proxy.pid)
        want = 8 * 1024 * 1024
        with socket.create_connection(proxy.proxy_address, timeout=10) as client:
            client.sendall(http_request(f"http://endless.test:{upstream.port}/"))
            got = 0
            for _ in range(100_000):  # bounded by `want` and the socket timeout
                chunk = client.recv(65536)
                assert chunk, f"the proxy ended an endless response after {got} bytes"
                got += len(chunk)
                if got >= want:
                    break
        _wait(lambda: upstream.finished == 1, 5, "the proxy to close the endless upstream")
        record = record_of(proxy, host="endless.test")
        assert record["status"] == 200, record
        assert record["bytes_down"] >= want - 65536, record
        assert "client closed" in (record["detail"] or ""), record
        wait_metric(proxy, "egressgate_bytes_total", want - 65536, direction="down", kind="http")
        wait_fds_back(proxy.pid, baseline)
        still_serves(proxy, origin)
        no_tracebacks(proxy)


def test_endless_response_head_is_a_502_upstream_bad_response(
    proxy_factory: ProxyFactory, dns_server: DnsServer, origin: Origin
) -> None:
    dns_server.records["ok.test"] = [origin.host]
    with scripted_origin(_endless_head) as upstream:
        dns_server.records["endless.test"] = [upstream.host]
        proxy = start(proxy_factory, [upstream.port, origin.port], ["endless.test", "ok.test"])
        result = send_raw(proxy, http_request(f"http://endless.test:{upstream.port}/", close=True))
        assert_raw_refusal(result, 502, "upstream-bad-response", host="endless.test")
        record = record_of(proxy, host="endless.test")
        assert (record["status"], record["reason"]) == (502, "upstream-bad-response"), record
        wait_metric(proxy, REQUESTS, 1, reason="upstream-bad-response")
        _wait(lambda: upstream.finished == 1, 5, "the proxy to close the endless upstream")
        still_serves(proxy, origin)
        no_tracebacks(proxy)


def test_blackholed_upstream_is_a_504_after_connect_timeout(
    proxy_factory: ProxyFactory, dns_server: DnsServer, origin_factory: OriginFactory
) -> None:
    origin = origin_factory("ok")
    port = origin_factory("unused", host="127.0.5.2").port  # a free port number on 127.0.5.1
    holes = Blackholes(["127.0.5.1"], port)
    try:
        dns_server.records["dark.test"] = ["127.0.5.1"]
        dns_server.records["ok.test"] = [origin.host]
        proxy = start(proxy_factory, [port, origin.port], ["dark.test", "ok.test"])
        for method in ("GET", "CONNECT"):
            started = time.monotonic()
            if method == "GET":
                request = http_request(f"http://dark.test:{port}/", close=True)
            else:
                request = http_request(f"dark.test:{port}", method="CONNECT")
            result = send_raw(proxy, request, read_timeout=TIMEOUT_S + 5)
            elapsed = time.monotonic() - started
            assert_raw_refusal(result, 504, "upstream-timeout", host="dark.test")
            assert TIMEOUT_S - 0.1 <= elapsed < TIMEOUT_S + 1.5, (method, elapsed)
            record = record_of(proxy, host="dark.test", method=method)
            assert (record["status"], record["reason"]) == (504, "upstream-timeout"), record
        wait_metric(proxy, REQUESTS, 2, reason="upstream-timeout")
        wait_metric(proxy, UPSTREAM_ERRORS, 2, reason="upstream-timeout")
        still_serves(proxy, origin)
        no_tracebacks(proxy)
    finally:
        holes.close()


def _wait(condition: Callable[[], bool], timeout: float, what: str) -> None:
    wait_until(condition, timeout, what, interval=0.05)
