"""The access log: one JSON line per request or tunnel, with every documented field.

"allowed.test" and "other.test" both map to the origin; only allowed.test is on the allowlist
(except in report mode, where other.test goes through and is logged as a would-be refusal).
"""

from __future__ import annotations

import datetime
import json
import socket
from dataclasses import dataclass
from typing import Any

import pytest

from tests.integration.helpers_core import (
    ACCESS_LOG_FIELDS,
    free_port,
    http_request,
    ports_of,
    read_until_close,
    send_raw,
    single_response,
    start_proxy,
    wait_record,
)
from tests.support.clients import open_connect_tunnel
from tests.support.dns import DnsServer
from tests.support.origin import (
    Origin,
    OriginFactory,
    RawOriginFactory,
    pattern_bytes,
    pattern_sha256,
    sha256_hex,
)
from tests.support.proxy import ProxyFactory, ProxyProcess


@dataclass
class Env:
    origin: Origin
    dns: DnsServer
    proxy_factory: ProxyFactory

    def start(self, **keys: Any) -> ProxyProcess:
        keys.setdefault("allow", ["allowed.test"])
        return start_proxy(self.proxy_factory, ports=ports_of(self.origin), **keys)

    def url(self, host: str, path: str = "/") -> str:
        return f"http://{host}:{self.origin.port}{path}"


@pytest.fixture
def env(origin_factory: OriginFactory, dns_server: DnsServer, proxy_factory: ProxyFactory) -> Env:
    origin = origin_factory("origin", host="127.0.0.1")
    dns_server.records["allowed.test"] = [origin.host]
    dns_server.records["other.test"] = [origin.host]
    return Env(origin, dns_server, proxy_factory)


def assert_complete(record: dict[str, Any]) -> None:
    """Every documented field, in the documented order, with the right JSON types."""
    assert list(record) == list(ACCESS_LOG_FIELDS)
    stamp = datetime.datetime.fromisoformat(record["ts"].replace("Z", "+00:00"))
    now = datetime.datetime.now(datetime.UTC)
    assert abs((now - stamp).total_seconds()) < 120
    assert record["ts"].endswith("Z")
    assert record["client"] == "127.0.0.1"
    assert record["decision"] in ("allow", "deny", "report", "error")
    assert record["kind"] in ("http", "tunnel")
    for key in ("status", "bytes_up", "bytes_down"):
        assert isinstance(record[key], int)
        assert record[key] >= 0
    assert isinstance(record["duration_ms"], int | float)
    assert 0 <= record["duration_ms"] < 60_000
    for key in ("user", "policy", "host", "address", "rule", "sni", "detail", "method"):
        assert record[key] is None or isinstance(record[key], str)
    assert record["port"] is None or isinstance(record["port"], int)


def test_allowed_request_is_logged_with_every_field(env: Env) -> None:
    proxy = env.start()
    body = pattern_bytes(1234, 1)
    request = http_request(env.url("allowed.test", "/upload"), method="POST", body=body, close=True)
    response = single_response(send_raw(proxy, request))
    assert json.loads(response.body)["sha256"] == sha256_hex(body)
    record = wait_record(proxy, method="POST")
    assert_complete(record)
    assert record == record | {
        "user": None,
        "policy": "default",
        "method": "POST",
        "host": "allowed.test",
        "port": env.origin.port,
        "address": "127.0.0.1",
        "decision": "allow",
        "reason": "allowed",
        "rule": "allowed.test",
        "status": 200,
        "bytes_up": 1234,
        "bytes_down": len(response.body),
        "kind": "http",
        "sni": None,
        "detail": None,
        "original_dst": None,
        "path": None,
    }


def test_download_is_logged_with_its_body_size(env: Env) -> None:
    proxy = env.start()
    response = single_response(
        send_raw(proxy, http_request(env.url("allowed.test", "/bytes/300000"), close=True))
    )
    assert sha256_hex(response.body) == pattern_sha256(300_000)
    record = wait_record(proxy, method="GET")
    assert (record["bytes_up"], record["bytes_down"], record["status"]) == (0, 300_000, 200)


def test_tunnel_is_logged_with_the_bytes_each_way(
    env: Env, raw_origin_factory: RawOriginFactory
) -> None:
    served = 7777
    server = raw_origin_factory("serve", mode="serve", serve_bytes=served, seed=9)
    env.dns.records["raw.test"] = [server.host]
    proxy = start_proxy(env.proxy_factory, allow=["raw.test"], ports=ports_of(server))
    sent = pattern_bytes(4321, 8)
    with open_connect_tunnel(proxy.proxy_address, f"raw.test:{server.port}") as tunnel:
        assert tunnel.status == 200
        tunnel.sock.sendall(sent)
        received = tunnel.leftover + read_until_close(tunnel.sock, 10.0).data
        tunnel.sock.shutdown(socket.SHUT_WR)
    assert sha256_hex(received) == pattern_sha256(served, 9)
    (conn,) = server.wait_for_closed(1)
    assert conn.sha256 == sha256_hex(sent)
    record = wait_record(proxy, method="CONNECT")
    assert_complete(record)
    assert record == record | {
        "host": "raw.test",
        "port": server.port,
        "address": server.host,
        "decision": "allow",
        "reason": "allowed",
        "rule": "raw.test",
        "status": 200,
        "bytes_up": len(sent),
        "bytes_down": served,
        "kind": "tunnel",
        "sni": None,
    }


def test_refusal_is_logged_as_deny_with_its_reason_and_no_rule(env: Env) -> None:
    proxy = env.start()
    send_raw(proxy, http_request(env.url("denied.test"), close=True))
    record = wait_record(proxy, host="denied.test")
    assert_complete(record)
    assert record == record | {
        "method": "GET",
        "policy": "default",
        "decision": "deny",
        "reason": "host-not-allowed",
        "rule": None,
        "status": 403,
        "address": None,
        "bytes_up": 0,
        "bytes_down": 0,
        "kind": "http",
    }
    assert "denied.test" in record["detail"]


def test_port_refusal_names_the_entry_that_matched_the_host(env: Env) -> None:
    proxy = start_proxy(
        env.proxy_factory, allow=["allowed.test"], ports=[], http_ports=[free_port()]
    )
    send_raw(proxy, http_request(env.url("allowed.test"), close=True))
    record = wait_record(proxy, method="GET")
    assert (record["decision"], record["reason"], record["rule"]) == (
        "deny",
        "port-not-allowed",
        "allowed.test",
    )


def test_failures_and_malformed_requests_are_logged_as_errors(env: Env) -> None:
    port = free_port()
    proxy = start_proxy(env.proxy_factory, allow=["allowed.test"], ports=[port])
    send_raw(proxy, http_request(f"http://allowed.test:{port}/", close=True))
    send_raw(proxy, b"NONSENSE\r\n\r\n")
    refused, malformed = proxy.wait_for_records(2)
    assert_complete(refused)
    assert (refused["decision"], refused["reason"], refused["status"]) == (
        "error",
        "upstream-refused",
        502,
    )
    assert refused["address"] == "127.0.0.1"
    assert_complete(malformed)
    assert (malformed["decision"], malformed["reason"], malformed["status"]) == (
        "error",
        "bad-request",
        400,
    )
    assert malformed["host"] is None


def test_report_mode_lets_refused_requests_through_and_logs_the_would_be_reason(
    env: Env, raw_origin_factory: RawOriginFactory
) -> None:
    echo = raw_origin_factory("echo", mode="echo")
    env.dns.records["echo.test"] = [echo.host]
    proxy = start_proxy(
        env.proxy_factory, allow=["allowed.test"], ports=ports_of(env.origin, echo), mode="report"
    )
    response = single_response(
        send_raw(proxy, http_request(env.url("other.test", "/bytes/100"), close=True))
    )
    assert response.status == 200
    assert response.body == pattern_bytes(100)
    assert response.header("X-Egressgate-Reason") is None
    record = wait_record(proxy, method="GET")
    assert_complete(record)
    assert (record["decision"], record["reason"], record["status"]) == (
        "report",
        "host-not-allowed",
        200,
    )
    assert record["rule"] is None
    assert "other.test" in record["detail"]
    assert [r.path for r in env.origin.request_records()] == ["/bytes/100"]
    with open_connect_tunnel(proxy.proxy_address, f"echo.test:{echo.port}") as tunnel:
        assert tunnel.status == 200
        tunnel.sock.sendall(b"report me")
        tunnel.sock.shutdown(socket.SHUT_WR)
        assert read_until_close(tunnel.sock, 5.0).data == b"report me"
    tunnel_record = wait_record(proxy, method="CONNECT")
    assert (tunnel_record["decision"], tunnel_record["reason"]) == ("report", "host-not-allowed")
    assert (tunnel_record["bytes_up"], tunnel_record["bytes_down"]) == (9, 9)


def test_report_mode_still_refuses_internal_addresses(
    env: Env, origin_factory: OriginFactory
) -> None:
    canary = origin_factory("canary", host="127.0.0.3")
    env.dns.records["inside.test"] = [canary.host]
    proxy = start_proxy(
        env.proxy_factory,
        allow=[],
        ports=ports_of(canary),
        allow_private=["127.0.0.1/32"],
        mode="report",
    )
    result = send_raw(proxy, http_request(f"http://inside.test:{canary.port}/", close=True))
    response = single_response(result)
    assert response.status == 403
    assert response.header("X-Egressgate-Reason") == "private-address"
    record = wait_record(proxy, method="GET")
    assert (record["decision"], record["reason"]) == ("deny", "private-address")
    canary.assert_untouched()


def test_access_log_dash_writes_json_lines_to_stdout(env: Env) -> None:
    proxy = env.start(access_log="-")
    for host in ("allowed.test", "denied.test"):
        send_raw(proxy, http_request(env.url(host), close=True))
    records = proxy.wait_for_records(2)
    assert [(r["host"], r["status"]) for r in records] == [
        ("allowed.test", 200),
        ("denied.test", 403),
    ]
    for record in records:
        assert_complete(record)
    assert not any('"decision"' in line for line in proxy.stderr_lines)


def test_healthz_is_answered_by_the_proxy_itself_and_not_logged(env: Env) -> None:
    proxy = env.start()
    health = single_response(
        send_raw(proxy, b"GET /healthz HTTP/1.1\r\nHost: egressgate\r\nConnection: close\r\n\r\n")
    )
    assert (health.status, health.body) == (200, b"ok\n")
    send_raw(proxy, http_request(env.url("allowed.test"), close=True))
    records = proxy.wait_for_records(1)
    assert [r["host"] for r in records] == ["allowed.test"]
    assert env.origin.request_records()[0].path == "/"


def client_hello(server_name: bytes) -> bytes:
    """A minimal TLS 1.2/1.3 ClientHello record whose server_name extension carries exactly
    `server_name` (any bytes: real TLS libraries would refuse to send most of these)."""
    entry = b"\x00" + len(server_name).to_bytes(2, "big") + server_name
    names = len(entry).to_bytes(2, "big") + entry
    extension = b"\x00\x00" + len(names).to_bytes(2, "big") + names
    body = (
        b"\x03\x03"  # legacy_version
        + bytes(32)  # random
        + b"\x00"  # legacy_session_id
        + b"\x00\x02\x13\x01"  # cipher_suites: TLS_AES_128_GCM_SHA256
        + b"\x01\x00"  # legacy_compression_methods: null
        + len(extension).to_bytes(2, "big")
        + extension
    )
    handshake = b"\x01" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x01" + len(handshake).to_bytes(2, "big") + handshake


def test_hostile_tls_server_name_is_refused_and_logged_as_one_escaped_json_line(
    env: Env, raw_origin_factory: RawOriginFactory
) -> None:
    sink = raw_origin_factory("sink", mode="sink")
    env.dns.records["sink.test"] = [sink.host]
    proxy = start_proxy(env.proxy_factory, allow=["sink.test"], ports=ports_of(sink))
    hostile = 'x"}\n{"decision":"allow","host":"forged.test'
    with open_connect_tunnel(proxy.proxy_address, f"sink.test:{sink.port}") as tunnel:
        assert tunnel.status == 200
        tunnel.sock.sendall(client_hello(hostile.encode("ascii")))
        answer = read_until_close(tunnel.sock, 5.0)
    assert answer.data.startswith(b"\x15\x03")  # a TLS alert record, then the close
    record = wait_record(proxy, method="CONNECT")
    assert (record["decision"], record["reason"], record["sni"]) == (
        "deny",
        "sni-not-allowed",
        hostile,
    )
    lines = proxy.access_log_path.read_bytes().splitlines()
    assert len(lines) == 1, lines  # the newline in the name did not split the record
    (conn,) = sink.wait_for_closed(1)
    assert conn.bytes_received == 0  # the ClientHello was not passed on
