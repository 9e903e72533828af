"""Idle upstream HTTP connections, keyed by (vetted address, port), for keep-alive reuse.

Only connections whose last response completed cleanly and allowed keep-alive come back here.
An idle connection that the origin closes, or that sends anything unasked, leaves the pool.
Bounded per key and in total; idle connections expire after `upstream_idle_s` (checked by
the server's sweeper, not by a timer per connection).
"""

from __future__ import annotations

import time
from typing import Generic, Protocol, TypeVar

from egressgate.names.hostname import IPAddress, address_texts


class Pooled(Protocol):
    """What the pool needs of an upstream connection (forward.UpstreamConnection is one)."""

    key: tuple[str, int]
    idle_since: float

    def usable(self) -> bool: ...

    def enter_pool(self, now: float) -> None: ...

    def leave_pool(self) -> None: ...

    def close(self) -> None: ...


P = TypeVar("P", bound=Pooled)

MAX_IDLE_PER_KEY = 64
MAX_IDLE_TOTAL = 2048

PoolKey = tuple[str, int]


class UpstreamPool(Generic[P]):
    """Idle connections of one kind (`P`, e.g. forward.UpstreamConnection)."""

    def __init__(self, idle_s: float) -> None:
        self._idle: dict[PoolKey, list[P]] = {}
        self._count = 0
        self.idle_s = idle_s

    def get(self, addresses: tuple[IPAddress, ...], port: int) -> P | None:
        """An idle connection to one of `addresses` (all vetted), most recently used first."""
        for text in address_texts(addresses):
            idle = self._idle.get((text, port))
            while idle:
                conn = idle.pop()
                self._count -= 1
                if conn.usable():
                    conn.leave_pool()
                    return conn
        return None

    def put(self, conn: P) -> None:
        idle = self._idle.setdefault(conn.key, [])
        if len(idle) >= MAX_IDLE_PER_KEY or self._count >= MAX_IDLE_TOTAL:
            conn.close()
            return
        idle.append(conn)
        self._count += 1
        conn.enter_pool(time.monotonic())

    def expire(self, now: float) -> None:
        """Close connections idle for longer than idle_s (called by the server's sweeper)."""
        limit = now - self.idle_s
        for idle in self._idle.values():
            stale = [c for c in idle if c.idle_since < limit]
            for conn in stale:
                idle.remove(conn)
                self._count -= 1
                conn.close()

    def remove(self, conn: P) -> None:
        idle = self._idle.get(conn.key)
        if idle and conn in idle:
            idle.remove(conn)
            self._count -= 1

    def close_all(self) -> None:
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()
        self._count = 0
