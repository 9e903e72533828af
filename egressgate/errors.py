"""The exception tree and the stable reason codes of egressgate. Imports nothing from egressgate.

    EgressgateError
    ├── ConfigError            a config file is invalid (carries every ConfigIssue found)
    └── ProxyFailure           a request/tunnel ends with an HTTP error response (carries a Reason)
        ├── Refused            policy said no (403), or the client must authenticate (407)
        ├── ProtocolError      the client's bytes are not acceptable HTTP (400/414/431/501)
        ├── ResolveError       the destination name could not be resolved (502/504)
        └── UpstreamError      connecting to / talking with the destination failed (502/504)

Every refusal or failure has exactly one `Reason`: a stable machine-readable code that appears in
the `X-Egressgate-Reason` response header, the access log and the metrics labels, with the HTTP
status it maps to and a short human text. Only `proxy/refusal.py` turns these into bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Reason(StrEnum):
    """Why a request was refused or failed (or, for ALLOWED/REPORTED, why it went through)."""

    # Decisions that let traffic through.
    ALLOWED = "allowed"
    REPORTED = "report-only"  # report mode: enforce would have refused; the reason is logged too

    # Policy refusals: 403.
    HOST_NOT_ALLOWED = "host-not-allowed"
    PORT_NOT_ALLOWED = "port-not-allowed"
    IP_LITERAL_NOT_ALLOWED = "ip-literal-not-allowed"
    PRIVATE_ADDRESS = "private-address"
    SNI_MISMATCH = "sni-mismatch"
    SNI_NOT_ALLOWED = "sni-not-allowed"
    SNI_MISSING = "sni-missing"
    SNI_UNREADABLE = "sni-unreadable"
    NO_POLICY = "no-policy"
    # Transparent listener: no SNI, not HTTP, and the original destination is no listed IP.
    NO_DESTINATION_NAME = "no-destination-name"
    DNS_QUERY_TYPE_REFUSED = "dns-query-type-refused"  # the DNS guard never forwards this type
    # TLS interception (docs/interception.md): a request inside an intercepted tunnel.
    RULE_NOT_MATCHED = "rule-not-matched"  # no rule of the intercepted host allows it
    PATH_AMBIGUOUS = "path-ambiguous"  # its path cannot be judged unambiguously
    SECRET_LEAK = "secret-leak"  # it carries an injected secret on a leg not its own
    # Authentication: 407.
    AUTH_REQUIRED = "proxy-auth-required"
    # Malformed or unsupported requests: 4xx / 501.
    BAD_REQUEST = "bad-request"
    NOT_A_PROXY_REQUEST = "not-a-proxy-request"
    UNSUPPORTED_SCHEME = "unsupported-scheme"
    URI_TOO_LONG = "uri-too-long"
    HEADERS_TOO_LARGE = "headers-too-large"
    SMUGGLING = "request-smuggling"
    HEADER_TIMEOUT = "header-timeout"
    UNSUPPORTED_METHOD = "unsupported-method"
    # SOCKS: what the SOCKS5 listener does not speak (reply codes in socks/protocol.py).
    SOCKS_VERSION_UNSUPPORTED = "socks-version-unsupported"
    SOCKS_COMMAND_UNSUPPORTED = "socks-command-unsupported"
    SOCKS_ADDRESS_TYPE_UNSUPPORTED = "socks-address-type-unsupported"
    # Overload: 503.
    TOO_MANY_CONNECTIONS = "too-many-connections"
    SHUTTING_DOWN = "shutting-down"
    TLS_HANDSHAKE_FAILED = "tls-handshake-failed"
    DNS_OVERLOADED = "dns-overloaded"  # the DNS guard's upstream queries in flight are at the cap
    # Upstream failures: 502 / 504.
    DNS_NXDOMAIN = "dns-nxdomain"
    DNS_NO_ADDRESS = "dns-no-address"
    DNS_FAILURE = "dns-failure"
    DNS_TIMEOUT = "dns-timeout"
    UPSTREAM_REFUSED = "upstream-refused"
    UPSTREAM_UNREACHABLE = "upstream-unreachable"
    UPSTREAM_TIMEOUT = "upstream-timeout"
    UPSTREAM_RESET = "upstream-reset"
    UPSTREAM_BAD_RESPONSE = "upstream-bad-response"
    UPSTREAM_ERROR = "upstream-error"
    # TLS interception: the origin's certificate did not verify (never a silent downgrade).
    UPSTREAM_BAD_CERTIFICATE = "upstream-bad-certificate"

    @property
    def status(self) -> int:
        return _STATUS[self]

    @property
    def text(self) -> str:
        return _TEXT[self]

    @property
    def is_policy(self) -> bool:
        """True for refusals decided by policy (403/407), as opposed to errors and failures."""
        return _STATUS[self] in (403, 407)


_STATUS: dict[Reason, int] = {
    Reason.ALLOWED: 200,
    Reason.REPORTED: 200,
    Reason.HOST_NOT_ALLOWED: 403,
    Reason.PORT_NOT_ALLOWED: 403,
    Reason.IP_LITERAL_NOT_ALLOWED: 403,
    Reason.PRIVATE_ADDRESS: 403,
    Reason.SNI_MISMATCH: 403,
    Reason.SNI_NOT_ALLOWED: 403,
    Reason.SNI_MISSING: 403,
    Reason.SNI_UNREADABLE: 403,
    Reason.NO_POLICY: 403,
    Reason.NO_DESTINATION_NAME: 403,
    Reason.DNS_QUERY_TYPE_REFUSED: 403,
    Reason.RULE_NOT_MATCHED: 403,
    Reason.PATH_AMBIGUOUS: 403,
    Reason.SECRET_LEAK: 403,
    Reason.AUTH_REQUIRED: 407,
    Reason.BAD_REQUEST: 400,
    Reason.NOT_A_PROXY_REQUEST: 400,
    Reason.UNSUPPORTED_SCHEME: 400,
    Reason.URI_TOO_LONG: 414,
    Reason.HEADERS_TOO_LARGE: 431,
    Reason.SMUGGLING: 400,
    Reason.HEADER_TIMEOUT: 408,
    Reason.UNSUPPORTED_METHOD: 501,
    Reason.SOCKS_VERSION_UNSUPPORTED: 400,
    Reason.SOCKS_COMMAND_UNSUPPORTED: 501,
    Reason.SOCKS_ADDRESS_TYPE_UNSUPPORTED: 400,
    Reason.TOO_MANY_CONNECTIONS: 503,
    Reason.SHUTTING_DOWN: 503,
    Reason.TLS_HANDSHAKE_FAILED: 400,
    Reason.DNS_OVERLOADED: 503,
    Reason.DNS_NXDOMAIN: 502,
    Reason.DNS_NO_ADDRESS: 502,
    Reason.DNS_FAILURE: 502,
    Reason.DNS_TIMEOUT: 504,
    Reason.UPSTREAM_REFUSED: 502,
    Reason.UPSTREAM_UNREACHABLE: 502,
    Reason.UPSTREAM_TIMEOUT: 504,
    Reason.UPSTREAM_RESET: 502,
    Reason.UPSTREAM_BAD_RESPONSE: 502,
    Reason.UPSTREAM_ERROR: 502,
    Reason.UPSTREAM_BAD_CERTIFICATE: 502,
}

_TEXT: dict[Reason, str] = {
    Reason.ALLOWED: "allowed",
    Reason.REPORTED: "allowed in report mode",
    Reason.HOST_NOT_ALLOWED: "the destination host is not on the allowlist",
    Reason.PORT_NOT_ALLOWED: "the destination port is not allowed",
    Reason.IP_LITERAL_NOT_ALLOWED: "IP-address destinations are refused unless listed",
    Reason.PRIVATE_ADDRESS: "the destination resolves to an internal or reserved address",
    Reason.SNI_MISMATCH: "the TLS server name differs from the CONNECT host",
    Reason.SNI_NOT_ALLOWED: "the TLS server name is not on the allowlist",
    Reason.SNI_MISSING: "the tunnel carries no TLS server name",
    Reason.SNI_UNREADABLE: "the tunnel's TLS ClientHello could not be read (too slow, too large "
    "or malformed)",
    Reason.NO_POLICY: "no policy applies to this client",
    Reason.NO_DESTINATION_NAME: "the connection names no destination (no TLS server name, "
    "not HTTP) and its original destination is not an allowed IP",
    Reason.DNS_QUERY_TYPE_REFUSED: "the DNS guard refuses this query type, class or opcode",
    Reason.RULE_NOT_MATCHED: "no request rule of this intercepted host allows this method and path",
    Reason.PATH_AMBIGUOUS: "the request path is ambiguous (an encoded slash, a backslash, '//', "
    "';' or a dot segment above the root): refused rather than guessed",
    Reason.SECRET_LEAK: "the request carries a secret the proxy injects for another host",
    Reason.AUTH_REQUIRED: "proxy authentication required",
    Reason.BAD_REQUEST: "malformed request",
    Reason.NOT_A_PROXY_REQUEST: "this is a forward proxy: send absolute-form requests or CONNECT",
    Reason.UNSUPPORTED_SCHEME: "only http:// URLs can be forwarded (use CONNECT for https)",
    Reason.URI_TOO_LONG: "request line too long",
    Reason.HEADERS_TOO_LARGE: "request header block too large",
    Reason.SMUGGLING: "ambiguous message framing refused",
    Reason.HEADER_TIMEOUT: "request headers not received in time",
    Reason.UNSUPPORTED_METHOD: "method not supported by this proxy",
    Reason.SOCKS_VERSION_UNSUPPORTED: "only SOCKS5 is supported (SOCKS4/4a is refused)",
    Reason.SOCKS_COMMAND_UNSUPPORTED: "only the SOCKS5 CONNECT command is supported",
    Reason.SOCKS_ADDRESS_TYPE_UNSUPPORTED: "unknown SOCKS5 address type",
    Reason.TOO_MANY_CONNECTIONS: "too many connections",
    Reason.SHUTTING_DOWN: "the proxy is shutting down",
    Reason.TLS_HANDSHAKE_FAILED: "the TLS handshake with the proxy failed (no response is sent)",
    Reason.DNS_OVERLOADED: "too many DNS queries are waiting for the upstream resolver",
    Reason.DNS_NXDOMAIN: "the destination name does not exist",
    Reason.DNS_NO_ADDRESS: "the destination name has no address",
    Reason.DNS_FAILURE: "the destination name could not be resolved",
    Reason.DNS_TIMEOUT: "resolving the destination name timed out",
    Reason.UPSTREAM_REFUSED: "the destination refused the connection",
    Reason.UPSTREAM_UNREACHABLE: "the destination is unreachable",
    Reason.UPSTREAM_TIMEOUT: "the destination did not answer in time",
    Reason.UPSTREAM_RESET: "the destination closed the connection",
    Reason.UPSTREAM_BAD_RESPONSE: "the destination sent an invalid response",
    Reason.UPSTREAM_ERROR: "error talking to the destination",
    Reason.UPSTREAM_BAD_CERTIFICATE: "the destination's TLS certificate did not verify",
}


class EgressgateError(Exception):
    """Root of egressgate's own exceptions."""


@dataclass(frozen=True, slots=True)
class ConfigIssue:
    """One problem in a config file, located as precisely as the YAML allows."""

    file: str
    line: int | None
    column: int | None
    message: str

    def __str__(self) -> str:
        where = self.file
        if self.line is not None:
            where += f":{self.line}"
            if self.column is not None:
                where += f":{self.column}"
        return f"{where}: {self.message}"


class ConfigError(EgressgateError):
    """A config file is invalid. Carries every issue found, not only the first."""

    def __init__(self, issues: list[ConfigIssue]) -> None:
        self.issues = issues
        super().__init__("\n".join(str(i) for i in issues))


class StartupError(EgressgateError):
    """The proxy cannot start for a reason outside the config text (a port in use, say)."""


class ProxyFailure(EgressgateError):
    """A request or tunnel ends with an HTTP error response described by `reason`."""

    def __init__(self, reason: Reason, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason.value}: {detail}" if detail else reason.value)


class Refused(ProxyFailure):
    """Policy refused the destination (403) or the client must authenticate (407)."""


class ProtocolError(ProxyFailure):
    """The client's bytes are not acceptable HTTP/1.x."""


class ResolveError(ProxyFailure):
    """Name resolution failed; reason is one of the DNS_* codes."""


class UpstreamError(ProxyFailure):
    """Connecting to or exchanging with the destination failed; reason is an UPSTREAM_* code."""
