"""Allowlist entries and the matcher built from them.

Pure; compiled once at load, nothing is re-parsed per request. Entry forms (Squid `dstdomain`
semantics for the leading dot):

    api.stripe.com        exactly this host
    .example.com          example.com and every subdomain of it
    *.cdn.example.net     every subdomain, but not cdn.example.net itself
    *                     any hostname (not IP literals): for report mode and learning
    203.0.113.7           this IP-literal destination
    203.0.113.0/24        any IP-literal destination in this network (IPv6 too)

Matching is on normalized names (lowercase, punycode, no trailing dot), label by label:
`.example.com` never matches `badexample.com` or `example.com.evil.net`. HostMatcher does set
lookups over the host's label suffixes, so its cost depends on the host's label count, not on
the number of entries.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from enum import StrEnum

from egressgate.names.hostname import InvalidHost, IPAddress, normalize_host, normalize_name

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class PatternKind(StrEnum):
    EXACT = "exact"
    DOMAIN = "domain"  # .example.com: apex and subdomains
    SUBDOMAINS = "subdomains"  # *.example.com: subdomains only
    ANY = "any"  # *
    NETWORK = "network"  # IP literal or CIDR


@dataclass(frozen=True, slots=True)
class DomainPattern:
    """One parsed allowlist entry, keeping the text the operator wrote."""

    text: str
    kind: PatternKind
    name: str = ""  # normalized name for the name kinds
    network: IPNetwork | None = None

    @classmethod
    def parse(cls, text: str) -> DomainPattern:
        """Parse one entry; raises ValueError with an operator-facing reason."""
        entry = text.strip()
        if not entry:
            raise ValueError("empty allowlist entry")
        if entry == "*":
            return cls(text, PatternKind.ANY)
        if "/" in entry:
            return cls(text, PatternKind.NETWORK, network=_parse_network(entry))
        if entry.startswith("*."):
            return cls(text, PatternKind.SUBDOMAINS, name=_parse_name(entry[2:], text))
        if "*" in entry:
            raise ValueError(
                f"{text!r}: '*' is only allowed as a whole first label, like *.example.com"
            )
        if entry.startswith("."):
            return cls(text, PatternKind.DOMAIN, name=_parse_name(entry[1:], text))
        try:
            host = normalize_host(entry)
        except InvalidHost as exc:
            raise ValueError(f"{text!r}: {exc}") from exc
        if host.address is not None:
            return cls(text, PatternKind.NETWORK, network=ipaddress.ip_network(host.address))
        assert host.name is not None
        return cls(text, PatternKind.EXACT, name=host.name)


def _parse_name(name: str, text: str) -> str:
    if name.startswith(".") or not name:
        raise ValueError(f"{text!r}: expected a domain after the prefix")
    try:
        return normalize_name(name)
    except InvalidHost as exc:
        raise ValueError(f"{text!r}: {exc}") from exc


def _parse_network(entry: str) -> IPNetwork:
    try:
        return ipaddress.ip_network(entry.strip("[]"), strict=False)
    except ValueError as exc:
        raise ValueError(f"{entry!r} is not a valid CIDR network: {exc}") from exc


def parse_cidr(text: str) -> IPNetwork:
    """Parse a CIDR or a single address (as a /32 or /128); ValueError with a clear reason."""
    return _parse_network(text.strip())


@dataclass(frozen=True, slots=True)
class Match:
    """Which entry allowed a host."""

    pattern: str


class HostMatcher:
    """Answers "which entry allows this host?" in O(labels of the host)."""

    __slots__ = ("_any", "_domain", "_exact", "_networks", "_subdomains")

    def __init__(self, patterns: list[DomainPattern] | tuple[DomainPattern, ...]) -> None:
        self._exact: dict[str, str] = {}
        self._domain: dict[str, str] = {}
        self._subdomains: dict[str, str] = {}
        self._networks: list[tuple[IPNetwork, str]] = []
        self._any: str | None = None
        for pattern in patterns:
            self._add(pattern)

    def _add(self, pattern: DomainPattern) -> None:
        table = {
            PatternKind.EXACT: self._exact,
            PatternKind.DOMAIN: self._domain,
            PatternKind.SUBDOMAINS: self._subdomains,
        }.get(pattern.kind)
        if table is not None:
            table.setdefault(pattern.name, pattern.text)
        elif pattern.kind is PatternKind.ANY:
            self._any = self._any or pattern.text
        elif pattern.network is not None:
            self._networks.append((pattern.network, pattern.text))

    def match_name(self, name: str) -> str | None:
        """The entry text allowing normalized hostname `name`, or None."""
        found = self._exact.get(name)
        if found is not None:
            return found
        found = self._domain.get(name)
        if found is not None:
            return found
        dot = name.find(".")
        while dot != -1:
            suffix = name[dot + 1 :]
            found = self._domain.get(suffix) or self._subdomains.get(suffix)
            if found is not None:
                return found
            dot = name.find(".", dot + 1)
        return self._any

    def covers(self, pattern: DomainPattern) -> bool:
        """Whether every host `pattern` (a name form) matches is also matched here.

        Used to check that each intercepted host is allowed: `.github.com` is covered by
        `.github.com` or `*` but not by `api.github.com`; `*.x.com` by `.x.com` or `*.x.com`."""
        if pattern.kind is PatternKind.EXACT:
            return self.match_name(pattern.name) is not None
        if pattern.kind is PatternKind.DOMAIN and self.match_name(pattern.name) is None:
            return False
        if pattern.kind not in (PatternKind.DOMAIN, PatternKind.SUBDOMAINS):
            return False
        if self._any is not None:
            return True
        name = pattern.name
        while True:
            if name in self._domain or name in self._subdomains:
                return True
            dot = name.find(".")
            if dot == -1:
                return False
            name = name[dot + 1 :]

    def match_address(self, address: IPAddress) -> str | None:
        """The entry text allowing IP-literal destination `address`, or None."""
        for network, text in self._networks:
            if address.version == network.version and address in network:
                return text
        return None
