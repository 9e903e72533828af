"""Wake-up coalescing: what one event-loop iteration sends to other processes leaves together
at its end.

Why: on loopback (and on any path where the peer is a process on another core) the expensive
part of a write is not the copy but the wake-up of the reader: each write to a sleeping peer
costs a cross-core interrupt, which in a VM is a trap to the hypervisor. Written as they are
produced, the responses to 30 keep-alive clients that one epoll round made ready wake the
origin (or the load generator) up to 30 times, a few microseconds apart. Queued until the round
is over and written back to back, they wake it once or twice. Measured with one proxy core
and the load on the other: 0.78 -> 0.08 wake-up interrupts per plain-HTTP request, 17.5k ->
24.9k requests per second and p99 6.0 -> 3.5 ms (see docs/performance.md).

The same holds for the raw tunnel path (proxy/tunnel.py, net/relay.py): a connect() wakes the
origin's accept, a send its reader, a shutdown or close its reader again. Those calls go through
`Outbox.later`, which runs them at the same point: measured, 1.21 -> 0.64 wake-up interrupts
per CONNECT tunnel and 8.6k -> 10.1k tunnels per second.

How: every connection that writes through this module has one `Output`, the only way its bytes
reach the transport. Its first write in an iteration registers it with the loop's `Outbox`,
which schedules one `call_soon`; that callback runs after every I/O callback of the current
poll and before the next poll, so nothing waits for another round trip. Because one queue per
transport holds everything in order, pipelined answers, refusals and protocol switches cannot
overtake one another. `close()` writes what is queued first; `abort()` drops it, as
`transport.abort()` drops its own buffer.

Flow control is unchanged: the transport's high-water mark is checked when the queued bytes are
handed over, at most one iteration later than before.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable


class Outbox:
    """The loop-wide list of actions (an Output's flush, a connect, a close) to run at the end
    of the current iteration, in the order they were queued."""

    __slots__ = ("_call_soon", "_loop", "_queued", "_scheduled")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._call_soon = loop.call_soon
        self._queued: list[Callable[[], object]] = []
        self._scheduled = False

    def later(self, action: Callable[[], object]) -> None:
        """Run `action` at the end of this iteration. The action must check that what it acts
        on still exists: the connection may have ended meanwhile."""
        self._queued.append(action)
        if not self._scheduled:
            self._scheduled = True
            self._call_soon(self.flush)

    def flush(self) -> None:
        """Run every queued action (called by the loop; also safe to call directly). Actions
        queued while this runs wait for the next iteration: each round stays bounded."""
        self._scheduled = False
        queued, self._queued = self._queued, []
        for action in queued:
            try:
                action()
            except Exception as exc:  # one broken connection must not hold back the others
                self._failed(action, exc)

    def _failed(self, action: Callable[[], object], exc: Exception) -> None:
        """An action of an object that answers for its own failures (`internal_error`: a
        tunnel, proxy/failsafe.py) hands the exception to it; anything else is reported."""
        on_error = getattr(getattr(action, "__self__", None), "internal_error", None)
        if on_error is not None:
            try:
                on_error(exc)
                return
            except Exception as second:
                exc = second
        self.report(exc)

    def report(self, exc: Exception) -> None:
        self._loop.call_exception_handler(
            {"message": "egressgate: a deferred write, connect or close failed", "exception": exc}
        )


class Output:
    """One transport's outgoing bytes, queued until the end of the loop iteration."""

    __slots__ = ("_chunks", "_outbox", "transport")

    def __init__(self, outbox: Outbox, transport: asyncio.BaseTransport | None = None) -> None:
        self._outbox = outbox
        self._chunks: list[bytes] | None = None
        self.transport: asyncio.Transport | None = transport  # type: ignore[assignment]

    def write(self, data: bytes) -> None:
        chunks = self._chunks
        if chunks is None:
            self._chunks = [data]
            self._outbox.later(self.flush)
        else:
            chunks.append(data)

    def writelines(self, items: Iterable[bytes]) -> None:
        chunks = self._chunks
        if chunks is None:
            self._chunks = list(items)
            self._outbox.later(self.flush)
        else:
            chunks.extend(items)

    @property
    def pending(self) -> int:
        """Bytes queued and not yet handed to the transport."""
        return sum(map(len, self._chunks)) if self._chunks else 0

    def flush(self) -> None:
        """Hand the queued bytes to the transport now (before a close, a hand-over to a
        relay, or anything else that must come after them)."""
        chunks, self._chunks = self._chunks, None
        if not chunks:
            return
        transport = self.transport
        if transport is None or transport.is_closing():
            return  # the peer is gone: the transport would refuse them anyway
        try:
            if len(chunks) == 1:
                transport.write(chunks[0])
            else:
                transport.writelines(chunks)
        except Exception as exc:  # a transport in a state it should not be in: drop it
            self._outbox.report(exc)
            self.discard()

    def close(self) -> None:
        """Write what is queued, then close the transport (it drains its buffer first)."""
        self.flush()
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        """Drop what is queued and reset the connection."""
        self._chunks = None
        if self.transport is not None:
            self.transport.abort()

    def discard(self) -> None:
        """Drop what is queued and reset the connection, whatever state the transport is in."""
        self._chunks = None
        transport, self.transport = self.transport, None
        if transport is not None:
            try:
                transport.abort()
            except Exception:  # it is being thrown away: nothing more to do
                pass
