"""socks/protocol.py: the SOCKS5 handshake as bytes in, events out — tables, then hypothesis for
adversarial bytes (any bytes, any split: never an exception, never more buffered than one
message, the same events whatever the split)."""

from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from egressgate.errors import Reason
from egressgate.socks.protocol import (
    COMMON_GREETINGS,
    MAX_AUTH_BYTES,
    MAX_GREETING_BYTES,
    MAX_REQUEST_BYTES,
    SOCKS4_REJECTED,
    AddressType,
    Credentials,
    Event,
    Method,
    MethodChosen,
    Rejected,
    ReplyCode,
    Request,
    SocksParser,
    method_reply,
    reply,
    reply_code,
)

GREETING = b"\x05\x01\x00"
GREETING_LOGIN = b"\x05\x02\x00\x02"


def connect(atyp: int, address: bytes, port: int = 443, command: int = 1) -> bytes:
    return bytes((5, command, 0, atyp)) + address + struct.pack("!H", port)


def name(text: str) -> bytes:
    raw = text.encode()
    return bytes((len(raw),)) + raw


def auth(user: bytes, password: bytes) -> bytes:
    return bytes((1, len(user))) + user + bytes((len(password),)) + password


def feed_all(parser: SocksParser, chunks: list[bytes]) -> list[Event]:
    events: list[Event] = []
    for chunk in chunks:
        events += parser.feed(chunk)
    return events


# ---- tables
@pytest.mark.parametrize(
    ("data", "events"),
    [
        (
            GREETING + connect(3, name("Example.COM"), 443),
            [MethodChosen(Method.NO_AUTH), Request("Example.COM", 443, AddressType.DOMAIN)],
        ),
        (
            GREETING + connect(1, bytes((192, 0, 2, 1)), 22),
            [MethodChosen(Method.NO_AUTH), Request("192.0.2.1", 22, AddressType.IPV4)],
        ),
        (
            GREETING + connect(4, ipaddress.IPv6Address("2001:db8::1").packed, 65535),
            [MethodChosen(Method.NO_AUTH), Request("2001:db8::1", 65535, AddressType.IPV6)],
        ),
        # no-auth preferred when the proxy checks no passwords; user/password still accepted
        (
            b"\x05\x01\x02" + auth(b"u", b"p"),
            [MethodChosen(Method.USER_PASSWORD), Credentials("u", "p")],
        ),
        (b"\x05\x01\x01", [MethodChosen(Method.NO_ACCEPTABLE)]),  # GSSAPI only
    ],
)
def test_exchanges(data: bytes, events: list[Event]) -> None:
    assert SocksParser(login=False).feed(data) == events


def test_login_required_accepts_only_user_password() -> None:
    assert SocksParser(login=True).feed(GREETING) == [MethodChosen(Method.NO_ACCEPTABLE)]
    parser = SocksParser(login=True)
    events = parser.feed(
        GREETING_LOGIN + auth(b"alice", "pässword".encode()) + connect(3, name("a.test"))
    )
    assert events == [
        MethodChosen(Method.USER_PASSWORD),
        Credentials("alice", "pässword"),
        Request("a.test", 443, AddressType.DOMAIN),
    ]
    # empty user and password are well-formed (verification refuses them)
    assert SocksParser(login=True).feed(GREETING_LOGIN + b"\x01\x00\x00")[1] == Credentials("", "")


@pytest.mark.parametrize(
    ("data", "reason", "reply_bytes"),
    [
        (
            b"\x04\x01\x00\x50\x01\x02\x03\x04\x00",
            Reason.SOCKS_VERSION_UNSUPPORTED,
            SOCKS4_REJECTED,
        ),
        (b"GET / HTTP/1.1\r\n", Reason.BAD_REQUEST, b""),
        (b"\x16\x03\x01", Reason.BAD_REQUEST, b""),  # TLS to the SOCKS port
        (b"\x05\x00", Reason.BAD_REQUEST, b"\x05\xff"),  # no methods
        (
            GREETING + connect(3, name("a.test"), command=2),
            Reason.SOCKS_COMMAND_UNSUPPORTED,
            reply(ReplyCode.COMMAND_NOT_SUPPORTED),
        ),
        (
            GREETING + connect(3, name("a.test"), command=3),
            Reason.SOCKS_COMMAND_UNSUPPORTED,
            reply(ReplyCode.COMMAND_NOT_SUPPORTED),
        ),
        (
            GREETING + connect(3, name("a.test"), command=0),
            Reason.SOCKS_COMMAND_UNSUPPORTED,
            reply(ReplyCode.COMMAND_NOT_SUPPORTED),
        ),
        (
            GREETING + b"\x05\x01\x00\x02",
            Reason.SOCKS_ADDRESS_TYPE_UNSUPPORTED,
            reply(ReplyCode.ADDRESS_TYPE_NOT_SUPPORTED),
        ),
        (
            GREETING + b"\x05\x01\x01\x01",
            Reason.BAD_REQUEST,
            reply(ReplyCode.GENERAL_FAILURE),
        ),  # RSV
        (GREETING + b"\x04\x01\x00\x01", Reason.BAD_REQUEST, reply(ReplyCode.GENERAL_FAILURE)),
        (
            GREETING + connect(3, b"\x02\xff\xfe"),
            Reason.HOST_NOT_ALLOWED,
            reply(ReplyCode.NOT_ALLOWED),
        ),
        (b"\x05\x01\x02\x05\x01u\x01p", Reason.BAD_REQUEST, b"\x01\x01"),  # sub-negotiation v5
    ],
)
def test_rejections_carry_a_reason_and_a_reply_the_client_can_read(
    data: bytes, reason: Reason, reply_bytes: bytes
) -> None:
    parser = SocksParser(login=False)
    events = parser.feed(data)
    last = events[-1]
    assert isinstance(last, Rejected), events
    assert last.reason is reason
    assert last.reply == reply_bytes
    assert last.detail
    assert parser.done
    assert parser.feed(b"more") == []  # nothing is parsed after a rejection


def test_bytes_after_the_request_are_the_tunnels() -> None:
    parser = SocksParser(login=False)
    parser.feed(GREETING + connect(3, name("a.test")) + b"\x16\x03\x01")
    assert parser.done
    assert parser.rest() == b"\x16\x03\x01"


def test_replies() -> None:
    assert reply(ReplyCode.NOT_ALLOWED) == b"\x05\x02\x00\x01" + bytes(6)
    assert (
        reply(ReplyCode.SUCCEEDED, ("10.0.0.5", 40000))
        == b"\x05\x00\x00\x01\x0a\x00\x00\x05\x9c\x40"
    )
    six = reply(ReplyCode.SUCCEEDED, ("2001:db8::5", 1))
    assert six[:4] == b"\x05\x00\x00\x04"
    assert len(six) == 4 + 16 + 2


@pytest.mark.parametrize(
    ("reason", "code"),
    [
        (Reason.HOST_NOT_ALLOWED, 2),
        (Reason.PORT_NOT_ALLOWED, 2),
        (Reason.PRIVATE_ADDRESS, 2),
        (Reason.IP_LITERAL_NOT_ALLOWED, 2),
        (Reason.AUTH_REQUIRED, 2),
        (Reason.DNS_NXDOMAIN, 4),
        (Reason.DNS_NO_ADDRESS, 4),
        (Reason.UPSTREAM_UNREACHABLE, 4),
        (Reason.UPSTREAM_REFUSED, 5),
        (Reason.UPSTREAM_TIMEOUT, 6),
        (Reason.DNS_TIMEOUT, 6),
        (Reason.SOCKS_COMMAND_UNSUPPORTED, 7),
        (Reason.SOCKS_ADDRESS_TYPE_UNSUPPORTED, 8),
        (Reason.UPSTREAM_ERROR, 1),
        (Reason.BAD_REQUEST, 1),
    ],
)
def test_reply_codes(reason: Reason, code: int) -> None:
    assert reply_code(reason) == code


def test_every_reason_has_a_reply_code() -> None:
    for reason in Reason:
        assert reply_code(reason) in ReplyCode


# ---- hypothesis: hostile bytes
def splits(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    chunks, start = [], 0
    for point in points:
        chunks.append(data[start:point])
        start = point
    chunks.append(data[start:])
    return chunks


valid_exchange = st.builds(
    lambda login, user, password, atyp_addr, port, tail: (
        (b"\x05\x01\x02" + auth(user, password) if login else GREETING)
        + connect(atyp_addr[0], atyp_addr[1], port)
        + tail
    ),
    st.booleans(),
    st.binary(max_size=255),
    st.binary(max_size=255),
    st.one_of(
        st.binary(min_size=4, max_size=4).map(lambda b: (1, b)),
        st.binary(min_size=16, max_size=16).map(lambda b: (4, b)),
        st.text(st.characters(codec="ascii"), max_size=255).map(lambda t: (3, name(t))),
    ),
    st.integers(0, 65535),
    st.binary(max_size=64),
)
hostile = st.one_of(
    st.binary(max_size=2048),
    valid_exchange,
    valid_exchange.flatmap(lambda d: st.integers(0, len(d)).map(lambda i: d[:i] + b"\xff" + d[i:])),
)


@given(hostile, st.lists(st.integers(0, 4096), max_size=8), st.booleans())
def test_any_bytes_any_split_same_events_and_bounded(
    data: bytes, cuts: list[int], login: bool
) -> None:
    whole = SocksParser(login)
    expected = whole.feed(data)
    parser = SocksParser(login)
    events: list[Event] = []
    for chunk in splits(data, cuts):
        events += parser.feed(chunk)
        # never more buffered than the largest message of any phase
        assert len(parser._buffer) < max(MAX_GREETING_BYTES, MAX_AUTH_BYTES, MAX_REQUEST_BYTES)
    assert events == expected
    assert parser.rest() == whole.rest()
    rejected = [e for e in events if isinstance(e, Rejected)]
    assert len(rejected) <= 1
    if rejected:
        assert events[-1] is rejected[0]
    requests = [e for e in events if isinstance(e, Request)]
    assert len(requests) <= 1
    for request in requests:
        assert 0 <= request.port <= 65535
        assert len(request.host) <= 255


@given(valid_exchange)
def test_valid_exchanges_end_with_their_request(data: bytes) -> None:
    parser = SocksParser(login=False)
    events = parser.feed(data)
    # a DOMAINNAME that is not UTF-8 cannot be built by valid_exchange (ASCII text)
    assert isinstance(events[-1], Request), events
    assert parser.done


# ---- the quick path (quick_greeting, quick_request) gives what feed gives, or steps aside


def _state(parser: SocksParser) -> tuple[object, ...]:
    return (parser.done, parser.started, parser.bytes_read, parser.rest())


_GREETING_INPUTS = st.one_of(
    st.sampled_from(COMMON_GREETINGS),
    st.builds(lambda m: bytes([5, len(m), *m]), st.lists(st.integers(0, 255), max_size=4)),
    st.binary(max_size=10),
)


@given(login=st.booleans(), data=_GREETING_INPUTS)
def test_quick_greeting_answers_as_feed_does_or_changes_nothing(login: bool, data: bytes) -> None:
    quick, general = SocksParser(login), SocksParser(login)
    events = general.feed(data)
    reply_bytes = quick.quick_greeting(data)
    if reply_bytes is None:
        assert _state(quick) == _state(SocksParser(login))  # untouched: feed it instead
        assert quick.feed(data) == events
        return
    assert data in COMMON_GREETINGS
    assert len(events) == 1
    assert isinstance(events[0], MethodChosen)
    assert events[0].method is not Method.NO_ACCEPTABLE
    assert reply_bytes == method_reply(events[0].method)
    assert _state(quick) == _state(general)
    follow = b"\x01\x01u\x01p" if events[0].method is Method.USER_PASSWORD else b"\x05\x01\x00"
    assert quick.feed(follow) == general.feed(follow)  # the same phase afterwards


_NAMES = st.one_of(st.binary(max_size=20), st.text(max_size=12).map(lambda t: t.encode()))
_REQUEST_INPUTS = st.one_of(
    st.builds(
        lambda name, port: (
            b"\x05\x01\x00\x03" + bytes([len(name)]) + name + port.to_bytes(2, "big")
        ),
        _NAMES,
        st.integers(0, 65535),
    ),
    st.builds(
        lambda ip, port: b"\x05\x01\x00\x01" + ip + port.to_bytes(2, "big"),
        st.binary(min_size=4, max_size=4),
        st.integers(0, 65535),
    ),
    st.builds(lambda a, b: a + b, st.binary(min_size=4, max_size=8), st.binary(max_size=8)),
    st.binary(max_size=12),
)


@given(data=_REQUEST_INPUTS, extra=st.sampled_from([b"", b"\x16\x03\x01"]))
def test_quick_request_gives_feeds_request_or_changes_nothing(data: bytes, extra: bytes) -> None:
    quick, general = SocksParser(False), SocksParser(False)
    for parser in (quick, general):
        assert parser.feed(b"\x05\x01\x00") == [MethodChosen(Method.NO_AUTH)]
    before = _state(quick)
    data += extra  # bytes after the request (an optimistic ClientHello): never the quick path
    events = general.feed(data)
    request = quick.quick_request(data)
    if request is None:
        assert _state(quick) == before
        assert quick.feed(data) == events
        return
    assert not extra
    assert events == [request]
    assert _state(quick) == _state(general)
