"""How real HTTP clients read NO_PROXY and the proxy variables, modelled from measurements.

This module owns the runtime model behind `egressgate noproxy` (and the later `verify`): the
per-runtime rules in `egressgate/data/noproxy_matrix.json` (derived from the measured matrix in
reference/noproxy by scripts/build_noproxy_data.py), and three questions answered from them:

* `explain(value, host, port)`: what each runtime does with a NO_PROXY value for one target —
  direct, proxy, "ignores env" or error — and why (which entry matched by which rule, or why an
  entry that looks like it should match was not understood);
* `explain_env(env, url)`: the same from a whole environment, honouring which variable names
  each runtime reads and in which order, the CGI guard and the proxy URL's form;
* `lint(value)`: entries that some runtimes misread, naming the runtimes and the fix.

Pure: no I/O beyond loading the package data through importlib.resources.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from importlib import resources
from typing import Any
from urllib.parse import urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

DATA_FORMAT_VERSION = 1
DEFAULT_PORTS = {"http": 80, "https": 443}
LOOPBACK_V4 = ipaddress.IPv4Address("127.0.0.1")
# A stand-in proxy for explain(): any valid http:// URL; it is never contacted.
_PLACEHOLDER_PROXY = "http://proxy.invalid:3128"


class Verdict(StrEnum):
    """Where a runtime sends the request."""

    DIRECT = "direct"
    PROXY = "proxy"
    IGNORES_ENV = "ignores env"
    ERROR = "error"


class Severity(StrEnum):
    """How bad a lint finding is; ERROR means some runtime does the opposite of the intent."""

    ERROR = "error"
    WARNING = "warning"
    INFO = "info"


# -- the runtime model (loaded from package data) ---------------------------------------------


@dataclass(frozen=True, slots=True)
class NoProxyRules:
    """How one runtime matches NO_PROXY entries; field meanings in docs/clients.md.

    `case_insensitive` is true for every measured runtime: the engine lowercases both sides.
    """

    exact: bool
    subdomain: bool
    plain_suffix: bool
    dot_apex: bool
    dot_subdomain: bool
    wildcard_apex: bool
    wildcard_subdomain: bool
    star: bool
    star_mixed: bool
    case_insensitive: bool
    trims_after_comma: bool
    trims_first_and_trailing: bool
    blank_separates: bool
    ipv4_exact: bool
    resolves_names: bool
    cidr: str  # honoured | ignored | first_address
    ipv6_target_error: bool
    ipv6_bare: str | None  # match | no_match | error | unmeasured | None (masked)
    ipv6_bracketed: str | None
    ipv6_cidr: str
    entry_error_scope: str | None  # all_requests | target
    host_port: str  # never | explicit_port | effective_port
    drops_default_port: bool
    localhost_alias: bool


@dataclass(frozen=True, slots=True)
class Variables:
    """Which variable names a runtime reads, first = wins when several are set."""

    http: tuple[str, ...]
    https: tuple[str, ...]
    all: tuple[str, ...]
    no_proxy: tuple[str, ...]
    https_falls_back_to_http: bool
    cgi_guard: str  # not_applicable | ignores_upper | uses_upper | error


@dataclass(frozen=True, slots=True)
class ProxyUrlHandling:
    """What a runtime does with unusual proxy URLs (per target scheme where it differs)."""

    https_scheme_http: str  # tls | plain | direct | error
    https_scheme_https: str
    no_scheme_http: str
    no_scheme_https: str
    socks5: str
    credentials: str  # decoded | raw
    http_via_connect: bool


@dataclass(frozen=True, slots=True)
class Runtime:
    """One measured client (a column of the matrix)."""

    id: str
    label: str
    client: str
    decision_client: str | None
    version: str
    reads_env: bool
    env_note: str | None
    builtin_bypass: str | None  # none | literal | resolved
    variables: Variables | None
    proxy_url: ProxyUrlHandling | None
    no_proxy: NoProxyRules | None
    basis: tuple[tuple[str, str], ...]

    @property
    def display(self) -> str:
        return f"{self.label} {self.version}"


@dataclass(frozen=True, slots=True)
class MatrixInfo:
    """Provenance of the data: when and where it was measured."""

    measured_at: str
    platform: str
    source_path: str
    source_sha256: str
    runtimes: tuple[Runtime, ...]


def _rules(raw: Mapping[str, Any] | None) -> NoProxyRules | None:
    return None if raw is None else NoProxyRules(**raw)


def _variables(raw: Mapping[str, Any] | None) -> Variables | None:
    if raw is None:
        return None
    return Variables(
        http=tuple(raw["http"]),
        https=tuple(raw["https"]),
        all=tuple(raw["all"]),
        no_proxy=tuple(raw["no_proxy"]),
        https_falls_back_to_http=bool(raw["https_falls_back_to_http"]),
        cgi_guard=str(raw["cgi_guard"]),
    )


def _proxy_url(raw: Mapping[str, Any] | None) -> ProxyUrlHandling | None:
    if raw is None:
        return None
    return ProxyUrlHandling(
        https_scheme_http=raw["https_scheme"]["http"],
        https_scheme_https=raw["https_scheme"]["https"],
        no_scheme_http=raw["no_scheme"]["http"],
        no_scheme_https=raw["no_scheme"]["https"],
        socks5=raw["socks5"],
        credentials=raw["credentials"],
        http_via_connect=bool(raw["http_via_connect"]),
    )


def _runtime(raw: Mapping[str, Any]) -> Runtime:
    return Runtime(
        id=raw["id"],
        label=raw["label"],
        client=raw["client"],
        decision_client=raw["decision_client"],
        version=raw["version"],
        reads_env=bool(raw["reads_env"]),
        env_note=raw["env_note"],
        builtin_bypass=raw["builtin_bypass"],
        variables=_variables(raw["variables"]),
        proxy_url=_proxy_url(raw["proxy_url"]),
        no_proxy=_rules(raw["no_proxy"]),
        basis=tuple(sorted(raw["basis"].items())),
    )


@functools.cache
def matrix_info() -> MatrixInfo:
    """The packaged measurement model (loaded once)."""
    path = resources.files("egressgate").joinpath("data", "noproxy_matrix.json")
    text = path.read_text(encoding="utf-8")
    doc = json.loads(text)
    if doc.get("format_version") != DATA_FORMAT_VERSION:
        raise RuntimeError(f"noproxy_matrix.json: unsupported format {doc.get('format_version')}")
    src = doc["source"]
    return MatrixInfo(
        measured_at=src["measured_at"],
        platform=src["platform"],
        source_path=src["path"],
        source_sha256=src["sha256"],
        runtimes=tuple(_runtime(r) for r in doc["runtimes"]),
    )


def runtimes() -> tuple[Runtime, ...]:
    """Every measured runtime, in the matrix's column order."""
    return matrix_info().runtimes


def runtime(runtime_id: str) -> Runtime:
    """The runtime with this id (see `runtimes()`); KeyError if unknown."""
    for rt in runtimes():
        if rt.id == runtime_id:
            return rt
    raise KeyError(runtime_id)


def runtime_for_client(client: str) -> Runtime:
    """The runtime a matrix.json client name (including the decision-only ones) belongs to."""
    for rt in runtimes():
        if client in (rt.client, rt.decision_client):
            return rt
    raise KeyError(client)


# -- targets ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Target:
    """A request target: host (lowercase, IPv6 without brackets), explicit port, scheme."""

    host: str
    port: int | None = None
    scheme: str = "http"
    ip: IPAddress | None = None
    addresses: tuple[IPAddress, ...] = ()

    @property
    def effective_port(self) -> int:
        return self.port if self.port is not None else DEFAULT_PORTS.get(self.scheme, 80)

    @property
    def netloc(self) -> str:
        host = f"[{self.host}]" if isinstance(self.ip, ipaddress.IPv6Address) else self.host
        return host if self.port is None else f"{host}:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.netloc}/"


def make_target(
    host: str,
    port: int | None = None,
    *,
    scheme: str = "http",
    addresses: Iterable[str | IPAddress] = (),
) -> Target:
    """Build a Target; `addresses` are what the name resolves to (only Ruby resolves)."""
    scheme = scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise ValueError(f"unsupported scheme {scheme!r}: use http or https")
    text = host.strip().lower()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    if not text:
        raise ValueError("empty host")
    if port is not None and not 0 < port < 65536:
        raise ValueError(f"port {port} out of range")
    ip = _ip_or_none(text)
    if ip is not None:
        text = str(ip)
    elif not _HOST_RE.fullmatch(text):
        raise ValueError(f"not a host name or IP address: {host!r}")
    resolved = tuple(ipaddress.ip_address(str(a)) for a in addresses)
    return Target(host=text, port=port, scheme=scheme, ip=ip, addresses=resolved)


def parse_target(text: str, *, scheme: str | None = None, addresses: Iterable[str] = ()) -> Target:
    """Parse HOST, HOST:PORT, [IPv6]:PORT, a bare IPv6 address or a URL into a Target."""
    raw = text.strip()
    if "://" in raw:
        parts = urlsplit(raw)
        if not parts.hostname:
            raise ValueError(f"no host in {text!r}")
        return make_target(
            parts.hostname,
            parts.port,
            scheme=scheme or parts.scheme,
            addresses=addresses,
        )
    host, port = _split_host_port(raw)
    return make_target(host, port, scheme=scheme or "http", addresses=addresses)


# Permissive on purpose (underscores, IDN labels): only characters no URL host can hold fail.
_HOST_RE = re.compile(r"[^\s:/\\@\[\]?#,]+")


def _split_host_port(raw: str) -> tuple[str, int | None]:
    bracketed = re.fullmatch(r"\[([^\]]+)\](?::(\d+))?", raw)
    if bracketed:
        return bracketed.group(1), _port(bracketed.group(2))
    if raw.count(":") == 1:
        host, _, port = raw.partition(":")
        if not port.isdigit():
            raise ValueError(f"bad port in {raw!r}")
        return host, int(port)
    return raw, None  # a name, an IPv4 literal or a bare IPv6 literal


def _port(text: str | None) -> int | None:
    return int(text) if text else None


def _ip_or_none(text: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


# -- entries ----------------------------------------------------------------------------------


class EntryKind(StrEnum):
    """What a NO_PROXY entry looks like, before any runtime interprets it."""

    STAR = "star"
    NAME = "name"
    DOTTED = "leading-dot suffix"
    WILDCARD = "*. wildcard"
    IPV4 = "IPv4 address"
    CIDR4 = "IPv4 CIDR"
    IPV6 = "IPv6 address"
    IPV6_BRACKETED = "bracketed IPv6 address"
    CIDR6 = "IPv6 CIDR"
    URL = "URL"
    GLOB = "glob"
    UNTRIMMED = "entry with spaces"
    INVALID = "invalid"


@dataclass(frozen=True, slots=True)
class Entry:
    """One NO_PROXY entry as a runtime sees it: kind, host part (lowercase), optional port."""

    raw: str
    kind: EntryKind
    host: str = ""
    port: int | None = None
    address: IPAddress | None = None
    network: IPNetwork | None = None


_NAME_RE = re.compile(r"[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?)*\.?")


@functools.lru_cache(maxsize=4096)  # pure; explain() parses each value once per runtime
def parse_entry(raw: str) -> Entry:
    """Classify one entry (already split out of the value, whitespace as the runtime left it)."""
    text = raw.lower()
    if text != text.strip() or any(c.isspace() for c in text):
        return Entry(raw, EntryKind.UNTRIMMED, host=text.strip())
    if text == "*":
        return Entry(raw, EntryKind.STAR)
    if "://" in text:
        return Entry(raw, EntryKind.URL, host=text)
    if "/" in text:
        return _parse_cidr(raw, text)
    if text.startswith("[") or text.count(":") == 1:
        return _parse_with_port(raw, text)
    address = _ip_or_none(text)
    if isinstance(address, ipaddress.IPv6Address):
        return Entry(raw, EntryKind.IPV6, host=str(address), address=address)
    return _parse_host(raw, text, None)


def _parse_cidr(raw: str, text: str) -> Entry:
    try:
        network = ipaddress.ip_network(text, strict=False)
        address = ipaddress.ip_address(text.split("/", 1)[0])
    except ValueError:
        return Entry(raw, EntryKind.INVALID, host=text)
    kind = EntryKind.CIDR4 if network.version == 4 else EntryKind.CIDR6
    return Entry(raw, kind, host=str(address), address=address, network=network)


def _parse_with_port(raw: str, text: str) -> Entry:
    bracketed = re.fullmatch(r"\[([^\]]*)\](?::(\d+))?", text)
    if bracketed:
        address = _ip_or_none(bracketed.group(1))
        if not isinstance(address, ipaddress.IPv6Address):
            return Entry(raw, EntryKind.INVALID, host=text)
        return Entry(
            raw,
            EntryKind.IPV6_BRACKETED,
            host=str(address),
            port=_port(bracketed.group(2)),
            address=address,
        )
    host, _, port = text.partition(":")
    if not port.isdigit() or not host:
        return Entry(raw, EntryKind.INVALID, host=text)
    return _parse_host(raw, host, int(port))


def _parse_host(raw: str, host: str, port: int | None) -> Entry:
    address = _ip_or_none(host)
    if isinstance(address, ipaddress.IPv4Address):
        return Entry(raw, EntryKind.IPV4, host=str(address), port=port, address=address)
    if host.startswith("*."):
        kind, name = EntryKind.WILDCARD, host[2:]
    elif host.startswith("."):
        kind, name = EntryKind.DOTTED, host[1:]
    else:
        kind, name = EntryKind.NAME, host
    if not _NAME_RE.fullmatch(name):
        return Entry(raw, EntryKind.GLOB if "*" in host else EntryKind.INVALID, host=host)
    return Entry(raw, kind, host=name.rstrip("."), port=port)


def split_value(value: str, rules: NoProxyRules | None = None) -> list[str]:
    """Split a NO_PROXY value into entries the way `rules`' runtime does (default: trimmed)."""
    if rules is None or rules.trims_first_and_trailing:
        if rules is not None and rules.blank_separates:
            tokens = re.split(r"[,\s]+", value)
        else:
            tokens = [t.strip() for t in value.split(",")]
    else:
        # wget: blanks after a comma are skipped, nothing else is trimmed.
        parts = value.split(",")
        tokens = parts[:1] + [p.lstrip() for p in parts[1:]]
    return [t for t in tokens if t]


# -- matching ---------------------------------------------------------------------------------

# The "plain reading" of each entry kind, which most people (and curl) assume. A runtime whose
# rule differs from it misreads the entry; that is what explain() and lint() report.
INTENT = NoProxyRules(
    exact=True,
    subdomain=True,
    plain_suffix=False,
    dot_apex=True,
    dot_subdomain=True,
    wildcard_apex=False,
    wildcard_subdomain=True,
    star=True,
    star_mixed=True,
    case_insensitive=True,
    trims_after_comma=True,
    trims_first_and_trailing=True,
    blank_separates=False,
    ipv4_exact=True,
    resolves_names=False,
    cidr="honoured",
    ipv6_target_error=False,
    ipv6_bare="match",
    ipv6_bracketed="match",
    ipv6_cidr="match",
    entry_error_scope=None,
    host_port="effective_port",
    drops_default_port=False,
    localhost_alias=False,
)

RULE_TEXT = {
    "exact": "exact host match",
    "subdomain": "a plain entry also covers its subdomains",
    "plain_suffix": "plain string-suffix match with no dot boundary",
    "dot_apex": "a leading-dot entry also covers the domain itself",
    "dot_subdomain": "leading-dot suffix match",
    "wildcard_apex": "a `*.` entry also covers the domain itself",
    "wildcard_subdomain": "`*.` wildcard suffix match",
    "star": "`*` bypasses the proxy for every host",
    "star_mixed": "a `*` entry bypasses the proxy for every host",
    "ipv4_exact": "IPv4 address match",
    "cidr": "address inside the CIDR",
    "cidr_first_address": "CIDR reduced to its first address, which is this one",
    "ipv6_bare": "IPv6 address match",
    "ipv6_bracketed": "bracketed IPv6 address match",
    "ipv6_cidr": "address inside the IPv6 CIDR",
    "host_port": "host:port entry with the same port",
    "localhost_alias": "treats localhost and 127.0.0.1 as the same host",
    "resolves_names": "the name resolves to an address the entry covers",
    "builtin": "built-in loopback bypass (before NO_PROXY is read)",
}

MISS_TEXT = {
    "exact": "does not match the host exactly",
    "subdomain": "matches a plain entry only exactly, not its subdomains (add `.{host}`)",
    "dot_apex": "a leading-dot entry does not cover the domain itself (add `{host}`)",
    "dot_subdomain": "does not match leading-dot entries",
    "wildcard_subdomain": "reads `*.` literally, so the entry never matches (use `.{host}`)",
    "star": "ignores `*`",
    "star_mixed": "honours `*` only when it is the whole value",
    "ipv4_exact": "does not match IPv4 entries",
    "cidr": "ignores CIDR entries (list the addresses)",
    "cidr_first_address": "cuts the CIDR down to its first address {host}",
    "ipv6_bare": "does not match a bare IPv6 entry",
    "ipv6_bracketed": "does not match a bracketed IPv6 entry",
    "ipv6_cidr": "does not honour IPv6 CIDRs",
    "host_port_never": "never matches host:port entries (drop the port)",
    "host_port_explicit": "matches host:port only when the URL spells out that port",
    "resolves_names": "does not resolve names: an address entry never covers a name",
    "whitespace": "keeps the spaces around this entry, so it never matches (remove them)",
}


@dataclass(frozen=True, slots=True)
class _Check:
    """Outcome of one entry against one target: matched or not, and the deciding rule."""

    matched: bool
    rule: str  # key of RULE_TEXT / MISS_TEXT; "" = the entry has nothing to do with the target
    note: str = ""


_IRRELEVANT = _Check(False, "")


def _flag(rules: NoProxyRules, rule: str) -> bool:
    return bool(getattr(rules, rule))


def _check_entry(rules: NoProxyRules, entry: Entry, target: Target) -> _Check:
    if entry.port is not None and entry.port != target.effective_port:
        return _IRRELEVANT  # no runtime matches a different port
    host_check = _check_host_part(rules, entry, target)
    if not host_check.matched or entry.port is None:
        return host_check
    return _check_port(rules, entry, target)


def _check_host_part(rules: NoProxyRules, entry: Entry, target: Target) -> _Check:
    kind = entry.kind
    if kind in (EntryKind.NAME, EntryKind.DOTTED, EntryKind.WILDCARD):
        return _check_name(rules, entry, target)
    if kind is EntryKind.STAR:
        # Fix (issue 18): a runtime that ignores `*` altogether (wget, Ruby) was said to honour
        # it "only when it is the whole value", even when it was the whole value.
        if not rules.star:
            return _Check(False, "star")
        return _Check(rules.star_mixed, "star_mixed")
    if kind in (
        EntryKind.IPV4,
        EntryKind.CIDR4,
        EntryKind.IPV6,
        EntryKind.IPV6_BRACKETED,
        EntryKind.CIDR6,
    ):
        return _check_address(rules, entry, target)
    if kind is EntryKind.UNTRIMMED:
        return _check_untrimmed(entry, target)
    return _IRRELEVANT  # URL, GLOB, INVALID: no measured runtime matches them


def _check_name(rules: NoProxyRules, entry: Entry, target: Target) -> _Check:
    if target.ip is not None:
        return _check_alias(rules, entry.host, target)
    host, name = target.host, entry.host
    prefix = {EntryKind.NAME: "", EntryKind.DOTTED: "dot_", EntryKind.WILDCARD: "wildcard_"}
    if host == name:
        rule = "exact" if entry.kind is EntryKind.NAME else prefix[entry.kind] + "apex"
    elif host.endswith("." + name):
        rule = "subdomain" if entry.kind is EntryKind.NAME else prefix[entry.kind] + "subdomain"
    elif entry.kind is EntryKind.NAME and host.endswith(name):
        rule = "plain_suffix"
    else:
        return _IRRELEVANT
    return _Check(_flag(rules, rule), rule)


def _check_alias(rules: NoProxyRules, name: str, target: Target) -> _Check:
    if name == "localhost" and target.ip == LOOPBACK_V4 and rules.localhost_alias:
        return _Check(True, "localhost_alias")
    return _IRRELEVANT


def _check_address(rules: NoProxyRules, entry: Entry, target: Target) -> _Check:
    if target.ip is None:
        return _check_resolved(rules, entry, target)
    if entry.network is not None:
        return _check_network(rules, entry, target.ip)
    if entry.address != target.ip:
        return _IRRELEVANT
    if entry.kind is EntryKind.IPV4:
        return _Check(rules.ipv4_exact, "ipv4_exact")
    rule = "ipv6_bare" if entry.kind is EntryKind.IPV6 else "ipv6_bracketed"
    return _Check(getattr(rules, rule) == "match", rule)


def _check_network(rules: NoProxyRules, entry: Entry, ip: IPAddress) -> _Check:
    assert entry.network is not None
    if ip.version != entry.network.version or ip not in entry.network:
        return _IRRELEVANT
    if entry.kind is EntryKind.CIDR6:
        note = "not measured for this runtime" if rules.ipv6_cidr == "unmeasured" else ""
        return _Check(rules.ipv6_cidr == "match", "ipv6_cidr", note)
    if rules.cidr == "first_address":
        return _Check(ip == entry.address, "cidr_first_address")
    return _Check(rules.cidr == "honoured", "cidr")


def _check_resolved(rules: NoProxyRules, entry: Entry, target: Target) -> _Check:
    if target.host == "localhost" and entry.address == LOOPBACK_V4 and rules.localhost_alias:
        return _Check(True, "localhost_alias")
    covered = any(_covers(entry, a) for a in target.addresses)
    return _Check(rules.resolves_names, "resolves_names") if covered else _IRRELEVANT


def _covers(entry: Entry, address: IPAddress) -> bool:
    if entry.network is not None:
        return address.version == entry.network.version and address in entry.network
    return entry.address == address


def _check_port(rules: NoProxyRules, entry: Entry, target: Target) -> _Check:
    if rules.host_port == "never":
        return _Check(False, "host_port_never")
    implicit = target.port is None or (
        rules.drops_default_port and target.port == DEFAULT_PORTS.get(target.scheme)
    )
    if rules.host_port == "explicit_port" and implicit:
        return _Check(False, "host_port_explicit")
    return _Check(True, "host_port")


def _check_untrimmed(entry: Entry, target: Target) -> _Check:
    intended = parse_entry(entry.host)
    if intended.kind is EntryKind.UNTRIMMED:
        return _IRRELEVANT
    if _check_entry(INTENT, intended, target).matched:
        return _Check(False, "whitespace")
    return _IRRELEVANT


# -- verdicts ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RuntimeVerdict:
    """What one runtime does with a request, and why."""

    runtime: str
    label: str
    version: str
    verdict: Verdict
    reason: str
    rule: str | None = None
    entry: str | None = None
    proxy_variable: str | None = None
    no_proxy_variable: str | None = None
    caveats: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        return {
            "runtime": self.runtime,
            "label": self.label,
            "version": self.version,
            "verdict": str(self.verdict),
            "reason": self.reason,
            "rule": self.rule,
            "entry": self.entry,
            "proxy_variable": self.proxy_variable,
            "no_proxy_variable": self.no_proxy_variable,
            "caveats": list(self.caveats),
        }


@dataclass(frozen=True, slots=True)
class _Decision:
    verdict: Verdict
    reason: str
    rule: str | None = None
    entry: str | None = None
    caveats: tuple[str, ...] = ()


def _decide_no_proxy(rt: Runtime, value: str, target: Target) -> _Decision:
    """Direct or proxy for `target` given NO_PROXY=`value`, assuming a proxy is configured."""
    rules = rt.no_proxy
    assert rules is not None, "only runtimes that read the environment have NO_PROXY rules"
    entries = [parse_entry(t) for t in split_value(value, rules)]
    if rules.ipv6_target_error and entries and isinstance(target.ip, ipaddress.IPv6Address):
        why = f"{rt.label} fails on IPv6-literal URLs whenever NO_PROXY is set (measured)"
        return _Decision(Verdict.ERROR, why, "ipv6_target_error")
    builtin = _builtin_bypass(rt, target)
    if builtin is not None:
        return builtin
    star = _star(rules, value, entries)
    if star is not None:
        return star  # before entry errors: httpx stops reading the list at a `*`
    failure = _config_error(rt, rules, entries, target)
    if failure is not None:
        return failure
    misses: list[str] = []
    caveats = list(_ruby_caveat(rt, target))
    for entry in entries:
        check = _check_entry(rules, entry, target)
        if check.matched:
            why = f"entry `{entry.raw.strip()}` matched: {RULE_TEXT[check.rule]}"
            return _Decision(Verdict.DIRECT, why, check.rule, entry.raw, tuple(caveats))
        misses.extend(_explain_miss(rules, entry, target, check))
        if check.note:
            caveats.append(f"`{entry.raw}`: {check.note}")
    return _Decision(
        Verdict.PROXY, _proxy_reason(value, entries, misses), None, None, tuple(caveats)
    )


def _star(rules: NoProxyRules, value: str, entries: Sequence[Entry]) -> _Decision | None:
    if value == "*" and rules.star:
        return _Decision(Verdict.DIRECT, f"`*`: {RULE_TEXT['star']}", "star", "*")
    if rules.star and rules.star_mixed and any(e.kind is EntryKind.STAR for e in entries):
        return _Decision(Verdict.DIRECT, f"entry `*`: {RULE_TEXT['star_mixed']}", "star_mixed", "*")
    return None


def _config_error(
    rt: Runtime, rules: NoProxyRules, entries: Sequence[Entry], target: Target
) -> _Decision | None:
    for entry in entries:
        rule = {EntryKind.IPV6_BRACKETED: "ipv6_bracketed", EntryKind.CIDR6: "ipv6_cidr"}.get(
            entry.kind
        )
        if rule is None or getattr(rules, rule) != "error":
            continue
        everywhere = rules.entry_error_scope == "all_requests"
        if everywhere or (target.ip is not None and _covers(entry, target.ip)):
            why = f"entry `{entry.raw}` makes {rt.label} raise InvalidURL" + (
                " for every request" if everywhere else ""
            )
            return _Decision(Verdict.ERROR, why, rule, entry.raw)
    return None


def _builtin_bypass(rt: Runtime, target: Target) -> _Decision | None:
    loopback_literal = target.host == "localhost" or (
        target.ip is not None and target.ip.is_loopback
    )
    if rt.builtin_bypass == "literal" and loopback_literal:
        return _Decision(Verdict.DIRECT, RULE_TEXT["builtin"], "builtin")
    if rt.builtin_bypass == "resolved":
        first = _resolved_first(target)
        if first is not None and first.is_loopback:
            why = f"{RULE_TEXT['builtin']}: {target.host} resolves to loopback {first}"
            return _Decision(Verdict.DIRECT, why, "builtin")
    return None


def _resolved_first(target: Target) -> IPAddress | None:
    if target.ip is not None:
        return target.ip
    if target.addresses:
        return target.addresses[0]
    # Assumed, as on every common system: localhost resolves to 127.0.0.1 from /etc/hosts.
    return LOOPBACK_V4 if target.host == "localhost" else None


def _ruby_caveat(rt: Runtime, target: Target) -> tuple[str, ...]:
    if rt.builtin_bypass != "resolved" or target.ip is not None or target.addresses:
        return ()
    return (
        f"{rt.label} resolves the name first: it goes direct if {target.host} resolves to "
        "loopback or to an address a NO_PROXY IP/CIDR entry covers (give the addresses to check)",
    )


def _explain_miss(rules: NoProxyRules, entry: Entry, target: Target, check: _Check) -> list[str]:
    """Why an entry the plain reading would match did not match in this runtime."""
    if check.rule == "":
        return []
    if check.rule in ("whitespace", "resolves_names") or check.rule.startswith("host_port"):
        return [f"`{entry.raw}`: {MISS_TEXT[check.rule]}"]
    if not _check_entry(INTENT, entry, target).matched:
        return []  # the plain reading would not match either (e.g. `*.d` vs the apex)
    text = MISS_TEXT.get(check.rule, RULE_TEXT.get(check.rule, check.rule))
    return [f"`{entry.raw}`: " + text.format(host=entry.host)]


def _proxy_reason(value: str, entries: Sequence[Entry], misses: Sequence[str]) -> str:
    if not value.strip():
        return "NO_PROXY is empty or unset"
    if misses:
        return "no entry matched; " + "; ".join(misses)
    return f"no entry of {len(entries)} matches"


# -- whole environments -----------------------------------------------------------------------


def _first_set(env: Mapping[str, str], names: Iterable[str]) -> tuple[str, str] | None:
    for name in names:
        value = env.get(name)
        if value:
            return name, value
    return None


def _proxy_variable(rt: Runtime, env: Mapping[str, str], scheme: str) -> tuple[str, str] | None:
    assert rt.variables is not None
    v = rt.variables
    names = list(v.https if scheme == "https" else v.http)
    if scheme == "http" and "REQUEST_METHOD" in env and v.cgi_guard == "ignores_upper":
        names = [n for n in names if n != "HTTP_PROXY"]
    found = _first_set(env, names)
    if found is None and scheme == "https" and v.https_falls_back_to_http:
        found = _first_set(env, v.http)
    return found or _first_set(env, v.all)


def _proxy_url_problem(rt: Runtime, proxy: str, scheme: str) -> _Decision | None:
    """Direct/error caused by the proxy URL's form (https://, no scheme, socks5://)."""
    handling = rt.proxy_url
    if handling is None:
        return None
    form = proxy.split("://", 1)[0].lower() if "://" in proxy else ""
    outcome = {
        "https": handling.https_scheme_http if scheme == "http" else handling.https_scheme_https,
        "": handling.no_scheme_http if scheme == "http" else handling.no_scheme_https,
        "socks5": handling.socks5,
    }.get(form)
    label = {"https": "an https:// proxy URL", "": "a proxy URL without scheme"}.get(
        form, f"a {form}:// proxy URL"
    )
    if outcome == "error":
        return _Decision(Verdict.ERROR, f"{rt.label} rejects {label} (measured)", "proxy_url")
    if outcome == "direct":
        why = f"{rt.label} silently ignores {label} and connects directly (measured)"
        return _Decision(Verdict.DIRECT, why, "proxy_url")
    return None


def explain_env(
    env: Mapping[str, str],
    target: Target | str,
    *,
    only: Iterable[str] | None = None,
) -> list[RuntimeVerdict]:
    """For each runtime (or those in `only`), what it does with `target` under `env`."""
    if isinstance(target, str):
        target = parse_target(target)
    wanted = set(only) if only is not None else None
    return [_verdict_env(rt, env, target) for rt in runtimes() if wanted is None or rt.id in wanted]


def _verdict_env(rt: Runtime, env: Mapping[str, str], target: Target) -> RuntimeVerdict:
    if not rt.reads_env or rt.variables is None:
        return _make_verdict(rt, _Decision(Verdict.IGNORES_ENV, rt.env_note or "reads no variable"))
    cgi = "REQUEST_METHOD" in env and target.scheme == "http"
    if cgi and rt.variables.cgi_guard == "error" and _first_set(env, rt.variables.http):
        why = "refuses to use HTTP_PROXY in a CGI environment (REQUEST_METHOD is set)"
        return _make_verdict(rt, _Decision(Verdict.ERROR, why, "cgi_guard"))
    found = _proxy_variable(rt, env, target.scheme)
    if found is None:
        names = ", ".join(_names_for(rt, target.scheme)) or "none"
        why = f"no proxy variable it reads is set (for {target.scheme}:// it reads {names})"
        return _make_verdict(rt, _Decision(Verdict.DIRECT, why, "no_proxy_variable"))
    proxy_var, proxy_value = found
    no_proxy = _first_set(env, rt.variables.no_proxy)
    np_var, np_value = no_proxy if no_proxy else (None, "")
    decision = _decide_no_proxy(rt, np_value, target)
    if decision.verdict is Verdict.PROXY:
        decision = _proxy_url_problem(rt, proxy_value, target.scheme) or decision
    return _make_verdict(rt, decision, proxy_var, np_var)


def _make_verdict(
    rt: Runtime,
    decision: _Decision,
    proxy_variable: str | None = None,
    no_proxy_variable: str | None = None,
) -> RuntimeVerdict:
    basis = dict(rt.basis).get(decision.rule or "", "")
    caveats = decision.caveats
    if basis.startswith("source"):
        caveats = (*caveats, f"rule `{decision.rule}` is not measured for {rt.label}: {basis}")
    return RuntimeVerdict(
        runtime=rt.id,
        label=rt.label,
        version=rt.version,
        verdict=decision.verdict,
        reason=decision.reason,
        rule=decision.rule,
        entry=decision.entry,
        proxy_variable=proxy_variable,
        no_proxy_variable=no_proxy_variable,
        caveats=caveats,
    )


def _names_for(rt: Runtime, scheme: str) -> list[str]:
    assert rt.variables is not None
    v = rt.variables
    names = list(v.https if scheme == "https" else v.http)
    if scheme == "https" and v.https_falls_back_to_http:
        names += list(v.http)
    return names + list(v.all)


def proxy_env_for(value: str, proxy: str = _PLACEHOLDER_PROXY) -> dict[str, str]:
    """The environment `egressgate env` produces: every proxy variable in both cases."""
    names = ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY")
    env = dict.fromkeys(names, proxy)
    env.update(no_proxy=value, NO_PROXY=value)
    return env


def explain(
    value: str,
    host: str,
    port: int | None = None,
    *,
    scheme: str | None = None,
    addresses: Iterable[str] = (),
) -> list[RuntimeVerdict]:
    """One verdict per measured runtime for NO_PROXY=no_proxy=`value` and `host[:port]`.

    Assumes the proxy variables are set in both letter cases (as `egressgate env` does), so the
    answer depends only on each runtime's NO_PROXY rules. `host` may also be HOST:PORT,
    [IPv6]:PORT or a URL; `addresses` are what the name resolves to (only Ruby resolves).
    """
    target = parse_target(host, scheme=scheme, addresses=addresses)
    if port is not None:
        target = make_target(target.host, port, scheme=target.scheme, addresses=target.addresses)
    return explain_env(proxy_env_for(value), target)


# -- lint -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Finding:
    """A NO_PROXY problem: which entry, which runtimes misread it, and the fix."""

    severity: Severity
    code: str
    message: str
    fix: str
    entry: str | None = None
    runtimes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "severity": str(self.severity),
            "code": self.code,
            "entry": self.entry,
            "runtimes": list(self.runtimes),
            "message": self.message,
            "fix": self.fix,
        }


# Suffixes that only make sense as suffixes; writing them without the leading dot makes the
# Node libraries (exact match only) send all in-cluster traffic to the proxy (measured).
CLUSTER_SUFFIXES = frozenset(
    {"svc", "cluster.local", "svc.cluster.local", "local", "internal", "localdomain", "lan"}
)


def env_readers() -> list[Runtime]:
    """Runtimes that read the proxy variables (the others are unaffected by NO_PROXY)."""
    return [rt for rt in runtimes() if rt.reads_env and rt.no_proxy is not None]


@dataclass(frozen=True, slots=True)
class AllProxyReaders:
    """Which measured runtimes read ALL_PROXY/all_proxy (the variable egressgate env sets to
    the SOCKS5 listener). Measured with an http:// value: whether a runtime then speaks SOCKS5
    through it is not in the matrix."""

    reads: tuple[str, ...]  # runtime ids
    ignores: tuple[str, ...]  # read other proxy variables, not ALL_PROXY
    no_env: tuple[str, ...]  # read no proxy variable at all

    def to_dict(self) -> dict[str, Any]:
        return {
            "reads_all_proxy": list(self.reads),
            "ignores_all_proxy": list(self.ignores),
            "ignores_every_proxy_variable": list(self.no_env),
            "socks_through_all_proxy": "not measured",
        }


def all_proxy_readers() -> AllProxyReaders:
    reads, ignores, no_env = [], [], []
    for rt in runtimes():
        if not rt.reads_env or rt.variables is None:
            no_env.append(rt.id)
        elif rt.variables.all:
            reads.append(rt.id)
        else:
            ignores.append(rt.id)
    return AllProxyReaders(tuple(reads), tuple(ignores), tuple(no_env))


def _who(predicate: Callable[[NoProxyRules], bool]) -> tuple[str, ...]:
    return tuple(rt.id for rt in env_readers() if rt.no_proxy and predicate(rt.no_proxy))


def _names(ids: Sequence[str]) -> str:
    return ", ".join(ids)


def _by(*clauses: tuple[Sequence[str], str]) -> str:
    """'text by a, b; other text by c' for the clauses whose runtime list is not empty."""
    return "; ".join(f"{text} by {_names(ids)}" for ids, text in clauses if ids)


def lint(value: str) -> list[Finding]:
    """Findings for a NO_PROXY value, most severe first."""
    findings: list[Finding] = []
    findings += _lint_whitespace(value)
    tokens = split_value(value)
    entries = [parse_entry(t) for t in tokens]
    findings += _lint_star(value, entries)
    for entry in entries:
        findings += _lint_entry(entry, entries)
    findings += _lint_loopback(value, entries)
    findings += _lint_cluster(entries)
    order = {Severity.ERROR: 0, Severity.WARNING: 1, Severity.INFO: 2}
    return sorted(findings, key=lambda f: order[f.severity])


def has_errors(findings: Iterable[Finding]) -> bool:
    """True if any finding is an error-level misread."""
    return any(f.severity is Severity.ERROR for f in findings)


def _lint_whitespace(value: str) -> list[Finding]:
    if not any(c.isspace() for c in value):
        return []
    trimmed = split_value(value)
    wrong = tuple(
        rt.id
        for rt in env_readers()
        if rt.no_proxy is not None and split_value(value, rt.no_proxy) != trimmed
    )
    fix = "remove every space: " + ",".join(trimmed)
    if wrong:
        message = "spaces around entries: " + _by((wrong, "read as part of the entry"))
        return [Finding(Severity.ERROR, "whitespace", message, fix, value, wrong)]
    message = "spaces in the value: the measured runtimes trim them, but nothing guarantees it"
    return [Finding(Severity.WARNING, "whitespace", message, fix, value)]


def _lint_star(value: str, entries: Sequence[Entry]) -> list[Finding]:
    stars = [e for e in entries if e.kind is EntryKind.STAR]
    if not stars:
        return []
    if value.strip() == "*":
        wrong = _who(lambda r: not r.star)
        message = "`*` (bypass everything): " + _by((wrong, "ignored"))
        fix = "unset the proxy variables instead of NO_PROXY=*"
        return [Finding(Severity.ERROR, "star", message, fix, "*", wrong)]
    wrong = _who(lambda r: not (r.star and r.star_mixed))
    message = "`*` among other entries: " + _by((wrong, "honoured only as the whole value"))
    fix = "use `*` alone, or unset the proxy variables"
    return [Finding(Severity.ERROR, "star-mixed", message, fix, "*", wrong)]


def _lint_entry(entry: Entry, entries: Sequence[Entry]) -> list[Finding]:
    linter = _ENTRY_LINTERS.get(entry.kind)
    found = linter(entry, entries) if linter else []
    if entry.port is not None and entry.kind not in (EntryKind.INVALID, EntryKind.URL):
        found += _lint_port(entry)
    return found


def _lint_name(entry: Entry, entries: Sequence[Entry]) -> list[Finding]:
    found: list[Finding] = []
    dotted = {e.host for e in entries if e.kind is EntryKind.DOTTED}
    exact_only = _who(lambda r: not r.subdomain)
    if entry.host not in dotted and ("." in entry.host or entry.host in CLUSTER_SUFFIXES):
        fix = f"add `.{entry.host}` to cover subdomains in every runtime"
        if entry.host in CLUSTER_SUFFIXES:
            message = (
                f"`{entry.host}` without a leading dot: "
                + _by((exact_only, "matched only exactly"))
                + ", so service names under it go to the proxy"
            )
            found.append(
                Finding(Severity.ERROR, "suffix-without-dot", message, fix, entry.raw, exact_only)
            )
        else:
            message = (
                f"`{entry.host}`: "
                + _by((exact_only, "matched only as this exact host"))
                + " (the others also match its subdomains)"
            )
            found.append(Finding(Severity.INFO, "plain-name", message, fix, entry.raw, exact_only))
    loose = _who(lambda r: r.plain_suffix)
    if loose and "." in entry.host:
        message = f"`{entry.host}`: " + _by(
            (loose, f"also matched against names that merely end with it (e.g. not{entry.host})")
        )
        fix = f"use `.{entry.host}` (and `{entry.host}` only if the apex itself is needed)"
        found.append(Finding(Severity.INFO, "plain-suffix", message, fix, entry.raw, loose))
    return found


def _lint_dotted(entry: Entry, entries: Sequence[Entry]) -> list[Finding]:
    if entry.host in {e.host for e in entries if e.kind is EntryKind.NAME}:
        return []
    if entry.host in CLUSTER_SUFFIXES:
        return []  # nobody calls the bare suffix itself
    no_apex = _who(lambda r: not r.dot_apex)
    message = f"`{entry.raw}`: " + _by((no_apex, f"not applied to `{entry.host}` itself"))
    fix = f"add `{entry.host}` if the domain itself should bypass the proxy too"
    return [Finding(Severity.INFO, "dot-apex", message, fix, entry.raw, no_apex)]


def _lint_wildcard(entry: Entry, entries: Sequence[Entry]) -> list[Finding]:
    literal = _who(lambda r: not r.wildcard_subdomain)
    message = f"`{entry.raw}`: " + _by((literal, "read literally and never matched"))
    fix = f"write `.{entry.host}` (understood everywhere)"
    return [Finding(Severity.ERROR, "wildcard", message, fix, entry.raw, literal)]


def _lint_cidr4(entry: Entry, entries: Sequence[Entry]) -> list[Finding]:
    assert entry.network is not None
    listed = {e.address for e in entries if e.kind is EntryKind.IPV4}
    hosts = list(_expandable(entry.network))
    if hosts and all(h in listed for h in hosts):
        return []  # the addresses are listed individually too: every runtime is covered
    ignore = _who(lambda r: r.cidr == "ignored")
    cut = _who(lambda r: r.cidr == "first_address")
    message = f"`{entry.raw}`: " + _by(
        (ignore, "ignored"), (cut, f"reduced to the single address {entry.address}")
    )
    fix = "also list the individual addresses workloads reach by IP (API server, node IPs)"
    if hosts:
        fix = "also list its addresses individually (egressgate env --cluster-cidr does that)"
    return [Finding(Severity.WARNING, "cidr", message, fix, entry.raw, ignore + cut)]


def _lint_cidr6(entry: Entry, entries: Sequence[Entry]) -> list[Finding]:
    broken = _who(lambda r: r.ipv6_cidr == "error")
    message = (
        f"`{entry.raw}`: "
        + _by((broken, "every request fails (InvalidURL, checked)"))
        + "; most other runtimes ignore IPv6 CIDRs"
    )
    fix = "list the individual IPv6 addresses instead"
    return [Finding(Severity.ERROR, "ipv6-cidr", message, fix, entry.raw, broken)]


def _lint_ipv6(entry: Entry, entries: Sequence[Entry]) -> list[Finding]:
    miss = _who(lambda r: r.ipv6_bare not in ("match", None))
    broken = _who(lambda r: r.ipv6_target_error)
    message = f"`{entry.raw}`: " + _by(
        (miss, "not matched"), (broken, "IPv6-literal URLs fail whenever NO_PROXY is set")
    )
    fix = "keep it (this is the most portable form); prefer names over IPv6 literals in URLs"
    return [Finding(Severity.INFO, "ipv6", message, fix, entry.raw, miss + broken)]


def _lint_ipv6_bracketed(entry: Entry, entries: Sequence[Entry]) -> list[Finding]:
    broken = _who(lambda r: r.ipv6_bracketed == "error")
    miss = _who(lambda r: r.ipv6_bracketed == "no_match")
    message = f"`{entry.raw}`: " + _by(
        (broken, "every request fails (InvalidURL)"), (miss, "not matched")
    )
    fix = f"write it without brackets: `{entry.host}`"
    return [Finding(Severity.ERROR, "ipv6-brackets", message, fix, entry.raw, broken + miss)]


def _lint_port(entry: Entry) -> list[Finding]:
    never = _who(lambda r: r.host_port == "never")
    explicit = _who(lambda r: r.host_port == "explicit_port")
    message = f"`{entry.raw}`: " + _by(
        (never, "never matched"), (explicit, "matched only for URLs that spell out the port")
    )
    fix = f"drop the port: `{entry.raw.rsplit(':', 1)[0]}`"
    return [Finding(Severity.ERROR, "host-port", message, fix, entry.raw, never + explicit)]


def _lint_unusable(entry: Entry, entries: Sequence[Entry]) -> list[Finding]:
    texts = {
        EntryKind.URL: ("url", "a URL is not a NO_PROXY entry (only httpx reads it, as a pattern)"),
        EntryKind.GLOB: ("glob", "a `*` inside a name is read literally by almost every runtime"),
        EntryKind.INVALID: ("invalid", "not a host name, address, CIDR or host:port"),
        EntryKind.UNTRIMMED: ("whitespace-inside", "contains spaces; runtimes split it apart"),
    }
    code, message = texts[entry.kind]
    fix = "write a bare host, `.domain`, an IP address or a CIDR"
    return [Finding(Severity.ERROR, code, f"`{entry.raw}`: {message}", fix, entry.raw)]


_EntryLinter = Callable[[Entry, Sequence[Entry]], list[Finding]]
_ENTRY_LINTERS: dict[EntryKind, _EntryLinter] = {
    EntryKind.NAME: _lint_name,
    EntryKind.DOTTED: _lint_dotted,
    EntryKind.WILDCARD: _lint_wildcard,
    EntryKind.CIDR4: _lint_cidr4,
    EntryKind.CIDR6: _lint_cidr6,
    EntryKind.IPV6: _lint_ipv6,
    EntryKind.IPV6_BRACKETED: _lint_ipv6_bracketed,
    EntryKind.URL: _lint_unusable,
    EntryKind.GLOB: _lint_unusable,
    EntryKind.INVALID: _lint_unusable,
    EntryKind.UNTRIMMED: _lint_unusable,
}


def _expandable(network: IPNetwork, limit: int = 256) -> Iterable[IPAddress]:
    """The addresses of a small network (empty if it has more than `limit`)."""
    if network.num_addresses > limit:
        return []
    return list(network.hosts()) or [network.network_address]


def _lint_loopback(value: str, entries: Sequence[Entry]) -> list[Finding]:
    hosts = {e.host for e in entries if e.kind in (EntryKind.NAME, EntryKind.IPV4)}
    hosts |= {e.host for e in entries if e.kind is EntryKind.IPV6}
    star = any(e.kind is EntryKind.STAR for e in entries)
    if star:
        return []
    found: list[Finding] = []
    pairs = (("localhost", "127.0.0.1"), ("127.0.0.1", "localhost"))
    for have, missing in pairs:
        if have in hosts and missing not in hosts:
            proxied = _proxied(f"http://{missing}/", value)
            message = f"`{have}` without `{missing}`: " + _by(
                (proxied, f"http://{missing}/ is sent to the proxy")
            )
            fix = f"add `{missing}`"
            found.append(Finding(Severity.WARNING, "loopback-pair", message, fix, have, proxied))
    if not hosts & {"localhost", "127.0.0.1"}:
        proxied = _proxied("http://127.0.0.1/", value)
        message = "no loopback entry: " + _by((proxied, "loopback traffic is sent to the proxy"))
        fix = "add `localhost,127.0.0.1,::1`"
        found.append(Finding(Severity.WARNING, "no-loopback", message, fix, None, proxied))
    elif "::1" not in hosts:
        message = "`::1` missing: http://[::1]/ goes to the proxy in most runtimes"
        found.append(Finding(Severity.INFO, "no-ipv6-loopback", message, "add `::1`"))
    return found


def _proxied(url: str, value: str) -> tuple[str, ...]:
    verdicts = explain(value, url)
    return tuple(v.runtime for v in verdicts if v.verdict is Verdict.PROXY)


def _lint_cluster(entries: Sequence[Entry]) -> list[Finding]:
    suffixes = {e.host for e in entries if e.kind is EntryKind.DOTTED}
    if not suffixes & {"svc", "cluster.local", "svc.cluster.local"}:
        return []
    message = (
        "short service names (`myservice`, `myservice.ns`, `kubernetes.default`) are not covered "
        "by `.svc`/`.cluster.local`: every runtime sent them to the proxy (measured)"
    )
    fix = "add the short names the workload uses, or make it use FQDNs (name.ns.svc)"
    return [Finding(Severity.INFO, "short-names", message, fix)]
