"""A memo over tuples looked up by the tuple's identity, for tuples that are handed out again.

Why: the resolver returns the same cached tuple of addresses until its TTL ends, and hashing
`ipaddress` objects (what a dict keyed by the tuple's content does) runs Python code per
address, per request. Each entry keeps its tuple alive, so the id it is filed under cannot be
recycled by another tuple while the entry exists. Bounded: cleared when full.

It lives in `names` because its users (address texts here, address vetting in `policy`) both
sit at or above this layer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

K = TypeVar("K", bound=tuple[object, ...])
V = TypeVar("V")


class TupleMemo(Generic[K, V]):
    __slots__ = ("_compute", "_entries", "_limit")

    def __init__(self, compute: Callable[[K], V], limit: int = 4096) -> None:
        self._compute = compute
        self._entries: dict[int, tuple[K, V]] = {}
        self._limit = limit

    def get(self, key: K) -> V:
        seen = self._entries.get(id(key))
        if seen is not None and seen[0] is key:
            return seen[1]
        value = self._compute(key)
        if len(self._entries) >= self._limit:
            self._entries.clear()
        self._entries[id(key)] = (key, value)
        return value
