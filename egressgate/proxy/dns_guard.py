"""The DNS guard (`dns_listen`): a resolver for clients that ignore proxy variables.

UDP and TCP (RFC 7766 framing) on one address. Each query is decided by policy/dns.py under the
client's policy (chosen by source address, as for the proxy) in the generation current when it
arrives, so a reload changes answers at once. Allowed and passthrough names are forwarded to
`nameservers` (or answered with the proxy's address, `dns_answer: proxy`); everything else is
answered here and never leaves the process, which is what closes DNS tunnelling.

Bounds: a query is at most `limits.dns_max_message_bytes` (larger datagrams are dropped,
larger TCP frames close the connection); a TCP client gets `dns_tcp_idle_s` to send each
complete query, `dns_tcp_max_queries` queries, and at most `dns_max_tcp_connections` open
connections; `dns_max_inflight` upstream queries run at once (beyond: SERVFAIL). Upstream
answers are decoded by dnspython with a deadline of `limits.dns_timeout_s` for all nameservers.

Hot path (the performance target is a cached allowed name): a query whose exact bytes (ID
aside) were answered before, for the same policy, in the same generation, and whose answer has
not expired, is answered from `_Memo` without decoding: two dict lookups, the client's ID
spliced in front of the stored answer, one access record. Everything else is decoded.
TTLs are served as the upstream gave them; an entry expires after its smallest TTL, clamped to
[dns_cache_min_ttl_s, dns_cache_max_ttl_s].
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import time
from dataclasses import dataclass
from typing import Any, cast

import dns.exception
import dns.flags
import dns.message
import dns.rcode
import dns.resolver

from egressgate.config.model import Config, ListenAddress
from egressgate.errors import Reason
from egressgate.net import dns_client
from egressgate.net.listen import bind, bind_udp, bound_address
from egressgate.net.tasks import spawn
from egressgate.observe.accesslog import format_record
from egressgate.observe.record import AccessRecord
from egressgate.policy.clients import NeedsAuthentication
from egressgate.policy.decision import ClientIdentity
from egressgate.policy.dns import DnsAction, DnsRules, DnsVerdict, decide, vet_answer
from egressgate.proxy import dns_wire
from egressgate.proxy.context import ProxyContext
from egressgate.proxy.dns_wire import Query, Unanswerable
from egressgate.runtime.state import Generation

_TRIVIAL = ""  # the policy key when every client has the default policy
_SELECTOR_MEMO_MAX = 4096


@dataclass(frozen=True, slots=True)
class _Answer:
    """A finished answer and what its access record says (the bytes from offset 2: no ID)."""

    tail: bytes
    expires: float  # time.monotonic(); 0 = never reuse
    name: str | None
    qtype: str
    verdict: DnsVerdict | None
    rcode: int
    address: str | None = None
    reason: Reason | None = None  # overrides the verdict's (upstream failures)
    detail: str | None = None


@dataclass(frozen=True, slots=True)
class _Remembered:
    """A memoised answer with its access-log line pre-rendered around what varies per query:
    line = '{"ts":"' + ts + '","client":"' + client + '",' + mid + duration + tail."""

    tail: bytes  # the answer from offset 2 (the client's ID goes in front)
    expires: float
    mid: str
    line_tail: str
    metric: tuple[str, str]  # (decision, reason)


class _NoClock:
    """Renders every timestamp empty: the template line's `ts` is filled in per query."""

    def format(self, t: float) -> str:
        return ""


_TEMPLATE_HEAD = '{"ts":"","client":"",'
_DURATION = '"duration_ms":'


@dataclass(frozen=True, slots=True)
class _Client:
    identity: ClientIdentity
    text: str  # the address as the access log writes it
    policy: str | None  # its policy's name; "" when every client has the default; None: 407


class _Memo:
    """Bounded map with oldest-first eviction (a flood of unique names only evicts itself)."""

    __slots__ = ("data", "limit")

    def __init__(self, limit: int) -> None:
        self.data: dict[Any, Any] = {}
        self.limit = limit

    def put(self, key: Any, value: Any) -> None:
        data = self.data
        if len(data) >= self.limit and key not in data:
            del data[next(iter(data))]
        data[key] = value


class DnsGuard:
    """Owns the UDP transport, the TCP server and the caches; see the module doc."""

    def __init__(self, ctx: ProxyContext) -> None:
        self.ctx = ctx
        self._gen: Generation | None = None
        self._rules: DnsRules | None = None
        self._answers = _Memo(1)  # (policy key, query bytes without ID) → _Remembered
        self._upstream = _Memo(1)  # (name, type, class) → (expires, dns.message.Message)
        self._clients: dict[str, _Client] = {}  # socket address → identity (per generation)
        self._inflight: dict[tuple[str, int, int], asyncio.Future[dns.message.Message]] = {}
        self._system_nameservers: tuple[tuple[str, int], ...] | None = None
        self._max_bytes = 0
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None
        self.tcp_clients: set[_TcpClient] = set()
        self.address = ""

    # ---- lifecycle
    async def start(self, listen: ListenAddress) -> str:
        """Bind UDP and TCP on `listen` (the same port when it is 0); returns host:port."""
        loop = asyncio.get_running_loop()
        udp, tcp = _bind_pair(listen)
        transport, _ = await loop.create_datagram_endpoint(lambda: _UdpServer(self), sock=udp)
        self._udp = transport
        self._tcp = await loop.create_server(lambda: _TcpClient(self), sock=tcp)
        self.address = bound_address(tcp)
        return self.address

    def close(self) -> None:
        if self._udp is not None:
            self._udp.close()
        if self._tcp is not None:
            self._tcp.close()
        for client in list(self.tcp_clients):
            client.abort()

    # ---- per generation
    def _switch(self, gen: Generation) -> None:
        """A new generation: new rules, and every remembered answer forgotten."""
        limits = gen.config.limits
        self._gen = gen
        self._rules = DnsRules(gen.config.dns)
        self._answers = _Memo(limits.dns_cache_entries)
        self._upstream = _Memo(limits.dns_cache_entries)
        self._clients = {}
        self._max_bytes = limits.dns_max_message_bytes

    def _client(self, gen: Generation, peer: str) -> _Client:
        """Who sent a datagram (v4-mapped v6 → v4, as on the proxy's listener), its address as
        logged, and its policy name (None: it would have to authenticate, so never memoised).
        Memoised per socket address for the generation; bounded."""
        known = self._clients.get(peer)
        if known is None:
            address = ipaddress.ip_address(peer.split("%", 1)[0])
            if address.version == 6 and address.ipv4_mapped is not None:
                address = address.ipv4_mapped
            identity = ClientIdentity(address)
            policy: str | None = _TRIVIAL
            if not gen.policies.selector.trivial:
                try:
                    policy = gen.policies.selector.select(identity)
                except NeedsAuthentication:
                    policy = None
            known = _Client(identity, address.compressed, policy)
            if len(self._clients) >= _SELECTOR_MEMO_MAX:
                self._clients.clear()  # a scan from many addresses cannot grow it
            self._clients[peer] = known
        return known

    # ---- the hot path (UDP)
    def udp_query(self, data: bytes, addr: tuple[Any, ...]) -> None:
        started = time.perf_counter()
        gen = self.ctx.state.current
        if gen is not self._gen:
            self._switch(gen)
        if len(data) > self._max_bytes:
            return  # dropped: an oversized "query" is either an attack or not DNS
        client = self._client(gen, addr[0])
        memo_key = (client.policy, data[2:]) if client.policy is not None else None
        hit = self._answers.data.get(memo_key) if memo_key is not None else None
        if hit is not None and hit.expires > time.monotonic():
            self._replay(hit, data, addr, client.text, started)
            return
        host = client.text
        try:
            query = dns_wire.parse_query(data)
        except Unanswerable as exc:
            self._malformed(exc, host, len(data), started, lambda r: self._send_udp(r, addr))
            return
        rules = self._rules
        assert rules is not None
        verdict = decide(
            gen.policies,
            rules,
            client.identity,
            query.name,
            query.qtype,
            query.qclass,
            query.opcode,
        )
        local = _local_answer(gen, rules, query, verdict)
        if local is not None:
            self._remember(gen, local, memo_key)
            self._send_udp(data[:2] + local.tail, addr)
            self._log(local, host, len(data), len(local.tail) + 2, started)
            return
        spawn(
            self._udp_forward(gen, rules, query, verdict, data, addr, memo_key, started),
            "dns-udp",
        )

    async def _udp_forward(
        self,
        gen: Generation,
        rules: DnsRules,
        query: Query,
        verdict: DnsVerdict,
        data: bytes,
        addr: tuple[Any, ...],
        memo_key: tuple[str, bytes] | None,
        started: float,
    ) -> None:
        answer = await self._forward(gen, rules, query, verdict, tcp=False)
        self._remember(gen, answer, memo_key)
        self._send_udp(data[:2] + answer.tail, addr)
        self._log(answer, self._client(gen, addr[0]).text, len(data), len(answer.tail) + 2, started)

    def _replay(
        self, hit: _Remembered, data: bytes, addr: tuple[Any, ...], host: str, started: float
    ) -> None:
        """The hot path: a remembered answer, its record from the pre-rendered parts."""
        udp = self._udp
        if udp is not None:
            try:
                udp.sendto(data[:2] + hit.tail, addr)
            except OSError:
                pass  # the client's problem (buffer full, unreachable): never the guard's
        ctx = self.ctx
        queries = ctx.metrics.dns_queries
        queries[hit.metric] = queries.get(hit.metric, 0) + 1
        log = ctx.access_log
        duration_ms = (time.perf_counter() - started) * 1000.0
        log.write_line(
            f'{{"ts":"{log.timestamp(time.time())}","client":"{host}",'
            f"{hit.mid}{duration_ms:.3f}{hit.line_tail}"
        )

    def _send_udp(self, reply: bytes, addr: tuple[Any, ...]) -> None:
        if self._udp is not None and not self._udp.is_closing():
            with contextlib.suppress(OSError):
                self._udp.sendto(reply, addr)

    def _remember(
        self, gen: Generation, answer: _Answer, memo_key: tuple[str, bytes] | None
    ) -> None:
        """Keep an answer for replay; its log line rendered once, around what varies. An answer
        decided under a generation that a reload has replaced meanwhile is not kept."""
        if memo_key is None or answer.expires <= 0 or gen is not self._gen:
            return
        record = self._record(answer, "", len(memo_key[1]) + 2, len(answer.tail) + 2, 0.0)
        line = format_record(record, cast(Any, _NoClock()))
        rest = line[len(_TEMPLATE_HEAD) :]
        cut = rest.find(_DURATION) + len(_DURATION)
        after = rest[cut:]
        if not line.startswith(_TEMPLATE_HEAD) or cut < len(_DURATION) or after[:5] != "0.000":
            return  # the log's line layout changed: answer without replay rather than misrender
        remembered = _Remembered(
            answer.tail, answer.expires, rest[:cut], after[5:], (record.decision, record.reason)
        )
        self._answers.put(memo_key, remembered)

    # ---- TCP (and the shared slow path)
    async def tcp_query(self, data: bytes, host: str) -> bytes | None:
        """The answer to one TCP frame (None: no answer, close)."""
        started = time.perf_counter()
        gen = self.ctx.state.current
        if gen is not self._gen:
            self._switch(gen)
        rules = self._rules
        assert rules is not None
        client = self._client(gen, host)
        replies: list[bytes] = []
        try:
            query = dns_wire.parse_query(data)
        except Unanswerable as exc:
            self._malformed(exc, client.text, len(data), started, replies.append)
            return replies[0] if replies else None
        verdict = decide(
            gen.policies,
            rules,
            client.identity,
            query.name,
            query.qtype,
            query.qclass,
            query.opcode,
        )
        answer = _local_answer(gen, rules, query, verdict)
        if answer is None:
            answer = await self._forward(gen, rules, query, verdict, tcp=True)
        reply = data[:2] + answer.tail
        self._log(answer, client.text, len(data), len(reply), started)
        return reply

    async def _forward(
        self, gen: Generation, rules: DnsRules, query: Query, verdict: DnsVerdict, tcp: bool
    ) -> _Answer:
        """Ask upstream (or the upstream cache), vet, and render the client's answer."""
        try:
            expires, upstream = await self._lookup(gen, query)
        except _UpstreamFailure as failure:
            wire = dns_wire.rcode_only(query, dns.rcode.SERVFAIL)
            return _Answer(
                wire[2:],
                0.0,
                query.name,
                query.type_text,
                verdict,
                int(dns.rcode.SERVFAIL),
                reason=failure.reason,
                detail=failure.detail,
            )
        if not verdict.passthrough:
            addresses = dns_wire.answer_addresses(upstream)
            refused = vet_answer(gen.policies, rules, verdict, addresses)
            if refused is not None:
                refusal, address = refused
                wire = dns_wire.rcode_only(query, refusal.rcode)
                return _Answer(
                    wire[2:],
                    expires,
                    query.name,
                    query.type_text,
                    refusal,
                    int(refusal.rcode),
                    address=str(address),
                )
        wire = dns_wire.forwarded(query, upstream, tcp)
        truncated = not tcp and bool(int.from_bytes(wire[2:4], "big") & dns.flags.TC)
        return _Answer(
            wire[2:],
            0.0 if truncated else expires,
            query.name,
            query.type_text,
            verdict,
            upstream.rcode(),
        )

    async def _lookup(self, gen: Generation, query: Query) -> tuple[float, dns.message.Message]:
        """The upstream answer for the question, from the cache, a query in flight, or anew."""
        key = (query.name, query.qtype, query.qclass)
        cached = self._upstream.data.get(key)
        if cached is not None and cached[0] > time.monotonic():
            return cast(tuple[float, dns.message.Message], cached)
        limits = gen.config.limits
        future = self._inflight.get(key)
        if future is None:
            if len(self._inflight) >= limits.dns_max_inflight:
                raise _UpstreamFailure(
                    Reason.DNS_OVERLOADED, f"{limits.dns_max_inflight} upstream queries in flight"
                )
            future = asyncio.get_running_loop().create_future()
            self._inflight[key] = future
            try:
                message = await self._ask(gen, query)
            except _UpstreamFailure as failure:
                future.set_exception(failure)
                future.exception()  # retrieved: waiters re-raise it, nobody else must
                raise
            finally:
                del self._inflight[key]
            ttl_s = dns_wire.answer_ttl_s(
                message, limits.dns_cache_min_ttl_s, limits.dns_cache_max_ttl_s
            )
            entry = (time.monotonic() + ttl_s, message)
            if message.rcode() not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
                entry = (0.0, message)  # SERVFAIL, REFUSED...: passed on, never kept
            elif gen is self._gen:  # (a reload meanwhile has emptied the cache: keep it so)
                self._upstream.put(key, entry)
            future.set_result(message)
            return entry
        message = await future
        return 0.0, message

    async def _ask(self, gen: Generation, query: Query) -> dns.message.Message:
        """One question to the nameservers in order, within limits.dns_timeout_s in total."""
        servers = self._nameservers(gen.config)
        if not servers:
            raise _UpstreamFailure(Reason.DNS_FAILURE, "no nameservers configured or found")
        request = dns_wire.upstream_query(query)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + gen.config.limits.dns_timeout_s
        failure = _UpstreamFailure(Reason.DNS_TIMEOUT, "no nameserver answered in time")
        for index, (host, port) in enumerate(servers):
            left_s = deadline - loop.time()
            if left_s <= 0:
                break
            timeout_s = left_s / (len(servers) - index)  # later nameservers keep their share
            try:
                return await dns_client.ask(request, host, port, timeout_s)
            except (TimeoutError, dns.exception.Timeout):
                failure = _UpstreamFailure(Reason.DNS_TIMEOUT, f"{host}:{port} did not answer")
            except Exception as exc:  # any decoding or socket error: try the next nameserver
                failure = _UpstreamFailure(
                    Reason.DNS_FAILURE, f"{host}:{port}: {type(exc).__name__}"
                )
        raise failure

    def _nameservers(self, config: Config) -> tuple[tuple[str, int], ...]:
        if config.nameservers:
            parsed = (ListenAddress.parse(s) for s in config.nameservers)
            return tuple((a.host, a.port) for a in parsed)
        if self._system_nameservers is None:
            try:
                found = dns.resolver.Resolver(configure=True).nameservers
            except dns.exception.DNSException:
                found = []
            self._system_nameservers = tuple((str(s), 53) for s in found)
        return self._system_nameservers

    # ---- records
    def _malformed(
        self, exc: Unanswerable, host: str, size: int, started: float, send: Any
    ) -> None:
        if exc.reply is not None:
            send(exc.reply)
        answer = _Answer(
            b"",
            0.0,
            None,
            "?",
            None,
            int(dns.rcode.FORMERR) if exc.reply is not None else -1,
            reason=Reason.BAD_REQUEST,
            detail=exc.why,
        )
        self._log(answer, host, size, len(exc.reply or b""), started)

    def _log(self, answer: _Answer, host: str, up: int, down: int, started: float) -> None:
        duration_ms = (time.perf_counter() - started) * 1000.0
        record = self._record(answer, host, up, down, duration_ms)
        ctx = self.ctx
        ctx.metrics.count_dns_query(record.decision, record.reason)
        ctx.access_log.write(record)

    @staticmethod
    def _record(answer: _Answer, host: str, up: int, down: int, duration_ms: float) -> AccessRecord:
        verdict = answer.verdict
        if verdict is None:  # undecodable: refused as a bad request
            reason, decision = answer.reason or Reason.BAD_REQUEST, "deny"
        elif answer.reason is not None:  # the upstream failed us
            reason, decision = answer.reason, "error"
        else:
            reason, decision = verdict.reason, verdict.decision
        record = AccessRecord(
            time.time(),
            host,
            answer.qtype,
            "dns",
            host=answer.name,
            policy=verdict.policy if verdict else None,
            address=answer.address,
            decision=decision,
            reason=reason.value,
            rule=verdict.rule if verdict else None,
            status=answer.rcode,
            bytes_up=up,
            bytes_down=down,
            duration_ms=duration_ms,
            detail=answer.detail or (verdict.detail if verdict else None),
        )
        return record


def _local_answer(
    gen: Generation, rules: DnsRules, query: Query, verdict: DnsVerdict
) -> _Answer | None:
    """The answer that needs nobody else (refusals, proxy answers), or None: forward."""
    limits = gen.config.limits
    if verdict.action is DnsAction.REFUSE:
        wire = dns_wire.rcode_only(query, verdict.rcode)
        # Valid until the generation changes (which forgets every answer); the clamp only
        # keeps the memo's entries from living forever.
        expires = time.monotonic() + limits.dns_cache_max_ttl_s
        return _Answer(wire[2:], expires, query.name, query.type_text, verdict, int(verdict.rcode))
    if verdict.action is DnsAction.ANSWER_PROXY:
        wire = dns_wire.proxy_answer(query, rules.proxy_v4, rules.proxy_v6, rules.proxy_ttl_s)
        expires = time.monotonic() + min(rules.proxy_ttl_s, limits.dns_cache_max_ttl_s)
        return _Answer(wire[2:], expires, query.name, query.type_text, verdict, 0)
    return None


class _UpstreamFailure(Exception):
    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class _UdpServer(asyncio.DatagramProtocol):
    __slots__ = ("guard",)

    def __init__(self, guard: DnsGuard) -> None:
        self.guard = guard

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self.guard.udp_query(data, addr)

    def error_received(self, exc: Exception) -> None:
        pass  # an ICMP error for an earlier reply: nothing to do, the next datagram is fine


class _TcpClient(asyncio.Protocol):
    """One TCP client: length-prefixed queries (RFC 7766), answered as each completes."""

    def __init__(self, guard: DnsGuard) -> None:
        self.guard = guard
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.queries = 0
        self.pending = 0
        self.host = ""
        self.timer: asyncio.TimerHandle | None = None
        self.closing = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        limits = self.guard.ctx.state.current.config.limits
        if len(self.guard.tcp_clients) >= limits.dns_max_tcp_connections:
            self.transport.abort()
            return
        self.guard.tcp_clients.add(self)
        peer = transport.get_extra_info("peername")
        self.host = str(peer[0]) if peer else "?"
        self._arm(limits.dns_tcp_idle_s)

    def _arm(self, idle_s: float) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.timer = asyncio.get_running_loop().call_later(idle_s, self.abort)

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        self.buffer += data
        limits = self.guard.ctx.state.current.config.limits
        while len(self.buffer) >= 2:
            length = int.from_bytes(self.buffer[:2], "big")  # RFC 7766 framing, not DNS
            if length == 0 or length > limits.dns_max_message_bytes:
                self.abort()
                return
            if len(self.buffer) < 2 + length:
                return  # the idle timer bounds how long a frame may take to arrive
            frame = bytes(self.buffer[2 : 2 + length])
            del self.buffer[: 2 + length]
            self.queries += 1
            self.pending += 1
            self._arm(limits.dns_tcp_idle_s)
            spawn(self._answer(frame), "dns-tcp")
            if self.queries >= limits.dns_tcp_max_queries:
                self.closing = True
                assert self.transport is not None
                self.transport.pause_reading()
                return

    async def _answer(self, frame: bytes) -> None:
        try:
            reply = await self.guard.tcp_query(frame, self.host)
        finally:
            self.pending -= 1
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if reply is None:
            self.abort()
            return
        transport.write(len(reply).to_bytes(2, "big") + reply)
        if self.closing and self.pending == 0:
            transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.guard.tcp_clients.discard(self)
        if self.timer is not None:
            self.timer.cancel()
        self.transport = None


def _bind_pair(listen: ListenAddress) -> tuple[Any, Any]:
    """UDP and TCP sockets on the same port (port 0: UDP picks, TCP follows; bounded retries)."""
    last: OSError | None = None
    for _ in range(20):
        udp = bind_udp(listen)
        port = udp.getsockname()[1]
        try:
            tcp = bind(ListenAddress(listen.host, port))
        except Exception as exc:
            udp.close()
            if listen.port != 0:
                raise
            last = OSError(str(exc))
            continue
        return udp, tcp
    raise last or OSError("cannot bind UDP and TCP on one port")
