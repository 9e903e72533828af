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

The UDP socket is read directly (one reader on the event loop, up to `_UDP_BATCH` datagrams per
wake-up), and the forwarded path runs on callbacks: an upstream question is a `_Lookup` whose
datagram exchange sits on the reactor (net/dns_client.py), so no task, future or timer-wrapped
coroutine stands between the upstream's answer and the client's (the forwarded p99 was
dominated by them and by collector pauses over cached dnspython objects: the upstream cache
keeps wire bytes and the few facts the guard needs, not decoded messages).

Source address of replies: on a wildcard address (0.0.0.0, ::) the kernel would pick the reply's
source by routing, which is not the address the query was sent to when the host has several
(and after a REDIRECT, a reply from another address is one the client's conntrack entry does
not match: the client never sees it). The guard asks for each datagram's destination
(IP_PKTINFO, IPV6_RECVPKTINFO) and sends the reply from it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple, cast

import dns.entropy
import dns.exception
import dns.flags
import dns.message
import dns.rcode
import dns.resolver

from egressgate.config.model import Config, ListenAddress
from egressgate.errors import Reason
from egressgate.names.hostname import IPAddress
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
_UDP_BATCH = 64  # datagrams read per wake-up of the UDP socket, then the loop runs the others
# Room for one IP_PKTINFO / IPV6_PKTINFO control message (struct in6_pktinfo is the larger).
_CMSG_BYTES = socket.CMSG_SPACE(20)
_NO_CMSG: list[tuple[int, int, bytes]] = []
_IPV6_RECVPKTINFO = getattr(socket, "IPV6_RECVPKTINFO", 49)
_IPV6_PKTINFO = getattr(socket, "IPV6_PKTINFO", 50)
_IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)
_IPPROTO_IPV6 = socket.IPPROTO_IPV6
_IPPROTO_IP = socket.IPPROTO_IP
_KEPT_RCODES = (dns.rcode.NOERROR, dns.rcode.NXDOMAIN)


class _Upstream(NamedTuple):
    """An upstream answer as the guard keeps it: wire bytes and facts, no decoded message
    (a dnspython message is dozens of objects the cyclic collector would walk while cached)."""

    expires: float  # time.monotonic(); 0 = never reuse
    wire: bytes  # decoded once, answers our question (dns_wire.answers_question)
    addresses: tuple[IPAddress, ...]  # every address it offers (dns_wire.answer_addresses)
    rcode: int
    plain: bool  # no EDNS of its own: dns_wire.patched_answer may use it


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
        self._inflight: dict[tuple[str, int, int], _Lookup] = {}
        self._system_nameservers: tuple[tuple[str, int], ...] | None = None
        self._max_bytes = 0
        self._udp: socket.socket | None = None
        self._pktinfo = False  # bound to a wildcard address: reply from each query's destination
        self._tcp: asyncio.Server | None = None
        self.tcp_clients: set[_TcpClient] = set()
        self.address = ""

    # ---- lifecycle
    async def start(self, listen: ListenAddress) -> str:
        """Bind UDP and TCP on `listen` (the same port when it is 0); returns host:port."""
        loop = asyncio.get_running_loop()
        udp, tcp = _bind_pair(listen)
        self._pktinfo = _want_pktinfo(udp)
        self._udp = udp
        loop.add_reader(udp.fileno(), self._udp_readable)
        self._tcp = await loop.create_server(lambda: _TcpClient(self), sock=tcp)
        self.address = bound_address(tcp)
        return self.address

    def close(self) -> None:
        if self._udp is not None:
            asyncio.get_running_loop().remove_reader(self._udp.fileno())
            self._udp.close()
            self._udp = None
        for lookup in list(self._inflight.values()):
            lookup.cancel()
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
    def _udp_readable(self) -> None:
        """Read what waits on the UDP socket (bounded per wake-up), each datagram answered in
        turn; with IP_PKTINFO each carries the address it was sent to, for the reply."""
        sock = self._udp
        if sock is None:
            return
        size = self._max_bytes + 1 if self._gen is not None else 65536  # +1: spot oversize
        for _ in range(_UDP_BATCH):
            try:
                if self._pktinfo:
                    data, ancillary, _flags, addr = sock.recvmsg(size, _CMSG_BYTES)
                    reply_from = _reply_source(ancillary)
                else:
                    data, addr = sock.recvfrom(size)
                    reply_from = _NO_CMSG
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                continue  # an error queued for an earlier reply (ICMP): the next one is fine
            self.udp_query(data, addr, reply_from)

    def udp_query(
        self, data: bytes, addr: tuple[Any, ...], reply_from: list[tuple[int, int, bytes]]
    ) -> None:
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
            self._replay(hit, data, addr, reply_from, client.text, started)
            return
        host = client.text

        def send(reply: bytes) -> None:
            self._send_udp(reply, addr, reply_from)

        try:
            query = dns_wire.parse_query(data)
        except Unanswerable as exc:
            self._malformed(exc, host, len(data), started, send)
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
            send(data[:2] + local.tail)
            self._log(local, host, len(data), len(local.tail) + 2, started)
            return

        def answered(answer: _Answer) -> None:
            self._remember(gen, answer, memo_key)
            send(data[:2] + answer.tail)
            self._log(answer, host, len(data), len(answer.tail) + 2, started)

        self._forward(gen, rules, query, verdict, False, answered)

    def _replay(
        self,
        hit: _Remembered,
        data: bytes,
        addr: tuple[Any, ...],
        reply_from: list[tuple[int, int, bytes]],
        host: str,
        started: float,
    ) -> None:
        """The hot path: a remembered answer, its record from the pre-rendered parts."""
        self._send_udp(data[:2] + hit.tail, addr, reply_from)
        ctx = self.ctx
        queries = ctx.metrics.dns_queries
        queries[hit.metric] = queries.get(hit.metric, 0) + 1
        log = ctx.access_log
        duration_ms = (time.perf_counter() - started) * 1000.0
        log.write_line(
            f'{{"ts":"{log.timestamp(time.time())}","client":"{host}",'
            f"{hit.mid}{duration_ms:.3f}{hit.line_tail}"
        )

    def _send_udp(
        self, reply: bytes, addr: tuple[Any, ...], reply_from: list[tuple[int, int, bytes]]
    ) -> None:
        sock = self._udp
        if sock is None:
            return
        try:
            if reply_from:
                sock.sendmsg([reply], reply_from, 0, addr)
            else:
                sock.sendto(reply, addr)
        except OSError:
            pass  # the client's problem (buffer full, unreachable): never the guard's

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
            waiter: asyncio.Future[_Answer] = asyncio.get_running_loop().create_future()

            def answered(result: _Answer) -> None:
                if not waiter.done():
                    waiter.set_result(result)

            self._forward(gen, rules, query, verdict, True, answered)
            answer = await waiter
        reply = data[:2] + answer.tail
        self._log(answer, client.text, len(data), len(reply), started)
        return reply

    def _forward(
        self,
        gen: Generation,
        rules: DnsRules,
        query: Query,
        verdict: DnsVerdict,
        tcp: bool,
        answered: Callable[[_Answer], object],
    ) -> None:
        """Ask upstream (or the upstream cache, or join a question in flight), vet, and hand
        the client's answer to `answered` (at once, or when the upstream answers)."""
        question = dns_wire.question_wire(query)
        key = (query.name, query.qtype, query.qclass)
        cached = self._upstream.data.get(key)
        if cached is not None and cached.expires > time.monotonic():
            answered(self._client_answer(gen, rules, query, question, verdict, tcp, cached, None))
            return

        def done(found: _Upstream | None, failure: _UpstreamFailure | None) -> None:
            answer = self._client_answer(gen, rules, query, question, verdict, tcp, found, failure)
            answered(answer)

        lookup = self._inflight.get(key)
        if lookup is None:
            limits = gen.config.limits
            if len(self._inflight) >= limits.dns_max_inflight:
                overloaded = _UpstreamFailure(
                    Reason.DNS_OVERLOADED, f"{limits.dns_max_inflight} upstream queries in flight"
                )
                done(None, overloaded)
                return
            lookup = _Lookup(self, gen, query, question, key)
            self._inflight[key] = lookup
            lookup.waiters.append(done)
            lookup.start()
            return
        lookup.waiters.append(done)

    def _client_answer(
        self,
        gen: Generation,
        rules: DnsRules,
        query: Query,
        question: bytes,
        verdict: DnsVerdict,
        tcp: bool,
        found: _Upstream | None,
        failure: _UpstreamFailure | None,
    ) -> _Answer:
        """The client's answer from what the upstream said (or the failure), vetted."""
        if found is None:
            assert failure is not None
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
            refused = vet_answer(gen.policies, rules, verdict, found.addresses)
            if refused is not None:
                refusal, address = refused
                wire = dns_wire.rcode_only(query, refusal.rcode)
                return _Answer(
                    wire[2:],
                    found.expires,
                    query.name,
                    query.type_text,
                    refusal,
                    int(refusal.rcode),
                    address=str(address),
                )
        reply = None
        if found.plain:
            reply = dns_wire.patched_answer(query, question, found.wire, tcp)
        if reply is None:  # rare: too large for this client, or an upstream's own EDNS
            reply = dns_wire.forwarded(query, dns.message.from_wire(found.wire), tcp)
        truncated = not tcp and bool(int.from_bytes(reply[2:4], "big") & dns.flags.TC)
        return _Answer(
            reply[2:],
            0.0 if truncated else found.expires,
            query.name,
            query.type_text,
            verdict,
            found.rcode,
        )

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


class _Lookup:
    """One question to the upstream nameservers, in order, within limits.dns_timeout_s in all;
    every query waiting for the same (name, type, class) is a waiter. Callbacks only: a UDP
    exchange on the reactor per nameserver tried, a task only for the rare TCP retry."""

    __slots__ = (
        "deadline",
        "exchange",
        "failure",
        "gen",
        "guard",
        "index",
        "key",
        "query",
        "question",
        "servers",
        "task",
        "waiters",
    )

    def __init__(
        self,
        guard: DnsGuard,
        gen: Generation,
        query: Query,
        question: bytes,
        key: tuple[str, int, int],
    ) -> None:
        self.guard = guard
        self.gen = gen
        self.query = query
        self.question = question
        self.key = key
        self.waiters: list[Callable[[_Upstream | None, _UpstreamFailure | None], None]] = []
        self.servers: tuple[tuple[str, int], ...] = ()
        self.index = 0
        self.deadline = 0.0
        self.exchange: dns_client.UdpExchange[tuple[dns.message.Message, bytes]] | None = None
        self.task: asyncio.Task[None] | None = None
        self.failure = _UpstreamFailure(Reason.DNS_TIMEOUT, "no nameserver answered in time")

    def start(self) -> None:
        self.servers = self.guard._nameservers(self.gen.config)
        if not self.servers:
            self._fail(_UpstreamFailure(Reason.DNS_FAILURE, "no nameservers configured or found"))
            return
        loop = self.guard.ctx.reactor.loop
        self.deadline = loop.time() + self.gen.config.limits.dns_timeout_s
        self._next()

    def _next(self) -> None:
        """Ask the next nameserver with its share of the time left; fail when none is left."""
        loop = self.guard.ctx.reactor.loop
        servers = self.servers
        while self.index < len(servers):
            left_s = self.deadline - loop.time()
            if left_s <= 0:
                break
            host, port = servers[self.index]
            timeout_s = left_s / (len(servers) - self.index)  # later ones keep their share
            self.index += 1
            qid = dns.entropy.random_16()
            try:
                self.exchange = dns_client.UdpExchange(
                    self.guard.ctx.reactor,
                    dns_wire.upstream_request(self.question, qid),
                    host,
                    port,
                    timeout_s,
                    lambda data, qid=qid: self._accept(data, qid),  # type: ignore[misc]
                    self._udp_done,
                )
            except OSError as exc:
                self.failure = _UpstreamFailure(
                    Reason.DNS_FAILURE, f"{host}:{port}: {type(exc).__name__}"
                )
                continue
            return
        self._fail(self.failure)

    def _accept(self, data: bytes, qid: int) -> tuple[dns.message.Message, bytes] | None:
        """Our answer, decoded; None for anything else (not DNS, another ID or question)."""
        try:
            message = dns.message.from_wire(data)
        except Exception:  # undecodable: not our answer, keep waiting (spoofing, garbage)
            return None
        if not dns_wire.answers_question(message, qid, self.query):
            return None
        return message, data

    def _udp_done(
        self, result: tuple[dns.message.Message, bytes] | None, error: BaseException | None
    ) -> None:
        self.exchange = None
        host, port = self.servers[self.index - 1]
        if result is None:
            if isinstance(error, TimeoutError):
                self.failure = _UpstreamFailure(Reason.DNS_TIMEOUT, f"{host}:{port} did not answer")
            else:
                name = type(error).__name__
                self.failure = _UpstreamFailure(Reason.DNS_FAILURE, f"{host}:{port}: {name}")
            self._next()
            return
        message, wire = result
        if message.flags & dns.flags.TC:  # too large for a datagram: the rest of the time, TCP
            self.task = spawn(self._tcp(host, port), "dns-tcp-retry")
            return
        self._succeed(message, wire)

    async def _tcp(self, host: str, port: int) -> None:
        loop = self.guard.ctx.reactor.loop
        left_s = max(self.deadline - loop.time(), 0.001)
        request = dns.message.make_query(
            self.query.qname, self.query.qtype, self.query.qclass, use_edns=False
        )
        try:
            message = await dns_client.ask_tcp(request, host, port, left_s)
        except (TimeoutError, dns.exception.Timeout):
            self.failure = _UpstreamFailure(Reason.DNS_TIMEOUT, f"{host}:{port} did not answer")
        except Exception as exc:  # any decoding or socket error: try the next nameserver
            self.failure = _UpstreamFailure(
                Reason.DNS_FAILURE, f"{host}:{port}: {type(exc).__name__}"
            )
        else:
            self.task = None
            self._succeed(message, message.to_wire())
            return
        self.task = None
        self._next()

    def _succeed(self, message: dns.message.Message, wire: bytes) -> None:
        limits = self.gen.config.limits
        ttl_s = dns_wire.answer_ttl_s(
            message, limits.dns_cache_min_ttl_s, limits.dns_cache_max_ttl_s
        )
        rcode = message.rcode()
        kept = rcode in _KEPT_RCODES
        found = _Upstream(
            time.monotonic() + ttl_s
            if kept
            else 0.0,  # SERVFAIL, REFUSED...: passed on, never kept
            wire,
            dns_wire.answer_addresses(message),
            int(rcode),
            message.edns < 0,
        )
        guard = self.guard
        guard._inflight.pop(self.key, None)
        if (
            kept and self.gen is guard._gen
        ):  # (a reload meanwhile has emptied the cache: keep it so)
            guard._upstream.put(self.key, found)
        self._tell(found, None)

    def _fail(self, failure: _UpstreamFailure) -> None:
        self.guard._inflight.pop(self.key, None)
        self._tell(None, failure)

    def _tell(self, found: _Upstream | None, failure: _UpstreamFailure | None) -> None:
        waiters, self.waiters = self.waiters, []
        for waiter in waiters:
            waiter(found, failure)

    def cancel(self) -> None:
        """The guard is closing: stop asking; nobody is answered."""
        self.waiters = []
        if self.exchange is not None:
            self.exchange.cancel()
            self.exchange = None
        if self.task is not None:
            self.task.cancel()


def _want_pktinfo(sock: socket.socket) -> bool:
    """On a wildcard address, ask for each datagram's destination (see the module doc)."""
    host = sock.getsockname()[0]
    if host not in ("0.0.0.0", "::"):
        return False
    if sock.family == socket.AF_INET6:
        sock.setsockopt(_IPPROTO_IPV6, _IPV6_RECVPKTINFO, 1)
        try:  # IPv4 clients of a dual-stack socket: their destinations come as IP_PKTINFO
            sock.setsockopt(_IPPROTO_IP, _IP_PKTINFO, 1)
        except OSError:
            pass
    else:
        sock.setsockopt(_IPPROTO_IP, _IP_PKTINFO, 1)
    return True


def _reply_source(ancillary: list[tuple[int, int, bytes]]) -> list[tuple[int, int, bytes]]:
    """The control message that makes a reply leave from the address the query was sent to:
    IPv4, struct in_pktinfo {ifindex, spec_dst, addr} with spec_dst = the query's destination
    and ifindex 0 (routing picks the interface); IPv6, struct in6_pktinfo as received."""
    for level, kind, data in ancillary:
        if level == _IPPROTO_IP and kind == _IP_PKTINFO and len(data) >= 12:
            return [(_IPPROTO_IP, _IP_PKTINFO, bytes(4) + data[8:12] + bytes(4))]
        if level == _IPPROTO_IPV6 and kind == _IPV6_PKTINFO and len(data) >= 20:
            return [(_IPPROTO_IPV6, _IPV6_PKTINFO, data[:20])]
    return _NO_CMSG


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
