"""DNS messages for the guard, through dnspython: queries in, answers out. No I/O, no policy.

Every untrusted message (a client's query, an upstream answer) is decoded by dnspython; the only
bytes read before that are the two the guard needs before trusting a decoder with anything: the
message ID (to address a FORMERR) and the QR bit (a response is never answered, so two guards
can never ping-pong).

Two messages of a fixed shape are assembled from parts instead of being rendered by dnspython,
because they are on the forwarded path of every new name and rendering a message costs about
350 Python calls (measured: docs/performance.md):
  - the upstream query (`upstream_request`): a 12-byte header (our random ID, RD, one question),
    the question name as dnspython renders it, the type and class. No EDNS: the client's bytes
    never leave the process, and an answer over 512 bytes comes truncated and is asked again
    over TCP;
  - the forwarded answer (`patched_answer`): the upstream's own answer, once dnspython has
    decoded all of it and it answers our question, with its header re-addressed to the client
    (the client's ID, RD and CD; RA; the upstream's AA and rcode), the client's question bytes
    (its letter case) in place of ours (the same length, so every compression pointer still
    points where it did), and an OPT record of ours when the client sent EDNS.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.svcbbase
import dns.rrset

from egressgate.names.hostname import IPAddress

HEADER_BYTES = 12
UDP_PLAIN_BYTES = 512  # a UDP answer to a query without EDNS (RFC 1035)
TCP_MAX_BYTES = 65535  # a TCP frame's length prefix is 16 bits (RFC 7766)
UPSTREAM_PAYLOAD_BYTES = 1232  # EDNS buffer size offered upstream (the DNS flag day 2020 value)
_SVCB_TYPES = (dns.rdatatype.SVCB, dns.rdatatype.HTTPS)
_HINTS = (dns.rdtypes.svcbbase.ParamKey.IPV4HINT, dns.rdtypes.svcbbase.ParamKey.IPV6HINT)


class Unanswerable(Exception):
    """A query that gets FORMERR (`reply` set) or no answer at all (`reply` None)."""

    def __init__(self, reply: bytes | None, why: str) -> None:
        super().__init__(why)
        self.reply = reply
        self.why = why


@dataclass(frozen=True, slots=True)
class Query:
    """One decoded client query with exactly one question."""

    message: dns.message.Message
    qname: dns.name.Name
    name: str  # lowercase, no trailing dot: what policy matches
    qtype: dns.rdatatype.RdataType
    qclass: dns.rdataclass.RdataClass
    opcode: dns.opcode.Opcode

    @property
    def type_text(self) -> str:
        return dns.rdatatype.to_text(self.qtype)

    def max_answer_bytes(self, tcp: bool) -> int:
        """The largest answer this client takes: its EDNS size over UDP, 512 without EDNS."""
        if tcp:
            return TCP_MAX_BYTES
        if self.message.edns < 0:
            return UDP_PLAIN_BYTES
        return min(max(self.message.payload, UDP_PLAIN_BYTES), TCP_MAX_BYTES)


def parse_query(data: bytes) -> Query:
    """Decode a client's query; raises Unanswerable with a FORMERR reply or with None."""
    if len(data) < HEADER_BYTES:
        raise Unanswerable(None, "shorter than a DNS header")
    if int.from_bytes(data[2:4], "big") & dns.flags.QR:
        raise Unanswerable(None, "a response, not a query")
    try:
        message = dns.message.from_wire(data)
    except Exception as exc:  # dnspython raises many kinds for hostile bytes: all are FORMERR
        raise Unanswerable(formerr(data), f"undecodable: {type(exc).__name__}") from None
    if len(message.question) != 1:
        raise Unanswerable(formerr(data), f"{len(message.question)} questions (expected 1)")
    question = message.question[0]
    qname = question.name
    name = qname.to_text(omit_final_dot=True).lower()
    return Query(message, qname, name, question.rdtype, question.rdclass, message.opcode())


def formerr(data: bytes) -> bytes:
    """A FORMERR answer carrying the query's ID and nothing else."""
    reply = dns.message.Message(id=int.from_bytes(data[0:2], "big"))
    reply.flags = dns.flags.QR
    reply.set_rcode(dns.rcode.FORMERR)
    return reply.to_wire()


def rcode_only(query: Query, rcode: dns.rcode.Rcode) -> bytes:
    """An answer with no records: NXDOMAIN, REFUSED, NOTIMP, SERVFAIL, or NOERROR (NODATA)."""
    reply = dns.message.make_response(query.message)
    reply.flags |= dns.flags.RA
    reply.set_rcode(rcode)
    return reply.to_wire()


def proxy_answer(query: Query, v4: tuple[str, ...], v6: tuple[str, ...], ttl_s: int) -> bytes:
    """A or AAAA records naming the proxy; every other type gets NODATA (no HTTPS hints that
    would lead the client to the real origin)."""
    reply = dns.message.make_response(query.message)
    reply.flags |= dns.flags.RA | dns.flags.AA
    addresses = v4 if query.qtype == dns.rdatatype.A else ()
    if query.qtype == dns.rdatatype.AAAA:
        addresses = v6
    if addresses:
        rrset = dns.rrset.from_text_list(
            query.qname, ttl_s, dns.rdataclass.IN, query.qtype, list(addresses)
        )
        reply.answer.append(rrset)
    return reply.to_wire()


def upstream_query(query: Query) -> dns.message.Message:
    """A fresh query for the same question: the client's own bytes (EDNS options, flags) never
    leave the process, so they cannot carry data to the upstream resolver."""
    return dns.message.make_query(
        query.qname,
        query.qtype,
        query.qclass,
        use_edns=0,
        payload=UPSTREAM_PAYLOAD_BYTES,
    )


_HEADER = struct.Struct("!HHHHHH")  # id, flags, qdcount, ancount, nscount, arcount
_TYPE_CLASS = struct.Struct("!HH")
# Our OPT record (RFC 6891): root owner, type OPT, class = our UDP payload size, TTL 0
# (extended rcode 0, version 0, no DO), no options.
_OUR_OPT = b"\x00" + struct.pack("!HHIH", 41, UPSTREAM_PAYLOAD_BYTES, 0, 0)
_KEEP_FROM_CLIENT = int(dns.flags.RD | dns.flags.CD)
_KEEP_FROM_UPSTREAM = int(dns.flags.AA) | 0x000F  # authoritative, and the (4-bit) rcode
_ANSWER_FLAGS = int(dns.flags.QR | dns.flags.RA)
_QUERY_FLAGS = int(dns.flags.RD)


def question_wire(query: Query) -> bytes:
    """The query's question section as the client wrote it (dnspython keeps the letter case)."""
    name = query.qname.to_wire()
    assert name is not None  # (to_wire returns None only when given a file to write to)
    return name + _TYPE_CLASS.pack(query.qtype, query.qclass)


def upstream_request(question: bytes, qid: int) -> bytes:
    """The query we send upstream for `question` (question_wire): see the module doc."""
    return _HEADER.pack(qid, _QUERY_FLAGS, 1, 0, 0, 0) + question


def answers_question(response: dns.message.Message, qid: int, query: Query) -> bool:
    """Whether a decoded upstream message is the answer to our query `qid` for `query`."""
    if response.id != qid or not response.flags & dns.flags.QR:
        return False
    if response.opcode() != dns.opcode.QUERY or len(response.question) != 1:
        return False
    asked = response.question[0]
    return bool(
        asked.name == query.qname and asked.rdtype == query.qtype and asked.rdclass == query.qclass
    )


def patched_answer(query: Query, question: bytes, wire: bytes, tcp: bool) -> bytes | None:
    """The upstream answer `wire` (decoded, answering `question`, without EDNS of its own: the
    caller checks) re-addressed to the client (see the module doc); None when it does not fit
    what the client takes: then `forwarded` renders it (truncated)."""
    end = HEADER_BYTES + len(question)
    if wire[HEADER_BYTES:end].lower() != question.lower():
        return None  # not our question's bytes where ours were (a compressed echo?): render
    client = query.message
    _, flags, qdcount, ancount, nscount, arcount = _HEADER.unpack_from(wire)
    flags = _ANSWER_FLAGS | (client.flags & _KEEP_FROM_CLIENT) | (flags & _KEEP_FROM_UPSTREAM)
    opt = b""
    if client.edns >= 0:
        opt = _OUR_OPT
        arcount += 1
    head = _HEADER.pack(client.id, flags, qdcount, ancount, nscount, arcount)
    reply = b"".join((head, question, memoryview(wire)[end:], opt))
    if len(reply) > query.max_answer_bytes(tcp):
        return None
    return reply


def forwarded(query: Query, upstream: dns.message.Message, tcp: bool) -> bytes:
    """The upstream answer re-addressed to the client (its ID, question, EDNS), truncated (TC,
    no records) when it does not fit what the client takes over UDP."""
    reply = dns.message.make_response(query.message)
    reply.flags |= dns.flags.RA | (upstream.flags & dns.flags.AA)
    reply.set_rcode(upstream.rcode())
    reply.answer = list(upstream.answer)
    reply.authority = list(upstream.authority)
    reply.additional = list(upstream.additional)
    try:
        return reply.to_wire(max_size=query.max_answer_bytes(tcp))
    except dns.exception.TooBig:
        reply.answer, reply.authority, reply.additional = [], [], []
        reply.flags |= dns.flags.TC
        return reply.to_wire()


def answer_addresses(upstream: dns.message.Message) -> tuple[IPAddress, ...]:
    """Every address an answer offers: A and AAAA records, and SVCB/HTTPS address hints."""
    found: list[IPAddress] = []
    for rrset in upstream.answer:
        if rrset.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
            found.extend(ipaddress.ip_address(rdata.address) for rdata in rrset)
        elif rrset.rdtype in _SVCB_TYPES:
            for rdata in rrset:
                for key in _HINTS:
                    hint = rdata.params.get(key)
                    if hint is not None:
                        found.extend(ipaddress.ip_address(a) for a in hint.addresses)
    return tuple(found)


def answer_ttl_s(upstream: dns.message.Message, low_s: float, high_s: float) -> float:
    """How long an answer may be kept: its smallest TTL (for a negative answer the SOA's
    negative TTL, RFC 2308), clamped to [low_s, high_s]."""
    ttls = [rrset.ttl for rrset in upstream.answer]
    if not ttls:
        for rrset in upstream.authority:
            if rrset.rdtype == dns.rdatatype.SOA:
                ttls.extend(min(rrset.ttl, rdata.minimum) for rdata in rrset)
    ttl = min(ttls) if ttls else low_s
    return min(max(float(ttl), low_s), high_s)
