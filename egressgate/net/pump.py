"""Transport-to-transport relay for sockets that splice cannot serve (TLS listener, Upgrade).

The same contract as net/relay.py — byte-exact, half-close each way, back-pressure, idle
timeout — with asyncio transports: each side's protocol writes what it receives to the other
transport, pauses its own reading while the other transport's buffer is above its high-water
mark, and passes EOF on with write_eof() where the transport supports it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from egressgate.net.relay import RelayStats


class _Side(asyncio.Protocol):
    """Receives from one transport and writes to the peer's."""

    __slots__ = ("eof", "moved", "peer", "pump", "transport")

    def __init__(self, pump: TransportPump, transport: asyncio.Transport) -> None:
        self.pump = pump
        self.transport = transport
        self.peer: _Side | None = None
        self.moved = 0
        self.eof = False

    def data_received(self, data: bytes) -> None:
        assert self.peer is not None
        self.pump.last_activity = time.monotonic()
        self.moved += len(data)
        self.peer.transport.write(data)

    def eof_received(self) -> bool:
        assert self.peer is not None
        self.eof = True
        if self.peer.transport.can_write_eof():
            self.peer.transport.write_eof()
            self.pump.check_done()
            return True  # keep our writing side open: the peer may still answer
        self.pump.close("eof")
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.pump.close("eof" if exc is None else "reset")

    # The peer's transport is full: stop reading from ours, and the other way round.
    def pause_writing(self) -> None:
        assert self.peer is not None
        self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        assert self.peer is not None
        if not self.peer.eof:
            self.peer.transport.resume_reading()


class TransportPump:
    """Relays between two transports; takes over their protocols."""

    def __init__(
        self,
        client: asyncio.Transport,
        upstream: asyncio.Transport,
        on_done: Callable[[RelayStats], None],
        idle_timeout_s: float,
        initial_up: bytes = b"",
        initial_down: bytes = b"",
    ) -> None:
        self._up = _Side(self, client)
        self._down = _Side(self, upstream)
        self._up.peer, self._down.peer = self._down, self._up
        self._on_done: Callable[[RelayStats], None] | None = on_done
        self.idle_timeout_s = idle_timeout_s
        self.last_activity = time.monotonic()
        self._loop = asyncio.get_running_loop()
        self._timer = self._loop.call_later(idle_timeout_s, self._check_idle)
        client.set_protocol(self._up)
        upstream.set_protocol(self._down)
        if initial_up:
            self._up.moved += len(initial_up)
            upstream.write(initial_up)
        if initial_down:
            self._down.moved += len(initial_down)
            client.write(initial_down)
        client.resume_reading()
        upstream.resume_reading()

    def _check_idle(self) -> None:
        idle = time.monotonic() - self.last_activity
        if idle >= self.idle_timeout_s:
            self.close("idle-timeout")
        else:
            self._timer = self._loop.call_later(self.idle_timeout_s - idle, self._check_idle)

    def check_done(self) -> None:
        if self._up.eof and self._down.eof:
            self.close("eof")

    def close(self, end: str = "closed") -> None:
        if self._on_done is None:
            return
        self._timer.cancel()
        self._up.transport.close()
        self._down.transport.close()
        on_done, self._on_done = self._on_done, None
        on_done(RelayStats(self._up.moved, self._down.moved, end))
