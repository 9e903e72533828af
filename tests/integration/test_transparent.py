"""The transparent listener on loopback: connections straight to it (no redirect, so no
original destination, as with the DNS guard's `dns_answer: proxy`) are routed by SNI / Host
alone, to the standard ports 443 / 80. The origins therefore listen on 443 and 80, on loopback
addresses unique to this test process (binding them needs root; the namespace end-to-end test
in tests/e2e/ covers the redirected case).

A canary origin on another loopback address stands for "the IP the client really dialled": it
must never see a byte.
"""

from __future__ import annotations

import os
import socket
import ssl
import time
import urllib.request
from dataclasses import dataclass
from typing import Any

import pytest

from egressgate.proxy.refusal import TLS_ACCESS_DENIED_ALERT
from tests.integration.helpers_core import read_until_close, start_proxy, wait_record
from tests.integration.test_sni_unreadable import client_hello, oversize_client_hello
from tests.support.dns import DnsServer
from tests.support.origin import Origin, OriginFactory, RawOrigin, RawOriginFactory
from tests.support.proxy import ProxyFactory, ProxyProcess
from tests.support.tlsca import HarnessCA

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="origins on ports 80/443 need root")

HELLO_WAIT_S = 1.0
_PID = os.getpid()
# 127.A.B.x, unique per test process: parallel runs do not collide on ports 80/443.
_NET = f"127.{100 + _PID % 100}.{(_PID // 100) % 250 + 1}"


@dataclass
class Env:
    proxy: ProxyProcess
    https: Origin
    http: Origin
    canary: RawOrigin
    ca: HarnessCA

    @property
    def address(self) -> tuple[str, int]:
        found = self.proxy.transparent_address
        assert found is not None
        return found

    def tls_get(self, name: str) -> bytes:
        """An HTTPS GET for `name` sent to the transparent listener (the client believes it is
        the origin), certificate verified against the test CA."""
        raw = socket.create_connection(self.address, timeout=10)
        with self.ca.client_context().wrap_socket(raw, server_hostname=name) as tls:
            tls.sendall(f"GET / HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n".encode())
            return read_until_close(tls, 10.0).data

    def raw(self, data: bytes, pause_s: float = 0.0, rest: bytes = b"") -> bytes:
        with socket.create_connection(self.address, timeout=10) as sock:
            sock.sendall(data)
            if pause_s:
                time.sleep(pause_s)
                try:
                    sock.sendall(rest)
                except OSError:
                    pass
            return read_until_close(sock, 10.0).data


@pytest.fixture
def env(
    proxy_factory: ProxyFactory,
    origin_factory: OriginFactory,
    raw_origin_factory: RawOriginFactory,
    dns_server: DnsServer,
    test_ca: HarnessCA,
) -> Env:
    https = origin_factory(
        "https", host=f"{_NET}.2", port=443, tls=test_ca, cert_names=["allowed.test"]
    )
    http = origin_factory("http", host=f"{_NET}.2", port=80)
    canary = raw_origin_factory("canary", host=f"{_NET}.3", port=443, mode="sink")
    dns_server.records["allowed.test"] = [https.host]
    dns_server.records["denied.test"] = [canary.host]
    proxy = start_proxy(
        proxy_factory,
        allow=["allowed.test"],
        ports=[80, 443],
        transparent_listen="127.0.0.1:0",
        limits={"header_timeout_s": HELLO_WAIT_S},
    )
    return Env(proxy, https, http, canary, test_ca)


def record_of(env: Env, **fields: Any) -> dict[str, Any]:
    return wait_record(env.proxy, kind="transparent", **fields)


def test_listening_event_reports_the_transparent_address(env: Env) -> None:
    host, port = env.address
    assert host == "127.0.0.1"
    assert port > 0


def test_allowed_https_name_is_relayed_to_its_vetted_address(env: Env) -> None:
    response = env.tls_get("allowed.test")
    assert response.startswith(b"HTTP/1.1 200"), response
    record = record_of(env, host="allowed.test")
    assert (record["decision"], record["reason"], record["port"]) == ("allow", "allowed", 443)
    assert record["address"] == env.https.host
    assert record["sni"] == "allowed.test"
    assert record["original_dst"] is None  # not redirected
    assert env.canary.connections.snapshot() == []


def test_allowed_http_host_is_relayed_unchanged(env: Env) -> None:
    url = f"http://{env.address[0]}:{env.address[1]}/?q=1"
    request = urllib.request.Request(url, headers={"Host": "allowed.test"})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(request, timeout=10) as response:
        assert response.status == 200
    (seen,) = env.http.requests.snapshot()
    assert seen.target == "/?q=1"
    assert seen.header("Host") == "allowed.test"
    record = record_of(env, host="allowed.test")
    assert (record["method"], record["port"], record["decision"]) == ("GET", 80, "allow")


def test_denied_https_name_gets_an_access_denied_alert(env: Env) -> None:
    data = env.raw(client_hello("denied.test"))
    assert data == TLS_ACCESS_DENIED_ALERT
    record = record_of(env, host="denied.test")
    assert (record["reason"], record["status"], record["decision"]) == (
        "host-not-allowed",
        403,
        "deny",
    )
    assert env.canary.connections.snapshot() == []


def test_denied_http_host_gets_a_403_with_the_reason(env: Env) -> None:
    data = env.raw(b"GET / HTTP/1.1\r\nHost: denied.test\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 403"), data
    assert b"X-Egressgate-Reason: host-not-allowed" in data
    assert record_of(env, host="denied.test")["reason"] == "host-not-allowed"


def test_forged_sni_reaches_only_the_vetted_address_of_the_allowed_name(env: Env) -> None:
    """The client dials the canary's IP but names allowed.test: the proxy connects to the
    address allowed.test resolves to, never to the IP the client chose."""
    response = env.tls_get("allowed.test")  # what a forging client sends, whatever IP it dials
    assert response.startswith(b"HTTP/1.1 200")
    time.sleep(0.2)
    assert env.canary.connections.snapshot() == []
    assert record_of(env, host="allowed.test")["address"] == env.https.host


def test_ip_literal_without_sni_is_refused_no_destination_name(env: Env) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing)  # no server_hostname: no SNI
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    assert env.raw(outgoing.read()) == TLS_ACCESS_DENIED_ALERT
    record = record_of(env, reason="no-destination-name")
    assert (record["status"], record["decision"], record["method"]) == (403, "deny", "TLS")


def hello_with_sni(server_name: str) -> bytes:
    """A minimal ClientHello whose server_name is `server_name` verbatim (Python's TLS client
    sends no SNI for an IP literal; a hostile client does)."""
    sni = server_name.encode()
    name_list = b"\x00" + len(sni).to_bytes(2, "big") + sni
    ext = b"\x00\x00" + (len(name_list) + 2).to_bytes(2, "big")
    ext += len(name_list).to_bytes(2, "big") + name_list
    body = b"\x03\x03" + bytes(32) + b"\x00" + b"\x00\x02\x13\x01" + b"\x01\x00"
    body += len(ext).to_bytes(2, "big") + ext
    message = b"\x01" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x01" + len(message).to_bytes(2, "big") + message


def test_ip_literal_sni_is_judged_as_an_ip(env: Env) -> None:
    assert env.raw(hello_with_sni(env.canary.host)) == TLS_ACCESS_DENIED_ALERT
    record = record_of(env, host=env.canary.host)
    assert record["decision"] == "deny"
    assert env.canary.connections.snapshot() == []


def test_slow_hello_is_sni_unreadable(env: Env) -> None:
    hello = client_hello("allowed.test")
    data = env.raw(hello[:60], pause_s=HELLO_WAIT_S + 0.5, rest=hello[60:])
    assert data == TLS_ACCESS_DENIED_ALERT
    record = record_of(env, reason="sni-unreadable")
    assert record["status"] == 403
    assert env.https.accepts.snapshot() == []


def test_oversized_hello_is_sni_unreadable(env: Env) -> None:
    assert env.raw(oversize_client_hello("allowed.test", 70_000)) == TLS_ACCESS_DENIED_ALERT
    record = record_of(env, reason="sni-unreadable")
    assert "larger than" in record["detail"]


def test_malformed_http_is_a_400(env: Env) -> None:
    data = env.raw(b"GET / HTTP/1.1\r\nHost allowed.test\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 400"), data
    assert record_of(env, reason="bad-request")["status"] == 400


def test_host_differing_from_the_absolute_uri_is_refused(env: Env) -> None:
    data = env.raw(b"GET http://allowed.test/ HTTP/1.1\r\nHost: denied.test\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 400"), data
    assert "differs" in record_of(env, reason="bad-request")["detail"]


def test_keep_alive_request_to_another_host_closes_the_connection(env: Env) -> None:
    first = b"GET / HTTP/1.1\r\nHost: allowed.test\r\n\r\n"
    second = b"GET /b HTTP/1.1\r\nHost: denied.test\r\n\r\n"
    with socket.create_connection(env.address, timeout=10) as sock:
        sock.sendall(first)
        head = sock.recv(65536)
        assert head.startswith(b"HTTP/1.1 200"), head
        sock.sendall(second)
        rest = read_until_close(sock, 10.0).data
    assert b"HTTP/1.1" not in rest
    assert [r.target for r in env.http.requests.snapshot()] == ["/"]
    record = record_of(env, host="allowed.test")
    assert "another host" in record["detail"]


def test_a_client_sending_nothing_is_refused_no_destination_name(env: Env) -> None:
    with socket.create_connection(env.address, timeout=10) as sock:
        assert read_until_close(sock, HELLO_WAIT_S + 5).data == b""
    assert record_of(env, reason="no-destination-name")["status"] == 403
