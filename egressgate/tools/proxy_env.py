"""The proxy settings an application needs to use egressgate, built to mean the same everywhere.

This module owns `egressgate env`'s logic: validating the proxy URL against what the measured
runtimes accept (reference/noproxy), composing a NO_PROXY value that every measured runtime
reads the same way, the JVM system properties Java needs instead (it ignores the variables),
rendering all of it as shell, dotenv, Kubernetes, Docker or JSON, and `lint_env()`, which checks
an existing environment (letter case of the variables, proxy URL, NO_PROXY) for the later
`verify` command. Pure: no I/O beyond loading the packaged measurements.
"""

from __future__ import annotations

import ipaddress
import json
import posixpath
import re
import shlex
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import SplitResult, urlsplit

import yaml

from egressgate.tools import noproxy
from egressgate.tools.noproxy import Finding, Severity

DEFAULT_NO_PROXY = ("localhost", "127.0.0.1", "::1", ".svc", ".cluster.local")
EXPAND_LIMIT = 256
FORMATS = (
    "shell",
    "dotenv",
    "k8s",
    "docker",
    "env-file",
    "json",
    "ssh-config",
    "systemd",
    "docker-daemon",
)
VARIABLE_ORDER = ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy")

# RFC 3986 userinfo characters that need no percent-encoding (':' separates user and password).
_USERINFO_OK = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,;=:%]*")
_HOSTNAME = re.compile(r"[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?)*")


class ProxyEnvError(ValueError):
    """A setting egressgate env cannot turn into a working configuration."""


class ProxyUrlError(ProxyEnvError):
    """The proxy URL is unusable (the message is one line, fit for the command line)."""


@dataclass(frozen=True, slots=True)
class ProxyUrl:
    """A validated proxy URL."""

    scheme: str
    host: str  # lowercase; IPv6 without brackets
    port: int
    userinfo: str | None  # as written (percent-encoding kept)

    @property
    def netloc_host(self) -> str:
        return f"[{self.host}]" if ":" in self.host else self.host

    @property
    def url(self) -> str:
        auth = f"{self.userinfo}@" if self.userinfo else ""
        return f"{self.scheme}://{auth}{self.netloc_host}:{self.port}"


@dataclass(frozen=True, slots=True)
class JavaSettings:
    """JVM system properties equivalent to the variables (Java ignores the variables)."""

    properties: tuple[tuple[str, str], ...]

    @property
    def tool_options(self) -> str:
        # JAVA_TOOL_OPTIONS is split on whitespace by the JVM; no value here contains any.
        return " ".join(f"-D{name}={value}" for name, value in self.properties)


# TLS interception (docs/interception.md): how each measured runtime is told to trust the CA.
# These REPLACE the runtime's CA store, so the file must also hold the public CAs (for hosts
# that are tunnelled, not intercepted): `egressgate ca init` writes bundle.pem for that.
CA_REPLACING_VARIABLES = (
    "SSL_CERT_FILE",  # OpenSSL's default file: curl (OpenSSL builds), httpx, Go, Ruby, git
    "REQUESTS_CA_BUNDLE",  # Python requests (certifi otherwise), pip's vendored requests
    "CURL_CA_BUNDLE",  # curl, and requests when REQUESTS_CA_BUNDLE is unset
    "GIT_SSL_CAINFO",  # git over HTTPS
    "PIP_CERT",  # pip --cert
)
# This one ADDS to Node's built-in store.
CA_ADDING_VARIABLES = ("NODE_EXTRA_CA_CERTS",)
_PEM_CERT = b"-----BEGIN CERTIFICATE-----"


@dataclass(frozen=True, slots=True)
class CaTrust:
    """The variables that make runtimes trust egressgate's interception CA (`--ca FILE`)."""

    file: str  # the path as the application sees it
    warnings: tuple[str, ...] = ()
    # The CA certificate alone, for keytool, which imports only a file's FIRST certificate:
    # for ca init's bundle.pem (public CAs first), the ca.crt written next to it.
    cert_file: str | None = None

    @property
    def variables(self) -> tuple[tuple[str, str], ...]:
        return tuple((name, self.file) for name in CA_REPLACING_VARIABLES + CA_ADDING_VARIABLES)

    @property
    def keytool(self) -> str:
        """The JVM reads no variable for a CA: the command that imports it into a truststore."""
        cert = self.cert_file or self.file
        return (
            f"keytool -importcert -noprompt -alias egressgate -file {shlex.quote(cert)} "
            '-keystore "$JAVA_HOME/lib/security/cacerts" -storepass changeit'
        )


def ca_trust(path: str, pem: bytes | None = None) -> CaTrust:
    """Check `--ca FILE` (and its content `pem` when this machine can read it). Raises
    ProxyEnvError for an unusable path or a file without a certificate."""
    if not path.strip() or any(c in path for c in "\n\r\0"):
        raise ProxyEnvError(f"--ca {path!r}: give the path of a PEM file")
    beside = posixpath.join(posixpath.dirname(path), "ca.crt")
    if pem is None:
        return CaTrust(path, cert_file=beside if path.endswith("bundle.pem") else path)
    count = pem.count(_PEM_CERT)
    if count == 0:
        raise ProxyEnvError(f"--ca {path}: holds no PEM certificate")
    if count > 1:
        return CaTrust(path, cert_file=beside)
    return CaTrust(
        path,
        (
            f"--ca {path} holds one certificate: {', '.join(CA_REPLACING_VARIABLES)} replace "
            "the runtime's CA store, so every host that is tunnelled (not intercepted) would "
            "fail to verify. Give the bundle.pem of `egressgate ca init` (the system's CAs plus "
            "this CA) instead",
        ),
        cert_file=path,
    )


@dataclass(frozen=True, slots=True)
class ProxyEnv:
    """Everything `egressgate env` prints."""

    proxy: ProxyUrl
    no_proxy: str
    java: JavaSettings
    warnings: tuple[str, ...]
    socks: ProxyUrl | None = None  # egressgate's SOCKS5 listener (socks5h://): ALL_PROXY
    ca: CaTrust | None = None  # the interception CA (--ca)

    def with_ca(self, ca: CaTrust) -> ProxyEnv:
        """The same settings plus the variables that make runtimes trust the CA."""
        return replace(self, ca=ca, warnings=self.warnings + ca.warnings)

    def with_socks(self, socks: ProxyUrl, warnings: Sequence[str] = ()) -> ProxyEnv:
        """The same settings plus ALL_PROXY/all_proxy and the JVM's SOCKS pair."""
        java = JavaSettings(self.java.properties + socks_java_properties(socks))
        return replace(self, socks=socks, java=java, warnings=self.warnings + tuple(warnings))

    @property
    def entries(self) -> tuple[str, ...]:
        return tuple(self.no_proxy.split(","))

    @property
    def variables(self) -> tuple[tuple[str, str], ...]:
        values = {"proxy": self.proxy.url, "no": self.no_proxy}
        pairs = tuple(
            (n, values["no" if n.lower() == "no_proxy" else "proxy"]) for n in VARIABLE_ORDER
        )
        if self.socks is not None:
            # Both cases, like the others: curl, git, pip, requests, httpx and axios read both
            # (reference/noproxy); the scheme's own variable wins where both are set.
            pairs += (("ALL_PROXY", self.socks.url), ("all_proxy", self.socks.url))
        if self.ca is not None:
            pairs += self.ca.variables
        return pairs

    def as_dict(self, *, java: bool = True) -> dict[str, str]:
        out = dict(self.variables)
        if java:
            out["JAVA_TOOL_OPTIONS"] = self.java.tool_options
        return out


# -- proxy URL --------------------------------------------------------------------------------


def _runtimes_where(predicate: Callable[[noproxy.ProxyUrlHandling], bool]) -> list[str]:
    return [rt.id for rt in noproxy.env_readers() if rt.proxy_url and predicate(rt.proxy_url)]


def parse_proxy_url(text: str) -> tuple[ProxyUrl, list[str]]:
    """Validate a proxy URL; return it with warnings. Raises ProxyUrlError (one-line message)."""
    raw = text.strip()
    if not raw or any(c.isspace() for c in raw):
        raise ProxyUrlError(f"proxy URL {text!r} is empty or contains spaces")
    if "://" not in raw:
        rejects = ", ".join(_runtimes_where(lambda p: p.no_scheme_http == "error"))
        raise ProxyUrlError(
            f"proxy URL {raw!r} has no scheme: write http://{raw} ({rejects} reject it without)"
        )
    parts = urlsplit(raw)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise ProxyUrlError(
            f"proxy URL scheme {scheme!r} is not supported: egressgate is an HTTP proxy, "
            "use http://HOST:PORT"
        )
    host, port = _host_and_port(parts, raw)
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ProxyUrlError(f"proxy URL {raw!r} must not have a path, query or fragment")
    userinfo = _userinfo(parts, raw)
    proxy = ProxyUrl(scheme=scheme, host=host, port=port, userinfo=userinfo)
    warnings = _https_warnings(proxy) + _credential_warnings(proxy)
    return proxy, warnings


def _host_and_port(parts: SplitResult, raw: str) -> tuple[str, int]:
    try:
        port = parts.port
    except ValueError:
        raise ProxyUrlError(f"proxy URL {raw!r} has an invalid port") from None
    host = (parts.hostname or "").lower()
    if not host:
        raise ProxyUrlError(f"proxy URL {raw!r} has no host")
    if port is None:
        raise ProxyUrlError(
            f"proxy URL {raw!r} has no port: give it explicitly (e.g. :3128), "
            "clients disagree on the default"
        )
    if not 0 < port < 65536:
        raise ProxyUrlError(f"proxy URL {raw!r} has a port out of range")
    if not _is_ip(host) and not _HOSTNAME.fullmatch(host):
        raise ProxyUrlError(f"proxy URL {raw!r} has an invalid host {host!r}")
    return host, port


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _userinfo(parts: SplitResult, raw: str) -> str | None:
    netloc = parts.netloc
    if "@" not in netloc:
        return None
    userinfo = netloc.rpartition("@")[0]
    if "@" in userinfo or not _USERINFO_OK.fullmatch(userinfo):
        raise ProxyUrlError(
            "proxy credentials contain characters that must be percent-encoded "
            "(e.g. '@' as %40, '/' as %2F, '#' as %23)"
        )
    return userinfo


_HTTPS_PROXY_BEHAVIOUR = {
    ("tls", "tls"): "open TLS to the proxy",
    ("plain", "plain"): "speak plain HTTP to it anyway",
    ("direct", "direct"): "silently connect directly",
    ("error", "error"): "fail",
    ("error", "plain"): "fail for http:// URLs and speak plain HTTP for https:// URLs",
}


def _https_warnings(proxy: ProxyUrl) -> list[str]:
    if proxy.scheme != "https":
        return []
    groups: dict[str, list[str]] = {}
    for rt in noproxy.env_readers():
        if rt.proxy_url is None:
            continue
        key = (rt.proxy_url.https_scheme_http, rt.proxy_url.https_scheme_https)
        text = _HTTPS_PROXY_BEHAVIOUR.get(key, f"do {key[0]} / {key[1]} (http/https URLs)")
        groups.setdefault(text, []).append(rt.id)
    parts = [f"{_names_of(ids)}: {text}" for text, ids in groups.items()]
    return [
        "https:// proxy URL (measured): " + "; ".join(parts) + "; the Java properties always "
        "mean a plain-HTTP proxy. Use http:// unless every client opens TLS to the proxy"
    ]


def _credential_warnings(proxy: ProxyUrl) -> list[str]:
    if not proxy.userinfo:
        return []
    warnings = [
        "Java: the JVM properties carry no credentials; the application needs an "
        "Authenticator, and -Djdk.http.auth.tunneling.disabledSchemes= to allow Basic for CONNECT"
    ]
    if "%" in proxy.userinfo:
        raw = ", ".join(_runtimes_where(lambda p: p.credentials == "raw"))
        warnings.insert(
            0,
            f"credentials contain percent-encoding: {raw} send them still encoded (measured); "
            "prefer a user name and password made of letters, digits and -._~",
        )
    return warnings


# -- NO_PROXY ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NoProxyItem:
    """One NO_PROXY item being composed: entries for the variable and for Java."""

    entries: tuple[str, ...]
    java: tuple[str, ...]
    warnings: tuple[str, ...] = ()


def _names_of(ids: Iterable[str]) -> str:
    return ", ".join(ids)


def normalise_extra(text: str, expand_limit: int = EXPAND_LIMIT) -> NoProxyItem:
    """One --no-proxy item → entries every runtime reads alike. Raises ProxyEnvError."""
    raw = text.strip().lower()
    if raw in ("", "*"):
        why = "`*` dropped: to bypass the proxy entirely, do not set the proxy variables"
        return NoProxyItem((), (), (why,) if raw else ())
    if "://" in raw:
        host = urlsplit(raw).hostname
        if not host:
            raise ProxyEnvError(f"--no-proxy {text!r}: no host in this URL")
        item = normalise_extra(host, expand_limit)
        return NoProxyItem(item.entries, item.java, (f"{text!r}: only its host is used",))
    if "/" in raw:
        return normalise_cidr(raw, expand_limit)
    entry = noproxy.parse_entry(raw)
    if entry.port is not None:
        return _without_port(text, entry, expand_limit)
    return _host_item(text, entry)


def _without_port(text: str, entry: noproxy.Entry, expand_limit: int) -> NoProxyItem:
    never = [r.id for r in noproxy.env_readers() if r.no_proxy and r.no_proxy.host_port == "never"]
    suffix = entry.kind in (noproxy.EntryKind.DOTTED, noproxy.EntryKind.WILDCARD)
    host = "." + entry.host if suffix else entry.host
    item = normalise_extra(host, expand_limit)
    why = f"{text!r}: port dropped ({_names_of(never)} never match host:port entries)"
    return NoProxyItem(item.entries, item.java, (*item.warnings, why))


def _host_item(text: str, entry: noproxy.Entry) -> NoProxyItem:
    kind = entry.kind
    if kind in (noproxy.EntryKind.IPV6, noproxy.EntryKind.IPV6_BRACKETED):
        # Bare form only: a bracketed entry makes httpx fail every request (measured + checked).
        return NoProxyItem((entry.host,), (f"[{entry.host}]",))
    if kind is noproxy.EntryKind.IPV4:
        return NoProxyItem((entry.host,), (entry.host,))
    if kind is noproxy.EntryKind.NAME:
        return NoProxyItem((entry.host,), (entry.host,))
    if kind in (noproxy.EntryKind.DOTTED, noproxy.EntryKind.WILDCARD):
        # The domain and its subdomains, spelled so that every runtime agrees: some do not
        # cover the apex with `.d`, some read `*.d` literally, the Node libs need the dot.
        return NoProxyItem((entry.host, "." + entry.host), (entry.host, "*." + entry.host))
    raise ProxyEnvError(f"--no-proxy {text!r}: not a host name, .domain, IP address or CIDR")


def normalise_cidr(text: str, expand_limit: int = EXPAND_LIMIT) -> NoProxyItem:
    """A CIDR → itself where every runtime tolerates it, plus individual addresses if small."""
    try:
        network = ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        raise ProxyEnvError(f"{text!r} is not a CIDR (e.g. 10.96.0.0/12)") from None
    if network.prefixlen < 8:
        # Such a "cluster" CIDR would send most of the Internet around the proxy.
        raise ProxyEnvError(f"{text!r} is too broad for NO_PROXY (prefix shorter than /8)")
    warnings: list[str] = []
    if str(network) != text.strip().lower():
        warnings.append(f"{text!r} has host bits set; using {network}")
    small = network.num_addresses <= expand_limit
    addresses = [str(a) for a in _addresses(network)] if small else []
    if network.version == 6:
        return _ipv6_cidr(network, addresses, warnings)
    if not small:
        warnings.append(_cidr_warning(network))
    java = _java_ipv4_globs(network, expand_limit)
    if java is None:
        warnings.append(f"{network}: too large to express in Java's http.nonProxyHosts")
        java = ()
    return NoProxyItem((str(network), *addresses), java, tuple(warnings))


def _addresses(network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> list[Any]:
    # Every address, network and broadcast included: cheap, and Java's list matches it.
    return list(network)


def _ipv6_cidr(
    network: ipaddress.IPv6Network | ipaddress.IPv4Network,
    addresses: Sequence[str],
    warnings: list[str],
) -> NoProxyItem:
    # Never the CIDR itself: httpx 0.28.1 raises InvalidURL for every request when NO_PROXY
    # holds an IPv6 CIDR (checked against httpx itself; see the data file's basis).
    broken = [r.id for r in noproxy.env_readers() if r.no_proxy and r.no_proxy.ipv6_cidr == "error"]
    if addresses:
        return NoProxyItem(tuple(addresses), tuple(f"[{a}]" for a in addresses), tuple(warnings))
    warnings.append(
        f"{network}: left out of NO_PROXY (an IPv6 CIDR makes {_names_of(broken)} fail every "
        "request, and most runtimes ignore IPv6 CIDRs); its traffic goes through the proxy. "
        "Add the addresses workloads reach directly with --no-proxy"
    )
    return NoProxyItem((), (), tuple(warnings))


def _cidr_warning(network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> str:
    readers = [r for r in noproxy.env_readers() if r.no_proxy is not None]
    ignore = [r.id for r in readers if r.no_proxy and r.no_proxy.cidr == "ignored"]
    cut = [r.id for r in readers if r.no_proxy and r.no_proxy.cidr == "first_address"]
    return (
        f"{network}: too large to list address by address. CIDRs are ignored by "
        f"{_names_of(ignore)}, and {network} is reduced to {network.network_address} by "
        f"{_names_of(cut)}: those send its traffic to the proxy. Add the addresses workloads "
        "reach by IP (API server, node IPs) with --no-proxy"
    )


def _java_ipv4_globs(
    network: ipaddress.IPv4Network | ipaddress.IPv6Network, limit: int
) -> tuple[str, ...] | None:
    """Java's nonProxyHosts has no CIDRs; `10.96.*` globs cover octet-aligned blocks."""
    if network.version != 4:
        return None
    aligned = -(-network.prefixlen // 8) * 8  # round up to an octet boundary
    if aligned == 32:
        addresses = list(network) if network.num_addresses <= limit else None
        return None if addresses is None else tuple(str(a) for a in addresses)
    blocks = list(network.subnets(new_prefix=aligned)) if aligned > network.prefixlen else [network]
    if len(blocks) > limit:
        return None
    octets = aligned // 8
    if octets == 0:
        return ("*",)
    return tuple(".".join(str(b.network_address).split(".")[:octets]) + ".*" for b in blocks)


def compose_no_proxy(
    extra: Sequence[str] = (),
    cluster_cidrs: Sequence[str] = (),
    *,
    defaults: Sequence[str] = DEFAULT_NO_PROXY,
    expand_limit: int = EXPAND_LIMIT,
) -> tuple[list[str], list[str], list[str]]:
    """NO_PROXY entries, Java nonProxyHosts patterns and warnings for the given items."""
    # The defaults are the measured portable spelling (leading dots, bare ::1): used as they are.
    items = [NoProxyItem(tuple(defaults), tuple(_java_default(d) for d in defaults))]
    items += [normalise_extra(e, expand_limit) for e in _split_items(extra)]
    items += [normalise_cidr(c, expand_limit) for c in _split_items(cluster_cidrs)]
    entries = _dedupe(e for item in items for e in item.entries)
    java = _dedupe(j for item in items for j in item.java)
    warnings = _dedupe(w for item in items for w in item.warnings)
    return entries, java, warnings


def _java_default(entry: str) -> str:
    if entry.startswith("."):
        return "*" + entry
    return f"[{entry}]" if ":" in entry else entry


def _split_items(items: Iterable[str]) -> list[str]:
    return [part for item in items for part in item.replace(" ", ",").split(",") if part]


def _dedupe(values: Iterable[str]) -> list[str]:
    seen: set[str] = set()
    out: list[str] = []
    for value in values:
        if value not in seen:
            seen.add(value)
            out.append(value)
    return out


# -- SOCKS5 (socks_listen) -----------------------------------------------------------------

SOCKS_SCHEMES = ("socks5h", "socks5")


def parse_socks_url(text: str) -> tuple[ProxyUrl, list[str]]:
    """Validate egressgate's SOCKS5 URL (socks5h://HOST:PORT); return it with warnings.

    `socks5h` makes clients send the name to the proxy, which judges and resolves it. `socks5`
    is accepted with a warning: clients resolve the name themselves and send an address, which
    only an IP/CIDR allowlist entry can allow. SOCKS4 is refused (egressgate speaks SOCKS5).
    """
    raw = text.strip()
    if not raw or any(c.isspace() for c in raw):
        raise ProxyUrlError(f"SOCKS URL {text!r} is empty or contains spaces")
    parts = urlsplit(raw if "://" in raw else f"socks5h://{raw}")
    scheme = parts.scheme.lower()
    if scheme not in SOCKS_SCHEMES:
        raise ProxyUrlError(
            f"SOCKS URL scheme {scheme!r} is not supported: egressgate speaks SOCKS5, "
            "use socks5h://HOST:PORT"
        )
    host, port = _host_and_port(parts, raw)
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ProxyUrlError(f"SOCKS URL {raw!r} must not have a path, query or fragment")
    proxy = ProxyUrl(scheme=scheme, host=host, port=port, userinfo=_userinfo(parts, raw))
    warnings = []
    if scheme == "socks5":
        warnings.append(
            "socks5:// makes clients resolve names themselves and send the proxy an address: "
            "the hostname allowlist cannot match it. Use socks5h://"
        )
    if proxy.userinfo:
        warnings.append(
            "SOCKS5 has no TLS to the proxy: the user name and password cross the network in "
            "clear text (docs/socks.md#security-notes)"
        )
    return proxy, warnings


def socks_java_properties(socks: ProxyUrl) -> tuple[tuple[str, str], ...]:
    """The JVM's SOCKS pair (every socket without an HTTP proxy of its own goes through it)."""
    return (("socksProxyHost", socks.host), ("socksProxyPort", str(socks.port)))


def ssh_config(socks: ProxyUrl, host_pattern: str = "*") -> str:
    """An ssh_config(5) Host block that reaches SSH servers through the SOCKS5 listener with
    OpenBSD netcat (Debian's netcat-openbsd): `nc -X 5` sends the name, the proxy judges it."""
    return (
        f"Host {host_pattern}\n    ProxyCommand nc -X 5 -x {socks.netloc_host}:{socks.port} %h %p\n"
    )


def ssh_config_warnings(socks: ProxyUrl) -> list[str]:
    if socks.userinfo:
        return [
            "nc -X 5 cannot send a SOCKS user name and password: select SSH clients by "
            "`source` in the clients rules, or leave auth off for socks_listen's clients"
        ]
    return []


# -- the whole environment --------------------------------------------------------------------


def build_env(
    proxy_url: str,
    no_proxy_extra: Sequence[str] = (),
    cluster_cidrs: Sequence[str] = (),
    *,
    expand_limit: int = EXPAND_LIMIT,
) -> ProxyEnv:
    """The variables, Java properties and warnings for apps that should use `proxy_url`.

    NO_PROXY = localhost, 127.0.0.1, ::1, .svc, .cluster.local, then the extras (suffixes as
    both `d` and `.d`), then each CIDR plus, when it has at most `expand_limit` addresses, each
    address (several runtimes ignore CIDRs). Raises ProxyUrlError / ProxyEnvError.
    """
    proxy, warnings = parse_proxy_url(proxy_url)
    entries, java_hosts, more = compose_no_proxy(
        no_proxy_extra, cluster_cidrs, expand_limit=expand_limit
    )
    value = ",".join(entries)
    warnings += more
    warnings += [f.message for f in noproxy.lint(value) if f.severity is Severity.ERROR]
    return ProxyEnv(
        proxy=proxy,
        no_proxy=value,
        java=_java(proxy, java_hosts),
        warnings=tuple(warnings),
    )


def _java(proxy: ProxyUrl, non_proxy_hosts: Sequence[str]) -> JavaSettings:
    port = str(proxy.port)
    return JavaSettings(
        properties=(
            ("http.proxyHost", proxy.host),
            ("http.proxyPort", port),
            ("https.proxyHost", proxy.host),
            ("https.proxyPort", port),
            # One list for both schemes: the JVM has no https.nonProxyHosts.
            ("http.nonProxyHosts", "|".join(non_proxy_hosts)),
        )
    )


# -- rendering --------------------------------------------------------------------------------

_DOTENV_SAFE = re.compile(r"[A-Za-z0-9_./:,@%+=\-\[\]]*")


def render(env: ProxyEnv, fmt: str, *, java: bool = True) -> str:
    """Render as shell | dotenv | k8s | docker | env-file | json (ends with a newline)."""
    if fmt == "json":
        return json.dumps(to_json(env, java=java), indent=2) + "\n"
    if fmt == "ssh-config":
        if env.socks is None:
            raise ValueError("--format ssh-config needs a SOCKS URL (--socks socks5h://HOST:PORT)")
        return ssh_config(env.socks)
    if fmt == "systemd":
        return systemd_drop_in(env)
    if fmt == "docker-daemon":
        return docker_daemon(env)
    return render_values(env.as_dict(java=java), fmt)


def render_ca(ca: CaTrust, fmt: str) -> str:
    """Only the CA variables (`egressgate env --ca FILE` without --proxy: transparent mode)."""
    if fmt == "json":
        doc = {"variables": dict(ca.variables), "ca": _ca_json(ca), "warnings": list(ca.warnings)}
        return json.dumps(doc, indent=2) + "\n"
    return render_values(dict(ca.variables), fmt)


def render_values(values: Mapping[str, str], fmt: str) -> str:
    """Variables as shell | dotenv | k8s | docker | env-file (ends with a newline)."""
    if fmt == "shell":
        return "".join(f"export {k}={shlex.quote(v)}\n" for k, v in values.items())
    if fmt == "dotenv":
        return "".join(f"{k}={_dotenv_quote(v)}\n" for k, v in values.items())
    if fmt == "env-file":
        # docker --env-file takes everything after '=' literally: no quoting at all.
        return "".join(f"{k}={v}\n" for k, v in values.items())
    if fmt == "docker":
        return " ".join(f"-e {shlex.quote(f'{k}={v}')}" for k, v in values.items()) + "\n"
    if fmt == "k8s":
        # Kubernetes expands $(VAR) in env values; $$ is its escape for a literal $.
        doc = {"env": [{"name": k, "value": v.replace("$", "$$")} for k, v in values.items()]}
        return yaml.safe_dump(doc, sort_keys=False, default_flow_style=False)
    raise ValueError(f"unknown format {fmt!r}: one of {', '.join(FORMATS)}")


_SYSTEMD_HEADER = """\
# systemd drop-in: the proxy for a node's container runtime and kubelet, rendered by
# `egressgate env --format systemd`. Install it for each unit that pulls images or must reach
# the internet, e.g. /etc/systemd/system/containerd.service.d/http-proxy.conf (also
# docker.service.d/, kubelet.service.d/), then: systemctl daemon-reload; systemctl restart UNIT.
# Keep etcd and the API server off the proxy: never give their units (or static pod manifests)
# this drop-in, and keep the API server's address, the node network and the cluster CIDRs in
# NO_PROXY (the kubelet and the runtime talk to them directly).
[Service]
"""


def systemd_drop_in(env: ProxyEnv) -> str:
    """A systemd drop-in with one Environment= line per variable (no Java: no JVM here)."""
    lines = [f'Environment="{_systemd_quote(f"{k}={v}")}"\n' for k, v in env.variables]
    return _SYSTEMD_HEADER + "".join(lines)


def _systemd_quote(text: str) -> str:
    # Inside "...": backslash and double quote are C-style escapes; % starts a specifier.
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%")


def docker_daemon(env: ProxyEnv) -> str:
    """The `proxies` block of /etc/docker/daemon.json (Docker Engine 23 and later), which the
    daemon uses to pull images; merge it into an existing daemon.json."""
    proxies = {"http-proxy": env.proxy.url, "https-proxy": env.proxy.url, "no-proxy": env.no_proxy}
    return json.dumps({"proxies": proxies}, indent=2) + "\n"


def _dotenv_quote(value: str) -> str:
    if _DOTENV_SAFE.fullmatch(value):
        return value
    if "'" not in value:
        return f"'{value}'"  # literal in docker compose and python-dotenv (no $ expansion)
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$")
    return f'"{escaped}"'


def to_json(env: ProxyEnv, *, java: bool = True) -> dict[str, Any]:
    """The JSON document of `egressgate env --format json`."""
    info = noproxy.matrix_info()
    doc: dict[str, Any] = {
        "proxy": env.proxy.url,
        "socks": env.socks.url if env.socks is not None else None,
        "variables": dict(env.variables),
        "no_proxy_entries": list(env.entries),
        "warnings": list(env.warnings),
        "measured": {"at": info.measured_at, "platform": info.platform, "source": info.source_path},
    }
    if java:
        doc["java"] = {
            "properties": dict(env.java.properties),
            "JAVA_TOOL_OPTIONS": env.java.tool_options,
        }
    if env.ca is not None:
        doc["ca"] = _ca_json(env.ca)
    return doc


def _ca_json(ca: CaTrust) -> dict[str, Any]:
    return {
        "file": ca.file,
        "replacing": list(CA_REPLACING_VARIABLES),
        "adding": list(CA_ADDING_VARIABLES),
        "java_truststore": ca.keytool,
    }


# -- checking an existing environment ---------------------------------------------------------

_PAIRS = (("http_proxy", "HTTP_PROXY"), ("https_proxy", "HTTPS_PROXY"), ("no_proxy", "NO_PROXY"))


_PROXY_NAMES = ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY")


def lint_env(env: Mapping[str, str]) -> list[Finding]:
    """Problems with the proxy variables of `env`: letter case, proxy URL, NO_PROXY value."""
    findings: list[Finding] = []
    for lower, upper in _PAIRS:
        findings += _lint_pair(env, lower, upper)
    findings += _lint_https_missing(env)
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY"):
        if env.get(name):
            findings += _lint_proxy_value(name, env[name])
    no_proxy = env.get("no_proxy") or env.get("NO_PROXY") or ""
    proxied = any(env.get(name) for name in _PROXY_NAMES)
    if not proxied:
        findings.append(_NO_PROXY_SET)
    if proxied or no_proxy.strip():  # an empty NO_PROXY with no proxy: nothing to judge
        findings += noproxy.lint(no_proxy)
    order = {Severity.ERROR: 0, Severity.WARNING: 1, Severity.INFO: 2}
    return sorted(_dedupe_findings(findings), key=lambda f: order[f.severity])


# Fix (issue 18): an environment without any proxy variable was linted as NO_PROXY="" behind a
# proxy, and warned that loopback traffic goes to the proxy, when nothing goes to any proxy.
_NO_PROXY_SET = Finding(
    Severity.INFO,
    "no-proxy-set",
    "no proxy variable is set (http_proxy, https_proxy, all_proxy in either case): "
    "every runtime connects directly and NO_PROXY has no effect",
    'point this shell at the proxy: eval "$(egressgate env --proxy http://HOST:3128)"',
)


def _dedupe_findings(findings: Iterable[Finding]) -> list[Finding]:
    seen: set[tuple[str, str]] = set()
    out = []
    for f in findings:
        if (f.code, f.message) not in seen:
            seen.add((f.code, f.message))
            out.append(f)
    return out


def _readers_of(name: str, kind: str) -> list[str]:
    out = []
    for rt in noproxy.env_readers():
        assert rt.variables is not None
        if name in getattr(rt.variables, kind):
            out.append(rt.id)
    return out


def _lint_pair(env: Mapping[str, str], lower: str, upper: str) -> list[Finding]:
    kind = {"http_proxy": "http", "https_proxy": "https", "no_proxy": "no_proxy"}[lower]
    low, up = env.get(lower), env.get(upper)
    if not low and not up:
        return []
    fix = f"set {lower} and {upper} to the same value"
    if low and up and low == up:
        return []
    if low and up:
        message = (
            f"{lower} and {upper} differ: {_names_of(_first_readers(lower, upper, kind))} use "
            f"{lower}, {_names_of(_first_readers(upper, lower, kind))} use {upper}"
        )
        return [Finding(Severity.ERROR, "case-mismatch", message, fix, lower)]
    have, missing = (lower, upper) if low else (upper, lower)
    blind = [r for r in _readers_of(missing, kind) if r not in _readers_of(have, kind)]
    if not blind:
        return []
    message = f"only {have} is set: {_names_of(blind)} read only {missing}"
    return [Finding(Severity.ERROR, "case-missing", message, fix, have, tuple(blind))]


def _first_readers(name: str, other: str, kind: str) -> list[str]:
    """Runtimes that use `name` when both spellings are set."""
    out = []
    for rt in noproxy.env_readers():
        assert rt.variables is not None
        names: Sequence[str] = getattr(rt.variables, kind)
        present = [n for n in names if n in (name, other)]
        if present and present[0] == name:
            out.append(rt.id)
    return out


def _lint_https_missing(env: Mapping[str, str]) -> list[Finding]:
    has_http = env.get("http_proxy") or env.get("HTTP_PROXY")
    has_https = env.get("https_proxy") or env.get("HTTPS_PROXY")
    if not has_http or has_https:
        return []
    fallback = [
        rt.id
        for rt in noproxy.env_readers()
        if rt.variables is not None and rt.variables.https_falls_back_to_http
    ]
    message = (
        f"https_proxy/HTTPS_PROXY unset: only {_names_of(fallback)} use the http proxy for "
        "https:// URLs; every other runtime connects directly"
    )
    fix = "set https_proxy and HTTPS_PROXY to the same proxy URL"
    return [Finding(Severity.ERROR, "https-missing", message, fix, "HTTPS_PROXY")]


def _lint_proxy_value(name: str, value: str) -> list[Finding]:
    try:
        _, warnings = parse_proxy_url(value)
    except ProxyUrlError as exc:
        return [Finding(Severity.ERROR, "proxy-url", f"{name}: {exc}", "fix the URL", name)]
    return [
        Finding(Severity.WARNING, "proxy-url", f"{name}: {w}", "see the message", name)
        for w in warnings
    ]
