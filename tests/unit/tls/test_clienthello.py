"""read_sni: the server name from the first bytes of a tunnel, without any TLS library.

Real ClientHellos come from Python's ssl module through a MemoryBIO (no socket). Hand-built ones
exercise the corners: RFC 8446 §4.1.2 (ClientHello), §5.1 (records: a handshake message "MAY be
fragmented across several records"), RFC 6066 §3 (server_name extension).
"""

from __future__ import annotations

import functools
import ssl

import pytest
from hypothesis import given
from hypothesis import strategies as st

from egressgate.tls.clienthello import MAX_HELLO_BYTES, HelloResult, read_sni


@functools.cache
def real_hello(
    server_name: str | None, maximum: ssl.TLSVersion = ssl.TLSVersion.MAXIMUM_SUPPORTED
) -> bytes:
    """The bytes Python's TLS client sends first (one or more TLS records)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.maximum_version = maximum
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=server_name)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def records(handshake: bytes, sizes: list[int]) -> bytes:
    """`handshake` (a handshake message) cut into TLS records of these payload sizes."""
    out, position = [], 0
    for size in [*sizes, len(handshake)]:
        piece = handshake[position : position + max(size, 1)]
        if not piece:
            break
        out.append(b"\x16\x03\x01" + len(piece).to_bytes(2, "big") + piece)
        position += len(piece)
    return b"".join(out)


def handshake_of(hello: bytes) -> bytes:
    """The handshake message inside a single-record hello."""
    length = int.from_bytes(hello[3:5], "big")
    assert len(hello) == 5 + length, "expected exactly one record"
    return hello[5:]


def built_hello(extensions: bytes | None) -> bytes:
    """A minimal ClientHello record; `extensions` is the raw extension list (None: no field)."""
    body = b"\x03\x03" + bytes(32) + b"\x00" + b"\x00\x02\x13\x01" + b"\x01\x00"
    if extensions is not None:
        body += len(extensions).to_bytes(2, "big") + extensions
    message = b"\x01" + len(body).to_bytes(3, "big") + body
    return records(message, [])


def extension(kind: int, data: bytes) -> bytes:
    return kind.to_bytes(2, "big") + len(data).to_bytes(2, "big") + data


def server_name(*entries: tuple[int, bytes]) -> bytes:
    names = b"".join(bytes([kind]) + len(name).to_bytes(2, "big") + name for kind, name in entries)
    return extension(0, len(names).to_bytes(2, "big") + names)


# ---------------------------------------------------------------------------------------------
# Real ClientHellos
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "maximum"),
    [
        ("example.com", ssl.TLSVersion.MAXIMUM_SUPPORTED),
        ("api.stripe.com", ssl.TLSVersion.TLSv1_2),
        ("a" * 63 + ".example", ssl.TLSVersion.MAXIMUM_SUPPORTED),
    ],
)
def test_real_client_hello_gives_its_server_name(name: str, maximum: ssl.TLSVersion) -> None:
    assert read_sni(real_hello(name, maximum)) == name


def test_server_name_keeps_the_case_the_client_sent() -> None:
    # Normalizing is the policy's job (decide_sni); read_sni reports the bytes.
    assert read_sni(real_hello("Example.COM")) == "Example.COM"


def test_internationalised_name_arrives_as_punycode() -> None:
    assert read_sni(real_hello("b\u00fccher.de")) == "xn--bcher-kva.de"


def test_client_hello_without_server_name_is_no_sni() -> None:
    assert read_sni(real_hello(None)) is HelloResult.NO_SNI


def test_client_hello_for_an_ip_address_is_no_sni() -> None:
    # RFC 6066 §3: literal IP addresses are not permitted in HostName, so clients omit it.
    assert read_sni(real_hello("203.0.113.7")) is HelloResult.NO_SNI


def test_bytes_after_the_client_hello_are_ignored() -> None:
    hello = real_hello("example.com")
    assert read_sni(hello + b"\x17\x03\x03\x00\x05early") == "example.com"


@pytest.mark.parametrize("name", ["example.com", None])
def test_every_truncation_of_a_client_hello_needs_more(name: str | None) -> None:
    hello = real_hello(name)
    results = {read_sni(hello[:cut]) for cut in range(len(hello))}
    assert results == {HelloResult.NEED_MORE}


@pytest.mark.parametrize("size", [1, 2, 3, 4, 5, 40, 100, 511])
def test_client_hello_fragmented_into_records_of_any_size(size: int) -> None:
    handshake = handshake_of(real_hello("example.com"))
    fragmented = records(handshake, [size] * (len(handshake) // size + 1))
    assert read_sni(fragmented) == "example.com"
    # Every cut for the coarse fragmentations; every 7th (and the last) for the finest, whose
    # thousands of records would make an every-byte sweep quadratic and slow.
    stride = 1 if size > 3 else 7
    cuts = [*range(0, len(fragmented), stride), len(fragmented) - 1]
    assert {read_sni(fragmented[:cut]) for cut in cuts} == {HelloResult.NEED_MORE}


@given(st.lists(st.integers(1, 600), max_size=10))
def test_client_hello_fragmented_anywhere_gives_the_same_name(sizes: list[int]) -> None:
    handshake = handshake_of(real_hello("example.com"))
    assert read_sni(records(handshake, sizes)) == "example.com"


# ---------------------------------------------------------------------------------------------
# Not TLS, malformed, and hand-built corners
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        b"GET / HTTP/1.1\r\n",
        b"SSH-2.0-OpenSSH_9.6\r\n",
        b"\x00",
        b"\x17\x03\x03\x00\x10",  # TLS application data is not a hello
        b"\x16\x00\x00\x00\x05hello",  # handshake type byte, but not TLS's version byte
        b"\x16\x02\x00\x00\x05hello",
    ],
)
def test_non_tls_first_bytes_are_not_tls(data: bytes) -> None:
    assert read_sni(data) is HelloResult.NOT_TLS


@pytest.mark.parametrize("data", [b"", b"\x16", b"\x16\x03", b"\x16\x03\x01\x02"])
def test_too_few_bytes_need_more(data: bytes) -> None:
    assert read_sni(data) is HelloResult.NEED_MORE


@pytest.mark.parametrize(
    "data",
    [
        b"\x16\x03\x01\x00\x00",  # an empty record
        b"\x16\x03\x01\x48\x01" + bytes(10),  # record longer than 2^14 + 2048 (RFC 5246 §6.2.3)
        records(b"\x02\x00\x00\x04" + bytes(4), []),  # a ServerHello, not a ClientHello
        # a hello fragment followed by a record that is not a handshake record
        b"\x16\x03\x01\x00\x02\x01\x00" + b"\x17\x03\x03\x00\x02ab",
    ],
)
def test_malformed_records_are_malformed(data: bytes) -> None:
    assert read_sni(data) is HelloResult.MALFORMED


def test_a_hello_declaring_more_than_the_limit_is_too_large_from_its_first_record() -> None:
    # A handshake length of 16 MiB: known from the header, no need to wait for the bytes.
    header = b"\x01\xff\xff\xff"
    assert read_sni(records(header + bytes(100), [])) is HelloResult.TOO_LARGE
    payload = header + bytes(MAX_HELLO_BYTES)
    data = records(payload, [16384] * 8)[: MAX_HELLO_BYTES + 100]
    assert read_sni(data) is HelloResult.TOO_LARGE


@pytest.mark.parametrize(
    ("declared", "expected"),
    [
        (MAX_HELLO_BYTES - 4, HelloResult.NEED_MORE),  # the largest hello that fits: wait for it
        (MAX_HELLO_BYTES - 3, HelloResult.TOO_LARGE),  # one byte more: refused at once
    ],
)
def test_the_hello_size_limit_boundary(declared: int, expected: HelloResult) -> None:
    header = b"\x01" + declared.to_bytes(3, "big")
    assert read_sni(records(header + bytes(100), [])) is expected


def test_a_hello_in_tiny_records_whose_overhead_passes_the_limit_is_too_large() -> None:
    message = b"\x01" + (20000).to_bytes(3, "big") + bytes(20000)
    data = records(message, [1] * 30000)[:MAX_HELLO_BYTES]
    assert read_sni(data) is HelloResult.TOO_LARGE


def test_a_later_record_with_a_foreign_version_byte_is_malformed_not_non_tls() -> None:
    # "not TLS" would let tunnels_without_sni: allow relay the hello unchecked.
    first = b"\x16\x03\x01\x00\x04" + b"\x01\x00\x01\x00"
    assert read_sni(first + b"\x16\x00\x00\x00\x05hello") is HelloResult.MALFORMED


HAND_BUILT: list[tuple[bytes | None, str | HelloResult]] = [
    (server_name((0, b"example.com")), "example.com"),
    (extension(10, b"\x00\x02\x00\x1d") + server_name((0, b"late.example")), "late.example"),
    (None, HelloResult.NO_SNI),  # a hello with no extensions field at all
    (b"", HelloResult.NO_SNI),
    (extension(10, b"\x00\x02\x00\x1d"), HelloResult.NO_SNI),
    (server_name(), HelloResult.NO_SNI),  # an empty server name list
    (server_name((1, b"other-type"), (0, b"second.example")), "second.example"),
    (server_name((0, b"")), HelloResult.MALFORMED),
    (server_name((0, "b\u00fccher.de".encode())), HelloResult.MALFORMED),  # not ASCII
    (extension(0, b"\x00\x10\x00\x00\x20short"), HelloResult.MALFORMED),  # name overruns
    (b"\x00\x00\xff\xff", HelloResult.NO_SNI),  # an extension header overrunning the list
]


@pytest.mark.parametrize(
    ("extensions", "expected"), HAND_BUILT, ids=[repr(e) for e in range(len(HAND_BUILT))]
)
def test_hand_built_client_hellos(extensions: bytes | None, expected: str | HelloResult) -> None:
    assert read_sni(built_hello(extensions)) == expected


def test_extensions_length_overrunning_the_hello_is_malformed() -> None:
    body = b"\x03\x03" + bytes(32) + b"\x00" + b"\x00\x02\x13\x01" + b"\x01\x00" + b"\x01\x00"
    message = b"\x01" + len(body).to_bytes(3, "big") + body
    assert read_sni(records(message, [])) is HelloResult.MALFORMED


# ---------------------------------------------------------------------------------------------
# Properties: never an exception
# ---------------------------------------------------------------------------------------------


def _valid_result(result: object) -> bool:
    return isinstance(result, HelloResult) or (isinstance(result, str) and result.isascii())


@given(st.binary(max_size=400))
def test_arbitrary_bytes_never_raise(data: bytes) -> None:
    assert _valid_result(read_sni(data))


@given(st.binary(max_size=400))
def test_garbage_after_a_handshake_record_header_never_raises(data: bytes) -> None:
    result = read_sni(b"\x16\x03\x01" + data)
    assert _valid_result(result)


@given(st.data())
def test_corrupted_real_hello_never_raises(data: st.DataObject) -> None:
    hello = bytearray(real_hello("example.com"))
    for _ in range(data.draw(st.integers(1, 4))):
        hello[data.draw(st.integers(0, len(hello) - 1))] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(hello)))
    assert _valid_result(read_sni(bytes(hello[:cut])))


def test_a_declared_oversize_hello_is_too_large_whatever_follows() -> None:
    # Found by tests/fuzz: the handshake header declares 65,535 bytes (over MAX_HELLO_BYTES);
    # the answer must not change when a broken second record arrives later.
    first_record = b"\x16\x03\x01\x02\x00" + b"\x01\x00\xff\xff" + bytes(508)
    data = first_record + b"\x00" * 5
    assert read_sni(first_record[:9]) is HelloResult.TOO_LARGE
    assert read_sni(data) is HelloResult.TOO_LARGE
