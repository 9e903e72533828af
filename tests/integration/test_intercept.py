"""TLS interception (issue 16) with real clients: curl, requests, httpx and Python's ssl by hand.

One proxy and one set of TLS origins for the whole module (module-scoped): the proxy intercepts
`api.test` (rules on method and path, an injected Authorization header) and `other.test`
(another secret), tunnels `tunnel.test` untouched, and must refuse `bad.test`, whose origin
presents a certificate from a CA the proxy does not trust. The clients trust the interception
CA (`icpt_ca`); the origins' certificates come from the session's test CA (`test_ca`), which
the proxy trusts as `upstream_ca_file`.
"""

from __future__ import annotations

import json
import os
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests

from tests.support.clients import curl, read_response
from tests.support.dns import DnsServer
from tests.support.origin import Origin
from tests.support.proxy import ProxyProcess, base_proxy_config
from tests.support.tlsca import HarnessCA

TOKEN = "tok-api-7f3a9c1e55d04b2b"  # injected for api.test
OTHER_TOKEN = "tok-other-0c4e8a2d91f7"  # injected for other.test
ENV = {"EG_ICPT_TOKEN": TOKEN, "EG_ICPT_OTHER": OTHER_TOKEN}


ROOT = os.geteuid() == 0
_PID = os.getpid()
# Transparent interception needs an origin on port 443 (no redirect: the standard port is
# assumed), on a loopback address unique to this test process (test_transparent.py uses
# 127.100-199.x.x).
_NET = f"127.{200 + _PID % 50}.{(_PID // 50) % 250 + 1}"


@dataclass
class Rig:
    proxy: ProxyProcess
    api: Origin
    other: Origin
    tunnel: Origin
    bad: Origin
    plain: Origin
    tapi: Origin | None  # on port 443 for the transparent listener (root only)
    tplain: Origin | None  # on port 80 for the transparent listener (root only)
    icpt_ca: HarnessCA
    origin_ca: HarnessCA

    @property
    def proxy_url(self) -> str:
        return self.proxy.proxy_url

    def url(self, origin: Origin, name: str, path: str) -> str:
        return f"https://{name}:{origin.port}{path}"


def _write_ca_files(ca: HarnessCA) -> tuple[Path, Path]:
    key = ca.directory / "icpt-ca.key"
    ca.ca.private_key_pem.write_to_path(str(key))
    key.chmod(0o600)
    return ca.ca_pem_path, key


@pytest.fixture(scope="module")
def rig(test_ca: HarnessCA, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    workdir = tmp_path_factory.mktemp("intercept")
    icpt_ca = HarnessCA(workdir / "icpt-ca", name="egressgate interception CA")
    rogue_ca = HarnessCA(workdir / "rogue-ca", name="rogue CA")
    cert_file, key_file = _write_ca_files(icpt_ca)
    origins: list[Origin] = []
    with DnsServer() as dns:
        try:
            api = Origin("api", tls=test_ca, cert_names=("api.test",))
            other = Origin("other", tls=test_ca, cert_names=("other.test",))
            tunnel = Origin("tunnel", tls=test_ca, cert_names=("tunnel.test",))
            bad = Origin("bad", tls=rogue_ca, cert_names=("bad.test",))
            plain = Origin("plain")
            origins += [api, other, tunnel, bad, plain]
            for name in ("api.test", "other.test", "tunnel.test", "bad.test", "plain.test"):
                dns.set(name, ["127.0.0.1"])
            tapi = tplain = None
            if ROOT:
                tplain = Origin("tplain", host=f"{_NET}.2", port=80)
                origins.append(tplain)
                dns.set("tplain.test", [tplain.host])
                tapi = Origin(
                    "tapi", host=f"{_NET}.2", port=443, tls=test_ca, cert_names=("tapi.test",)
                )
                origins.append(tapi)
                dns.set("tapi.test", [tapi.host])
            listener_cert = test_ca.server_cert("127.0.0.1")
            config: dict[str, Any] = base_proxy_config(dns.address, workdir)
            config.update(
                {
                    "allow": [
                        "api.test",
                        "other.test",
                        "tunnel.test",
                        "bad.test",
                        "plain.test",
                        "tapi.test",
                        "tplain.test",
                    ],
                    "allow_private": ["127.0.0.0/8"],
                    "connect_ports": [str(o.port) for o in (api, other, tunnel, bad)] + ["443"],
                    "transparent_listen": "127.0.0.1:0",
                    "socks_listen": "127.0.0.1:0",
                    "tls_listen": {
                        "listen": "127.0.0.1:0",
                        "cert_file": str(listener_cert.chain_path),
                        "key_file": str(listener_cert.key_path),
                    },
                    "http_ports": [str(plain.port), "80"],
                    "limits": {"header_timeout_s": 5, "response_timeout_s": 10},
                    "tls_intercept": {
                        "ca_cert_file": str(cert_file),
                        "ca_key_file": str(key_file),
                        "upstream_ca_file": str(test_ca.ca_pem_path),
                    },
                    "intercept": [
                        {
                            "host": "api.test",
                            "rules": [
                                {"methods": ["GET", "HEAD"], "paths": ["/repos/our-org/*"]},
                                {"methods": ["GET"], "paths": ["/echo-headers", "/chunked/*"]},
                                {"methods": ["POST"], "paths": ["/upload"]},
                                {"methods": ["GET"], "paths": ["/ws"], "websocket": True},
                            ],
                            "set_headers": {"Authorization": "Bearer env:EG_ICPT_TOKEN"},
                        },
                        {
                            "host": "other.test",
                            "rules": [{"methods": ["GET"]}],
                            "set_headers": {"X-Key": "env:EG_ICPT_OTHER"},
                        },
                        {"host": "bad.test", "rules": [{}]},
                        {"host": "tapi.test", "rules": [{"paths": ["/echo-headers"]}]},
                    ],
                }
            )
            proxy = ProxyProcess(config, workdir / "proxy", env=ENV)
            proxy.start()
            try:
                yield Rig(proxy, api, other, tunnel, bad, plain, tapi, tplain, icpt_ca, test_ca)
            finally:
                proxy.close()
        finally:
            for origin in origins:
                origin.close()


# ---- a raw client: CONNECT, TLS with the interception CA, exact request bytes
def _tunnel(
    rig: Rig, name: str, port: int, ca: HarnessCA | None = None, via: ProxyProcess | None = None
) -> ssl.SSLSocket:
    raw = socket.create_connection((via or rig.proxy).proxy_address, timeout=10)
    raw.sendall(f"CONNECT {name}:{port} HTTP/1.1\r\nHost: {name}:{port}\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = raw.recv(1)
        assert chunk, head
        head += chunk
    assert head.startswith(b"HTTP/1.1 200"), head
    context = (ca or rig.icpt_ca).client_context()
    return context.wrap_socket(raw, server_hostname=name)


def _exchange(tls: ssl.SSLSocket, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send `request`, read one response to the end (these responses close or have a length)."""
    tls.sendall(request)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = tls.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        key, _, value = line.partition(":")
        headers[key.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "-1"))
    while length < 0 or len(body) < length:
        try:
            chunk = tls.recv(65536)
        except (ssl.SSLError, OSError):
            break
        if not chunk:
            break
        body += chunk
    return int(lines[0].split()[1]), headers, body


def _raw_request(rig: Rig, target: str, host: str = "api.test", method: str = "GET") -> Any:
    with _tunnel(rig, "api.test", rig.api.port) as tls:
        request = f"{method} {target} HTTP/1.1\r\nHost: {host}:{rig.api.port}\r\n\r\n"
        return _exchange(tls, request.encode())


def _records(rig: Rig, **match: Any) -> list[dict[str, Any]]:
    def wanted(record: dict[str, Any]) -> bool:
        return all(record.get(k) == v for k, v in match.items())

    return rig.proxy.wait_for_records(1, predicate=wanted)


# ---- real clients: allowed, denied, methods, the injected header
def test_curl_allowed_path_reaches_the_origin_with_the_injected_header(rig: Rig) -> None:
    result = curl(
        [
            "-H",
            "Authorization: Bearer client-own-value",
            rig.url(rig.api, "api.test", "/echo-headers"),
        ],
        proxy=rig.proxy_url,
        cacert=rig.icpt_ca.ca_pem_path,
    )
    assert result.status == 200, result.stderr
    seen = rig.api.request_records("/echo-headers")[-1]
    assert seen.header_values("Authorization") == [f"Bearer {TOKEN}"]  # replaced, not added
    # The origin echoes the header back: the client never sees the secret.
    assert TOKEN.encode() not in result.body
    assert b"Bearer " + b"*" * len(TOKEN) in result.body
    record = _records(rig, kind="intercept", path="/echo-headers")[-1]
    assert record["method"] == "GET"
    assert record["decision"] == "allow"
    assert record["rule"].startswith("intercept[api.test] rule 2")
    assert "redacted" in (record["detail"] or "")


def test_requests_denied_path_and_method_get_403_with_the_reason(rig: Rig) -> None:
    proxies = {"https": rig.proxy_url}
    verify = str(rig.icpt_ca.ca_pem_path)
    allowed = requests.get(
        rig.url(rig.api, "api.test", "/repos/our-org/tool"), proxies=proxies, verify=verify
    )
    assert allowed.status_code == 404  # the origin's answer: the request went through
    assert rig.api.request_records("/repos/our-org/tool")
    denied = requests.get(
        rig.url(rig.api, "api.test", "/repos/other-org/tool"), proxies=proxies, verify=verify
    )
    assert denied.status_code == 403
    assert denied.headers["X-Egressgate-Reason"] == "rule-not-matched"
    post = requests.post(
        rig.url(rig.api, "api.test", "/repos/our-org/tool"),
        data=b"x",
        proxies=proxies,
        verify=verify,
    )
    assert post.status_code == 403
    assert post.headers["X-Egressgate-Reason"] == "rule-not-matched"
    assert not rig.api.request_records("/repos/other-org/tool")
    assert all(r.method != "POST" for r in rig.api.request_records("/repos/our-org/tool"))
    record = _records(rig, kind="intercept", method="POST", path="/repos/our-org/tool")[-1]
    assert record["status"] == 403
    assert record["reason"] == "rule-not-matched"
    assert record["decision"] == "deny"


def test_httpx_keep_alive_serves_several_requests_on_one_connection(rig: Rig) -> None:
    before = len(rig.api.request_records())
    with httpx.Client(proxy=rig.proxy_url, verify=rig.icpt_ca.client_context()) as client:
        for _ in range(3):
            response = client.get(rig.url(rig.api, "api.test", "/chunked/70000"))
            assert response.status_code == 200
            assert len(response.content) == 70000
        head = client.head(rig.url(rig.api, "api.test", "/repos/our-org/x"))
        assert head.status_code == 404
    seen = rig.api.request_records()[before:]
    assert len(seen) == 4
    assert len({r.connection_id for r in seen}) == 1  # one upstream connection, kept alive


def test_injected_secrets_never_reach_a_log(rig: Rig) -> None:
    requests.get(
        rig.url(rig.api, "api.test", "/echo-headers"),
        proxies={"https": rig.proxy_url},
        verify=str(rig.icpt_ca.ca_pem_path),
    )
    _records(rig, kind="intercept", path="/echo-headers")
    log = rig.proxy.access_log_path.read_text()
    stderr = "\n".join(rig.proxy.stderr_lines)
    for secret in (TOKEN, OTHER_TOKEN):
        assert secret not in log
        assert secret not in stderr


# ---- secrets on the wrong leg
def test_another_hosts_secret_in_a_header_is_a_secret_leak(rig: Rig) -> None:
    with _tunnel(rig, "api.test", rig.api.port) as tls:
        request = (
            f"GET /repos/our-org/x HTTP/1.1\r\nHost: api.test:{rig.api.port}\r\n"
            f"X-Stolen: {OTHER_TOKEN}\r\n\r\n"
        )
        status, headers, _ = _exchange(tls, request.encode())
    assert status == 403
    assert headers["x-egressgate-reason"] == "secret-leak"
    assert not any(r.header("X-Stolen") for r in rig.api.request_records())


def test_a_secret_split_across_body_chunks_is_stopped(rig: Rig) -> None:
    before = len(rig.api.request_records("/upload"))
    with _tunnel(rig, "api.test", rig.api.port) as tls:
        head = (
            f"POST /upload HTTP/1.1\r\nHost: api.test:{rig.api.port}\r\n"
            "Transfer-Encoding: chunked\r\n\r\n"
        )
        first, second = OTHER_TOKEN[:7], OTHER_TOKEN[7:]
        tls.sendall(head.encode() + b"%x\r\n%s\r\n" % (len(first) + 5, b"data " + first.encode()))
        tls.sendall(b"%x\r\n%s\r\n0\r\n\r\n" % (len(second), second.encode()))
        status, headers, _ = _exchange(tls, b"")
    assert status == 403
    assert headers["x-egressgate-reason"] == "secret-leak"
    for record in rig.api.request_records("/upload")[before:]:
        assert not record.body_complete  # the origin never got a complete request


def test_a_secret_on_a_plain_http_request_is_refused(rig: Rig) -> None:
    response = requests.get(
        f"http://plain.test:{rig.plain.port}/?q={TOKEN}", proxies={"http": rig.proxy_url}
    )
    assert response.status_code == 403
    assert response.headers["X-Egressgate-Reason"] == "secret-leak"
    assert not rig.plain.request_records()
    clean = requests.get(f"http://plain.test:{rig.plain.port}/", proxies={"http": rig.proxy_url})
    assert clean.status_code == 200


# ---- the origin leg
def test_an_origin_with_a_bad_certificate_is_refused_inside_the_tunnel(rig: Rig) -> None:
    result = curl(
        [rig.url(rig.bad, "bad.test", "/")], proxy=rig.proxy_url, cacert=rig.icpt_ca.ca_pem_path
    )
    assert result.status == 502
    assert result.header("X-Egressgate-Reason") == "upstream-bad-certificate"
    assert not rig.bad.request_records()
    record = _records(rig, kind="intercept", host="bad.test")[-1]
    assert record["reason"] == "upstream-bad-certificate"
    assert record["status"] == 502
    assert "certificate" in record["detail"]


def test_a_host_not_under_intercept_is_tunnelled_untouched(rig: Rig) -> None:
    with _tunnel(rig, "tunnel.test", rig.tunnel.port, ca=rig.origin_ca) as tls:
        issuer = dict(x[0] for x in tls.getpeercert()["issuer"])  # type: ignore[index]
        status, _, body = _exchange(
            tls, f"GET / HTTP/1.1\r\nHost: tunnel.test:{rig.tunnel.port}\r\n\r\n".encode()
        )
    assert status == 200
    assert body == b"hello from tunnel"
    assert issuer["organizationName"] == "egressgate test CA"  # the origin's own certificate
    seen = rig.tunnel.request_records()[-1]
    assert seen.header("Authorization") is None
    assert seen.header("Via") is None


def test_a_pinned_client_fails_closed_and_the_log_says_why(rig: Rig) -> None:
    before = len(rig.api.request_records())
    with pytest.raises(ssl.SSLCertVerificationError):
        _tunnel(rig, "api.test", rig.api.port, ca=rig.origin_ca)  # trusts only the origin CA
    record = _records(rig, kind="tunnel", host="api.test", reason="tls-handshake-failed")[-1]
    assert "refused the interception certificate" in record["detail"]
    assert len(rig.api.request_records()) == before


# ---- hidden-path tricks: none escapes a rule
@pytest.mark.parametrize(
    ("target", "reason"),
    [
        ("/repos/our-org/../other-org/x", "rule-not-matched"),
        ("/repos/our-org/%2e%2e/other-org/x", "rule-not-matched"),
        ("/repos/our-org/%2E%2E/other-org/x", "rule-not-matched"),
        ("/repos/our-org//../../other-org/x", "path-ambiguous"),
        ("//repos/our-org/x", "path-ambiguous"),
        ("/repos/our-org/x;/../../other-org", "path-ambiguous"),
        ("/repos/our-org%2F..%2F..%2Fother-org", "path-ambiguous"),
        ("/repos/our-org/..%5C..%5Cother-org", "path-ambiguous"),
        ("https://api.test/repos/other-org/x", "path-ambiguous"),
        ("*", "path-ambiguous"),
    ],
)
def test_hidden_path_tricks_are_refused(rig: Rig, target: str, reason: str) -> None:
    status, headers, _ = _raw_request(rig, target)
    assert status == 403, target
    assert headers["x-egressgate-reason"] == reason
    assert not [r for r in rig.api.request_records() if "other-org" in r.target]


def test_uppercase_and_unreserved_escapes_are_judged_decoded(rig: Rig) -> None:
    status, _, _ = _raw_request(rig, "/repos/%6Fur-org/x")  # %6F = "o": our-org
    assert status == 404  # allowed: the origin answered
    assert rig.api.request_records()[-1].target == "/repos/our-org/x"  # what was judged is sent


def test_a_host_header_naming_another_host_is_refused(rig: Rig) -> None:
    status, headers, _ = _raw_request(rig, "/repos/our-org/x", host="other.test")
    assert status == 403
    assert headers["x-egressgate-reason"] == "sni-mismatch"


# ---- WebSocket inside the tunnel
def test_websocket_upgrades_are_judged_by_rules_then_relayed(rig: Rig) -> None:
    upgrade = (
        "GET {} HTTP/1.1\r\nHost: api.test:{}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    with _tunnel(rig, "api.test", rig.api.port) as tls:
        tls.sendall(upgrade.format("/ws", rig.api.port).encode())
        head = b""
        while b"\r\n\r\n" not in head:
            head += tls.recv(4096)
        assert head.startswith(b"HTTP/1.1 101"), head
        tls.sendall(b"ping-bytes")
        echoed = b""
        while len(echoed) < 10:
            echoed += tls.recv(4096)
        assert echoed == b"ping-bytes"
    with _tunnel(rig, "api.test", rig.api.port) as tls:
        # GET /echo-headers is allowed, but no rule lets it upgrade
        status, headers, _ = _exchange(tls, upgrade.format("/echo-headers", rig.api.port).encode())
    assert status == 403
    assert headers["x-egressgate-reason"] == "rule-not-matched"


def test_no_secret_value_in_the_environment_of_the_test_leaks_into_records(rig: Rig) -> None:
    assert os.environ.get("EG_ICPT_TOKEN") is None  # only the proxy has it
    records = rig.proxy.access_records()
    assert records
    assert TOKEN not in json.dumps(records)


# ---- the other front ends: CONNECT inside the TLS listener, the transparent listener
def test_connect_inside_the_tls_listener_is_intercepted_too(rig: Rig) -> None:
    address = rig.proxy.tls_proxy_address
    assert address is not None

    def get(path: str) -> Any:
        return curl(
            ["--proxy-cacert", str(rig.origin_ca.ca_pem_path), rig.url(rig.api, "api.test", path)],
            proxy=f"https://127.0.0.1:{address[1]}",
            cacert=rig.icpt_ca.ca_pem_path,
        )

    result = get("/repos/other-org/x")
    assert result.status == 403, result.stderr
    assert result.header("X-Egressgate-Reason") == "rule-not-matched"
    result = get("/echo-headers")
    assert result.status == 200, result.stderr
    assert rig.api.request_records("/echo-headers")[-1].header("Authorization") == f"Bearer {TOKEN}"


def test_socks5_tunnels_to_an_intercepted_host_are_intercepted_too(rig: Rig) -> None:
    address = rig.proxy.listening_address("socks")
    assert address is not None
    proxies = {"https": f"socks5h://127.0.0.1:{address[1]}"}
    verify = str(rig.icpt_ca.ca_pem_path)
    denied = requests.get(
        rig.url(rig.api, "api.test", "/repos/other-org/x"), proxies=proxies, verify=verify
    )
    assert denied.status_code == 403
    assert denied.headers["X-Egressgate-Reason"] == "rule-not-matched"
    allowed = requests.get(
        rig.url(rig.api, "api.test", "/echo-headers"), proxies=proxies, verify=verify
    )
    assert allowed.status_code == 200
    assert rig.api.request_records("/echo-headers")[-1].header("Authorization") == f"Bearer {TOKEN}"
    record = _records(rig, kind="socks", host="api.test", detail="intercepted")[-1]
    assert record["decision"] == "allow"


@pytest.mark.skipif(not ROOT, reason="the origin for the transparent listener needs port 443")
def test_transparent_connections_to_an_intercepted_name_are_intercepted(rig: Rig) -> None:
    assert rig.tapi is not None
    address = rig.proxy.listening_address("transparent")
    assert address is not None

    def get(path: str) -> tuple[int, dict[str, str], bytes]:
        raw = socket.create_connection(address, timeout=10)
        with rig.icpt_ca.client_context().wrap_socket(raw, server_hostname="tapi.test") as tls:
            request = f"GET {path} HTTP/1.1\r\nHost: tapi.test\r\nConnection: close\r\n\r\n"
            return _exchange(tls, request.encode())

    status, _, _body = get("/echo-headers")
    assert status == 200
    assert rig.tapi.request_records("/echo-headers")
    status, headers, _ = get("/other")
    assert status == 403
    assert headers["x-egressgate-reason"] == "rule-not-matched"
    assert not rig.tapi.request_records("/other")
    record = _records(rig, kind="transparent", host="tapi.test")[-1]
    assert record["detail"] == "intercepted"


@pytest.mark.skipif(not ROOT, reason="the origin for the transparent listener needs port 80")
def test_a_secret_on_a_transparent_plain_http_connection_is_refused(rig: Rig) -> None:
    assert rig.tplain is not None
    address = rig.proxy.listening_address("transparent")
    assert address is not None
    with socket.create_connection(address, timeout=10) as sock:
        sock.sendall(f"GET /?k={TOKEN} HTTP/1.1\r\nHost: tplain.test\r\n\r\n".encode())
        first = sock.recv(65536)
    assert first.startswith(b"HTTP/1.1 403"), first
    assert b"secret-leak" in first
    assert not rig.tplain.request_records()
    # A later request on a kept-alive connection, the secret split across two writes.
    with socket.create_connection(address, timeout=10) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: tplain.test\r\n\r\n")
        # The whole first response (head and body may come in separate segments), so that
        # what is read below is only what follows the second request.
        assert read_response(sock).head.status == 200
        sock.sendall(f"GET /second HTTP/1.1\r\nHost: tplain.test\r\nX-A: {TOKEN[:5]}".encode())
        sock.sendall(f"{TOKEN[5:]}\r\n\r\n".encode())
        rest = b""
        while chunk := sock.recv(65536):
            rest += chunk
    assert rest == b""  # closed without an answer: the request never went out
    assert [r.path for r in rig.tplain.request_records()] == ["/"]
    record = _records(rig, kind="transparent", host="tplain.test", reason="secret-leak")
    assert "connection closed" in record[-1]["detail"]


# ---- HTTP/1.1 details inside the tunnel
def test_pipelined_requests_are_answered_in_order(rig: Rig) -> None:
    with _tunnel(rig, "api.test", rig.api.port) as tls:
        host = f"Host: api.test:{rig.api.port}\r\n"
        one = f"GET /chunked/10 HTTP/1.1\r\n{host}\r\n"
        two = f"GET /chunked/20 HTTP/1.1\r\n{host}Connection: close\r\n\r\n"
        tls.sendall((one + two).encode())
        data = b""
        while True:
            try:
                chunk = tls.recv(65536)
            except (ssl.SSLError, OSError):
                break
            if not chunk:
                break
            data += chunk
    assert data.count(b"HTTP/1.1 200") == 2
    assert data.index(b"\r\na\r\n") < data.index(b"\r\n14\r\n")  # 10 bytes, then 20


def test_a_client_that_half_closes_after_its_request_still_gets_the_response(rig: Rig) -> None:
    with _tunnel(rig, "api.test", rig.api.port) as tls:
        tls.sendall(f"GET /chunked/100 HTTP/1.1\r\nHost: api.test:{rig.api.port}\r\n\r\n".encode())
        socket.socket.shutdown(tls, socket.SHUT_WR)  # TCP half-close under the TLS session
        data = b""
        while b"0\r\n\r\n" not in data and (chunk := tls.recv(65536)):
            data += chunk
    assert data.startswith(b"HTTP/1.1 200"), data


def test_a_secret_split_across_a_plain_http_body_is_refused(rig: Rig) -> None:
    def body() -> Any:
        yield b"payload " + OTHER_TOKEN[:6].encode()
        yield OTHER_TOKEN[6:].encode() + b" end"

    before = len(rig.plain.request_records())
    response = requests.post(
        f"http://plain.test:{rig.plain.port}/upload", data=body(), proxies={"http": rig.proxy_url}
    )
    assert response.status_code == 403
    assert response.headers["X-Egressgate-Reason"] == "secret-leak"
    for record in rig.plain.request_records()[before:]:
        assert not record.body_complete


# ---- reload (last in the module: it changes the rig's config, then restores it)
def test_after_a_reload_requests_on_an_open_connection_follow_the_new_rules(rig: Rig) -> None:
    import copy

    original = copy.deepcopy(rig.proxy.config)
    tightened = copy.deepcopy(original)
    api_rules = tightened["intercept"][0]["rules"]
    tightened["intercept"][0]["rules"] = [r for r in api_rules if "/echo-headers" not in r["paths"]]
    request = f"GET /echo-headers HTTP/1.1\r\nHost: api.test:{rig.api.port}\r\n\r\n".encode()
    try:
        with _tunnel(rig, "api.test", rig.api.port) as tls:
            status, _, _ = _exchange(tls, request)
            assert status == 200
            rig.proxy.reload(tightened, wait_for="reloaded")
            status, headers, _ = _exchange(tls, request)
        assert status == 403
        assert headers["x-egressgate-reason"] == "rule-not-matched"
    finally:
        rig.proxy.reload(original, wait_for="reloaded")


def test_sigterm_closes_an_idle_intercepted_connection_at_once(rig: Rig, tmp_path: Path) -> None:
    """A drain closes intercepted connections between requests promptly, as it does idle
    plain-HTTP keep-alive connections, instead of waiting for drain_timeout_s."""
    import copy
    import time

    config = copy.deepcopy(rig.proxy.config)
    config["limits"] = {**config["limits"], "drain_timeout_s": 20}
    config["access_log"] = str(tmp_path / "access.log")
    config.pop("transparent_listen")  # (its origins are the module proxy's business)
    proxy = ProxyProcess(config, tmp_path / "proxy", env=ENV).start()
    try:
        with _tunnel(rig, "api.test", rig.api.port, via=proxy) as tls:
            request = f"GET /echo-headers HTTP/1.1\r\nHost: api.test:{rig.api.port}\r\n\r\n"
            status, _, _ = _exchange(tls, request.encode())
            assert status == 200
            started = time.monotonic()
            assert proxy.terminate(timeout=25) == 0
            took = time.monotonic() - started
        assert took < 10, f"exited {took:.1f}s after SIGTERM (drain_timeout_s 20)"
        records = [r for r in proxy.access_records() if r["kind"] == "tunnel"]
        assert records
        assert records[-1]["detail"] == "intercepted"
    finally:
        proxy.close()


def test_an_http10_request_inside_the_tunnel_gets_no_chunked_encoding(rig: Rig) -> None:
    """An HTTP/1.0 client knows no chunked encoding: the origin's chunked body reaches it as it
    is, ended by the close, as on the forward path (both use http1/semantics.py
    response_framing). Before, interception re-chunked it for an HTTP/1.0 client."""
    with _tunnel(rig, "api.test", rig.api.port) as tls:
        tls.sendall(f"GET /chunked/100 HTTP/1.0\r\nHost: api.test:{rig.api.port}\r\n\r\n".encode())
        data = b""
        while True:
            try:
                chunk = tls.recv(65536)
            except (ssl.SSLError, OSError):
                break
            if not chunk:
                break  # the proxy closes: that is how the client learns the end
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    assert b"transfer-encoding" not in head.lower(), head
    assert len(body) == 100, body
