"""The TLS proxy listener (issue 6): clients speak TLS to the proxy, then HTTP or CONNECT inside.

Certificates come from the session's test CA. Clients: curl (`--proxy https://...`,
`--proxy-cacert`, `--proxy-cert`), httpx with an HTTPS proxy, and Python's ssl by hand. With
`client_ca_file`, a client certificate's CN and SANs are the client's `tls_name` identity, which
`clients` rules use to pick a policy; `require_client_cert` refuses clients without one.
"""

from __future__ import annotations

import socket
import ssl
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.helpers_ops import (
    EchoTunnel,
    loopback_policy,
    payload,
    proxy_text_output,
)
from tests.support.clients import StreamedResponse, curl, read_response
from tests.support.dns import DnsServer
from tests.support.origin import (
    Origin,
    OriginFactory,
    RawOrigin,
    RawOriginFactory,
    sha256_hex,
)
from tests.support.proxy import ProxyFactory, ProxyProcess
from tests.support.tlsca import HarnessCA, IssuedCert

ALICE_PASSWORD = "tls-listener-pw-5521"


@dataclass
class Sites:
    web: Origin
    tls_web: Origin
    echo: RawOrigin

    def policy(self, allow: list[str]) -> dict[str, Any]:
        return loopback_policy(
            allow,
            http_ports=[self.web.port],
            connect_ports=[self.echo.port, self.tls_web.port],
        )


@pytest.fixture
def sites(
    dns_server: DnsServer,
    origin_factory: OriginFactory,
    raw_origin_factory: RawOriginFactory,
    test_ca: HarnessCA,
) -> Sites:
    for name in ("a.test", "b.test"):
        dns_server.records[name] = ["127.0.0.1"]
    return Sites(
        origin_factory("web"),
        origin_factory("tls-web", tls=test_ca, cert_names=["a.test", "b.test"]),
        raw_origin_factory("echo", mode="echo"),
    )


def tls_listen(test_ca: HarnessCA, **extra: Any) -> dict[str, Any]:
    """A tls_listen section on 127.0.0.1:0 with a certificate for 127.0.0.1 from the test CA."""
    cert = test_ca.server_cert("127.0.0.1", "proxy.test")
    return {
        "listen": "127.0.0.1:0",
        "cert_file": str(cert.chain_path),
        "key_file": str(cert.key_path),
        **extra,
    }


def tls_proxy_url(proxy: ProxyProcess) -> str:
    address = proxy.tls_proxy_address
    assert address is not None, "the proxy reports no tls_proxy listener"
    return f"https://{address[0]}:{address[1]}"


def curl_tls_proxy(
    proxy: ProxyProcess,
    url: str,
    ca: HarnessCA,
    *args: str,
    client: IssuedCert | None = None,
    proxy_ca: Path | None = None,
) -> Any:
    """curl through the TLS listener, verifying its certificate against `proxy_ca` (or `ca`)."""
    argv = ["--proxy-cacert", str(proxy_ca or ca.ca_pem_path)]
    if client is not None:
        argv += ["--proxy-cert", str(client.cert_path), "--proxy-key", str(client.key_path)]
    return curl([*argv, *args, url], proxy=tls_proxy_url(proxy), cacert=ca.ca_pem_path, timeout=15)


def tls_socket(
    proxy: ProxyProcess, ca: HarnessCA, client: IssuedCert | None = None
) -> ssl.SSLSocket:
    """A TLS connection to the proxy's TLS listener (name check: 127.0.0.1)."""
    address = proxy.tls_proxy_address
    assert address is not None
    context = ca.client_context(client)
    raw = socket.create_connection(address, timeout=10)
    try:
        return context.wrap_socket(raw, server_hostname="127.0.0.1")
    except BaseException:
        raw.close()
        raise


def get_over_tls(
    proxy: ProxyProcess,
    ca: HarnessCA,
    url: str,
    client: IssuedCert | None = None,
    headers: tuple[tuple[str, str], ...] = (),
) -> StreamedResponse:
    """One absolute-form GET sent inside a TLS connection to the proxy."""
    authority = url.split("://", 1)[1].split("/", 1)[0]
    with tls_socket(proxy, ca, client) as sock:
        lines = [f"GET {url} HTTP/1.1", f"Host: {authority}", "Connection: close"]
        lines += [f"{k}: {v}" for k, v in headers]
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        return read_response(sock)


# ---------------------------------------------------------------------------------------------
# Plain TLS listener
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def tls_proxy(sites: Sites, proxy_factory: ProxyFactory, test_ca: HarnessCA) -> ProxyProcess:
    return proxy_factory(sites.policy(["a.test"]), tls_listen=tls_listen(test_ca))


def test_curl_through_the_tls_listener_reaches_http_and_https_destinations(
    sites: Sites, tls_proxy: ProxyProcess, test_ca: HarnessCA
) -> None:
    plain = curl_tls_proxy(tls_proxy, sites.web.url("/", "a.test"), test_ca)
    assert (plain.exit_code, plain.status, plain.text) == (0, 200, "hello from web"), plain.stderr
    https = curl_tls_proxy(tls_proxy, sites.tls_web.url("/", "a.test"), test_ca)
    assert (https.exit_code, https.connect_status, https.status) == (0, 200, 200), https.stderr
    assert https.text == "hello from tls-web"
    refused = curl_tls_proxy(tls_proxy, sites.web.url("/", "b.test"), test_ca)
    assert refused.status == 403
    assert refused.header("x-egressgate-reason") == "host-not-allowed"

    records = tls_proxy.wait_for_records(3)
    assert [(r["kind"], r["host"], r["decision"]) for r in records] == [
        ("http", "a.test", "allow"),
        ("tunnel", "a.test", "allow"),
        ("http", "b.test", "deny"),
    ]
    assert records[1]["sni"] == "a.test"


def test_clients_refuse_a_tls_listener_whose_certificate_they_do_not_trust(
    sites: Sites, tls_proxy: ProxyProcess, test_ca: HarnessCA, tmp_path: Path
) -> None:
    stranger = HarnessCA(tmp_path / "other-ca", name="another CA")
    result = curl_tls_proxy(
        tls_proxy, sites.web.url("/", "a.test"), test_ca, proxy_ca=stranger.ca_pem_path
    )
    assert result.exit_code == 60, result.stderr  # CURLE_PEER_FAILED_VERIFICATION
    assert result.status == 0
    assert sites.web.request_records() == []


def test_python_ssl_client_sends_connect_inside_tls_and_relays_byte_exact(
    sites: Sites, tls_proxy: ProxyProcess, test_ca: HarnessCA
) -> None:
    data = payload(256 * 1024, seed=21)
    with tls_socket(tls_proxy, test_ca) as sock:
        assert sock.version() in ("TLSv1.2", "TLSv1.3")
        tunnel = EchoTunnel(
            tls_proxy.proxy_address, sites.echo.authority("a.test"), sock=sock, timeout=15
        )
        assert tunnel.status == 200
        assert tunnel.roundtrip(data) == data
        assert tunnel.roundtrip(b"x") == b"x"
    (connection,) = sites.echo.wait_for_closed(1)
    assert connection.bytes_received == len(data) + 1
    assert connection.sha256 == sha256_hex(data + b"x")

    with tls_socket(tls_proxy, test_ca) as sock:
        refused = EchoTunnel(tls_proxy.proxy_address, sites.echo.authority("b.test"), sock=sock)
        assert refused.status == 403

    (record, _) = tls_proxy.wait_for_records(2)
    assert (record["kind"], record["bytes_up"], record["bytes_down"]) == (
        "tunnel",
        len(data) + 1,
        len(data) + 1,
    )


def test_httpx_with_an_https_proxy_url(
    sites: Sites, tls_proxy: ProxyProcess, test_ca: HarnessCA
) -> None:
    proxy = httpx.Proxy(tls_proxy_url(tls_proxy), ssl_context=test_ca.client_context())
    with httpx.Client(
        proxy=proxy, verify=test_ca.client_context(), trust_env=False, timeout=10
    ) as client:
        plain = client.get(sites.web.url("/bytes/70000", "a.test"))
        assert (plain.status_code, len(plain.content)) == (200, 70000)
        https = client.get(sites.tls_web.url("/", "a.test"))
        assert (https.status_code, https.text) == (200, "hello from tls-web")


# ---------------------------------------------------------------------------------------------
# Credentials over the TLS listener
# ---------------------------------------------------------------------------------------------


def test_basic_credentials_over_the_tls_listener(
    sites: Sites, proxy_factory: ProxyFactory, test_ca: HarnessCA, tmp_path: Path
) -> None:
    users = tmp_path / "users.txt"
    users.write_text(f"alice:{ALICE_PASSWORD}\n", encoding="utf-8")
    proxy = proxy_factory(
        tls_listen=tls_listen(test_ca),
        auth={"users_file": str(users)},
        policies={"alice-p": sites.policy(["a.test"])},
        clients=[{"user": "alice", "policy": "alice-p"}],
    )
    anonymous = curl_tls_proxy(proxy, sites.web.url("/", "a.test"), test_ca)
    assert anonymous.status == 407
    assert anonymous.header("proxy-authenticate") == 'Basic realm="egressgate"'
    wrong = curl_tls_proxy(proxy, sites.web.url("/", "a.test"), test_ca, "-U", "alice:nope")
    assert wrong.status == 407
    ok = curl_tls_proxy(
        proxy, sites.web.url("/", "a.test"), test_ca, "-U", f"alice:{ALICE_PASSWORD}"
    )
    assert (ok.exit_code, ok.status) == (0, 200), ok.stderr
    https = curl_tls_proxy(
        proxy, sites.tls_web.url("/", "a.test"), test_ca, "-U", f"alice:{ALICE_PASSWORD}"
    )
    assert (https.exit_code, https.connect_status, https.status) == (0, 200, 200), https.stderr

    records = proxy.wait_for_records(4)
    assert [(r["user"], r["policy"], r["status"]) for r in records] == [
        (None, None, 407),
        (None, None, 407),
        ("alice", "alice-p", 200),
        ("alice", "alice-p", 200),
    ]
    for record in sites.web.request_records():
        assert record.header("proxy-authorization") is None
    assert ALICE_PASSWORD not in proxy_text_output(proxy)


# ---------------------------------------------------------------------------------------------
# mTLS: client certificates as identity
# ---------------------------------------------------------------------------------------------


@dataclass
class ClientCerts:
    by_cn: IssuedCert  # CN matches a rule, SAN does not
    by_san: IssuedCert  # a SAN matches a rule, CN does not
    nobody: IssuedCert  # from the trusted CA, matching no rule
    foreign: IssuedCert  # from a CA the proxy does not trust


@pytest.fixture
def client_certs(test_ca: HarnessCA, tmp_path: Path) -> ClientCerts:
    stranger = HarnessCA(tmp_path / "foreign-ca", name="foreign CA")
    return ClientCerts(
        by_cn=test_ca.client_cert("CN-Client", "unrelated.test"),
        by_san=test_ca.client_cert("someone", "san.client.test", "ops@client.test"),
        nobody=test_ca.client_cert("nobody", "nobody.test"),
        foreign=stranger.client_cert("CN-Client", "san.client.test"),
    )


def mtls_proxy(
    proxy_factory: ProxyFactory, sites: Sites, test_ca: HarnessCA, *, require: bool
) -> ProxyProcess:
    listen = tls_listen(
        test_ca, client_ca_file=str(test_ca.ca_pem_path), require_client_cert=require
    )
    return proxy_factory(
        tls_listen=listen,
        policies={"by-cn": sites.policy(["a.test"]), "by-san": sites.policy(["b.test"])},
        clients=[
            {"tls_name": "cn-client", "policy": "by-cn"},
            {"tls_name": ["san.client.test"], "policy": "by-san"},
        ],
    )


def test_client_certificate_names_select_the_policy(
    sites: Sites,
    proxy_factory: ProxyFactory,
    test_ca: HarnessCA,
    client_certs: ClientCerts,
) -> None:
    proxy = mtls_proxy(proxy_factory, sites, test_ca, require=False)
    web = sites.web
    # curl presenting a certificate whose CN is named by a rule.
    ok = curl_tls_proxy(proxy, web.url("/", "a.test"), test_ca, client=client_certs.by_cn)
    assert (ok.exit_code, ok.status) == (0, 200), ok.stderr
    other = curl_tls_proxy(proxy, web.url("/", "b.test"), test_ca, client=client_certs.by_cn)
    assert (other.status, other.header("x-egressgate-policy")) == (403, "by-cn")
    # Python ssl presenting a certificate with a SAN named by a rule.
    by_san = get_over_tls(proxy, test_ca, web.url("/", "b.test"), client_certs.by_san)
    assert by_san.status == 200
    by_san_other = get_over_tls(proxy, test_ca, web.url("/", "a.test"), client_certs.by_san)
    assert (by_san_other.status, by_san_other.header("x-egressgate-policy")) == (403, "by-san")
    # A tunnel inside TLS follows the certificate's policy too.
    data = payload(10_000, seed=31)
    with tls_socket(proxy, test_ca, client_certs.by_cn) as sock:
        tunnel = EchoTunnel(proxy.proxy_address, sites.echo.authority("a.test"), sock=sock)
        assert tunnel.status == 200
        assert tunnel.roundtrip(data) == data
    # Matching no rule, or no certificate at all: the default policy (nothing allowed).
    for client in (client_certs.nobody, None):
        refused = get_over_tls(proxy, test_ca, web.url("/", "a.test"), client)
        assert (refused.status, refused.header("x-egressgate-policy")) == (403, "default")

    records = proxy.wait_for_records(7)
    assert [(r["policy"], r["host"], r["decision"]) for r in records] == [
        ("by-cn", "a.test", "allow"),
        ("by-cn", "b.test", "deny"),
        ("by-san", "b.test", "allow"),
        ("by-san", "a.test", "deny"),
        ("by-cn", "a.test", "allow"),
        ("default", "a.test", "deny"),
        ("default", "a.test", "deny"),
    ]


def _tls_request_fails(
    proxy: ProxyProcess, ca: HarnessCA, url: str, client: IssuedCert | None
) -> str:
    """How a request over the TLS listener failed (handshake or first read), or "answered"."""
    try:
        response = get_over_tls(proxy, ca, url, client)
    except ssl.SSLError as exc:
        return f"ssl: {exc.reason}"
    except (ConnectionError, OSError, AssertionError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return f"answered {response.status}"


def test_require_client_cert_refuses_clients_without_a_trusted_certificate(
    sites: Sites,
    proxy_factory: ProxyFactory,
    test_ca: HarnessCA,
    client_certs: ClientCerts,
) -> None:
    proxy = mtls_proxy(proxy_factory, sites, test_ca, require=True)
    url = sites.web.url("/", "a.test")
    for client in (None, client_certs.foreign):
        outcome = _tls_request_fails(proxy, test_ca, url, client)
        assert not outcome.startswith("answered"), outcome
    no_cert = curl_tls_proxy(proxy, url, test_ca)
    assert no_cert.exit_code != 0
    assert no_cert.status == 0
    assert sites.web.request_records() == []

    ok = curl_tls_proxy(proxy, url, test_ca, client=client_certs.by_cn)
    assert (ok.exit_code, ok.status) == (0, 200), ok.stderr
    assert get_over_tls(proxy, test_ca, url, client_certs.nobody).status == 403
    records = proxy.wait_for_records(5)
    requests = [r for r in records if r["kind"] != "tls"]
    assert [(r["policy"], r["status"]) for r in requests] == [("by-cn", 200), ("default", 403)]
    # The three refused handshakes are logged too (issue 19: they used to leave no trace).
    failed = [r for r in records if r["kind"] == "tls"]
    assert len(failed) == 3, failed
    assert {r["reason"] for r in failed} == {"tls-handshake-failed"}


# ---------------------------------------------------------------------------------------------
# Connections that never finish a handshake (issue 19): counted, bounded, logged, measured
# ---------------------------------------------------------------------------------------------


def _metric(proxy: ProxyProcess, name: str) -> str:
    with urllib.request.urlopen(proxy.admin_url + "/metrics", timeout=5) as response:
        text: str = response.read().decode()
    return "\n".join(line for line in text.splitlines() if line.startswith(name))


def _closed_within(sock: socket.socket, seconds: float) -> bool:
    """True if the proxy closes `sock` (EOF or reset) within `seconds`, reading what comes."""
    sock.settimeout(seconds)
    try:
        while sock.recv(4096):
            pass
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    return True


def test_plaintext_and_stalled_handshakes_on_the_tls_port_are_logged_and_counted(
    sites: Sites, proxy_factory: ProxyFactory, test_ca: HarnessCA
) -> None:
    proxy = proxy_factory(
        sites.policy(["a.test"]),
        tls_listen=tls_listen(test_ca),
        limits={"header_timeout_s": 1},
    )
    address = proxy.tls_proxy_address
    assert address is not None
    with socket.create_connection(address, timeout=5) as plain:
        plain.sendall(
            f"GET {sites.web.url('/', 'a.test')} HTTP/1.1\r\nHost: a.test\r\n\r\n".encode()
        )
        assert _closed_within(plain, 5)
    with socket.create_connection(address, timeout=5) as silent:
        assert _closed_within(silent, 5)  # the handshake bound (header_timeout_s) closes it
    records = proxy.wait_for_records(2)
    assert {r["kind"] for r in records} == {"tls"}
    assert {r["reason"] for r in records} == {"tls-handshake-failed"}
    causes = sorted(str(r["detail"]).split(":", 1)[0] for r in records)
    assert causes == ["not-tls", "timeout"], records
    metrics = _metric(proxy, "egressgate_tls_handshake_failures_total")
    assert 'cause="not-tls"} 1.0' in metrics
    assert 'cause="timeout"} 1.0' in metrics
    assert sites.web.request_records() == []


def test_connections_before_their_handshake_count_against_max_connections(
    sites: Sites, proxy_factory: ProxyFactory, test_ca: HarnessCA
) -> None:
    proxy = proxy_factory(
        sites.policy(["a.test"]),
        tls_listen=tls_listen(test_ca),
        limits={"max_connections": 2, "header_timeout_s": 30},
    )
    address = proxy.tls_proxy_address
    assert address is not None
    held = [socket.create_connection(address, timeout=5) for _ in range(2)]
    try:
        time.sleep(0.3)  # both accepted: they now hold the two slots without a handshake
        with socket.create_connection(address, timeout=5) as third:
            assert _closed_within(third, 3), "a third TLS connection was accepted past the cap"
        with socket.create_connection(proxy.proxy_address, timeout=5) as plain:
            plain.sendall(b"GET http://a.test/ HTTP/1.1\r\nHost: a.test\r\n\r\n")
            answer = read_response(plain)
        assert answer.status == 503
        assert answer.header("X-Egressgate-Reason") == "too-many-connections"
    finally:
        for sock in held:
            sock.close()
    # Slots freed: a real TLS client gets through again.
    deadline = time.monotonic() + 5
    while True:
        result = curl_tls_proxy(proxy, sites.web.url("/", "a.test"), test_ca)
        if result.status == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert result.status == 200, result.stderr


def test_a_reload_revokes_a_tls_listener_tunnel_still_waiting_for_its_client_hello(
    sites: Sites, proxy_factory: ProxyFactory, test_ca: HarnessCA
) -> None:
    # Past its 200 but before the client's ClientHello the tunnel has no pump yet: force_close
    # had nothing to close, so a revocation (or a drain) waited for the hello wait (5 s).
    listen = tls_listen(test_ca)
    proxy = proxy_factory(sites.policy(["a.test", "b.test"]), tls_listen=listen)
    with tls_socket(proxy, test_ca) as sock:
        target = f"a.test:{sites.tls_web.port}"
        sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head and len(head) < 4096:
            chunk = sock.recv(4096)
            assert chunk, head
            head += chunk
        assert head.startswith(b"HTTP/1.1 200"), head
        started = time.monotonic()
        proxy.reload(
            {**proxy.config, **sites.policy(["b.test"]), "tls_listen": listen},
            wait_for="reloaded",
        )
        sock.settimeout(3.0)
        assert sock.recv(100) == b""  # closed by the revocation, not by the hello wait
        assert time.monotonic() - started < 3.0
    record = proxy.wait_for_records(1, predicate=lambda r: r["method"] == "CONNECT")[0]
    assert "revoked by reload generation 2" in (record["detail"] or "")
