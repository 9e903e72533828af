"""Which named policy applies to a client: the `clients` rules, first match wins.

Pure. A rule matches when every criterion it names matches: the client address is in one of its
`source` CIDRs, the authenticated proxy user is one of its `user`s, one of the TLS client
certificate names is one of its `tls_name`s. No rule matching → the default policy, except that an
unauthenticated client is asked to authenticate (407) when some rule is selected by user name:
the client may have credentials to offer (git, for example, sends them only after a 407).
"""

from __future__ import annotations

from dataclasses import dataclass

from egressgate.config.model import ClientRule
from egressgate.names.patterns import IPNetwork, parse_cidr
from egressgate.policy.decision import ClientIdentity


@dataclass(frozen=True, slots=True)
class CompiledRule:
    policy: str
    networks: tuple[IPNetwork, ...]
    users: frozenset[str]
    tls_names: frozenset[str]

    @classmethod
    def compile(cls, rule: ClientRule) -> CompiledRule:
        return cls(
            rule.policy,
            tuple(parse_cidr(s) for s in rule.sources),
            frozenset(rule.users),
            frozenset(rule.tls_names),
        )

    def matches(self, client: ClientIdentity) -> bool:
        if self.networks and not any(
            client.address.version == n.version and client.address in n for n in self.networks
        ):
            return False
        if self.users and client.user not in self.users:
            return False
        return not self.tls_names or any(name in self.tls_names for name in client.tls_names)


class NeedsAuthentication(Exception):
    """No rule matched an anonymous client, but a rule selects by user: ask for credentials."""


class ClientSelector:
    """Maps a ClientIdentity to a policy name."""

    __slots__ = ("_default", "_rules", "_user_rules_exist")

    def __init__(self, rules: tuple[ClientRule, ...], default_policy: str) -> None:
        self._rules = tuple(CompiledRule.compile(r) for r in rules)
        self._default = default_policy
        self._user_rules_exist = any(r.users for r in self._rules)

    @property
    def trivial(self) -> bool:
        """True when every client gets the default policy (the single-policy config)."""
        return not self._rules

    def select(self, client: ClientIdentity) -> str:
        """The policy name for `client`; raises NeedsAuthentication (see module docstring)."""
        for rule in self._rules:
            if rule.matches(client):
                return rule.policy
        if self._user_rules_exist and client.user is None:
            raise NeedsAuthentication
        return self._default
