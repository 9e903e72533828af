"""PolicySet / CompiledPolicy: decide (before DNS), vet (after DNS), decide_sni and no_sni."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

import pytest

from egressgate.config.model import Config, Mode, NoSniAction, PolicyConfig, PortRange
from egressgate.errors import Reason
from egressgate.names.hostname import IPAddress, normalize_host
from egressgate.policy.decision import ClientIdentity, Decision, Target, Verdict
from egressgate.policy.engine import PolicySet

CLIENT = ClientIdentity(ipaddress.ip_address("10.9.8.7"))


def policy_set(
    allow: Sequence[str] = (),
    *,
    connect_ports: Sequence[str] = ("443",),
    http_ports: Sequence[str] = ("80",),
    allow_private: Sequence[str] = (),
    mode: Mode = Mode.ENFORCE,
    tunnels_without_sni: NoSniAction = NoSniAction.ALLOW,
) -> PolicySet:
    """A single-policy PolicySet, as the top-level keys of a config file would make it."""
    policy = PolicyConfig(
        "default",
        allow=tuple(allow),
        connect_ports=tuple(PortRange.parse(p) for p in connect_ports),
        http_ports=tuple(PortRange.parse(p) for p in http_ports),
        allow_private=tuple(allow_private),
        mode=mode,
        tunnels_without_sni=tunnels_without_sni,
    )
    return PolicySet.compile(Config(policies=(policy,)))


def decide(policies: PolicySet, host: str, port: int = 443, *, connect: bool = True) -> Decision:
    return policies.decide(CLIENT, Target(normalize_host(host), port, connect))


def addresses(*texts: str) -> list[IPAddress]:
    return [ipaddress.ip_address(t) for t in texts]


# ---------------------------------------------------------------------------------------------
# decide
# ---------------------------------------------------------------------------------------------

ALLOW = ["api.stripe.com", ".example.com", "*.cdn.example.net", "203.0.113.7", "198.51.100.0/24"]

DECISIONS: list[tuple[str, int, bool, Reason, str | None]] = [
    # host, port, connect → reason, deciding entry
    ("api.stripe.com", 443, True, Reason.ALLOWED, "api.stripe.com"),
    ("API.Stripe.com.", 443, True, Reason.ALLOWED, "api.stripe.com"),
    ("www.example.com", 80, False, Reason.ALLOWED, ".example.com"),
    ("example.com", 443, True, Reason.ALLOWED, ".example.com"),
    ("a.cdn.example.net", 443, True, Reason.ALLOWED, "*.cdn.example.net"),
    ("cdn.example.net", 443, True, Reason.HOST_NOT_ALLOWED, None),
    ("badexample.com", 443, True, Reason.HOST_NOT_ALLOWED, None),
    ("example.com.evil.net", 443, True, Reason.HOST_NOT_ALLOWED, None),
    # IP-literal destinations are allowed only when listed, in any spelling
    ("203.0.113.7", 443, True, Reason.ALLOWED, "203.0.113.7"),
    ("0xcb007107", 443, True, Reason.ALLOWED, "203.0.113.7"),
    ("[::ffff:203.0.113.7]", 443, True, Reason.ALLOWED, "203.0.113.7"),
    ("198.51.100.200", 80, False, Reason.ALLOWED, "198.51.100.0/24"),
    ("203.0.113.8", 443, True, Reason.IP_LITERAL_NOT_ALLOWED, None),
    ("[2001:db8::1]", 443, True, Reason.IP_LITERAL_NOT_ALLOWED, None),
    ("127.0.0.1", 443, True, Reason.IP_LITERAL_NOT_ALLOWED, None),
    # the port: connect_ports for CONNECT, http_ports for plain HTTP
    ("api.stripe.com", 80, True, Reason.PORT_NOT_ALLOWED, "api.stripe.com"),
    ("api.stripe.com", 443, False, Reason.PORT_NOT_ALLOWED, "api.stripe.com"),
    ("api.stripe.com", 22, True, Reason.PORT_NOT_ALLOWED, "api.stripe.com"),
    ("203.0.113.7", 22, True, Reason.PORT_NOT_ALLOWED, "203.0.113.7"),
    # the host is checked before the port: an unlisted host on a bad port is a host refusal
    ("evil.example.org", 22, True, Reason.HOST_NOT_ALLOWED, None),
    ("203.0.113.8", 22, False, Reason.IP_LITERAL_NOT_ALLOWED, None),
]


@pytest.mark.parametrize(
    ("host", "port", "connect", "reason", "rule"),
    DECISIONS,
    ids=[f"{'CONNECT' if c else 'GET'} {h}:{p}" for h, p, c, _, _ in DECISIONS],
)
def test_decide_host_then_port(
    host: str, port: int, connect: bool, reason: Reason, rule: str | None
) -> None:
    decision = decide(policy_set(ALLOW), host, port, connect=connect)
    assert decision.reason is reason
    assert decision.rule == rule
    assert decision.verdict is (Verdict.ALLOW if reason is Reason.ALLOWED else Verdict.DENY)
    assert decision.policy == "default"


def test_refusal_detail_names_the_host_and_policy() -> None:
    decision = decide(policy_set(ALLOW), "evil.example.org")
    assert "evil.example.org" in decision.detail
    assert "'default'" in decision.detail


def test_port_refusal_detail_lists_the_allowed_ports() -> None:
    decision = decide(policy_set(ALLOW, connect_ports=["443", "8000-8999"]), "api.stripe.com", 22)
    assert "connect_ports [443, 8000-8999]" in decision.detail


def test_star_allows_any_name_but_no_ip_literal() -> None:
    policies = policy_set(["*"])
    assert decide(policies, "anything.example").reason is Reason.ALLOWED
    assert decide(policies, "127.0.0.1").reason is Reason.IP_LITERAL_NOT_ALLOWED
    assert decide(policies, "2130706433").reason is Reason.IP_LITERAL_NOT_ALLOWED
    # fullwidth digits are an IP literal too (UTS #46 maps them before the numeric check)
    assert decide(policies, "127.0.0.\uff11").reason is Reason.IP_LITERAL_NOT_ALLOWED


def test_empty_allowlist_refuses_everything() -> None:
    policies = policy_set([])
    assert decide(policies, "example.com").reason is Reason.HOST_NOT_ALLOWED
    assert decide(policies, "8.8.8.8").reason is Reason.IP_LITERAL_NOT_ALLOWED


@pytest.mark.parametrize(
    ("ranges", "port", "allowed"),
    [
        # up to 1024 ports compile to a set, more stay ranges: the answers must not differ
        (["1-1024"], 1, True),
        (["1-1024"], 1024, True),
        (["1-1024"], 1025, False),
        (["1-1025"], 1, True),
        (["1-1025"], 1025, True),
        (["1-1025"], 1026, False),
        (["1-512", "513-1024", "1025"], 1025, True),
        (["1-512", "513-1024", "1025"], 1026, False),
        (["1024-65535"], 1023, False),
        (["1024-65535"], 65535, True),
    ],
)
def test_port_sets_and_wide_ranges_answer_alike(
    ranges: list[str], port: int, allowed: bool
) -> None:
    decision = decide(policy_set(["a.example"], connect_ports=ranges), "a.example", port)
    assert decision.allowed is allowed


def test_report_mode_allows_but_keeps_the_refusal_reason() -> None:
    policies = policy_set(ALLOW, mode=Mode.REPORT)
    for host, port, reason in [
        ("evil.example.org", 443, Reason.HOST_NOT_ALLOWED),
        ("8.8.8.8", 443, Reason.IP_LITERAL_NOT_ALLOWED),
        ("api.stripe.com", 22, Reason.PORT_NOT_ALLOWED),
    ]:
        decision = decide(policies, host, port)
        assert decision.verdict is Verdict.REPORT
        assert decision.allowed
        assert decision.reason is reason
        assert decision.detail
    allowed = decide(policies, "api.stripe.com")
    assert (allowed.verdict, allowed.reason) == (Verdict.ALLOW, Reason.ALLOWED)


def test_decision_allowed_is_false_only_for_deny() -> None:
    assert Decision(Verdict.ALLOW, Reason.ALLOWED, "p").allowed
    assert Decision(Verdict.REPORT, Reason.HOST_NOT_ALLOWED, "p").allowed
    assert not Decision(Verdict.DENY, Reason.HOST_NOT_ALLOWED, "p").allowed


# ---------------------------------------------------------------------------------------------
# vet (after DNS)
# ---------------------------------------------------------------------------------------------


def _vet(policies: PolicySet, *texts: str) -> tuple[Decision | None, tuple[IPAddress, ...]]:
    decision = decide(policies, "api.stripe.com")
    result = policies.vet(decision, addresses(*texts))
    return result.refusal, result.addresses


def test_vet_passes_public_addresses_in_order() -> None:
    refusal, allowed = _vet(policy_set(ALLOW), "8.8.8.8", "2606:4700::1111", "1.1.1.1")
    assert refusal is None
    assert allowed == tuple(addresses("8.8.8.8", "2606:4700::1111", "1.1.1.1"))


@pytest.mark.parametrize(
    ("internal", "kind"),
    [
        ("127.0.0.1", "loopback"),
        ("10.0.0.1", "private"),
        ("100.64.0.1", "cgnat"),
        ("169.254.169.254", "link-local"),
        ("fd00:ec2::254", "unique-local"),
        ("::ffff:127.0.0.1", "loopback"),
        ("64:ff9b::a9fe:a9fe", "link-local"),
        ("2002:a00:1::", "private"),
        ("0.0.0.0", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("192.0.2.1", "reserved"),
    ],
)
def test_vet_refuses_if_any_address_is_internal(internal: str, kind: str) -> None:
    # A name that points inside as well as outside is a mistake or DNS rebinding: all refused.
    refusal, allowed = _vet(policy_set(ALLOW), "8.8.8.8", internal, "1.1.1.1")
    assert refusal is not None
    assert (refusal.verdict, refusal.reason) == (Verdict.DENY, Reason.PRIVATE_ADDRESS)
    assert refusal.rule == "api.stripe.com"
    assert f"({kind})" in refusal.detail
    assert allowed == ()


def test_vet_allows_internal_addresses_covered_by_allow_private() -> None:
    policies = policy_set(ALLOW, allow_private=["10.20.0.0/16", "fd00::/8"])
    refusal, allowed = _vet(policies, "10.20.0.1", "fd00:ec2::254", "8.8.8.8")
    assert refusal is None
    assert len(allowed) == 3


def test_vet_refuses_the_internal_address_allow_private_does_not_cover() -> None:
    policies = policy_set(ALLOW, allow_private=["10.20.0.0/16"])
    refusal, _ = _vet(policies, "10.20.0.1", "10.21.0.1")
    assert refusal is not None
    assert "10.21.0.1" in refusal.detail


def test_vet_stays_enforced_in_report_mode() -> None:
    # Report mode is for discovering the allowlist, not for switching off SSRF protection.
    refusal, allowed = _vet(policy_set(ALLOW, mode=Mode.REPORT), "169.254.169.254")
    assert refusal is not None
    assert refusal.verdict is Verdict.DENY
    assert allowed == ()


def test_vet_with_no_addresses_refuses_nothing() -> None:
    assert _vet(policy_set(ALLOW)) == (None, ())


def test_vet_gives_the_same_answer_when_asked_again() -> None:
    policies = policy_set(ALLOW, allow_private=["10.0.0.0/8"])
    first = _vet(policies, "10.0.0.1", "127.0.0.1")
    assert _vet(policies, "10.0.0.1", "127.0.0.1") == first
    assert _vet(policies, "10.0.0.1") == (None, tuple(addresses("10.0.0.1")))


def test_vet_uses_the_allow_private_of_the_policy_that_decided() -> None:
    config = Config(
        policies=(
            PolicyConfig("default", allow=("a.example",)),
            PolicyConfig("db", allow=("a.example",), allow_private=("10.0.0.0/8",)),
        )
    )
    policies = PolicySet.compile(config)
    target = Target(normalize_host("a.example"), 443, True)
    by_db = policies.policies["db"].decide(target)
    by_default = policies.decide(CLIENT, target)
    assert policies.vet(by_db, addresses("10.0.0.1")).refusal is None
    assert policies.vet(by_default, addresses("10.0.0.1")).refusal is not None


# ---------------------------------------------------------------------------------------------
# decide_sni and no_sni (CONNECT tunnels)
# ---------------------------------------------------------------------------------------------

SNI_ROWS: list[tuple[str, str, Reason | None]] = [
    # CONNECT host, SNI → refusal reason (None: passes)
    ("api.stripe.com", "api.stripe.com", None),
    ("api.stripe.com", "API.Stripe.COM.", None),  # compared normalized
    ("www.example.com", "www.example.com", None),
    # domain fronting: CONNECT an allowed name, a different allowed name inside TLS
    ("api.stripe.com", "www.example.com", Reason.SNI_MISMATCH),
    ("www.example.com", "example.com", Reason.SNI_MISMATCH),
    # an SNI that is not allowed, whatever the CONNECT host
    ("api.stripe.com", "evil.example.org", Reason.SNI_NOT_ALLOWED),
    ("api.stripe.com", "bad..name", Reason.SNI_NOT_ALLOWED),
    ("api.stripe.com", "a\r\nb", Reason.SNI_NOT_ALLOWED),
    # RFC 6066 §3: "Literal IPv4 and IPv6 addresses are not permitted in "HostName"."
    ("203.0.113.7", "203.0.113.7", Reason.SNI_NOT_ALLOWED),
    # an IP-literal CONNECT (itself allowed) may carry any allowed name
    ("203.0.113.7", "api.stripe.com", None),
    ("203.0.113.7", "evil.example.org", Reason.SNI_NOT_ALLOWED),
]


@pytest.mark.parametrize(
    ("connect", "sni", "reason"), SNI_ROWS, ids=[f"{c} {s!r}" for c, s, _ in SNI_ROWS]
)
def test_decide_sni(connect: str, sni: str, reason: Reason | None) -> None:
    policy = policy_set(ALLOW).default
    decision = policy.decide_sni(normalize_host(connect), sni)
    if reason is None:
        assert decision is None
    else:
        assert decision is not None
        assert (decision.verdict, decision.reason) == (Verdict.DENY, reason)


def test_decide_sni_in_report_mode_reports() -> None:
    policy = policy_set(ALLOW, mode=Mode.REPORT).default
    decision = policy.decide_sni(normalize_host("api.stripe.com"), "www.example.com")
    assert decision is not None
    assert (decision.verdict, decision.reason) == (Verdict.REPORT, Reason.SNI_MISMATCH)


def test_sni_equal_to_an_unlisted_connect_host_adds_nothing_to_the_name_decision() -> None:
    # Report mode, empty allowlist: the CONNECT was reported as host-not-allowed; an SNI naming
    # the same host is no new fact (not fronting), so the tunnel keeps that reason (issue 12).
    policy = policy_set([], mode=Mode.REPORT).default
    assert policy.decide_sni(normalize_host("pypi.org"), "PyPI.org.") is None
    fronted = policy.decide_sni(normalize_host("pypi.org"), "files.pythonhosted.org")
    assert fronted is not None
    assert (fronted.verdict, fronted.reason) == (Verdict.REPORT, Reason.SNI_NOT_ALLOWED)


def test_vet_names_the_refused_address() -> None:
    policies = policy_set(ALLOW, allow_private=["10.20.0.0/16"])
    decision = decide(policies, "api.stripe.com")
    result = policies.vet(decision, tuple(addresses("8.8.8.8", "10.20.0.1", "10.21.0.1")))
    assert result.refusal is not None
    assert result.refused_address == ipaddress.ip_address("10.21.0.1")
    assert policies.vet(decision, tuple(addresses("8.8.8.8"))).refused_address is None


def test_no_sni_allowed_by_default() -> None:
    assert policy_set(ALLOW).default.no_sni("not TLS") is None


def test_no_sni_denied_when_tunnels_without_sni_is_deny() -> None:
    policy = policy_set(ALLOW, tunnels_without_sni=NoSniAction.DENY).default
    decision = policy.no_sni("the tunnel's first bytes are not TLS")
    assert decision is not None
    assert (decision.verdict, decision.reason) == (Verdict.DENY, Reason.SNI_MISSING)
    assert decision.detail == "the tunnel's first bytes are not TLS"


def test_no_sni_deny_in_report_mode_reports() -> None:
    policies = policy_set(ALLOW, tunnels_without_sni=NoSniAction.DENY, mode=Mode.REPORT)
    decision = policies.default.no_sni("no SNI")
    assert decision is not None
    assert decision.verdict is Verdict.REPORT


def test_vet_of_the_same_tuple_again_and_of_equal_or_new_tuples_stays_correct() -> None:
    # vet caches by tuple identity first (the resolver repeats its cached tuple): a repeat, an
    # equal tuple built anew, a list, and tuples created and dropped in a loop (whose ids the
    # interpreter may recycle) must each get the answer for their own content.
    policies = policy_set(ALLOW)
    decision = decide(policies, "api.stripe.com")
    private = tuple(addresses("10.0.0.1"))
    public = tuple(addresses("8.8.8.8"))
    for _ in range(3):
        assert policies.vet(decision, private).refusal is not None
        assert policies.vet(decision, public).refusal is None
    assert policies.vet(decision, tuple(addresses("10.0.0.1"))).refusal is not None
    assert policies.vet(decision, addresses("10.0.0.1")).refusal is not None
    for index in range(200):
        fresh = tuple(addresses("10.0.0.1" if index % 2 else "8.8.8.8"))
        assert (policies.vet(decision, fresh).refusal is None) == (index % 2 == 0)
        del fresh
    assert policies.vet(decision, public).addresses is public  # no copy of a vetted tuple
