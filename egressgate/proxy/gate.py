"""The gate every request and tunnel passes, told once: the sans-IO admission story.

Every front end (forward HTTP, CONNECT on the raw fast path and in the TLS listener, and the
SOCKS5 and transparent listeners to come) asks the same question — may this client reach this
destination, and where exactly do we connect — and gets the answer from one `Admission`:

    front end (I/O)                       Admission (this module: no I/O, no awaits)
    ─────────────────────────────────     ───────────────────────────────────────────────
    Admission(gen, client, target, login)
    .next() ────────────────────────────► 1. credentials (407), client → policy, decide on
                                             the name and port                → Refuse
                                          2. an IP literal is its own address; a name:
             ◄──────────────────────────     NeedAddresses(name)
    resolver.cached(name) or await
    .addresses(found) / .resolve_failed(err)
    .next() ────────────────────────────► 3. vet every address (internal → Refuse)
             ◄──────────────────────────     Connect(vetted addresses, port, timeouts)
    pool hit, or net/connect.py
    .connected(address) / .connect_failed(err)
    .next() ────────────────────────────► 4. Open(address, port, sni_check) | Refuse
    write 200 / SOCKS reply / request
    (tunnels) first client bytes
    .judge_hello(data, timed_out, eof) ─► 5. the SNI check: Hello.RELAY | NEED_MORE | Refuse
    relay … end
    conclude(record, admission, failure)   the one place an access record is concluded

Policy is consulted twice, both times from here: on the name before DNS, and on every resolved
address after it. The front end connects only to an address from `Connect.addresses` and never
resolves again (DNS rebinding cannot swap the address between check and use). `net/` never sees
policy. The client's claim of where it is going (CONNECT authority, Host, SNI, SOCKS address,
original destination) is a name to judge, resolve and vet, never an address to trust.

Steps are immutable values, so the whole story is a table in tests/unit/proxy/test_gate.py. The
synchronous fast path (cached name, pooled upstream or raw CONNECT) is a loop over `next()`
that never awaits. Limits come from the admission's own generation (`gen.config.limits`): a
request sees one config from start to end.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum

from egressgate.config.model import NoSniAction
from egressgate.errors import ProxyFailure, Reason, Refused
from egressgate.names.hostname import Host, InvalidHost, IPAddress, address_text, normalize_host
from egressgate.observe.record import AccessRecord
from egressgate.policy.clients import NeedsAuthentication
from egressgate.policy.decision import ClientIdentity, Decision, Target, Verdict
from egressgate.policy.engine import CompiledPolicy
from egressgate.policy.intercept import InterceptHost
from egressgate.proxy.auth import Login, verify
from egressgate.proxy.refusal import refusal_response
from egressgate.runtime.state import Generation
from egressgate.tls.clienthello import MAX_HELLO_BYTES, HelloResult, read_sni
from egressgate.values import immutable

# How long to wait for a client's first tunnel bytes before judging the tunnel as "no TLS".
# Server-speaks-first protocols (SMTP, SSH) send nothing until the server does.
MAX_HELLO_WAIT_S = 5.0
_NO_SNI_WHY = {
    HelloResult.NOT_TLS: "the tunnel does not carry TLS",
    HelloResult.NO_SNI: "the TLS ClientHello has no server name",
}


def starts_as_tls(data: bytes) -> bool:
    """The first bytes are (the start of) a TLS handshake record: content type 22, version 3.x.
    Such a tunnel is TLS: `tunnels_without_sni: allow` never lets its unread hello through."""
    return data[:1] == b"\x16" and data[1:2] in (b"", b"\x03")


def unreadable_hello_why(result: HelloResult, size: int, eof: bool, wait_s: float) -> str:
    """The access-log detail of an `sni-unreadable` refusal: which bound the hello broke."""
    if result is HelloResult.TOO_LARGE:
        return f"the TLS ClientHello is larger than {MAX_HELLO_BYTES} bytes"
    if result is HelloResult.MALFORMED:
        return "the TLS ClientHello is malformed"
    if eof:
        return f"the client closed after {size} bytes of an incomplete TLS ClientHello"
    return f"the TLS ClientHello was incomplete after {wait_s:g}s ({size} bytes arrived)"


_HOST_CACHE: dict[str, Host] = {}
_HOST_CACHE_MAX = 4096


def normalize_target_host(raw: str) -> Host:
    """The destination in canonical form; an invalid host is a policy refusal, not an error.

    Memoized (bounded): normalization is pure, and clients ask for the same hosts over and over.
    """
    host = _HOST_CACHE.get(raw)
    if host is not None:
        return host
    try:
        host = normalize_host(raw)
    except InvalidHost as exc:
        raise Refused(Reason.HOST_NOT_ALLOWED, str(exc)) from None
    if len(_HOST_CACHE) >= _HOST_CACHE_MAX:
        _HOST_CACHE.clear()
    _HOST_CACHE[raw] = host
    return host


# Targets by (host text, port, connect): clients open tunnels to few destinations (bounded; an
# invalid host is not stored). CONNECT keeps its own by the raw target (proxy/tunnel.py).
_TARGETS: dict[tuple[str, int, bool], Target] = {}
_TARGETS_MAX = 4096


# ---- the steps: what the front end must do next (immutable values, `@immutable`: cheap to build)
@immutable
class NeedAddresses:
    """Resolve `name` (A and AAAA; the resolver's cache first) and hand every address back
    through `addresses()`, or the ResolveError through `resolve_failed()`."""

    name: str


@immutable
class Connect:
    """Connect to one of `addresses` (all vetted, in the resolver's order; never anything
    else) on `port`: each attempt bounded by `attempt_timeout_s`, the whole connect phase by
    `total_timeout_s` (the generation's `connect_timeout_s` and `connect_total_timeout_s`;
    net/connect.py's connect_first is the strategy). A pooled upstream connection to one of
    them will do. Report `connected(address)` or, when every attempt failed,
    `connect_failed(error)`."""

    addresses: tuple[IPAddress, ...]
    port: int
    attempt_timeout_s: float
    total_timeout_s: float


@immutable
class Refuse:
    """Refuse the client with `failure` (its Reason decides the status): an HTTP response
    (`response()`), a SOCKS5 reply, or a TLS alert for a tunnel past its 200."""

    failure: ProxyFailure
    host: str | None  # what the client asked for, as the refusal names it
    policy: str | None  # the deciding policy, when one was selected
    realm: str | None  # the Basic realm of a 407

    @property
    def reason(self) -> Reason:
        return self.failure.reason

    def response(self) -> bytes:
        """The HTTP refusal (proxy/refusal.py renders it)."""
        failure = self.failure
        return refusal_response(failure.reason, self.host, failure.detail, self.policy, self.realm)


@immutable
class Open:
    """Admitted: the upstream connection to `address`:`port` is the client's. `sni_check`: a
    tunnel must pass its first client bytes through `judge_hello()` before relaying them.
    `intercept`: the tunnel's host is listed under the policy's `intercept`; after the SNI
    check the front end hands it to proxy/intercept.py instead of relaying it."""

    address: IPAddress
    port: int
    sni_check: bool
    intercept: InterceptHost | None = None


Step = NeedAddresses | Connect | Refuse | Open


class Hello(Enum):
    """`judge_hello()` answers besides Refuse."""

    NEED_MORE = "need-more"  # keep reading (bounded by hello_wait_s() and MAX_HELLO_BYTES)
    RELAY = "relay"  # relay the bytes read, unchanged


class Admission:
    """One request's or tunnel's way through the gate (see the module docstring).

    Named states, h11-style: `next` is bound to the current state's handler, so a step costs
    one call. Facts for the access record (policy, rule, decision, address, SNI) are kept
    here and written once, by `conclude()`.
    """

    __slots__ = (
        "_failure",
        "_found",
        "_opened",
        "_policy",
        "_step",
        "address",
        "client",
        "concluded",
        "decision",
        "gen",
        "host_text",
        "login",
        "next",
        "port",
        "sni",
        "target",
        "user",
    )

    def __init__(
        self,
        gen: Generation,
        client: ClientIdentity,
        target: Target | None,
        login: Login | None = None,
        *,
        host_text: str | None = None,
        failure: ProxyFailure | None = None,
    ) -> None:
        """`target` None: the destination could not be made out; `failure` says why (then
        `host_text` is what the client sent). Use `for_host()` for a host still as text."""
        self.gen = gen
        self.client = client
        self.target = target
        self.login = login
        self.host_text = target.host.text if target is not None else host_text
        self.port = target.port if target is not None else None
        self.user: str | None = None
        self.decision: Decision | None = None  # the latest one that counts for the record
        self.address: str | None = None  # tried, connected, or refused (private-address)
        self.sni: str | None = None
        self.concluded = False  # conclude() has written the facts into the record
        self._policy: CompiledPolicy | None = None
        self._found: tuple[IPAddress, ...] = ()
        self._opened: IPAddress | None = None
        self._step: Step | None = None
        self._failure: ProxyFailure | None = None
        self.next: Callable[[], Step] = self._decide
        if failure is not None:
            self._refuse(failure)

    @classmethod
    def for_host(
        cls,
        gen: Generation,
        client: ClientIdentity,
        host: str,
        port: int,
        connect: bool,
        login: Login | None = None,
    ) -> Admission:
        """An admission for a host still as text (SOCKS5 domain or IP literal, SNI, Host):
        an invalid host is refused as host-not-allowed by the story itself."""
        key = (host, port, connect)
        target = _TARGETS.get(key)
        if target is None:
            try:
                target = Target(normalize_target_host(host), port, connect)
            except Refused as exc:
                admission = cls(gen, client, None, login, host_text=host, failure=exc)
                admission.port = port
                return admission
            if len(_TARGETS) >= _TARGETS_MAX:
                _TARGETS.clear()
            _TARGETS[key] = target
        return cls(gen, client, target, login)

    # ---- results the front end hands back
    def addresses(self, found: tuple[IPAddress, ...]) -> None:
        """Every address the name resolved to (a NeedAddresses answered)."""
        self._found = found
        self.next = self._vet

    def resolve_failed(self, error: ProxyFailure) -> None:
        self._refuse(error)

    def connected(self, address: IPAddress, text: str | None = None) -> None:
        """The upstream connection to `address` (one of Connect.addresses; `text`: its
        address_text, when the front end has it) is open."""
        self.address = address_text(address) if text is None else text
        self._opened = address
        self.next = self._open

    def connect_failed(self, error: ProxyFailure, address: IPAddress | None = None) -> None:
        """Every attempt failed; `error` is the last one, `address` the one it was for."""
        if address is not None:
            self.address = address_text(address)
        elif self._found:
            self.address = address_text(self._found[0])
        self._refuse(error)

    def fail(self, error: ProxyFailure) -> None:
        """The front end ends the admission with `error` (an I/O failure of its own)."""
        self._refuse(error)

    @property
    def opened(self) -> IPAddress:
        """The address connected() reported."""
        assert self._opened is not None
        return self._opened

    @property
    def failure(self) -> ProxyFailure | None:
        """The refusal or failure the story ended with, if it did."""
        return self._failure

    # ---- the states
    def _same(self) -> Step:
        step = self._step
        assert step is not None
        return step

    def _decide(self) -> Step:
        """1. Credentials, then the client's policy and its decision on the name and port."""
        gen, target = self.gen, self.target
        assert target is not None
        client = self.client
        try:
            if self.login is not None and gen.credentials:
                self.user = verify(self.login, gen.credentials)
                client = ClientIdentity(client.address, self.user, client.tls_names)
            policy = gen.policies.policy_for(client)
        except NeedsAuthentication:
            return self._refuse(
                Refused(Reason.AUTH_REQUIRED, "this proxy needs a user name and password")
            )
        except Refused as exc:
            return self._refuse(exc)
        self._policy = policy
        decision = self.decision = policy.decide(target)
        if decision.verdict is Verdict.DENY:
            return self._refuse(Refused(decision.reason, decision.detail))
        host = target.host
        if host.address is not None:
            self._found = (host.address,)
            return self._vet()
        assert host.name is not None
        step = self._step = NeedAddresses(host.name)
        self.next = self._same
        return step

    def _vet(self) -> Step:
        """3. Every address must be one the policy may reach (SSRF, DNS rebinding)."""
        policy, found = self._policy, self._found
        assert policy is not None
        bad = policy.vet(found)
        if bad is not None:
            assert self.decision is not None
            refusal = self.gen.policies.vet(self.decision, found).refusal
            assert refusal is not None
            self.decision = refusal
            self.address = str(bad[1])
            return self._refuse(Refused(refusal.reason, refusal.detail))
        limits = self.gen.config.limits
        assert self.port is not None
        total_s, attempt_s = limits.connect_total_timeout_s, limits.connect_timeout_s
        if attempt_s > total_s:  # (not min(): a call per request on the hot path)
            attempt_s = total_s
        step = self._step = Connect(found, self.port, attempt_s, total_s)
        self.next = self._same
        return step

    def _open(self) -> Step:
        """4. Admitted (built on demand: the plain-HTTP path needs no Open value)."""
        assert self._opened is not None
        target, policy = self.target, self._policy
        sni_check = (
            target is not None and target.connect and policy is not None and policy.sni_check
        )
        intercept = None
        # (`.hosts`, a tuple: no Python call on the CONNECT hot path when nothing is intercepted)
        if target is not None and target.connect and policy is not None and policy.intercept.hosts:
            intercept = policy.intercept.for_host(target.host)
            if intercept is not None:
                # The leaf is minted for the admitted name: the SNI must be that name.
                sni_check = True
        step = self._step = Open(self._opened, self.port or 0, sni_check, intercept)
        self.next = self._same
        return step

    def _refuse(self, failure: ProxyFailure) -> Refuse:
        self._failure = failure
        realm = None
        if failure.reason is Reason.AUTH_REQUIRED:
            auth = self.gen.config.auth
            realm = auth.realm if auth is not None else None
        policy = self.decision.policy if self.decision is not None else None
        step = self._step = Refuse(failure, self.host_text, policy, realm)
        self.next = self._same
        return step

    # ---- after Open: the SNI check of a tunnel
    def hello_wait_s(self) -> float:
        """The bound on the whole ClientHello phase: first byte to last byte of the hello."""
        return min(MAX_HELLO_WAIT_S, self.gen.config.limits.header_timeout_s)

    def judge_hello(
        self, data: bytes, timed_out: bool, eof: bool = False, sni: str | None = None
    ) -> Hello | Refuse:
        """Judge a tunnel's first client bytes: RELAY them, NEED_MORE of them, or Refuse (a
        TLS access_denied alert if they were TLS: the 200 is already sent).

        `timed_out`: no more bytes will be waited for (the hello wait passed, or `eof`).
        `sni`: the server name already read from `data` (the transparent listener routes on it).
        """
        policy, target = self._policy, self.target
        assert policy is not None
        assert target is not None
        result = sni if sni is not None else read_sni(data)
        if result is HelloResult.NEED_MORE and not timed_out and len(data) < MAX_HELLO_BYTES:
            return Hello.NEED_MORE
        if isinstance(result, str):
            self.sni = result
            verdict = policy.decide_sni(target.host, result)
        elif result is not HelloResult.NO_SNI and starts_as_tls(data):
            # TLS whose ClientHello cannot be read: never relayed unchecked (fail closed).
            why = unreadable_hello_why(result, len(data), eof, self.hello_wait_s())
            verdict = policy.sni_unreadable(why)
        elif policy.tunnels_without_sni is not NoSniAction.DENY:
            verdict = None  # no_sni would pass it: skip building the explanation
        elif timed_out and not data:
            verdict = policy.no_sni("the client sent nothing (server-speaks-first protocol?)")
        else:
            verdict = policy.no_sni(
                _NO_SNI_WHY.get(result, "the TLS ClientHello could not be read")
            )
        if verdict is None:
            return Hello.RELAY
        self.decision = verdict
        if verdict.verdict is Verdict.REPORT:
            return Hello.RELAY
        return self._refuse(Refused(verdict.reason, verdict.detail))


def conclude(
    record: AccessRecord, admission: Admission | None, failure: ProxyFailure | None = None
) -> AccessRecord:
    """The one place an access record is concluded from an outcome: the admission's facts
    (destination, user, policy, rule, decision, reason, address, SNI), then the failure or
    refusal it ended with (`failure`, else the admission's own).

    Called once, when the admission's part is over (Open or Refuse, or the client left first);
    a second call for the same admission changes nothing. What only the front end knows (the
    status of a served response, bytes, how a relay ended) it writes after this; the duration
    is set when the record is written (ProxyContext.finish)."""
    if admission is not None and not admission.concluded:
        admission.concluded = True
        if record.host is None:
            record.host = admission.host_text
        if record.port is None:
            record.port = admission.port
        if admission.user is not None:
            record.user = admission.user
        decision = admission.decision
        if decision is not None:
            record.policy = decision.policy
            record.rule = decision.rule
            record.decision = decision.verdict.value
            record.reason = decision.reason.value
            if decision.verdict is Verdict.REPORT:
                record.detail = decision.detail
        if admission.address is not None:
            record.address = admission.address
        if admission.sni is not None:
            record.sni = admission.sni
        if failure is None:
            failure = admission._failure
    if failure is not None:
        reason = failure.reason
        record.reason = reason.value
        record.status = reason.status
        record.decision = "deny" if isinstance(failure, Refused) else "error"
        record.detail = failure.detail or None
    return record
