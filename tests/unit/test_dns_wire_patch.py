"""dns_wire's assembled messages (pure): the upstream query, and the upstream answer re-addressed
to the client, checked by decoding them with dnspython."""

from __future__ import annotations

import dns.flags
import dns.message
import dns.rdatatype
import dns.rrset

from egressgate.proxy import dns_wire


def _client(name: str = "WwW.Example.TEST", edns: bool = False) -> dns_wire.Query:
    query = dns.message.make_query(name, "A", use_edns=0 if edns else False)
    query.id = 0x1234
    query.flags |= dns.flags.CD
    return dns_wire.parse_query(query.to_wire())


def _upstream_answer(question: bytes, qid: int) -> tuple[bytes, dns.message.Message]:
    request = dns.message.from_wire(dns_wire.upstream_request(question, qid))
    response = dns.message.make_response(request)
    response.flags |= dns.flags.AA
    response.answer.append(
        dns.rrset.from_text(request.question[0].name, 60, "IN", "A", "192.0.2.7")
    )
    wire = response.to_wire()
    return wire, dns.message.from_wire(wire)


def test_the_upstream_query_is_the_question_without_edns() -> None:
    query = _client()
    request = dns.message.from_wire(dns_wire.upstream_request(dns_wire.question_wire(query), 77))
    assert request.id == 77
    assert request.flags == dns.flags.RD
    assert request.edns < 0
    assert request.question[0].name == query.qname
    assert request.question[0].rdtype == dns.rdatatype.A


def test_the_answer_is_readdressed_to_the_client() -> None:
    for edns in (False, True):
        query = _client(edns=edns)
        question = dns_wire.question_wire(query)
        wire, upstream = _upstream_answer(question, 99)
        assert dns_wire.answers_question(upstream, 99, query)
        assert not dns_wire.answers_question(upstream, 98, query)
        reply = dns_wire.patched_answer(query, question, wire, tcp=False)
        assert reply is not None
        answer = dns.message.from_wire(reply)
        assert answer.id == 0x1234
        assert answer.flags & dns.flags.CD
        assert answer.flags & dns.flags.AA
        assert answer.flags & dns.flags.RA
        assert (answer.edns >= 0) == edns
        assert answer.question[0].name.to_text() == "WwW.Example.TEST."
        assert [r.to_text() for r in answer.answer[0]] == ["192.0.2.7"]


def test_a_question_echoed_in_other_bytes_is_not_spliced() -> None:
    query = _client()
    question = dns_wire.question_wire(query)
    wire, _ = _upstream_answer(question, 5)
    forged = wire[:12] + b"\x03xyz" + wire[16:]  # same length, other labels where ours were
    assert dns_wire.patched_answer(query, question, forged, tcp=False) is None


def test_too_large_for_the_client_is_left_to_the_renderer() -> None:
    query = _client()
    question = dns_wire.question_wire(query)
    request = dns.message.from_wire(dns_wire.upstream_request(question, 1))
    response = dns.message.make_response(request)
    addresses = [f"192.0.2.{i}" for i in range(1, 60)]
    response.answer.append(
        dns.rrset.from_text_list(request.question[0].name, 60, "IN", "A", addresses)
    )
    wire = response.to_wire()
    assert len(wire) > dns_wire.UDP_PLAIN_BYTES
    assert dns_wire.patched_answer(query, question, wire, tcp=False) is None
    assert dns_wire.patched_answer(query, question, wire, tcp=True) is not None
