"""The original destination of a connection redirected by the kernel (nftables/iptables REDIRECT).

REDIRECT rewrites the destination to the proxy's own address; conntrack remembers the one the
client dialled and hands it back through `getsockopt(SO_ORIGINAL_DST)` (IPv4, a `struct
sockaddr_in`) or `getsockopt(IP6T_SO_ORIGINAL_DST)` (IPv6, a `struct sockaddr_in6`). A
connection that was not redirected (the client dialled the proxy itself, as in the DNS guard's
`dns_answer: proxy` mode) has none: the call fails with ENOENT, or names the proxy's own address.

What this returns is evidence of where the client wanted to go, never an address to connect
to: the transparent front end connects only to addresses it resolved and vetted itself.
"""

from __future__ import annotations

import ipaddress
import socket
import struct

from egressgate.net.rawsocket import RawSocket

SOL_IP = 0
SOL_IPV6 = 41
SO_ORIGINAL_DST = 80  # linux/netfilter_ipv4.h
IP6T_SO_ORIGINAL_DST = 80  # linux/netfilter_ipv6/ip6_tables.h
_SOCKADDR_IN_BYTES = 16
_SOCKADDR_IN6_BYTES = 28


def decode_sockaddr(raw: bytes) -> tuple[str, int] | None:
    """(address, port) of a `struct sockaddr_in` / `sockaddr_in6`; None if it is neither.

    The family is in host byte order (it is the kernel's own struct), the port and address in
    network byte order.
    """
    if len(raw) < 2:
        return None
    (family,) = struct.unpack("=H", raw[:2])
    if family == socket.AF_INET and len(raw) >= 8:
        (port,) = struct.unpack("!H", raw[2:4])
        return socket.inet_ntop(socket.AF_INET, raw[4:8]), port  # (per connection: no objects)
    if family == socket.AF_INET6 and len(raw) >= 24:
        (port,) = struct.unpack("!H", raw[2:4])
        address = ipaddress.IPv6Address(raw[8:24])
        mapped = address.ipv4_mapped
        return (str(mapped) if mapped is not None else str(address)), port
    return None


def original_destination(sock: RawSocket) -> tuple[str, int] | None:
    """Where the client dialled before the kernel redirected it; None if it was not redirected
    (no conntrack entry: ENOENT), or when the socket is not a redirected TCP socket at all."""
    try:
        if sock.family == socket.AF_INET6:
            try:
                raw = sock.getsockopt(SOL_IPV6, IP6T_SO_ORIGINAL_DST, _SOCKADDR_IN6_BYTES)
            except OSError:
                # An IPv4 client on a dual-stack listener: its conntrack entry is IPv4.
                raw = sock.getsockopt(SOL_IP, SO_ORIGINAL_DST, _SOCKADDR_IN_BYTES)
        else:
            raw = sock.getsockopt(SOL_IP, SO_ORIGINAL_DST, _SOCKADDR_IN_BYTES)
    except OSError:
        return None
    return decode_sockaddr(raw)


def redirected_destination(sock: RawSocket) -> tuple[str, int] | None:
    """The original destination, or None when the connection came straight to this socket
    (no redirect: the original destination is the socket's own local address)."""
    found = original_destination(sock)
    if found is None:
        return None
    local = sock.getsockname()
    host, port = str(local[0]), int(local[1])
    if host.startswith("::ffff:"):
        host = host[7:]
    if found == (host, port):
        return None
    return found
