"""Asynchronous name resolution: hosts file first, then DNS through c-ares on the event loop.

No thread per lookup: pycares runs in socket-state-callback mode, its sockets are watched by
the event loop and its timers by `call_later`. Returns every A and AAAA answer (IPv4 first), so
that policy can vet all of them; answers are cached for their TTL (bounded by MAX_CACHE_TTL_S),
negative answers briefly. Knows nothing of policy. Failures become ResolveError with a DNS_*
reason. Lookups of the same name in flight at the same time share one query.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pycares

from egressgate.errors import Reason, ResolveError
from egressgate.names.hostname import IPAddress
from egressgate.names.hosts import parse_hosts

MAX_CACHE_TTL_S = 300.0
MIN_CACHE_TTL_S = 1.0
NEGATIVE_TTL_S = 5.0
MAX_CACHE_ENTRIES = 10_000

_NXDOMAIN_ERRORS = {pycares.errno.ARES_ENOTFOUND, pycares.errno.ARES_ENONAME}
_NODATA_ERRORS = {pycares.errno.ARES_ENODATA}
_TIMEOUT_ERRORS = {pycares.errno.ARES_ETIMEOUT}


@dataclass(frozen=True, slots=True)
class Resolution:
    """Every address a name resolved to, where the answer came from, and how long it took."""

    addresses: tuple[IPAddress, ...]
    source: str  # "hosts" | "dns" | "cache"
    lookup_s: float


class _Query:
    """One name's A + AAAA lookup, shared by every caller waiting for that name."""

    __slots__ = ("error", "future", "pending", "ttl", "v4", "v6")

    def __init__(self, future: asyncio.Future[Resolution]) -> None:
        self.future = future
        self.pending = 2
        self.v4: list[IPAddress] = []
        self.v6: list[IPAddress] = []
        self.ttl = MAX_CACHE_TTL_S
        self.error: int | None = None


class Resolver:
    """Resolve names to addresses; construct inside the running event loop."""

    def __init__(
        self,
        nameservers: tuple[str, ...] = (),
        hosts_file: str | None = None,
        timeout_s: float = 5.0,
        on_lookup: Callable[[float, str], None] | None = None,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._timeout_s = timeout_s
        self._hosts: dict[str, tuple[IPAddress, ...]] = {}
        if hosts_file:
            with open(hosts_file, encoding="utf-8") as handle:
                self._hosts, _ = parse_hosts(handle.read())
        self._cache: dict[str, tuple[float, tuple[IPAddress, ...] | Reason]] = {}
        self._inflight: dict[str, asyncio.Future[Resolution]] = {}
        self._watched: set[int] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._on_lookup = on_lookup
        # tries=2 with a per-try timeout: c-ares doubles nothing here, so the bound is known.
        options: dict[str, Any] = {
            "sock_state_cb": self._sock_state,
            "timeout": max(timeout_s / 2, 0.1),
            "tries": 2,
            "flags": pycares.ARES_FLAG_NOSEARCH,
        }
        if nameservers:
            options["servers"] = list(nameservers)
        self._channel = pycares.Channel(**options)

    def close(self) -> None:
        for fd in self._watched:
            self._loop.remove_reader(fd)
            self._loop.remove_writer(fd)
        self._watched.clear()
        if self._timer is not None:
            self._timer.cancel()
        self._channel.cancel()
        self._channel.close()

    def cached(self, name: str) -> tuple[IPAddress, ...] | None:
        """Addresses known right now without a lookup (hosts file or a fresh cache entry)."""
        found = self._hosts.get(name)
        if found is not None:
            return found
        entry = self._cache.get(name)
        if entry is not None and entry[0] > time.monotonic() and not isinstance(entry[1], Reason):
            return entry[1]
        return None

    async def resolve(self, name: str) -> Resolution:
        """All addresses of normalized hostname `name`; raises ResolveError."""
        found = self._hosts.get(name)
        if found is not None:
            return Resolution(found, "hosts", 0.0)
        entry = self._cache.get(name)
        if entry is not None and entry[0] > time.monotonic():
            if isinstance(entry[1], Reason):
                raise ResolveError(entry[1], f"{name}: {entry[1].text} (cached)")
            return Resolution(entry[1], "cache", 0.0)
        future = self._inflight.get(name)
        if future is None:
            future = self._start(name)
        return await asyncio.shield(future)

    def _start(self, name: str) -> asyncio.Future[Resolution]:
        future: asyncio.Future[Resolution] = self._loop.create_future()
        self._inflight[name] = future
        query = _Query(future)
        started = time.monotonic()
        for qtype in (pycares.QUERY_TYPE_A, pycares.QUERY_TYPE_AAAA):
            self._channel.query(name, qtype, callback=self._callback(name, query, qtype, started))
        self._arm_timer()
        return future

    def _callback(
        self, name: str, query: _Query, qtype: int, started: float
    ) -> Callable[[Any, int | None], None]:
        def on_answer(result: Any, error: int | None) -> None:
            self._answer(name, query, qtype, result, error, started)

        return on_answer

    def _answer(
        self, name: str, query: _Query, qtype: int, result: Any, error: int | None, started: float
    ) -> None:
        if error:
            if query.error is None or error not in _NODATA_ERRORS:
                query.error = error
        elif result is not None:
            for record in result.answer:
                if record.type == qtype:
                    target = query.v4 if qtype == pycares.QUERY_TYPE_A else query.v6
                    target.append(ipaddress.ip_address(record.data.addr))
                    query.ttl = min(query.ttl, max(float(record.ttl), MIN_CACHE_TTL_S))
        query.pending -= 1
        if query.pending == 0:
            self._finish(name, query, time.monotonic() - started)

    def _finish(self, name: str, query: _Query, elapsed: float) -> None:
        self._inflight.pop(name, None)
        addresses = tuple(query.v4 + query.v6)
        if self._on_lookup is not None:
            self._on_lookup(elapsed, "ok" if addresses else "error")
        if len(self._cache) >= MAX_CACHE_ENTRIES:
            self._cache.clear()  # crude but bounded; a full cache is rare and refills quickly
        if addresses:
            self._cache[name] = (time.monotonic() + query.ttl, addresses)
            if not query.future.done():
                query.future.set_result(Resolution(addresses, "dns", elapsed))
            return
        reason = _reason_for(query.error)
        if reason is not Reason.DNS_TIMEOUT:
            self._cache[name] = (time.monotonic() + NEGATIVE_TTL_S, reason)
        if not query.future.done():
            query.future.set_exception(ResolveError(reason, f"{name}: {reason.text}"))

    # ---- c-ares ↔ event loop plumbing
    def _sock_state(self, fd: int, readable: bool, writable: bool) -> None:
        if readable:
            self._loop.add_reader(fd, self._process, fd, pycares.ARES_SOCKET_BAD)
        else:
            self._loop.remove_reader(fd)
        if writable:
            self._loop.add_writer(fd, self._process, pycares.ARES_SOCKET_BAD, fd)
        else:
            self._loop.remove_writer(fd)
        if readable or writable:
            self._watched.add(fd)
        else:
            self._watched.discard(fd)

    def _process(self, read_fd: int, write_fd: int) -> None:
        self._channel.process_fd(read_fd, write_fd)
        self._arm_timer()

    def _arm_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._inflight:
            return
        delay: float = self._channel.timeout()  # type: ignore[no-untyped-call]
        self._timer = self._loop.call_later(delay or 0.05, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._channel.process_fd(pycares.ARES_SOCKET_BAD, pycares.ARES_SOCKET_BAD)
        self._arm_timer()


def _reason_for(error: int | None) -> Reason:
    if error in _NXDOMAIN_ERRORS:
        return Reason.DNS_NXDOMAIN
    if error in _NODATA_ERRORS or error is None:
        return Reason.DNS_NO_ADDRESS
    if error in _TIMEOUT_ERRORS:
        return Reason.DNS_TIMEOUT
    return Reason.DNS_FAILURE
