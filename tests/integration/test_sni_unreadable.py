"""A tunnel that starts as TLS is TLS: a ClientHello the proxy cannot read within its bounds
(too slow, too large, malformed) is refused (`sni-unreadable`), whatever `tunnels_without_sni`
says (default `allow`), on the plain listener's raw fast path and inside the TLS listener.

The origin is a raw TCP sink on 127.0.0.2: the proxy connects to it before "200", and it must
receive no byte of a refused hello (today it received the whole forbidden ClientHello).
"""

from __future__ import annotations

import socket
import ssl
import time
from dataclasses import dataclass
from typing import Any, Literal

import pytest

from egressgate.proxy.refusal import TLS_ACCESS_DENIED_ALERT
from tests.integration.helpers_core import ports_of, read_until_close, start_proxy, wait_record
from tests.support.dns import DnsServer
from tests.support.origin import RawOrigin, RawOriginFactory
from tests.support.proxy import ProxyFactory, ProxyProcess
from tests.support.tlsca import HarnessCA

HELLO_WAIT_S = 1.0  # min(5 s, header_timeout_s): the whole ClientHello must arrive within it
Carrier = Literal["plain", "tls"]


def client_hello(server_name: str) -> bytes:
    """The ClientHello Python's TLS client sends for `server_name` (one record)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=server_name)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def oversize_client_hello(server_name: str, size_bytes: int) -> bytes:
    """A well-formed ClientHello of about `size_bytes` (a long cipher-suite list, then a padding
    extension, RFC 7685) whose server_name extension comes last, in 16 KiB records."""
    sni = server_name.encode()
    suites = b"\x13\x01" * 20_000
    padding = size_bytes - len(suites)
    name_list = b"\x00" + len(sni).to_bytes(2, "big") + sni
    ext = b"\x00\x15" + padding.to_bytes(2, "big") + bytes(padding)
    ext += b"\x00\x00" + (len(name_list) + 2).to_bytes(2, "big")
    ext += len(name_list).to_bytes(2, "big") + name_list
    body = b"\x03\x03" + bytes(32) + b"\x00" + len(suites).to_bytes(2, "big") + suites
    body += b"\x01\x00" + len(ext).to_bytes(2, "big") + ext
    message = b"\x01" + len(body).to_bytes(3, "big") + body
    out = b""
    for start in range(0, len(message), 16384):
        piece = message[start : start + 16384]
        out += b"\x16\x03\x01" + len(piece).to_bytes(2, "big") + piece
    return out


@dataclass
class Env:
    sink: RawOrigin
    proxy: ProxyProcess
    ca: HarnessCA
    carrier: Carrier

    def tunnel(self) -> socket.socket:
        """CONNECT tls.test:PORT (inside TLS for the "tls" carrier); the open tunnel after 200."""
        if self.carrier == "tls":
            address = self.proxy.tls_proxy_address
            assert address is not None
            raw = socket.create_connection(address, timeout=10)
            sock: socket.socket = self.ca.client_context().wrap_socket(
                raw, server_hostname="127.0.0.1"
            )
        else:
            sock = socket.create_connection(self.proxy.proxy_address, timeout=10)
        authority = f"tls.test:{self.sink.port}"
        sock.sendall(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode())
        head = b""
        for _ in range(100):  # reads, bounded
            if b"\r\n\r\n" in head:
                break
            chunk = sock.recv(4096)
            assert chunk, f"closed during CONNECT: {head!r}"
            head += chunk
        assert head.startswith(b"HTTP/1.1 200"), head
        return sock

    def expect_refused(self, sock: socket.socket, why: str) -> dict[str, Any]:
        """The tunnel ends with a TLS access_denied alert, the sink got nothing, the log says
        sni-unreadable and why."""
        result = read_until_close(sock, 10.0)
        sock.close()
        assert result.data == TLS_ACCESS_DENIED_ALERT, result
        (connection,) = self.sink.wait_for_closed(1)
        assert connection.bytes_received == 0, connection
        record = wait_record(self.proxy, method="CONNECT")
        assert (record["reason"], record["status"], record["decision"]) == (
            "sni-unreadable",
            403,
            "deny",
        ), record
        assert why in (record["detail"] or ""), record
        return record


@pytest.fixture(params=["plain", "tls"])
def env(
    request: pytest.FixtureRequest,
    proxy_factory: ProxyFactory,
    raw_origin_factory: RawOriginFactory,
    dns_server: DnsServer,
    test_ca: HarnessCA,
) -> Env:
    carrier: Carrier = request.param
    sink = raw_origin_factory("sink", host="127.0.0.2", mode="sink")
    dns_server.records["tls.test"] = [sink.host]
    keys: dict[str, Any] = {"limits": {"header_timeout_s": HELLO_WAIT_S}}
    if carrier == "tls":
        cert = test_ca.server_cert("127.0.0.1", "proxy.test")
        keys["tls_listen"] = {
            "listen": "127.0.0.1:0",
            "cert_file": str(cert.chain_path),
            "key_file": str(cert.key_path),
        }
    proxy = start_proxy(proxy_factory, allow=["tls.test"], ports=ports_of(sink), **keys)
    return Env(sink, proxy, test_ca, carrier)


def test_a_client_hello_completed_after_the_wait_is_refused(env: Env) -> None:
    hello = client_hello("forbidden.example")
    sock = env.tunnel()
    sock.sendall(hello[:60])
    time.sleep(HELLO_WAIT_S + 0.5)
    try:
        sock.sendall(hello[60:])
    except OSError:
        pass  # the proxy may have closed already: it has refused
    env.expect_refused(sock, f"incomplete after {HELLO_WAIT_S:g}s (60 bytes arrived)")


def test_an_oversize_client_hello_with_the_sni_at_its_end_is_refused(env: Env) -> None:
    hello = oversize_client_hello("forbidden.example", 70_000)
    assert len(hello) > 70_000
    sock = env.tunnel()
    try:
        sock.sendall(hello)
    except OSError:
        pass  # refused while sending
    env.expect_refused(sock, "larger than 65536 bytes")


@pytest.mark.parametrize(
    "data",
    [
        b"\x16\x03\x01\x00\x08" + b"\x02\x00\x00\x04" + bytes(4),  # a ServerHello
        b"\x16\x03\x01\x00\x00",  # an empty handshake record
        # a hello fragment, then a record that is not a handshake record
        b"\x16\x03\x01\x00\x02\x01\x00" + b"\x17\x03\x03\x00\x02ab",
    ],
    ids=["server-hello", "empty-record", "foreign-record"],
)
def test_a_malformed_client_hello_is_refused(env: Env, data: bytes) -> None:
    sock = env.tunnel()
    sock.sendall(data)
    env.expect_refused(sock, "malformed")


def test_a_client_that_closes_mid_hello_is_refused_not_relayed(env: Env) -> None:
    if env.carrier == "tls":
        pytest.skip("a half-close inside TLS is not observable the same way")
    sock = env.tunnel()
    sock.sendall(client_hello("forbidden.example")[:60])
    time.sleep(0.2)  # the FIN in an event of its own
    sock.shutdown(socket.SHUT_WR)
    env.expect_refused(sock, "closed after 60 bytes")
