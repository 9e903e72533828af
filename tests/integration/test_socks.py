"""The SOCKS5 listener (`socks_listen`) with real clients: curl, requests (PySocks), httpx
(socksio), and raw RFC 1928 bytes for what clients never send (BIND, SOCKS4, garbage).

Origins are on loopback (127.0.0.2 serves TLS for tls.test; 127.0.0.3 is a canary that must never
be reached); names resolve through the test DNS server, at the proxy (socks5h). Every policy
allows loopback destinations with `allow_private` unless the test is about that refusal.
"""

from __future__ import annotations

import gc
import hashlib
import socket
import ssl
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests

from tests.integration.helpers_core import free_port, ports_of, start_proxy, wait_record
from tests.support.clients import curl
from tests.support.dns import DnsServer
from tests.support.origin import Origin, OriginFactory
from tests.support.proxy import ProxyFactory, ProxyProcess
from tests.support.tlsca import HarnessCA


@dataclass
class Env:
    origin: Origin
    canary: Origin
    ca: HarnessCA
    dns: DnsServer
    proxy_factory: ProxyFactory
    tmp: Path

    def start(self, **keys: Any) -> ProxyProcess:
        keys.setdefault("allow", ["tls.test", "other.test"])
        keys.setdefault("socks_listen", "127.0.0.1:0")
        return start_proxy(self.proxy_factory, ports=ports_of(self.origin, self.canary), **keys)

    def url(self, name: str = "tls.test", path: str = "/") -> str:
        return f"https://{name}:{self.origin.port}{path}"


@pytest.fixture
def env(
    origin_factory: OriginFactory,
    dns_server: DnsServer,
    test_ca: HarnessCA,
    proxy_factory: ProxyFactory,
    tmp_path: Path,
) -> Iterator[Env]:
    origin = origin_factory("tls", host="127.0.0.2", tls=test_ca, cert_names=["tls.test"])
    canary = origin_factory("canary", host="127.0.0.3", tls=test_ca, cert_names=["other.test"])
    dns_server.records["tls.test"] = [origin.host]
    dns_server.records["other.test"] = [canary.host]
    dns_server.records["evil.test"] = [canary.host]
    yield Env(origin, canary, test_ca, dns_server, proxy_factory, tmp_path)
    canary.assert_untouched()


def socks_curl(env: Env, proxy: ProxyProcess, url: str, *args: str) -> Any:
    return curl([*args, url], proxy=proxy.socks_url, cacert=env.ca.ca_pem_path)


# ---------------------------------------------------------------------------------------------
# curl --socks5-hostname
# ---------------------------------------------------------------------------------------------


def test_curl_reaches_an_allowed_name_and_the_tunnel_is_logged(env: Env) -> None:
    proxy = env.start()
    result = socks_curl(env, proxy, env.url(path="/bytes/1000"))
    assert result.exit_code == 0, result.stderr
    assert result.status == 200
    assert env.origin.request_records()[-1].path == "/bytes/1000"
    record = wait_record(proxy, kind="socks")
    assert record["decision"] == "allow", record
    assert record["host"] == "tls.test"
    assert record["port"] == env.origin.port
    assert record["address"] == "127.0.0.2"
    assert record["sni"] == "tls.test"
    assert record["method"] == "CONNECT"
    assert record["status"] == 200
    assert record["bytes_up"] > 0
    assert record["bytes_down"] > 0


def test_curl_socks5_hostname_flag_form(env: Env) -> None:
    proxy = env.start()
    host, port = proxy.socks_address
    result = curl(
        ["--socks5-hostname", f"{host}:{port}", env.url()],
        cacert=env.ca.ca_pem_path,
    )
    assert result.exit_code == 0, result.stderr


def test_curl_denied_name_gets_reply_2_and_a_host_not_allowed_record(env: Env) -> None:
    proxy = env.start(allow=["tls.test"])
    result = socks_curl(env, proxy, env.url("other.test"))
    assert result.exit_code != 0
    assert "(2)" in result.stderr or "not allowed" in result.stderr.lower(), result.stderr
    record = wait_record(proxy, kind="socks", host="other.test")
    assert record["decision"] == "deny"
    assert record["reason"] == "host-not-allowed"
    assert record["status"] == 403
    # the canary (other.test's address) is never contacted: checked by the fixture


def test_curl_private_address_is_refused_after_dns(env: Env) -> None:
    proxy = env.start(allow_private=[])
    result = socks_curl(env, proxy, env.url())
    assert result.exit_code != 0
    record = wait_record(proxy, kind="socks", host="tls.test")
    assert record["reason"] == "private-address", record
    assert record["address"] == "127.0.0.2"
    assert env.origin.accept_records() == []


def test_curl_with_credentials_and_a_user_policy(env: Env) -> None:
    proxy = env.start(
        auth={"users_env": "EG_SOCKS_USERS"},
        policies={
            "staff": {
                "allow": ["tls.test"],
                "connect_ports": [env.origin.port],
                "allow_private": ["127.0.0.0/8"],
            }
        },
        clients=[{"user": "alice", "policy": "staff"}],
        allow=[],
        env={"EG_SOCKS_USERS": "alice:s3cret\nbob:hunter2"},
    )
    host, port = proxy.socks_address
    ok = curl([env.url()], proxy=f"socks5h://alice:s3cret@{host}:{port}", cacert=env.ca.ca_pem_path)
    assert ok.exit_code == 0, ok.stderr
    record = wait_record(proxy, kind="socks", user="alice")
    assert record["policy"] == "staff"
    assert record["decision"] == "allow"
    # bob has no rule: the default policy (nothing allowed) decides
    bob = curl([env.url()], proxy=f"socks5h://bob:hunter2@{host}:{port}", cacert=env.ca.ca_pem_path)
    assert bob.exit_code != 0
    record = wait_record(proxy, kind="socks", user="bob")
    assert record["reason"] == "host-not-allowed"
    assert record["policy"] == "default"


def test_curl_bad_credentials_are_refused_by_the_sub_negotiation(env: Env) -> None:
    proxy = env.start(auth={"users_env": "EG_SOCKS_USERS"}, env={"EG_SOCKS_USERS": "alice:s3cret"})
    host, port = proxy.socks_address
    bad = curl([env.url()], proxy=f"socks5h://alice:wrong@{host}:{port}", cacert=env.ca.ca_pem_path)
    assert bad.exit_code != 0
    assert "rejected" in bad.stderr.lower() or "authentication" in bad.stderr.lower(), bad.stderr
    record = wait_record(proxy, kind="socks", reason="proxy-auth-required")
    assert record["status"] == 407
    assert record.get("user") is None
    assert "password" in record["detail"]
    # no credentials at all: the only method offered is "no authentication" → 0xFF
    none = socks_curl(env, proxy, env.url())
    assert none.exit_code != 0
    records = proxy.wait_for_records(
        2, predicate=lambda r: r.get("reason") == "proxy-auth-required"
    )
    assert len(records) == 2
    assert env.origin.accept_records() == []
    # the failed login went through the HTTP side's stage 1: counted (and backed off)
    metrics = requests.get(proxy.admin_url + "/metrics", timeout=10).text
    assert "egressgate_auth_failures_total 1.0" in metrics, [
        line for line in metrics.splitlines() if "auth" in line
    ]


# ---------------------------------------------------------------------------------------------
# Python clients: requests (PySocks) and httpx (socksio)
# ---------------------------------------------------------------------------------------------


def test_requests_with_pysocks(env: Env) -> None:
    proxy = env.start()
    with requests.Session() as session:
        session.trust_env = False
        response = session.get(
            env.url(path="/bytes/5"),
            proxies={"https": proxy.socks_url},
            verify=str(env.ca.ca_pem_path),
            timeout=20,
        )
    assert response.status_code == 200
    del response  # PySocks closes its socket only when it is collected
    gc.collect()
    wait_record(proxy, kind="socks", host="tls.test", decision="allow")


def test_httpx_with_socksio(env: Env) -> None:
    proxy = env.start()
    # httpx speaks socks5:// and resolves nothing itself for a name: the proxy does.
    url = proxy.socks_url.replace("socks5h://", "socks5://")
    context = env.ca.client_context()
    with httpx.Client(proxy=url, verify=context, trust_env=False) as client:
        response = client.get(env.url(path="/bytes/7"), timeout=20)
    assert response.status_code == 200
    wait_record(proxy, kind="socks", host="tls.test", decision="allow")


# ---------------------------------------------------------------------------------------------
# The protocol itself, byte by byte
# ---------------------------------------------------------------------------------------------


def socks_socket(proxy: ProxyProcess) -> socket.socket:
    sock = socket.create_connection(proxy.socks_address, timeout=10)
    return sock


def recv_exactly(sock: socket.socket, count: int) -> bytes:
    data = b""
    for _ in range(count + 1):
        if len(data) >= count:
            break
        chunk = sock.recv(count - len(data))
        if not chunk:
            break
        data += chunk
    return data


def read_until_close(sock: socket.socket, limit: int = 1 << 16) -> bytes:
    data = b""
    for _ in range(limit):
        chunk = sock.recv(4096)
        if not chunk:
            return data
        data += chunk
        if len(data) > limit:
            break
    return data


def request(command: int, atyp: int, address: bytes, port: int) -> bytes:
    return bytes((5, command, 0, atyp)) + address + struct.pack("!H", port)


def domain(name: str) -> bytes:
    raw = name.encode()
    return bytes((len(raw),)) + raw


def test_all_three_address_types_and_the_bound_address(env: Env) -> None:
    proxy = env.start(allow=["tls.test", "127.0.0.2", "::1"])
    cases = [
        (3, domain("tls.test"), "tls.test"),
        (1, socket.inet_aton("127.0.0.2"), "127.0.0.2"),
    ]
    for atyp, address, host in cases:
        with socks_socket(proxy) as sock:
            sock.sendall(b"\x05\x01\x00")
            assert recv_exactly(sock, 2) == b"\x05\x00"
            sock.sendall(request(1, atyp, address, env.origin.port))
            head = recv_exactly(sock, 4)
            assert head[:3] == b"\x05\x00\x00", head
            assert head[3] == 1  # the proxy's IPv4 end of the upstream connection
            bound = recv_exactly(sock, 6)
            assert socket.inet_ntoa(bound[:4]).startswith("127.")
        wait_record(proxy, kind="socks", host=host, decision="allow")
    # IPv6 literal: ::1 is refused as an IP literal unless listed (it is) and as loopback
    # unless allowed (127.0.0.0/8 does not cover it): private-address, reply 2.
    with socks_socket(proxy) as sock:
        sock.sendall(b"\x05\x01\x00" + request(1, 4, socket.inet_pton(socket.AF_INET6, "::1"), 443))
        assert recv_exactly(sock, 2) == b"\x05\x00"
        assert recv_exactly(sock, 3) == b"\x05\x02\x00"
    record = wait_record(proxy, kind="socks", host="::1")
    assert record["reason"] in ("private-address", "port-not-allowed"), record


def test_ip_literal_needs_an_ip_entry(env: Env) -> None:
    proxy = env.start(allow=["tls.test"])
    with socks_socket(proxy) as sock:
        sock.sendall(b"\x05\x01\x00")
        assert recv_exactly(sock, 2) == b"\x05\x00"
        sock.sendall(request(1, 1, socket.inet_aton("127.0.0.2"), env.origin.port))
        assert recv_exactly(sock, 10) == b"\x05\x02\x00\x01" + bytes(6)
        assert read_until_close(sock) == b""
    record = wait_record(proxy, kind="socks", host="127.0.0.2")
    assert record["reason"] == "ip-literal-not-allowed"


@pytest.mark.parametrize(("command", "name"), [(2, "BIND"), (3, "UDP_ASSOCIATE"), (9, "9")])
def test_bind_and_udp_associate_get_reply_7(env: Env, command: int, name: str) -> None:
    proxy = env.start()
    with socks_socket(proxy) as sock:
        sock.sendall(b"\x05\x01\x00" + request(command, 3, domain("tls.test"), 443))
        assert recv_exactly(sock, 2) == b"\x05\x00"
        assert recv_exactly(sock, 10) == b"\x05\x07\x00\x01" + bytes(6)
        assert read_until_close(sock) == b""
    record = wait_record(proxy, kind="socks", reason="socks-command-unsupported")
    assert name in record["detail"]
    assert record["status"] == 501


def test_unknown_address_type_gets_reply_8(env: Env) -> None:
    proxy = env.start()
    with socks_socket(proxy) as sock:
        sock.sendall(b"\x05\x01\x00" + b"\x05\x01\x00\x07" + bytes(6))
        assert recv_exactly(sock, 2) == b"\x05\x00"
        assert recv_exactly(sock, 10) == b"\x05\x08\x00\x01" + bytes(6)
    wait_record(proxy, kind="socks", reason="socks-address-type-unsupported")


def test_refused_connection_gets_reply_5_and_nxdomain_reply_4(env: Env) -> None:
    closed = free_port("127.0.0.2")
    env.dns.records["gone.test"] = ["127.0.0.2"]
    proxy = start_proxy(
        env.proxy_factory,
        ports=[closed, env.origin.port],
        allow=["gone.test", "nowhere.test"],
        socks_listen="127.0.0.1:0",
    )
    with socks_socket(proxy) as sock:
        sock.sendall(b"\x05\x01\x00" + request(1, 3, domain("gone.test"), closed))
        assert recv_exactly(sock, 2) == b"\x05\x00"
        assert recv_exactly(sock, 3) == b"\x05\x05\x00"
    record = wait_record(proxy, kind="socks", host="gone.test")
    assert record["reason"] == "upstream-refused"
    with socks_socket(proxy) as sock:
        sock.sendall(b"\x05\x01\x00" + request(1, 3, domain("nowhere.test"), closed))
        assert recv_exactly(sock, 2) == b"\x05\x00"
        assert recv_exactly(sock, 3) == b"\x05\x04\x00"
    record = wait_record(proxy, kind="socks", host="nowhere.test")
    assert record["reason"] in ("dns-nxdomain", "dns-no-address"), record


def test_socks4_is_refused_in_its_own_protocol_and_counted(env: Env) -> None:
    proxy = env.start(admin_listen="127.0.0.1:0")
    # SOCKS4a CONNECT tls.test:443 (user "u")
    with socks_socket(proxy) as sock:
        sock.sendall(b"\x04\x01\x01\xbb\x00\x00\x00\x01u\x00tls.test\x00")
        assert recv_exactly(sock, 8) == b"\x00\x5b" + bytes(6)
        assert read_until_close(sock) == b""
    record = wait_record(proxy, kind="socks", reason="socks-version-unsupported")
    assert record["decision"] == "deny"
    metrics = requests.get(proxy.admin_url + "/metrics", timeout=10).text
    assert (
        'egressgate_requests_total{decision="deny",kind="socks",policy="-",'
        'reason="socks-version-unsupported"} 1.0'
    ) in metrics, [line for line in metrics.splitlines() if "socks" in line]


def test_garbage_and_slow_greetings_close_within_the_header_timeout(env: Env) -> None:
    proxy = env.start(limits={"header_timeout_s": 1})
    with socks_socket(proxy) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\n\r\n")
        assert read_until_close(sock) == b""
    wait_record(proxy, kind="socks", reason="bad-request")
    # a greeting that never completes: closed within header_timeout_s (+ the sweeper's 0.5 s)
    with socks_socket(proxy) as sock:
        sock.sendall(b"\x05\x03\x00")
        started = time.monotonic()
        assert read_until_close(sock) == b""
        assert time.monotonic() - started < 3.0
    record = wait_record(proxy, kind="socks", reason="header-timeout")
    assert record["status"] == 408
    # the proxy still serves everyone else
    assert socks_curl(env, proxy, env.url()).exit_code == 0


def test_pipelined_greeting_request_and_tunnel_bytes_are_relayed_exactly(env: Env) -> None:
    """An optimistic client sends greeting, request and its first tunnel bytes at once."""
    proxy = env.start(allow=["tls.test"])
    context = env.ca.client_context()
    with socks_socket(proxy) as sock:
        sock.sendall(b"\x05\x01\x00" + request(1, 3, domain("tls.test"), env.origin.port))
        assert recv_exactly(sock, 2) == b"\x05\x00"
        assert recv_exactly(sock, 10)[:2] == b"\x05\x00"
        with context.wrap_socket(sock, server_hostname="tls.test") as tls:
            body = b"x" * 300_000
            tls.sendall(
                b"POST /upload HTTP/1.1\r\nHost: tls.test\r\nConnection: close\r\n"
                + f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            response = b""
            for _ in range(10_000):
                chunk = tls.recv(65536)
                if not chunk:
                    break
                response += chunk
    assert response.startswith(b"HTTP/1.1 200"), response[:200]
    records = env.origin.request_records("/upload")
    assert records
    assert records[-1].body_length == len(body)
    assert records[-1].body_sha256 == hashlib.sha256(body).hexdigest()


def test_sni_check_refuses_domain_fronting_with_an_alert(env: Env) -> None:
    proxy = env.start(allow=["tls.test", "other.test"])
    context = env.ca.client_context()
    context.check_hostname = False
    with socks_socket(proxy) as sock:
        sock.sendall(b"\x05\x01\x00" + request(1, 3, domain("tls.test"), env.origin.port))
        assert recv_exactly(sock, 2) == b"\x05\x00"
        assert recv_exactly(sock, 10)[:2] == b"\x05\x00"
        with pytest.raises((ssl.SSLError, ConnectionError)) as failure:
            context.wrap_socket(sock, server_hostname="evil.test").close()
    assert "access denied" in str(failure.value).lower(), failure.value
    record = wait_record(proxy, kind="socks", host="tls.test", reason="sni-not-allowed")
    assert record["status"] == 403
    assert record["sni"] == "evil.test"


def test_a_client_leaving_mid_handshake_is_logged_and_a_silent_one_is_not(env: Env) -> None:
    proxy = env.start()
    with socks_socket(proxy):
        pass  # connects and leaves without a byte: no record (as on the HTTP listener)
    with socks_socket(proxy) as sock:
        sock.sendall(b"\x05\x01\x00")
        assert recv_exactly(sock, 2) == b"\x05\x00"
        sock.sendall(b"\x05\x01\x00\x03\x08tls.")  # half a request, then gone
    record = wait_record(proxy, kind="socks", reason="bad-request")
    assert record["status"] == 499
    assert "closed before" in record["detail"]
    assert socks_curl(env, proxy, env.url()).exit_code == 0
    records = proxy.wait_for_records(2, predicate=lambda r: r["kind"] == "socks")
    assert len(records) == 2  # the silent connection left no line


def test_a_tls_hello_that_cannot_be_read_is_refused_fail_closed(env: Env) -> None:
    """Half a ClientHello, then EOF: not relayed unchecked, whatever tunnels_without_sni says."""
    proxy = env.start(allow=["tls.test"])
    with socks_socket(proxy) as sock:
        sock.sendall(b"\x05\x01\x00" + request(1, 3, domain("tls.test"), env.origin.port))
        assert recv_exactly(sock, 2) == b"\x05\x00"
        assert recv_exactly(sock, 10)[:2] == b"\x05\x00"
        sock.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(20))
        sock.shutdown(socket.SHUT_WR)
        read_until_close(sock)
    record = wait_record(proxy, kind="socks", host="tls.test")
    assert record["reason"] == "sni-unreadable", record
    assert record["status"] == 403
    assert env.origin.request_records() == []


def login(user: bytes, password: bytes) -> bytes:
    return bytes((1, len(user))) + user + bytes((len(password),)) + password


def test_a_pipelined_login_held_by_the_back_off_goes_on_with_its_request(env: Env) -> None:
    """After a failed login the address is backed off: the next login (sent together with
    its request, as optimistic clients do) waits for its slot, then both are answered."""
    proxy = env.start(auth={"users_env": "EG_SOCKS_USERS"}, env={"EG_SOCKS_USERS": "alice:s3cret"})
    with socks_socket(proxy) as sock:
        sock.sendall(b"\x05\x01\x02" + login(b"alice", b"wrong"))
        assert recv_exactly(sock, 4) == b"\x05\x02\x01\x01"
    with socks_socket(proxy) as sock:
        sock.sendall(
            b"\x05\x01\x02"
            + login(b"alice", b"s3cret")
            + request(1, 3, domain("tls.test"), env.origin.port)
        )
        assert recv_exactly(sock, 4) == b"\x05\x02\x01\x00"
        assert recv_exactly(sock, 10)[:2] == b"\x05\x00"
    record = wait_record(proxy, kind="socks", user="alice")
    assert record["decision"] == "allow"


def test_sigterm_closes_an_open_socks_tunnel_at_the_drain_deadline_and_logs_it(env: Env) -> None:
    proxy = env.start(allow=["tls.test"], limits={"drain_timeout_s": 1.5})
    with socks_socket(proxy) as sock:
        sock.sendall(b"\x05\x01\x00" + request(1, 3, domain("tls.test"), env.origin.port))
        assert recv_exactly(sock, 2) == b"\x05\x00"
        assert recv_exactly(sock, 10)[:2] == b"\x05\x00"
        with env.ca.client_context().wrap_socket(sock, server_hostname="tls.test") as tls:
            tls.sendall(b"GET /bytes/10 HTTP/1.1\r\nHost: tls.test\r\n\r\n")  # kept alive
            assert tls.recv(65536).startswith(b"HTTP/1.1 200")
            started = time.monotonic()
            assert proxy.terminate(timeout=15) == 0
            assert time.monotonic() - started < 8
    record = wait_record(proxy, kind="socks", host="tls.test")
    assert record["decision"] == "allow"
    assert record["detail"] == "tunnel ended: closed"
