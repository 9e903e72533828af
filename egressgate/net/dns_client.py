"""Ask one DNS question of one nameserver: UDP, then TCP when the answer is truncated.

Knows nothing of policy. Each UDP question gets a socket of its own (a fresh random source
port, connected to the nameserver, so the kernel drops datagrams from anyone else) and a fresh
random ID; a reply counts only when dnspython decodes it and it answers our question with our
ID (`Message.is_response`): anything else is ignored until the deadline. The socket is used
through the event loop directly: no name resolution (the nameserver is an address), no thread.
TCP (rare: truncated answers only) goes through dnspython's own asyncio client.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import dns.asyncquery
import dns.flags
import dns.message

_MAX_UDP_BYTES = 65535


class _Exchange(asyncio.DatagramProtocol):
    """Waits for the datagram that answers `request`."""

    def __init__(self, request: dns.message.Message, done: asyncio.Future[dns.message.Message]):
        self.request = request
        self.done = done

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        if self.done.done():
            return
        try:
            response = dns.message.from_wire(data)
        except Exception:  # undecodable: not our answer, keep waiting (spoofing, garbage)
            return
        if self.request.is_response(response):
            self.done.set_result(response)

    def error_received(self, exc: Exception) -> None:
        if not self.done.done():
            self.done.set_exception(exc)  # ICMP port unreachable: nobody listens there

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None and not self.done.done():
            self.done.set_exception(exc)  # a plain close is ours: the waiter has gone already


async def ask_udp(
    request: dns.message.Message, host: str, port: int, timeout_s: float
) -> dns.message.Message:
    """The nameserver's answer; TimeoutError or OSError when there is none."""
    loop = asyncio.get_running_loop()
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        sock.connect((host, port))
    except OSError:
        sock.close()
        raise
    done: asyncio.Future[dns.message.Message] = loop.create_future()
    transport, _ = await loop.create_datagram_endpoint(lambda: _Exchange(request, done), sock=sock)
    try:
        transport.sendto(request.to_wire())
        return await asyncio.wait_for(done, timeout_s)
    finally:
        transport.close()


async def ask(
    request: dns.message.Message, host: str, port: int, timeout_s: float
) -> dns.message.Message:
    """UDP, and TCP for the rest of the time when the UDP answer is truncated (TC).
    Raises TimeoutError or dns.exception.Timeout, OSError, or a dnspython decoding error."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    response = await ask_udp(request, host, port, timeout_s)
    if response.flags & dns.flags.TC:
        left_s = max(deadline - loop.time(), 0.001)
        response = await dns.asyncquery.tcp(request, host, timeout=left_s, port=port)
    return response
