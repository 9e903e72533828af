"""Sans-IO TLS ClientHello reader: the first bytes of a tunnel → the SNI server name.

Decrypts nothing and needs no TLS library: it reads the plaintext handshake record that opens
every TLS connection (RFC 8446 §4.1.2, RFC 5246 §7.4.1.2) and the server_name extension
(RFC 6066 §3). The handshake message may span several records (post-quantum key shares make
1.5-2 KB hellos, split by some clients); bytes are accumulated up to MAX_HELLO_BYTES, far above
any real ClientHello. Results: a name (str), NEED_MORE, NOT_TLS, NO_SNI, MALFORMED or TOO_LARGE
(a hello that declares or takes more than MAX_HELLO_BYTES: it cannot be read within the bound).
"""

from __future__ import annotations

from enum import Enum

MAX_HELLO_BYTES = 64 * 1024
_HANDSHAKE = 0x16
_CLIENT_HELLO = 0x01
_SERVER_NAME_EXT = 0x0000
_HOST_NAME = 0x00


class HelloResult(Enum):
    NEED_MORE = "need-more"
    NOT_TLS = "not-tls"
    NO_SNI = "no-sni"
    MALFORMED = "malformed"
    TOO_LARGE = "too-large"


def read_sni(data: bytes) -> str | HelloResult:
    """Parse the ClientHello at the start of `data` (all bytes received so far)."""
    if not data:
        return HelloResult.NEED_MORE
    if data[0] != _HANDSHAKE:
        return HelloResult.NOT_TLS
    handshake = _handshake_bytes(data)
    if isinstance(handshake, HelloResult):
        return handshake
    if handshake[0] != _CLIENT_HELLO:
        return HelloResult.MALFORMED
    length = int.from_bytes(handshake[1:4], "big")
    if 4 + length > MAX_HELLO_BYTES:
        return HelloResult.TOO_LARGE  # known from its header: no need to wait for the bytes
    if len(handshake) < 4 + length:
        return HelloResult.NEED_MORE if len(data) < MAX_HELLO_BYTES else HelloResult.TOO_LARGE
    try:
        return _server_name(handshake[4 : 4 + length])
    except (IndexError, ValueError):
        return HelloResult.MALFORMED


def _handshake_bytes(data: bytes) -> bytes | HelloResult:
    """Concatenate handshake record payloads (a ClientHello may be fragmented)."""
    out = bytearray()
    offset = 0
    while offset + 5 <= len(data):
        if data[offset] != _HANDSHAKE:
            return HelloResult.MALFORMED
        if data[offset + 1] != 0x03:
            # Only the first record decides "not TLS"; a later odd record is a broken hello
            # (else a client could end its hello's checking by appending one).
            return HelloResult.NOT_TLS if offset == 0 else HelloResult.MALFORMED
        length = int.from_bytes(data[offset + 3 : offset + 5], "big")
        if length == 0 or length > 18432:
            return HelloResult.MALFORMED
        if offset + 5 + length > len(data):
            out += data[offset + 5 :]
            break
        out += data[offset + 5 : offset + 5 + length]
        offset += 5 + length
        if len(out) >= 4 and _header_decides(out):
            break
    if len(out) < 4:
        if len(data) >= 5 and data[1] != 0x03:
            return HelloResult.NOT_TLS
        return HelloResult.NEED_MORE
    return bytes(out)


def _header_decides(out: bytearray) -> bool:
    """Whether the handshake header already decides the answer: the whole message is here, or
    it is no ClientHello, or it declares more than MAX_HELLO_BYTES. Later records then change
    nothing, so the answer does not depend on how the bytes were split (found by fuzzing)."""
    declared = 4 + int.from_bytes(out[1:4], "big")
    return len(out) >= declared or out[0] != _CLIENT_HELLO or declared > MAX_HELLO_BYTES


def _server_name(body: bytes) -> str | HelloResult:
    pos = 2 + 32  # legacy_version, random
    pos += 1 + body[pos]  # legacy_session_id
    pos += 2 + int.from_bytes(body[pos : pos + 2], "big")  # cipher_suites
    pos += 1 + body[pos]  # legacy_compression_methods
    if pos + 2 > len(body):
        return HelloResult.NO_SNI  # no extensions at all
    end = pos + 2 + int.from_bytes(body[pos : pos + 2], "big")
    pos += 2
    if end > len(body):
        raise ValueError("extensions overrun")
    while pos + 4 <= end:
        ext_type = int.from_bytes(body[pos : pos + 2], "big")
        ext_len = int.from_bytes(body[pos + 2 : pos + 4], "big")
        pos += 4
        if ext_type == _SERVER_NAME_EXT:
            return _host_name(body[pos : pos + ext_len])
        pos += ext_len
    return HelloResult.NO_SNI


def _host_name(ext: bytes) -> str | HelloResult:
    list_len = int.from_bytes(ext[0:2], "big")
    pos = 2
    while pos + 3 <= 2 + list_len:
        name_type = ext[pos]
        name_len = int.from_bytes(ext[pos + 1 : pos + 3], "big")
        pos += 3
        if name_type == _HOST_NAME:
            name = ext[pos : pos + name_len]
            if not name or len(name) != name_len:
                raise ValueError("truncated server name")
            return name.decode("ascii")
        pos += name_len
    return HelloResult.NO_SNI
