"""Fuzz the ClientHello reader (tls/clienthello.py) the way a hostile tunnel client would.

Inputs: real ClientHellos from Python's ssl (random server names, TLS 1.2 and 1.3) cut into
random records; the same with their length fields (record, handshake, session id, cipher suites,
extensions, server_name list, name) set to boundary values; random bytes behind a handshake
record header; truncations of all of these. Properties:

1. `read_sni` never raises, and answers a name, NEED_MORE, NOT_TLS, NO_SNI or MALFORMED.
2. A name it answers is non-empty ASCII and was in the input (never made up).
3. A real ClientHello gives its own name however it is fragmented, and every strict prefix of
   it gives NEED_MORE.
4. Once it gives a final answer for the bytes so far, more bytes do not change it: the answer
   does not depend on how the client's bytes were split into reads.
5. It is bounded: a call on up to MAX_HELLO_BYTES (64 KiB) of anything takes well under a second.
"""

from __future__ import annotations

import functools
import ssl
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from egressgate.tls.clienthello import MAX_HELLO_BYTES, HelloResult, read_sni
from tests.fuzz.budget import fuzz_settings

LABEL = st.text("abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=20).filter(
    lambda s: not s.startswith("-") and not s.endswith("-")
)
# Python's ssl sends no SNI for an IP address: keep the last label non-numeric.
NAMES = (
    st.lists(LABEL, min_size=1, max_size=5)
    .map(".".join)
    .filter(lambda n: len(n) <= 253 and not n.rsplit(".", 1)[-1].isdigit())
)
VERSIONS = st.sampled_from([ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.MAXIMUM_SUPPORTED])
BOUNDARY = (0, 1, 2, 3, 0x7F, 0x80, 0xFF, 0x100, 0x3FFF, 0x4800, 0x4801, 0xFFFF)


@functools.lru_cache(maxsize=256)
def real_hello(name: str, maximum: ssl.TLSVersion) -> bytes:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.maximum_version = maximum
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=name)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def fragmented(hello: bytes, sizes: list[int]) -> bytes:
    """The handshake message of a one-record `hello` re-cut into records of `sizes` bytes."""
    message = hello[5:]
    out, position = [], 0
    for size in [*sizes, len(message)]:
        piece = message[position : position + max(size, 1)]
        if not piece:
            break
        out.append(hello[:3] + len(piece).to_bytes(2, "big") + piece)
        position += len(piece)
    return b"".join(out)


def length_fields(hello: bytes) -> list[tuple[int, int]]:
    """(offset, width) of every length field of a one-record ClientHello with SNI first-found."""
    fields = [(3, 2), (6, 3)]  # record length, handshake length
    body = 9  # record header 5, handshake header 4
    pos = body + 2 + 32
    fields.append((pos, 1))  # legacy_session_id
    pos += 1 + hello[pos]
    fields.append((pos, 2))  # cipher_suites
    pos += 2 + int.from_bytes(hello[pos : pos + 2], "big")
    fields.append((pos, 1))  # compression methods
    pos += 1 + hello[pos]
    fields.append((pos, 2))  # extensions
    pos += 2
    while pos + 4 <= len(hello):
        kind = int.from_bytes(hello[pos : pos + 2], "big")
        fields.append((pos + 2, 2))  # this extension's length
        if kind == 0:
            fields += [(pos + 4, 2), (pos + 7, 2)]  # server_name_list, host_name
            break
        pos += 4 + int.from_bytes(hello[pos + 2 : pos + 4], "big")
    return fields


def payloads(data: bytes) -> bytes:
    """The record payloads of `data` joined (a name may straddle two records)."""
    out, pos = bytearray(), 0
    while pos + 5 <= len(data):
        length = int.from_bytes(data[pos + 3 : pos + 5], "big")
        out += data[pos + 5 : pos + 5 + length]
        pos += 5 + length
    return bytes(out)


def valid(result: object, data: bytes) -> bool:
    if isinstance(result, HelloResult):
        return True
    if not isinstance(result, str) or result == "" or not result.isascii():
        return False
    name = result.encode("ascii")
    return name in data or name in payloads(data)


def timed_read(data: bytes) -> str | HelloResult:
    start = time.perf_counter()
    result = read_sni(data)
    assert time.perf_counter() - start < 1.0, f"read_sni took too long on {len(data)} bytes"
    assert valid(result, data), (result, data[:100])
    return result


@st.composite
def mutated_hellos(draw: st.DrawFn) -> bytes:
    hello = bytearray(real_hello(draw(NAMES), draw(VERSIONS)))
    fields = length_fields(bytes(hello))
    for _ in range(draw(st.integers(1, 3))):
        offset, width = draw(st.sampled_from(fields))
        value = draw(st.sampled_from(BOUNDARY)) if width > 1 else draw(st.integers(0, 255))
        value += draw(st.sampled_from([0, 0, 1, -1])) if value else 0
        value %= 1 << (8 * width)
        hello[offset : offset + width] = value.to_bytes(width, "big")
    if draw(st.booleans()):
        hello[draw(st.integers(0, len(hello) - 1))] = draw(st.integers(0, 255))
    cut = draw(st.integers(0, len(hello)))
    return bytes(hello[:cut]) + draw(st.binary(max_size=32))


@fuzz_settings(fast=150, deep=5000)
@given(NAMES, VERSIONS, st.lists(st.integers(1, 700), max_size=8))
def test_real_hellos_give_their_name_however_fragmented(
    name: str, version: ssl.TLSVersion, sizes: list[int]
) -> None:
    data = fragmented(real_hello(name, version), sizes)
    assert timed_read(data) == name
    for cut in range(0, len(data), max(1, len(data) // 40)):
        assert read_sni(data[:cut]) is HelloResult.NEED_MORE, cut


@fuzz_settings(fast=400, deep=30_000)
@given(st.one_of(mutated_hellos(), st.binary(max_size=600).map(lambda b: b"\x16\x03\x01" + b)))
def test_mutated_hellos_never_raise_and_answers_do_not_depend_on_the_split(data: bytes) -> None:
    final = timed_read(data)
    for cut in range(len(data) + 1):
        early = read_sni(data[:cut])
        assert valid(early, data[:cut])
        if early is not HelloResult.NEED_MORE:
            assert early == final, f"{early} after {cut} bytes, {final} after all {len(data)}"
            break


@fuzz_settings(fast=20, deep=300)
@given(st.sampled_from([1, 2, 3, 5, 100, 16384]), st.integers(0, 255))
def test_large_inputs_are_read_in_bounded_time(record_size: int, filler: int) -> None:
    """Up to 64 KiB of tiny records, or of one record type with filler: still bounded."""
    record = b"\x16\x03\x01" + record_size.to_bytes(2, "big") + bytes([filler]) * record_size
    data = (record * (MAX_HELLO_BYTES // len(record) + 1))[: MAX_HELLO_BYTES + 10]
    timed_read(data)
    timed_read(b"\x16\x03\x01\x48\x00" + bytes([filler]) * MAX_HELLO_BYTES)
