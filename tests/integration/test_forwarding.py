"""Plain-HTTP forwarding semantics through the real proxy: keep-alive, HTTP/1.0, framing, HEAD,
204/304, 100-continue, header rewriting, redirects and Upgrade.

Every request goes to "allowed.test", which the test DNS server maps to the origin; "other.test"
maps to a canary that must never be reached (it is named only in headers and redirects).
"""

from __future__ import annotations

import base64
import hashlib
import json
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.helpers_core import (
    http_request,
    ports_of,
    read_until_close,
    send_raw,
    single_response,
    start_proxy,
    write_file,
)
from tests.support.clients import curl, parse_responses, read_response
from tests.support.dns import DnsServer
from tests.support.origin import (
    Origin,
    OriginFactory,
    iter_pattern,
    pattern_bytes,
    pattern_sha256,
    sha256_hex,
)
from tests.support.proxy import ProxyFactory, ProxyProcess


@dataclass
class Env:
    proxy: ProxyProcess
    origin: Origin
    canary: Origin
    dns: DnsServer

    def url(self, path: str) -> str:
        return f"http://allowed.test:{self.origin.port}{path}"

    @property
    def authority(self) -> str:
        return f"allowed.test:{self.origin.port}"


@pytest.fixture
def env(
    proxy_factory: ProxyFactory, origin_factory: OriginFactory, dns_server: DnsServer
) -> Iterator[Env]:
    origin = origin_factory("origin", host="127.0.0.1")
    canary = origin_factory("canary", host="127.0.0.3")
    dns_server.records["allowed.test"] = [origin.host]
    dns_server.records["other.test"] = [canary.host]
    proxy = start_proxy(proxy_factory, allow=["allowed.test"], ports=ports_of(origin, canary))
    yield Env(proxy, origin, canary, dns_server)
    canary.assert_untouched()
    assert dns_server.query_count("other.test") == 0


def open_client(env: Env) -> socket.socket:
    return socket.create_connection(env.proxy.proxy_address, timeout=10)


def echoed_headers(body: bytes) -> list[tuple[str, str]]:
    return [(name, value) for name, value in json.loads(body)["headers"]]


# ---------------------------------------------------------------------------------------------
# Connections
# ---------------------------------------------------------------------------------------------


def test_keepalive_client_connection_reuses_one_upstream_connection(env: Env) -> None:
    with open_client(env) as sock:
        sock.sendall(http_request(env.url("/bytes/1000")))
        first = read_response(sock)
        sock.sendall(http_request(env.url("/bytes/2000?seed=2")))
        second = read_response(sock)
        sock.sendall(http_request(env.url("/"), close=True))
        third = read_response(sock)
        assert read_until_close(sock, 5.0).closed  # closed after "Connection: close"
    assert (first.status, first.body_sha256) == (200, pattern_sha256(1000))
    assert (second.status, second.body_sha256) == (200, pattern_sha256(2000, 2))
    assert third.body_prefix == b"hello from origin"
    records = env.origin.request_records()
    assert [r.path for r in records] == ["/bytes/1000", "/bytes/2000", "/"]
    assert len({r.connection_id for r in records}) == 1, "upstream connection not reused"
    assert len(env.origin.accept_records()) == 1


def test_http_1_0_client_gets_its_response_and_the_connection_closes(env: Env) -> None:
    request = f"GET {env.url('/bytes/5000')} HTTP/1.0\r\n\r\n".encode()
    result = send_raw(env.proxy, request)
    assert result.closed
    response = single_response(result)
    assert response.status == 200
    assert response.body == pattern_bytes(5000)
    (record,) = env.origin.request_records()
    assert record.version == "HTTP/1.1"
    assert record.header_values("host") == [env.authority]


# ---------------------------------------------------------------------------------------------
# Message framing
# ---------------------------------------------------------------------------------------------


def test_chunked_request_body_is_forwarded_intact(env: Env, tmp_path: Path) -> None:
    size = 300_000
    upload = write_file(tmp_path / "upload.bin", iter_pattern(size, 4))
    result = curl(
        ["-H", "Transfer-Encoding: chunked", "--data-binary", f"@{upload}", env.url("/upload")],
        proxy=env.proxy.proxy_address,
    )
    assert result.status == 200, result.stderr
    assert result.json() == {"length": size, "sha256": pattern_sha256(size, 4)}
    (record,) = env.origin.request_records("/upload")
    assert record.chunked
    assert record.header("content-length") is None


def test_chunked_request_with_odd_chunk_sizes_and_extensions_arrives_byte_exact(env: Env) -> None:
    payload = pattern_bytes(70_001, 9)
    pieces = [payload[:1], payload[1:4097], payload[4097:65536], payload[65536:]]
    body = b"".join(b"%x;ext=1\r\n%b\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"
    head = http_request(
        env.url("/upload"), method="POST", headers=[("Transfer-Encoding", "chunked")], close=True
    )
    result = send_raw(env.proxy, [head, body[:5000], body[5000:]])
    response = single_response(result)
    assert json.loads(response.body) == {"length": len(payload), "sha256": sha256_hex(payload)}


def test_chunked_response_is_relayed_intact(env: Env) -> None:
    with open_client(env) as sock:
        sock.sendall(http_request(env.url("/chunked/300000?chunk=1000&seed=3")))
        response = read_response(sock)
    assert response.status == 200
    assert response.header("transfer-encoding") == "chunked"
    assert (response.body_length, response.body_sha256) == (300_000, pattern_sha256(300_000, 3))


def test_close_delimited_response_is_rechunked_for_an_http_1_1_client(env: Env) -> None:
    with open_client(env) as sock:
        sock.sendall(http_request(env.url("/close/70000?seed=5")))
        response = read_response(sock)
        assert response.header("transfer-encoding") == "chunked"
        assert response.header("content-length") is None
        assert (response.header("connection") or "").lower() != "close"
        assert response.body_sha256 == pattern_sha256(70_000, 5)
        # The client connection outlives the origin's close.
        sock.sendall(http_request(env.url("/"), close=True))
        assert read_response(sock).body_prefix == b"hello from origin"


def test_close_delimited_response_ends_with_close_for_an_http_1_0_client(env: Env) -> None:
    result = send_raw(env.proxy, f"GET {env.url('/close/70000')} HTTP/1.0\r\n\r\n".encode())
    assert result.closed
    response = single_response(result)
    assert response.header("transfer-encoding") is None
    assert response.body == pattern_bytes(70_000)


def test_head_response_has_no_body_and_the_connection_stays_usable(env: Env) -> None:
    with open_client(env) as sock:
        sock.sendall(http_request(env.url("/bytes/4096"), method="HEAD"))
        head = read_response(sock, head_request=True)
        assert (head.status, head.header("content-length")) == (200, "4096")
        sock.sendall(http_request(env.url("/chunked/5000"), method="HEAD"))
        chunked_head = read_response(sock, head_request=True)
        assert chunked_head.status == 200
        sock.sendall(http_request(env.url("/bytes/10"), close=True))
        after = read_until_close(sock, 5.0)
    assert after.closed
    response = single_response(after)
    assert response.body == pattern_bytes(10)  # no stray HEAD body bytes before it


@pytest.mark.parametrize("status", [204, 304])
def test_bodyless_status_responses_keep_the_connection_usable(env: Env, status: int) -> None:
    with open_client(env) as sock:
        sock.sendall(http_request(env.url(f"/status/{status}")))
        sock.sendall(http_request(env.url("/bytes/10"), close=True))
        result = read_until_close(sock, 5.0)
    responses, rest = parse_responses(result.data)
    assert rest == b""
    assert [r.status for r in responses] == [status, 200]
    assert responses[0].body == b""
    assert responses[0].header("transfer-encoding") is None
    assert responses[1].body == pattern_bytes(10)


def test_expect_100_continue_upload_with_curl(env: Env, tmp_path: Path) -> None:
    size = 1_000_000
    upload = write_file(tmp_path / "upload.bin", iter_pattern(size, 6))
    result = curl(
        [
            "-H",
            "Expect: 100-continue",
            "--expect100-timeout",
            "10",
            "--data-binary",
            f"@{upload}",
            env.url("/upload"),
        ],
        proxy=env.proxy.proxy_address,
    )
    assert result.exit_code == 0, result.stderr
    assert [r.status for r in result.responses] == [100, 200]
    assert result.json() == {"length": size, "sha256": pattern_sha256(size, 6)}
    (record,) = env.origin.request_records("/upload")
    assert record.header("expect") == "100-continue"


# ---------------------------------------------------------------------------------------------
# Header rewriting
# ---------------------------------------------------------------------------------------------


def test_hop_by_hop_headers_are_not_forwarded(env: Env) -> None:
    headers = [
        ("Connection", "keep-alive, X-Hop-Secret"),
        ("X-Hop-Secret", "only-for-the-proxy"),
        ("Keep-Alive", "timeout=5"),
        ("Proxy-Authorization", "Basic " + base64.b64encode(b"user:secret").decode()),
        ("Proxy-Connection", "keep-alive"),
        ("TE", "trailers"),
        ("Trailer", "X-Checksum"),
        ("X-End-To-End", "kept"),
    ]
    request = http_request(env.url("/echo-headers"), headers=headers, close=True)
    result = send_raw(env.proxy, request)
    response = single_response(result)
    names = {name.lower() for name, _ in echoed_headers(response.body)}
    for hop in ("x-hop-secret", "keep-alive", "proxy-authorization", "proxy-connection", "te"):
        assert hop not in names, f"{hop} was forwarded: {names}"
    assert "trailer" not in names
    assert "x-end-to-end" in names
    assert "connection" not in names or not any(
        "x-hop-secret" in value.lower()
        for name, value in echoed_headers(response.body)
        if name.lower() == "connection"
    )
    (record,) = env.origin.request_records()
    assert b"only-for-the-proxy" not in record.raw_head
    assert base64.b64encode(b"user:secret") not in record.raw_head  # the proxy credentials


def test_via_is_added_and_no_forwarding_headers_are_invented(env: Env) -> None:
    response = single_response(
        send_raw(env.proxy, http_request(env.url("/echo-headers"), close=True))
    )
    headers = echoed_headers(response.body)
    lowered = {name.lower(): value for name, value in headers}
    assert lowered["via"] == "1.1 egressgate"
    for invented in ("x-forwarded-for", "forwarded", "x-real-ip", "x-forwarded-host"):
        assert invented not in lowered
    assert response.header("via") is not None
    assert "1.1 egressgate" in (response.header("via") or "")
    chained = single_response(
        send_raw(
            env.proxy,
            http_request(env.url("/echo-headers"), headers=[("Via", "1.0 inner")], close=True),
        )
    )
    vias = [v for n, v in echoed_headers(chained.body) if n.lower() == "via"]
    assert vias == ["1.0 inner, 1.1 egressgate"]


def test_host_header_is_taken_from_the_request_uri(env: Env) -> None:
    lying = f"other.test:{env.canary.port}"
    request = http_request(env.url("/echo-headers?q=1"), host=lying, close=True)
    response = single_response(send_raw(env.proxy, request))
    assert response.status == 200
    hosts = [v for n, v in echoed_headers(response.body) if n.lower() == "host"]
    assert hosts == [env.authority]
    (record,) = env.origin.request_records()
    assert record.target == "/echo-headers?q=1"  # origin-form upstream
    # The env fixture checks that other.test was never looked up and the canary never reached.


def test_request_target_path_and_query_are_forwarded_as_sent(env: Env) -> None:
    for target, expected in (
        (f"http://{env.authority}", "/"),
        (f"http://{env.authority}?x=1", "/?x=1"),
        (f"http://{env.authority}/a/../b/%2e%2E/c?d=%20e&f", "/a/../b/%2e%2E/c?d=%20e&f"),
        (f"http://{env.authority}/p#fragment", "/p"),
    ):
        response = single_response(send_raw(env.proxy, http_request(target, close=True)))
        assert response.header("x-origin") == "origin"  # the origin answered (200 or 404)
        assert env.origin.request_records()[-1].target == expected


def test_redirect_is_passed_to_the_client_not_followed(env: Env) -> None:
    location = f"http://other.test:{env.canary.port}/secret"
    result = curl([env.url(f"/redirect?to={location}")], proxy=env.proxy.proxy_address)
    assert result.status == 302
    assert result.header("location") == location
    assert [r.path for r in env.origin.request_records()] == ["/redirect"]


# ---------------------------------------------------------------------------------------------
# Upgrade
# ---------------------------------------------------------------------------------------------


def test_websocket_upgrade_to_an_allowed_host_relays_bytes_both_ways(env: Env) -> None:
    key = base64.b64encode(b"egressgate-tests").decode()
    request = http_request(
        env.url("/ws"),
        headers=[
            ("Connection", "Upgrade"),
            ("Upgrade", "websocket"),
            ("Sec-WebSocket-Key", key),
            ("Sec-WebSocket-Version", "13"),
        ],
    )
    with open_client(env) as sock:
        sock.settimeout(5.0)
        sock.sendall(request)
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(65536)
            assert chunk, f"closed during the 101: {head!r}"
            head += chunk
        raw_head, _, early = head.partition(b"\r\n\r\n")
        lines = raw_head.decode("latin-1").split("\r\n")
        assert lines[0].startswith("HTTP/1.1 101")
        fields = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        magic = key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
        expected = base64.b64encode(hashlib.sha1(magic.encode()).digest()).decode()
        assert fields["sec-websocket-accept"] == expected
        assert fields["upgrade"].lower() == "websocket"
        assert early == b""
        payload = pattern_bytes(200_000, 8)
        sock.sendall(payload)
        echoed = bytearray()
        while len(echoed) < len(payload):
            chunk = sock.recv(65536)
            assert chunk, "the relay closed early"
            echoed += chunk
        assert bytes(echoed) == payload
        sock.shutdown(socket.SHUT_WR)
        assert read_until_close(sock, 5.0).data == b""
    (record,) = env.origin.request_records("/ws")
    assert record.header("upgrade") == "websocket"
    env.origin.accepts.wait_until(lambda items: items[-1].closed, 5.0, "ws closed")
    assert record.upgraded_bytes == len(payload)
    log = env.proxy.wait_for_records(1, predicate=lambda r: r["method"] == "GET")[0]
    assert (log["status"], log["bytes_up"], log["bytes_down"]) == (101, len(payload), len(payload))


def test_idle_keepalive_connection_is_closed_after_keepalive_timeout(
    proxy_factory: ProxyFactory, origin_factory: OriginFactory, dns_server: DnsServer
) -> None:
    origin = origin_factory("origin", host="127.0.0.1")
    dns_server.records["allowed.test"] = [origin.host]
    proxy = start_proxy(
        proxy_factory,
        allow=["allowed.test"],
        ports=ports_of(origin),
        limits={"keepalive_timeout_s": 0.5},
    )
    with socket.create_connection(proxy.proxy_address, timeout=10) as sock:
        sock.sendall(http_request(f"http://allowed.test:{origin.port}/"))
        assert read_response(sock).status == 200
        started = time.monotonic()
        rest = read_until_close(sock, 10.0)
        elapsed = time.monotonic() - started
    assert rest.data == b""
    assert rest.closed
    assert 0.4 <= elapsed < 5.0, f"idle connection closed after {elapsed:.2f}s, limit 0.5s"
