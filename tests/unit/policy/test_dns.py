"""policy/dns.py as a table: which queries the DNS guard forwards, answers or refuses."""

from __future__ import annotations

import ipaddress

import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import pytest
from hypothesis import given
from hypothesis import strategies as st

from egressgate.config.model import (
    ClientRule,
    Config,
    DnsAnswer,
    DnsConfig,
    DnsRefusal,
    Mode,
    PolicyConfig,
)
from egressgate.errors import Reason
from egressgate.policy.decision import ClientIdentity
from egressgate.policy.dns import DnsAction, DnsRules, decide, vet_answer
from egressgate.policy.engine import PolicySet

T = dns.rdatatype
R = dns.rcode
CONFIG = Config(
    policies=(
        PolicyConfig("default", allow=("allowed.test", ".corp.test", "10.0.0.0/8")),
        PolicyConfig("ci", allow=("build.test",)),
        PolicyConfig("learn", allow=(), mode=Mode.REPORT),
    ),
    clients=(
        ClientRule("ci", sources=("192.0.2.0/24",)),
        ClientRule("learn", sources=("198.51.100.0/24",)),
    ),
)
POLICIES = PolicySet.compile(CONFIG)
RULES = DnsRules(DnsConfig())
HOME = ClientIdentity(ipaddress.ip_address("203.0.113.9"))
CI = ClientIdentity(ipaddress.ip_address("192.0.2.1"))
LEARN = ClientIdentity(ipaddress.ip_address("198.51.100.1"))

# client, name, qtype → action, decision, reason, rcode, policy
TABLE = [
    (HOME, "allowed.test", T.A, DnsAction.FORWARD, "allow", Reason.ALLOWED, R.NOERROR, "default"),
    (
        HOME,
        "allowed.test",
        T.HTTPS,
        DnsAction.FORWARD,
        "allow",
        Reason.ALLOWED,
        R.NOERROR,
        "default",
    ),
    (
        HOME,
        "a.b.corp.test",
        T.AAAA,
        DnsAction.FORWARD,
        "allow",
        Reason.ALLOWED,
        R.NOERROR,
        "default",
    ),
    (
        HOME,
        "_x._tcp.corp.test",
        T.SRV,
        DnsAction.FORWARD,
        "allow",
        Reason.ALLOWED,
        R.NOERROR,
        "default",
    ),
    (
        HOME,
        "denied.test",
        T.A,
        DnsAction.REFUSE,
        "deny",
        Reason.HOST_NOT_ALLOWED,
        R.NXDOMAIN,
        "default",
    ),
    (
        HOME,
        "allowed.test.evil",
        T.A,
        DnsAction.REFUSE,
        "deny",
        Reason.HOST_NOT_ALLOWED,
        R.NXDOMAIN,
        "default",
    ),
    (
        HOME,
        "corp.test.x",
        T.TXT,
        DnsAction.REFUSE,
        "deny",
        Reason.HOST_NOT_ALLOWED,
        R.NXDOMAIN,
        "default",
    ),
    (CI, "build.test", T.A, DnsAction.FORWARD, "allow", Reason.ALLOWED, R.NOERROR, "ci"),
    (CI, "allowed.test", T.A, DnsAction.REFUSE, "deny", Reason.HOST_NOT_ALLOWED, R.NXDOMAIN, "ci"),
    (
        LEARN,
        "any.test",
        T.A,
        DnsAction.FORWARD,
        "report",
        Reason.HOST_NOT_ALLOWED,
        R.NOERROR,
        "learn",
    ),
    # passthrough: forwarded whatever the policy, PTR too
    (
        CI,
        "api.ns.svc.cluster.local",
        T.A,
        DnsAction.FORWARD,
        "allow",
        Reason.ALLOWED,
        R.NOERROR,
        "ci",
    ),
    (
        HOME,
        "cluster.local",
        T.SOA,
        DnsAction.FORWARD,
        "allow",
        Reason.ALLOWED,
        R.NOERROR,
        "default",
    ),
    # query types
    (
        HOME,
        "allowed.test",
        T.ANY,
        DnsAction.REFUSE,
        "deny",
        Reason.DNS_QUERY_TYPE_REFUSED,
        R.REFUSED,
        None,
    ),
    (
        HOME,
        "allowed.test",
        T.AXFR,
        DnsAction.REFUSE,
        "deny",
        Reason.DNS_QUERY_TYPE_REFUSED,
        R.REFUSED,
        None,
    ),
    (
        HOME,
        "x.svc.cluster.local",
        T.IXFR,
        DnsAction.REFUSE,
        "deny",
        Reason.DNS_QUERY_TYPE_REFUSED,
        R.REFUSED,
        None,
    ),
    (
        HOME,
        "allowed.test",
        T.OPT,
        DnsAction.REFUSE,
        "deny",
        Reason.DNS_QUERY_TYPE_REFUSED,
        R.REFUSED,
        None,
    ),
    (
        HOME,
        "1.0.0.10.in-addr.arpa",
        T.PTR,
        DnsAction.REFUSE,
        "deny",
        Reason.DNS_QUERY_TYPE_REFUSED,
        R.REFUSED,
        "default",
    ),
    # not host names: never matched against the allowlist
    (
        HOME,
        "allowed\\.test",
        T.A,
        DnsAction.REFUSE,
        "deny",
        Reason.HOST_NOT_ALLOWED,
        R.NXDOMAIN,
        None,
    ),
    (
        HOME,
        "a\\.corp.test",
        T.A,
        DnsAction.REFUSE,
        "deny",
        Reason.HOST_NOT_ALLOWED,
        R.NXDOMAIN,
        None,
    ),
    (HOME, "*.corp.test", T.A, DnsAction.REFUSE, "deny", Reason.HOST_NOT_ALLOWED, R.NXDOMAIN, None),
    (HOME, "", T.NS, DnsAction.REFUSE, "deny", Reason.HOST_NOT_ALLOWED, R.NXDOMAIN, None),
    (
        HOME,
        "a" * 64 + ".corp.test",
        T.A,
        DnsAction.REFUSE,
        "deny",
        Reason.HOST_NOT_ALLOWED,
        R.NXDOMAIN,
        None,
    ),
]


@pytest.mark.parametrize(
    ("client", "name", "qtype", "action", "decision", "reason", "rcode", "policy"), TABLE
)
def test_decide(
    client: ClientIdentity,
    name: str,
    qtype: dns.rdatatype.RdataType,
    action: DnsAction,
    decision: str,
    reason: Reason,
    rcode: dns.rcode.Rcode,
    policy: str | None,
) -> None:
    verdict = decide(POLICIES, RULES, client, name, qtype)
    assert (verdict.action, verdict.decision, verdict.reason, verdict.rcode, verdict.policy) == (
        action,
        decision,
        reason,
        rcode,
        policy,
    )


def test_opcode_and_class() -> None:
    update = decide(POLICIES, RULES, HOME, "allowed.test", T.A, opcode=dns.opcode.UPDATE)
    assert (update.rcode, update.reason) == (R.NOTIMP, Reason.DNS_QUERY_TYPE_REFUSED)
    chaos = decide(POLICIES, RULES, HOME, "version.bind", T.TXT, qclass=dns.rdataclass.CH)
    assert (chaos.rcode, chaos.reason) == (R.REFUSED, Reason.DNS_QUERY_TYPE_REFUSED)


def test_refusal_rcode_and_proxy_answers_are_configurable() -> None:
    rules = DnsRules(
        DnsConfig(
            refusal=DnsRefusal.REFUSED,
            answer=DnsAnswer.PROXY,
            proxy_addresses=("10.0.0.5", "fd00::5"),
            passthrough=(".in-addr.arpa",),
        )
    )
    assert decide(POLICIES, rules, HOME, "denied.test", T.A).rcode == R.REFUSED
    assert decide(POLICIES, rules, HOME, "allowed.test", T.A).action is DnsAction.ANSWER_PROXY
    # a passthrough name is forwarded even in proxy mode; PTR under it too
    ptr = decide(POLICIES, rules, HOME, "1.0.0.10.in-addr.arpa", T.PTR)
    assert (ptr.action, ptr.passthrough) == (DnsAction.FORWARD, True)
    # the default passthrough was replaced
    gone = decide(POLICIES, rules, HOME, "a.svc.cluster.local", T.A)
    assert gone.reason is Reason.HOST_NOT_ALLOWED
    assert (rules.proxy_v4, rules.proxy_v6) == (("10.0.0.5",), ("fd00::5",))


def test_user_rules_without_a_source_match_are_refused() -> None:
    config = Config(
        policies=(PolicyConfig("default", allow=("allowed.test",)), PolicyConfig("dev")),
        clients=(ClientRule("dev", users=("alice",)),),
    )
    policies = PolicySet.compile(config)
    verdict = decide(policies, RULES, HOME, "allowed.test", T.A)
    assert (verdict.reason, verdict.rcode) == (Reason.AUTH_REQUIRED, R.NXDOMAIN)
    # passthrough needs no policy
    assert decide(policies, RULES, HOME, "a.svc.cluster.local", T.A).action is DnsAction.FORWARD


@pytest.mark.parametrize(
    ("client", "name", "answer", "refused"),
    [
        (HOME, "allowed.test", ["93.184.216.34"], None),
        (HOME, "allowed.test", ["93.184.216.34", "10.1.2.3"], "10.1.2.3"),
        (HOME, "allowed.test", ["169.254.169.254"], "169.254.169.254"),
        (HOME, "allowed.test", ["::1"], "::1"),
        (LEARN, "any.test", ["127.0.0.1"], "127.0.0.1"),  # report mode still vets
        (HOME, "x.svc.cluster.local", ["10.96.0.1"], None),  # passthrough: exempt
    ],
)
def test_vet_answer(
    client: ClientIdentity, name: str, answer: list[str], refused: str | None
) -> None:
    verdict = decide(POLICIES, RULES, client, name, T.A)
    found = vet_answer(POLICIES, RULES, verdict, [ipaddress.ip_address(a) for a in answer])
    if refused is None:
        assert found is None
    else:
        assert found is not None
        refusal, address = found
        assert str(address) == refused
        assert (refusal.reason, refusal.rcode, refusal.decision) == (
            Reason.PRIVATE_ADDRESS,
            R.NXDOMAIN,
            "deny",
        )


@given(
    st.text(alphabet=st.sampled_from("abc.-_*\\\x00é5"), max_size=80),
    st.sampled_from([T.A, T.AAAA, T.TXT, T.PTR, T.ANY, T.HTTPS]),
)
def test_only_allowlisted_or_passthrough_names_are_ever_forwarded(
    name: str, qtype: dns.rdatatype.RdataType
) -> None:
    verdict = decide(POLICIES, RULES, HOME, name, qtype)
    if verdict.action is not DnsAction.REFUSE:
        matched = POLICIES.policies["default"].matcher.match_name(name)
        assert matched is not None or RULES.passthrough.match_name(name) is not None
        assert all(label and len(label) <= 63 for label in name.split("."))
