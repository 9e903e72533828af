"""The validated configuration: frozen values, with every default defined here and only here.

No sockets, no asyncio, no logging. `config/load.py` builds these from YAML; `policy/engine.py`
compiles them into the runtime form. Value parsers (`ListenAddress.parse`, `PortRange.parse`)
raise ValueError with a message meant for the operator.
"""

from __future__ import annotations

import hmac
import ipaddress
from dataclasses import dataclass, field
from enum import StrEnum

DEFAULT_LISTEN = "0.0.0.0:3128"
# Probes come from the kubelet on the pod address, so the admin listener binds every interface by
# default. It serves only read-only health and metrics; set `admin_listen: null` to turn it off.
DEFAULT_ADMIN_LISTEN = "0.0.0.0:9090"
DEFAULT_POLICY_NAME = "default"


class Mode(StrEnum):
    """enforce: refuse what the policy refuses. report: allow it, but log and count the refusal."""

    ENFORCE = "enforce"
    REPORT = "report"


class NoSniAction(StrEnum):
    """What a CONNECT tunnel whose first bytes carry no TLS server name is allowed to do."""

    ALLOW = "allow"
    DENY = "deny"


class DnsRefusal(StrEnum):
    """The DNS guard's answer for a name it refuses: NXDOMAIN (the default) or REFUSED."""

    NXDOMAIN = "nxdomain"
    REFUSED = "refused"


class DnsAnswer(StrEnum):
    """forward: allowed names get the upstream resolver's answer. proxy: the proxy's address."""

    FORWARD = "forward"
    PROXY = "proxy"


def _is_ascii_number(text: str) -> bool:
    """ASCII digits only.

    Fix (unit tests, test_model.py): str.isdigit() is also true for "٤٤٣" (Arabic-Indic
    digits, which int() reads as 443) and for "²" (which int() refuses with a raw message).
    """
    return text.isascii() and text.isdigit()


@dataclass(frozen=True, slots=True)
class ListenAddress:
    """Where a listener binds: host (IPv4, IPv6 without brackets, or a name) and port (0 = any)."""

    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> ListenAddress:
        """Parse `host:port`, `[v6]:port` or `:port` (all interfaces)."""
        text = text.strip()
        if text.startswith("["):
            host, sep, port_text = text[1:].partition("]:")
            if not sep:
                raise ValueError(f"{text!r}: IPv6 listen addresses look like [::]:3128")
            ipaddress.IPv6Address(host)
        else:
            host, sep, port_text = text.rpartition(":")
            if not sep:
                raise ValueError(f"{text!r}: expected host:port, like 0.0.0.0:3128")
            if ":" in host:
                raise ValueError(f"{text!r}: write IPv6 addresses in brackets, like [::]:3128")
            host = host or "0.0.0.0"
        if not _is_ascii_number(port_text) or not 0 <= int(port_text) <= 65535:
            raise ValueError(f"{text!r}: port must be a number from 0 to 65535")
        return cls(host, int(port_text))

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class PortRange:
    """An inclusive range of TCP ports; a single port is a range of one."""

    low: int
    high: int

    @classmethod
    def parse(cls, value: int | str) -> PortRange:
        """Parse 443, "443" or "1024-65535"."""
        text = str(value).strip()
        low_text, dash, high_text = text.partition("-")
        if not _is_ascii_number(low_text) or (dash and not _is_ascii_number(high_text)):
            raise ValueError(f"{value!r}: a port is a number (443) or a range (1024-65535)")
        low = int(low_text)
        high = int(high_text) if dash else low
        if not 1 <= low <= high <= 65535:
            raise ValueError(f"{value!r}: ports run from 1 to 65535, low end first")
        return cls(low, high)

    def __contains__(self, port: object) -> bool:
        return isinstance(port, int) and self.low <= port <= self.high

    def __str__(self) -> str:
        return str(self.low) if self.low == self.high else f"{self.low}-{self.high}"


DEFAULT_CONNECT_PORTS = (PortRange(443, 443),)
DEFAULT_HTTP_PORTS = (PortRange(80, 80),)


class Secret:
    """A credential read from a file or an environment variable (`set_headers`).

    Its repr and str name only where it came from, never the value, so a Config, a traceback or
    a debug print cannot show it. `reveal()` is the one way to the bytes; the data path calls it
    once, at compile. Equality compares the values in constant time (a reload that changes only
    a secret is a change).
    """

    __slots__ = ("_value", "source")

    def __init__(self, source: str, value: bytes) -> None:
        self.source = source  # "file:/run/secrets/gh-token" or "env:GH_TOKEN"
        self._value = value

    def reveal(self) -> bytes:
        return self._value

    def __repr__(self) -> str:
        return f"Secret({self.source!r})"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return self.source == other.source and hmac.compare_digest(self._value, other._value)

    def __hash__(self) -> int:
        return hash(self.source)

    def __reduce__(self) -> tuple[object, ...]:
        # Never pickled by accident into a file or a queue: workers fork and inherit it.
        raise TypeError("a Secret is not picklable")


# A secret shorter than this is no credential, and scanning traffic for it (secret-leak) would
# refuse innocent requests that merely contain those few bytes.
MIN_SECRET_BYTES = 8
# A secret file larger than this is a mistake (a certificate bundle, a log); it is not read.
MAX_SECRET_BYTES = 16 * 1024


@dataclass(frozen=True, slots=True)
class TlsInterceptConfig:
    """The CA that signs the leaf certificates of intercepted hosts (docs/interception.md)."""

    ca_cert_file: str
    ca_key_file: str
    upstream_ca_file: str | None = None  # trusted for origins, besides the system store


@dataclass(frozen=True, slots=True)
class InterceptRuleConfig:
    """One request rule of an intercepted host; the first rule that matches allows."""

    methods: tuple[str, ...] = ()  # empty: any method
    paths: tuple[str, ...] = ()  # patterns on the normalized path; empty: any path
    websocket: bool = False  # True: the rule also allows a WebSocket upgrade
    line: int | None = None


@dataclass(frozen=True, slots=True)
class SetHeader:
    """A header the proxy sets (replacing the client's) on requests to an intercepted host.

    The value sent is `prefix` + the secret, e.g. "Bearer " + the token read from `secret`.
    """

    name: str  # as written; matched case-insensitively
    secret: Secret
    prefix: str = ""


@dataclass(frozen=True, slots=True)
class InterceptConfig:
    """A host whose TLS the proxy terminates so that its requests can be judged by rules."""

    host: str  # allowlist name forms: exact, .domain, *.sub
    rules: tuple[InterceptRuleConfig, ...]
    set_headers: tuple[SetHeader, ...] = ()
    line: int | None = None


@dataclass(frozen=True, slots=True)
class PolicyConfig:
    """One named policy: which destinations a client may reach, and how strictly."""

    name: str
    allow: tuple[str, ...] = ()
    connect_ports: tuple[PortRange, ...] = DEFAULT_CONNECT_PORTS
    http_ports: tuple[PortRange, ...] = DEFAULT_HTTP_PORTS
    allow_private: tuple[str, ...] = ()
    mode: Mode = Mode.ENFORCE
    sni_check: bool = True
    tunnels_without_sni: NoSniAction = NoSniAction.ALLOW
    intercept: tuple[InterceptConfig, ...] = ()


@dataclass(frozen=True, slots=True)
class ClientRule:
    """Picks `policy` for clients matching every given criterion (first matching rule wins)."""

    policy: str
    sources: tuple[str, ...] = ()  # CIDRs of the client address
    users: tuple[str, ...] = ()  # proxy usernames (Proxy-Authorization: Basic)
    tls_names: tuple[str, ...] = ()  # TLS client certificate subject CN or a SAN
    line: int | None = None  # where the rule was written, for log lines and errors


@dataclass(frozen=True, slots=True)
class AuthConfig:
    """Where proxy credentials come from: `user:password` lines in a file or an env variable."""

    users_file: str | None = None
    users_env: str | None = None
    realm: str = "egressgate"


@dataclass(frozen=True, slots=True)
class TlsListenConfig:
    """An HTTPS proxy listener: clients speak TLS to the proxy, then HTTP/CONNECT inside it."""

    listen: ListenAddress
    cert_file: str
    key_file: str
    client_ca_file: str | None = None
    require_client_cert: bool = False


@dataclass(frozen=True, slots=True)
class Limits:
    """Protections against slow, large and numerous clients, and patience with upstreams."""

    max_connections: int = 10_000
    max_request_line_bytes: int = 8 * 1024
    max_header_bytes: int = 32 * 1024
    # An origin's response head (status line + header lines, trailers too) and its number of
    # header fields; beyond either: 502 upstream-bad-response (issue 19: was unbounded).
    max_response_header_bytes: int = 64 * 1024
    max_response_headers: int = 256
    header_timeout_s: float = 10.0
    keepalive_timeout_s: float = 60.0
    connect_timeout_s: float = 10.0
    # All addresses of one destination together (net/connect.py connect_first).
    connect_total_timeout_s: float = 20.0
    dns_timeout_s: float = 5.0
    response_timeout_s: float = 60.0
    idle_timeout_s: float = 300.0
    upstream_idle_s: float = 30.0
    drain_timeout_s: float = 25.0
    shutdown_delay_s: float = 0.0  # keep accepting this long after SIGTERM (endpoint removal)
    # File descriptors kept free below RLIMIT_NOFILE: a new client whose socket would take one
    # of them is refused with 503, so the admin endpoint, upstream sockets, DNS and the log
    # still get one when clients exhaust the limit (docs/threat-model.md).
    reserved_fds: int = 64
    # Longest pause of the accept loop after EMFILE/ENFILE (it doubles from 10 ms up to this)
    # instead of spinning on a listener that stays readable.
    accept_backoff_max_s: float = 1.0
    # Per client address: pause after each failed proxy login before the 407 is sent.
    auth_failure_delay_s: float = 1.0
    # The DNS guard (dns_listen): what one client may send and hold, and what it keeps.
    dns_max_message_bytes: int = 4096  # a query (UDP datagram or TCP frame); larger: dropped
    dns_tcp_idle_s: float = 10.0  # a TCP client silent (or mid-frame) this long is closed
    dns_tcp_max_queries: int = 100  # queries per TCP connection, then it is closed
    dns_max_tcp_connections: int = 256  # open TCP connections to the guard
    dns_max_inflight: int = 256  # upstream queries in flight; beyond: SERVFAIL (dns-overloaded)
    dns_cache_entries: int = 10_000  # answers kept (each for its TTL, clamped below)
    dns_cache_min_ttl_s: float = 1.0
    dns_cache_max_ttl_s: float = 300.0

    # Access-log bytes that may wait for the writer thread (a slow disk, a stdout reader that
    # stopped reading); beyond, whole batches are dropped and counted, traffic never waits.
    access_log_buffer_bytes: int = 4 * 1024 * 1024
    # How long the exit waits for the access-log writer to write what is queued.
    access_log_flush_timeout_s: float = 2.0
    # TLS interception: minted leaf certificates kept (one per server name, least recently
    # used dropped), and how long each is valid (short: a leaked leaf key is soon worthless).
    intercept_leaf_cache_entries: int = 1024
    intercept_leaf_validity_s: float = 86400.0


DEFAULT_DNS_PASSTHROUGH = (".cluster.local",)


@dataclass(frozen=True, slots=True)
class DnsConfig:
    """How the DNS guard (`dns_listen`) answers; see docs/transparent.md."""

    passthrough: tuple[str, ...] = DEFAULT_DNS_PASSTHROUGH  # forwarded whatever the policy
    refusal: DnsRefusal = DnsRefusal.NXDOMAIN
    answer: DnsAnswer = DnsAnswer.FORWARD
    proxy_addresses: tuple[str, ...] = ()  # dns_answer: proxy: the addresses to answer with
    proxy_ttl_s: int = 30  # TTL of those synthesized answers (DNS TTLs are whole seconds)


@dataclass(frozen=True, slots=True)
class Config:
    """The whole validated configuration of one egressgate process."""

    source: str = "<built-in default>"
    listen: ListenAddress = field(default_factory=lambda: ListenAddress.parse(DEFAULT_LISTEN))
    admin_listen: ListenAddress | None = field(
        default_factory=lambda: ListenAddress.parse(DEFAULT_ADMIN_LISTEN)
    )
    tls_listen: TlsListenConfig | None = None
    # Transparent listener (docs/transparent.md): connections redirected by the kernel
    # (nftables/iptables REDIRECT), routed by their TLS SNI or HTTP Host.
    transparent_listen: ListenAddress | None = None
    # A SOCKS5 listener (proxy/socks.py): the same policies, users and clients rules.
    socks_listen: ListenAddress | None = None
    # TLS interception (docs/interception.md): off unless configured; policies list the hosts.
    tls_intercept: TlsInterceptConfig | None = None
    dns_listen: ListenAddress | None = None
    dns: DnsConfig = field(default_factory=DnsConfig)
    policies: tuple[PolicyConfig, ...] = (PolicyConfig(DEFAULT_POLICY_NAME),)
    default_policy: str = DEFAULT_POLICY_NAME
    clients: tuple[ClientRule, ...] = ()
    auth: AuthConfig | None = None
    hosts_file: str | None = None
    nameservers: tuple[str, ...] = ()
    access_log: str = "-"
    workers: int = 1
    forwarded_for: bool = False
    # A reload that denies a destination also ends the open tunnels and requests to it
    # (proxy/revoke.py); false: they run on under the policy they were opened with.
    reload_revokes: bool = True
    limits: Limits = field(default_factory=Limits)

    def policy(self, name: str) -> PolicyConfig:
        for policy in self.policies:
            if policy.name == name:
                return policy
        raise KeyError(name)
