"""TLS interception: the I/O driver of one intercepted tunnel (docs/interception.md).

A front end (proxy/raw_tunnel.py RawTunnel for CONNECT and SOCKS5, proxy/transparent.py for
redirected TLS) admits a tunnel exactly as always: decide on the name, resolve, vet, connect
to a vetted address, read the ClientHello and judge its SNI. When the admitted host is listed
under the policy's `intercept` (`Open.intercept`), it hands the client socket, the connected
upstream socket and the hello bytes to an `InterceptSession` instead of the splice relay:

    client ──TLS (leaf minted for the admitted name, ALPN http/1.1)──▶ InterceptSession
        RequestParser (http1/parser.py, bounded heads)
        per request: target form, Host = the admitted name, framing (smuggling rules),
                     InterceptHost.judge(method, target, websocket) ── 403 + record
                     another host's secret in the head or body ────── 403 secret-leak
                     set_headers replace the client's values
        render.request_head (the proxy writes the framing) ──▶ upstream
    upstream ◀──TLS (system store + upstream_ca_file, server_hostname = the admitted name)──
        ResponseParser ──▶ render.response_head, secrets redacted in heads and bodies ──▶ client

The upstream TLS connection goes to the address the admission vetted, never anywhere the
client names; its certificate is verified, and a failure is answered inside the tunnel as
`502 upstream-bad-certificate`. Requests on one connection are served one at a time (a
pipelined request waits, bounded by the parser's head limits and back-pressure). Every request
is one access record of kind `intercept` (method, host, normalized path, rule, reason); the
tunnel keeps its own record, written by the front end when `on_end` is called.

The client's TLS is terminated with `ssl.SSLObject` over memory BIOs on a plain transport,
because the front end has already read the ClientHello off the socket (the SNI check): the
bytes are fed to OpenSSL first, then whatever the transport delivers. Policy and parsing stay
pure elsewhere: policy/intercept.py (rules, paths, secrets), policy/secret_scan.py (leak
scanning, redaction), tls/leaf.py (certificates), http1/ (parsing, rendering).
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from egressgate.config.intercept_ca import load_ca
from egressgate.errors import ProtocolError, ProxyFailure, Reason, Refused, UpstreamError
from egressgate.http1 import render
from egressgate.http1.events import END, Event, RequestHead, ResponseHead, TunnelStart
from egressgate.http1.parser import RequestParser, ResponseParser
from egressgate.http1.semantics import (
    NO_BODY,
    connection_tokens,
    end_to_end,
    request_framing,
    response_framing,
    split_authority,
    wants_upgrade,
)
from egressgate.names.hostname import InvalidHost, normalize_host
from egressgate.net.relay import RelayStats
from egressgate.net.tasks import spawn
from egressgate.observe.record import AccessRecord
from egressgate.policy.clients import NeedsAuthentication
from egressgate.policy.decision import ClientIdentity
from egressgate.policy.intercept import InterceptHost
from egressgate.policy.secret_scan import LeakScan, Redactor, SecretFinder
from egressgate.proxy.context import ProxyContext
from egressgate.proxy.failsafe import internal_error
from egressgate.proxy.gate import Admission
from egressgate.proxy.refusal import TLS_INTERNAL_ERROR_ALERT, refusal_response
from egressgate.runtime.state import Generation

if TYPE_CHECKING:
    from egressgate.tls.leaf import LeafMinter

KIND = "intercept"
READ_BYTES = 64 * 1024  # plaintext taken out of the client's TLS object per read
# Request bytes buffered while the upstream TLS handshake is still running.
MAX_EARLY_BYTES = 256 * 1024
_REDACTED = "{} secret value(s) redacted from the response"

# Phases, for the one deadline a session has at a time (checked by the server's sweeper).
_HANDSHAKE, _IDLE, _HEAD, _BUSY, _UPGRADED = range(5)


# ---- per generation: the CA, the leaf cache and the upstream verification context
@dataclass(slots=True)
class InterceptTls:
    minter: LeafMinter
    upstream: ssl.SSLContext  # verifies origins: system store + upstream_ca_file
    handshake_timeout_s: float


_TLS: dict[int, InterceptTls] = {}  # generation number → its TLS material (the last few)
_MAX_TLS_GENERATIONS = 4


def intercept_tls(gen: Generation) -> InterceptTls:
    """The generation's CA and contexts, read from its files on first use (then cached)."""
    found = _TLS.get(gen.number)
    if found is not None:
        return found
    config = gen.config.tls_intercept
    if config is None:
        raise ProxyFailure(Reason.UPSTREAM_ERROR, "interception is not configured")
    limits = gen.config.limits
    # Checked at load already (mode, CA:TRUE, expiry, the key belongs to the certificate); read
    # again here, once per generation: a reload with a new CA is how a CA is rotated or revoked.
    from egressgate.tls.leaf import ALPN_HTTP1, LeafMinter  # (cryptography: config/intercept_ca.py)

    ca = load_ca(config.ca_cert_file, config.ca_key_file)
    minter = LeafMinter(
        ca.cert, ca.key, limits.intercept_leaf_cache_entries, limits.intercept_leaf_validity_s
    )
    upstream = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    if config.upstream_ca_file is not None:
        upstream.load_verify_locations(cafile=config.upstream_ca_file)
    upstream.minimum_version = ssl.TLSVersion.TLSv1_2
    upstream.set_alpn_protocols(list(ALPN_HTTP1))
    found = InterceptTls(minter, upstream, min(limits.header_timeout_s, limits.connect_timeout_s))
    if len(_TLS) >= _MAX_TLS_GENERATIONS:
        _TLS.pop(min(_TLS))
    _TLS[gen.number] = found
    return found


# ---- secrets: one finder per (host, generation), built on first use
# Key: (generation number, the InterceptHost whose own secrets are excepted, None for a
# plain-HTTP leg, or _EVERY for the redaction finder, which excepts none).
_FINDERS: dict[tuple[int, object], SecretFinder | None] = {}
_EVERY = object()
_MAX_FINDERS = 512


def _finder(gen: Generation, owner: object, excepted: tuple[bytes, ...]) -> SecretFinder | None:
    key = (gen.number, owner)
    try:
        return _FINDERS[key]
    except KeyError:
        pass
    secrets = [secret for secret, _host in gen.policies.all_secrets if secret not in excepted]
    finder = SecretFinder(secrets) if secrets else None
    if len(_FINDERS) >= _MAX_FINDERS:
        _FINDERS.clear()
    _FINDERS[key] = finder
    return finder


def leak_finder(gen: Generation, own: InterceptHost | None) -> SecretFinder | None:
    """The secrets a request to `own` (None: a plain-HTTP request) must not carry: every
    secret of the generation that does not belong to `own`. None when there are none."""
    return _finder(gen, own, own.secrets if own is not None else ())


def redact_finder(gen: Generation) -> SecretFinder | None:
    """Every secret of the generation (a response never shows any of them to a client)."""
    return _finder(gen, _EVERY, ())


def head_leaks(finder: SecretFinder, target: bytes, headers: list[Any]) -> bool:
    """A request head carries one of `finder`'s secrets (target or any header value)."""
    if finder.search(target):
        return True
    return any(finder.search(value) for _lname, _name, value in headers)


def handshake_failure_why(exc: BaseException) -> str:
    """The access-log detail of a client that refused the minted certificate (or any other
    failed handshake): OpenSSL's reason, and what it usually means here."""
    reason = getattr(exc, "reason", None) or str(exc)
    text = f"TLS handshake with the client failed: {reason}"
    if "ALERT" in str(reason).upper():
        text += (
            " (the client refused the interception certificate: it pins certificates or does"
            " not trust the interception CA; keep this host on a plain tunnel)"
        )
    return text


# ---- one request/response on the intercepted connection
class _Exchange:
    __slots__ = (
        "chunk_response",
        "chunked_request",
        "http11",
        "is_head",
        "keep_alive",
        "record",
        "redactor",
        "request_complete",
        "response_head",
        "scan",
        "target",
        "upgrade",
    )

    def __init__(self, record: AccessRecord, head: RequestHead) -> None:
        self.record = record
        self.is_head = head.method == b"HEAD"
        self.http11 = head.version == "1.1"
        self.keep_alive = head.keep_alive
        self.chunked_request = False
        self.request_complete = False
        self.response_head: ResponseHead | None = None
        self.chunk_response = False
        self.scan: LeakScan | None = None
        self.redactor: Redactor | None = None
        self.upgrade: bytes | None = None
        self.target = b"/"  # what goes upstream: the path that was judged, and the query


class _Upstream(asyncio.Protocol):
    """The origin's side: TLS by asyncio (verified), bytes handed to the session."""

    __slots__ = ("session", "transport")

    def __init__(self, session: InterceptSession) -> None:
        self.session = session
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:  # the invariant's boundary (proxy/failsafe.py)
            self.session.upstream_data(data)
        except Exception as exc:
            self.session.internal_error(exc)

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.session.upstream_lost()

    def pause_writing(self) -> None:
        self.session.pause_client()

    def resume_writing(self) -> None:
        self.session.resume_client()


class InterceptSession(asyncio.Protocol):
    """One intercepted connection (see the module docstring). It is the client transport's
    protocol; `on_end(stats)` is called once, when both sides are closed."""

    def __init__(
        self,
        ctx: ProxyContext,
        admission: Admission,
        host: InterceptHost,
        client_text: str,
        on_end: Callable[[RelayStats], None],
    ) -> None:
        target = admission.target
        assert target is not None
        assert target.host.name is not None
        self.ctx = ctx
        self.admission = admission
        self.gen = admission.gen
        self.host = host
        self.name = target.host.name
        self.port = target.port
        self.client_text = client_text
        self.on_end = on_end
        limits = self.gen.config.limits
        self.limits = limits
        self.tls = intercept_tls(self.gen)
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        context = self.tls.minter.context_for(self.name)
        self._ssl = context.wrap_bio(self._in, self._out, server_side=True)
        self._handshaking = True
        self._pending_hello = b""
        self.transport: asyncio.Transport | None = None
        self._parser = RequestParser(limits.max_request_line_bytes, limits.max_header_bytes)
        self._rparser = ResponseParser(
            limits.max_response_header_bytes, limits.max_response_headers
        )
        self._up: _Upstream | None = None
        self._up_failure: ProxyFailure | None = None
        self._early: list[bytes] = []
        self._early_bytes = 0
        self._pending: list[Event] = []  # pipelined events waiting for the current response
        self._client_paused = False
        self._raw_up = False  # after an Upgrade request: client bytes go upstream as they are
        self._raw_down = False  # after a 101: origin bytes go to the client as they are
        self._batch: list[bytes] | None = None  # client-bound bytes of one origin read
        self.ex: _Exchange | None = None
        self.bytes_up = 0
        self.bytes_down = 0
        self.ended = False
        self._closing = False
        self.phase = _HANDSHAKE
        self.deadline = 0.0
        self.last_activity = time.monotonic()
        self._leaks = leak_finder(self.gen, host)
        self._redact = redact_finder(self.gen)
        self._set_names = frozenset(name for name, _value in host.set_headers)
        self._set_lines = [(name, name, value) for name, value in host.set_headers]
        authority = self.name if self.port == 443 else f"{self.name}:{self.port}"
        self._authority = authority.encode("ascii")

    # ---- start: the client socket becomes a transport, the upstream TLS starts alongside
    def start(self, client_sock: Any, upstream_sock: Any, hello: bytes) -> None:
        """Take over both sockets (no longer in the reactor) and the bytes read already."""
        self._pending_hello = hello
        self._arm(self.tls.handshake_timeout_s)
        spawn(self._attach_client(client_sock), "egressgate-intercept", self.internal_error)
        spawn(self._connect_upstream(upstream_sock), "egressgate-intercept-up", self.internal_error)

    async def _attach_client(self, sock: Any) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.connect_accepted_socket(lambda: self, sock=sock)
        except OSError:
            sock.close()
            self._end("reset")

    def start_on_transports(
        self, client: asyncio.Transport, upstream: asyncio.Transport, hello: bytes
    ) -> None:
        """The same over transports (CONNECT inside the TLS listener): the client's (paused)
        transport is handed over, the plain upstream transport is upgraded to TLS."""
        self._pending_hello = hello
        self._arm(self.tls.handshake_timeout_s)
        client.set_protocol(self)
        self.connection_made(client)
        client.resume_reading()
        spawn(self._upgrade_upstream(upstream), "egressgate-intercept-up", self.internal_error)

    async def _connect_upstream(self, sock: Any) -> None:
        loop = asyncio.get_running_loop()
        try:
            _, upstream = await loop.create_connection(
                lambda: _Upstream(self),
                sock=sock,
                ssl=self.tls.upstream,
                server_hostname=self.name,
                ssl_handshake_timeout=self.tls.handshake_timeout_s,
            )
        except (ssl.SSLError, OSError, TimeoutError) as exc:
            sock.close()
            self._upstream_tls_failed(exc)
            return
        self._upstream_ready(upstream)

    async def _upgrade_upstream(self, plain: asyncio.Transport) -> None:
        loop = asyncio.get_running_loop()
        try:
            secured = await loop.start_tls(
                plain,
                plain.get_protocol(),
                self.tls.upstream,
                server_hostname=self.name,
                ssl_handshake_timeout=self.tls.handshake_timeout_s,
            )
        except (ssl.SSLError, OSError, TimeoutError) as exc:
            plain.close()
            self._upstream_tls_failed(exc)
            return
        if secured is None:  # the connection closed during the handshake
            self._upstream_tls_failed(ConnectionResetError("closed during the TLS handshake"))
            return
        upstream = _Upstream(self)
        secured.set_protocol(upstream)
        upstream.connection_made(secured)
        self._upstream_ready(upstream)

    def _upstream_tls_failed(self, exc: BaseException) -> None:
        if isinstance(exc, ssl.SSLCertVerificationError):
            self._upstream_failed(
                UpstreamError(
                    Reason.UPSTREAM_BAD_CERTIFICATE,
                    f"the certificate of {self.name} failed verification: {exc.verify_message}",
                )
            )
            return
        what = "TLS handshake with" if isinstance(exc, ssl.SSLError) else "connection to"
        self._upstream_failed(
            UpstreamError(Reason.UPSTREAM_ERROR, f"{what} {self.name} failed: {exc}")
        )

    def _upstream_ready(self, upstream: _Upstream) -> None:
        if self.ended:
            if upstream.transport is not None:
                upstream.transport.close()
            return
        self._up = upstream
        if self._early:
            assert upstream.transport is not None
            upstream.transport.writelines(self._early)
            self._early = []
            if self._early_bytes > MAX_EARLY_BYTES:
                self.resume_client()
            self._early_bytes = 0

    # ---- the client's transport (this object is its protocol)
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        if self.ended:  # closed (a drain) before the transport existed
            transport.close()
            return
        hello, self._pending_hello = self._pending_hello, b""
        if hello:
            self.data_received(hello)

    def data_received(self, data: bytes) -> None:
        if self.ended:
            return  # bytes a closing transport still delivers
        self.last_activity = time.monotonic()
        try:  # the invariant's boundary (proxy/failsafe.py)
            self._in.write(data)
            if self._handshaking and not self._handshake():
                return
            self._read_plain()
        except Exception as exc:
            self.internal_error(exc)

    def eof_received(self) -> bool | None:
        self._client_eof()
        return not self.ended  # True: keep the transport open for the response still due

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._end("eof" if exc is None else "reset")

    def pause_writing(self) -> None:
        up = self._up
        if up is not None and up.transport is not None:
            up.transport.pause_reading()

    def resume_writing(self) -> None:
        up = self._up
        if up is not None and up.transport is not None:
            up.transport.resume_reading()

    def pause_client(self) -> None:
        if not self._client_paused and self.transport is not None:
            self._client_paused = True
            self.transport.pause_reading()

    def resume_client(self) -> None:
        if self._client_paused and self.transport is not None and not self._pending:
            self._client_paused = False
            self.transport.resume_reading()
            self._read_plain()  # plaintext OpenSSL already decrypted while we were paused

    # ---- client TLS
    def _handshake(self) -> bool:
        try:
            self._ssl.do_handshake()
        except ssl.SSLWantReadError:
            self._flush_tls()
            return False
        except ssl.SSLError as exc:
            self._flush_tls()  # our alert, if OpenSSL wrote one
            self._fail(ProtocolError(Reason.TLS_HANDSHAKE_FAILED, handshake_failure_why(exc)))
            return False
        self._handshaking = False
        self._flush_tls()
        self.phase = _IDLE
        self._arm(self.limits.keepalive_timeout_s)
        return True

    def _read_plain(self) -> None:
        while not self._client_paused and not self._closing:
            try:
                data = self._ssl.read(READ_BYTES)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:
                self._client_eof()
                return
            except ssl.SSLError as exc:
                self.admission_detail(f"TLS error from the client: {exc.reason or exc}")
                self._end("reset")
                return
            if not data:
                self._client_eof()
                return
            self._client_plain(data)
        self._flush_tls()

    def _flush_tls(self) -> None:
        out = self._out.read()
        if out and self.transport is not None:
            self.transport.write(out)

    def _to_client(self, data: bytes) -> None:
        self.bytes_down += len(data)
        batch = self._batch
        if batch is not None:
            batch.append(data)  # one TLS write per read from the origin (head + body)
            return
        self._ssl.write(data)
        self._flush_tls()

    def _flush_batch(self) -> None:
        batch, self._batch = self._batch, None
        if batch:
            self._ssl.write(b"".join(batch) if len(batch) > 1 else batch[0])
            self._flush_tls()

    def _to_upstream(self, data: bytes) -> None:
        up = self._up
        if up is not None and up.transport is not None:
            up.transport.write(data)
            return
        self._early.append(data)
        self._early_bytes += len(data)
        if self._early_bytes > MAX_EARLY_BYTES:
            self.pause_client()

    # ---- requests
    def _client_plain(self, data: bytes) -> None:
        self.bytes_up += len(data)
        if self._raw_up:
            self._to_upstream(data)
            return
        if self.phase == _IDLE:
            self.phase = _HEAD
            self._arm(self.limits.header_timeout_s)
        try:
            events = self._parser.feed(data)
        except ProtocolError as exc:
            self._refuse(exc)
            return
        self._events(events)

    def _events(self, events: list[Event]) -> None:
        for index, event in enumerate(events):
            if self._closing:
                return
            ex = self.ex
            if isinstance(event, TunnelStart):  # after an Upgrade request's head
                self._raw_up = True
                if event.rest:
                    self._to_upstream(event.rest)
                continue
            if ex is not None and ex.request_complete:
                # Pipelined: wait for the response before the next request (bounded: reading
                # from the client stops).
                self._pending = events[index:]
                self.pause_client()
                return
            if isinstance(event, RequestHead):
                self._request_head(event)
            elif isinstance(event, bytes):
                self._request_body(event)
            elif event is END:
                self._request_end()

    def _new_record(self, head: RequestHead) -> AccessRecord:
        admission = self.admission
        record = AccessRecord(
            time.time(), self.client_text, head.method.decode("ascii", "replace"), KIND
        )
        record.host = self.name
        record.port = self.port
        record.user = admission.user
        record.address = admission.address
        record.sni = admission.sni
        decision = admission.decision
        if decision is not None:
            record.policy = decision.policy
        return record

    def _request_head(self, head: RequestHead) -> None:
        record = self._new_record(head)
        ex = self.ex = _Exchange(record, head)
        self.phase = _BUSY
        self._arm(self.limits.response_timeout_s)
        failure = self._judge(head, ex)
        if failure is not None:
            self._refuse(failure)
            return
        if self._up_failure is not None:
            self._refuse(self._up_failure)
            return
        tokens = connection_tokens(head.headers)
        framing = request_framing(head)  # checked in _judge: cannot raise here
        ex.chunked_request = framing.chunked
        headers = [h for h in end_to_end(head.headers, tokens) if h[0] not in self._set_names]
        headers += self._set_lines
        if self._leaks is not None and framing.has_body:
            ex.scan = LeakScan(self._leaks)
        self._to_upstream(
            render.request_head(
                head.method,
                ex.target,
                self._authority,
                headers,
                upgrade=ex.upgrade,
                chunked=framing.chunked,
                forwarded_for=None,
                content_length=None if framing is NO_BODY else framing.content_length,
            )
        )

    def _judge(self, head: RequestHead, ex: _Exchange) -> ProxyFailure | None:
        """Everything a request must pass before a byte of it goes upstream."""
        record = ex.record
        target = head.target
        if not target.startswith(b"/"):
            record.path = None
            return Refused(
                Reason.PATH_AMBIGUOUS,
                "inside an intercepted tunnel only origin-form targets (/path) are accepted",
            )
        mismatch = self._host_mismatch(head)
        if mismatch is not None:
            return Refused(Reason.SNI_MISMATCH, mismatch)
        try:
            request_framing(head)
        except ProtocolError as exc:
            return exc
        if self.ctx.state.current is not self.gen and not self._same_rules():
            return Refused(
                Reason.RULE_NOT_MATCHED,
                "the interception rules of this host changed on reload: reconnect",
            )
        tokens = connection_tokens(head.headers)
        upgrade = wants_upgrade(head, tokens)
        websocket = upgrade is not None and upgrade.strip().lower() == b"websocket"
        if upgrade is not None and not websocket:
            return Refused(
                Reason.RULE_NOT_MATCHED, "only WebSocket upgrades are relayed when intercepting"
            )
        ex.upgrade = upgrade
        method = head.method.decode("ascii", "replace")
        judgement = self.host.judge(method, target.decode("latin-1"), websocket)
        record.path = judgement.path or None
        record.rule = judgement.rule
        if not judgement.allowed:
            return Refused(judgement.reason, judgement.detail)
        if judgement.reason is not Reason.ALLOWED:  # report mode: logged, let through
            record.decision = "report"
            record.reason = judgement.reason.value
            record.detail = judgement.detail or None
        ex.target = judgement.target.encode("latin-1")
        if self._leaks is not None and head_leaks(self._leaks, target, head.headers):
            return Refused(
                Reason.SECRET_LEAK,
                f"the request carries a secret that belongs to another host, not {self.name}",
            )
        return None

    def _same_rules(self) -> bool:
        """After a reload: the new generation intercepts this host for this client with the
        same rules object shape; the session then follows the new generation."""
        gen = self.ctx.state.current
        admission = self.admission
        client = admission.client
        if admission.user is not None:
            client = ClientIdentity(client.address, admission.user, client.tls_names)
        try:
            policy = gen.policies.policy_for(client)
        except (ProxyFailure, NeedsAuthentication):
            return False
        host = policy.intercept.for_host(self.admission.target.host)  # type: ignore[union-attr]
        if host is None:
            return False
        self.gen, self.host = gen, host
        self._leaks = leak_finder(gen, host)
        self._redact = redact_finder(gen)
        self._set_names = frozenset(name for name, _value in host.set_headers)
        self._set_lines = [(name, name, value) for name, value in host.set_headers]
        return True

    def _host_mismatch(self, head: RequestHead) -> str | None:
        """Why the request's Host is not the admitted name (None: it is)."""
        values = [value for lname, _name, value in head.headers if lname == b"host"]
        if len(values) != 1:
            return f"an intercepted request needs exactly one Host header ({len(values)} sent)"
        raw = values[0].decode("latin-1").strip()
        try:
            host_text, port = split_authority(raw, self.port)
            host = normalize_host(host_text)
        except (ProtocolError, InvalidHost):
            return f"the Host header {raw[:100]!r} is not a valid authority"
        if host.name != self.name or port != self.port:
            return f"the Host header names {raw[:100]!r}, the TLS server name is {self.name}"
        return None

    def _request_body(self, data: bytes) -> None:
        ex = self.ex
        assert ex is not None
        if ex.scan is not None:
            safe = ex.scan.feed(data)
            if safe is None:
                self._leak_in_body(ex)
                return
            data = safe
        if data:
            ex.record.bytes_up += len(data)
            self._to_upstream(render.chunk(data) if ex.chunked_request else data)

    def _request_end(self) -> None:
        ex = self.ex
        assert ex is not None
        if ex.scan is not None:
            rest = ex.scan.flush()
            if rest:
                ex.record.bytes_up += len(rest)
                self._to_upstream(render.chunk(rest) if ex.chunked_request else rest)
        if ex.chunked_request:
            self._to_upstream(render.LAST_CHUNK)
        ex.request_complete = True
        if ex.response_head is None:
            self._arm(self.limits.response_timeout_s)

    def _leak_in_body(self, ex: _Exchange) -> None:
        """A secret in a request body: nothing more goes upstream (the connection is cut, so
        the origin never gets a complete request), the client gets 403 secret-leak."""
        up = self._up
        if up is not None and up.transport is not None:
            up.transport.abort()
        self._early = []
        failure = Refused(
            Reason.SECRET_LEAK,
            f"the request body carries a secret that belongs to another host, not {self.name}",
        )
        if ex.response_head is None:
            self._refuse(failure)
        else:
            self._finish_exchange(failure)
            self._end("refused")

    def _client_eof(self) -> None:
        ex = self.ex
        if self._raw_up:
            up = self._up
            if up is not None and up.transport is not None and up.transport.can_write_eof():
                up.transport.write_eof()
                return
        if ex is not None and ex.request_complete and not self._raw_up and not self.ended:
            # The client closed its sending side after a whole request: the response still
            # goes to it, then the connection ends (keep-alive is off now).
            ex.keep_alive = False
            self._pending = []
            return
        if ex is not None and not self.ended:
            ex.record.detail = ex.record.detail or "client closed the connection"
            if ex.record.status == 0:
                ex.record.status = 499
            self._finish_exchange(None)
        self._end("eof")

    # ---- responses
    def upstream_data(self, data: bytes) -> None:
        self.last_activity = time.monotonic()
        if self._raw_down:
            self._to_client(data)
            return
        ex = self.ex
        if ex is None:
            self._end("closed")  # unsolicited bytes from the origin: never trust the stream
            return
        try:
            events = self._rparser.feed(data)
        except ProtocolError as exc:
            self._upstream_failed(UpstreamError(Reason.UPSTREAM_BAD_RESPONSE, exc.detail))
            return
        self._batch = []
        try:
            for event in events:
                if self.ex is not ex or self.ended:
                    return
                if isinstance(event, bytes):
                    self._response_body(ex, event)
                elif isinstance(event, ResponseHead):
                    self._response_head(ex, event)
                elif event is END:
                    head = ex.response_head
                    if head is not None and head.status != 101:
                        self._response_end(ex)
                elif isinstance(event, TunnelStart):
                    self._switch_protocols(ex, event.rest)
        finally:
            if not self.ended:
                self._flush_batch()

    def _response_head(self, ex: _Exchange, head: ResponseHead) -> None:
        headers = end_to_end(head.headers, connection_tokens(head.headers))
        redact = self._redact
        if redact is not None:
            headers = self._redacted_headers(ex, redact, headers)
        if 100 <= head.status < 200 and head.status != 101:
            # Informational (100 Continue, 103 Early Hints): the final answer follows; relayed
            # only to an HTTP/1.1 client (RFC 9110 §15.2), as on the forward path.
            if ex.http11:
                self._to_client(render.response_head(head, headers, keep_alive=True, chunked=False))
            return
        ex.response_head = head
        ex.record.status = head.status
        self.phase = _BUSY
        self._arm(self.limits.idle_timeout_s)
        if head.status == 101:
            return  # TunnelStart follows from the parser
        no_body, close_delimited, chunked, ends_by_close = response_framing(
            head, ex.is_head, ex.http11
        )
        # One upstream connection per client connection: the client's connection lasts only
        # as long as the origin's (a close-delimited body ends it too).
        ex.keep_alive = (
            ex.keep_alive
            and head.keep_alive
            and not close_delimited
            and not ends_by_close
            and ex.upgrade is None
        )
        ex.chunk_response = chunked
        if redact is not None and not no_body:
            ex.redactor = Redactor(redact)
        self._to_client(
            render.response_head(
                head,
                headers,
                keep_alive=ex.keep_alive,
                chunked=ex.chunk_response,
                content_length=None if ex.chunk_response else head.content_length,
            )
        )
        if no_body:
            if ex.is_head:
                self._fresh_response_parser()
            self._response_end(ex)

    def _redacted_headers(self, ex: _Exchange, finder: SecretFinder, headers: list[Any]) -> Any:
        out = []
        for lname, name, value in headers:
            masked, count = finder.mask(value)
            if count:
                ex.record.detail = _REDACTED.format(count)
            out.append((lname, name, masked))
        return out

    def _response_body(self, ex: _Exchange, data: bytes) -> None:
        ex.record.bytes_down += len(data)
        if ex.redactor is not None:
            data = ex.redactor.feed(data)
            if not data:
                return
        self._to_client(render.chunk(data) if ex.chunk_response else data)

    def _response_end(self, ex: _Exchange) -> None:
        redactor = ex.redactor
        if redactor is not None:
            rest = redactor.flush()
            if rest:
                self._to_client(render.chunk(rest) if ex.chunk_response else rest)
            if redactor.found:
                ex.record.detail = _REDACTED.format(redactor.found)
        if ex.chunk_response:
            self._to_client(render.LAST_CHUNK)
        keep_alive = ex.keep_alive and ex.request_complete
        self._finish_exchange(None)
        if not keep_alive:
            self._end("eof")
            return
        self.phase = _IDLE
        self._arm(self.limits.keepalive_timeout_s)
        pending, self._pending = self._pending, []
        if pending:
            self._events(pending)
        if not self._pending and not self._closing:
            self.resume_client()

    def _fresh_response_parser(self) -> None:
        limits = self.limits
        self._rparser = ResponseParser(
            limits.max_response_header_bytes, limits.max_response_headers
        )

    def _switch_protocols(self, ex: _Exchange, rest: bytes) -> None:
        head = ex.response_head
        if head is None or ex.upgrade is None:
            self._upstream_failed(
                UpstreamError(Reason.UPSTREAM_BAD_RESPONSE, "101 without an Upgrade request")
            )
            return
        headers = end_to_end(head.headers, connection_tokens(head.headers))
        value = next((v for n, _, v in head.headers if n == b"upgrade"), ex.upgrade)
        self._to_client(
            render.response_head(head, headers, keep_alive=True, chunked=False, upgrade=value)
        )
        self._raw_down = self._raw_up = True
        self.phase = _UPGRADED
        ex.record.kind = KIND
        ex.record.detail = "WebSocket relayed after 101"
        if rest:
            self._to_client(rest)
        # The exchange's record is written when the connection ends (bytes counted then).

    def upstream_lost(self) -> None:
        """The origin closed its connection."""
        if self.ended:
            return
        ex = self.ex
        if ex is not None and ex.response_head is not None and self._raw_down:
            self._end("eof")
            return
        head = ex.response_head if ex is not None else None
        if ex is not None and head is not None and head.content_length is None and not head.chunked:
            self._response_end(ex)  # a close-delimited body ends here (keep_alive was False)
            return
        if ex is None:
            self._up = None
            if self.phase in (_IDLE, _HANDSHAKE):
                self._end("eof")  # an idle origin connection closed: so does the client's
            return
        self._upstream_failed(
            UpstreamError(Reason.UPSTREAM_RESET, "the destination closed the connection")
        )

    def _upstream_failed(self, error: ProxyFailure) -> None:
        """The origin leg failed: answered inside the tunnel when a request waits for it (or
        at the next request), else the client connection is cut."""
        self.ctx.metrics.count_upstream_error(error.reason.value)
        self._up_failure = error
        self.admission.fail(error)
        ex = self.ex
        if ex is None:
            return  # answered at the next request (the client's TLS may still be starting)
        if ex.response_head is None:
            self._refuse(error)
            return
        ex.record.reason = error.reason.value
        ex.record.detail = f"{error.detail} (after the response head: connection cut)"
        self._finish_exchange(None)
        self._end("reset")

    # ---- refusals and ends
    def _refuse(self, failure: ProxyFailure) -> None:
        """A normal HTTP refusal inside the tunnel, then the connection closes."""
        ex = self.ex
        if ex is None:
            head = RequestHead(b"-", b"", "1.1", [], False, 0)
            ex = self.ex = _Exchange(self._new_record(head), head)
        policy = ex.record.policy
        self._to_client(refusal_response(failure.reason, self.name, failure.detail, policy))
        self._finish_exchange(failure)
        self._end("refused")

    def _finish_exchange(self, failure: ProxyFailure | None) -> None:
        ex, self.ex = self.ex, None
        if ex is None:
            return
        record = ex.record
        if failure is not None:
            record.reason = failure.reason.value
            record.status = failure.reason.status
            record.decision = "deny" if isinstance(failure, Refused) else "error"
            record.detail = failure.detail or None
        elif record.decision == "deny" and record.reason == Reason.ALLOWED.value:
            record.decision = "allow"  # (a report-mode record already says "report")
        self.ctx.finish(record)

    def admission_detail(self, detail: str) -> None:
        if self.ex is not None and self.ex.record.detail is None:
            self.ex.record.detail = detail

    def _fail(self, failure: ProxyFailure) -> None:
        """The session cannot go on (the client's handshake failed): the tunnel's record says
        why (the front end concludes it with the admission's failure)."""
        self.admission.fail(failure)
        self._end("refused")

    def internal_error(self, exc: BaseException) -> None:
        failure = internal_error(self.ctx.metrics, exc, "intercepted tunnel")
        if self.ended:
            return
        self.admission.fail(failure)
        if self._handshaking and self.transport is not None:
            self.transport.write(TLS_INTERNAL_ERROR_ALERT)
        elif self.ex is not None and self.ex.response_head is None:
            self._refuse(failure)
            return
        self._end("closed")

    def _end(self, end: str) -> None:
        if self.ended:
            return
        self.ended = True
        self._closing = True
        self._disarm()
        if self.ex is not None:
            ex = self.ex
            if self._raw_down:
                ex.record.bytes_up, ex.record.bytes_down = self.bytes_up, self.bytes_down
            elif ex.record.status == 0:
                ex.record.status = 499
                ex.record.detail = ex.record.detail or f"connection ended ({end})"
            self._finish_exchange(None)
        transport = self.transport
        if transport is not None:
            if not self._handshaking:
                self._flush_batch()
                try:
                    self._ssl.unwrap()  # close_notify
                except ssl.SSLError:
                    pass
                self._flush_tls()
            transport.close()
        up = self._up
        if up is not None and up.transport is not None:
            up.transport.close()
        self.on_end(RelayStats(self.bytes_up, self.bytes_down, end))

    def close(self) -> None:
        """Drain, revocation: end now."""
        self._end("closed")

    def shutdown_idle(self) -> None:
        """Drain: a connection between requests (or still in its handshake) ends now, as an
        idle plain-HTTP keep-alive connection does; one with a request in flight finishes it."""
        if self.phase in (_IDLE, _HANDSHAKE) and self.ex is None:
            self._end("closed")

    # ---- the one deadline (the server's sweeper calls check_deadline)
    def _arm(self, delay_s: float) -> None:
        self.deadline = time.monotonic() + delay_s
        self.ctx.deadlines.add(self)

    def _disarm(self) -> None:
        self.deadline = 0.0
        self.ctx.deadlines.discard(self)

    def check_deadline(self, now: float) -> None:
        if not self.deadline or now < self.deadline or self.ended:
            return
        try:  # the invariant's boundary: the sweeper must never see an exception
            self._deadline_passed(now)
        except Exception as exc:
            self.internal_error(exc)

    def _deadline_passed(self, now: float) -> None:
        phase = self.phase
        if phase in (_BUSY, _UPGRADED):
            idle_s = self.limits.idle_timeout_s
            ex = self.ex
            if ex is not None and ex.request_complete and ex.response_head is None:
                self._upstream_failed(
                    UpstreamError(
                        Reason.UPSTREAM_TIMEOUT,
                        f"no response within {self.limits.response_timeout_s:g}s",
                    )
                )
                return
            if now - self.last_activity < idle_s:
                self.deadline = self.last_activity + idle_s
                return
            self._end("idle-timeout")
            return
        if phase == _HANDSHAKE:
            self._fail(
                ProtocolError(
                    Reason.TLS_HANDSHAKE_FAILED,
                    f"the client's TLS handshake did not finish within "
                    f"{self.tls.handshake_timeout_s:g}s",
                )
            )
            return
        if phase == _HEAD:
            self._refuse(ProtocolError(Reason.HEADER_TIMEOUT, "the request head did not arrive"))
            return
        self._end("eof")  # keep-alive idle: a quiet close
