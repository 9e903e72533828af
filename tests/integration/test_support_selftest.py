"""Self-tests of the test harness (tests/support): DNS, CA, origins, clients, ProxyProcess, guard.

The proxy itself is not exercised here: `ProxyProcess` and the CONNECT client helpers are checked
against tests/support/stub_proxy.py, a stand-in that speaks the same process contract.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import socket
import ssl
import struct
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from dnslib import QTYPE, RCODE, DNSRecord

from tests.support import stub_proxy
from tests.support.clients import (
    ConnectFailed,
    curl,
    https_request_via_connect,
    open_connect_tunnel,
    openssl_s_client_via_connect,
    parse_responses,
    raw_request,
    read_response,
    requests_session,
    stream_get,
    tls_via_connect,
)
from tests.support.dns import DnsServer
from tests.support.loopback_guard import LoopbackGuard, LoopbackViolation, is_loopback_host
from tests.support.origin import (
    PATTERN_PERIOD,
    Origin,
    OriginFactory,
    RawOriginFactory,
    iter_pattern,
    pattern_bytes,
    pattern_sha256,
    sha256_hex,
)
from tests.support.proxy import OMIT, ProxyError, ProxyFactory, ProxyProcess, ProxyStartError
from tests.support.tlsca import HarnessCA, subject_alt_names, subject_common_name

STUB = [sys.executable, str(Path(stub_proxy.__file__))]


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


IPV6 = _ipv6_loopback()
needs_ipv6 = pytest.mark.skipif(not IPV6, reason="no IPv6 loopback on this machine")
TEST_NET = ["192.0.2.1", "198.51.100.7", "203.0.113.9"]  # documentation ranges: never reached


def dns_query(
    dns: DnsServer, name: str, qtype: str = "A", *, tcp: bool = False, timeout: float = 2.0
) -> DNSRecord:
    """Ask the test DNS server with dnslib's own client."""
    answer = DNSRecord.question(name, qtype).send(dns.host, dns.port, tcp=tcp, timeout=timeout)
    return DNSRecord.parse(answer)


def addresses(reply: DNSRecord) -> list[str]:
    return [str(rr.rdata) for rr in reply.rr if rr.rtype in (QTYPE.A, QTYPE.AAAA)]


# ---------------------------------------------------------------------------------------------
# DNS
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_dns_answers_a_aaaa_and_nxdomain(dns_server: DnsServer, tcp: bool) -> None:
    dns_server.records["Allowed.Test."] = ["127.0.0.1", "::1", "127.0.0.2"]
    a = dns_query(dns_server, "allowed.test", "A", tcp=tcp)
    assert a.header.rcode == RCODE.NOERROR
    assert a.header.aa == 1
    assert addresses(a) == ["127.0.0.1", "127.0.0.2"]
    aaaa = dns_query(dns_server, "ALLOWED.test.", "AAAA", tcp=tcp)
    assert addresses(aaaa) == ["::1"]
    nx = dns_query(dns_server, "unknown.test", "A", tcp=tcp)
    assert nx.header.rcode == RCODE.NXDOMAIN
    assert nx.rr == []
    transports = {q.transport for q in dns_server.queries()}
    assert transports == {"tcp" if tcp else "udp"}


def test_dns_nodata_live_mapping_and_counts(dns_server: DnsServer) -> None:
    dns_server.records["v4only.test"] = ["127.0.0.3"]
    reply = dns_query(dns_server, "v4only.test", "AAAA")
    assert (reply.header.rcode, reply.rr) == (RCODE.NOERROR, [])  # NODATA, not NXDOMAIN
    dns_server.records["v4only.test"] = ["127.0.0.4"]
    assert addresses(dns_query(dns_server, "v4only.test")) == ["127.0.0.4"]
    del dns_server.records["V4ONLY.test"]
    assert dns_query(dns_server, "v4only.test").header.rcode == RCODE.NXDOMAIN
    assert dns_server.query_count("v4only.test") == 3
    assert dns_server.query_count("v4only.test", "AAAA") == 1
    assert dns_server.query_count("never.test") == 0
    with pytest.raises(ValueError, match="does not appear to be an IPv4 or IPv6"):
        dns_server.records["bad.test"] = ["not-an-ip"]
    dns_server.reset_counts()
    assert dns_server.queries() == []


def test_dns_blackhole_times_out_and_is_counted(dns_server: DnsServer) -> None:
    dns_server.records["hole.test"] = ["127.0.0.1"]
    dns_server.set_behaviour("hole.test", "blackhole")
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        dns_query(dns_server, "hole.test", timeout=0.3)
    assert time.monotonic() - started >= 0.25
    (query,) = dns_server.wait_for_queries("hole.test", 1)
    assert not query.answered
    dns_server.set_behaviour("hole.test", "answer")
    assert addresses(dns_query(dns_server, "hole.test")) == ["127.0.0.1"]


@pytest.mark.parametrize(("behaviour", "rcode"), [("servfail", 2), ("refused", 5)])
def test_dns_error_behaviours(dns_server: DnsServer, behaviour: Any, rcode: int) -> None:
    dns_server.records["err.test"] = ["127.0.0.1"]
    dns_server.set_behaviour("err.test", behaviour)
    for tcp in (False, True):
        reply = dns_query(dns_server, "err.test", tcp=tcp)
        assert reply.header.rcode == rcode
        assert reply.rr == []


def test_dns_truncate_forces_tcp_and_delay(dns_server: DnsServer) -> None:
    dns_server.records["big.test"] = ["127.0.0.1"]
    dns_server.set_behaviour("big.test", "truncate")
    udp = dns_query(dns_server, "big.test")
    assert udp.header.tc == 1
    assert udp.rr == []
    assert addresses(dns_query(dns_server, "big.test", tcp=True)) == ["127.0.0.1"]
    dns_server.records["late.test"] = ["127.0.0.1"]
    dns_server.set_delay("late.test", 0.3)
    started = time.monotonic()
    assert addresses(dns_query(dns_server, "late.test")) == ["127.0.0.1"]
    assert time.monotonic() - started >= 0.25


def test_dns_cname_and_wildcard(dns_server: DnsServer) -> None:
    dns_server.records["*.wild.test"] = ["127.0.0.7"]
    dns_server.records["exact.wild.test"] = ["127.0.0.8"]
    assert addresses(dns_query(dns_server, "a.b.wild.test")) == ["127.0.0.7"]
    assert addresses(dns_query(dns_server, "exact.wild.test")) == ["127.0.0.8"]
    assert dns_query(dns_server, "wild.test").header.rcode == RCODE.NXDOMAIN
    dns_server.records["target.test"] = ["127.0.0.9"]
    dns_server.set_cname("alias.test", "target.test")
    reply = dns_query(dns_server, "alias.test")
    assert [QTYPE[rr.rtype] for rr in reply.rr] == ["CNAME", "A"]
    assert addresses(reply) == ["127.0.0.9"]


def test_dns_tcp_several_queries_on_one_connection(dns_server: DnsServer) -> None:
    dns_server.records["one.test"] = ["127.0.0.1"]
    dns_server.records["two.test"] = ["::1"]
    with socket.create_connection((dns_server.host, dns_server.port), timeout=2) as sock:
        stream = sock.makefile("rb")
        for name, qtype in (("one.test", "A"), ("two.test", "AAAA")):
            packet = DNSRecord.question(name, qtype).pack()
            sock.sendall(struct.pack("!H", len(packet)) + packet)
            (length,) = struct.unpack("!H", stream.read(2))
            reply = DNSRecord.parse(stream.read(length))
            assert addresses(reply) == (["127.0.0.1"] if name == "one.test" else ["::1"])
        stream.close()
    assert dns_server.address == f"127.0.0.1:{dns_server.port}"


# ---------------------------------------------------------------------------------------------
# TLS CA
# ---------------------------------------------------------------------------------------------


def test_ca_issues_server_and_client_certs(test_ca: HarnessCA) -> None:
    assert test_ca.ca_pem_path.read_bytes().startswith(b"-----BEGIN CERTIFICATE-----")
    server = test_ca.server_cert("allowed.test", "127.0.0.1", "::1")
    assert subject_alt_names(server.x509()) == ["allowed.test", "127.0.0.1", "::1"]
    assert server.key_path.read_bytes() == server.key_pem
    client = test_ca.client_cert("app-1", "app-1.test", "app@example.test")
    parsed = client.x509()
    assert subject_common_name(parsed) == "app-1"
    assert subject_alt_names(parsed) == ["app-1.test", "app@example.test"]
    assert client.combined_path.read_bytes().count(b"-----BEGIN") == 2


def test_mtls_origin_requires_and_records_client_cert(
    test_ca: HarnessCA, origin_factory: OriginFactory
) -> None:
    origin = origin_factory("mtls", tls=test_ca, cert_names=["allowed.test"], client_ca=test_ca)
    client = test_ca.client_cert("app-7", "app-7.test")
    with requests_session(cafile=test_ca.ca_pem_path) as session:
        url = origin.url("/")
        response = session.get(url, cert=(str(client.cert_path), str(client.key_path)), timeout=5)
        assert response.text == "hello from mtls"
    accepts = origin.wait_for_accepts(1)
    assert accepts[0].client_cert_cn == "app-7"
    context = test_ca.client_context()  # no client certificate
    with socket.create_connection(origin.sockaddr, timeout=5) as raw:
        tls = context.wrap_socket(raw, server_hostname="allowed.test")
        with tls:
            # TLS 1.3: the server's refusal (certificate required) shows on the first read, as
            # an alert or as the connection closing.
            answer: bytes | Exception
            try:
                tls.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                answer = tls.recv(100)
            except (ssl.SSLError, ConnectionError) as exc:
                answer = exc
            assert not isinstance(answer, bytes) or answer == b""
    origin.accepts.wait_until(lambda items: len(items) == 2 and items[1].closed, 5, "refusal")
    assert origin.accept_records()[1].tls_error is not None
    assert len(origin.request_records()) == 1


# ---------------------------------------------------------------------------------------------
# Origin
# ---------------------------------------------------------------------------------------------


def test_pattern_helpers_are_consistent() -> None:
    size = 3 * PATTERN_PERIOD + 12345
    whole = pattern_bytes(size, seed=3)
    assert len(whole) == size
    assert sha256_hex(whole) == pattern_sha256(size, seed=3)
    assert b"".join(iter_pattern(size, 3, chunk_size=1000)) == whole
    assert (
        pattern_bytes(500, 3, offset=PATTERN_PERIOD - 200)
        == whole[PATTERN_PERIOD - 200 : PATTERN_PERIOD + 300]
    )
    assert pattern_bytes(64, seed=1) != pattern_bytes(64, seed=2)
    assert pattern_sha256(0) == hashlib.sha256(b"").hexdigest()


def test_origin_basic_endpoints(origin: Origin) -> None:
    with requests_session() as session:
        hello = session.get(origin.url("/"), timeout=5)
        assert (hello.status_code, hello.text) == (200, "hello from origin")
        assert hello.headers["X-Origin"] == "origin"
        body = session.get(origin.url("/bytes/100000?seed=5"), timeout=5)
        assert body.headers["Content-Length"] == "100000"
        assert sha256_hex(body.content) == pattern_sha256(100000, 5)
        teapot = session.get(origin.url("/status/418"), timeout=5)
        assert (teapot.status_code, teapot.text) == (418, "status 418\n")
        empty = session.get(origin.url("/status/204"), timeout=5)
        assert (empty.status_code, empty.content) == (204, b"")
        target = "http://elsewhere.test/x?y=1"
        redirect = session.get(
            origin.url(f"/redirect?to={target}"), allow_redirects=False, timeout=5
        )
        assert (redirect.status_code, redirect.headers["Location"]) == (302, target)
        head = session.head(origin.url("/bytes/4096"), timeout=5)
        assert (head.headers["Content-Length"], head.content) == ("4096", b"")
        missing = session.get(origin.url("/nope"), timeout=5)
        assert missing.status_code == 404
    records = origin.request_records()
    assert [r.path for r in records] == [
        "/",
        "/bytes/100000",
        "/status/418",
        "/status/204",
        "/redirect",
        "/bytes/4096",
        "/nope",
    ]
    assert records[1].target == "/bytes/100000?seed=5"
    assert records[1].query == {"seed": ["5"]}
    assert len({r.connection_id for r in records}) == 1  # requests kept the connection alive
    assert [r.index for r in records] == list(range(7))
    assert records[0].peer[0] == "127.0.0.1"


def test_origin_chunked_and_close_delimited(origin: Origin) -> None:
    host = f"Host: {origin.authority()}\r\n"
    chunked = raw_request(
        origin.sockaddr,
        f"GET /chunked/70000?chunk=3000 HTTP/1.1\r\n{host}\r\n".encode(),
        read_timeout=0.5,
    )
    responses, rest = parse_responses(chunked.data)
    assert rest == b""
    (response,) = responses
    assert response.header("Transfer-Encoding") == "chunked"
    assert response.header("Content-Length") is None
    assert response.raw.count(b"\r\nbb8\r\n") == 23  # 3000-byte chunks
    assert sha256_hex(response.body) == pattern_sha256(70000)
    assert chunked.timed_out  # keep-alive: the origin waited for more
    close = raw_request(origin.sockaddr, f"GET /close/70000 HTTP/1.1\r\n{host}\r\n".encode())
    assert close.closed
    (response,) = close.responses()
    assert response.header("Content-Length") is None
    assert response.header("Connection") == "close"
    assert sha256_hex(response.body) == pattern_sha256(70000)


def test_origin_upload_length_chunked_and_expect_continue(origin: Origin, tmp_path: Path) -> None:
    payload = pattern_bytes(300_000, seed=9)
    with requests_session() as session:
        sized = session.post(origin.url("/upload"), data=payload, timeout=10).json()
        assert sized == {"length": 300_000, "sha256": sha256_hex(payload)}
        chunks = [payload[:1000], payload[1000:200_000], payload[200_000:]]
        chunked = session.put(origin.url("/upload"), data=iter(chunks), timeout=10).json()
        assert chunked == sized
    upload_file = tmp_path / "upload.bin"
    upload_file.write_bytes(payload)
    result = curl(
        [
            "-H",
            "Expect: 100-continue",
            "--expect100-timeout",
            "10",
            "--data-binary",
            f"@{upload_file}",
            origin.url("/upload"),
        ]
    )
    assert result.exit_code == 0, result.stderr
    assert [r.status for r in result.responses] == [100, 200]
    assert result.json() == sized
    records = origin.request_records("/upload")
    assert [r.method for r in records] == ["POST", "PUT", "POST"]
    assert [r.chunked for r in records] == [False, True, False]
    assert all(r.body_sha256 == sha256_hex(payload) for r in records)
    assert records[2].header("expect") == "100-continue"


def test_origin_echo_headers_keeps_order_and_case(origin: Origin) -> None:
    request = (
        b"GET /echo-headers?x=1 HTTP/1.1\r\nhOsT: origin.test\r\nX-Second: 2\r\n"
        b"x-first: 1\r\nX-Dup: a\r\nX-Dup: b\r\nConnection: close\r\n\r\n"
    )
    result = raw_request(origin.sockaddr, request)
    (response,) = result.responses()
    echoed = json.loads(response.body)
    assert echoed["target"] == "/echo-headers?x=1"
    assert echoed["headers"] == [
        ["hOsT", "origin.test"],
        ["X-Second", "2"],
        ["x-first", "1"],
        ["X-Dup", "a"],
        ["X-Dup", "b"],
        ["Connection", "close"],
    ]
    (record,) = origin.request_records()
    assert record.header_names() == ["hOsT", "X-Second", "x-first", "X-Dup", "X-Dup", "Connection"]
    assert record.header_values("x-dup") == ["a", "b"]
    assert record.raw_head == request


def test_origin_pipelining_and_keepalive(origin: Origin) -> None:
    host = f"Host: {origin.authority()}\r\n"
    pipeline = (
        f"GET /bytes/10 HTTP/1.1\r\n{host}\r\n"
        f"HEAD /bytes/20 HTTP/1.1\r\n{host}\r\n"
        f"POST /upload HTTP/1.1\r\n{host}Content-Length: 3\r\n\r\nabc"
        f"GET / HTTP/1.1\r\n{host}Connection: close\r\n\r\n"
    ).encode()
    result = raw_request(origin.sockaddr, pipeline)
    assert result.closed
    responses = result.responses(bodyless={1})
    assert [r.status for r in responses] == [200, 200, 200, 200]
    assert responses[0].body == pattern_bytes(10)
    assert responses[1].body == b""
    assert json.loads(responses[2].body)["sha256"] == sha256_hex(b"abc")
    assert responses[3].body == b"hello from origin"
    records = origin.request_records()
    assert [(r.connection_id, r.index) for r in records] == [(1, 0), (1, 1), (1, 2), (1, 3)]


def test_origin_slow_and_stall(origin: Origin) -> None:
    with requests_session() as session:
        started = time.monotonic()
        assert session.get(origin.url("/slow?delay=0.3"), timeout=5).text == "slow\n"
        assert time.monotonic() - started >= 0.29
    with socket.create_connection(origin.sockaddr, timeout=5) as sock:
        sock.sendall(b"GET /stall/1000?delay=0.3 HTTP/1.1\r\nHost: x\r\n\r\n")
        started = time.monotonic()
        response = read_response(sock)
        assert time.monotonic() - started >= 0.29
        assert response.body_sha256 == pattern_sha256(1000)


def test_origin_many_concurrent_connections(origin: Origin) -> None:
    count = 40

    def fetch(i: int) -> str:
        with socket.create_connection(origin.sockaddr, timeout=10) as sock:
            sock.sendall(f"GET /bytes/{50_000 + i} HTTP/1.1\r\nHost: o\r\n\r\n".encode())
            return read_response(sock).body_sha256

    with concurrent.futures.ThreadPoolExecutor(max_workers=count) as pool:
        digests = list(pool.map(fetch, range(count), timeout=30))
    assert digests == [pattern_sha256(50_000 + i) for i in range(count)]
    assert len(origin.wait_for_accepts(count)) == count


def test_origin_large_bodies_streamed(origin: Origin, tmp_path: Path) -> None:
    size = 48 * 1024 * 1024
    download = curl([origin.url(f"/bytes/{size}")], max_body=1024)
    assert download.exit_code == 0, download.stderr
    assert (download.body_length, download.body_sha256) == (size, pattern_sha256(size))
    assert download.body == pattern_bytes(1024)
    streamed = stream_get(origin.url(f"/chunked/{size}?chunk=65536"))
    assert (streamed.body_length, streamed.body_sha256) == (size, pattern_sha256(size))
    source = tmp_path / "big.bin"
    with source.open("wb") as fh:
        for chunk in iter_pattern(size, seed=4):
            fh.write(chunk)
    upload = curl(["-T", str(source), origin.url("/upload")])
    assert upload.json() == {"length": size, "sha256": pattern_sha256(size, 4)}


def test_origin_websocket_upgrade_echoes(origin: Origin) -> None:
    with socket.create_connection(origin.sockaddr, timeout=5) as sock:
        sock.sendall(
            b"GET /ws HTTP/1.1\r\nHost: o\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        response = read_response(sock)
        assert response.status == 101
        assert response.header("Sec-WebSocket-Accept") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        payload = pattern_bytes(200_000, 2)
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        echoed = bytearray()
        for _ in range(1000):
            chunk = sock.recv(65536)
            if not chunk:
                break
            echoed += chunk
        assert echoed == payload
    (record,) = origin.request_records("/ws")
    assert record.upgraded_bytes == len(payload)


def test_origin_reset_endpoint(origin: Origin) -> None:
    result = raw_request(origin.sockaddr, b"GET /reset HTTP/1.1\r\nHost: o\r\n\r\n")
    assert result.reset
    assert result.data == b""


def test_tls_origin_with_curl_and_requests(
    test_ca: HarnessCA, origin_factory: OriginFactory
) -> None:
    origin = origin_factory("secure", tls=test_ca, cert_names=["allowed.test"])
    result = curl(
        [
            "--resolve",
            f"allowed.test:{origin.port}:127.0.0.1",
            origin.url("/bytes/5000", "allowed.test"),
        ],
        cacert=test_ca.ca_pem_path,
    )
    assert result.exit_code == 0, result.stderr
    assert result.body_sha256 == pattern_sha256(5000)
    with requests_session(cafile=test_ca.ca_pem_path) as session:
        assert session.get(origin.url("/"), timeout=5).text == "hello from secure"
    untrusted = curl([origin.url("/")])  # the system store does not know the test CA
    assert untrusted.exit_code == 60
    accepts = origin.wait_for_accepts(3)
    assert [a.sni for a in accepts[:2]] == ["allowed.test", None]  # no SNI for an IP literal
    assert accepts[0].tls_established
    origin.accepts.wait_until(lambda items: items[2].closed, 5, "curl's failed handshake")
    assert not accepts[2].tls_established
    assert accepts[2].tls_error is not None
    assert [r.sni for r in origin.request_records()] == ["allowed.test", None]
    assert all(r.tls for r in origin.request_records())


def test_canary_records_bare_connections(origin_factory: OriginFactory) -> None:
    canary = origin_factory("canary", host="127.0.0.2")
    untouched = origin_factory("untouched", host="127.0.0.3")
    with socket.create_connection(canary.sockaddr, timeout=5):
        pass  # connect and close without sending a byte
    (accept,) = canary.wait_for_accepts(1)
    assert accept.peer[0] == "127.0.0.1"
    assert accept.local == canary.sockaddr
    with socket.create_connection(canary.sockaddr, timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: partial")  # an incomplete head
    canary.accepts.wait_until(lambda items: len(items) == 2 and items[1].closed, 5, "close")
    assert canary.accept_records()[1].stray_bytes == len(b"GET / HTTP/1.1\r\nHost: partial")
    assert canary.request_records() == []
    with pytest.raises(AssertionError, match="canary origin 'canary'"):
        canary.assert_untouched()
    untouched.assert_untouched()


@needs_ipv6
def test_origin_on_ipv6_and_other_loopbacks(origin_factory: OriginFactory) -> None:
    v6 = origin_factory("six", host="::1")
    assert v6.address == f"[::1]:{v6.port}"
    result = curl(["-g", v6.url("/")])
    assert result.text == "hello from six"
    assert v6.request_records()[0].peer[0] == "::1"
    for bad in ("192.0.2.2", "0.0.0.0", "localhost"):
        with pytest.raises(ValueError, match=r"loopback only|IP literal"):
            Origin("bad", host=bad)


def test_raw_origin_modes(raw_origin_factory: RawOriginFactory) -> None:
    echo = raw_origin_factory("echo")
    payload = pattern_bytes(100_000, 8)
    result = raw_request(echo.sockaddr, payload, half_close=True)
    assert (result.data, result.closed) == (payload, True)
    (conn,) = echo.wait_for_closed(1)
    assert (conn.bytes_received, conn.sha256, conn.eof_received) == (
        len(payload),
        sha256_hex(payload),
        True,
    )
    serve = raw_origin_factory("serve", mode="serve", serve_bytes=250_000, seed=6)
    with socket.create_connection(serve.sockaddr, timeout=5) as sock:
        received = bytearray()
        for _ in range(1000):
            chunk = sock.recv(65536)
            if not chunk:
                break  # the server half-closed after its bytes
            received += chunk
        assert sha256_hex(bytes(received)) == pattern_sha256(250_000, 6)
        sock.sendall(b"still open for writing")
    (conn,) = serve.wait_for_closed(1)
    assert conn.head == b"still open for writing"
    sink = raw_origin_factory("sink", mode="sink")
    result = raw_request(sink.sockaddr, b"x" * 1000, half_close=True, read_timeout=5)
    assert (result.data, result.closed) == (b"", True)
    assert sink.wait_for_closed(1)[0].bytes_received == 1000


# ---------------------------------------------------------------------------------------------
# ProxyProcess and the CONNECT helpers, against the stub
# ---------------------------------------------------------------------------------------------


def test_proxy_process_lifecycle_with_stub(
    proxy_factory: ProxyFactory, dns_server: DnsServer, raw_origin_factory: RawOriginFactory
) -> None:
    proxy = proxy_factory(command=STUB, stub_hosts={"echo.test": "127.0.0.1"})
    assert proxy.config["nameservers"] == [dns_server.address]
    host, port = proxy.proxy_address
    assert host == "127.0.0.1"
    assert port > 0
    assert proxy.proxy_url == f"http://127.0.0.1:{port}"
    assert proxy.listening is not None
    assert proxy.listening["pid"] == proxy.pid
    assert proxy.events("starting")
    with requests_session() as session:
        assert session.get(proxy.admin_url + "/healthz", timeout=5).text == "ok\n"
    echo = raw_origin_factory("echo")
    with open_connect_tunnel(proxy.proxy_address, echo.authority("echo.test")) as tunnel:
        assert tunnel.status == 200
        tunnel.sock.sendall(b"ping")
        assert tunnel.sock.recv(10) == b"ping"
    refused = raw_request(proxy.proxy_address, b"CONNECT 192.0.2.1:443 HTTP/1.1\r\n\r\n")
    assert refused.responses()[0].status == 403  # the stub refuses; nothing was sent there
    records = proxy.wait_for_records(2)
    assert [(r["target"], r["status"]) for r in records] == [
        (echo.authority("echo.test"), 200),
        ("192.0.2.1:443", 403),
    ]
    mark = proxy.reload({**proxy.config, "stub_hosts": {}}, wait_for="reloaded")
    assert proxy.events("reloaded")
    assert mark >= 2
    with open_connect_tunnel(proxy.proxy_address, echo.authority("echo.test")) as tunnel:
        assert tunnel.status == 403  # the reloaded config no longer maps the name
    assert proxy.terminate(10) == 0
    assert proxy.events("stopping")
    assert proxy.returncode == 0


def test_proxy_start_failure_reports_stderr(proxy_factory: ProxyFactory) -> None:
    with pytest.raises(ProxyStartError, match=r"(?s)exited with code 3.*bad config: no allow"):
        proxy_factory(command=STUB, stub_exit={"code": 3, "message": "bad config: no allow"})


def test_proxy_start_timeout_kills(proxy_factory: ProxyFactory, tmp_path: Path) -> None:
    started = time.monotonic()
    with pytest.raises(ProxyStartError, match=r"did not report 'listening' within 1\.0s"):
        proxy_factory(command=STUB, stub_silent=True, start_timeout=1.0)
    assert time.monotonic() - started < 10


def test_proxy_config_keys_and_access_log_parsing(tmp_path: Path, dns_server: DnsServer) -> None:
    from tests.support.proxy import base_proxy_config

    config = {**base_proxy_config(dns_server.address, tmp_path), "admin_listen": None}
    config["hosts_file"] = tmp_path / "hosts"  # a Path is written as a string
    with ProxyProcess(config, tmp_path, command=STUB) as proxy:
        assert proxy.admin_address is None
        with pytest.raises(ProxyError, match="no admin listener"):
            _ = proxy.admin_url
        text = proxy.config_path.read_text()
        assert "admin_listen: null" in text
        assert f"hosts_file: {tmp_path / 'hosts'}" in text
        log = proxy.access_log_path
        log.write_text('{"a": 1}\n{"b": 2}\n{"c": ')  # the last line is still being written
        assert proxy.access_records() == [{"a": 1}, {"b": 2}]
        assert proxy.wait_for_records(1, predicate=lambda r: "b" in r) == [{"b": 2}]
        with pytest.raises(ProxyError, match="wanted 3"):
            proxy.wait_for_records(3, timeout=0.2)
        log.write_text("not json\n")
        with pytest.raises(ProxyError, match="is not JSON"):
            proxy.access_records()
    assert proxy.returncode is not None  # killed on exit


def test_proxy_factory_omit(proxy_factory: ProxyFactory) -> None:
    proxy = proxy_factory({"allow": ["a.test"]}, command=STUB, admin_listen=OMIT)
    assert "admin_listen" not in proxy.config
    assert proxy.config["allow"] == ["a.test"]
    assert proxy.admin_address is None


def test_connect_helpers_through_stub(
    proxy_factory: ProxyFactory, origin_factory: OriginFactory, test_ca: HarnessCA
) -> None:
    origin = origin_factory("secure", tls=test_ca, cert_names=["allowed.test"])
    proxy = proxy_factory(command=STUB, stub_hosts={"allowed.test": "127.0.0.1"})
    cafile = test_ca.ca_pem_path

    ok = openssl_s_client_via_connect(proxy.proxy_address, "allowed.test", origin.port, cafile)
    assert ok.exit_code == 0, ok.stderr
    assert ok.verified
    assert ok.summary("Protocol version") in ("TLSv1.2", "TLSv1.3")
    request = b"GET /bytes/3000 HTTP/1.1\r\nHost: allowed.test\r\nConnection: close\r\n\r\n"
    fetched = openssl_s_client_via_connect(
        proxy.proxy_address, "allowed.test", origin.port, cafile, send=request
    )
    (response,) = parse_responses(fetched.stdout)[0]
    assert sha256_hex(response.body) == pattern_sha256(3000)
    wrong_name = openssl_s_client_via_connect(
        proxy.proxy_address, "allowed.test", origin.port, cafile, servername="other.test"
    )
    assert not wrong_name.verified
    assert wrong_name.exit_code != 0

    context = test_ca.client_context()
    streamed = https_request_via_connect(
        proxy.proxy_address, "allowed.test", origin.port, "/chunked/300000", context=context
    )
    assert (streamed.status, streamed.body_sha256) == (200, pattern_sha256(300_000))
    with pytest.raises(ConnectFailed) as refused:
        tls_via_connect(proxy.proxy_address, "unknown.test", origin.port, context=context)
    assert refused.value.status == 403

    via_curl = curl(
        [origin.url("/bytes/7000", "allowed.test")], proxy=proxy.proxy_url, cacert=cafile
    )
    assert via_curl.exit_code == 0, via_curl.stderr
    assert (via_curl.connect_status, via_curl.status) == (200, 200)
    assert [r.status for r in via_curl.responses] == [200, 200]  # CONNECT, then the GET
    assert via_curl.body_sha256 == pattern_sha256(7000)
    via_httpx = stream_get(
        origin.url("/bytes/9000", "allowed.test"), proxy=proxy.proxy_url, cafile=cafile
    )
    assert via_httpx.body_sha256 == pattern_sha256(9000)
    assert {r.sni for r in origin.request_records()} == {"allowed.test"}
    assert all(r.peer[0] == "127.0.0.1" for r in origin.request_records())


# ---------------------------------------------------------------------------------------------
# Loopback guard
# ---------------------------------------------------------------------------------------------


def _recorder(calls: list[tuple[str, Any]], name: str) -> Callable[..., Any]:
    def record(*args: Any, **kwargs: Any) -> Any:
        calls.append((name, args))
        raise AssertionError(f"the real {name} was reached")

    return record


def test_guard_refuses_before_the_real_call(
    loopback_guard: LoopbackGuard, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert loopback_guard.installed
    calls: list[tuple[str, Any]] = []
    for name in ("connect", "connect_ex", "sendto", "sendmsg", "getaddrinfo", "gethostbyname"):
        # Even if the guard were broken, nothing could leave: the "real" functions are recorders.
        monkeypatch.setitem(loopback_guard.real, name, _recorder(calls, name))
    with loopback_guard.expect_violations() as violations:
        for address in TEST_NET:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                with pytest.raises(LoopbackViolation, match="not a loopback address"):
                    tcp.connect((address, 80))
                with pytest.raises(LoopbackViolation):
                    tcp.connect_ex((address, 443))
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                with pytest.raises(LoopbackViolation):
                    udp.sendto(b"x", (address, 53))
                with pytest.raises(LoopbackViolation):
                    udp.sendto(b"x", 0, (address, 53))
                with pytest.raises(LoopbackViolation):
                    udp.sendmsg([b"x"], [], 0, (address, 53))
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as tcp6:
            for address in ("2001:db8::1", "::ffff:192.0.2.1"):
                with pytest.raises(LoopbackViolation):
                    tcp6.connect((address, 80, 0, 0))
        for name in ("example.com", "allowed.test", "x.localhost"):
            with pytest.raises(LoopbackViolation, match="only loopback literals"):
                socket.getaddrinfo(name, 80)
        with pytest.raises(LoopbackViolation):
            socket.gethostbyname("example.com")
        with pytest.raises(LoopbackViolation), socket.create_connection(("192.0.2.1", 80), 1):
            pass  # create_connection resolves the literal via getaddrinfo: refused there
    assert calls == []
    assert len(violations) == 3 * 5 + 2 + 3 + 1 + 1
    assert violations[0].call == "connect"
    assert "192.0.2.1" in violations[0].destination


def test_guard_is_on_the_real_socket_methods(loopback_guard: LoopbackGuard) -> None:
    # A UDP connect() only sets the default destination: even unguarded it sends no packet.
    with (
        loopback_guard.expect_violations() as violations,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp,
        pytest.raises(LoopbackViolation),
    ):
        udp.connect(("203.0.113.9", 9))
    assert len(violations) == 1


def test_guard_records_violations_swallowed_in_threads(loopback_guard: LoopbackGuard) -> None:
    def background() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            try:
                udp.connect(("198.51.100.7", 9))  # UDP connect: sends nothing
            except OSError:
                pass  # swallowed, as a library's retry loop might

    with loopback_guard.expect_violations() as violations:
        thread = threading.Thread(target=background)
        thread.start()
        thread.join(5)
    assert [v.call for v in violations] == ["connect"]


def test_guard_allows_loopback_and_unix(loopback_guard: LoopbackGuard, tmp_path: Path) -> None:
    for host, family in (("127.0.0.1", socket.AF_INET), ("127.0.0.5", socket.AF_INET)):
        with socket.socket(family) as server:
            server.bind((host, 0))
            server.listen(1)
            with socket.create_connection(server.getsockname(), timeout=2):
                pass
    if IPV6:
        with socket.socket(socket.AF_INET6) as server6:
            server6.bind(("::1", 0))
            server6.listen(1)
            with socket.socket(socket.AF_INET6) as client6:
                assert client6.connect_ex(server6.getsockname()) == 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.bind(("127.0.0.1", 0))
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            sender.sendto(b"hi", udp.getsockname())
        assert udp.recv(10) == b"hi"
    path = str(tmp_path / "s.sock")
    with socket.socket(socket.AF_UNIX) as unix_server:
        unix_server.bind(path)
        unix_server.listen(1)
        with socket.socket(socket.AF_UNIX) as unix_client:
            unix_client.connect(path)
    assert socket.getaddrinfo("localhost", 80, type=socket.SOCK_STREAM)
    assert socket.getaddrinfo(None, 80, socket.AF_INET, socket.SOCK_STREAM)
    assert is_loopback_host("::ffff:127.0.0.1")
    assert is_loopback_host("[::1]")
    assert not is_loopback_host("127.example")
    assert loopback_guard.violations == []


def test_servers_leave_no_threads_behind(test_ca: HarnessCA) -> None:
    def harness_threads() -> set[str]:
        prefixes = ("dns-", "origin-", "raw-")
        return {t.name for t in threading.enumerate() if t.name.startswith(prefixes)}

    before = harness_threads()
    dns = DnsServer({"a.test": ["127.0.0.1"]})
    plain = Origin("plain")
    secure = Origin("secure", tls=test_ca)
    with socket.create_connection(plain.sockaddr, timeout=5) as sock:
        sock.sendall(b"GET /slow?delay=60 HTTP/1.1\r\nHost: o\r\n\r\n")
        plain.wait_for_requests(1)  # a handler is now sleeping: close() must cancel it
        assert len(harness_threads() - before) == 3
        started = time.monotonic()
        for server in (dns, plain, secure):
            server.close()
        assert time.monotonic() - started < 10
    assert harness_threads() == before
    plain.close()  # idempotent
