"""The DNS guard's decisions: which queries are answered, forwarded or refused, and with what.

Pure and synchronous (no sockets, no wire format): the guard (proxy/dns_guard.py) decodes a
query, asks `decide` about its name, type, class and opcode, and, for a forwarded answer of an
external name, asks `vet_answer` about the addresses in it. The same compiled policies and the
same address vetting as the HTTP/CONNECT path decide, so the proxy and the guard agree.

Order, first hit wins (docs/transparent.md has the table):
  1. opcode other than QUERY                     → NOTIMP   dns-query-type-refused
  2. class other than IN                         → REFUSED  dns-query-type-refused
  3. name that is not a host name (labels of
     letters, digits, '-', '_')                  → refusal  host-not-allowed
  4. ANY, AXFR, IXFR, MAILA, MAILB, meta types   → REFUSED  dns-query-type-refused
  5. name under dns_passthrough                  → forward (never vetted, never rewritten)
  6. PTR                                         → REFUSED  dns-query-type-refused
  7. the client's policy allows the name         → forward, or the proxy's address
     (report mode: allowed too, logged as report)   (dns_answer: proxy)
  8. anything else                               → refusal  host-not-allowed

"refusal" is NXDOMAIN, or REFUSED with `dns_refusal: refused`. Type refusals are always REFUSED:
an NXDOMAIN would tell a caching stub that the name has no records of any type.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype

from egressgate.config.model import DnsAnswer, DnsConfig, DnsRefusal
from egressgate.errors import Reason
from egressgate.names.hostname import IPAddress
from egressgate.names.patterns import DomainPattern, HostMatcher
from egressgate.policy.clients import NeedsAuthentication
from egressgate.policy.decision import ClientIdentity
from egressgate.policy.engine import PolicySet

# A host name as the allowlist matches it: lowercase LDH labels (underscore for SRV-style
# labels such as _http._tcp). Anything else (escaped dots, binary labels, '*') is never a name
# the allowlist could mean, so it is refused before matching.
_HOST_NAME = re.compile(r"(?:[a-z0-9_-]{1,63}\.)*[a-z0-9_-]{1,63}")

# Never forwarded, whatever the name: zone transfers, ANY (RFC 8482), the obsolete mail
# meta-queries, and the meta types (OPT, TSIG, TKEY...) that are not questions at all.
_REFUSED_TYPES = frozenset(
    {
        dns.rdatatype.ANY,
        dns.rdatatype.AXFR,
        dns.rdatatype.IXFR,
        dns.rdatatype.MAILA,
        dns.rdatatype.MAILB,
    }
)


class DnsAction(StrEnum):
    FORWARD = "forward"  # ask the upstream resolver, return its answer (vetted unless passthrough)
    ANSWER_PROXY = "proxy"  # answer with the proxy's own addresses (dns_answer: proxy)
    REFUSE = "refuse"  # answer `rcode` without asking anyone


@dataclass(frozen=True, slots=True)
class DnsVerdict:
    """What to do with one query, and what its access record says."""

    action: DnsAction
    decision: str  # allow | deny | report (the access log's `decision`)
    reason: Reason
    rcode: dns.rcode.Rcode  # the answer's rcode when refused; NOERROR otherwise
    policy: str | None
    rule: str | None = None
    passthrough: bool = False
    detail: str | None = None


class DnsRules:
    """The DNS guard's part of one config generation, compiled once."""

    __slots__ = ("answer", "passthrough", "proxy_ttl_s", "proxy_v4", "proxy_v6", "refusal_rcode")

    def __init__(self, config: DnsConfig) -> None:
        self.passthrough = HostMatcher([DomainPattern.parse(p) for p in config.passthrough])
        self.refusal_rcode = (
            dns.rcode.NXDOMAIN if config.refusal is DnsRefusal.NXDOMAIN else dns.rcode.REFUSED
        )
        self.answer = config.answer
        self.proxy_v4 = tuple(a for a in config.proxy_addresses if ":" not in a)
        self.proxy_v6 = tuple(a for a in config.proxy_addresses if ":" in a)
        self.proxy_ttl_s = config.proxy_ttl_s


def decide(
    policies: PolicySet,
    rules: DnsRules,
    client: ClientIdentity,
    name: str,
    qtype: dns.rdatatype.RdataType,
    qclass: dns.rdataclass.RdataClass = dns.rdataclass.IN,
    opcode: dns.opcode.Opcode = dns.opcode.QUERY,
) -> DnsVerdict:
    """The verdict for a query of `name` (lowercase, no trailing dot); see the module doc."""
    if opcode != dns.opcode.QUERY:
        return _refuse_type(None, dns.rcode.NOTIMP, f"opcode {dns.opcode.to_text(opcode)}")
    if qclass != dns.rdataclass.IN:
        return _refuse_type(None, dns.rcode.REFUSED, f"class {dns.rdataclass.to_text(qclass)}")
    if _HOST_NAME.fullmatch(name) is None:
        return DnsVerdict(
            DnsAction.REFUSE,
            "deny",
            Reason.HOST_NOT_ALLOWED,
            rules.refusal_rcode,
            None,
            detail="not a host name",
        )
    if qtype in _REFUSED_TYPES or dns.rdatatype.is_metatype(qtype):
        return _refuse_type(None, dns.rcode.REFUSED, f"type {dns.rdatatype.to_text(qtype)}")
    try:
        policy = policies.policy_for(client)
    except NeedsAuthentication:
        policy = None
    passthrough = rules.passthrough.match_name(name)
    if passthrough is not None:
        return DnsVerdict(
            DnsAction.FORWARD,
            "allow",
            Reason.ALLOWED,
            dns.rcode.NOERROR,
            policy.name if policy is not None else None,
            passthrough,
            passthrough=True,
            detail="dns_passthrough",
        )
    if qtype == dns.rdatatype.PTR:
        return _refuse_type(
            policy.name if policy else None, dns.rcode.REFUSED, "PTR outside dns_passthrough"
        )
    if policy is None:
        return DnsVerdict(
            DnsAction.REFUSE,
            "deny",
            Reason.AUTH_REQUIRED,
            rules.refusal_rcode,
            None,
            detail="no clients rule selects this address, and DNS clients cannot log in",
        )
    action = DnsAction.ANSWER_PROXY if rules.answer is DnsAnswer.PROXY else DnsAction.FORWARD
    rule = policy.matcher.match_name(name)
    if rule is not None:
        return DnsVerdict(action, "allow", Reason.ALLOWED, dns.rcode.NOERROR, policy.name, rule)
    detail = f"{name} is not on the allowlist of policy {policy.name!r}"
    if policy.report:
        return DnsVerdict(
            action,
            "report",
            Reason.HOST_NOT_ALLOWED,
            dns.rcode.NOERROR,
            policy.name,
            None,
            False,
            detail,
        )
    return DnsVerdict(
        DnsAction.REFUSE,
        "deny",
        Reason.HOST_NOT_ALLOWED,
        rules.refusal_rcode,
        policy.name,
        detail=detail,
    )


def _refuse_type(policy: str | None, rcode: dns.rcode.Rcode, what: str) -> DnsVerdict:
    return DnsVerdict(
        DnsAction.REFUSE,
        "deny",
        Reason.DNS_QUERY_TYPE_REFUSED,
        rcode,
        policy,
        detail=f"{what} is not forwarded by the DNS guard",
    )


def vet_answer(
    policies: PolicySet, rules: DnsRules, verdict: DnsVerdict, addresses: Sequence[IPAddress]
) -> tuple[DnsVerdict, IPAddress] | None:
    """The private-address refusal of a forwarded answer, with the address; None if it may go.

    Passthrough names are exempt (in-cluster services are internal by design). Report mode
    does not lift this check, exactly as on the proxy path (policy/engine.py `vet`).
    """
    if verdict.passthrough or verdict.policy is None or not addresses:
        return None
    bad = policies.policies[verdict.policy].vet(addresses)
    if bad is None:
        return None
    cls, address = bad
    refused = DnsVerdict(
        DnsAction.REFUSE,
        "deny",
        Reason.PRIVATE_ADDRESS,
        rules.refusal_rcode,
        verdict.policy,
        verdict.rule,
        detail=f"resolves to {address} ({cls.value}), which is not in allow_private",
    )
    return refused, address
