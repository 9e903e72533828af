"""A reload that denies a destination ends what is open to it (`reload_revokes`, issue 12
item 8): an open CONNECT tunnel and a request still streaming its response on a keep-alive
client connection are closed, each with an access record saying "revoked by reload generation
N"; a tunnel the new policy still allows keeps relaying. `reload_revokes: false` keeps both.
"""

from __future__ import annotations

import socket
from typing import Any

import pytest

from tests.chaos.support import record_of, wait_metric
from tests.integration.helpers_core import http_request
from tests.integration.helpers_ops import EchoTunnel, loopback_policy, payload, scrape
from tests.support.clients import parse_response_head
from tests.support.dns import DnsServer
from tests.support.origin import Origin, RawOrigin, RawOriginFactory
from tests.support.proxy import ProxyFactory, ProxyProcess

STALL_BYTES = 400_000


@pytest.fixture
def origins(
    dns_server: DnsServer, origin: Origin, raw_origin_factory: RawOriginFactory
) -> tuple[Origin, RawOrigin]:
    for name in ("keep.test", "gone.test"):
        dns_server.records[name] = ["127.0.0.1"]
    return origin, raw_origin_factory("echo", mode="echo")


def config(web: Origin, echo: RawOrigin, allow: list[str], **keys: Any) -> dict[str, Any]:
    return {
        **loopback_policy(allow, http_ports=[web.port], connect_ports=[echo.port]),
        **keys,
    }


def streaming_request(proxy: ProxyProcess, web: Origin) -> tuple[socket.socket, int]:
    """A keep-alive connection whose response from gone.test is half sent (the origin waits 5 s
    before the second half), and how many body bytes were read with its head."""
    sock = socket.create_connection(proxy.proxy_address, timeout=10)
    sock.sendall(http_request(web.url(f"/stall/{STALL_BYTES}?delay=5", "gone.test")))
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, data
        data += chunk
    assert parse_response_head(data.split(b"\r\n\r\n")[0] + b"\r\n\r\n").status == 200
    web.wait_for_requests(1, path=f"/stall/{STALL_BYTES}")
    return sock, len(data) - (data.index(b"\r\n\r\n") + 4)


def read_all(sock: socket.socket, timeout: float, until: int | None = None) -> tuple[int, bool]:
    """(bytes read, whether the proxy closed) within `timeout`, stopping early once `until`
    bytes have arrived (a kept-alive response is not followed by a close to wait for)."""
    sock.settimeout(timeout)
    total = 0
    try:
        for _ in range(100_000):
            chunk = sock.recv(65536)
            if not chunk:
                return total, True
            total += len(chunk)
            if until is not None and total >= until:
                return total, False
    except TimeoutError:
        return total, False
    except ConnectionResetError:
        return total, True
    return total, False


def test_reload_revokes_tunnels_and_requests_to_a_denied_host_and_keeps_the_rest(
    proxy_factory: ProxyFactory, origins: tuple[Origin, RawOrigin]
) -> None:
    web, echo = origins
    proxy = proxy_factory(config(web, echo, ["keep.test", "gone.test"]))
    gone = EchoTunnel(proxy.proxy_address, echo.authority("gone.test"))
    kept = EchoTunnel(proxy.proxy_address, echo.authority("keep.test"))
    streaming, body_read = streaming_request(proxy, web)
    try:
        for tunnel in (gone, kept):
            assert tunnel.roundtrip(b"before") == b"before"
        proxy.reload({**proxy.config, **config(web, echo, ["keep.test"])}, wait_for="reloaded")
        assert gone.wait_closed(5) in ("eof", "reset")
        received, closed = read_all(streaming, 4)
        assert closed, "the revoked response went on"
        assert body_read + received < STALL_BYTES
        data = payload(200_000, seed=5)
        assert kept.roundtrip(data) == data, "a still-allowed tunnel was disturbed"
    finally:
        for item in (gone, kept, streaming):
            item.close()
    tunnel_record = record_of(proxy, host="gone.test", method="CONNECT")
    assert "revoked by reload generation 2" in tunnel_record["detail"], tunnel_record
    assert "host-not-allowed" in tunnel_record["detail"], tunnel_record
    assert tunnel_record["bytes_up"] == len(b"before"), tunnel_record
    request_record = record_of(proxy, host="gone.test", method="GET")
    assert "revoked by reload generation 2" in request_record["detail"], request_record
    assert request_record["status"] == 200, request_record
    kept_record = record_of(proxy, host="keep.test", method="CONNECT")
    assert "revoked" not in (kept_record["detail"] or ""), kept_record
    snapshot = wait_metric(proxy, "egressgate_revoked_total", 1, kind="tunnel")
    assert snapshot.value("egressgate_revoked_total", kind="http") == 1
    event = proxy.wait_for_event("reload-revoked")
    assert (event["generation"], event["tunnels"], event["requests"]) == (2, 1, 1)


def test_reload_revokes_false_keeps_tunnels_and_requests_open(
    proxy_factory: ProxyFactory, origins: tuple[Origin, RawOrigin]
) -> None:
    web, echo = origins
    proxy = proxy_factory(config(web, echo, ["keep.test", "gone.test"], reload_revokes=False))
    gone = EchoTunnel(proxy.proxy_address, echo.authority("gone.test"))
    streaming, body_read = streaming_request(proxy, web)
    try:
        assert gone.roundtrip(b"before") == b"before"
        new = config(web, echo, ["keep.test"], reload_revokes=False)
        proxy.reload({**proxy.config, **new}, wait_for="reloaded")
        data = payload(100_000, seed=6)
        assert gone.roundtrip(data) == data
        # The whole body arrives (the second half after the origin's stall and the reload).
        received, _ = read_all(streaming, 8, until=STALL_BYTES - body_read)
        assert body_read + received == STALL_BYTES, "the response was cut"
    finally:
        gone.close()
        streaming.close()
    assert scrape(proxy).value("egressgate_revoked_total") == 0
    assert not proxy.events("reload-revoked")
    record = record_of(proxy, host="gone.test", method="CONNECT")
    assert "revoked" not in (record["detail"] or ""), record


def socks_tunnel(proxy: ProxyProcess, host: str, port: int) -> socket.socket:
    """A SOCKS5 CONNECT (no auth, domain name) through the proxy's socks_listen."""
    address = proxy.listening_address("socks")
    assert address is not None
    sock = socket.create_connection(address, timeout=5)
    sock.sendall(b"\x05\x01\x00")
    assert sock.recv(2) == b"\x05\x00"
    name = host.encode()
    sock.sendall(b"\x05\x01\x00\x03" + bytes([len(name)]) + name + port.to_bytes(2, "big"))
    reply = sock.recv(10)
    assert reply[:2] == b"\x05\x00", reply
    return sock


def test_reload_revokes_a_socks5_tunnel_to_a_denied_host(
    proxy_factory: ProxyFactory, origins: tuple[Origin, RawOrigin]
) -> None:
    web, echo = origins
    proxy = proxy_factory(config(web, echo, ["keep.test", "gone.test"], socks_listen="127.0.0.1:0"))
    with socks_tunnel(proxy, "gone.test", echo.port) as sock:
        sock.sendall(b"hello")
        assert sock.recv(5) == b"hello"
        new = config(web, echo, ["keep.test"], socks_listen="127.0.0.1:0")
        proxy.reload({**proxy.config, **new}, wait_for="reloaded")
        _, closed = read_all(sock, 5)
        assert closed, "the revoked SOCKS5 tunnel went on"
    record = record_of(proxy, host="gone.test")
    assert "revoked by reload generation 2" in record["detail"], record
    wait_metric(proxy, "egressgate_revoked_total", 1, kind="tunnel")
