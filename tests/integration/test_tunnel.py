"""CONNECT tunnels with real TLS clients, and the SNI check on the first bytes of a tunnel.

The TLS origin (127.0.0.2) has a test-CA certificate for "tls.test" and "other.test". DNS maps
tls.test to it; other.test and evil.test map to a canary (127.0.0.3) that must never be reached:
a tunnel is always opened to the CONNECT host, never to the name in the TLS ClientHello.
"""

from __future__ import annotations

import os
import socket
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import requests

from tests.integration.helpers_core import (
    connect_refusal,
    ports_of,
    read_until_close,
    single_response,
    start_proxy,
    tunnel_request,
    wait_record,
)
from tests.support.clients import (
    curl,
    https_request_via_connect,
    open_connect_tunnel,
    openssl_s_client_via_connect,
    read_response,
    requests_session,
    stream_get,
    tls_via_connect,
)
from tests.support.dns import DnsServer
from tests.support.origin import (
    Origin,
    OriginFactory,
    RawOriginFactory,
    pattern_bytes,
    pattern_sha256,
)
from tests.support.proxy import ProxyFactory, ProxyProcess, clean_env
from tests.support.tlsca import HarnessCA

GET_CLOSE = b"GET / HTTP/1.1\r\nHost: tls.test\r\nConnection: close\r\n\r\n"


@dataclass
class Env:
    origin: Origin
    canary: Origin
    dns: DnsServer
    ca: HarnessCA
    proxy_factory: ProxyFactory

    def start(self, **keys: Any) -> ProxyProcess:
        keys.setdefault("allow", ["tls.test", "other.test"])
        return start_proxy(self.proxy_factory, ports=ports_of(self.origin, self.canary), **keys)

    @property
    def port(self) -> int:
        return self.origin.port

    def assert_no_tls_reached_the_origin(self) -> None:
        """The proxy had connected to the origin (before "200") but sent it no byte: the
        origin's TLS handshake never started, and the connection is closed."""
        accepts = self.origin.accepts.wait_until(
            lambda items: bool(items) and all(a.closed for a in items), 10.0, "closed accepts"
        )
        assert all(not a.tls_established for a in accepts), accepts
        assert self.origin.request_records() == []


@pytest.fixture
def env(
    origin_factory: OriginFactory,
    dns_server: DnsServer,
    test_ca: HarnessCA,
    proxy_factory: ProxyFactory,
) -> Iterator[Env]:
    origin = origin_factory(
        "tls", host="127.0.0.2", tls=test_ca, cert_names=["tls.test", "other.test"]
    )
    canary = origin_factory("canary", host="127.0.0.3", tls=test_ca, cert_names=["other.test"])
    dns_server.records["tls.test"] = [origin.host]
    dns_server.records["other.test"] = [canary.host]
    dns_server.records["evil.test"] = [canary.host]
    yield Env(origin, canary, dns_server, test_ca, proxy_factory)
    canary.assert_untouched()


def tls_handshake(
    proxy: ProxyProcess, port: int, context: ssl.SSLContext, server_hostname: str | None
) -> ssl.SSLSocket:
    """CONNECT tls.test:port, then a TLS handshake sending `server_hostname` as SNI (None: no
    SNI extension at all). The caller closes the returned socket."""
    tunnel = open_connect_tunnel(proxy.proxy_address, f"tls.test:{port}")
    try:
        assert tunnel.status == 200, tunnel.raw_head
        return context.wrap_socket(tunnel.sock, server_hostname=server_hostname)
    except BaseException:
        tunnel.close()
        raise


def handshake_refused(env: Env, proxy: ProxyProcess, server_hostname: str | None) -> Exception:
    """CONNECT tls.test, then a TLS handshake sending `server_hostname` as SNI (None: no SNI);
    the handshake must fail. Returns the error the client saw."""
    context = env.ca.client_context()
    if server_hostname is None:
        context.check_hostname = False
    with pytest.raises((ssl.SSLError, ConnectionError)) as failure:
        tls_handshake(proxy, env.port, context, server_hostname).close()
    return failure.value


def assert_alert(error: Exception) -> None:
    """The proxy answered the ClientHello with a TLS access_denied alert."""
    assert isinstance(error, ssl.SSLError), repr(error)
    assert "alert access denied" in str(error).lower(), repr(error)


# ---------------------------------------------------------------------------------------------
# Real TLS clients through CONNECT
# ---------------------------------------------------------------------------------------------


def test_curl_proxytunnel_reaches_a_tls_origin_and_verifies_it(env: Env) -> None:
    proxy = env.start()
    result = curl(
        ["-p", f"https://tls.test:{env.port}/"], proxy=proxy.proxy_url, cacert=env.ca.ca_pem_path
    )
    assert result.exit_code == 0, result.stderr
    assert (result.connect_status, result.status) == (200, 200)
    assert result.body == b"hello from tls"
    (accept,) = env.origin.accept_records()
    assert accept.sni == "tls.test"
    record = wait_record(proxy, method="CONNECT")
    assert (record["kind"], record["sni"], record["decision"]) == ("tunnel", "tls.test", "allow")


def test_openssl_s_client_through_the_proxy_completes_a_verified_handshake(env: Env) -> None:
    proxy = env.start()
    result = openssl_s_client_via_connect(
        proxy.proxy_address, "tls.test", env.port, env.ca.ca_pem_path, send=GET_CLOSE
    )
    assert result.verified, result.stderr
    assert b"hello from tls" in result.stdout


def test_python_ssl_through_connect_gets_a_byte_exact_response(env: Env) -> None:
    proxy = env.start()
    response = https_request_via_connect(
        proxy.proxy_address,
        "tls.test",
        env.port,
        "/bytes/500000?seed=4",
        context=env.ca.client_context(),
    )
    assert response.status == 200
    assert response.body_sha256 == pattern_sha256(500_000, 4)


def test_requests_and_httpx_reach_https_through_the_proxy(env: Env) -> None:
    proxy = env.start()
    url = f"https://tls.test:{env.port}/bytes/100000?seed=6"
    with requests_session(proxy.proxy_url, env.ca.ca_pem_path) as session:
        response = session.get(url, timeout=10)
        assert response.status_code == 200
        assert len(response.content) == 100_000
    streamed = stream_get(url, proxy=proxy.proxy_url, cafile=env.ca.ca_pem_path)
    assert (streamed.status, streamed.body_sha256) == (200, pattern_sha256(100_000, 6))
    assert {a.sni for a in env.origin.accept_records()} == {"tls.test"}


def test_clients_configured_by_the_https_proxy_variable_tunnel_through_the_proxy(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    proxy = env.start()
    url = f"https://tls.test:{env.port}/bytes/1000?seed=7"
    for name in list(os.environ):
        if name.lower().endswith("_proxy"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("https_proxy", proxy.proxy_url)
    # curl, from the environment only (no -x).
    via_curl = curl(
        [url], cacert=env.ca.ca_pem_path, env=clean_env({"https_proxy": proxy.proxy_url})
    )
    assert (via_curl.connect_status, via_curl.status) == (200, 200), via_curl.stderr
    assert via_curl.body_sha256 == pattern_sha256(1000, 7)
    # requests and httpx with their default trust_env=True.
    with requests.Session() as session:
        response = session.get(url, verify=str(env.ca.ca_pem_path), timeout=10)
        assert response.content == pattern_bytes(1000, 7)
    context = ssl.create_default_context(cafile=str(env.ca.ca_pem_path))
    with httpx.Client(verify=context, timeout=10) as client:
        assert client.get(url).content == pattern_bytes(1000, 7)
    accepts = env.origin.wait_for_accepts(3)
    assert [a.sni for a in accepts] == ["tls.test"] * 3  # three tunnels, one per client


# ---------------------------------------------------------------------------------------------
# SNI check
# ---------------------------------------------------------------------------------------------


def test_sni_differing_from_the_connect_host_is_refused_with_a_tls_alert(env: Env) -> None:
    proxy = env.start()  # other.test is allowed too: only the mismatch is wrong
    error = handshake_refused(env, proxy, "other.test")
    assert_alert(error)
    record = wait_record(proxy, method="CONNECT")
    assert (record["decision"], record["reason"], record["status"]) == (
        "deny",
        "sni-mismatch",
        403,
    )
    assert (record["host"], record["sni"]) == ("tls.test", "other.test")
    env.assert_no_tls_reached_the_origin()


def test_openssl_with_a_mismatched_sni_fails_its_handshake(env: Env) -> None:
    proxy = env.start()
    result = openssl_s_client_via_connect(
        proxy.proxy_address, "tls.test", env.port, env.ca.ca_pem_path, servername="other.test"
    )
    assert not result.handshake_ok, result.stderr
    assert wait_record(proxy, method="CONNECT")["reason"] == "sni-mismatch"
    env.assert_no_tls_reached_the_origin()


def test_sni_naming_a_host_off_the_allowlist_is_refused(env: Env) -> None:
    proxy = env.start()
    error = handshake_refused(env, proxy, "evil.test")
    assert_alert(error)
    record = wait_record(proxy, method="CONNECT")
    assert (record["reason"], record["status"], record["sni"]) == (
        "sni-not-allowed",
        403,
        "evil.test",
    )
    env.assert_no_tls_reached_the_origin()
    assert env.dns.query_count("evil.test") == 0


def test_tls_without_sni_passes_by_default(env: Env) -> None:
    proxy = env.start()
    result = openssl_s_client_via_connect(
        proxy.proxy_address, "tls.test", env.port, env.ca.ca_pem_path, servername="", send=GET_CLOSE
    )
    assert result.handshake_ok, result.stderr
    assert b"hello from tls" in result.stdout
    context = env.ca.client_context()
    context.check_hostname = False
    with tls_handshake(proxy, env.port, context, None) as tls:
        tls.sendall(GET_CLOSE)
        assert b"hello from tls" in read_until_close(tls, 10.0).data
    assert {a.sni for a in env.origin.accept_records()} == {None}


def test_tls_without_sni_is_refused_when_tunnels_without_sni_is_deny(env: Env) -> None:
    proxy = env.start(tunnels_without_sni="deny")
    error = handshake_refused(env, proxy, None)
    assert_alert(error)
    record = wait_record(proxy, method="CONNECT")
    assert (record["reason"], record["status"], record["decision"]) == ("sni-missing", 403, "deny")
    env.assert_no_tls_reached_the_origin()
    # With SNI the same policy still works.
    url = f"https://tls.test:{env.port}/"
    ok = curl([url], proxy=proxy.proxy_url, cacert=env.ca.ca_pem_path)
    assert (ok.status, ok.body) == (200, b"hello from tls")


def test_plain_bytes_in_a_tunnel_are_refused_when_tunnels_without_sni_is_deny(
    env: Env, origin_factory: OriginFactory
) -> None:
    plain = origin_factory("plain", host="127.0.0.1")
    env.dns.records["plain.test"] = [plain.host]
    proxy = start_proxy(
        env.proxy_factory,
        allow=["plain.test"],
        ports=ports_of(plain),
        tunnels_without_sni="deny",
    )
    tunnel, result = tunnel_request(
        proxy, f"plain.test:{plain.port}", b"GET / HTTP/1.1\r\nHost: plain.test\r\n\r\n"
    )
    assert tunnel.status == 200
    assert result.data == b""  # no TLS, so no alert: just closed
    assert result.closed or result.reset
    assert wait_record(proxy, method="CONNECT")["reason"] == "sni-missing"
    assert plain.request_records() == []


def test_sni_check_off_lets_a_mismatched_sni_through(env: Env) -> None:
    proxy = env.start(sni_check=False)
    context = env.ca.client_context()
    with tls_via_connect(
        proxy.proxy_address, "tls.test", env.port, context=context, server_hostname="other.test"
    ) as tls:
        tls.sendall(b"GET / HTTP/1.1\r\nHost: other.test\r\nConnection: close\r\n\r\n")
        assert b"hello from tls" in read_until_close(tls, 10.0).data
    # The tunnel went to the CONNECT host's address, whatever the ClientHello said.
    (accept,) = env.origin.accept_records()
    assert accept.sni == "other.test"
    assert wait_record(proxy, method="CONNECT")["decision"] == "allow"


def test_a_server_that_speaks_first_is_heard_before_the_hello_wait_ends(
    proxy_factory: ProxyFactory, raw_origin_factory: RawOriginFactory, dns_server: DnsServer
) -> None:
    # SMTP/SSH-style: the client sends nothing until the server has spoken. The tunnel is
    # judged when the server speaks (as on SOCKS5: both are proxy/raw_tunnel.py), not when the
    # ClientHello wait (5 s here) ends.
    server = raw_origin_factory("banner", mode="serve", serve_bytes=1000, seed=2)
    dns_server.records["banner.test"] = [server.host]
    proxy = start_proxy(
        proxy_factory,
        allow=["banner.test"],
        ports=ports_of(server),
        limits={"header_timeout_s": 30},
    )
    with open_connect_tunnel(proxy.proxy_address, f"banner.test:{server.port}") as tunnel:
        assert tunnel.status == 200
        tunnel.sock.settimeout(2.5)  # half the hello wait
        banner = tunnel.leftover
        while len(banner) < 1000:
            chunk = tunnel.sock.recv(65536)
            assert chunk, "closed before the banner arrived"
            banner += chunk
        assert banner == pattern_bytes(1000, 2)
        tunnel.sock.sendall(b"QUIT\r\n")
        tunnel.sock.shutdown(socket.SHUT_WR)
        read_until_close(tunnel.sock, 5.0)
    (conn,) = server.wait_for_closed(1)
    assert conn.head == b"QUIT\r\n"


def test_connect_response_is_a_bare_200_and_the_tunnel_carries_http(
    env: Env, origin_factory: OriginFactory
) -> None:
    plain = origin_factory("plain", host="127.0.0.1")
    env.dns.records["plain.test"] = [plain.host]
    proxy = start_proxy(env.proxy_factory, allow=["plain.test"], ports=ports_of(plain))
    tunnel, result = tunnel_request(
        proxy,
        f"plain.test:{plain.port}",
        b"GET /echo-headers HTTP/1.1\r\nHost: plain.test\r\nConnection: close\r\n\r\n",
    )
    assert tunnel.status == 200
    assert tunnel.head.header("content-length") is None
    assert tunnel.head.header("transfer-encoding") is None
    response = single_response(result)
    # Inside a tunnel the proxy adds nothing: no Via, no X-Forwarded-For.
    assert b"Via" not in response.body
    assert b"Forwarded" not in response.body


def test_connect_request_arriving_byte_by_byte_opens_the_tunnel(
    proxy_factory: ProxyFactory, raw_origin_factory: RawOriginFactory, dns_server: DnsServer
) -> None:
    echo = raw_origin_factory("echo", mode="echo")
    dns_server.records["echo.test"] = [echo.host]
    proxy = start_proxy(proxy_factory, allow=["echo.test"], ports=ports_of(echo))
    request = f"CONNECT echo.test:{echo.port} HTTP/1.1\r\nHost: echo.test\r\n\r\n".encode()
    with socket.create_connection(proxy.proxy_address, timeout=5) as sock:
        for byte in request:
            sock.sendall(bytes([byte]))
            time.sleep(0.005)
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(4096)
            assert chunk, f"closed: {head!r}"
            head += chunk
        assert head.startswith(b"HTTP/1.1 200")
        sock.sendall(b"ping")
        sock.shutdown(socket.SHUT_WR)
        assert read_until_close(sock, 5.0).data == b"ping"


@pytest.mark.parametrize("kind", ["CONNECT", "GET"])
def test_a_request_sent_only_after_the_accept_is_still_served(
    kind: str,
    proxy_factory: ProxyFactory,
    raw_origin_factory: RawOriginFactory,
    dns_server: DnsServer,
) -> None:
    """The acceptor reads first bytes that are already there at accept (the usual case) and
    otherwise waits for them: here nothing has arrived when the connection is accepted."""
    echo = raw_origin_factory("echo", mode="echo")
    dns_server.records["echo.test"] = [echo.host]
    proxy = start_proxy(proxy_factory, allow=["echo.test"], ports=ports_of(echo))
    late_s = 0.2  # the connection is accepted by then, with nothing to read yet
    if kind == "CONNECT":
        authority = f"echo.test:{echo.port}"
        with open_connect_tunnel(proxy.proxy_address, authority, send_after_s=late_s) as tunnel:
            assert tunnel.raw_head == b"HTTP/1.1 200 Connection established\r\n\r\n"
            tunnel.sock.sendall(b"ping")
            tunnel.sock.shutdown(socket.SHUT_WR)
            assert read_until_close(tunnel.sock, 5.0).data == b"ping"
    else:
        with socket.create_connection(proxy.proxy_address, timeout=5) as sock:
            time.sleep(late_s)
            sock.sendall(f"GET http://echo.test:{echo.port}/ HTTP/1.1\r\nHost: e\r\n\r\n".encode())
            # The echo origin is no HTTP server: whatever the proxy answers shows the request
            # went through the plain-HTTP path after the wait.
            assert read_until_close(sock, 10.0).data.startswith(b"HTTP/1.1 ")
    assert wait_record(proxy, method=kind)["host"] == "echo.test"


def test_connect_after_a_plain_request_on_the_same_connection_opens_the_tunnel(
    env: Env, origin_factory: OriginFactory
) -> None:
    plain = origin_factory("plain", host="127.0.0.1")
    env.dns.records["plain.test"] = [plain.host]
    proxy = start_proxy(
        env.proxy_factory, allow=["tls.test", "plain.test"], ports=ports_of(env.origin, plain)
    )
    with socket.create_connection(proxy.proxy_address, timeout=10) as sock:
        sock.sendall(f"GET http://plain.test:{plain.port}/ HTTP/1.1\r\nHost: p\r\n\r\n".encode())
        assert read_response(sock).body_prefix == b"hello from plain"
        sock.sendall(f"CONNECT tls.test:{env.port} HTTP/1.1\r\nHost: tls.test\r\n\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(4096)
            assert chunk, f"closed: {head!r}"
            head += chunk
        assert head == b"HTTP/1.1 200 Connection established\r\n\r\n"
        with env.ca.client_context().wrap_socket(sock, server_hostname="tls.test") as tls:
            tls.sendall(GET_CLOSE)
            assert b"hello from tls" in read_until_close(tls, 10.0).data
    assert wait_record(proxy, method="CONNECT")["sni"] == "tls.test"


def test_bytes_sent_together_with_the_connect_request_are_relayed(
    proxy_factory: ProxyFactory, raw_origin_factory: RawOriginFactory, dns_server: DnsServer
) -> None:
    echo = raw_origin_factory("echo", mode="echo")
    dns_server.records["echo.test"] = [echo.host]
    proxy = start_proxy(proxy_factory, allow=["echo.test"], ports=ports_of(echo))
    for version in ("HTTP/1.1", "HTTP/1.0"):
        request = f"CONNECT echo.test:{echo.port} {version}\r\nHost: echo.test\r\n\r\n"
        with socket.create_connection(proxy.proxy_address, timeout=5) as sock:
            sock.sendall(request.encode() + b"early bytes")  # one write
            received = b""
            while not received.endswith(b"early bytes"):
                chunk = sock.recv(4096)
                assert chunk, f"closed: {received!r}"
                received += chunk
            assert received == b"HTTP/1.1 200 Connection established\r\n\r\nearly bytes"


def test_bytes_and_eof_sent_with_the_connect_request_are_relayed_and_answered(
    proxy_factory: ProxyFactory, raw_origin_factory: RawOriginFactory, dns_server: DnsServer
) -> None:
    # Request, payload and FIN reach the proxy together: the EOF is announced once, with the
    # bytes (edge-triggered epoll repeats neither), and must still travel on after them.
    echo = raw_origin_factory("echo-eof", mode="echo")
    dns_server.records["echo.test"] = [echo.host]
    proxy = start_proxy(
        proxy_factory, allow=["echo.test"], ports=ports_of(echo), limits={"idle_timeout_s": 60}
    )
    request = f"CONNECT echo.test:{echo.port} HTTP/1.1\r\nHost: echo.test\r\n\r\n"
    with socket.create_connection(proxy.proxy_address, timeout=5) as sock:
        sock.sendall(request.encode() + b"payload then EOF")
        sock.shutdown(socket.SHUT_WR)
        result = read_until_close(sock, 5.0)
    assert result.closed, result
    assert not result.timed_out, result
    assert result.data == b"HTTP/1.1 200 Connection established\r\n\r\npayload then EOF"
    (conn,) = echo.wait_for_closed(1)
    assert conn.head == b"payload then EOF"
    assert conn.eof_received


def test_a_server_that_speaks_and_closes_at_once_is_relayed_to_the_client_end(
    proxy_factory: ProxyFactory, raw_origin_factory: RawOriginFactory, dns_server: DnsServer
) -> None:
    # The banner and the server's FIN arrive while the proxy still waits for the client's
    # first bytes (the SNI check): the relay must deliver both, not wait for a new event.
    server = raw_origin_factory("banner-eof", mode="serve", serve_bytes=3000, seed=5)
    dns_server.records["banner.test"] = [server.host]
    proxy = start_proxy(
        proxy_factory,
        allow=["banner.test"],
        ports=ports_of(server),
        limits={"header_timeout_s": 0.5, "idle_timeout_s": 60},
    )
    with open_connect_tunnel(proxy.proxy_address, f"banner.test:{server.port}") as tunnel:
        assert tunnel.status == 200
        result = read_until_close(tunnel.sock, 5.0)
    assert not result.timed_out, "the server's EOF never reached the client"
    assert tunnel.leftover + result.data == pattern_bytes(3000, 5)


def test_a_connect_that_is_never_answered_ends_in_504_after_connect_timeout(
    proxy_factory: ProxyFactory, dns_server: DnsServer
) -> None:
    # A loopback listener whose accept queue is full drops further SYNs, so the proxy's connect
    # stays pending: only the connect deadline (enforced by the server's sweeper) can end it.
    listener = socket.socket()
    fillers: list[socket.socket] = []
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        for _ in range(4):  # more than the queue holds; never accepted
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.1", port))
            fillers.append(filler)
        time.sleep(0.2)
        dns_server.records["silent.test"] = ["127.0.0.1"]
        proxy = start_proxy(
            proxy_factory, allow=["silent.test"], ports=[port], limits={"connect_timeout_s": 1}
        )
        started = time.monotonic()
        response = connect_refusal(proxy, f"silent.test:{port}")
        elapsed = time.monotonic() - started
    finally:
        for sock in (listener, *fillers):
            sock.close()
    assert response.status == 504
    assert response.header("X-Egressgate-Reason") == "upstream-timeout"
    assert 0.9 <= elapsed < 4.0, f"answered after {elapsed:.2f}s, connect_timeout_s is 1"


def two_records(hello: bytes) -> tuple[bytes, bytes]:
    """A one-record ClientHello re-framed as two TLS records (the handshake message cut in
    half, RFC 8446 §5.1), as clients with large post-quantum key shares send it."""
    assert hello[0] == 0x16
    length = int.from_bytes(hello[3:5], "big")
    assert len(hello) == 5 + length, "expected exactly one record"
    message, half = hello[5:], length // 2
    return tuple(  # type: ignore[return-value]
        hello[:3] + len(piece).to_bytes(2, "big") + piece
        for piece in (message[:half], message[half:])
    )


def tls_exchange_with_split_hello(
    sock: socket.socket,
    context: ssl.SSLContext,
    server_hostname: str,
    request: bytes,
    *,
    reframe: bool = False,
) -> bytes:
    """A TLS client over `sock` (a CONNECT tunnel) that sends its ClientHello in two TCP
    segments 200 ms apart (with `reframe`: as two TLS records, one per segment), then
    `request`; returns the decrypted reply (read until close)."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=server_hostname)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    hello = outgoing.read()
    first, second = two_records(hello) if reframe else (hello[:40], hello[40:])
    sock.sendall(first)
    time.sleep(0.2)
    sock.sendall(second)
    for _ in range(100):  # handshake round trips, bounded
        data = sock.recv(65536)
        if not data:
            raise AssertionError("the tunnel closed during the TLS handshake")
        incoming.write(data)
        try:
            tls.do_handshake()
            break
        except ssl.SSLWantReadError:
            pass
        finally:
            if outgoing.pending:
                sock.sendall(outgoing.read())
    if outgoing.pending:
        sock.sendall(outgoing.read())
    tls.write(request)
    sock.sendall(outgoing.read())
    reply = b""
    for _ in range(10_000):  # records, bounded
        try:
            reply += tls.read(65536)
            continue
        except ssl.SSLWantReadError:
            pass
        except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
            break
        data = sock.recv(65536)
        if not data:
            break
        incoming.write(data)
    return reply


def test_client_hello_split_across_segments_is_still_checked_and_relayed(env: Env) -> None:
    proxy = env.start()
    with open_connect_tunnel(proxy.proxy_address, f"tls.test:{env.port}") as tunnel:
        assert tunnel.status == 200
        reply = tls_exchange_with_split_hello(
            tunnel.sock, env.ca.client_context(), "tls.test", GET_CLOSE
        )
    assert b"hello from tls" in reply
    assert wait_record(proxy, method="CONNECT")["sni"] == "tls.test"
    with open_connect_tunnel(proxy.proxy_address, f"tls.test:{env.port}") as tunnel:
        assert tunnel.status == 200
        with pytest.raises(ssl.SSLError, match=r"(?i)access denied"):
            tls_exchange_with_split_hello(
                tunnel.sock, env.ca.client_context(), "other.test", GET_CLOSE
            )
    refused = wait_record(proxy, method="CONNECT", reason="sni-mismatch")
    assert refused["sni"] == "other.test"


def test_client_hello_in_two_records_within_the_wait_is_checked_and_relayed(env: Env) -> None:
    proxy = env.start(limits={"header_timeout_s": 1})  # the hello wait: min(5 s, 1 s)
    with open_connect_tunnel(proxy.proxy_address, f"tls.test:{env.port}") as tunnel:
        assert tunnel.status == 200
        reply = tls_exchange_with_split_hello(
            tunnel.sock, env.ca.client_context(), "tls.test", GET_CLOSE, reframe=True
        )
    assert b"hello from tls" in reply
    record = wait_record(proxy, method="CONNECT")
    assert (record["sni"], record["reason"]) == ("tls.test", "allowed"), record
    result = openssl_s_client_via_connect(
        proxy.proxy_address, "tls.test", env.port, env.ca.ca_pem_path, send=GET_CLOSE
    )
    assert result.verified, result.stderr
    assert b"hello from tls" in result.stdout


def test_idle_tunnel_is_closed_after_idle_timeout(
    proxy_factory: ProxyFactory, raw_origin_factory: RawOriginFactory, dns_server: DnsServer
) -> None:
    echo = raw_origin_factory("echo", mode="echo")
    dns_server.records["echo.test"] = [echo.host]
    proxy = start_proxy(
        proxy_factory, allow=["echo.test"], ports=ports_of(echo), limits={"idle_timeout_s": 0.5}
    )
    with open_connect_tunnel(proxy.proxy_address, f"echo.test:{echo.port}") as tunnel:
        tunnel.sock.sendall(b"ping")
        started = time.monotonic()
        result = read_until_close(tunnel.sock, 10.0)
        elapsed = time.monotonic() - started
    assert result.data == b"ping"
    assert result.closed or result.reset
    assert 0.4 <= elapsed < 5.0, f"idle tunnel closed after {elapsed:.2f}s, limit 0.5s"
    echo.wait_for_closed(1)
    record = wait_record(proxy, method="CONNECT")
    assert "idle" in (record["detail"] or ""), record
