"""Addresses the kernel rewrites, in a network namespace of our own (issue 13 items 1 and 2).

1. The DNS guard on a wildcard address (0.0.0.0, and the dual-stack ::) replies from the address
   each query was sent to. Without IP_PKTINFO / IPV6_PKTINFO the kernel picks the source by
   routing: a query to 127.0.0.2 was answered from 127.0.0.1, which a client (a connected
   socket, or conntrack after a REDIRECT) never takes for the answer.
2. IPv6 transparent mode: an ip6 nat REDIRECT in front of the origin's address; the proxy reads
   the original destination with IP6T_SO_ORIGINAL_DST, for HTTP (Host) and for TLS (SNI, the
   raw path), and connects only to the vetted address of the name.

One namespace ("host", loopback only): extra addresses on lo stand for the addresses the kernel
rewrites. Every packet is sent by a process inside it; the namespace is removed at the end.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.netns import Lab, Namespace, Service, existing_namespaces
from tests.e2e.netns import unavailable as netns_unavailable
from tests.support.proxy import ProxyProcess, clean_env

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

V6_EXTRA = "fd00:53::2"  # a second IPv6 address on lo, asked instead of ::1
DIALLED_V6 = "fd00:80::1"  # what the client dials: redirected to the transparent listener
ORIGIN_V6 = "fd00:80::10"  # where allowed.test really is (hosts file)
ALLOWED, DENIED = "allowed.test", "denied.test"
TRANSPARENT_PORT = 3130

ASK_FROM = r"""
import json, socket, sys
import dns.message
out = {}
for target in sys.argv[1:]:
    host, port = target.rsplit(":", 1)
    host = host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(family, socket.SOCK_DGRAM)
    s.settimeout(2)
    s.sendto(dns.message.make_query("denied.test", "A").to_wire(), (host, int(port)))
    try:
        data, peer = s.recvfrom(4096)
        out[target] = [peer[0], dns.message.from_wire(data).rcode()]
    except TimeoutError:
        out[target] = ["timeout", None]
print(json.dumps(out))
"""

HELLO_CLIENT = r"""
import socket, ssl, sys
context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
context.check_hostname = False
context.verify_mode = ssl.CERT_NONE
incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
tls = context.wrap_bio(incoming, outgoing, server_hostname=sys.argv[3])
try:
    tls.do_handshake()
except ssl.SSLWantReadError:
    pass
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
s.sendall(outgoing.read())  # the ClientHello Python's TLS client sends: the SNI is argv[3]
s.settimeout(2)
try:
    print(repr(s.recv(100)))
except OSError as e:
    print("closed", e)
"""

TCP_ORIGIN = r"""
import json, socket, sys, threading
srv = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind((sys.argv[1], int(sys.argv[2])))
srv.listen(16)
print(json.dumps({"event": "ready"}), flush=True)
def serve(conn):
    conn.settimeout(3)
    got = b""
    try:
        while len(got) < 1 << 16:
            chunk = conn.recv(65536)
            if not chunk:
                break
            got += chunk
            if got[:1] != b"\x16" and b"\r\n\r\n" in got:
                head = b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\nConnection: close\r\n\r\n"
                conn.sendall(head + b"origin")
                break
            if got[:1] == b"\x16":
                break
    except OSError:
        pass
    print(json.dumps({"event": "conn", "first": got[:1].hex(), "bytes": len(got)}), flush=True)
    conn.close()
while True:
    conn, _ = srv.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
"""


def _skip_unless_available() -> None:
    reason = netns_unavailable()
    if reason is not None:
        pytest.skip(reason)


class Host:
    def __init__(self, lab: Lab, ns: Namespace, workdir: Path) -> None:
        self.lab, self.ns, self.workdir = lab, ns, workdir

    def proxy(self, name: str, **config: Any) -> ProxyProcess:
        workdir = self.workdir / name
        workdir.mkdir()
        full = {
            "listen": "127.0.0.1:0",
            "admin_listen": None,
            "nameservers": ["127.0.0.1:9"],  # never asked: these tests answer locally
            "access_log": str(workdir / "access.log"),
            **config,
        }
        command = [*self.ns.exec_prefix(), sys.executable, "-m", "egressgate"]
        proxy = ProxyProcess(full, workdir, command=command)
        self.lab.on_close(proxy.close)
        return proxy.start()

    def python(self, script: str, *args: str) -> Any:
        result = self.ns.run([sys.executable, "-c", script, *args], env=clean_env(), timeout=30)
        assert result.returncode == 0, result.stderr
        return result.stdout


@pytest.fixture(scope="module")
def host() -> Iterator[Host]:
    _skip_unless_available()
    lab = Lab()
    workdir = Path(tempfile.mkdtemp(prefix="egt-addresses-"))
    try:
        ns = lab.namespace("host")
        for address in (V6_EXTRA, DIALLED_V6, ORIGIN_V6):
            ns.ip("-6", "addr", "add", f"{address}/128", "dev", "lo", "nodad")
        yield Host(lab, ns, workdir)
    finally:
        lab.close()
        shutil.rmtree(workdir, ignore_errors=True)
        assert existing_namespaces(lab.prefix) == []


@pytest.mark.parametrize(
    ("listen", "asked"),
    [
        ("0.0.0.0:5353", ["127.0.0.2:5353", "127.0.0.1:5353"]),
        ("[::]:5354", [f"[{V6_EXTRA}]:5354", "[::1]:5354", "127.0.0.2:5354"]),
    ],
)
def test_dns_guard_on_a_wildcard_replies_from_the_address_asked(
    host: Host, listen: str, asked: list[str]
) -> None:
    host.proxy(f"dns-{listen.rsplit(':', 1)[1]}", dns_listen=listen, allow=[ALLOWED])
    for _ in range(2):  # the first answer is decided, the second replayed from the memo
        replies = json.loads(host.python(ASK_FROM, *asked))
        for target in asked:
            source, rcode = replies[target]
            assert source == target.rsplit(":", 1)[0].strip("[]"), replies
            assert rcode == 3  # NXDOMAIN: the guard answered, not someone else


@pytest.fixture(scope="module")
def transparent_v6(host: Host) -> tuple[ProxyProcess, Service]:
    hosts = host.workdir / "hosts"
    hosts.write_text(f"{ORIGIN_V6} {ALLOWED}\n{ORIGIN_V6} {DENIED}\n")
    origin = host.lab.spawn(
        host.ns, [sys.executable, "-c", TCP_ORIGIN, ORIGIN_V6, "80"], clean_env()
    )
    origin.wait_for(lambda e: e.get("event") == "ready")
    tls_origin = host.lab.spawn(
        host.ns, [sys.executable, "-c", TCP_ORIGIN, ORIGIN_V6, "443"], clean_env()
    )
    tls_origin.wait_for(lambda e: e.get("event") == "ready")
    proxy = host.proxy(
        "transparent-v6",
        transparent_listen=f"[::]:{TRANSPARENT_PORT}",
        allow=[ALLOWED],
        http_ports=[80],
        connect_ports=[443],
        hosts_file=str(hosts),
        allow_private=["fd00::/8"],
    )
    host.ns.nft(
        "table ip6 egt_redirect {\n"
        "  chain out {\n"
        "    type nat hook output priority -100;\n"
        f"    ip6 daddr {DIALLED_V6} tcp dport {{ 80, 443 }} redirect to :{TRANSPARENT_PORT}\n"
        "  }\n"
        "}\n"
    )
    return proxy, tls_origin


def test_ipv6_redirected_http_is_judged_by_host_and_logs_the_original_destination(
    host: Host, transparent_v6: tuple[ProxyProcess, Service]
) -> None:
    proxy, _ = transparent_v6
    curl = ["curl", "--noproxy", "*", "-sS", "--max-time", "5", "-o", "-", "-w", " %{http_code}"]
    allowed = host.ns.run([*curl, "-H", f"Host: {ALLOWED}", f"http://[{DIALLED_V6}]/"])
    assert allowed.stdout.endswith("origin 200"), allowed
    denied = host.ns.run([*curl, "-H", f"Host: {DENIED}", f"http://[{DIALLED_V6}]/"])
    assert denied.stdout.endswith(" 403"), denied
    records = proxy.wait_for_records(2, 10.0, predicate=lambda r: r.get("kind") == "transparent")
    by_host = {r["host"]: r for r in records}
    assert by_host[ALLOWED]["original_dst"] == f"[{DIALLED_V6}]:80"
    assert by_host[ALLOWED]["address"] == ORIGIN_V6  # the vetted address, not the dialled one
    assert by_host[ALLOWED]["decision"] == "allow"
    assert by_host[DENIED]["reason"] == "host-not-allowed"


def test_ipv6_redirected_tls_takes_the_raw_path_to_the_vetted_address(
    host: Host, transparent_v6: tuple[ProxyProcess, Service]
) -> None:
    proxy, tls_origin = transparent_v6
    host.python(HELLO_CLIENT, DIALLED_V6, "443", ALLOWED)
    tls_origin.wait_for(lambda e: e.get("event") == "conn" and e["first"] == "16")

    def tls(record: dict[str, Any]) -> bool:
        return record.get("kind") == "transparent" and record.get("method") == "TLS"

    record = proxy.wait_for_records(1, 10.0, predicate=tls)[0]
    assert record["original_dst"] == f"[{DIALLED_V6}]:443"
    assert record["sni"] == ALLOWED
    assert record["address"] == ORIGIN_V6
    assert record["decision"] == "allow"
