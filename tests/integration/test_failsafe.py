"""The invariant under a bug (issue 12 item 1): an unexpected exception anywhere in a
connection's work answers the client, logs one record, counts, and reports once on stderr.

The real proxy runs with one injected fault (tests/support/faulty.py, test-only: it replaces
one proxy function with one that raises RuntimeError for destinations named `boom*`), at each
kind of boundary the proxy has: a spawned task (resolver), a protocol callback (upstream
pool lookup in data_received), a deferred outbox action (raw CONNECT socket creation) and a
reactor handler after the tunnel's "200" (ClientHello reader). Without the failsafe, each of
these left the client hanging with no access-log record.
"""

from __future__ import annotations

import socket
import sys

import pytest

from tests.integration.helpers_core import http_request, ports_of, send_raw, start_proxy
from tests.integration.helpers_ops import wait_for_metric
from tests.support.clients import read_response
from tests.support.dns import DnsServer
from tests.support.origin import Origin, OriginFactory
from tests.support.proxy import ProxyFactory, ProxyProcess
from tests.unit.tls.test_clienthello import real_hello

INTERNAL_ERRORS = "egressgate_internal_errors_total"
TLS_INTERNAL_ERROR_ALERT = bytes([0x15, 0x03, 0x01, 0x00, 0x02, 0x02, 0x50])


def faulty_proxy(
    proxy_factory: ProxyFactory, origin: Origin, fault: str, *extra: str, **keys: object
) -> ProxyProcess:
    command = [sys.executable, "-m", "tests.support.faulty", fault, *extra]
    return start_proxy(
        proxy_factory,
        allow=[".allowed.test"],
        ports=ports_of(origin),
        command=command,
        **keys,
    )


@pytest.fixture
def origin(origin_factory: OriginFactory, dns_server: DnsServer) -> Origin:
    origin = origin_factory("origin", host="127.0.0.1")
    for name in ("boom.allowed.test", "fine.allowed.test"):
        dns_server.records[name] = [origin.host]
    return origin


def assert_reported_once(proxy: ProxyProcess, where: str) -> dict[str, object]:
    """One internal-error event with the traceback; nothing for asyncio to complain about."""
    wait_for_metric(proxy, INTERNAL_ERRORS, 1)
    events = proxy.events("internal-error")
    assert len(events) == 1, events
    event = events[0]
    assert where in str(event["where"])
    assert "RuntimeError: injected fault" in str(event["error"])
    assert "Traceback (most recent call last)" in str(event["traceback"])
    stderr = "\n".join(proxy.stderr_lines)
    assert "never retrieved" not in stderr
    assert "Fatal error" not in stderr
    return event


def assert_record(proxy: ProxyProcess, host: str, status: int) -> None:
    records = proxy.wait_for_records(1, predicate=lambda r: r["host"] == host)
    assert len(records) == 1, records
    record = records[0]
    assert (record["decision"], record["reason"], record["status"]) == (
        "error",
        "upstream-error",
        status,
    )
    assert "internal error" in record["detail"]
    assert "injected fault" in record["detail"]


def assert_still_serves(proxy: ProxyProcess, origin: Origin) -> None:
    url = f"http://fine.allowed.test:{origin.port}/"
    response = send_raw(proxy, http_request(url, close=True)).responses()[0]
    assert response.status == 200


def connect(proxy: ProxyProcess, authority: str) -> socket.socket:
    sock = socket.create_connection(proxy.proxy_address, timeout=10)
    sock.sendall(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode())
    return sock


@pytest.mark.parametrize("fault", ["resolve", "pool"])
def test_a_bug_in_the_plain_http_path_is_a_502_a_record_a_count_and_one_event(
    proxy_factory: ProxyFactory, origin: Origin, fault: str
) -> None:
    extra = (str(origin.port),) if fault == "pool" else ()
    proxy = faulty_proxy(proxy_factory, origin, fault, *extra)
    url = f"http://boom.allowed.test:{origin.port}/"
    result = send_raw(proxy, http_request(url, close=True), read_timeout=8.0)
    assert not result.timed_out, "the client was left hanging"
    response = result.responses()[0]
    assert response.status == 502
    assert response.header("x-egressgate-reason") == "upstream-error"
    assert_record(proxy, "boom.allowed.test", 502)
    assert_reported_once(proxy, "plain-HTTP exchange")
    if fault == "resolve":
        assert_still_serves(proxy, origin)  # (the pool fault breaks every request to the port)


def test_a_bug_before_the_tunnel_is_open_is_a_502(
    proxy_factory: ProxyFactory, origin: Origin
) -> None:
    proxy = faulty_proxy(proxy_factory, origin, "connect")
    with connect(proxy, f"boom.allowed.test:{origin.port}") as sock:
        response = read_response(sock)
    assert response.status == 502
    assert response.header("x-egressgate-reason") == "upstream-error"
    assert_record(proxy, "boom.allowed.test", 502)
    assert_reported_once(proxy, "CONNECT tunnel")
    origin.assert_untouched()
    assert_still_serves(proxy, origin)


def test_a_bug_past_the_tunnels_200_is_a_tls_alert(
    proxy_factory: ProxyFactory, origin: Origin
) -> None:
    proxy = faulty_proxy(proxy_factory, origin, "hello")
    with connect(proxy, f"boom.allowed.test:{origin.port}") as sock:
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(4096)
            assert chunk, "closed before the 200"
            head += chunk
        assert head.startswith(b"HTTP/1.1 200")
        sock.sendall(real_hello("boom.allowed.test"))
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
    assert answer == TLS_INTERNAL_ERROR_ALERT
    assert_record(proxy, "boom.allowed.test", 502)
    assert_reported_once(proxy, "CONNECT tunnel")
    assert_still_serves(proxy, origin)


def test_a_bug_in_the_socks5_handshake_closes_the_client_with_a_record_a_count_and_one_event(
    proxy_factory: ProxyFactory, origin: Origin
) -> None:
    proxy = faulty_proxy(proxy_factory, origin, "socks", socks_listen="127.0.0.1:0")
    name = b"boom.allowed.test"
    with socket.create_connection(proxy.socks_address, timeout=10) as sock:
        sock.sendall(b"\x05\x01\x00")
        assert sock.recv(2) == b"\x05\x00"
        sock.sendall(
            b"\x05\x01\x00\x03" + bytes([len(name)]) + name + origin.port.to_bytes(2, "big")
        )
        assert sock.recv(16) == b"", "the client was not closed"
    records = proxy.wait_for_records(1, predicate=lambda r: r["kind"] == "socks")
    assert len(records) == 1, records
    assert (records[0]["decision"], records[0]["reason"]) == ("error", "upstream-error")
    assert "injected fault" in records[0]["detail"]
    assert_reported_once(proxy, "SOCKS5 handshake")
    origin.assert_untouched()
    assert_still_serves(proxy, origin)
