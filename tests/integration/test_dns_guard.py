"""The DNS guard (`dns_listen`, issue 13 item 2) on the real proxy, with real DNS clients.

The upstream is the test DNS server on loopback (tests/support/dns.py), which records every
query it receives: "never left the process" is asserted there, not inferred. Clients are
dnspython (`dns.query.udp/tcp`), raw sockets for hostile bytes, and `dig` when installed.
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import sys
import time
from typing import Any

import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest

from egressgate.observe.record import FIELDS
from tests.integration.helpers_ops import scrape, wait_for_metric
from tests.support.dns import DnsServer
from tests.support.proxy import ProxyFactory, ProxyProcess

TIMEOUT_S = 5.0


def guard(proxy_factory: ProxyFactory, **keys: Any) -> ProxyProcess:
    keys.setdefault("dns_listen", "127.0.0.1:0")
    return proxy_factory(**keys)


def address(proxy: ProxyProcess) -> tuple[str, int]:
    found = proxy.dns_address
    assert found is not None, proxy.listening
    assert found[1] != 0, "the listening event must carry the bound port"
    return found


def ask(
    proxy: ProxyProcess, name: str, qtype: str = "A", *, tcp: bool = False, source: str = ""
) -> dns.message.Message:
    host, port = address(proxy)
    query = dns.message.make_query(name, qtype)
    if tcp:
        return dns.query.tcp(query, host, port=port, timeout=TIMEOUT_S)
    return dns.query.udp(query, host, port=port, timeout=TIMEOUT_S, source=source or None)


def addresses(message: dns.message.Message) -> list[str]:
    return sorted(
        rdata.to_text()
        for rrset in message.answer
        if rrset.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA)
        for rdata in rrset
    )


def dns_record(proxy: ProxyProcess, **fields: Any) -> dict[str, Any]:
    def matches(record: dict[str, Any]) -> bool:
        return record.get("kind") == "dns" and all(record.get(k) == v for k, v in fields.items())

    return proxy.wait_for_records(1, 10.0, predicate=matches)[0]


def test_allowed_name_is_forwarded_and_denied_name_never_leaves(
    proxy_factory: ProxyFactory, dns_server: DnsServer
) -> None:
    dns_server.set("allowed.test", ["93.184.216.34", "2606:2800:220:1::1"])
    dns_server.set("denied.test", ["93.184.216.35"])
    proxy = guard(proxy_factory, allow=["allowed.test"])

    answer = ask(proxy, "allowed.test")
    assert answer.rcode() == dns.rcode.NOERROR
    assert addresses(answer) == ["93.184.216.34"]
    assert addresses(ask(proxy, "allowed.test", "AAAA")) == ["2606:2800:220:1::1"]
    assert addresses(ask(proxy, "ALLOWED.test.", tcp=True)) == ["93.184.216.34"]

    refused = ask(proxy, "denied.test")
    assert refused.rcode() == dns.rcode.NXDOMAIN
    assert not refused.answer
    assert dns_server.query_count("denied.test") == 0
    assert dns_server.query_count("allowed.test") >= 1

    record = dns_record(proxy, host="denied.test")
    assert record["decision"] == "deny"
    assert record["reason"] == "host-not-allowed"
    assert record["method"] == "A"
    assert record["status"] == dns.rcode.NXDOMAIN
    assert record["client"] == "127.0.0.1"
    assert record["policy"] == "default"
    assert record["duration_ms"] >= 0
    allowed = dns_record(proxy, host="allowed.test", method="AAAA")
    assert allowed["decision"] == "allow"
    assert allowed["rule"] == "allowed.test"


def test_cached_answer_is_served_without_upstream(
    proxy_factory: ProxyFactory, dns_server: DnsServer
) -> None:
    dns_server.set("cached.test", ["93.184.216.34"])
    proxy = guard(proxy_factory, allow=["cached.test"])
    for _ in range(20):
        assert addresses(ask(proxy, "cached.test")) == ["93.184.216.34"]
    assert dns_server.query_count("cached.test") == 1  # TTL 5 s: one upstream query
    records = proxy.wait_for_records(20, 10.0, predicate=lambda r: r.get("host") == "cached.test")
    # Replayed answers log from pre-rendered parts: the same line as a decoded query's.
    varying = {"ts", "duration_ms"}
    first = {k: v for k, v in records[0].items() if k not in varying}
    for record in records[1:]:
        assert list(record) == list(records[0])
        assert {k: v for k, v in record.items() if k not in varying} == first
    assert list(records[0]) == list(FIELDS)


def test_dns_tunnelling_never_reaches_upstream(
    proxy_factory: ProxyFactory, dns_server: DnsServer
) -> None:
    proxy = guard(proxy_factory, allow=["allowed.test"])
    rng = random.Random(13)
    host, port = address(proxy)
    names = [
        ".".join(f"{rng.getrandbits(120):030x}"[:30] for _ in range(3)) + ".exfil.test"
        for _ in range(200)
    ]
    for index, name in enumerate(names):
        qtype = ("TXT", "A", "NULL", "CNAME")[index % 4]
        query = dns.message.make_query(name, qtype)
        answer = dns.query.udp(query, host, port=port, timeout=TIMEOUT_S)
        assert answer.rcode() == dns.rcode.NXDOMAIN, name
    assert dns_server.queries() == []  # not one of them left the process


def test_passthrough_is_forwarded_even_when_not_allowed(
    proxy_factory: ProxyFactory, dns_server: DnsServer
) -> None:
    dns_server.set("api.default.svc.cluster.local", ["10.96.0.10"])
    dns_server.set("db.corp.internal", ["10.1.0.7"])
    proxy = guard(proxy_factory, allow=[])
    # Internal addresses are fine here: in-cluster services are internal by design.
    assert addresses(ask(proxy, "api.default.svc.cluster.local")) == ["10.96.0.10"]
    assert ask(proxy, "db.corp.internal").rcode() == dns.rcode.NXDOMAIN
    assert dns_server.query_count("db.corp.internal") == 0
    record = dns_record(proxy, host="api.default.svc.cluster.local")
    assert (record["decision"], record["rule"], record["detail"]) == (
        "allow",
        ".cluster.local",
        "dns_passthrough",
    )
    # An operator's own passthrough list replaces the default.
    proxy2 = guard(proxy_factory, allow=[], dns_passthrough=[".corp.internal"])
    assert addresses(ask(proxy2, "db.corp.internal")) == ["10.1.0.7"]
    assert ask(proxy2, "api.default.svc.cluster.local").rcode() == dns.rcode.NXDOMAIN


@pytest.mark.parametrize(
    ("refusal", "rcode"), [("nxdomain", dns.rcode.NXDOMAIN), ("refused", dns.rcode.REFUSED)]
)
def test_allowed_name_with_internal_address_is_refused(
    proxy_factory: ProxyFactory, dns_server: DnsServer, refusal: str, rcode: dns.rcode.Rcode
) -> None:
    dns_server.set("rebind.test", ["93.184.216.34", "10.0.0.8"])
    dns_server.set("metadata.test", ["169.254.169.254"])
    dns_server.set("ok.test", ["10.2.0.1"])
    proxy = guard(
        proxy_factory,
        allow=["rebind.test", "metadata.test", "ok.test"],
        allow_private=["10.2.0.0/16"],
        dns_refusal=refusal,
    )
    for name, bad in (("rebind.test", "10.0.0.8"), ("metadata.test", "169.254.169.254")):
        answer = ask(proxy, name)
        assert answer.rcode() == rcode, name
        assert not answer.answer
        record = dns_record(proxy, host=name)
        assert (record["decision"], record["reason"], record["address"]) == (
            "deny",
            "private-address",
            bad,
        )
    assert addresses(ask(proxy, "ok.test")) == ["10.2.0.1"]  # allow_private covers it
    assert ask(proxy, "unlisted.test").rcode() == rcode


def test_proxy_answer_mode_returns_the_proxy_address(
    proxy_factory: ProxyFactory, dns_server: DnsServer
) -> None:
    dns_server.set("allowed.test", ["93.184.216.34"])
    dns_server.set("inside.cluster.local", ["10.96.0.1"])
    proxy = guard(
        proxy_factory,
        allow=["allowed.test"],
        dns_answer="proxy",
        dns_proxy_addresses=["10.0.0.5", "fd00::5"],
        dns_proxy_ttl_s=7,
    )
    answer = ask(proxy, "allowed.test")
    assert addresses(answer) == ["10.0.0.5"]
    assert answer.answer[0].ttl == 7
    assert addresses(ask(proxy, "allowed.test", "AAAA")) == ["fd00::5"]
    https = ask(proxy, "allowed.test", "HTTPS")  # no hints that lead past the proxy
    assert (https.rcode(), https.answer) == (dns.rcode.NOERROR, [])
    assert ask(proxy, "denied.test").rcode() == dns.rcode.NXDOMAIN
    assert dns_server.query_count("allowed.test") == 0  # answered without upstream
    assert addresses(ask(proxy, "inside.cluster.local")) == ["10.96.0.1"]  # still forwarded


def test_query_types(proxy_factory: ProxyFactory, dns_server: DnsServer) -> None:
    dns_server.set("allowed.test", ["93.184.216.34"])
    dns_server.set("34.216.184.93.in-addr.arpa", ["127.0.0.1"])  # NOERROR (no PTR data)
    proxy = guard(
        proxy_factory, allow=["allowed.test"], dns_passthrough=[".cluster.local", ".in-addr.arpa"]
    )
    for qtype in ("ANY", "MAILB"):
        assert ask(proxy, "allowed.test", qtype).rcode() == dns.rcode.REFUSED, qtype
    assert ask(proxy, "allowed.test", "AXFR", tcp=True).rcode() == dns.rcode.REFUSED
    assert ask(proxy, "34.216.184.93.in-addr.arpa", "PTR").rcode() == dns.rcode.NOERROR
    proxy2 = guard(proxy_factory, allow=["allowed.test", ".in-addr.arpa"])
    assert ask(proxy2, "34.216.184.93.in-addr.arpa", "PTR").rcode() == dns.rcode.REFUSED
    assert dns_server.query_count("34.216.184.93.in-addr.arpa") == 1  # the passthrough one
    for qtype in ("TXT", "MX", "HTTPS", "CNAME"):  # forwarded: the test server has no data
        assert ask(proxy, "allowed.test", qtype).rcode() == dns.rcode.NOERROR, qtype
    assert dns_server.query_count("allowed.test", "TXT") == 1
    assert dns_server.query_count("allowed.test", "ANY") == 0
    record = dns_record(proxy, method="ANY")
    assert record["reason"] == "dns-query-type-refused"


def test_tcp_pipelined_queries_and_query_cap(
    proxy_factory: ProxyFactory, dns_server: DnsServer
) -> None:
    dns_server.set("a.test", ["93.184.216.34"])
    proxy = guard(proxy_factory, allow=["a.test"], limits={"dns_tcp_max_queries": 3})
    host, port = address(proxy)
    with socket.create_connection((host, port), timeout=TIMEOUT_S) as sock:
        queries = [dns.message.make_query(n, "A") for n in ("a.test", "b.test", "a.test")]
        sock.sendall(
            b"".join(len(w).to_bytes(2, "big") + w for w in (q.to_wire() for q in queries))
        )
        answers = {}
        for _ in range(3):
            answer = dns.query.receive_tcp(sock, time.time() + TIMEOUT_S)[0]
            answers[answer.id] = answer
        by_id = [answers[q.id] for q in queries]
        assert [a.rcode() for a in by_id] == [0, dns.rcode.NXDOMAIN, 0]
        assert sock.recv(100) == b""  # the third query was the last on this connection


def test_hostile_bytes_never_stop_the_guard(
    proxy_factory: ProxyFactory, dns_server: DnsServer
) -> None:
    dns_server.set("a.test", ["93.184.216.34"])
    proxy = guard(proxy_factory, allow=["a.test"], limits={"dns_tcp_idle_s": 0.5})
    host, port = address(proxy)
    rng = random.Random(7)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.settimeout(0.2)
        blobs = [
            bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 600))) for _ in range(200)
        ]
        blobs += [b"\x12\x34\x01", os.urandom(5000)]  # truncated header; oversized datagram
        for blob in blobs:
            udp.sendto(blob, (host, port))
        # A query that decodes badly gets FORMERR with its ID. (Sent until answered: the
        # flood above may overflow the socket buffer, and UDP may drop then.)
        deadline = time.monotonic() + TIMEOUT_S
        formerr = None
        while formerr is None and time.monotonic() < deadline:
            udp.sendto(b"\xab\xcd\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x07trunc", (host, port))
            try:
                reply = udp.recv(4096)
            except TimeoutError:
                continue
            if reply[:2] == b"\xab\xcd":
                formerr = reply
        assert formerr is not None
        assert dns.message.from_wire(formerr).rcode() == dns.rcode.FORMERR
        # A response (QR set) is never answered: two guards cannot ping-pong.
        response = dns.message.make_response(dns.message.make_query("a.test", "A"))
        udp.sendto(response.to_wire(), (host, port))
        late = []
        for _ in range(50):  # drain late replies to the random blobs; the response gets none
            try:
                late.append(udp.recv(4096))
            except TimeoutError:
                break
        assert all(reply[:2] != response.to_wire()[:2] for reply in late)
    # A 64 KB length prefix is refused at once; a valid prefix with a slow body times out.
    with socket.create_connection((host, port), timeout=TIMEOUT_S) as sock:
        sock.sendall(b"\xff\xff" + b"\x00" * 10)
        assert sock.recv(10) == b""
    with socket.create_connection((host, port), timeout=TIMEOUT_S) as sock:
        started = time.monotonic()
        sock.sendall(b"\x00\x40\x00")
        assert sock.recv(10) == b""
        assert time.monotonic() - started < 3.0
    assert addresses(ask(proxy, "a.test")) == ["93.184.216.34"]
    assert addresses(ask(proxy, "a.test", tcp=True)) == ["93.184.216.34"]
    assert proxy.returncode is None
    record = dns_record(proxy, reason="bad-request")
    assert record["decision"] == "deny"


def test_metrics_count_every_query(proxy_factory: ProxyFactory, dns_server: DnsServer) -> None:
    dns_server.set("a.test", ["93.184.216.34"])
    proxy = guard(proxy_factory, allow=["a.test"])
    for _ in range(3):
        ask(proxy, "a.test")
    ask(proxy, "b.test")
    name = "egressgate_dns_queries_total"
    wait_for_metric(proxy, name, 3, decision="allow", reason="allowed")
    assert scrape(proxy).value(name, decision="deny", reason="host-not-allowed") == 1


def test_upstream_timeout_is_servfail(proxy_factory: ProxyFactory, dns_server: DnsServer) -> None:
    dns_server.set("slow.test", ["93.184.216.34"])
    dns_server.set_behaviour("slow.test", "blackhole")
    proxy = guard(proxy_factory, allow=["slow.test"], limits={"dns_timeout_s": 0.5})
    assert ask(proxy, "slow.test").rcode() == dns.rcode.SERVFAIL
    record = dns_record(proxy, host="slow.test")
    assert (record["decision"], record["reason"]) == ("error", "dns-timeout")


def test_reload_changes_decisions_at_once(
    proxy_factory: ProxyFactory, dns_server: DnsServer
) -> None:
    dns_server.set("a.test", ["93.184.216.34"])
    dns_server.set("b.test", ["93.184.216.35"])
    proxy = guard(proxy_factory, allow=["a.test"])
    assert addresses(ask(proxy, "a.test")) == ["93.184.216.34"]
    assert ask(proxy, "b.test").rcode() == dns.rcode.NXDOMAIN
    proxy.reload({**proxy.config, "allow": ["b.test"]}, wait_for="reloaded")
    assert ask(proxy, "a.test").rcode() == dns.rcode.NXDOMAIN  # even though it was cached
    assert addresses(ask(proxy, "b.test")) == ["93.184.216.35"]


def test_policy_follows_the_client_address(
    proxy_factory: ProxyFactory, dns_server: DnsServer
) -> None:
    dns_server.set("build.test", ["93.184.216.34"])
    proxy = guard(
        proxy_factory,
        policies={"ci": {"allow": ["build.test"]}},
        clients=[{"source": "127.0.0.2/32", "policy": "ci"}],
    )
    assert ask(proxy, "build.test").rcode() == dns.rcode.NXDOMAIN
    assert addresses(ask(proxy, "build.test", source="127.0.0.2")) == ["93.184.216.34"]
    assert dns_record(proxy, client="127.0.0.2")["policy"] == "ci"


@pytest.mark.skipif(shutil.which("dig") is None, reason="dig is not installed")
def test_dig(proxy_factory: ProxyFactory, dns_server: DnsServer) -> None:
    dns_server.set("allowed.test", ["93.184.216.34"])
    proxy = guard(proxy_factory, allow=["allowed.test"])
    host, port = address(proxy)

    def dig(*args: str) -> str:
        command = ["dig", f"@{host}", "-p", str(port), "+time=3", "+tries=1", *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=20).stdout

    allowed = dig("allowed.test", "A")
    assert "status: NOERROR" in allowed
    assert "93.184.216.34" in allowed
    assert "status: NXDOMAIN" in dig("denied.test", "A")
    assert "93.184.216.34" in dig("+tcp", "allowed.test", "A")
    assert dns_server.query_count("denied.test") == 0


def test_learn_reads_the_guard_records(proxy_factory: ProxyFactory, dns_server: DnsServer) -> None:
    dns_server.set("a.test", ["93.184.216.34"])
    proxy = guard(proxy_factory, allow=["a.test"])
    ask(proxy, "a.test")
    ask(proxy, "wanted.example.com")
    ask(proxy, "api.ns.svc.cluster.local")
    proxy.wait_for_records(3, 10.0, predicate=lambda r: r.get("kind") == "dns")
    result = subprocess.run(
        [sys.executable, "-m", "egressgate", "learn", str(proxy.access_log_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "wanted.example.com (DNS 1): refused in enforce mode" in result.stdout, result.stdout
    assert "- a.test  # DNS 1" in result.stdout
    assert "cluster.local" not in result.stdout


def test_an_answer_in_flight_across_a_reload_is_not_kept(
    proxy_factory: ProxyFactory, dns_server: DnsServer
) -> None:
    dns_server.set("slow.test", ["93.184.216.34"])
    dns_server.set_delay("slow.test", 1.5)
    proxy = guard(proxy_factory, allow=["slow.test"])
    host, port = address(proxy)
    query = dns.message.make_query("slow.test", "A")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.settimeout(TIMEOUT_S)
        udp.sendto(query.to_wire(), (host, port))  # decided under the old generation
        dns_server.wait_for_queries("slow.test", 1)
        proxy.reload({**proxy.config, "allow": []}, wait_for="reloaded")
        assert ask(proxy, "other.test").rcode() == dns.rcode.NXDOMAIN  # the new generation
        assert addresses(dns.message.from_wire(udp.recv(4096))) == ["93.184.216.34"]
        # The same bytes again, after the reload: refused, not replayed from the old answer.
        udp.sendto(query.to_wire(), (host, port))
        assert dns.message.from_wire(udp.recv(4096)).rcode() == dns.rcode.NXDOMAIN


def test_the_guard_runs_once_with_workers(
    proxy_factory: ProxyFactory, dns_server: DnsServer
) -> None:
    dns_server.set("a.test", ["93.184.216.34"])
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proxy = guard(proxy_factory, allow=["a.test"], workers=2, dns_listen=f"127.0.0.1:{port}")
    assert address(proxy) == ("127.0.0.1", port)
    assert addresses(ask(proxy, "a.test")) == ["93.184.216.34"]
    assert addresses(ask(proxy, "a.test", tcp=True)) == ["93.184.216.34"]
    assert ask(proxy, "b.test").rcode() == dns.rcode.NXDOMAIN
