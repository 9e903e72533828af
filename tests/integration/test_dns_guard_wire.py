"""The DNS guard's forwarded answers, byte for byte, on the real proxy (issue 13 item 6).

The forwarded path re-addresses the upstream's own answer instead of rendering a new message
(proxy/dns_wire.py `patched_answer`), and asks upstream without EDNS. What the client gets must
not change for that: its ID, its RD and CD bits, its question exactly as it wrote it (letter
case), an OPT record when (and only when) it sent EDNS, every record of the answer, and a
truncated answer (TC, no records) when the answer does not fit what it takes over UDP.
"""

from __future__ import annotations

import socket

import dns.flags
import dns.message
import dns.rdatatype
import pytest

from tests.integration.test_dns_guard import address, addresses, guard
from tests.support.dns import DnsServer
from tests.support.proxy import ProxyFactory, ProxyProcess

TIMEOUT_S = 5.0
MANY = [f"93.184.{i // 200}.{i % 200 + 1}" for i in range(40)]  # 40 A records: > 512 bytes


def ask_raw(proxy: ProxyProcess, query: dns.message.Message, tcp: bool = False) -> bytes:
    """The guard's answer to `query`, as bytes (UDP, or one RFC 7766 frame over TCP)."""
    host, port = address(proxy)
    wire = query.to_wire()
    if tcp:
        with socket.create_connection((host, port), timeout=TIMEOUT_S) as stream:
            stream.sendall(len(wire).to_bytes(2, "big") + wire)
            size = int.from_bytes(stream.recv(2), "big")
            data = b""
            while len(data) < size:
                chunk = stream.recv(size - len(data))
                assert chunk, "the guard closed mid-answer"
                data += chunk
            return data
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(TIMEOUT_S)
        sock.connect((host, port))
        sock.send(wire)
        return sock.recv(65535)


@pytest.fixture
def proxy(proxy_factory: ProxyFactory, dns_server: DnsServer) -> ProxyProcess:
    dns_server.set("mixed.allowed.test", ["93.184.216.34"])
    dns_server.set("many.allowed.test", MANY)
    dns_server.set("big.allowed.test", ["93.184.216.36"])
    dns_server.set_behaviour("big.allowed.test", "truncate")
    return guard(proxy_factory, allow=[".allowed.test"])


@pytest.mark.parametrize("edns", [False, True])
@pytest.mark.parametrize("cd", [False, True])
def test_forwarded_answer_is_addressed_to_the_client_exactly(
    proxy: ProxyProcess, edns: bool, cd: bool
) -> None:
    for qid in (4242, 7):  # the first is forwarded, the second answered from the memo
        query = dns.message.make_query("MiXeD.Allowed.TEST", "A", use_edns=0 if edns else False)
        query.id = qid
        if cd:
            query.flags |= dns.flags.CD
        wire = ask_raw(proxy, query)
        answer = dns.message.from_wire(wire)
        assert answer.id == qid
        assert answer.flags & dns.flags.QR
        assert answer.flags & dns.flags.RA
        assert answer.flags & dns.flags.RD
        assert bool(answer.flags & dns.flags.CD) == cd
        assert (answer.edns >= 0) == edns
        assert answer.question[0].name.to_text() == "MiXeD.Allowed.TEST."  # its letter case
        assert wire[12 : 12 + len(query.question[0].name.to_wire() or b"")] == (
            query.question[0].name.to_wire()
        )
        assert addresses(answer) == ["93.184.216.34"]


def test_an_answer_too_large_for_a_plain_udp_client_is_truncated(proxy: ProxyProcess) -> None:
    plain = dns.message.from_wire(ask_raw(proxy, dns.message.make_query("many.allowed.test", "A")))
    assert plain.flags & dns.flags.TC
    assert not plain.answer
    with_edns = dns.message.make_query("many.allowed.test", "A", use_edns=0, payload=1232)
    assert len(addresses(dns.message.from_wire(ask_raw(proxy, with_edns)))) == len(MANY)
    over_tcp = dns.message.make_query("many.allowed.test", "A")
    assert len(addresses(dns.message.from_wire(ask_raw(proxy, over_tcp, tcp=True)))) == len(MANY)


def test_a_truncated_upstream_answer_is_asked_again_over_tcp(
    proxy: ProxyProcess, dns_server: DnsServer
) -> None:
    answer = dns.message.from_wire(ask_raw(proxy, dns.message.make_query("big.allowed.test", "A")))
    assert not answer.flags & dns.flags.TC
    assert addresses(answer) == ["93.184.216.36"]
    transports = {q.transport for q in dns_server.queries("big.allowed.test")}
    assert transports == {"udp", "tcp"}
    assert answer.question[0].rdtype == dns.rdatatype.A
