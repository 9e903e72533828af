"""proxy/dns_wire.py: hostile bytes in, well-formed answers out (dnspython underneath)."""

from __future__ import annotations

import ipaddress

import dns.flags
import dns.message
import dns.rcode
import dns.rrset
import pytest
from hypothesis import given
from hypothesis import strategies as st

from egressgate.proxy import dns_wire
from egressgate.proxy.dns_wire import Unanswerable


@given(st.binary(max_size=700))
def test_any_bytes_give_a_query_or_unanswerable(data: bytes) -> None:
    try:
        query = dns_wire.parse_query(data)
    except Unanswerable as exc:
        failed: bytes | None = exc.reply
        query = None
    if query is None:
        if failed is not None:
            assert dns.message.from_wire(failed).rcode() == dns.rcode.FORMERR
            assert failed[:2] == data[:2]
        return
    assert query.name == query.name.lower()
    dns_wire.rcode_only(query, dns.rcode.NXDOMAIN)  # every decoded query can be answered


def test_short_and_response_packets_get_no_answer() -> None:
    with pytest.raises(Unanswerable) as short:
        dns_wire.parse_query(b"\x00\x01\x00")
    assert short.value.reply is None
    response = dns.message.make_response(dns.message.make_query("a.test", "A")).to_wire()
    with pytest.raises(Unanswerable) as looped:
        dns_wire.parse_query(response)
    assert looped.value.reply is None


def test_two_questions_are_formerr() -> None:
    query = dns.message.make_query("a.test", "A")
    query.question.append(dns.rrset.RRset(dns.name.from_text("b.test"), 1, 1))
    with pytest.raises(Unanswerable) as exc:
        dns_wire.parse_query(query.to_wire())
    assert exc.value.reply is not None


def test_forwarded_answer_truncates_for_a_plain_udp_client() -> None:
    query = dns_wire.parse_query(dns.message.make_query("big.test", "A", use_edns=False).to_wire())
    upstream = dns.message.make_response(dns.message.make_query("big.test", "A"))
    addresses = [f"93.184.{i // 256}.{i % 256}" for i in range(60)]
    upstream.answer.append(dns.rrset.from_text_list("big.test.", 60, "IN", "A", addresses))
    over_udp = dns.message.from_wire(dns_wire.forwarded(query, upstream, tcp=False))
    assert over_udp.flags & dns.flags.TC
    assert not over_udp.answer
    over_tcp = dns.message.from_wire(dns_wire.forwarded(query, upstream, tcp=True))
    assert len(over_tcp.answer[0]) == 60


def test_answer_addresses_include_svcb_hints_and_ttl_is_clamped() -> None:
    upstream = dns.message.make_response(dns.message.make_query("a.test", "HTTPS"))
    upstream.answer.append(
        dns.rrset.from_text_list(
            "a.test.", 3600, "IN", "HTTPS", ['1 . alpn="h2" ipv4hint="10.0.0.1" ipv6hint="fd00::1"']
        )
    )
    assert dns_wire.answer_addresses(upstream) == (
        ipaddress.ip_address("10.0.0.1"),
        ipaddress.ip_address("fd00::1"),
    )
    assert dns_wire.answer_ttl_s(upstream, 1.0, 300.0) == 300.0
    empty = dns.message.make_response(dns.message.make_query("a.test", "A"))
    assert dns_wire.answer_ttl_s(empty, 2.0, 300.0) == 2.0
