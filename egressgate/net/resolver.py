"""Asynchronous name resolution: hosts file first, then DNS through c-ares on the event loop.

No thread per lookup: pycares runs in socket-state-callback mode, its sockets are watched by
the event loop and its timers by `call_later`. Returns every A and AAAA answer (IPv4 first), so
that policy can vet all of them; answers are cached for their TTL (bounded by MAX_CACHE_TTL_S),
negative answers (NXDOMAIN, NODATA) briefly, failures never. Knows nothing of policy. Failures
become ResolveError with a DNS_* reason, always within `timeout_s` (the proxy's own deadline).
Lookups of the same name in flight at the same time share one query.
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
# c-ares's smallest per-try timeout once it has latency history for a server (it adapts each
# try to 5x the server's average answer time, at least this, doubling on every retry).
_CARES_MIN_TRY_S = 0.25
_MAX_TRIES = 8
# `Channel.timeout(probe)` returns the probe itself when no c-ares query is pending.
_IDLE_PROBE_S = 3600.0

_NXDOMAIN_ERRORS = {pycares.errno.ARES_ENOTFOUND, pycares.errno.ARES_ENONAME}
_NODATA_ERRORS = {pycares.errno.ARES_ENODATA}
_TIMEOUT_ERRORS = {pycares.errno.ARES_ETIMEOUT}
# Only what a DNS server said about the name is cached as a negative answer (RFC 2308:
# NXDOMAIN, NODATA). Server failures, timeouts and local errors (EMFILE, no server reachable)
# say nothing about the name: the next request asks again.
_CACHEABLE_NEGATIVE = {Reason.DNS_NXDOMAIN, Reason.DNS_NO_ADDRESS}
_WHY: dict[int, str] = {
    pycares.errno.ARES_ETIMEOUT: "the DNS server(s) did not answer",
    pycares.errno.ARES_ECONNREFUSED: "no DNS server could be reached (refused, or no socket)",
    pycares.errno.ARES_ESERVFAIL: "the DNS server answered SERVFAIL",
    pycares.errno.ARES_EREFUSED: "the DNS server refused the query (REFUSED)",
}


def cares_tries(timeout_s: float) -> int:
    """Enough c-ares tries that its retries (at least _CARES_MIN_TRY_S, doubling) last about
    `timeout_s`: the lookup deadline, not c-ares, decides when a slow server has had its time."""
    tries = 1
    while _CARES_MIN_TRY_S * (2**tries - 1) < timeout_s and tries < _MAX_TRIES:
        tries += 1
    return tries


@dataclass(frozen=True, slots=True)
class Resolution:
    """Every address a name resolved to, where the answer came from, and how long it took."""

    addresses: tuple[IPAddress, ...]
    source: str  # "hosts" | "dns" | "cache"
    lookup_s: float


class _Query:
    """One name's A + AAAA lookup, shared by every caller waiting for that name."""

    __slots__ = (
        "done",
        "error",
        "future",
        "local",
        "started",
        "timer",
        "ttl",
        "v4",
        "v6",
        "waiting",
    )

    def __init__(self, future: asyncio.Future[Resolution], started: float) -> None:
        self.future = future
        self.started = started
        self.waiting = {pycares.QUERY_TYPE_A, pycares.QUERY_TYPE_AAAA}
        self.v4: list[IPAddress] = []
        self.v6: list[IPAddress] = []
        self.ttl = MAX_CACHE_TTL_S
        self.error: int | None = None
        self.local: str | None = None  # why c-ares could not even send a query
        self.done = False  # answered or expired: later c-ares callbacks only fill the cache
        self.timer: asyncio.TimerHandle | None = None


class Resolver:
    """Resolve names to addresses; construct inside the running event loop.

    `timeout_s` bounds every lookup (the proxy's own deadline, whatever c-ares does): when it
    passes, waiters get DNS_TIMEOUT and the name is free to be looked up again.
    """

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
        # c-ares adapts each try's timeout to the server's recent speed (250 ms after a run of
        # fast answers), so the first try of a slow answer can expire long before timeout_s.
        # `timeout` is its first try without history; `tries` keeps it retrying (with doubling
        # windows) until about timeout_s; the deadline in _start is the bound that holds.
        options: dict[str, Any] = {
            "sock_state_cb": self._sock_state,
            "timeout": max(timeout_s, 0.1),
            "tries": cares_tries(timeout_s),
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
        # Every waiter may have gone (clients left, shield kept the lookup): the outcome is
        # then nobody's, and must not become a "Future exception was never retrieved" report.
        future.add_done_callback(_consume)
        self._inflight[name] = future
        query = _Query(future, time.monotonic())
        query.timer = self._loop.call_later(self._timeout_s, self._expire, name, query)
        for qtype in (pycares.QUERY_TYPE_A, pycares.QUERY_TYPE_AAAA):
            try:
                self._channel.query(name, qtype, callback=self._callback(name, query, qtype))
            except pycares.AresError as exc:
                # Raised synchronously (no server usable, out of sockets...): this family's
                # answer is that error, or the future would wait for a callback never coming.
                code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else 0
                query.local = f"{pycares.errno.strerror(code)!s}" if code else str(exc)
                self._answer(name, query, qtype, None, pycares.errno.ARES_ECONNREFUSED)
        self._arm_timer()
        return future

    def _callback(self, name: str, query: _Query, qtype: int) -> Callable[[Any, int | None], None]:
        def on_answer(result: Any, error: int | None) -> None:
            self._answer(name, query, qtype, result, error)

        return on_answer

    def _answer(self, name: str, query: _Query, qtype: int, result: Any, error: int | None) -> None:
        if qtype not in query.waiting:
            return  # this family was already answered (c-ares both called back and raised)
        query.waiting.discard(qtype)
        if error:
            if query.error is None or error not in _NODATA_ERRORS:
                query.error = error
        elif result is not None:
            for record in result.answer:
                if record.type == qtype:
                    target = query.v4 if qtype == pycares.QUERY_TYPE_A else query.v6
                    target.append(ipaddress.ip_address(record.data.addr))
                    query.ttl = min(query.ttl, max(float(record.ttl), MIN_CACHE_TTL_S))
        if not query.waiting:
            self._finish(name, query)

    def _release(self, name: str, query: _Query) -> float:
        """Mark `query` done and free its name for the next lookup; the time it took."""
        query.done = True
        if query.timer is not None:
            query.timer.cancel()
        if self._inflight.get(name) is query.future:
            del self._inflight[name]
        elapsed = time.monotonic() - query.started
        return elapsed

    def _finish(self, name: str, query: _Query) -> None:
        addresses = tuple(query.v4 + query.v6)
        if query.done:  # answered after the deadline: too late for its waiters, not for the cache
            if addresses:
                self._store(name, time.monotonic() + query.ttl, addresses)
            return
        elapsed = self._release(name, query)
        if self._on_lookup is not None:
            self._on_lookup(elapsed, "ok" if addresses else "error")
        if addresses:
            self._store(name, time.monotonic() + query.ttl, addresses)
            query.future.set_result(Resolution(addresses, "dns", elapsed))
            return
        reason = _reason_for(query.error)
        if reason in _CACHEABLE_NEGATIVE:
            self._store(name, time.monotonic() + NEGATIVE_TTL_S, reason)
        why = _WHY.get(query.error or 0)
        if query.local is not None:
            why = f"the query could not be sent: {query.local}; no server usable, or no socket"
        if why is None and reason is Reason.DNS_FAILURE and query.error is not None:
            why = f"DNS error: {pycares.errno.strerror(query.error)!s}"
        detail = f"{name}: {reason.text}" + (f" ({why})" if why else "")
        query.future.set_exception(ResolveError(reason, detail))

    def _expire(self, name: str, query: _Query) -> None:
        if query.done:
            return
        elapsed = self._release(name, query)
        if self._on_lookup is not None:
            self._on_lookup(elapsed, "error")
        query.future.set_exception(
            ResolveError(
                Reason.DNS_TIMEOUT,
                f"{name}: {Reason.DNS_TIMEOUT.text} (no answer within {self._timeout_s:g}s)",
            )
        )

    def _store(self, name: str, expires: float, value: tuple[IPAddress, ...] | Reason) -> None:
        if len(self._cache) >= MAX_CACHE_ENTRIES:
            self._cache.clear()  # crude but bounded; a full cache is rare and refills quickly
        self._cache[name] = (expires, value)

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
        # Armed while c-ares has any query pending, including ones whose waiters the deadline
        # already answered: c-ares must still run their timeouts to free them.
        delay: float = self._channel.timeout(_IDLE_PROBE_S)  # type: ignore[no-untyped-call]
        if delay >= _IDLE_PROBE_S:
            return
        self._timer = self._loop.call_later(max(delay, 0.005), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._channel.process_fd(pycares.ARES_SOCKET_BAD, pycares.ARES_SOCKET_BAD)
        self._arm_timer()


def _consume(future: asyncio.Future[Resolution]) -> None:
    if not future.cancelled():
        future.exception()


def _reason_for(error: int | None) -> Reason:
    if error in _NXDOMAIN_ERRORS:
        return Reason.DNS_NXDOMAIN
    if error in _NODATA_ERRORS or error is None:
        return Reason.DNS_NO_ADDRESS
    if error in _TIMEOUT_ERRORS:
        return Reason.DNS_TIMEOUT
    return Reason.DNS_FAILURE
