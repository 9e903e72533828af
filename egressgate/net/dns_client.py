"""Ask one DNS question of one nameserver: a UDP exchange on the reactor, TCP when truncated.

Knows nothing of policy or of the wire format beyond what the caller gives it: the request's
bytes, and `accept`, which decides whether a datagram is the answer (the DNS guard decodes it
with dnspython and checks our ID and question). Each UDP question gets a socket of its own (a
fresh random source port, connected to the nameserver, so the kernel drops datagrams from anyone
else); anything `accept` refuses is ignored until the deadline (spoofing, garbage).

Why callbacks and not a coroutine: the forwarded path of the DNS guard is latency-bound. A
question used to cost a task, a future, `wait_for`'s timer and an asyncio datagram transport
(measured: ~40 Python calls and four loop iterations before the answer could go out); here the
socket joins the private edge-triggered epoll (net/reactor.py) once and the answer is handled in
the callback that reads it. TCP (truncated answers only, rare) goes through dnspython's asyncio
client.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Generic, TypeVar

import dns.asyncquery
import dns.message

from egressgate.net.rawsocket import RawSocket
from egressgate.net.reactor import Reactor

_MAX_UDP_BYTES = 65535
_MAX_READS = 16  # datagrams read per readiness event (garbage cannot keep the callback busy)

T = TypeVar("T")


class UdpExchange(Generic[T]):
    """One datagram question to one nameserver; `done(result, None)` with what `accept` made
    of the answer, or `done(None, error)`: TimeoutError, or the OSError the socket reported
    (ICMP port unreachable: nobody listens there). `done` is called exactly once."""

    __slots__ = ("_accept", "_done", "fd", "reactor", "sock", "timer")

    def __init__(
        self,
        reactor: Reactor,
        request: bytes,
        host: str,
        port: int,
        timeout_s: float,
        accept: Callable[[bytes], T | None],
        done: Callable[[T | None, BaseException | None], object],
    ) -> None:
        """Sends at once; raises OSError (and holds nothing) when the socket cannot."""
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = RawSocket(family, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            sock.connect((host, port))
            sock.send(request)
        except OSError:
            sock.close()
            raise
        self.sock = sock
        self.fd = sock.fileno()
        self.reactor = reactor
        self._accept: Callable[[bytes], T | None] | None = accept
        self._done: Callable[[T | None, BaseException | None], object] | None = done
        reactor.add(self.fd, self._on_event)
        self.timer = reactor.loop.call_later(timeout_s, self._expired)

    def _on_event(self, events: int) -> None:
        accept = self._accept
        for _ in range(_MAX_READS):
            if accept is None:
                return
            try:
                data = self.sock.recv(_MAX_UDP_BYTES)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._finish(None, exc)
                return
            result = accept(data)
            if result is not None:
                self._finish(result, None)
                return

    def _expired(self) -> None:
        self._finish(None, TimeoutError("the nameserver did not answer"))

    def _finish(self, result: T | None, error: BaseException | None) -> None:
        done = self._done
        if done is None:
            return
        self._done = self._accept = None  # (they refer back to the asker: no cycle is kept)
        self._release()
        done(result, error)

    def cancel(self) -> None:
        """Stop waiting; `done` is not called."""
        if self._done is not None:
            self._done = self._accept = None
            self._release()

    def _release(self) -> None:
        self.timer.cancel()
        self.reactor.forget(self.fd)
        self.sock.close()


async def ask_tcp(
    request: dns.message.Message, host: str, port: int, timeout_s: float
) -> dns.message.Message:
    """The nameserver's answer over TCP (RFC 7766); raises dns.exception.Timeout, OSError, or
    a dnspython decoding error."""
    response = await dns.asyncquery.tcp(request, host, timeout=timeout_s, port=port)
    return response
