"""SO_ORIGINAL_DST decoding: the kernel's struct sockaddr_in / sockaddr_in6, and junk."""

from __future__ import annotations

import socket
import struct

from hypothesis import given
from hypothesis import strategies as st

from egressgate.net.origdst import decode_sockaddr, redirected_destination


def sockaddr_in(address: str, port: int) -> bytes:
    return (
        struct.pack("=H", socket.AF_INET)
        + struct.pack("!H", port)
        + socket.inet_aton(address)
        + bytes(8)
    )


def sockaddr_in6(address: str, port: int) -> bytes:
    packed = socket.inet_pton(socket.AF_INET6, address)
    return (
        struct.pack("=H", socket.AF_INET6) + struct.pack("!H", port) + bytes(4) + packed + bytes(4)
    )


def test_ipv4_and_ipv6_decode() -> None:
    assert decode_sockaddr(sockaddr_in("198.18.6.10", 443)) == ("198.18.6.10", 443)
    assert decode_sockaddr(sockaddr_in6("2001:db8::1", 80)) == ("2001:db8::1", 80)
    assert decode_sockaddr(sockaddr_in6("::ffff:198.18.6.10", 80)) == ("198.18.6.10", 80)


@given(st.binary(max_size=40))
def test_junk_is_none_or_an_address(raw: bytes) -> None:
    result = decode_sockaddr(raw)
    assert result is None or 0 <= result[1] <= 65535


def test_a_connection_that_was_not_redirected_has_no_original_destination() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        with socket.create_connection(listener.getsockname()):
            accepted, _ = listener.accept()
            with accepted:
                assert redirected_destination(accepted) is None
