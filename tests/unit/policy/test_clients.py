"""Client rules: which named policy applies to a client (first match wins, AND within a rule)."""

from __future__ import annotations

import ipaddress

import pytest

from egressgate.config.model import ClientRule, Config, PolicyConfig
from egressgate.errors import Reason
from egressgate.names.hostname import normalize_host
from egressgate.policy.clients import ClientSelector, NeedsAuthentication
from egressgate.policy.decision import ClientIdentity, Target
from egressgate.policy.engine import PolicySet


def client(address: str, user: str | None = None, *tls_names: str) -> ClientIdentity:
    return ClientIdentity(ipaddress.ip_address(address), user, tls_names)


def select(rules: list[ClientRule], who: ClientIdentity, default: str = "default") -> str:
    return ClientSelector(tuple(rules), default).select(who)


RULES = [
    ClientRule("ci", sources=("10.1.0.0/16",), users=("builder",)),  # source AND user
    ClientRule("mesh", sources=("10.2.0.0/16",), tls_names=("billing.svc", "ledger.svc")),
    ClientRule("admins", users=("alice", "bob")),
    ClientRule("v6", sources=("fd00::/8",)),
    ClientRule("office", sources=("10.0.0.0/8", "192.168.0.0/16")),
]

SELECTIONS: list[tuple[ClientIdentity, str]] = [
    (client("10.1.2.3", "builder"), "ci"),  # both criteria of the first rule
    (client("10.1.2.3", "alice"), "admins"),  # source matches rule 1 but user does not
    (client("10.9.9.9", "builder"), "office"),  # user matches rule 1 but source does not
    (client("10.2.0.1", None, "ledger.svc"), "mesh"),  # one of the tls names is enough
    (client("10.2.0.1", None, "other.svc", "billing.svc"), "mesh"),
    (client("10.2.0.1", None, "other.svc"), "office"),  # no tls name matches
    (client("10.3.0.1", None, "billing.svc"), "office"),  # tls name but wrong source
    (client("203.0.113.9", "bob"), "admins"),  # a user rule matches from anywhere
    (client("192.168.1.1"), "office"),  # any of the rule's sources
    (client("fd00::1"), "v6"),
    (client("203.0.113.9", "carol"), "default"),  # authenticated, no rule: the default
]


@pytest.mark.parametrize(
    ("who", "policy"),
    SELECTIONS,
    ids=[f"{c.address}-{c.user}-{','.join(c.tls_names)}" for c, _ in SELECTIONS],
)
def test_first_matching_rule_wins_and_criteria_combine_with_and(
    who: ClientIdentity, policy: str
) -> None:
    assert select(RULES, who) == policy


def test_first_rule_wins_over_a_later_broader_rule() -> None:
    rules = [
        ClientRule("narrow", sources=("10.0.0.0/24",)),
        ClientRule("broad", sources=("10.0.0.0/8",)),
    ]
    assert select(rules, client("10.0.0.5")) == "narrow"
    assert select(list(reversed(rules)), client("10.0.0.5")) == "broad"


def test_ipv4_sources_never_match_ipv6_clients() -> None:
    assert select([ClientRule("all4", sources=("0.0.0.0/0",))], client("::1")) == "default"


def test_no_matching_rule_gives_the_configured_default_policy() -> None:
    rules = [ClientRule("office", sources=("10.0.0.0/8",))]
    assert select(rules, client("203.0.113.9"), default="fallback") == "fallback"


def test_anonymous_client_must_authenticate_when_user_rules_exist() -> None:
    # git, for example, sends credentials only after a 407: ask rather than use the default.
    with pytest.raises(NeedsAuthentication):
        select(RULES, client("203.0.113.9"))


def test_anonymous_client_matching_a_source_rule_is_not_asked_to_authenticate() -> None:
    assert select(RULES, client("10.9.9.9")) == "office"


def test_anonymous_client_without_user_rules_gets_the_default() -> None:
    assert select([ClientRule("office", sources=("10.0.0.0/8",))], client("8.8.8.8")) == "default"


def test_selector_without_rules_is_trivial() -> None:
    assert ClientSelector((), "default").trivial
    assert not ClientSelector((ClientRule("x", sources=("10.0.0.0/8",)),), "default").trivial


def _policy_set() -> PolicySet:
    config = Config(
        policies=(
            PolicyConfig("default", allow=("public.example",)),
            PolicyConfig("ci", allow=("ci.example",)),
        ),
        clients=(ClientRule("ci", users=("builder",)),),
    )
    return PolicySet.compile(config)


def test_policy_set_decides_under_the_selected_policy() -> None:
    policies = _policy_set()
    target = Target(normalize_host("ci.example"), 443, True)
    builder = policies.decide(client("10.0.0.1", "builder"), target)
    assert (builder.policy, builder.reason) == ("ci", Reason.ALLOWED)
    other = policies.decide(client("10.0.0.1", "carol"), target)
    assert (other.policy, other.reason) == ("default", Reason.HOST_NOT_ALLOWED)


def test_policy_set_decide_raises_needs_authentication_for_anonymous_clients() -> None:
    with pytest.raises(NeedsAuthentication):
        _policy_set().decide(client("10.0.0.1"), Target(normalize_host("ci.example"), 443, True))
