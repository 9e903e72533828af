"""`DnsServer`: an authoritative DNS server for tests, on 127.0.0.1 over UDP and TCP (same port).

    with DnsServer({"allowed.test": ["127.0.0.1", "::1"]}) as dns:
        config["nameservers"] = [dns.address]          # "127.0.0.1:PORT"
        dns.records["late.test"] = ["127.0.0.2"]         # the mapping is live and mutable
        dns.set_behaviour("slow.test", "blackhole")      # never answers: resolver timeouts
        ...
        assert dns.query_count("secret.test") == 0       # the proxy never resolved it

Names are case-insensitive and a trailing dot is ignored. A query for a name in `records` is
answered (AA) with its A or AAAA addresses, by the query type (NOERROR with no answer when the
name has none of that family, or for other types); a name given to `set_cname` is answered with
a CNAME (plus the target's addresses when the target is in `records`); a name `*.suffix` in
`records`
matches any name below `suffix` that has no entry of its own; anything else is NXDOMAIN.

Per-name behaviours (`set_behaviour`): "answer" (default), "blackhole" (never reply),
"servfail", "refused", "truncate" (UDP replies have TC set and no answer, so a resolver must
retry over TCP, which answers normally); and `set_delay(name, seconds)` delays replies.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import socket
import struct
import threading
from collections.abc import Iterable, Iterator, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, cast

from dnslib import AAAA, CLASS, CNAME, QTYPE, RCODE, RR, A, DNSRecord

from tests.support._aio import LoopThread, Recorder, format_hostport

Behaviour = Literal["answer", "blackhole", "servfail", "refused", "truncate"]
BEHAVIOURS: frozenset[str] = frozenset({"answer", "blackhole", "servfail", "refused", "truncate"})


def normalise_name(name: str) -> str:
    """The key a name is stored and counted under: lower case, without the trailing dot."""
    return name.strip().rstrip(".").lower()


@dataclass(frozen=True)
class DnsQuery:
    """One query the server received."""

    name: str  # normalised
    qtype: str  # "A", "AAAA", "MX", ...
    transport: Literal["udp", "tcp"]
    peer: tuple[str, int]
    answered: bool  # False for blackholed queries


class NameMap(MutableMapping[str, list[str]]):
    """A dict whose keys are DNS names (normalised on every access) and values address lists."""

    def __init__(self, lock: threading.Lock, initial: Mapping[str, Sequence[str]] | None) -> None:
        self._lock = lock
        self._data: dict[str, list[str]] = {}
        for name, addresses in (initial or {}).items():
            self[name] = list(addresses)

    def __getitem__(self, name: str) -> list[str]:
        with self._lock:
            return self._data[normalise_name(name)]

    def __setitem__(self, name: str, addresses: Sequence[str]) -> None:
        if isinstance(addresses, str):
            raise TypeError("give a list of addresses, not a single string")
        checked = [str(ipaddress.ip_address(a)) for a in addresses]
        with self._lock:
            self._data[normalise_name(name)] = checked

    def __delitem__(self, name: str) -> None:
        with self._lock:
            del self._data[normalise_name(name)]

    def __iter__(self) -> Iterator[str]:
        with self._lock:
            return iter(list(self._data))

    def __len__(self) -> int:
        with self._lock:
            return len(self._data)

    def lookup(self, name: str) -> list[str] | None:
        """Exact entry, else the closest `*.suffix` wildcard entry, else None."""
        with self._lock:
            if name in self._data:
                return self._data[name]
            labels = name.split(".")
            for i in range(1, len(labels)):
                wildcard = "*." + ".".join(labels[i:])
                if wildcard in self._data:
                    return self._data[wildcard]
            return None


class DnsServer:
    """An authoritative test DNS server (dnslib) in a background thread; see the module doc."""

    def __init__(
        self,
        records: Mapping[str, Sequence[str]] | None = None,
        *,
        host: str = "127.0.0.1",
        ttl: int = 5,
    ) -> None:
        self._lock = threading.Lock()
        self.records: NameMap = NameMap(self._lock, records)
        self._cnames: dict[str, str] = {}
        self.ttl = ttl
        self._behaviours: dict[str, str] = {}
        self._delays: dict[str, float] = {}
        self._queries: Recorder[DnsQuery] = Recorder()
        self.host = host
        self._udp_transport: asyncio.DatagramTransport | None = None
        self._tcp_server: asyncio.base_events.Server | None = None
        self._tcp_writers: set[asyncio.StreamWriter] = set()
        udp, tcp = self._bind_pair(host)
        self.port: int = udp.getsockname()[1]
        self._loop = LoopThread(f"dns-{self.port}")
        try:
            self._loop.run(self._start(udp, tcp))
        except BaseException:
            self.close()
            raise

    # -- public API ------------------------------------------------------------------------------

    @property
    def address(self) -> str:
        """The address as "127.0.0.1:PORT", as written in the proxy's `nameservers` list."""
        return format_hostport(self.host, self.port)

    def set(self, name: str, addresses: Sequence[str]) -> None:
        """Same as `records[name] = addresses`."""
        self.records[name] = addresses

    def set_cname(self, name: str, target: str) -> None:
        """Answer `name` with a CNAME to `target`."""
        with self._lock:
            self._cnames[normalise_name(name)] = normalise_name(target)

    def set_behaviour(self, name: str, behaviour: Behaviour) -> None:
        """Make queries for `name` be answered / blackholed / SERVFAILed / REFUSED / truncated."""
        if behaviour not in BEHAVIOURS:
            raise ValueError(f"unknown behaviour {behaviour!r}; use one of {sorted(BEHAVIOURS)}")
        with self._lock:
            self._behaviours[normalise_name(name)] = behaviour

    def set_delay(self, name: str, seconds: float) -> None:
        """Delay every reply for `name` by `seconds` (0 removes the delay)."""
        with self._lock:
            self._delays[normalise_name(name)] = seconds

    def queries(self, name: str | None = None) -> list[DnsQuery]:
        """The queries received so far (for `name` only, if given)."""
        items = self._queries.snapshot()
        if name is None:
            return items
        key = normalise_name(name)
        return [q for q in items if q.name == key]

    def query_count(self, name: str, qtype: str | None = None) -> int:
        """How many queries for `name` (of `qtype`, if given) were received, over UDP and TCP."""
        return sum(1 for q in self.queries(name) if qtype is None or q.qtype == qtype)

    def wait_for_queries(self, name: str, count: int = 1, timeout: float = 5.0) -> list[DnsQuery]:
        """Wait (bounded) until at least `count` queries for `name` arrived; return them."""
        key = normalise_name(name)
        self._queries.wait_until(
            lambda qs: sum(1 for q in qs if q.name == key) >= count,
            timeout,
            f"{count} DNS queries for {key!r}",
        )
        return self.queries(key)

    def reset_counts(self) -> None:
        """Forget the queries received so far."""
        self._queries.clear()

    def close(self) -> None:
        """Stop serving and join the thread (idempotent)."""
        self._loop.stop(self._shutdown)

    def __enter__(self) -> DnsServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"DnsServer({self.address})"

    # -- sockets ---------------------------------------------------------------------------------

    @staticmethod
    def _bind_pair(host: str) -> tuple[socket.socket, socket.socket]:
        """TCP on port 0, then UDP on the same port number (retry, bounded, if UDP's is taken).

        TCP first: on a busy machine the TCP port space is the crowded one (every outgoing
        connection holds a local port), so a UDP port picked first often had its TCP twin taken
        50 times in a row; the UDP twin of a free TCP port is almost always free."""
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        for _ in range(50):
            udp = socket.socket(family, socket.SOCK_DGRAM)
            tcp = socket.socket(family, socket.SOCK_STREAM)
            try:
                tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                tcp.bind((host, 0))
                tcp.listen(128)
                udp.bind((host, tcp.getsockname()[1]))
            except OSError as exc:
                udp.close()
                tcp.close()
                if exc.errno == errno.EADDRINUSE:
                    continue
                raise
            udp.setblocking(False)
            tcp.setblocking(False)
            return udp, tcp
        raise OSError("could not bind UDP and TCP on one port in 50 tries")

    async def _start(self, udp: socket.socket, tcp: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(lambda: _UdpProtocol(self), sock=udp)
        self._udp_transport = transport
        self._tcp_server = await asyncio.start_server(self._serve_tcp, sock=tcp)

    async def _shutdown(self) -> None:
        if self._tcp_server is not None:
            self._tcp_server.close()
        for writer in list(self._tcp_writers):
            writer.transport.abort()
        if self._udp_transport is not None:
            self._udp_transport.close()
        if self._tcp_server is not None:
            await self._tcp_server.wait_closed()

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._loop.track()
        self._tcp_writers.add(writer)
        peer = writer.get_extra_info("peername")
        try:
            for _ in range(10_000):  # queries per connection, bounded
                try:
                    (length,) = struct.unpack("!H", await reader.readexactly(2))
                    data = await reader.readexactly(length)
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                reply, delay = self._answer(data, "tcp", (peer[0], peer[1]))
                if reply is None:
                    continue
                if delay > 0:
                    await asyncio.sleep(delay)
                writer.write(struct.pack("!H", len(reply)) + reply)
                await writer.drain()
        except ConnectionError:
            return
        finally:
            self._tcp_writers.discard(writer)
            writer.transport.abort()

    # -- answering -------------------------------------------------------------------------------

    def _answer(
        self, data: bytes, transport: Literal["udp", "tcp"], peer: tuple[str, int]
    ) -> tuple[bytes | None, float]:
        """The reply bytes (None: send nothing) and how long to wait before sending them."""
        try:
            request = DNSRecord.parse(data)
        except Exception:
            self._queries.append(DnsQuery("<malformed>", "?", transport, peer, False))
            return None, 0.0
        if not request.questions:
            return None, 0.0
        question = request.q
        name = normalise_name(str(question.qname))
        qtype = QTYPE.get(question.qtype, str(question.qtype))
        with self._lock:
            behaviour = self._behaviours.get(name, "answer")
            delay = self._delays.get(name, 0.0)
        self._queries.append(DnsQuery(name, qtype, transport, peer, behaviour != "blackhole"))
        reply = request.reply()  # QR, AA and RA set, question copied
        if behaviour == "blackhole":
            return None, 0.0
        if behaviour == "servfail":
            reply.header.rcode = RCODE.SERVFAIL
        elif behaviour == "refused":
            reply.header.rcode = RCODE.REFUSED
        elif behaviour == "truncate" and transport == "udp":
            reply.header.tc = 1
        else:
            self._fill(reply, question.qname, name, question.qtype)
        return reply.pack(), delay

    def _fill(self, reply: DNSRecord, qname: object, name: str, qtype: int) -> None:
        owner = qname
        for _ in range(8):  # CNAME chain, bounded
            with self._lock:
                target = self._cnames.get(name)
            if target is None:
                break
            reply.add_answer(RR(owner, QTYPE.CNAME, CLASS.IN, self.ttl, CNAME(target + ".")))
            owner, name = target + ".", target
        addresses = self.records.lookup(name)
        if addresses is None:
            if owner is qname:
                reply.header.rcode = RCODE.NXDOMAIN
            return
        for rr in _address_records(owner, addresses, qtype, self.ttl):
            reply.add_answer(rr)


def _address_records(owner: object, addresses: Iterable[str], qtype: int, ttl: int) -> list[RR]:
    records: list[RR] = []
    for text in addresses:
        addr = ipaddress.ip_address(text)
        if qtype in (QTYPE.A, QTYPE.ANY) and addr.version == 4:
            records.append(RR(owner, QTYPE.A, CLASS.IN, ttl, A(text)))
        elif qtype in (QTYPE.AAAA, QTYPE.ANY) and addr.version == 6:
            records.append(RR(owner, QTYPE.AAAA, CLASS.IN, ttl, AAAA(text)))
    return records


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, server: DnsServer) -> None:
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        peer = (str(addr[0]), int(addr[1]))
        reply, delay = self.server._answer(data, "udp", peer)
        if reply is None or self.transport is None:
            return
        transport = self.transport
        if delay > 0:
            asyncio.get_running_loop().call_later(delay, self._send, transport, reply, addr)
        else:
            self._send(transport, reply, addr)

    @staticmethod
    def _send(transport: asyncio.DatagramTransport, reply: bytes, addr: tuple[Any, ...]) -> None:
        if not transport.is_closing():
            with contextlib.suppress(OSError):
                transport.sendto(reply, addr)
