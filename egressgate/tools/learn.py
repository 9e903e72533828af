"""Access-log lines → a proposed allowlist per policy, and its diff against a current config.

Owns the learning workflow's logic, pure over iterables of lines (the CLI opens the files):

- `LogAccumulator` reads JSON access-log lines (one request or tunnel each, the fields of
  egressgate.observe.record.FIELDS) and counts, per policy and destination host, requests,
  first/last seen, ports (CONNECT and plain HTTP apart) and decisions. The DNS guard's
  `kind: dns` lines count too (the name asked for, no port): a name an app looked up is
  treated like a request to it (allowed or report mode: proposed; refused in enforce mode:
  listed as denied; resolved to an internal address: suspicious); lookups of dns_passthrough
  names and refused query types (ANY, AXFR, PTR...) are left out, since an allow entry would
  change neither.
  Lines that are not JSON or lack a field are counted and skipped, never fatal.
- `LogAccumulator.result()` proposes the smallest allowlist that covers what was seen: hosts are
  grouped under their registrable domain (the Public Suffix List of the `publicsuffixlist`
  package), and a group becomes `.domain` when it has many hosts or CDN/shard-like names, else
  its exact names. A public suffix is never proposed as a domain. IP literals are proposed only
  as explicit addresses, with a warning; refusals of internal addresses are listed apart (an
  allow entry would not change them; allow_private would).
- Nothing is proposed silently that a reviewer should look at first (issue 18). A destination
  whose every request was refused (enforce mode) is listed as *denied*, with the reasons; a
  *suspicious* one is never proposed, whatever the decision: an internal or cloud-metadata
  IP literal, a name that contains an allowed or proposed name without being under it
  (`registry.npmjs.org.evil.net`), and names that resolved to internal addresses.
- `diff()` compares a proposal with the policies of a config: entries to add, entries nothing
  in the logs used, and the requests that config would refuse.
- `render_yaml()` / `render_json()` format the result.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache

from publicsuffixlist import PublicSuffixList

from egressgate.config.model import (
    DEFAULT_CONNECT_PORTS,
    DEFAULT_HTTP_PORTS,
    DEFAULT_POLICY_NAME,
    Config,
    PolicyConfig,
    PortRange,
)
from egressgate.errors import Reason
from egressgate.names.addresses import AddressClass, classify_address
from egressgate.names.hostname import Host, InvalidHost, normalize_host
from egressgate.names.patterns import DomainPattern, HostMatcher

# The fields a line must carry to be used; the others (user, address, rule, ...) are optional.
REQUIRED_FIELDS = ("ts", "client", "policy", "method", "host", "port", "decision", "reason")
DECISIONS = frozenset({"allow", "deny", "report", "error"})
MANY_HOSTS = 3  # a registrable domain with this many distinct hosts is proposed as `.domain`
# First labels that name content-delivery hosts, where more siblings are to be expected.
_CDN_WORDS = re.compile(
    r"^(?:cdn|static|assets?|img|images?|media|edge)"
    r"(?:[0-9]+|-[a-z0-9-]+)?$"
)
_HASHLIKE = re.compile(r"^(?:[0-9a-f]{16,}|.*[0-9].*[0-9].*[0-9].*[0-9].*[0-9].*[0-9].*)$")
# DNS guard lines whose name an allowlist entry decides (others: query types, upstream errors).
_DNS_REASONS = frozenset(
    {
        Reason.ALLOWED.value,
        Reason.HOST_NOT_ALLOWED.value,
        Reason.PRIVATE_ADDRESS.value,
        Reason.DNS_TIMEOUT.value,
        Reason.DNS_FAILURE.value,
    }
)
_SNI_REASONS = frozenset({Reason.SNI_MISMATCH.value, Reason.SNI_NOT_ALLOWED.value})
# The detail of a private-address refusal names the address (policy/engine.py `vet`); proxies
# up to 0.1.0 logged it only there, with `address` null.
_REFUSED_ADDRESS = re.compile(r"\bresolves to (\S+) \(")
# Instance-metadata endpoints: AWS, GCP, Azure, OpenStack (169.254.169.254), AWS over IPv6,
# Alibaba Cloud. Any other internal address is flagged too, as "internal".
_METADATA = frozenset({"169.254.169.254", "fd00:ec2::254", "100.100.100.200"})
_LET_THROUGH = frozenset({"allow", "report", "error"})  # "error": allowed, then failed


@lru_cache(maxsize=2)
def _psl(only_icann: bool) -> PublicSuffixList:
    """The PSL shipped with the package (no download); the ICANN-only view tells private
    suffixes (github.io, s3.amazonaws.com, ...) from ICANN ones."""
    return PublicSuffixList(only_icann=only_icann)


# ---------------------------------------------------------------------------------------------
# Values
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HostUsage:
    """What the logs say about one destination host under one policy."""

    host: str
    requests: int
    first_seen: datetime
    last_seen: datetime
    connect_ports: tuple[int, ...]
    http_ports: tuple[int, ...]
    decisions: tuple[tuple[str, int], ...]  # ("allow", 10), ("report", 3), ...
    reasons: tuple[tuple[str, int], ...]
    port_requests: tuple[tuple[int, bool, int], ...] = ()  # (port, connect, requests)
    dns_queries: int = 0  # of `requests`, how many were DNS guard lookups (kind: dns)


@dataclass(frozen=True, slots=True)
class DomainGroup:
    """Hosts under one registrable domain and the entries proposed for them."""

    domain: str  # the registrable domain, or the host itself when it is a public suffix
    private_suffix: str | None  # e.g. github.io: a suffix whose subdomains have many owners
    hosts: tuple[HostUsage, ...]
    entries: tuple[str, ...]
    why: str

    @property
    def requests(self) -> int:
        return sum(h.requests for h in self.hosts)


@dataclass(frozen=True, slots=True)
class PrivateRefusal:
    """A host refused after DNS because it resolved to an internal address."""

    host: str
    addresses: tuple[str, ...]
    requests: int
    first_seen: datetime
    last_seen: datetime


@dataclass(frozen=True, slots=True)
class Flagged:
    """A destination that is not proposed, and why: refused in enforce mode, or suspicious."""

    usage: HostUsage
    why: str


@dataclass(frozen=True, slots=True)
class PolicyProposal:
    """The proposed allowlist (and ports) of one policy."""

    policy: str
    groups: tuple[DomainGroup, ...]
    addresses: tuple[HostUsage, ...]  # IP-literal destinations
    rare: tuple[HostUsage, ...]  # seen fewer than --min-requests times: not proposed
    private: tuple[PrivateRefusal, ...]
    connect_ports: tuple[int, ...] | None  # None: the current/default ports cover what was seen
    http_ports: tuple[int, ...] | None
    denied: tuple[Flagged, ...] = ()  # every request refused: not proposed
    suspicious: tuple[Flagged, ...] = ()  # metadata, internal, look-alike names: never proposed

    @property
    def allow(self) -> tuple[str, ...]:
        return tuple(e for g in self.groups for e in g.entries) + tuple(
            a.host for a in self.addresses
        )

    @property
    def requests(self) -> int:
        return sum(g.requests for g in self.groups) + sum(a.requests for a in self.addresses)


@dataclass(frozen=True, slots=True)
class LearnStats:
    """How many lines were read and why some were not used."""

    lines: int = 0
    used: int = 0
    malformed: int = 0  # not JSON, or a field missing or of the wrong type
    no_destination: int = 0  # host or port null (malformed requests)
    no_policy: int = 0  # policy null (e.g. proxy authentication required)
    filtered: int = 0  # another policy than --policy
    first_seen: datetime | None = None
    last_seen: datetime | None = None


@dataclass(frozen=True, slots=True)
class LearnResult:
    proposals: tuple[PolicyProposal, ...]
    stats: LearnStats
    warnings: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Refusal:
    """Requests in the logs that a config would refuse (name-level: host, then port)."""

    host: str
    port: int
    connect: bool
    reason: str  # host-not-allowed, ip-literal-not-allowed or port-not-allowed
    requests: int


@dataclass(frozen=True, slots=True)
class PolicyDiff:
    """A proposal against one policy of a config."""

    policy: str
    in_config: bool
    seen_in_logs: bool
    add: tuple[str, ...]
    unused: tuple[str, ...]
    would_refuse: tuple[Refusal, ...]


# ---------------------------------------------------------------------------------------------
# Reading lines
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LogRecord:
    """The fields learning uses from one access-log line."""

    ts: datetime
    client: str
    user: str | None
    policy: str | None
    method: str
    host: str | None
    port: int | None
    address: str | None
    decision: str
    reason: str
    sni: str | None
    detail: str | None = None
    kind: str | None = None


def parse_line(line: str) -> LogRecord | None:
    """One JSON access-log line, or None when it is not one (not JSON, fields missing/wrong)."""
    try:
        data = json.loads(line)
    except ValueError:
        return None
    if not isinstance(data, dict) or any(f not in data for f in REQUIRED_FIELDS):
        return None
    ts = _timestamp(data["ts"])
    port = data["port"]
    ok = (
        ts is not None
        and all(isinstance(data[f], str) for f in ("client", "method", "decision", "reason"))
        and data["decision"] in DECISIONS
        and all(
            _optional_str(data.get(f))
            for f in ("policy", "host", "user", "address", "sni", "detail", "kind")
        )
        and (port is None or (isinstance(port, int) and not isinstance(port, bool)))
    )
    if not ok or ts is None:
        return None
    return LogRecord(
        ts,
        data["client"],
        data.get("user"),
        data["policy"],
        data["method"],
        data["host"],
        port,
        data.get("address"),
        data["decision"],
        data["reason"],
        data.get("sni"),
        data.get("detail"),
        data.get("kind"),
    )


def _optional_str(value: object) -> bool:
    return value is None or isinstance(value, str)


def _timestamp(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed.astimezone(UTC) if parsed.tzinfo else parsed.replace(tzinfo=UTC)


# ---------------------------------------------------------------------------------------------
# Counting
# ---------------------------------------------------------------------------------------------


@dataclass
class _HostCounts:
    """Mutable per-(policy, host) counters while lines stream in."""

    requests: int = 0
    first: datetime | None = None
    last: datetime | None = None
    ports: Counter[tuple[int, bool]] = field(default_factory=Counter)  # (port, connect)
    decisions: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)
    addresses: set[str] = field(default_factory=set)
    dns_queries: int = 0

    def add(self, record: LogRecord, port: int | None) -> None:
        self.requests += 1
        self.first = record.ts if self.first is None else min(self.first, record.ts)
        self.last = record.ts if self.last is None else max(self.last, record.ts)
        if port is None:
            self.dns_queries += 1  # a DNS lookup: the name, no port
        else:
            self.ports[(port, record.method == "CONNECT")] += 1
        self.decisions[record.decision] += 1
        self.reasons[record.reason] += 1
        address = record.address or _address_in_detail(record)
        if address:
            self.addresses.add(address)

    def usage(self, host: str) -> HostUsage:
        assert self.first is not None
        assert self.last is not None
        return HostUsage(
            host,
            self.requests,
            self.first,
            self.last,
            tuple(sorted({p for p, connect in self.ports if connect})),
            tuple(sorted({p for p, connect in self.ports if not connect})),
            tuple(sorted(self.decisions.items())),
            tuple(sorted(self.reasons.items())),
            tuple(sorted((p, c, n) for (p, c), n in self.ports.items())),
            self.dns_queries,
        )


def _address_in_detail(record: LogRecord) -> str | None:
    """The refused address of a private-address line that did not log it in `address`."""
    if record.reason != Reason.PRIVATE_ADDRESS.value or record.detail is None:
        return None
    found = _REFUSED_ADDRESS.search(record.detail)
    return found.group(1) if found else None


def _same_name(sni: str, host: str) -> bool:
    """True when a TLS server name names the CONNECT host itself (case, trailing dot, IDNA
    aside): such a tunnel is not fronted, whatever reason an older proxy logged for it."""
    try:
        return normalize_host(sni).text == normalize_host(host).text
    except InvalidHost:
        return False


class LogAccumulator:
    """Feed it access-log lines (from any number of sources), then ask for the `result()`."""

    def __init__(self, policy: str | None = None) -> None:
        self.policy = policy
        self.hosts: dict[tuple[str, str], _HostCounts] = {}
        self.private: dict[tuple[str, str], _HostCounts] = {}
        self.sni: Counter[tuple[str, str, str]] = Counter()  # (policy, host, sni)
        self.counts: Counter[str] = Counter()
        self.first_bad: dict[str, str] = {}  # kind of skip → "source:line" of the first one
        self.first: datetime | None = None
        self.last: datetime | None = None

    def feed(self, lines: Iterable[str], source: str = "<input>") -> None:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            self.counts["lines"] += 1
            skip = self._add(parse_line(line))
            if skip is not None:
                self.counts[skip] += 1
                self.first_bad.setdefault(skip, f"{source}:{number}")

    def _add(self, record: LogRecord | None) -> str | None:
        """Count one record; returns why it was skipped, if it was."""
        if record is None:
            return "malformed"
        if record.kind == "dns" and record.host is not None:
            return self._add_dns(record)
        if record.host is None or record.port is None:
            return "no_destination"
        if record.policy is None:
            return "no_policy"
        if self.policy is not None and record.policy != self.policy:
            return "filtered"
        self.counts["used"] += 1
        self.first = record.ts if self.first is None else min(self.first, record.ts)
        self.last = record.ts if self.last is None else max(self.last, record.ts)
        key = (record.policy, record.host)
        table = self.private if record.reason == Reason.PRIVATE_ADDRESS.value else self.hosts
        table.setdefault(key, _HostCounts()).add(record, record.port)
        if record.reason in _SNI_REASONS and record.sni and not _same_name(record.sni, record.host):
            self.sni[(record.policy, record.host, record.sni)] += 1
        return None

    def _add_dns(self, record: LogRecord) -> str | None:
        """A DNS guard line: the name counts (no port) unless an allow entry cannot matter."""
        assert record.host is not None
        if record.detail == "dns_passthrough" or record.reason not in _DNS_REASONS:
            return "dns_other"
        if record.policy is None:
            return "no_policy"
        if self.policy is not None and record.policy != self.policy:
            return "filtered"
        self.counts["used"] += 1
        self.first = record.ts if self.first is None else min(self.first, record.ts)
        self.last = record.ts if self.last is None else max(self.last, record.ts)
        key = (record.policy, record.host)
        table = self.private if record.reason == Reason.PRIVATE_ADDRESS.value else self.hosts
        table.setdefault(key, _HostCounts()).add(record, None)
        return None

    # ---- the proposal
    def result(self, min_requests: int = 1, config: Config | None = None) -> LearnResult:
        warnings = self._skip_warnings()
        policies = sorted(
            {p for p, _ in self.hosts} | {p for p, _ in self.private},
            key=lambda p: (p != DEFAULT_POLICY_NAME, p),
        )
        proposals = []
        for name in policies:
            current = _policy(config, name)
            proposals.append(self._proposal(name, min_requests, current, warnings))
        for (policy, host, sni), count in sorted(self.sni.items()):
            warnings.append(
                f"policy {policy}: {count} tunnel(s) to {host} presented TLS server name {sni} "
                "(refused as sni-mismatch/sni-not-allowed: domain fronting or a client bug); "
                "not proposed"
            )
        stats = LearnStats(
            self.counts["lines"],
            self.counts["used"],
            self.counts["malformed"],
            self.counts["no_destination"],
            self.counts["no_policy"],
            self.counts["filtered"],
            self.first,
            self.last,
        )
        return LearnResult(tuple(proposals), stats, tuple(warnings))

    def _skip_warnings(self) -> list[str]:
        why = {
            "malformed": "are not access-log JSON (not JSON, or a field missing or mistyped)",
            "no_destination": "have no destination host/port (malformed requests)",
            "no_policy": "have no policy (e.g. the client had to authenticate first)",
        }
        return [
            f"skipped {self.counts[kind]} line(s) that {text}; the first is {self.first_bad[kind]}"
            for kind, text in why.items()
            if self.counts[kind]
        ]

    def _proposal(
        self, name: str, min_requests: int, current: PolicyConfig | None, warnings: list[str]
    ) -> PolicyProposal:
        usages = [c.usage(h) for (p, h), c in sorted(self.hosts.items()) if p == name]
        known = _known_names(usages, current)
        names: list[HostUsage] = []
        addresses: list[HostUsage] = []
        rare: list[HostUsage] = []
        denied: list[Flagged] = []
        suspicious: list[Flagged] = []
        for usage in usages:
            try:
                host = normalize_host(usage.host)
            except InvalidHost as exc:
                warnings.append(
                    f"policy {name}: host {usage.host!r} is not valid ({exc}); not proposed"
                )
                continue
            why = _suspicion(host, known)
            if why is not None:
                suspicious.append(Flagged(usage, why))
            elif not _LET_THROUGH.intersection(d for d, _ in usage.decisions):
                denied.append(Flagged(usage, "refused in enforce mode"))
            elif usage.requests < min_requests:
                rare.append(usage)
            else:
                (names if host.name is not None else addresses).append(usage)
        kept = names + addresses
        warnings.extend(
            f"policy {name}: {usage.host} was asked for by IP address ({usage.requests} "
            "request(s)); proposed as an explicit address: prefer a host name if the app "
            "can use one"
            for usage in addresses
        )
        private = tuple(
            PrivateRefusal(h, tuple(sorted(c.addresses)), c.requests, c.first, c.last)
            for (p, h), c in sorted(self.private.items())
            if p == name and c.first is not None and c.last is not None
        )
        connect_base = current.connect_ports if current else DEFAULT_CONNECT_PORTS
        http_base = current.http_ports if current else DEFAULT_HTTP_PORTS
        return PolicyProposal(
            name,
            tuple(group_hosts(names)),
            tuple(addresses),
            tuple(rare),
            private,
            _ports_needed({p for u in kept for p in u.connect_ports}, connect_base),
            _ports_needed({p for u in kept for p in u.http_ports}, http_base),
            tuple(denied),
            tuple(suspicious),
        )


def _known_names(usages: Iterable[HostUsage], current: PolicyConfig | None) -> frozenset[str]:
    """Names a look-alike would imitate: hosts let through, and the config's allow entries."""
    known = {u.host.lower().rstrip(".") for u in usages if _LET_THROUGH.intersection(
        d for d, _ in u.decisions)}  # fmt: skip
    for entry in current.allow if current is not None else ():
        known.add(entry.removeprefix("*.").removeprefix(".").lower())
    return frozenset(n for n in known if "." in n)


def _suspicion(host: Host, known: frozenset[str]) -> str | None:
    """Why a destination must not be proposed without a look, or None."""
    if host.address is not None:
        kind = classify_address(host.address)
        if str(host.address) in _METADATA:
            return "a cloud instance-metadata address"
        if kind is not AddressClass.PUBLIC:
            return f"an internal address ({kind})"
        return None
    assert host.name is not None
    labels = host.name.split(".")
    # Every run of two or more labels that does not reach the end: `a.b` in `a.b.evil.net`.
    for start in range(len(labels)):
        for end in range(start + 2, len(labels)):
            inner = ".".join(labels[start:end])
            if inner in known:
                return f"contains the name {inner} without being under it (a look-alike)"
    return None


def _reasons_text(usage: HostUsage) -> str:
    return ", ".join(f"{reason} {n}" for reason, n in usage.reasons)


def learn(
    lines: Iterable[str],
    *,
    policy: str | None = None,
    min_requests: int = 1,
    config: Config | None = None,
) -> LearnResult:
    """One-shot: accumulate `lines` and propose (see LogAccumulator)."""
    accumulator = LogAccumulator(policy)
    accumulator.feed(lines)
    return accumulator.result(min_requests, config)


def _policy(config: Config | None, name: str) -> PolicyConfig | None:
    if config is None:
        return None
    try:
        return config.policy(name)
    except KeyError:
        return None


def _ports_needed(seen: set[int], base: tuple[PortRange, ...]) -> tuple[int, ...] | None:
    """None when `base` already covers `seen`; else the ports to write: base and seen (single
    ports of base are kept as they are; ranges in base are kept by listing only what is new)."""
    extra = sorted(p for p in seen if not any(p in r for r in base))
    if not extra:
        return None
    kept = [r.low for r in base if r.low == r.high]
    return tuple(sorted(set(kept) | set(extra)))


# ---------------------------------------------------------------------------------------------
# Grouping and suggestions
# ---------------------------------------------------------------------------------------------


def registrable_domain(name: str) -> tuple[str | None, str | None]:
    """(registrable domain, private suffix) of a normalized name.

    The domain is None when `name` is itself a public suffix (or a single label); the private
    suffix is set when the name's suffix comes from the PSL's private section.
    """
    full = _psl(False)
    domain = full.privatesuffix(name)
    suffix = full.publicsuffix(name)
    icann = _psl(True).publicsuffix(name)
    private = suffix if suffix is not None and suffix != icann else None
    return domain, private


def looks_sharded(hosts: Iterable[str], domain: str) -> str | None:
    """A host whose first label below `domain` looks like a CDN node or a shard, if any.

    CDN words (cdn, static, assets, img, media, edge), hash-like or number-heavy labels, and
    labels that differ from a sibling only in their digits (a1/a2, edge-07/edge-12).
    """
    firsts: dict[str, str] = {}
    families: Counter[str] = Counter()
    for host in hosts:
        if host == domain:
            continue
        label = host[: -len(domain) - 1].split(".")[-1]
        firsts[host] = label
        families[re.sub(r"[0-9]+", "#", label)] += 1 if re.search(r"[0-9]", label) else 0
    for host, label in firsts.items():
        family = re.sub(r"[0-9]+", "#", label)
        if _CDN_WORDS.match(label) or _HASHLIKE.match(label) or families[family] > 1:
            return host
    return None


def group_hosts(usages: Iterable[HostUsage]) -> list[DomainGroup]:
    """Group hosts under registrable domains and choose `.domain` or exact names for each."""
    buckets: dict[str, list[HostUsage]] = {}
    suffixes: dict[str, str | None] = {}
    exact_only: set[str] = set()
    for usage in usages:
        domain, private = registrable_domain(usage.host)
        key = domain or usage.host
        if domain is None:
            exact_only.add(key)  # a public suffix itself: only ever the exact name
        buckets.setdefault(key, []).append(usage)
        suffixes[key] = private
    groups = [
        _group(key, suffixes[key], hosts, key in exact_only) for key, hosts in buckets.items()
    ]
    groups.sort(key=lambda g: (-g.requests, g.domain))
    return groups


def _group(
    domain: str, private: str | None, hosts: list[HostUsage], exact_only: bool
) -> DomainGroup:
    hosts = sorted(hosts, key=lambda u: (-u.requests, u.host))
    names = [u.host for u in hosts]
    exact = tuple(sorted(names))
    if exact_only:
        why = f"{domain} is itself a public suffix: only the exact name is proposed"
        return DomainGroup(domain, private, tuple(hosts), exact, why)
    sharded = looks_sharded(names, domain)
    if len(names) >= MANY_HOSTS:
        why = f"{len(names)} distinct hosts under {domain}"
    elif sharded is not None:
        why = f"{sharded} looks like a CDN or shard name (its siblings are likely to follow)"
    else:
        why = "one host" if len(names) == 1 else f"{len(names)} hosts"
        return DomainGroup(domain, private, tuple(hosts), exact, why)
    DomainPattern.parse(f".{domain}")  # a registrable domain is always a valid entry
    return DomainGroup(domain, private, tuple(hosts), (f".{domain}",), why)


# ---------------------------------------------------------------------------------------------
# Diff against a config
# ---------------------------------------------------------------------------------------------


def diff(result: LearnResult, config: Config, policy: str | None = None) -> tuple[PolicyDiff, ...]:
    """Each policy of the logs and of `config` (or only `policy`): what to add, what nothing
    used, and which logged requests `config` refuses by name or port (not by DNS)."""
    proposals = {p.policy: p for p in result.proposals}
    names = [p.policy for p in result.proposals] + [
        c.name for c in config.policies if c.name not in proposals
    ]
    return tuple(
        _diff_one(name, proposals.get(name), _policy(config, name))
        for name in names
        if policy is None or name == policy
    )


def _diff_one(
    name: str, proposal: PolicyProposal | None, current: PolicyConfig | None
) -> PolicyDiff:
    entries = current.allow if current else ()
    matcher = HostMatcher([DomainPattern.parse(e) for e in entries])
    add: list[str] = []
    traffic: list[HostUsage] = []
    if proposal is not None:
        for group in proposal.groups:
            if any(_match(matcher, h.host) is None for h in group.hosts):
                add.extend(e for e in group.entries if e not in entries and e not in add)
        add.extend(a.host for a in proposal.addresses if _match(matcher, a.host) is None)
        traffic = [h for g in proposal.groups for h in g.hosts]
        traffic += [*proposal.addresses, *proposal.rare]
    unused = tuple(
        e
        for e in entries
        if not any(_match(HostMatcher([DomainPattern.parse(e)]), u.host) for u in traffic)
    )
    refusals = [
        Refusal(u.host, port, connect, reason, requests)
        for u in sorted(traffic, key=lambda u: u.host)
        for port, connect, requests in u.port_requests
        if (reason := _refusal(matcher, current, u.host, port, connect)) is not None
    ]
    return PolicyDiff(
        name, current is not None, proposal is not None, tuple(add), unused, tuple(refusals)
    )


def _match(matcher: HostMatcher, raw: str) -> str | None:
    try:
        host = normalize_host(raw)
    except InvalidHost:
        return None
    if host.address is not None:
        return matcher.match_address(host.address)
    assert host.name is not None
    return matcher.match_name(host.name)


def _refusal(
    matcher: HostMatcher, current: PolicyConfig | None, host: str, port: int, connect: bool
) -> str | None:
    """Why `current` refuses this request by name or port (None: it allows it). Mirrors the
    policy engine's order: the host first, then the port list of the request kind."""
    if _match(matcher, host) is None:
        literal = _is_literal(host)
        return (Reason.IP_LITERAL_NOT_ALLOWED if literal else Reason.HOST_NOT_ALLOWED).value
    assert current is not None  # a host matched, so there is a policy
    ports = current.connect_ports if connect else current.http_ports
    if not any(port in r for r in ports):
        return Reason.PORT_NOT_ALLOWED.value
    return None


def _is_literal(raw: str) -> bool:
    try:
        return normalize_host(raw).address is not None
    except InvalidHost:
        return False


# ---------------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------------


def _when(ts: datetime | None) -> str:
    return "-" if ts is None else ts.strftime("%Y-%m-%dT%H:%M:%SZ")


def _count(n: int, what: str) -> str:
    return f"{n} {what}" if n == 1 else f"{n} {what}s"


def _key(name: str) -> str:
    """A policy name as a YAML mapping key."""
    return name if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.+-]*", name) else json.dumps(name)


def _scalar(text: str) -> str:
    """A YAML scalar for an allow entry: plain when safe, else JSON-quoted (valid YAML)."""
    if re.fullmatch(r"[a-z0-9_][a-z0-9_.-]*|\.[a-z0-9_.-]+", text) and ":" not in text:
        return text if not re.fullmatch(r"[0-9.]+", text) or text.count(".") == 3 else f'"{text}"'
    return json.dumps(text)


def _ports_text(usage: HostUsage) -> str:
    parts = []
    if usage.connect_ports:
        parts.append("CONNECT " + ",".join(map(str, usage.connect_ports)))
    if usage.http_ports:
        parts.append("http " + ",".join(map(str, usage.http_ports)))
    if usage.dns_queries:
        parts.append(f"DNS {usage.dns_queries}")
    return "; ".join(parts)


def _decisions_text(usage: HostUsage) -> str:
    return ", ".join(f"{d} {n}" for d, n in usage.decisions)


def _group_comment(group: DomainGroup) -> str:
    hosts = ", ".join(f"{h.host} {h.requests}" for h in group.hosts[:5])
    more = f", +{len(group.hosts) - 5} more" if len(group.hosts) > 5 else ""
    first = min(h.first_seen for h in group.hosts)
    last = max(h.last_seen for h in group.hosts)
    text = (
        f"{group.domain}: {_count(group.requests, 'request')} ({hosts}{more}); "
        f"{_when(first)} .. {_when(last)}; {group.why}"
    )
    if group.private_suffix:
        text += (
            f"; under {group.private_suffix}, a shared suffix (PSL private section): "
            "its other subdomains belong to other owners"
        )
    return text


def _proposal_lines(proposal: PolicyProposal, indent: str, min_requests: int) -> list[str]:
    hosts = sum(len(g.hosts) for g in proposal.groups) + len(proposal.addresses)
    lines = [
        f"{indent}# policy {proposal.policy}: {_count(proposal.requests, 'request')} to "
        f"{_count(hosts, 'host')}",
        f"{indent}allow:" if proposal.allow else f"{indent}allow: []",
    ]
    for group in proposal.groups:
        lines.append(f"{indent}  # {_group_comment(group)}")
        ports = sorted({_ports_text(h) for h in group.hosts})
        lines.extend(f"{indent}  - {_scalar(e)}  # {'; '.join(ports)}" for e in group.entries)
    for usage in proposal.addresses:
        lines.append(
            f"{indent}  # WARNING: IP literal, {_count(usage.requests, 'request')} "
            f"({_decisions_text(usage)}); prefer a host name if the app can use one"
        )
        lines.append(f"{indent}  - {_scalar(usage.host)}  # {_ports_text(usage)}")
    for key, needed in (
        ("connect_ports", proposal.connect_ports),
        ("http_ports", proposal.http_ports),
    ):
        if needed is not None:
            lines.append(
                f"{indent}{key}: [{', '.join(map(str, needed))}]  # ports seen in the logs"
            )
    lines.extend(
        f"{indent}# not proposed, seen {usage.requests} time(s) (< --min-requests "
        f"{min_requests}): {usage.host}"
        for usage in proposal.rare
    )
    return lines + _flagged_lines(proposal, indent)


def _flagged_lines(proposal: PolicyProposal, indent: str) -> list[str]:
    """The destinations a reviewer must see but that are not proposed: denied, suspicious."""
    lines: list[str] = []
    if proposal.denied:
        lines.append(
            f"{indent}# DENIED, not proposed: every request was refused. Add an entry yourself "
            "only if the application needs it:"
        )
        lines.extend(f"{indent}#   {_flagged_text(f)}" for f in proposal.denied)
    if proposal.suspicious or proposal.private:
        lines.append(
            f"{indent}# SUSPICIOUS, never proposed: find out which client asked for these "
            "before allowing anything:"
        )
        lines.extend(f"{indent}#   {_flagged_text(f)}" for f in proposal.suspicious)
    lines.extend(
        f"{indent}# still refused: {refusal.host} resolved to internal address(es) "
        f"{', '.join(refusal.addresses) or '(not logged)'} "
        f"({_count(refusal.requests, 'request')}); "
        "only allow_private lets it through"
        for refusal in proposal.private
    )
    return lines


def _flagged_text(flagged: Flagged) -> str:
    usage = flagged.usage
    return (
        f"{usage.host} ({_ports_text(usage)}): {flagged.why}; "
        f"{_count(usage.requests, 'request')} ({_decisions_text(usage)}: {_reasons_text(usage)}); "
        f"{_when(usage.first_seen)} .. {_when(usage.last_seen)}"
    )


def render_yaml(
    result: LearnResult, min_requests: int = 1, diffs: tuple[PolicyDiff, ...] = ()
) -> str:
    """The proposal as config YAML to paste, with the evidence in comments."""
    stats = result.stats
    lines = [
        f"# Proposed by `egressgate learn` from {_count(stats.used, 'logged request')} "
        f"({_when(stats.first_seen)} .. {_when(stats.last_seen)}).",
        "# Review every entry: this is what the clients did, not necessarily what they should.",
    ]
    default = [p for p in result.proposals if p.policy == DEFAULT_POLICY_NAME]
    others = [p for p in result.proposals if p.policy != DEFAULT_POLICY_NAME]
    for proposal in default:
        lines.append("")
        lines.extend(_proposal_lines(proposal, "", min_requests))
    if others:
        lines.append("")
        lines.append("policies:")
        for proposal in others:
            lines.append(f"  {_key(proposal.policy)}:")
            lines.extend(_proposal_lines(proposal, "    ", min_requests))
    for d in diffs:
        lines.append("")
        lines.extend("# " + line for line in _diff_lines(d))
    return "\n".join(lines) + "\n"


def _diff_lines(d: PolicyDiff) -> list[str]:
    lines = [f"diff against policy {d.policy}:"]
    if not d.in_config:
        lines.append("  (not defined in the config: its clients get another policy there)")
    if not d.seen_in_logs:
        lines.append("  (no traffic in the logs)")
    lines.extend(f"  add: {e}" for e in d.add)
    lines.extend(f"  unused (nothing in the logs matched it): {e}" for e in d.unused)
    lines.extend(
        f"  would now be refused: {r.host}:{r.port} ({'CONNECT' if r.connect else 'http'}, "
        f"{r.reason}, {_count(r.requests, 'request')})"
        for r in d.would_refuse
    )
    if len(lines) == 1:
        lines.append("  nothing to change")
    return lines


def _usage_json(usage: HostUsage) -> dict[str, object]:
    return {
        "host": usage.host,
        "requests": usage.requests,
        "first_seen": _when(usage.first_seen),
        "last_seen": _when(usage.last_seen),
        "connect_ports": list(usage.connect_ports),
        "http_ports": list(usage.http_ports),
        "dns_queries": usage.dns_queries,
        "decisions": dict(usage.decisions),
        "reasons": dict(usage.reasons),
    }


def to_json(result: LearnResult, diffs: tuple[PolicyDiff, ...] = ()) -> dict[str, object]:
    """The whole result as JSON-ready data."""
    stats = result.stats
    doc: dict[str, object] = {
        "stats": {
            "lines": stats.lines,
            "used": stats.used,
            "malformed": stats.malformed,
            "no_destination": stats.no_destination,
            "no_policy": stats.no_policy,
            "filtered": stats.filtered,
            "first_seen": _when(stats.first_seen),
            "last_seen": _when(stats.last_seen),
        },
        "warnings": list(result.warnings),
        "policies": {p.policy: _proposal_json(p) for p in result.proposals},
    }
    if diffs:
        doc["diff"] = {d.policy: _diff_json(d) for d in diffs}
    return doc


def _proposal_json(p: PolicyProposal) -> dict[str, object]:
    return {
        "allow": list(p.allow),
        "connect_ports": None if p.connect_ports is None else list(p.connect_ports),
        "http_ports": None if p.http_ports is None else list(p.http_ports),
        "domains": [
            {
                "domain": g.domain,
                "private_suffix": g.private_suffix,
                "entries": list(g.entries),
                "why": g.why,
                "requests": g.requests,
                "hosts": [_usage_json(h) for h in g.hosts],
            }
            for g in p.groups
        ],
        "ip_literals": [_usage_json(a) for a in p.addresses],
        "below_min_requests": [_usage_json(r) for r in p.rare],
        "denied": [{**_usage_json(f.usage), "why": f.why} for f in p.denied],
        "suspicious": [{**_usage_json(f.usage), "why": f.why} for f in p.suspicious],
        "private_address_refusals": [
            {
                "host": r.host,
                "addresses": list(r.addresses),
                "requests": r.requests,
                "first_seen": _when(r.first_seen),
                "last_seen": _when(r.last_seen),
            }
            for r in p.private
        ],
    }


def _diff_json(d: PolicyDiff) -> dict[str, object]:
    return {
        "in_config": d.in_config,
        "seen_in_logs": d.seen_in_logs,
        "add": list(d.add),
        "unused": list(d.unused),
        "would_refuse": [
            {
                "host": r.host,
                "port": r.port,
                "connect": r.connect,
                "reason": r.reason,
                "requests": r.requests,
            }
            for r in d.would_refuse
        ],
    }


def render_json(result: LearnResult, diffs: tuple[PolicyDiff, ...] = ()) -> str:
    return json.dumps(to_json(result, diffs), indent=2) + "\n"


__all__ = [
    "DomainGroup",
    "Flagged",
    "HostUsage",
    "LearnResult",
    "LearnStats",
    "LogAccumulator",
    "PolicyDiff",
    "PolicyProposal",
    "PrivateRefusal",
    "Refusal",
    "diff",
    "group_hosts",
    "learn",
    "looks_sharded",
    "parse_line",
    "registrable_domain",
    "render_json",
    "render_yaml",
    "to_json",
]
