"""squid.conf → an egressgate config that decides the same, or a refusal that says why.

Owns three things, all pure (files are read only through the `FileSource` the caller passes in):

1. Reading squid.conf: directives with their file:line, nested `include` (globs, sorted like
   glob(3)), `\\` continuations, trailing `# comments`, and ACL values from `"/path/file"` lists
   (one value per line; relative paths resolve against the squid.conf directory).
2. `squid_decision()`: a small reference evaluator of Squid's http_access semantics (rules top to
   bottom, first match wins; no match → the opposite of the last rule's action; no rules → deny).
   The tests run it against egressgate's PolicySet on the imported config to prove equivalence.
3. `import_squid()`: the translation. Squid's rules are a function of (client, method, port,
   host); egressgate's are "client → policy; allowed iff host ∈ allow AND port ∈ the policy's
   connect_ports (CONNECT) or http_ports (everything else)". The translation partitions each of
   the four inputs into the classes the ACLs can tell apart, evaluates Squid's rules once per
   combination of classes (exhaustive, so nothing is sampled), and then checks that, for every
   client class, the result factors into exactly that shape. Where it does not (a deny that
   carves a subdomain out of an allowed domain, ports that differ per destination, rules by HTTP
   method, ...) the import is refused with the file:line of the rules involved: emitting a
   looser config would silently open the firewall.

Squid features outside that model are refused when http_access uses them (url_regex, proxy_auth,
time, ...), and every directive not carried over is listed in `ImportResult.notes`.
"""

from __future__ import annotations

import glob as _glob
import ipaddress
import itertools
import json
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

import yaml

from egressgate.config.model import DEFAULT_POLICY_NAME, PortRange
from egressgate.names.hostname import IPAddress
from egressgate.names.patterns import DomainPattern, HostMatcher, IPNetwork, PatternKind

Action = Literal["allow", "deny"]
Tri = bool | None  # None: Squid's answer depends on reverse DNS, which egressgate never does

# `dst` ACLs are accepted only inside these: names resolving into them are refused by
# egressgate's private-address check whatever the allowlist says (a test checks that
# classify_address agrees), so a Squid rule on them cannot make egressgate looser.
INTERNAL_RANGES: tuple[IPNetwork, ...] = tuple(
    ipaddress.ip_network(n)
    for n in (
        "0.0.0.0/8",
        "10.0.0.0/8",
        "100.64.0.0/10",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "::/128",
        "::1/128",
        "fc00::/7",
        "fe80::/10",
    )
)
MAX_INCLUDE_DEPTH = 16  # Squid's own limit
PORT_SPACE = PortRange(1, 65535)
# The ACL types the translation understands; every other type is refused when http_access uses it.
SUPPORTED_TYPES = frozenset({"src", "dst", "dstdomain", "dstdom_regex", "port", "method"})
# Squid 4+ predefines these (squid.conf: "ACLs all, manager, localhost, to_localhost, and CONNECT
# are predefined"); a config may add values to them.
BUILTIN_ACLS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("all", "src", ("all",)),
    ("localhost", "src", ("127.0.0.1/32", "::1/128")),
    ("to_localhost", "dst", ("127.0.0.0/8", "0.0.0.0/32", "::1/128", "::/128")),
    ("CONNECT", "method", ("CONNECT",)),
    ("manager", "url_regex", ("^cache_object://", "^https?://[^/]+/squid-internal-mgr/")),
)
_WHAT_ACL_TYPES_DECIDE_ON = {
    "proxy_auth": "proxy user names and passwords (egressgate selects policies by `user` with "
    "an `auth` section; set that up by hand)",
    "proxy_auth_regex": "proxy user names",
    "url_regex": "URLs and paths",
    "urlpath_regex": "URL paths",
    "urllogin": "URL logins",
    "time": "the time of day",
    "browser": "the User-Agent header",
    "req_header": "request headers",
    "rep_header": "response headers",
    "proto": "the URL scheme",
    "myport": "the listening port",
    "localport": "the listening port",
    "myportname": "the listening port",
    "myip": "the listening address",
    "localip": "the listening address",
    "arp": "client MAC addresses",
    "eui64": "client MAC addresses",
    "srcdomain": "client host names (reverse DNS of the client)",
    "srcdom_regex": "client host names (reverse DNS of the client)",
    "maxconn": "connection counts",
    "max_user_ip": "connection counts",
    "ssl::server_name": "TLS server names (egressgate checks the SNI against the allowlist "
    "by itself)",
    "ssl::server_name_regex": "TLS server names",
    "any-of": "combinations of other ACLs (write them out as separate http_access lines)",
    "all-of": "combinations of other ACLs (write them out as separate http_access lines)",
    "dst_as": "AS numbers of the destination",
    "peername": "cache peers",
}
# Why directives outside the translation are not carried over (the notes name them by line).
_NOT_CARRIED_OVER = {
    "cache": "egressgate does not cache",
    "cache_dir": "egressgate does not cache",
    "cache_mem": "egressgate does not cache",
    "maximum_object_size": "egressgate does not cache",
    "minimum_object_size": "egressgate does not cache",
    "maximum_object_size_in_memory": "egressgate does not cache",
    "refresh_pattern": "egressgate does not cache",
    "cache_replacement_policy": "egressgate does not cache",
    "memory_replacement_policy": "egressgate does not cache",
    "coredump_dir": "egressgate has no spool or core-dump directory",
    "access_log": 'egressgate writes JSON lines (set `access_log: PATH` or "-" by hand)',
    "cache_log": "egressgate logs to stderr",
    "cache_store_log": "egressgate does not cache",
    "logformat": "egressgate writes JSON lines with fixed fields",
    "logfile_rotate": "egressgate reopens its log on SIGUSR1 (use logrotate's postrotate)",
    "pid_filename": "egressgate writes no pid file",
    "visible_hostname": "egressgate's error responses do not name the proxy host",
    "cache_effective_user": "run egressgate as an unprivileged user with your service manager",
    "cache_effective_group": "run egressgate as an unprivileged user with your service manager",
    "https_port": "egressgate's TLS listener is `tls_listen` (cert_file, key_file): set it by hand",
    "icp_port": "egressgate does not speak ICP",
    "htcp_port": "egressgate does not speak HTCP",
    "icp_access": "egressgate does not speak ICP",
    "htcp_access": "egressgate does not speak HTCP",
    "snmp_port": "egressgate exposes Prometheus metrics on its admin listener instead of SNMP",
    "snmp_access": "egressgate exposes Prometheus metrics on its admin listener instead of SNMP",
    "http_reply_access": "egressgate decides on requests; it does not filter responses",
    "ssl_bump": "egressgate never decrypts TLS",
    "sslcrtd_program": "egressgate never decrypts TLS",
    "tls_outgoing_options": "egressgate never originates TLS (CONNECT tunnels are end to end)",
    "sslproxy_cert_error": "egressgate never originates TLS",
    "cache_peer": "egressgate connects to destinations directly (no parent proxies)",
    "cache_peer_access": "egressgate connects to destinations directly (no parent proxies)",
    "never_direct": "egressgate connects to destinations directly (no parent proxies)",
    "always_direct": "egressgate connects to destinations directly (no parent proxies)",
    "prefer_direct": "egressgate connects to destinations directly (no parent proxies)",
    "forwarded_for": "egressgate has `forwarded_for: true|false` (default false): set it by hand",
    "via": "egressgate adds no Via header",
    "request_header_access": "egressgate does not rewrite headers",
    "reply_header_access": "egressgate does not rewrite headers",
    "request_header_replace": "egressgate does not rewrite headers",
    "url_rewrite_program": "egressgate does not rewrite URLs",
    "url_rewrite_access": "egressgate does not rewrite URLs",
    "auth_param": "egressgate authenticates with `auth` (users_file of user:password lines): "
    "set it up by hand",
    "deny_info": "egressgate's refusals carry X-Egressgate-Reason; pages are not configurable",
    "error_directory": "egressgate's refusals carry X-Egressgate-Reason; pages are not "
    "configurable",
    "dns_v4_first": "egressgate tries the resolved addresses in the order DNS returns them",
    "shutdown_lifetime": "egressgate drains for limits.drain_timeout_s",
    "workers": "egressgate has `workers: N`: set it by hand",
    "connect_timeout": "egressgate has limits.connect_timeout_s: set it by hand",
    "read_timeout": "egressgate has limits.idle_timeout_s: set it by hand",
    "request_timeout": "egressgate has limits.header_timeout_s: set it by hand",
    "client_lifetime": "egressgate has limits.idle_timeout_s: set it by hand",
}


# ---------------------------------------------------------------------------------------------
# Values
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Where:
    """A line in squid.conf or in a file it includes."""

    file: str
    line: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass(frozen=True, slots=True)
class Note:
    """One remark (or, in SquidImportError.issues, one refusal), located where possible."""

    where: Where | None
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}" if self.where is not None else self.message


class SquidImportError(Exception):
    """The Squid config cannot be carried over exactly; `issues` says where and why."""

    def __init__(self, issues: Sequence[Note]) -> None:
        self.issues = tuple(issues)
        super().__init__("\n".join(str(i) for i in self.issues))


@dataclass(frozen=True, slots=True)
class Directive:
    """One logical squid.conf line (continuations joined, comment removed)."""

    where: Where
    name: str
    args: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class RegexEntry:
    """One dstdom_regex pattern, and the allowlist entries that match exactly the same names."""

    pattern: str
    ignore_case: bool
    translation: tuple[DomainPattern, ...]


@dataclass(frozen=True, slots=True)
class Acl:
    """A Squid ACL, with all the `acl NAME TYPE ...` lines that define it merged."""

    name: str
    kind: str
    where: Where | None  # first definition (None for a built-in nobody extended)
    values: tuple[str, ...] = ()  # raw values (dstdomain: lowercased), for the evaluator
    networks: tuple[IPNetwork, ...] = ()  # src, dst
    domains: tuple[DomainPattern, ...] = ()  # dstdomain entries and translated regexes
    regexes: tuple[RegexEntry, ...] = ()
    ports: tuple[PortRange, ...] = ()
    methods: frozenset[str] = frozenset()
    reverse_dns: bool = True  # dstdomain/dstdom_regex without -n look IP literals up
    builtin: bool = False
    problems: tuple[Note, ...] = ()  # refusals, raised only if http_access uses the ACL


@dataclass(frozen=True, slots=True)
class Term:
    acl: str
    negated: bool

    def __str__(self) -> str:
        return ("!" if self.negated else "") + self.acl


@dataclass(frozen=True, slots=True)
class Rule:
    """`http_access allow|deny [!]acl ...`: matches when every term matches (AND)."""

    where: Where
    action: Action
    terms: tuple[Term, ...]

    def __str__(self) -> str:
        return f"http_access {self.action} " + " ".join(str(t) for t in self.terms)


@dataclass(frozen=True, slots=True)
class SquidConfig:
    """What the translation and the evaluator need from a squid.conf."""

    source: str
    acls: Mapping[str, Acl]
    rules: tuple[Rule, ...]
    http_ports: tuple[Directive, ...] = ()
    hosts_file: Directive | None = None
    nameservers: tuple[Directive, ...] = ()
    notes: tuple[Note, ...] = ()  # directives not carried over, and why
    issues: tuple[Note, ...] = ()  # problems that make the file unusable (Squid would refuse it)

    @property
    def default_action(self) -> Action:
        """What Squid does when no rule matches: the opposite of the last rule; deny if none."""
        if not self.rules:
            return "deny"
        return "deny" if self.rules[-1].action == "allow" else "allow"


@dataclass(frozen=True, slots=True)
class ImportResult:
    """The generated config (YAML text, and the mapping it loads as) and the notes."""

    yaml_text: str
    document: Mapping[str, object]
    notes: tuple[Note, ...]


# ---------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------


class FileSource(Protocol):
    """How the importer reaches included files and ACL value lists."""

    def resolve(self, path: str) -> str:
        """The path to read for `path` as written in squid.conf."""

    def read(self, path: str) -> str:
        """The text of a resolved path; raises OSError."""

    def glob(self, pattern: str) -> list[str]:
        """Resolved paths matching a resolved pattern, sorted."""


@dataclass(frozen=True, slots=True)
class DiskFiles:
    """The local disk. Relative paths resolve against `base_dir` (the squid.conf directory);
    with `root`, absolute paths resolve under it (for a config copied from another machine)."""

    base_dir: str
    root: str | None = None

    def resolve(self, path: str) -> str:
        if os.path.isabs(path):
            return os.path.join(self.root, path.lstrip("/")) if self.root else path
        return os.path.normpath(os.path.join(self.base_dir, path))

    def read(self, path: str) -> str:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read()

    def glob(self, pattern: str) -> list[str]:
        return sorted(_glob.glob(pattern))


# ---------------------------------------------------------------------------------------------
# Reading squid.conf
# ---------------------------------------------------------------------------------------------


def _logical_lines(text: str) -> Iterator[tuple[int, list[str]]]:
    """(line number, tokens) per directive: `\\` joins lines; a token starting with # ends it."""
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        if not pending:
            start = number
        line = raw.rstrip()
        if line.endswith("\\"):
            pending.append(line[:-1])
            continue
        pending.append(line)
        joined = " ".join(pending)
        pending = []
        tokens: list[str] = []
        for token in joined.split():
            if token.startswith("#"):
                break
            tokens.append(token)
        if tokens:
            yield start, tokens
    if pending:
        words = " ".join(pending).split("#", 1)[0].split()
        if words:
            yield start, words


def read_directives(
    text: str, source: str, files: FileSource
) -> tuple[list[Directive], list[Note]]:
    """Every directive in file order with includes expanded, and the problems met doing it."""
    directives: list[Directive] = []
    issues: list[Note] = []
    _read_into(text, source, files, 0, directives, issues)
    return directives, issues


def _read_into(
    text: str, source: str, files: FileSource, depth: int, out: list[Directive], issues: list[Note]
) -> None:
    for number, tokens in _logical_lines(text):
        where = Where(source, number)
        name, args = tokens[0], tuple(tokens[1:])
        if name in ("if", "else", "endif"):
            issues.append(
                Note(
                    where,
                    "conditional configuration (if/else/endif) is not "
                    "supported: import the config as one SMP worker would see it",
                )
            )
        elif name == "include":
            _include(where, args, files, depth, out, issues)
        else:
            out.append(Directive(where, name, args))


def _include(
    where: Where,
    args: tuple[str, ...],
    files: FileSource,
    depth: int,
    out: list[Directive],
    issues: list[Note],
) -> None:
    if depth + 1 > MAX_INCLUDE_DEPTH:
        issues.append(Note(where, f"includes nested deeper than {MAX_INCLUDE_DEPTH} levels"))
        return
    for pattern in args:
        resolved = files.resolve(pattern)
        paths = files.glob(resolved) if any(c in pattern for c in "*?[") else [resolved]
        if not paths:
            # Squid refuses to start when an include matches nothing, so the config is unusable.
            issues.append(
                Note(
                    where,
                    f"include {pattern}: no file matches {resolved} (Squid "
                    "would refuse to start); use --root if the config came from "
                    "another machine",
                )
            )
        for path in paths:
            try:
                text = files.read(path)
            except OSError as exc:
                issues.append(
                    Note(where, f"include {pattern}: cannot read {path}: {exc.strerror or exc}")
                )
                continue
            _read_into(text, path, files, depth + 1, out, issues)


# ---------------------------------------------------------------------------------------------
# ACL values
# ---------------------------------------------------------------------------------------------


_QUOTED_FILE = re.compile(r'^"(?P<a>.+)"$|^parameters\("(?P<b>.+)"\)$')


def _expand_values(
    where: Where, tokens: Sequence[str], files: FileSource, problems: list[Note]
) -> list[tuple[str, Where]]:
    """ACL values with `"/path/file"` lists replaced by their lines (first token of each)."""
    values: list[tuple[str, Where]] = []
    for token in tokens:
        quoted = _QUOTED_FILE.match(token)
        if quoted is None:
            values.append((token, where))
            continue
        written = quoted.group("a") or quoted.group("b")
        path = files.resolve(written)
        try:
            text = files.read(path)
        except OSError as exc:
            problems.append(
                Note(
                    where, f"cannot read ACL values from {written} ({path}): {exc.strerror or exc}"
                )
            )
            continue
        for number, raw in enumerate(text.splitlines(), start=1):
            words = raw.split()
            # Like Squid's strtokFile: one value per line, the first word; # starts a comment.
            if words and not words[0].startswith("#"):
                values.append((words[0], Where(path, number)))
    return values


def _parse_network(text: str) -> list[IPNetwork]:
    """A src/dst value: address, CIDR, address/netmask, a-b range, or `all`."""
    if text == "all":
        return [ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0")]
    if "-" in text:
        if "/" in text:
            raise ValueError(
                f"{text!r}: ranges of networks (a-b/mask) are not supported; list the networks"
            )
        low_text, high_text = text.split("-", 1)
        low, high = ipaddress.ip_address(low_text), ipaddress.ip_address(high_text)
        if low.version != high.version or int(low) > int(high):
            raise ValueError(
                f"{text!r}: a range runs from a lower to a higher address of one IP version"
            )
        return list(ipaddress.summarize_address_range(low, high))
    try:
        return [ipaddress.ip_network(text, strict=False)]
    except ValueError:
        raise ValueError(
            f"{text!r} is not an IP address or network (Squid resolves host names "
            "here once at startup; list the addresses instead)"
        ) from None


def _parse_port(text: str) -> PortRange:
    low_text, dash, high_text = text.partition("-")
    if not low_text.isdigit() or (dash and not high_text.isdigit()):
        raise ValueError(f"{text!r}: a port is a number or a range like 1025-65535")
    low, high = int(low_text), int(high_text) if dash else int(low_text)
    if low > high or high > 65535:
        raise ValueError(f"{text!r}: ports run from 0 to 65535, low end first")
    return PortRange(max(low, 1), max(high, 1))  # port 0 cannot be asked for: clip it


def _parse_domain(value: str) -> DomainPattern:
    """A dstdomain value as the allowlist entry that matches exactly the same hosts."""
    if not value.isascii():
        raise ValueError(
            f"{value!r}: Squid compares names byte for byte with the punycode "
            "clients send, so a non-ASCII entry never matches; write it as xn--…"
        )
    if "*" in value:
        raise ValueError(
            f"{value!r}: dstdomain has no wildcards ('*' is a literal character "
            "that never matches); .example.com means a domain and its subdomains"
        )
    if value.endswith(".") or "/" in value:
        raise ValueError(f"{value!r} is not a host name or a leading-dot domain")
    if value.lstrip(".")[-1:].isdigit() or ":" in value:
        try:
            address = ipaddress.ip_address(value)
        except ValueError:
            raise ValueError(f"{value!r} is neither a name nor an IP address") from None
        return DomainPattern(value, PatternKind.NETWORK, network=ipaddress.ip_network(address))
    return DomainPattern.parse(value)


# dstdom_regex forms that are exactly an allowlist entry. The prefix decides the entry kind.
_REGEX_PREFIXES: tuple[tuple[str, PatternKind], ...] = (
    (r"(^|\.)", PatternKind.DOMAIN),
    (r"^(.*\.)?", PatternKind.DOMAIN),
    (r"^(.+\.)?", PatternKind.DOMAIN),
    (r"^.*\.", PatternKind.SUBDOMAINS),
    (r"^.+\.", PatternKind.SUBDOMAINS),
    (r".*\.", PatternKind.SUBDOMAINS),
    (r".+\.", PatternKind.SUBDOMAINS),
    (r"\.", PatternKind.SUBDOMAINS),
    (r"^", PatternKind.EXACT),
)
_PLAIN_LABEL = re.compile(r"^[a-z0-9_-]+$")
_PREFIX_TEXT = {PatternKind.DOMAIN: ".", PatternKind.SUBDOMAINS: "*.", PatternKind.EXACT: ""}


def translate_regex(pattern: str, ignore_case: bool) -> tuple[DomainPattern, ...]:
    """Allowlist entries matching exactly the host names `pattern` matches; ValueError if none.

    Accepted: alternatives (`a|b`) of an anchor — `^` (exact), `(^|\\.)` (domain and subdomains),
    `\\.` or `.*\\.` (subdomains only) — then a name with escaped dots, then `$`.
    """
    if not ignore_case and pattern != pattern.lower():
        raise ValueError(
            f"{pattern!r} has upper-case letters, which never match the lower-case "
            "host names Squid compares; add -i"
        )
    return tuple(_translate_alternative(alt, pattern) for alt in _split_alternatives(pattern))


def _split_alternatives(pattern: str) -> list[str]:
    """Split at top-level `|` (not inside (), [] or after a backslash)."""
    parts: list[str] = []
    depth = 0
    in_class = False
    current = ""
    escaped = False
    for char in pattern:
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif in_class:
            in_class = char != "]"
        elif char == "[":
            in_class = True
        elif char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        elif char == "|" and depth == 0:
            parts.append(current)
            current = ""
            continue
        current += char
    parts.append(current)
    return parts


def _translate_alternative(alt: str, pattern: str) -> DomainPattern:
    text = alt.lower()
    if not text.endswith("$") or text.endswith("\\$"):
        raise ValueError(
            f"{pattern!r} is not anchored with $ at the end, so it also matches "
            "longer names such as example.com.evil.net"
        )
    body = text[:-1]
    for prefix, prefix_kind in _REGEX_PREFIXES:
        if body.startswith(prefix):
            name, kind = body[len(prefix) :], prefix_kind
            break
    else:
        raise ValueError(
            f"{pattern!r} is not anchored at the start (^, (^|\\.) or \\.), so it "
            "also matches names that merely end the same way, like badexample.com"
        )
    labels = name.split("\\.")
    for label in labels:
        if "." in label:
            raise ValueError(f"{pattern!r}: an unescaped '.' matches any character; write \\.")
        if not _PLAIN_LABEL.match(label):
            raise ValueError(
                f"{pattern!r} uses regular-expression features that no allowlist "
                "entry can express (only anchors and literal names are carried "
                "over)"
            )
    entry = DomainPattern.parse(_PREFIX_TEXT[kind] + ".".join(labels))
    if entry.kind is PatternKind.NETWORK:
        raise ValueError(f"{pattern!r} matches an IP address; use a dst ACL for addresses")
    return entry


# ---------------------------------------------------------------------------------------------
# ACL definitions
# ---------------------------------------------------------------------------------------------


@dataclass
class _AclBuilder:
    """Mutable while `acl` lines accumulate; frozen into an Acl at the end."""

    name: str
    kind: str
    where: Where | None
    builtin: bool
    values: list[str] = field(default_factory=list)
    networks: list[IPNetwork] = field(default_factory=list)
    domains: list[DomainPattern] = field(default_factory=list)
    regexes: list[RegexEntry] = field(default_factory=list)
    ports: list[PortRange] = field(default_factory=list)
    methods: set[str] = field(default_factory=set)
    reverse_dns: bool = True
    problems: list[Note] = field(default_factory=list)

    def freeze(self) -> Acl:
        return Acl(
            self.name,
            self.kind,
            self.where,
            tuple(self.values),
            tuple(self.networks),
            tuple(self.domains),
            tuple(self.regexes),
            tuple(self.ports),
            frozenset(self.methods),
            self.reverse_dns,
            self.builtin,
            tuple(self.problems),
        )

    def add(self, tokens: Sequence[str], where: Where, files: FileSource) -> None:
        """Add the values (and flags) of one `acl` line."""
        ignore_case = False
        flags_done = False
        plain: list[str] = []
        for token in tokens:
            if not flags_done and token in ("-i", "+i", "-n", "--"):
                if token == "-n":
                    self.reverse_dns = False
                ignore_case = {"-i": True, "+i": False}.get(token, ignore_case)
                flags_done = token == "--"
                continue
            if self.kind != "dstdom_regex":
                flags_done = True  # flags come first, except that regex lists interleave -i/+i
            plain.append(token)
            if self.kind == "dstdom_regex":
                self._add_values(_expand_values(where, [token], files, self.problems), ignore_case)
        if self.kind != "dstdom_regex":
            self._add_values(_expand_values(where, plain, files, self.problems), ignore_case)

    def _add_values(self, values: list[tuple[str, Where]], ignore_case: bool) -> None:
        for value, where in values:
            try:
                self._add_value(value, ignore_case)
            except ValueError as exc:
                self.problems.append(Note(where, f"acl {self.name} {self.kind}: {exc}"))

    def _add_value(self, value: str, ignore_case: bool) -> None:
        if self.kind in ("src", "dst"):
            self.networks.extend(_parse_network(value))
            self.values.append(value)
        elif self.kind == "dstdomain":
            self.values.append(value.lower())  # Squid lowercases names and entries alike
            self.domains.append(_parse_domain(value.lower()))
        elif self.kind == "dstdom_regex":
            self.values.append(value)
            translation = translate_regex(value, ignore_case)
            self.regexes.append(RegexEntry(value, ignore_case, translation))
            self.domains.extend(translation)
        elif self.kind == "port":
            self.ports.append(_parse_port(value))
        elif self.kind == "method":
            self.methods.add(value)
        else:
            self.values.append(value)


def _builtin_acls(files: FileSource) -> dict[str, _AclBuilder]:
    acls: dict[str, _AclBuilder] = {}
    for name, kind, values in BUILTIN_ACLS:
        builder = _AclBuilder(name, kind, None, builtin=True)
        builder.add(values, Where("<built-in>", 0), files)
        acls[name] = builder
    return acls


# ---------------------------------------------------------------------------------------------
# squid.conf → SquidConfig
# ---------------------------------------------------------------------------------------------


def parse_squid_config(text: str, source: str, files: FileSource) -> SquidConfig:
    """Read squid.conf text. Unusable parts are in `.issues`; untranslatable ACL values are
    kept on the ACL (`Acl.problems`) and only matter if http_access uses it."""
    directives, issues = read_directives(text, source, files)
    acls = _builtin_acls(files)
    rules: list[Rule] = []
    notes: list[Note] = []
    http_ports: list[Directive] = []
    nameservers: list[Directive] = []
    hosts_file: Directive | None = None
    for d in directives:
        if d.name == "acl":
            _acl_line(d, acls, files, issues)
        elif d.name == "http_access":
            rule = _rule_line(d, issues)
            if rule is not None:
                rules.append(rule)
        elif d.name == "http_port":
            http_ports.append(d)
        elif d.name == "hosts_file":
            hosts_file = d
        elif d.name == "dns_nameservers":
            nameservers.append(d)
        else:
            reason = _NOT_CARRIED_OVER.get(
                d.name,
                "no egressgate equivalent (egressgate decides by client, destination "
                "name and port only)",
            )
            notes.append(Note(d.where, f"{d.name}: not carried over: {reason}"))
    return SquidConfig(
        source,
        {n: b.freeze() for n, b in acls.items()},
        tuple(rules),
        tuple(http_ports),
        hosts_file,
        tuple(nameservers),
        tuple(notes),
        tuple(issues),
    )


def _acl_line(
    d: Directive, acls: dict[str, _AclBuilder], files: FileSource, issues: list[Note]
) -> None:
    if len(d.args) < 2:
        issues.append(Note(d.where, "acl needs a name and a type"))
        return
    name, kind, values = d.args[0], d.args[1], d.args[2:]
    builder = acls.get(name)
    if builder is None:
        builder = acls[name] = _AclBuilder(name, kind, d.where, builtin=False)
    elif builder.kind != kind:
        issues.append(
            Note(
                d.where,
                f"acl {name} is already of type {builder.kind} (Squid "
                f"refuses to redefine it as {kind})",
            )
        )
        return
    elif builder.where is None:
        builder.where = d.where  # a built-in extended by the config
    builder.add(values, d.where, files)


def _rule_line(d: Directive, issues: list[Note]) -> Rule | None:
    if not d.args or d.args[0] not in ("allow", "deny"):
        issues.append(Note(d.where, "http_access must be followed by allow or deny"))
        return None
    if len(d.args) == 1:
        issues.append(
            Note(
                d.where,
                f"http_access {d.args[0]} names no ACL (write `http_access {d.args[0]} all`)",
            )
        )
        return None
    action: Action = "allow" if d.args[0] == "allow" else "deny"
    terms = tuple(Term(a[1:], True) if a.startswith("!") else Term(a, False) for a in d.args[1:])
    return Rule(d.where, action, terms)


# ---------------------------------------------------------------------------------------------
# The reference evaluator
# ---------------------------------------------------------------------------------------------


def squid_decision(
    conf: SquidConfig, client: str | IPAddress, method: str, host: str, port: int
) -> Action:
    """What Squid's http_access rules decide for one request.

    `host` is the destination as the client wrote it (Squid lowercases it). Limits, which the
    translation treats the same way: reverse DNS is never done (as if every dstdomain had -n),
    `dst` ACLs match only IP-literal destinations (names are assumed to resolve to public
    addresses), and the built-in `manager` ACL (cache-manager URLs) never matches.
    """
    address = ipaddress.ip_address(client) if isinstance(client, str) else client
    name = host.lower()
    literal = _ip_literal(name)
    for rule in conf.rules:
        if all(
            _concrete_match(conf.acls[t.acl], address, method, name, literal, port) != t.negated
            for t in rule.terms
        ):
            return rule.action
    return conf.default_action


def _ip_literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def _concrete_match(
    acl: Acl, client: IPAddress, method: str, host: str, literal: IPAddress | None, port: int
) -> bool:
    if acl.kind == "src":
        return _in_networks(client, acl.networks)
    if acl.kind == "dst":
        return literal is not None and _in_networks(literal, acl.networks)
    if acl.kind == "dstdomain":
        # Squid's dstdomain: ".d" matches d and every name ending in ".d"; "d" matches only d.
        return any(
            host == v[1:] or host.endswith(v) if v.startswith(".") else host == v
            for v in acl.values
        )
    if acl.kind == "dstdom_regex":
        return any(
            re.search(r.pattern, host, re.IGNORECASE if r.ignore_case else 0) for r in acl.regexes
        )
    if acl.kind == "port":
        return any(port in r for r in acl.ports)
    if acl.kind == "method":
        return method in acl.methods
    if acl.builtin and acl.name == "manager":
        return False
    raise ValueError(f"acl {acl.name}: type {acl.kind} is outside the evaluator")


def _in_networks(address: IPAddress, networks: Iterable[IPNetwork]) -> bool:
    return any(address.version == n.version and address in n for n in networks)


# ---------------------------------------------------------------------------------------------
# Classes of inputs: every input in one class gets the same answer from every ACL
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HostClass:
    """Destinations that every referenced host ACL treats alike, with one `witness` of them."""

    witness: str
    description: str
    kind: Literal["name", "under", "unlisted", "address", "other-ipv4", "other-ipv6"]
    name: str = ""  # the listed name, for kinds name and under
    address: IPAddress | None = None


def _label_suffixes(name: str) -> Iterator[str]:
    yield name
    dot = name.find(".")
    while dot != -1:
        yield name[dot + 1 :]
        dot = name.find(".", dot + 1)


def host_classes(domains: Iterable[DomainPattern]) -> list[HostClass]:
    """One class per listed name, one for "names under it that are not listed themselves", one
    for names under no listed name, one per listed IP and one per IP version for the rest.

    A host's answer from a name entry depends only on its deepest listed ancestor-or-self and on
    whether it is that name or below it, so these classes cover every possible host.
    """
    domains = list(domains)  # read twice below
    names = sorted({d.name for d in domains if d.kind is not PatternKind.NETWORK and d.name})
    taken = {s for n in names for s in _label_suffixes(n)}
    classes: list[HostClass] = []
    for name in names:
        classes.append(HostClass(name, name, "name", name))
        below = _fresh_name(name, taken)
        classes.append(HostClass(below, f"other names under {name}", "under", name))
    tld = _fresh_name("", taken)
    classes.append(HostClass(f"host.{tld}", "names under no listed domain", "unlisted"))
    listed = sorted(
        {
            d.network.network_address
            for d in domains
            if d.network is not None and d.network.num_addresses == 1
        },
        key=lambda a: (a.version, a),
    )
    classes.extend(HostClass(str(a), str(a), "address", address=a) for a in listed)
    for version in (4, 6):
        witness = _unlisted_public_address(version, set(listed))
        kind: Literal["other-ipv4", "other-ipv6"] = "other-ipv4" if version == 4 else "other-ipv6"
        classes.append(
            HostClass(str(witness), f"unlisted IPv{version} addresses", kind, address=witness)
        )
    return classes


def _unlisted_public_address(version: int, listed: set[IPAddress]) -> IPAddress:
    """A public address of `version` that no entry lists (so it stands for all the others)."""
    start = ipaddress.ip_address("93.184.216.34" if version == 4 else "2606:4700:4700::1111")
    for offset in range(len(listed) + 1):
        candidate = start + offset
        if candidate not in listed:
            return candidate
    raise AssertionError("unreachable: more candidates than listed addresses")


def _fresh_name(parent: str, taken: set[str]) -> str:
    """A name directly under `parent` (or a TLD) that is no listed name nor an ancestor of one."""
    for index in range(len(taken) + 1):
        label = "other" if index == 0 else f"other{index}"
        candidate = f"{label}.{parent}" if parent else f"{label}-unlisted"
        if candidate not in taken:
            return candidate
    raise AssertionError("unreachable: more candidates than taken names")


def _intervals(boundaries: Iterable[int], low: int, high: int) -> list[tuple[int, int]]:
    """The elementary [a, b] intervals of low..high cut at each boundary (a boundary starts one)."""
    points = sorted({p for p in boundaries if low < p <= high} | {low, high + 1})
    return [(a, b - 1) for a, b in itertools.pairwise(points)]


def client_classes(acls: Sequence[Acl]) -> dict[tuple[bool, ...], list[IPNetwork]]:
    """Client addresses grouped by which of the src ACLs contain them (signature → networks)."""
    groups: dict[tuple[bool, ...], list[IPNetwork]] = {}
    for version, bits in ((4, 32), (6, 128)):
        per_acl = [
            [
                (int(n.network_address), int(n.broadcast_address))
                for n in acl.networks
                if n.version == version
            ]
            for acl in acls
        ]
        cuts = [p for spans in per_acl for a, b in spans for p in (a, b + 1)]
        factory = ipaddress.IPv4Address if version == 4 else ipaddress.IPv6Address
        for a, b in _intervals(cuts, 0, 2**bits - 1):
            signature = tuple(any(lo <= a <= hi for lo, hi in spans) for spans in per_acl)
            groups.setdefault(signature, []).extend(
                ipaddress.summarize_address_range(factory(a), factory(b))
            )
    return {sig: _collapse_mixed(nets) for sig, nets in groups.items()}


def _collapse_mixed(networks: list[IPNetwork]) -> list[IPNetwork]:
    out: list[IPNetwork] = []
    for version in (4, 6):
        same = [n for n in networks if n.version == version]
        out.extend(ipaddress.collapse_addresses(same))  # type: ignore[type-var]
    return out


def port_classes(acls: Sequence[Acl]) -> dict[tuple[bool, ...], list[PortRange]]:
    """Ports 1-65535 grouped by which of the port ACLs contain them."""
    cuts = [p for acl in acls for r in acl.ports for p in (r.low, r.high + 1)]
    groups: dict[tuple[bool, ...], list[PortRange]] = {}
    for a, b in _intervals(cuts, PORT_SPACE.low, PORT_SPACE.high):
        signature = tuple(any(a in r for r in acl.ports) for acl in acls)
        groups.setdefault(signature, []).append(PortRange(a, b))
    return groups


OTHER_METHOD = "GET"  # stands for every method no method ACL names (when none names GET)


def method_classes(acls: Sequence[Acl]) -> dict[str, tuple[bool, ...]]:
    """CONNECT, every method an ACL names, and one stand-in for all the others."""
    named = sorted({m for acl in acls for m in acl.methods} | {"CONNECT"})
    other = OTHER_METHOD if OTHER_METHOD not in named else "<another method>"
    return {m: tuple(m in acl.methods for acl in acls) for m in [*named, other]}


def _host_value(acl: Acl, host: HostClass, matchers: dict[str, HostMatcher]) -> Tri:
    """Does `acl` match the hosts of class `host`? None when it depends on reverse DNS."""
    if acl.kind == "dst":
        # Names: dst is only accepted for internal networks, and names that resolve inside are
        # refused by egressgate after DNS anyway, so for the names that matter it is false.
        return host.address is not None and _in_networks(host.address, acl.networks)
    if acl.kind not in ("dstdomain", "dstdom_regex"):
        return False  # the built-in manager: cache-manager URLs, which egressgate never sees
    if host.address is None:
        return matchers[acl.name].match_name(host.witness) is not None
    if matchers[acl.name].match_address(host.address) is not None:
        return True
    return None if acl.reverse_dns else False


# ---------------------------------------------------------------------------------------------
# The translation
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Outcome:
    """Squid's answer for one combination of classes."""

    allow: bool  # True only when Squid allows for certain
    rule: Rule | None  # the rule that decided (None: no rule matched, the default applied)
    uncertain: bool = False  # reverse DNS could have changed the answer


@dataclass(frozen=True, slots=True)
class _ClientGroup:
    signature: tuple[bool, ...]
    networks: tuple[IPNetwork, ...]
    description: str
    name: str


@dataclass(frozen=True, slots=True)
class PolicyShape:
    """One egressgate policy: what the rules allow for one group of clients."""

    allow: tuple[str, ...]
    connect_ports: tuple[PortRange, ...]
    http_ports: tuple[PortRange, ...]


class _Translator:
    """Evaluates the rules over every combination of input classes, then factors the result."""

    def __init__(self, conf: SquidConfig) -> None:
        self.conf = conf
        self.issues: list[Note] = []
        self.notes: list[Note] = []
        used = list(dict.fromkeys(t.acl for r in conf.rules for t in r.terms))
        self.used = [conf.acls[name] for name in used if name in conf.acls]
        self._check_references(used)
        by_kind = {k: [a for a in self.used if a.kind == k] for k in ("src", "port", "method")}
        self.src, self.port_acls, self.method_acls = (
            by_kind["src"],
            by_kind["port"],
            by_kind["method"],
        )
        self.host_acls = [a for a in self.used if a.kind not in ("src", "port", "method")]
        self.decided: set[Rule] = set()
        self.uncertain: set[Rule] = set()

    def _check_references(self, used: list[str]) -> None:
        for rule in self.conf.rules:
            for term in rule.terms:
                acl = self.conf.acls.get(term.acl)
                if acl is None:
                    self.issues.append(
                        Note(
                            rule.where,
                            f"{rule}: acl {term.acl} is not defined (Squid would refuse to start)",
                        )
                    )
        for name in used:
            acl = self.conf.acls.get(name)
            if acl is not None:
                self.issues.extend(acl.problems)
                self._check_type(acl)

    def _check_type(self, acl: Acl) -> None:
        where = acl.where or self._first_use(acl.name)
        if acl.builtin and acl.name == "manager" and acl.kind == "url_regex":
            self.notes.append(
                Note(
                    self._first_use(acl.name),
                    "acl manager (Squid's cache-"
                    "manager URLs) never matches in egressgate, which has no "
                    "cache manager (its admin listener is separate); rules "
                    "naming it are carried over as if it matched nothing",
                )
            )
        elif acl.kind == "dst":
            public = [n for n in acl.networks if not _all_internal(n)]
            if public:
                self.issues.append(
                    Note(
                        where,
                        f"acl {acl.name} dst {public[0]}: rules on "
                        "public resolved addresses cannot be expressed by "
                        "an allowlist of names",
                    )
                )
        elif acl.kind not in SUPPORTED_TYPES:
            what = _WHAT_ACL_TYPES_DECIDE_ON.get(acl.kind, f"the request attribute {acl.kind!r}")
            self.issues.append(
                Note(
                    where,
                    f"acl {acl.name} {acl.kind} decides on {what}, which "
                    "egressgate policies do not look at",
                )
            )

    def _first_use(self, name: str) -> Where | None:
        return next((r.where for r in self.conf.rules if any(t.acl == name for t in r.terms)), None)

    # ---- evaluation
    def evaluate(self, values: Mapping[str, Tri]) -> Outcome:
        """First match wins, with Kleene logic for unknowns: an unknown match may or may not
        decide, so the answer is certain only if every branch gives the same action."""
        possible: set[Action] = set()
        decided: Rule | None = None
        unknown: list[Rule] = []
        for rule in self.conf.rules:
            match: Tri = True
            for term in rule.terms:
                value = values[term.acl]
                value = None if value is None else value != term.negated
                if value is False:
                    match = False
                    break
                if value is None:
                    match = None
            if match is None:
                possible.add(rule.action)
                unknown.append(rule)
            elif match:
                possible.add(rule.action)
                decided = rule
                self.decided.add(rule)
                break
        else:
            possible.add(self.conf.default_action)
        if len(possible) > 1:
            # Only allow rules lose something (egressgate refuses when unsure); say so there.
            self.uncertain.update(r for r in unknown if r.action == "allow")
        return Outcome(possible == {"allow"}, decided, len(possible) > 1)

    def translate(self) -> list[tuple[_ClientGroup, PolicyShape]]:
        hosts = host_classes(d for a in self.host_acls for d in a.domains)
        matchers = {a.name: HostMatcher(a.domains) for a in self.host_acls}
        host_sigs: dict[tuple[Tri, ...], list[HostClass]] = {}
        for host in hosts:
            sig = tuple(_host_value(a, host, matchers) for a in self.host_acls)
            host_sigs.setdefault(sig, []).append(host)
        ports = port_classes(self.port_acls)
        methods = method_classes(self.method_acls)
        results = []
        for group in self._client_groups():
            shape = self._shape(group, host_sigs, ports, methods)
            if shape is not None:
                results.append((group, shape))
        return results

    def _client_groups(self) -> list[_ClientGroup]:
        groups = []
        for signature, networks in client_classes(self.src).items():
            inside = [
                a.name
                for a, member in zip(self.src, signature, strict=True)
                if member and not _universal(a)
            ]
            outside = [a.name for a, member in zip(self.src, signature, strict=True) if not member]
            if inside:
                description = "clients in " + " and ".join(inside)
                if outside:
                    description += " (not in " + ", ".join(outside) + ")"
            elif outside:
                description = "clients in none of " + ", ".join(outside)
            else:
                description = "all clients"
            groups.append(
                _ClientGroup(signature, tuple(networks), description, "+".join(inside) or "others")
            )
        return groups

    def _values(
        self,
        group: _ClientGroup,
        method_sig: tuple[bool, ...],
        port_sig: tuple[bool, ...],
        host_sig: tuple[Tri, ...],
    ) -> dict[str, Tri]:
        values: dict[str, Tri] = {}
        for acls, sig in (
            (self.src, group.signature),
            (self.method_acls, method_sig),
            (self.port_acls, port_sig),
            (self.host_acls, host_sig),
        ):
            for acl, value in zip(acls, sig, strict=True):
                values[acl.name] = value
        return values

    def _table(
        self,
        group: _ClientGroup,
        method_sig: tuple[bool, ...],
        host_sigs: Mapping[tuple[Tri, ...], list[HostClass]],
        ports: Mapping[tuple[bool, ...], list[PortRange]],
    ) -> dict[tuple[Tri, ...], dict[tuple[bool, ...], Outcome]]:
        return {
            h: {p: self.evaluate(self._values(group, method_sig, p, h)) for p in ports}
            for h in host_sigs
        }

    def _shape(
        self,
        group: _ClientGroup,
        host_sigs: Mapping[tuple[Tri, ...], list[HostClass]],
        ports: Mapping[tuple[bool, ...], list[PortRange]],
        methods: Mapping[str, tuple[bool, ...]],
    ) -> PolicyShape | None:
        connect = self._table(group, methods["CONNECT"], host_sigs, ports)
        plain_tables = {
            m: self._table(group, sig, host_sigs, ports)
            for m, sig in methods.items()
            if m != "CONNECT"
        }
        plain_method, plain = next(iter(plain_tables.items()))
        for method, table in plain_tables.items():
            if not self._same_answers(table, plain):
                self._method_issue(group, plain_method, method, plain, table, host_sigs, ports)
                return None
        connect_hosts, connect_ports = self._factor(group, "CONNECT", connect, host_sigs, ports)
        if connect_hosts is None:
            return None  # one refusal per client group is enough to act on
        plain_hosts, plain_ports = self._factor(group, "plain HTTP", plain, host_sigs, ports)
        if plain_hosts is None:
            return None
        if connect_hosts and plain_hosts and connect_hosts != plain_hosts:
            self._split_issue(group, connect_hosts, plain_hosts, connect, plain, host_sigs, ports)
            return None
        allowed = connect_hosts or plain_hosts
        classes = [c for sig in allowed for c in host_sigs[sig]]
        allow = self._cover(group, classes, host_sigs, connect, plain, ports)
        if allow is None:
            return None
        if not allow:
            return PolicyShape((), (), ())
        return PolicyShape(
            allow,
            _merge(p for sig in connect_ports for p in ports[sig]),
            _merge(p for sig in plain_ports for p in ports[sig]),
        )

    @staticmethod
    def _same_answers(
        a: Mapping[tuple[Tri, ...], Mapping[tuple[bool, ...], Outcome]],
        b: Mapping[tuple[Tri, ...], Mapping[tuple[bool, ...], Outcome]],
    ) -> bool:
        return all(a[h][p].allow == b[h][p].allow for h in a for p in a[h])

    def _factor(
        self,
        group: _ClientGroup,
        what: str,
        table: Mapping[tuple[Tri, ...], Mapping[tuple[bool, ...], Outcome]],
        host_sigs: Mapping[tuple[Tri, ...], list[HostClass]],
        ports: Mapping[tuple[bool, ...], list[PortRange]],
    ) -> tuple[frozenset[tuple[Tri, ...]] | None, frozenset[tuple[bool, ...]]]:
        """(hosts allowed, ports allowed) when the table is exactly (hosts) x (ports)."""
        rows = {h: frozenset(p for p, o in row.items() if o.allow) for h, row in table.items()}
        nonempty = {h: r for h, r in rows.items() if r}
        distinct = list(dict.fromkeys(nonempty.values()))
        if len(distinct) > 1:
            first = next(h for h, r in nonempty.items() if r == distinct[0])
            second = next(h for h, r in nonempty.items() if r == distinct[1])
            # Cite the rules that allow each destination on the ports the other lacks.
            port_a = next(iter(distinct[0] - distinct[1] or distinct[0]))
            port_b = next(iter(distinct[1] - distinct[0] or distinct[1]))
            lines = _lines(table[first][port_a].rule, table[second][port_b].rule, self.conf)
            self.issues.append(
                Note(
                    lines[0],
                    f"for {group.description}, {what} to "
                    f"{_describe(host_sigs[first])} is allowed on ports "
                    f"{_ports_text(distinct[0], ports)} but to {_describe(host_sigs[second])} on "
                    f"ports {_ports_text(distinct[1], ports)} (see {', '.join(map(str, lines))}); "
                    "an egressgate policy allows the same ports for every destination",
                )
            )
            return None, frozenset()
        return frozenset(nonempty), (distinct[0] if distinct else frozenset())

    # ---- host cover: the allowlist entries that allow exactly the allowed classes
    def _cover(
        self,
        group: _ClientGroup,
        allowed: list[HostClass],
        host_sigs: Mapping[tuple[Tri, ...], list[HostClass]],
        connect: Mapping[tuple[Tri, ...], Mapping[tuple[bool, ...], Outcome]],
        plain: Mapping[tuple[Tri, ...], Mapping[tuple[bool, ...], Outcome]],
        ports: Mapping[tuple[bool, ...], list[PortRange]],
    ) -> tuple[str, ...] | None:
        sig_of = {c: sig for sig, cs in host_sigs.items() for c in cs}
        every = list(sig_of)
        allowed_set = set(allowed)

        def blame(inside: HostClass, outside: HostClass, why: str) -> None:
            table = connect if any(o.allow for o in connect[sig_of[inside]].values()) else plain
            port = next(p for p, o in table[sig_of[inside]].items() if o.allow)
            lines = _lines(
                table[sig_of[inside]][port].rule, table[sig_of[outside]][port].rule, self.conf
            )
            self.issues.append(
                Note(
                    lines[-1],
                    f"for {group.description}, Squid allows "
                    f"{inside.description} but refuses {outside.description} (see "
                    f"{', '.join(map(str, lines))}); {why}",
                )
            )

        cover = _Cover(every, allowed_set)
        entries = cover.entries()
        for inside, outside, why in cover.failures:
            blame(inside, outside, why)
        return None if cover.failures else entries

    # ---- refusals that concern the method dimension
    def _method_issue(
        self,
        group: _ClientGroup,
        first: str,
        second: str,
        a: Mapping[tuple[Tri, ...], Mapping[tuple[bool, ...], Outcome]],
        b: Mapping[tuple[Tri, ...], Mapping[tuple[bool, ...], Outcome]],
        host_sigs: Mapping[tuple[Tri, ...], list[HostClass]],
        ports: Mapping[tuple[bool, ...], list[PortRange]],
    ) -> None:
        h, p = next((h, p) for h in a for p in a[h] if a[h][p].allow != b[h][p].allow)
        lines = _lines(a[h][p].rule, b[h][p].rule, self.conf)
        self.issues.append(
            Note(
                lines[0],
                f"for {group.description}, {first} and {second} "
                f"requests to {_describe(host_sigs[h])} port {ports[p][0].low} get different "
                f"answers (see {', '.join(map(str, lines))}); egressgate decides by destination "
                "and port, not by HTTP method (only CONNECT is told apart)",
            )
        )

    def _split_issue(
        self,
        group: _ClientGroup,
        connect_hosts: frozenset[tuple[Tri, ...]],
        plain_hosts: frozenset[tuple[Tri, ...]],
        connect: Mapping[tuple[Tri, ...], Mapping[tuple[bool, ...], Outcome]],
        plain: Mapping[tuple[Tri, ...], Mapping[tuple[bool, ...], Outcome]],
        host_sigs: Mapping[tuple[Tri, ...], list[HostClass]],
        ports: Mapping[tuple[bool, ...], list[PortRange]],
    ) -> None:
        sig = next(iter(connect_hosts ^ plain_hosts))
        in_connect = sig in connect_hosts
        allowed = connect if in_connect else plain
        port = next(p for p, o in allowed[sig].items() if o.allow)
        rules = [connect[sig][port].rule, plain[sig][port].rule]
        lines = _lines(rules[0], rules[1], self.conf)
        self.issues.append(
            Note(
                lines[0],
                f"for {group.description}, "
                f"{_describe(host_sigs[sig])} may be reached by "
                f"{'CONNECT but not by plain HTTP' if in_connect else 'plain HTTP but not CONNECT'}"
                f", while other allowed destinations may be reached both ways (see "
                f"{', '.join(map(str, lines))}); an egressgate policy has one allow list for both "
                "(connect_ports and http_ports only choose the ports)",
            )
        )

    # ---- notes about what the evaluation saw
    def usage_notes(self) -> list[Note]:
        notes = []
        for rule in self.conf.rules:
            if rule not in self.decided and rule not in self.uncertain:
                notes.append(
                    Note(
                        rule.where,
                        f"{rule}: never decides a request (everything it "
                        "matches is decided by an earlier rule, or it matches nothing "
                        "egressgate can see); nothing to carry over",
                    )
                )
            if rule in self.uncertain:
                notes.append(
                    Note(
                        rule.where,
                        f"{rule}: for IP-literal destinations Squid's "
                        "answer depends on reverse DNS (dstdomain without -n); "
                        "egressgate never does reverse lookups, so those are refused "
                        "unless listed as addresses",
                    )
                )
            if rule.action == "allow" and any(
                not t.negated and self.conf.acls[t.acl].kind == "dst"
                for t in rule.terms
                if t.acl in self.conf.acls
            ):
                notes.append(
                    Note(
                        rule.where,
                        f"{rule}: allows internal destinations by "
                        "address; egressgate refuses internal addresses unless the "
                        "policy lists them in allow_private (not generated)",
                    )
                )
        return notes


def _universal(acl: Acl) -> bool:
    full = {ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0")}
    return full <= set(acl.networks)


def _all_internal(network: IPNetwork) -> bool:
    """True when `network` lies inside ranges egressgate refuses after DNS anyway."""
    return any(
        network.version == r.version and network.subnet_of(r)  # type: ignore[arg-type]
        for r in INTERNAL_RANGES
    )


def _lines(first: Rule | None, second: Rule | None, conf: SquidConfig) -> list[Where]:
    """The rule locations to cite; the default (no rule matched) cites the last rule."""
    out: list[Where] = []
    for rule in (first, second):
        where = (
            rule.where
            if rule is not None
            else (conf.rules[-1].where if conf.rules else Where(conf.source, 0))
        )
        if where not in out:
            out.append(where)
    return sorted(out, key=lambda w: (w.file != conf.source, w.file, w.line))


def _describe(classes: Sequence[HostClass]) -> str:
    names = [c.description for c in classes[:3]]
    more = f" and {len(classes) - 3} more" if len(classes) > 3 else ""
    return ", ".join(names) + more


def _ports_text(
    signatures: Iterable[tuple[bool, ...]], ports: Mapping[tuple[bool, ...], list[PortRange]]
) -> str:
    return ", ".join(str(r) for r in _merge(p for s in signatures for p in ports[s])) or "none"


def _merge(ranges: Iterable[PortRange]) -> tuple[PortRange, ...]:
    """Sorted ranges with touching and overlapping ones joined."""
    out: list[PortRange] = []
    for r in sorted(ranges, key=lambda r: r.low):
        if out and r.low <= out[-1].high + 1:
            out[-1] = PortRange(out[-1].low, max(out[-1].high, r.high))
        else:
            out.append(r)
    return tuple(out)


class _Cover:
    """The allowlist entries allowing exactly `allowed` among `every` host class, if any do.

    Name classes form a tree (each listed name under its nearest listed ancestor). `.d` allows
    d's whole subtree, `*.d` the subtree without d, `d` only d, `*` every name class; addresses
    are listed one by one and `0.0.0.0/0`/`::/0` allow every address of a version. Allowlists
    have no exceptions, so a class that is allowed while something inside what its entry would
    allow is refused makes the set inexpressible; those pairs are collected in `failures`.
    """

    def __init__(self, every: list[HostClass], allowed: set[HostClass]) -> None:
        self.every = every
        self.allowed = allowed
        self.failures: list[tuple[HostClass, HostClass, str]] = []
        self.by_name = {c.name: c for c in every if c.kind == "name"}
        self.under = {c.name: c for c in every if c.kind == "under"}
        self.children: dict[str, list[str]] = {n: [] for n in self.by_name}
        self.roots: list[str] = []
        for name in self.by_name:
            parent = next((s for s in list(_label_suffixes(name))[1:] if s in self.by_name), None)
            (self.children[parent] if parent is not None else self.roots).append(name)

    def _subtree(self, name: str) -> list[HostClass]:
        out = [self.by_name[name], self.under[name]]
        for child in self.children[name]:
            out.extend(self._subtree(child))
        return out

    def _refused_in(self, classes: Iterable[HostClass]) -> HostClass | None:
        return next((c for c in classes if c not in self.allowed), None)

    def entries(self) -> tuple[str, ...]:
        names = [c for c in self.every if c.address is None]
        unlisted = next(c for c in names if c.kind == "unlisted")
        out: list[str] = []
        if unlisted in self.allowed:
            refused = self._refused_in(names)
            if refused is not None:
                self.failures.append(
                    (
                        unlisted,
                        refused,
                        "an egressgate allowlist cannot allow "
                        "every name except some (it has no deny entries)",
                    )
                )
            out.append("*")
        else:
            for root in self.roots:
                out.extend(self._entries_for(root))
        out.extend(self._address_entries())
        return tuple(out)

    def _entries_for(self, name: str) -> list[str]:
        node, below = self.by_name[name], self.under[name]
        subtree = self._subtree(name)
        if self._refused_in(subtree) is None:
            return [f".{name}"]
        if node not in self.allowed and self._refused_in(subtree[1:]) is None:
            return [f"*.{name}"]
        out = [name] if node in self.allowed else []
        if below in self.allowed:
            refused = self._refused_in(subtree[2:])
            assert refused is not None
            self.failures.append(
                (
                    below,
                    refused,
                    "an egressgate allowlist cannot allow a "
                    "domain's subdomains except some (it has no deny entries); "
                    "list the allowed names instead",
                )
            )
        for child in self.children[name]:
            out.extend(self._entries_for(child))
        return out

    def _address_entries(self) -> list[str]:
        out: list[str] = []
        for kind, everything in (("other-ipv4", "0.0.0.0/0"), ("other-ipv6", "::/0")):
            rest = next(c for c in self.every if c.kind == kind)
            version = 4 if kind == "other-ipv4" else 6
            listed = [
                c
                for c in self.every
                if c.kind == "address" and c.address is not None and c.address.version == version
            ]
            if rest in self.allowed:
                refused = self._refused_in(listed)
                if refused is not None:
                    self.failures.append(
                        (
                            rest,
                            refused,
                            "an egressgate allowlist cannot allow every address except some",
                        )
                    )
                out.append(everything)
            else:
                out.extend(c.witness for c in listed if c in self.allowed)
        return out


# ---------------------------------------------------------------------------------------------
# Putting it together
# ---------------------------------------------------------------------------------------------


def import_squid(text: str, source: str, files: FileSource) -> ImportResult:
    """Translate squid.conf text; raises SquidImportError listing every refusal."""
    conf = parse_squid_config(text, source, files)
    issues = list(conf.issues)
    translator = _Translator(conf)
    issues.extend(translator.issues)
    if issues:
        raise SquidImportError(_unique(issues))
    shapes = translator.translate()
    if translator.issues:
        raise SquidImportError(_unique(translator.issues))
    document: dict[str, object] = {}
    notes = list(conf.notes)
    document.update(_listen(conf, notes))
    document.update(_resolver(conf, files, issues))
    if issues:
        raise SquidImportError(_unique(issues))
    policies, clients, default = _policies(shapes)
    notes.extend(translator.notes)
    notes.extend(translator.usage_notes())
    notes.extend(_unused_acls(conf))
    if not conf.rules:
        notes.append(
            Note(
                None,
                "no http_access rules: Squid refuses every request, and so does "
                "the generated config",
            )
        )
    notes.append(
        Note(
            None,
            "egressgate also refuses destinations that resolve to internal "
            "addresses (loopback, RFC 1918, link-local/metadata, ...), which Squid "
            "allowed unless a rule such as `http_access deny to_localhost` said "
            "otherwise; add allow_private to a policy if its clients need them",
        )
    )
    notes.sort(
        key=lambda n: (
            n.where is None,
            n.where.file if n.where else "",
            n.where.line if n.where else 0,
        )
    )
    yaml_text = render_yaml(source, document, policies, clients, default)
    return ImportResult(yaml_text, yaml.safe_load(yaml_text), tuple(notes))


def _unique(notes: Iterable[Note]) -> list[Note]:
    return list(dict.fromkeys(notes))


def _listen(conf: SquidConfig, notes: list[Note]) -> dict[str, object]:
    if not conf.http_ports:
        notes.append(
            Note(
                None,
                "no http_port: the generated config listens on egressgate's default 0.0.0.0:3128",
            )
        )
        return {}
    first, *others = conf.http_ports
    notes.extend(
        Note(
            other.where,
            f"http_port {' '.join(other.args)}: not carried over: "
            "egressgate listens on one address (the first http_port)",
        )
        for other in others
    )
    if not first.args:
        return {}
    where = first.args[0]
    notes.extend(
        Note(
            first.where,
            f"http_port option {option}: not carried over"
            + (
                ": egressgate is an explicit forward proxy only"
                if option in ("intercept", "transparent", "tproxy", "accel")
                or option.startswith("ssl-bump")
                else ""
            ),
        )
        for option in first.args[1:]
    )
    if where.isdigit():
        notes.append(
            Note(
                first.where,
                f"http_port {where}: Squid listens on every IPv4 and IPv6 "
                f"address; egressgate gets listen 0.0.0.0:{where}",
            )
        )
        return {"listen": f"0.0.0.0:{where}"}
    return {"listen": where}


def _resolver(conf: SquidConfig, files: FileSource, issues: list[Note]) -> dict[str, object]:
    out: dict[str, object] = {}
    if conf.hosts_file is not None and conf.hosts_file.args and conf.hosts_file.args[0] != "none":
        out["hosts_file"] = files.resolve(conf.hosts_file.args[0])
    servers: list[str] = []
    for d in conf.nameservers:
        for arg in d.args:
            try:
                ipaddress.ip_address(arg)
            except ValueError:
                issues.append(Note(d.where, f"dns_nameservers {arg}: not an IP address"))
            else:
                servers.append(arg)
    if servers:
        out["nameservers"] = servers
    return out


def _unused_acls(conf: SquidConfig) -> list[Note]:
    used = {t.acl for r in conf.rules for t in r.terms}
    return [
        Note(acl.where, f"acl {acl.name}: not used by http_access, not carried over")
        for acl in conf.acls.values()
        if acl.name not in used and not acl.builtin and acl.where is not None
    ]


def _policies(
    shapes: list[tuple[_ClientGroup, PolicyShape]],
) -> tuple[dict[str, PolicyShape], list[tuple[str, list[IPNetwork]]], str]:
    """Groups with the same shape share a policy; the one covering the most addresses is the
    default (no clients rule), every other gets a clients rule with its networks."""
    by_shape: dict[PolicyShape, list[_ClientGroup]] = {}
    for group, shape in shapes:
        by_shape.setdefault(shape, []).append(group)

    def size(groups: list[_ClientGroup]) -> int:
        # IPv4 space weighs like the IPv6 space so that neither version decides alone.
        return sum(
            n.num_addresses * (2**96 if n.version == 4 else 1) for g in groups for n in g.networks
        )

    ordered = sorted(by_shape.items(), key=lambda item: -size(item[1]))
    policies: dict[str, PolicyShape] = {DEFAULT_POLICY_NAME: ordered[0][0]}
    clients: list[tuple[str, list[IPNetwork]]] = []
    claimed: list[IPNetwork] = []
    # Smallest groups first. First match wins, so a later rule may also cover addresses that an
    # earlier rule took: that lets it name a few wide networks instead of a carve-out list.
    for shape, groups in reversed(ordered[1:]):
        name = "+".join(dict.fromkeys(part for g in groups for part in g.name.split("+")))
        while name in policies:
            name += "_"
        own = [n for g in groups for n in g.networks]
        wide = _collapse_mixed(own + claimed)
        source = [w for w in wide if any(w.version == o.version and w.overlaps(o) for o in own)]
        claimed.extend(own)
        policies[name] = shape
        clients.append((name, source))
    return policies, clients, DEFAULT_POLICY_NAME


# ---------------------------------------------------------------------------------------------
# YAML
# ---------------------------------------------------------------------------------------------


_PLAIN_SCALAR = re.compile(r"^(?:[A-Za-z_.][A-Za-z0-9_.-]*|\d+\.\d+\.\d+\.\d+(?:/\d+)?)$")
_YAML_WORDS = {"y", "n", "yes", "no", "on", "off", "true", "false", "null", "~"}


def _scalar(value: str | int) -> str:
    """A YAML scalar: plain when unambiguous, else double-quoted (JSON escapes are YAML's)."""
    if isinstance(value, int):
        return str(value)
    if _PLAIN_SCALAR.match(value) and value.lower() not in _YAML_WORDS:
        return value
    return json.dumps(value)


def _port_value(r: PortRange) -> str | int:
    return r.low if r.low == r.high else str(r)


def _flow(values: Iterable[str | int]) -> str:
    return "[" + ", ".join(_scalar(v) for v in values) + "]"


def _shape_lines(shape: PolicyShape, indent: str) -> list[str]:
    if not shape.allow:
        return [f"{indent}allow: []  # Squid refuses these clients every destination"]
    lines = [f"{indent}allow:"]
    lines.extend(f"{indent}  - {_scalar(e)}" for e in shape.allow)
    lines.append(
        f"{indent}connect_ports: {_flow(_port_value(r) for r in shape.connect_ports)}"
        + ("  # Squid allows these clients no CONNECT" if not shape.connect_ports else "")
    )
    lines.append(
        f"{indent}http_ports: {_flow(_port_value(r) for r in shape.http_ports)}"
        + ("  # Squid allows these clients only CONNECT" if not shape.http_ports else "")
    )
    return lines


def render_yaml(
    source: str,
    document: Mapping[str, object],
    policies: Mapping[str, PolicyShape],
    clients: list[tuple[str, list[IPNetwork]]],
    default: str,
) -> str:
    lines = [
        f"# Generated by `egressgate import-squid` from {source}.",
        "# It decides like that file's http_access rules for destination names and ports;",
        "# see the notes printed with it for what was not carried over. Review before use.",
    ]
    lines.extend(
        f"{k}: {_scalar(str(document[k]))}" for k in ("listen", "hosts_file") if k in document
    )
    if "nameservers" in document:
        servers = document["nameservers"]
        assert isinstance(servers, list)
        lines.append(f"nameservers: {_flow(servers)}")
    lines.append("")
    lines.append("# The default policy: clients that no `clients` rule below selects.")
    lines.extend(_shape_lines(policies[default], ""))
    others = [name for name in policies if name != default]
    if others:
        lines.append("")
        lines.append("policies:")
        for name in others:
            lines.append(f"  {_scalar(name)}:")
            lines.extend(_shape_lines(policies[name], "    "))
        lines.append("")
        lines.append("clients:")
        for name, networks in clients:
            lines.append(f"  - policy: {_scalar(name)}")
            lines.append(f"    source: {_flow(str(n) for n in networks)}")
    return "\n".join(lines) + "\n"
