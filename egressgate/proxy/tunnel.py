"""CONNECT tunnels: port and policy check, the gate, "200", an optional SNI check, the relay.

Plain listeners hand the client socket to the zero-copy relay (net/relay.py): the socket is
duplicated and its asyncio transport aborted, so no transport keeps reading from it and an
idle tunnel costs only the relay's few objects. TLS listeners keep the transport and use the
transport pump (net/pump.py), because the bytes must be decrypted by the proxy.

SNI check (per policy, on by default): after "200", the first bytes from the client are read
and, if they are a TLS ClientHello, its server name must be the CONNECT host and allowed by the
policy (no domain fronting through an allowed name). A refused tunnel gets a TLS access_denied
alert (an HTTP 403 is no longer possible after "200"). Tunnels that carry no TLS or no SNI are
allowed or refused by the policy's `tunnels_without_sni`. The bytes read are relayed unchanged.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from dataclasses import replace
from typing import TYPE_CHECKING

from egressgate.errors import ProxyFailure
from egressgate.http1.events import RequestHead
from egressgate.http1.render import CONNECT_ESTABLISHED
from egressgate.http1.semantics import parse_connect_target
from egressgate.net.pump import TransportPump
from egressgate.net.relay import Relay, RelayStats
from egressgate.net.tasks import spawn
from egressgate.policy.decision import Decision, Target, Verdict
from egressgate.proxy import gate
from egressgate.proxy.auth import authenticate
from egressgate.proxy.refusal import TLS_ACCESS_DENIED_ALERT
from egressgate.runtime.state import Generation
from egressgate.tls.clienthello import MAX_HELLO_BYTES, HelloResult, read_sni

if TYPE_CHECKING:
    from egressgate.proxy.connection import ClientConnection

# How long to wait for a client's first tunnel bytes before judging the tunnel as "no TLS".
# Server-speaks-first protocols (SMTP, SSH) send nothing until the server does.
MAX_HELLO_WAIT_S = 5.0


class TunnelExchange:
    """One CONNECT request, then the tunnel it opens."""

    __slots__ = ("_relay", "conn", "ctx", "decision", "destination", "done", "gen", "head",
                 "hello", "record", "rest", "started")

    def __init__(self, conn: ClientConnection, head: RequestHead) -> None:
        self.conn: ClientConnection | None = conn
        self.ctx = conn.ctx
        self.head = head
        self.record = conn.new_record("CONNECT", "tunnel")
        self.rest = b""
        self.hello = b""
        self.done = False
        self.started = time.monotonic()
        self._relay: Relay | TransportPump | None = None

    def start(self) -> None:
        conn, record = self.conn, self.record
        assert conn is not None
        host_text: str | None = None
        try:
            target = parse_connect_target(self.head.target)
            host_text = target.host
            host = gate.normalize_target_host(target.host)
            record.host, record.port = host.text, target.port
            host_text = host.text
            gen = self.ctx.state.current
            identity = conn.identity
            assert identity is not None
            user = authenticate(self.head.headers, gen.credentials)
            if user is not None:
                record.user = user
                identity = replace(identity, user=user)
            self.destination = Target(host, target.port, connect=True)
            self.decision = gate.decide(gen, identity, self.destination, record)
            self.gen = gen
        except ProxyFailure as exc:
            self.done = True
            conn.refuse(exc, record, host_text)
            return
        spawn(self._open(), name="egressgate-tunnel")

    # Events from the client connection while the tunnel is being set up.
    def request_body(self, data: bytes) -> None:
        self.rest += data

    def request_end(self) -> None:
        pass

    def tunnel_start(self, rest: bytes) -> None:
        self.rest += rest

    def client_eof(self) -> None:
        pass

    def client_write_paused(self) -> None:
        pass

    def client_write_resumed(self) -> None:
        pass

    def client_lost(self) -> None:
        if not self.done:
            self.done = True
            self.record.status = 499
            self.record.detail = "client closed before the tunnel was open"
            self._finish_record()

    async def _open(self) -> None:
        record = self.record
        try:
            found = await gate.addresses(self.ctx, self.destination)
            vetted = gate.vet(self.gen, self.decision, found, record)
            sock, _ = await gate.connect_any(self.ctx, vetted, self.destination.port, record)
        except ProxyFailure as exc:
            if not self.done and self.conn is not None:
                self.done = True
                self.conn.refuse(exc, record, record.host)
            return
        conn = self.conn
        if self.done or conn is None or conn.transport is None or conn.transport.is_closing():
            sock.close()
            return
        record.status = 200
        if conn.transport.get_extra_info("sslcontext") is not None:
            await self._open_tls_side(conn, sock)
        else:
            self._open_raw(conn, sock)

    # ---- plain listener: raw sockets and splice
    def _open_raw(self, conn: ClientConnection, upstream: socket.socket) -> None:
        transport = conn.transport
        assert transport is not None
        raw = transport.get_extra_info("socket")
        client = socket.socket(fileno=os.dup(raw.fileno()))
        client.setblocking(False)
        transport.pause_reading()
        conn.detach_for_tunnel()
        conn.exchange = None
        transport.abort()  # closes uvloop's fd only; our duplicate keeps the socket
        self.conn = None
        self.ctx.metrics.active_tunnels += 1
        self.ctx.tunnels.add(self)
        try:
            client.send(CONNECT_ESTABLISHED)
        except OSError:
            client.close()
            upstream.close()
            self._tunnel_done(RelayStats(0, 0, "reset"))
            return
        policy = self.gen.policies.policies[self.decision.policy]
        if policy.sni_check:
            _HelloReader(self, client, upstream)
        else:
            self._relay_raw(client, upstream, self.rest)

    def _relay_raw(self, client: socket.socket, upstream: socket.socket, first: bytes) -> None:
        relay = Relay(client, upstream, self._tunnel_done, self.ctx.limits.idle_timeout_s,
                      initial_up=first)
        self._relay = relay
        relay.start()

    # ---- TLS listener: transports and the pump
    async def _open_tls_side(self, conn: ClientConnection, upstream_sock: socket.socket) -> None:
        transport = conn.transport
        assert transport is not None
        loop = asyncio.get_running_loop()
        try:
            up_transport, _ = await loop.create_connection(asyncio.Protocol, sock=upstream_sock)
        except OSError:
            upstream_sock.close()
            transport.abort()
            return
        conn.detach_for_tunnel()
        conn.exchange = None
        self.conn = None
        self.ctx.metrics.active_tunnels += 1
        self.ctx.tunnels.add(self)
        transport.write(CONNECT_ESTABLISHED)
        self._relay = TransportPump(transport, up_transport, self._tunnel_done,
                                    self.ctx.limits.idle_timeout_s, initial_up=self.rest)

    # ---- SNI
    def judge_hello(self, data: bytes, timed_out: bool) -> Decision | None | HelloResult:
        """None: relay. A Decision: refuse. NEED_MORE: keep reading."""
        policy = self.gen.policies.policies[self.decision.policy]
        result = read_sni(data)
        if result is HelloResult.NEED_MORE and not timed_out and len(data) < MAX_HELLO_BYTES:
            return HelloResult.NEED_MORE
        if isinstance(result, str):
            self.record.sni = result
            verdict = policy.decide_sni(self.destination.host, result)
        elif timed_out and not data:
            verdict = policy.no_sni("the client sent nothing (server-speaks-first protocol?)")
        else:
            why = {HelloResult.NOT_TLS: "the tunnel does not carry TLS",
                   HelloResult.NO_SNI: "the TLS ClientHello has no server name"}.get(
                result if isinstance(result, HelloResult) else HelloResult.MALFORMED,
                "the TLS ClientHello could not be read")
            verdict = policy.no_sni(why)
        if verdict is None:
            return None
        if verdict.verdict is Verdict.REPORT:
            self.record.decision = "report"
            self.record.reason = verdict.reason.value
            self.record.detail = verdict.detail
            return None
        return verdict

    def refuse_after_hello(self, client: socket.socket, upstream: socket.socket,
                           verdict: Decision, was_tls: bool) -> None:
        record = self.record
        record.decision = "deny"
        record.reason = verdict.reason.value
        record.status = verdict.reason.status
        record.detail = verdict.detail
        if was_tls:
            try:
                client.send(TLS_ACCESS_DENIED_ALERT)
            except OSError:
                pass
        client.close()
        upstream.close()
        self._tunnel_done(RelayStats(0, 0, "refused"))

    def closed_before_hello(self, client: socket.socket, upstream: socket.socket) -> None:
        client.close()
        upstream.close()
        self._tunnel_done(RelayStats(0, 0, "eof"))

    # ---- end
    def _tunnel_done(self, stats: RelayStats) -> None:
        self.ctx.metrics.active_tunnels -= 1
        self.ctx.tunnels.discard(self)
        self._relay = None
        record = self.record
        record.bytes_up += stats.bytes_up
        record.bytes_down += stats.bytes_down
        if stats.end not in ("eof", "refused") and record.detail is None:
            record.detail = f"tunnel ended: {stats.end}"
        self._finish_record()

    def _finish_record(self) -> None:
        self.record.duration_ms = (time.time() - self.record.start) * 1000.0
        self.ctx.finish(self.record)

    # ---- draining (Closable)
    def shutdown_idle(self) -> None:
        pass

    def force_close(self) -> None:
        if self._relay is not None:
            self._relay.close()


class _HelloReader:
    """Reads the client's first tunnel bytes (raw socket) until the SNI can be judged."""

    __slots__ = ("client", "data", "exchange", "loop", "timer", "upstream")

    def __init__(self, exchange: TunnelExchange, client: socket.socket,
                 upstream: socket.socket) -> None:
        self.exchange = exchange
        self.client = client
        self.upstream = upstream
        self.data = exchange.rest
        self.loop = asyncio.get_running_loop()
        wait = min(MAX_HELLO_WAIT_S, exchange.ctx.limits.header_timeout_s)
        self.timer = self.loop.call_later(wait, self._judge, True)
        if self.data and self._judge(False):
            return
        self.loop.add_reader(client.fileno(), self._readable)

    def _readable(self) -> None:
        try:
            chunk = self.client.recv(MAX_HELLO_BYTES)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if not chunk:
            if self.data:
                self._judge(True)  # judge what arrived before the client's EOF
            else:
                self._stop()
                self.exchange.closed_before_hello(self.client, self.upstream)
            return
        self.data += chunk
        self._judge(False)

    def _judge(self, timed_out: bool) -> bool:
        outcome = self.exchange.judge_hello(self.data, timed_out)
        if outcome is HelloResult.NEED_MORE:
            return False
        if isinstance(outcome, Decision):
            self._stop()
            self.exchange.refuse_after_hello(self.client, self.upstream, outcome,
                                             self.data[:1] == b"\x16")
        else:
            # The relay re-registers the same reader: leaving ours in place saves two
            # epoll_ctl calls per tunnel.
            self._stop(keep_reader=True)
            self.exchange._relay_raw(self.client, self.upstream, self.data)  # noqa: SLF001
        return True

    def _stop(self, keep_reader: bool = False) -> None:
        self.timer.cancel()
        if not keep_reader:
            self.loop.remove_reader(self.client.fileno())
