"""Plain-HTTP forwarding: one HttpExchange per absolute-form request, over a pooled
UpstreamConnection.

Bodies stream both ways with flow control (a side whose write buffer is full pauses reading on
the other side); nothing is held whole in memory. The request head is rewritten (origin-form
target, Host from the URI, hop-by-hop headers removed, Via added, no X-Forwarded-For unless
configured); the response head likewise. Redirects are passed to the client, never followed.
`Expect: 100-continue` is forwarded and the origin's 100 relayed. An Upgrade (WebSocket) to an
allowed host switches both connections to a byte relay after the 101.

Fast path: when the destination's addresses are known without waiting (IP literal, hosts file,
DNS cache) and an idle upstream connection exists, the request is sent from the data_received
callback without creating a coroutine.
"""

from __future__ import annotations

import asyncio
import time
from typing import cast

from egressgate.config.model import Limits
from egressgate.errors import ProtocolError, ProxyFailure, Reason, Refused, UpstreamError
from egressgate.http1 import render
from egressgate.http1.events import END, Event, RequestHead, ResponseHead, TunnelStart
from egressgate.http1.parser import ResponseParser
from egressgate.http1.semantics import (
    NO_BODY,
    connection_tokens,
    end_to_end,
    parse_proxy_target,
    request_framing,
    response_framing,
    wants_upgrade,
)
from egressgate.names.hostname import IPAddress, address_text
from egressgate.net.outbox import Output
from egressgate.net.pump import TransportPump
from egressgate.net.relay import RelayStats
from egressgate.net.tasks import spawn
from egressgate.policy.decision import Target
from egressgate.policy.secret_scan import LeakScan
from egressgate.proxy import gate
from egressgate.proxy.auth import login_from_headers
from egressgate.proxy.context import connect_step, resolve_into
from egressgate.proxy.exchange import ClientSide, Exchange
from egressgate.proxy.failsafe import internal_error
from egressgate.proxy.gate import Admission, Connect, NeedAddresses, Open, Refuse, Step
from egressgate.proxy.intercept import head_leaks, leak_finder
from egressgate.proxy.upstream_pool import PoolKey, UpstreamPool
from egressgate.runtime.state import Generation

# Request body bytes buffered while the upstream connection is being set up.
MAX_EARLY_BODY_BYTES = 256 * 1024
HEALTH_RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\r\nok\n"


class UpstreamConnection(asyncio.Protocol):
    """An HTTP/1.1 connection to one vetted address; serves one exchange at a time."""

    __slots__ = (
        "address",
        "exchange",
        "idle_since",
        "key",
        "max_head_bytes",
        "max_headers",
        "output",
        "parser",
        "pool",
        "transport",
    )

    def __init__(
        self,
        pool: UpstreamPool[UpstreamConnection],
        key: PoolKey,
        output: Output,
        address: IPAddress,
        limits: Limits,
    ) -> None:
        self.pool = pool
        self.key = key
        self.address = address
        self.max_head_bytes = limits.max_response_header_bytes
        self.max_headers = limits.max_response_headers
        self.parser = ResponseParser(self.max_head_bytes, self.max_headers)
        self.transport: asyncio.Transport | None = None
        self.output = output  # every byte for the origin goes through it (net/outbox.py)
        self.exchange: HttpExchange | None = None
        self.idle_since = 0.0  # monotonic time it entered the pool (0: in use)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses; same interface.
        self.transport = self.output.transport = cast(asyncio.Transport, transport)

    def fresh_parser(self) -> None:
        """A new parser for the next response on this connection (after a HEAD answer)."""
        self.parser = ResponseParser(self.max_head_bytes, self.max_headers)

    def data_received(self, data: bytes) -> None:
        exchange = self.exchange
        if exchange is None:
            self.close()  # unsolicited bytes on an idle connection: never reuse it
            return
        try:
            events = self.parser.feed(data)
        except ProtocolError as exc:
            exchange.upstream_failed(UpstreamError(Reason.UPSTREAM_BAD_RESPONSE, exc.detail))
            return
        try:  # the invariant's boundary (proxy/failsafe.py)
            for event in events:
                if self.exchange is not exchange:
                    break
                exchange.response_event(event)
        except Exception as exc:
            exchange.internal_error(exc)

    def eof_received(self) -> bool | None:
        return None  # close the transport; connection_lost does the rest

    def connection_lost(self, exc: Exception | None) -> None:
        self.pool.remove(self)
        exchange, self.exchange = self.exchange, None
        self.transport = self.output.transport = None
        if exchange is not None:
            exchange.upstream_lost()

    def pause_writing(self) -> None:
        if self.exchange is not None:
            self.exchange.conn.pause_reading()

    def resume_writing(self) -> None:
        if self.exchange is not None:
            self.exchange.conn.resume_reading()

    # ---- pool membership
    def usable(self) -> bool:
        return self.transport is not None and not self.transport.is_closing()

    def enter_pool(self, now: float) -> None:
        self.exchange = None
        self.idle_since = now

    def leave_pool(self) -> None:
        self.idle_since = 0.0

    def close(self) -> None:
        self.output.close()

    def abort(self) -> None:
        self.output.abort()


class HttpExchange(Exchange):
    """One plain-HTTP request and its response."""

    __slots__ = (
        "_early_body",
        "_early_size",
        "_scan",
        "admission",
        "chunk_response",
        "chunked_request",
        "conn",
        "ctx",
        "done",
        "head",
        "is_head",
        "keep_alive",
        "record",
        "request_complete",
        "response_deadline",
        "response_head",
        "response_open",
        "upgrade",
        "upstream",
    )

    def __init__(self, conn: ClientSide, head: RequestHead) -> None:
        self.conn = conn
        self.ctx = conn.ctx
        self.head = head
        method = head.method.decode("ascii", "replace")
        self.record = conn.new_record(method, "http")
        self.upstream: UpstreamConnection | None = None
        self._early_body: list[bytes] = []
        self._early_size = 0
        self._scan: LeakScan | None = None  # set when the generation has interception secrets
        self.chunked_request = False
        self.request_complete = False
        self.response_head: ResponseHead | None = None
        self.response_open = False
        self.chunk_response = False
        self.keep_alive = head.keep_alive
        self.is_head = head.method == b"HEAD"
        self.upgrade: bytes | None = None
        self.done = False
        self.response_deadline = 0.0  # checked by the sweeper via check_deadline()

    # ---- request side: a thin driver of the admission (proxy/gate.py)
    def start(self) -> None:
        conn, head = self.conn, self.head
        if head.target == b"/healthz":
            self._answer_health()
            return
        gen = self.ctx.state.current
        identity = conn.identity
        assert identity is not None
        try:
            target = parse_proxy_target(head.target)
            framing = request_framing(head)
        except ProxyFailure as exc:
            self.admission = Admission(
                gen, identity, None, host_text=_target_text(head), failure=exc
            )
            self._advance(self.admission.next())
            return
        if gen.policies.all_secrets:
            failure = self._secret_check(gen, head, framing.has_body)
            if failure is not None:
                self.admission = Admission(
                    gen, identity, None, host_text=target.host, failure=failure
                )
                self._advance(self.admission.next())
                return
        login = login_from_headers(head.headers) if gen.credentials.users else None
        try:
            destination = Target(gate.normalize_target_host(target.host), target.port, False)
        except ProxyFailure as exc:
            destination = None
            admission = Admission(gen, identity, None, login, host_text=target.host, failure=exc)
        else:
            admission = Admission(gen, identity, destination, login)
        self.admission = admission
        step = admission.next()
        if isinstance(step, Refuse):
            self._refuse(step)
            return
        tokens = connection_tokens(head.headers)
        self.upgrade = wants_upgrade(head, tokens)
        self.chunked_request = framing.chunked
        headers = end_to_end(head.headers, tokens)
        forwarded = conn.client_text.encode() if gen.config.forwarded_for else None
        request = render.request_head(
            head.method,
            target.path,
            target.authority,
            headers,
            upgrade=self.upgrade,
            chunked=framing.chunked,
            forwarded_for=forwarded,
            # The framing of the body forwarded, always written by us (issue 19): a length
            # only if the client sent one (NO_BODY: it sent neither length nor chunked).
            content_length=None if framing is NO_BODY else framing.content_length,
        )
        self._early_body.append(request)
        self._advance(step)

    def _secret_check(self, gen: Generation, head: RequestHead, body: bool) -> Refused | None:
        """A plain-HTTP leg is readable by anyone on the path: no interception secret may go
        out on it (issue 16). The head now, the body as it streams (LeakScan)."""
        finder = leak_finder(gen, None)
        if finder is None:
            return None
        if head_leaks(finder, head.target, head.headers):
            return Refused(Reason.SECRET_LEAK, "the request carries an interception secret")
        if body:
            self._scan = LeakScan(finder)
        return None

    def _advance(self, step: Step) -> None:
        """Follow the admission's steps as far as they go without waiting: a cached name and a
        pooled upstream connection finish here, in the data_received callback."""
        admission = self.admission
        while not self.done:
            match step:
                case NeedAddresses():
                    found = self.ctx.resolver.cached(step.name)
                    if found is None:
                        spawn(self._resolve(step.name), "egressgate-resolve", self.internal_error)
                        return
                    admission.addresses(found)
                case Connect():
                    upstream = self.ctx.pool.get(step.addresses, step.port)
                    if upstream is None:
                        spawn(self._connect(step), "egressgate-connect", self.internal_error)
                        return
                    admission.connected(upstream.address, upstream.key[0])
                    self._attach(upstream)
                    return
                case Refuse():
                    self._refuse(step)
                    return
                case Open():
                    raise AssertionError("this driver attaches at connected(), before Open")
            step = admission.next()

    async def _resolve(self, name: str) -> None:
        await resolve_into(self.ctx.resolver, self.admission, name)
        self._advance(self.admission.next())

    async def _connect(self, step: Connect) -> None:
        ctx = self.ctx
        sock = await connect_step(ctx, self.admission, step)
        if sock is None:
            self._advance(self.admission.next())
            return
        address = self.admission.opened
        key = (address_text(address), step.port)
        output = Output(ctx.outbox)
        limits = self.admission.gen.config.limits
        try:
            _, upstream = await asyncio.get_running_loop().create_connection(
                lambda: UpstreamConnection(ctx.pool, key, output, address, limits), sock=sock
            )
        except OSError as exc:
            sock.close()
            self.admission.fail(UpstreamError(Reason.UPSTREAM_ERROR, str(exc)))
            self._advance(self.admission.next())
            return
        if self.done:
            upstream.close()  # the client went away meanwhile
            return
        self._attach(upstream)

    def _refuse(self, step: Refuse) -> None:
        if not self.done:
            self.done = True
            self.conn.refuse(step.response(), gate.conclude(self.record, self.admission))

    def _answer_health(self) -> None:
        """The proxy port's own liveness answer (for `egressgate check --live`); not logged."""
        self.done = True
        self.conn.output.write(HEALTH_RESPONSE)
        self.conn.exchange_done(self.keep_alive)

    def _attach(self, upstream: UpstreamConnection) -> None:
        self.upstream = upstream
        upstream.exchange = self
        gate.conclude(self.record, self.admission)
        upstream.output.writelines(self._early_body)
        self._early_body = []
        if self.request_complete or self.upgrade is not None:
            self._arm_response_timer()
        if self._early_size > MAX_EARLY_BODY_BYTES:
            self.conn.resume_reading()

    def request_body(self, data: bytes) -> None:
        self.record.bytes_up += len(data)
        if self._scan is not None:
            safe = self._scan.feed(data)
            if safe is None:
                self._scan = None
                self.upstream_failed(
                    Refused(Reason.SECRET_LEAK, "the request body carries an interception secret"),
                    count=False,
                )
                return
            if not safe:
                return
            data = safe
        if self.chunked_request:
            data = render.chunk(data)
        upstream = self.upstream
        if upstream is not None:
            upstream.output.write(data)
            return
        self._early_body.append(data)
        self._early_size += len(data)
        if self._early_size > MAX_EARLY_BODY_BYTES:
            self.conn.pause_reading()

    def request_end(self) -> None:
        self.request_complete = True
        if self._scan is not None:
            rest = self._scan.flush()
            if rest:
                self.request_body_raw(render.chunk(rest) if self.chunked_request else rest)
        if self.chunked_request:
            self.request_body_raw(render.LAST_CHUNK)
        if self.upstream is not None:
            self._arm_response_timer()

    def request_body_raw(self, data: bytes) -> None:
        upstream = self.upstream
        if upstream is not None:
            upstream.output.write(data)
        else:
            self._early_body.append(data)

    def tunnel_start(self, rest: bytes) -> None:
        """The client sent Upgrade: bytes after its head belong to the new protocol."""
        self.request_complete = True
        if rest:
            self.request_body_raw(rest)
            self.record.bytes_up += len(rest)
        if self.upstream is not None:
            self._arm_response_timer()

    def client_eof(self) -> None:
        """The client half-closed with its request incomplete: nothing more will come.

        Security fix (issue 19): this was ignored, so the client socket sat in CLOSE-WAIT, the
        upstream connection stayed pinned with a half-sent body until the origin gave up, and
        no record was written. The request can never complete: abort both sides and log 499.
        """
        self.record.detail = (
            f"client left mid-body after {self.record.bytes_up} request body bytes relayed"
        )
        self.conn.force_close()  # → client_lost(): aborts the upstream, writes the record

    def client_lost(self) -> None:
        if self.done:
            return
        self.done = True
        self._cancel_response_timer()
        upstream, self.upstream = self.upstream, None
        if upstream is not None:
            upstream.exchange = None
            upstream.abort()  # a half-finished exchange cannot be reused
        record = gate.conclude(self.record, self.admission)
        record.detail = record.detail or "client closed the connection"
        if record.status == 0:
            record.status = 499
        self.conn.finish(record)

    def client_write_paused(self) -> None:
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.pause_reading()

    def client_write_resumed(self) -> None:
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.resume_reading()

    # ---- response side
    def _arm_response_timer(self) -> None:
        if not self.response_deadline and self.response_head is None:
            self.response_deadline = time.monotonic() + self.ctx.limits.response_timeout_s

    def _cancel_response_timer(self) -> None:
        self.response_deadline = 0.0

    def check_deadline(self, now: float) -> None:
        if self.response_deadline and now >= self.response_deadline:
            self.response_deadline = 0.0
            self.upstream_failed(
                UpstreamError(
                    Reason.UPSTREAM_TIMEOUT,
                    f"no response within {self.ctx.limits.response_timeout_s:g}s",
                )
            )

    def _to_client(self, data: bytes) -> None:
        # Queued with everything else for this client, in order, and written at the end of
        # the loop iteration (net/outbox.py): the next pipelined answer, a refusal or a
        # protocol switch cannot overtake it.
        self.conn.output.write(data)

    def response_event(self, event: Event) -> None:
        if isinstance(event, bytes):
            self.record.bytes_down += len(event)
            self._to_client(render.chunk(event) if self.chunk_response else event)
        elif isinstance(event, ResponseHead):
            self._response_head(event)
        elif event is END:
            head = self.response_head
            # httptools completes a 101 message before raising the upgrade: the TunnelStart
            # that follows switches protocols, so this END must not finish the exchange.
            if head is not None and self.response_open and head.status != 101:
                self._response_end()
        elif isinstance(event, TunnelStart):
            self._switch_protocols(event.rest)

    def _response_head(self, head: ResponseHead) -> None:
        transport = self.conn.transport
        if transport is None:
            return
        if 100 <= head.status < 200 and head.status != 101:
            # Informational (100 Continue, 103 Early Hints): relay, the final answer follows.
            if self.head.version == "1.1":
                self._to_client(
                    render.response_head(
                        head, end_to_end(head.headers, frozenset()), keep_alive=True, chunked=False
                    )
                )
            return
        self._cancel_response_timer()
        self.response_head = head
        self.response_open = True
        self.record.status = head.status
        if head.status == 101:
            return  # TunnelStart follows from the parser
        tokens = connection_tokens(head.headers)
        headers = end_to_end(head.headers, tokens)
        no_body, _, chunked, ends_by_close = response_framing(
            head, self.is_head, self.head.version == "1.1"
        )
        # A refused upgrade leaves the client's parser in upgrade mode: end the connection.
        self.keep_alive = (
            self.keep_alive and self.request_complete and self.upgrade is None and not ends_by_close
        )
        self.chunk_response = chunked
        self._to_client(
            render.response_head(
                head,
                headers,
                keep_alive=self.keep_alive,
                chunked=chunked,
                # The origin's length, written by us: for a body relayed as it came, and for
                # HEAD / 304 answers, where it describes the representation (RFC 9110 §8.6).
                content_length=None if chunked else head.content_length,
            )
        )
        if no_body:
            if self.is_head and self.upstream is not None:
                # httptools cannot be told the response answers a HEAD; a fresh parser for
                # the next response on this connection.
                self.upstream.fresh_parser()
            self._response_end(upstream_reusable=head.keep_alive)

    def _response_end(self, upstream_reusable: bool | None = None) -> None:
        head = self.response_head
        assert head is not None
        self.response_open = False
        if self.chunk_response:
            self._to_client(render.LAST_CHUNK)
        reusable = head.keep_alive if upstream_reusable is None else upstream_reusable
        upstream, self.upstream = self.upstream, None
        if upstream is not None:
            upstream.exchange = None
            if reusable and self.request_complete and upstream.usable():
                self.ctx.pool.put(upstream)
            else:
                upstream.close()
        self._finish()
        self.conn.exchange_done(self.keep_alive and self.request_complete)

    def _finish(self) -> None:
        if self.done:
            return
        self.done = True
        self._cancel_response_timer()
        self.conn.finish(self.record)  # concluded at _attach

    def _switch_protocols(self, rest: bytes) -> None:
        head = self.response_head
        upstream = self.upstream
        conn = self.conn
        if (
            head is None
            or upstream is None
            or upstream.transport is None
            or conn.transport is None
            or self.upgrade is None
        ):
            self.upstream_failed(
                UpstreamError(Reason.UPSTREAM_BAD_RESPONSE, "101 without an Upgrade request")
            )
            return
        tokens = connection_tokens(head.headers)
        upgrade_value = next((v for n, _, v in head.headers if n == b"upgrade"), self.upgrade)
        conn.output.write(
            render.response_head(
                head,
                end_to_end(head.headers, tokens),
                keep_alive=True,
                chunked=False,
                upgrade=upgrade_value,
            )
        )
        conn.detach_for_tunnel()  # writes what is queued for the client: the relay takes over
        upstream.output.flush()  # likewise the bytes the client sent after its Upgrade head
        self.upstream = None
        upstream.exchange = None
        self.record.kind = "tunnel"
        started = time.monotonic()
        self.ctx.metrics.active_tunnels += 1

        def done(stats: RelayStats) -> None:
            self.ctx.metrics.active_tunnels -= 1
            self.record.bytes_up += stats.bytes_up
            self.record.bytes_down += stats.bytes_down
            self.record.detail = (
                f"upgrade ended: {stats.end} after {time.monotonic() - started:.1f}s"
            )
            self._finish()

        TransportPump(
            conn.transport,
            upstream.transport,
            done,
            self.ctx.limits.idle_timeout_s,
            initial_down=rest,
        )

    def upstream_lost(self) -> None:
        """The origin closed the connection."""
        if self.done:
            return
        head = self.response_head
        if (
            head is not None
            and self.response_open
            and head.content_length is None
            and not head.chunked
        ):
            self.upstream = None
            self._response_end(upstream_reusable=False)  # a close-delimited body ends here
            return
        self.upstream = None
        self.upstream_failed(
            UpstreamError(Reason.UPSTREAM_RESET, "the destination closed the connection")
        )

    def upstream_failed(self, error: ProxyFailure, count: bool = True) -> None:
        self.conn.output.flush()  # bytes already produced go before the refusal or the cut
        if self.done:
            return
        if count:
            self.ctx.metrics.count_upstream_error(error.reason.value)
        upstream, self.upstream = self.upstream, None
        if upstream is not None:
            upstream.exchange = None
            upstream.abort()
        if self.response_head is None:
            self.done = True
            self._cancel_response_timer()
            record = gate.conclude(self.record, self.admission, error)
            self.conn.refuse(Refuse(error, record.host, record.policy, None).response(), record)
            return
        # The head is already on its way to the client: all we can do is cut the connection.
        # Fix (issue 19): this was logged as allow / allowed; the decision stays allow (the
        # request was allowed and relayed), the reason says how it ended.
        record = self.record
        record.reason = error.reason.value
        record.detail = (
            f"{error.detail} after {record.bytes_down} response body bytes relayed"
            " (client connection cut)"
        )
        self._finish()
        self.conn.force_close()

    def internal_error(self, exc: BaseException) -> None:
        """An unexpected exception in this exchange's work: 502 (or a cut connection once the
        response head is out), logged and counted (proxy/failsafe.py)."""
        failure = internal_error(self.ctx.metrics, exc, "plain-HTTP exchange")
        if not self.done:
            self.upstream_failed(failure, count=False)


def _target_text(head: RequestHead) -> str | None:
    """What the client asked for, for a refusal that could not parse it (bounded, printable)."""
    return head.target[:200].decode("latin-1") or None
