"""PolicySet: the compiled, immutable policy of one config generation.

Pure and synchronous; everything is compiled at load, nothing is re-parsed per request. The data
path consults it twice, both times from proxy/gate.py:

1. `decide(client, target)` before DNS, on the name (and port) the client asked for;
2. `vet(decision, addresses)` after DNS, on every address the name resolved to.

Precedence inside `decide`, first hit wins:
  1. the client's policy (clients rules → named policy; default otherwise);
  2. the destination host: an IP literal must be listed as an address or CIDR; a name must match
     an allow entry (exact, .domain, *.sub, *);
  3. the port: connect_ports for CONNECT, http_ports for plain HTTP;
  4. report mode turns a refusal from 2-3 into Verdict.REPORT (allowed, reason kept).

`vet` refuses the whole destination if ANY of its addresses is internal (loopback, RFC 1918,
CGNAT, link-local/metadata, ULA, multicast, unspecified, reserved) and not covered by
allow_private: a name that points inside as well as outside is either a mistake or a DNS
rebinding attempt. This protection stays on in report mode (report mode is for discovering the
allowlist, not for switching off SSRF protection); allow_private is the only way through.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from egressgate.config.model import Config, Mode, NoSniAction, PolicyConfig, PortRange
from egressgate.errors import Reason
from egressgate.names.addresses import AddressClass, classify_address
from egressgate.names.hostname import Host, InvalidHost, IPAddress, normalize_host
from egressgate.names.patterns import DomainPattern, HostMatcher, IPNetwork, parse_cidr
from egressgate.names.tuple_memo import TupleMemo
from egressgate.policy.clients import ClientSelector
from egressgate.policy.decision import ClientIdentity, Decision, Target, Verdict
from egressgate.policy.intercept import NO_INTERCEPT, CompiledIntercept, InterceptHost, secret_leak

_MISS = object()
# The first address a policy may not reach, with its class; None when all may be reached.
_Unvetted = tuple[AddressClass, IPAddress] | None
_VET_CACHE_MAX = 4096


def _port_set(ranges: tuple[PortRange, ...]) -> frozenset[int] | tuple[PortRange, ...]:
    """Small port lists become a frozenset for O(1) lookup; wide ranges stay ranges."""
    if sum(r.high - r.low + 1 for r in ranges) <= 1024:
        return frozenset(p for r in ranges for p in range(r.low, r.high + 1))
    return ranges


def _port_allowed(ports: frozenset[int] | tuple[PortRange, ...], port: int) -> bool:
    if isinstance(ports, frozenset):
        return port in ports
    return any(port in r for r in ports)


class CompiledPolicy:
    """One named policy in its fast form."""

    __slots__ = (
        "_allowed",
        "_vet_cache",
        "_vet_memo",
        "allow_private",
        "config",
        "connect_ports",
        "http_ports",
        "intercept",
        "matcher",
        "name",
        "report",
        "sni_check",
        "tunnels_without_sni",
    )

    def __init__(self, config: PolicyConfig) -> None:
        self.config = config
        self.name = config.name
        self.matcher = HostMatcher([DomainPattern.parse(p) for p in config.allow])
        self.connect_ports = _port_set(config.connect_ports)
        self.http_ports = _port_set(config.http_ports)
        self.allow_private: tuple[IPNetwork, ...] = tuple(
            parse_cidr(c) for c in config.allow_private
        )
        self.report = config.mode is Mode.REPORT
        self.sni_check = config.sni_check
        self.tunnels_without_sni = config.tunnels_without_sni
        # TLS interception (policy/intercept.py): which hosts' requests are judged by rules.
        self.intercept: CompiledIntercept = (
            CompiledIntercept(config.intercept, self.report) if config.intercept else NO_INTERCEPT
        )
        # Vetting is pure over (policy, addresses); a compiled policy lives for one config
        # generation, so the cache can never outlive the allow_private it was computed with.
        self._vet_cache: dict[tuple[IPAddress, ...], object] = {}
        self._vet_memo: TupleMemo[tuple[IPAddress, ...], _Unvetted] = TupleMemo(
            self._vet_by_content, _VET_CACHE_MAX
        )
        # The ALLOW decision of each rule is always the same (immutable) value: build it once.
        self._allowed: dict[str, Decision] = {}

    def decide(self, target: Target) -> Decision:
        host = target.host
        if host.address is not None:
            rule = self.matcher.match_address(host.address)
            refusal = Reason.IP_LITERAL_NOT_ALLOWED
        else:
            assert host.name is not None
            rule = self.matcher.match_name(host.name)
            refusal = Reason.HOST_NOT_ALLOWED
        if rule is None:
            return self._refuse(
                refusal, f"{host.text} is not on the allowlist of policy {self.name!r}"
            )
        ports = self.connect_ports if target.connect else self.http_ports
        if not _port_allowed(ports, target.port):
            key = "connect_ports" if target.connect else "http_ports"
            listed = ", ".join(
                str(r)
                for r in (self.config.connect_ports if target.connect else self.config.http_ports)
            )
            return self._refuse(
                Reason.PORT_NOT_ALLOWED,
                f"port {target.port} is not in {key} [{listed}] of policy {self.name!r}",
                rule,
            )
        allowed = self._allowed.get(rule)
        if allowed is None:
            allowed = self._allowed[rule] = Decision(Verdict.ALLOW, Reason.ALLOWED, self.name, rule)
        return allowed

    def decide_sni(self, connect: Host, sni: str) -> Decision | None:
        """Check a tunnel's TLS server name against its CONNECT host; None means it passes.

        Domain fronting sends CONNECT for an allowed name and a different name inside TLS: the
        SNI must name the CONNECT host itself (when that is a name) and be allowed here.
        An SNI equal to the CONNECT name passes: `decide` already judged that very name with
        the same matcher, and in report mode its reason (host-not-allowed) must stay the one
        logged, not be replaced by an SNI reason that suggests fronting.
        """
        try:
            host = normalize_host(sni)
        except InvalidHost:
            return self._refuse(Reason.SNI_NOT_ALLOWED, f"invalid TLS server name {sni!r}")
        if connect.name is not None and host.name == connect.name:
            return None
        if host.name is None or self.matcher.match_name(host.name) is None:
            return self._refuse(
                Reason.SNI_NOT_ALLOWED,
                f"TLS server name {host.text} is not allowed (CONNECT was for {connect.text})",
            )
        if connect.name is not None and host.name != connect.name:
            return self._refuse(
                Reason.SNI_MISMATCH,
                f"TLS server name {host.text} differs from the CONNECT host {connect.text}",
            )
        return None

    def no_sni(self, why: str) -> Decision | None:
        if self.tunnels_without_sni is NoSniAction.DENY:
            return self._refuse(Reason.SNI_MISSING, why)
        return None

    def sni_unreadable(self, why: str) -> Decision:
        """A tunnel that starts as TLS but whose ClientHello cannot be read within the bounds
        (too slow, too large, malformed): refused whatever `tunnels_without_sni` says, or an
        unchecked hello would carry any server name past the check."""
        return self._refuse(Reason.SNI_UNREADABLE, why)

    def _refuse(self, reason: Reason, detail: str, rule: str | None = None) -> Decision:
        verdict = Verdict.REPORT if self.report else Verdict.DENY
        return Decision(verdict, reason, self.name, rule, detail)

    def vet(self, addresses: Sequence[IPAddress]) -> _Unvetted:
        """The first internal address not covered by allow_private, or None if all may go."""
        if isinstance(addresses, tuple):
            return self._vet_memo.get(addresses)  # the resolver's tuple again: no hashing
        return self._vet_by_content(tuple(addresses))

    def _vet_by_content(self, key: tuple[IPAddress, ...]) -> _Unvetted:
        cached = self._vet_cache.get(key, _MISS)
        if cached is _MISS:
            cached = self._vet_uncached(key)
            if len(self._vet_cache) >= _VET_CACHE_MAX:
                self._vet_cache.clear()
            self._vet_cache[key] = cached
        return cached  # type: ignore[return-value]

    def _vet_uncached(self, addresses: Sequence[IPAddress]) -> _Unvetted:
        for address in addresses:
            cls = classify_address(address)
            if cls is AddressClass.PUBLIC:
                continue
            if any(address.version == n.version and address in n for n in self.allow_private):
                continue
            return cls, address
        return None


@dataclass(frozen=True, slots=True)
class VetResult:
    """After DNS: refusal (if any) and the addresses the proxy may connect to, in order."""

    refusal: Decision | None
    addresses: tuple[IPAddress, ...]
    refused_address: IPAddress | None = None  # with a refusal: the internal address it names


class PolicySet:
    """Every policy of one config generation, plus the client → policy selector."""

    __slots__ = ("all_secrets", "default", "policies", "selector")

    def __init__(
        self, policies: dict[str, CompiledPolicy], selector: ClientSelector, default: str
    ) -> None:
        self.policies = policies
        self.selector = selector
        self.default = policies[default]
        # Every injected secret of every policy, with the intercepted host it belongs to: a
        # request carrying one on any other leg the proxy can read is a `secret-leak`.
        self.all_secrets: tuple[tuple[bytes, InterceptHost], ...] = tuple(
            pair for policy in policies.values() for pair in policy.intercept.all_secrets
        )

    def secret_leak(self, data: bytes | bytearray, own: tuple[bytes, ...] = ()) -> str | None:
        """The label of the intercepted host whose secret `data` carries (a secret in `own`,
        those of the destination itself, excepted), or None. Never the secret itself."""
        if not self.all_secrets:
            return None
        return secret_leak(self.all_secrets, data, own)

    @classmethod
    def compile(cls, config: Config) -> PolicySet:
        policies = {p.name: CompiledPolicy(p) for p in config.policies}
        return cls(
            policies, ClientSelector(config.clients, config.default_policy), config.default_policy
        )

    def policy_for(self, client: ClientIdentity) -> CompiledPolicy:
        """Raises policy.clients.NeedsAuthentication when the client must log in first."""
        if self.selector.trivial:
            return self.default
        return self.policies[self.selector.select(client)]

    def decide(self, client: ClientIdentity, target: Target) -> Decision:
        """Name-level decision (before DNS). Raises NeedsAuthentication (→ 407)."""
        return self.policy_for(client).decide(target)

    def vet(self, decision: Decision, addresses: Sequence[IPAddress]) -> VetResult:
        """Address-level check (after DNS) under the policy that made `decision`."""
        policy = self.policies[decision.policy]
        bad = policy.vet(addresses)
        if bad is None:
            return VetResult(None, addresses if isinstance(addresses, tuple) else tuple(addresses))
        cls, address = bad
        refusal = Decision(
            Verdict.DENY,
            Reason.PRIVATE_ADDRESS,
            policy.name,
            decision.rule,
            f"resolves to {address} ({cls.value}), which is not in allow_private",
        )
        return VetResult(refusal, (), address)
