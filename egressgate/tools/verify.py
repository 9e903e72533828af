"""`egressgate verify`: a checklist, run inside an application container, that the egress recipe
works there — the app's proxy variables, the proxy's reachability, allowed URLs through the
proxy, denied URLs refused by the proxy, and no way around the proxy.

This module owns the checks and their wording. It is a CLIENT tool: it opens sockets like an
application would (to the proxy, and once directly to prove that is blocked) and never imports
the proxy's own modules (egressgate.proxy, .net, .runtime). It is split in three:

* pure analysis, unit-tested with tables: `check_environment(env, ...)` (which variables are
  set, whether the proxy URL parses, what NO_PROXY makes each measured runtime do, using the
  model in `egressgate.tools.noproxy`), `parse_response_head`, the `classify_*` functions that
  turn a response or a socket error into a verdict, `render_text` / `render_json`;
* a little socket I/O: `probe_health`, `request_via_proxy`, `connect_direct` (blocking sockets,
  every call bounded by the per-check timeout);
* `run(options, env)`, which runs the checks in checklist order and returns a `Report`.
"""

from __future__ import annotations

import base64
import errno
import json
import socket
import ssl
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from egressgate import __version__
from egressgate.errors import Reason
from egressgate.tools import noproxy, proxy_env

DEFAULT_TIMEOUT_S = 3.0
REASON_HEADER = "X-Egressgate-Reason"  # the proxy's refusal headers (see proxy/refusal.py)
POLICY_HEADER = "X-Egressgate-Policy"
MAX_HEAD_BYTES = 64 * 1024
MAX_REFUSAL_BODY = 4096
USER_AGENT = f"egressgate-verify/{__version__}"

# The NO_PROXY entries every in-cluster app needs, each with a URL that shows what goes wrong
# without it (a request that should stay inside the cluster but is sent to the proxy, which
# refuses internal addresses).
REQUIRED_NO_PROXY = (
    (".svc", "http://my-service.my-namespace.svc/"),
    (".cluster.local", "http://my-service.my-namespace.svc.cluster.local/"),
    ("localhost", "http://localhost/"),
    ("127.0.0.1", "http://127.0.0.1/"),
)
# A stand-in proxy for "what would NO_PROXY do" questions: never contacted.
_PLACEHOLDER_PROXY = "http://proxy.invalid:3128"
_DEFAULT_PORTS = {"http": 80, "https": 443}


class Status(StrEnum):
    """The outcome of one check. Only FAIL changes the exit status."""

    PASS = "pass"
    FAIL = "fail"
    WARN = "warn"  # works, but some runtimes will misroute something: read the detail
    SKIP = "skip"


@dataclass(frozen=True, slots=True)
class Check:
    """One line of the checklist."""

    name: str  # stable id: env.HTTP_PROXY, proxy.reachable, allowed, denied, bypass, ...
    title: str  # what was checked, for people
    status: Status
    detail: str  # why it passed / failed / was skipped: precise enough to act on
    target: str | None = None  # the URL or HOST:PORT this check was about
    data: Mapping[str, Any] = field(default_factory=dict)  # machine-readable extras

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "status": str(self.status),
            "title": self.title,
            "detail": self.detail,
        }
        if self.target is not None:
            out["target"] = self.target
        out.update(self.data)
        return out


@dataclass(frozen=True, slots=True)
class Report:
    """Every check, in checklist order."""

    checks: tuple[Check, ...]

    @property
    def failed(self) -> bool:
        return any(c.status is Status.FAIL for c in self.checks)

    @property
    def exit_status(self) -> int:
        return 1 if self.failed else 0

    def count(self, status: Status) -> int:
        return sum(1 for c in self.checks if c.status is status)


@dataclass(frozen=True, slots=True)
class Options:
    """What to check (the command line of `egressgate verify`)."""

    allowed: tuple[str, ...] = ()
    denied: tuple[str, ...] = ()
    direct: str | None = None  # HOST:PORT; default: the first allowed/denied URL's host and port
    timeout_s: float = DEFAULT_TIMEOUT_S
    cacert: str | None = None
    proxy: str | None = None  # overrides the environment's proxy for the network checks


# -- values: proxy endpoints, URLs, HOST:PORT --------------------------------------------------


@dataclass(frozen=True, slots=True)
class ProxyEndpoint:
    """An http:// proxy URL, parsed (by `egressgate env`'s validator, plus verify's rule)."""

    host: str  # IPv6 without brackets
    port: int
    username: str | None = None
    password: str | None = field(default=None, repr=False)  # never in a repr or a log line
    warnings: tuple[str, ...] = ()  # what some measured runtimes make of this URL

    @property
    def authority(self) -> str:
        return format_hostport(self.host, self.port)

    @property
    def display(self) -> str:
        """The URL without its credentials (safe to print)."""
        user = "***@" if self.username is not None else ""
        return f"http://{user}{self.authority}"

    def authorization(self) -> str | None:
        """The Proxy-Authorization value for credentials in the URL, or None."""
        if self.username is None:
            return None
        raw = f"{self.username}:{self.password or ''}".encode()
        return "Basic " + base64.b64encode(raw).decode("ascii")


def format_hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_proxy_url(text: str) -> ProxyEndpoint:
    """Parse a proxy URL; ValueError says precisely what is wrong and who misreads it.

    The URL rules are `egressgate env`'s (tools/proxy_env.py), so that verify accepts exactly
    what env produces; verify adds one: the scheme must be http:// (the proxy port speaks plain
    HTTP, and this checker does not open TLS to a proxy)."""
    try:
        url, warnings = proxy_env.parse_proxy_url(text)
    except proxy_env.ProxyUrlError as exc:
        raise ValueError(str(exc)) from None
    if url.scheme != "http":
        raise ValueError(
            "an https:// proxy URL means TLS to the proxy, which its plain-HTTP port does not "
            "speak: " + "; ".join(warnings)
        )
    username = password = None
    if url.userinfo is not None:
        user, _, secret = url.userinfo.partition(":")
        username, password = unquote(user), unquote(secret)
    return ProxyEndpoint(url.host, url.port, username, password, tuple(warnings))


@dataclass(frozen=True, slots=True)
class Url:
    """An http:// or https:// URL to test."""

    text: str
    scheme: str
    host: str  # IPv6 without brackets
    port: int  # effective port
    path: str  # path and query, "/" at least

    @property
    def authority(self) -> str:
        return format_hostport(self.host, self.port)

    @property
    def host_header(self) -> str:
        if self.port == _DEFAULT_PORTS[self.scheme]:
            return f"[{self.host}]" if ":" in self.host else self.host
        return self.authority

    @property
    def absolute(self) -> str:
        """The absolute-form request target sent to the proxy (no credentials, no fragment)."""
        return f"{self.scheme}://{self.host_header}{self.path}"


def parse_url(text: str) -> Url:
    """Parse a URL given to --allowed/--denied; ValueError if it is not http(s) with a host."""
    parts = urlsplit(text.strip())
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise ValueError(f"{text!r}: give an http:// or https:// URL")
    if not parts.hostname:
        raise ValueError(f"{text!r}: no host")
    try:
        port = parts.port or _DEFAULT_PORTS[scheme]
    except ValueError as exc:
        raise ValueError(f"{text!r}: bad port ({exc})") from None
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    # What goes on the wire is ASCII: an IDN host as punycode, other characters percent-encoded.
    host = parts.hostname
    if not host.isascii():
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError:
            raise ValueError(f"{text!r}: the host is not a valid internationalised name") from None
    path = quote(path, safe="/?&=%:@!$'()*+,;~")
    return Url(text.strip(), scheme, host, port, path)


def parse_hostport(text: str) -> tuple[str, int]:
    """HOST:PORT or [IPv6]:PORT → (host, port); ValueError otherwise."""
    raw = text.strip()
    if raw.startswith("["):
        host, sep, port_text = raw[1:].partition("]:")
    else:
        host, sep, port_text = raw.rpartition(":")
        if ":" in host:
            raise ValueError(f"{text!r}: write IPv6 addresses in brackets, [::1]:443")
    if not sep or not host:
        raise ValueError(f"{text!r}: expected HOST:PORT")
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"{text!r}: the port must be 1-65535")
    return host, int(port_text)


# -- environment analysis (pure) ---------------------------------------------------------------

# The variable kinds, with the attribute of noproxy.Variables that lists what each runtime reads.
_VARIABLES = (("HTTP_PROXY", "http"), ("HTTPS_PROXY", "https"), ("NO_PROXY", "no_proxy"))


def _get(env: Mapping[str, str], name: str) -> str | None:
    """A variable's value, None when unset or empty (runtimes treat empty as unset)."""
    value = env.get(name)
    return value if value else None


def check_environment(
    env: Mapping[str, str], urls: Sequence[Url] = (), *, proxy_override: str | None = None
) -> list[Check]:
    """The environment checks (a): variables, proxy URL, NO_PROXY coverage, routing."""
    names = [n for n, _ in _VARIABLES] + [n.lower() for n, _ in _VARIABLES]
    if proxy_override is not None and not any(_get(env, n) for n in names):
        why = (
            "no proxy variable is set here and --proxy was given: the app's environment was "
            "not checked (a debug container does not share the app container's environment)"
        )
        return [Check("env", "proxy variables", Status.SKIP, why)]
    checks = [_check_variable(env, name, kind) for name, kind in _VARIABLES]
    checks.append(_check_proxy_urls(env))
    checks.append(_check_no_proxy_coverage(env))
    checks.append(_check_proxy_host(env))
    checks.append(_check_routing(env, urls))
    return checks


def _check_variable(env: Mapping[str, str], name: str, kind: str) -> Check:
    upper, lower = _get(env, name), _get(env, name.lower())
    title = f"{name} / {name.lower()}"
    check_name = f"env.{name}"
    if upper is not None and lower is not None and upper == lower:
        shown = _redact(upper) if kind != "no_proxy" else upper
        return Check(check_name, title, Status.PASS, f"set in both cases, identical: {shown}")
    if upper is None and lower is None:
        why = f"neither {name} nor {name.lower()} is set"
        if kind != "no_proxy":
            why += ": every runtime connects directly, which the NetworkPolicy blocks"
        else:
            why += ": in-cluster and localhost requests go to the proxy, which refuses them"
        return Check(check_name, title, Status.FAIL, why)
    if upper is None or lower is None:
        have, missing = (name, name.lower()) if lower is None else (name.lower(), name)
        blind = _runtimes_not_reading(env, kind)
        effect = (
            f"not seen by {_names(blind)}, which read only {missing}"
            if blind
            else "no measured runtime is affected, but other tools read only one case"
        )
        why = f"only {have} is set ({missing} is not): {effect}; set both, identical"
        return Check(check_name, title, Status.FAIL, why, data={"missed_by": blind})
    winners = _winners(env, kind)
    sides = "; ".join(f"{var} wins in {_names(ids)}" for var, ids in sorted(winners.items()))
    why = f"{name} and {name.lower()} differ, so runtimes disagree: {sides}; make them identical"
    return Check(check_name, title, Status.FAIL, why)


def _runtimes_not_reading(env: Mapping[str, str], kind: str) -> list[str]:
    """Runtimes that read the environment but none of whose variables for `kind` are set."""
    blind: list[str] = []
    for rt in noproxy.env_readers():
        assert rt.variables is not None
        read: tuple[str, ...] = getattr(rt.variables, kind)
        if kind == "https" and rt.variables.https_falls_back_to_http:
            read += rt.variables.http
        if not any(_get(env, n) for n in read):
            blind.append(rt.id)
    return blind


def _winners(env: Mapping[str, str], kind: str) -> dict[str, list[str]]:
    """For each variable name, the runtimes that take their value from it."""
    winners: dict[str, list[str]] = {}
    for rt in noproxy.env_readers():
        assert rt.variables is not None
        read: tuple[str, ...] = getattr(rt.variables, kind)
        chosen = next((n for n in read if _get(env, n)), None)
        if chosen is not None:
            winners.setdefault(chosen, []).append(rt.id)
    return winners


def _redact(url: str) -> str:
    """A proxy URL with any password replaced (the report may be pasted into a ticket)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    return parts._replace(netloc=f"{parts.username}:***@{netloc}").geturl()


def proxy_values(env: Mapping[str, str]) -> dict[str, str]:
    """Every distinct proxy URL set in the environment, with the first variable it is set in."""
    found: dict[str, str] = {}
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY"):
        value = _get(env, name)
        if value is not None and value not in found:
            found[value] = name
    return found


def _check_proxy_urls(env: Mapping[str, str]) -> Check:
    values = proxy_values(env)
    title = "proxy URL"
    if not values:
        return Check("env.proxy-url", title, Status.FAIL, "no proxy URL is set")
    problems: list[str] = []
    warnings: list[str] = []
    good: list[str] = []
    for value, variable in values.items():
        try:
            endpoint = parse_proxy_url(value)
        except ValueError as exc:
            problems.append(f"{variable}: {exc}")
            continue
        good.append(f"{endpoint.display} (host {endpoint.host}, port {endpoint.port})")
        warnings += [f"{variable}: {w}" for w in endpoint.warnings]
    if problems:
        return Check("env.proxy-url", title, Status.FAIL, "; ".join(problems))
    if warnings:
        return Check("env.proxy-url", title, Status.WARN, "; ".join(good + warnings))
    return Check("env.proxy-url", title, Status.PASS, "; ".join(good))


def _placeholder_env(env: Mapping[str, str]) -> dict[str, str]:
    """The app's NO_PROXY variables with a proxy set in every name, so that what the model says
    depends on NO_PROXY alone (missing proxy variables are reported by their own check)."""
    names = ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY")
    probe = dict.fromkeys(names, _PLACEHOLDER_PROXY)
    for name in ("no_proxy", "NO_PROXY"):
        if name in env:
            probe[name] = env[name]
    return probe


def _verdicts(env: Mapping[str, str], url: str) -> list[noproxy.RuntimeVerdict]:
    """The measured runtimes that read the environment, and what each does with `url`."""
    return [
        v for v in noproxy.explain_env(env, url) if v.verdict is not noproxy.Verdict.IGNORES_ENV
    ]


def _check_no_proxy_coverage(env: Mapping[str, str]) -> Check:
    title = "NO_PROXY covers the cluster and loopback"
    probe = _placeholder_env(env)
    value = _get(env, "NO_PROXY") or _get(env, "no_proxy") or ""
    if value.strip() == "*":
        why = "NO_PROXY=* sends every request directly, around the proxy (and into the wall)"
        return Check("env.no-proxy", title, Status.FAIL, why)
    problems: list[str] = []
    misrouted: dict[str, list[str]] = {}
    for entry, url in REQUIRED_NO_PROXY:
        proxied = [v.runtime for v in _verdicts(probe, url) if v.verdict is noproxy.Verdict.PROXY]
        if proxied:
            misrouted[entry] = proxied
            problems.append(f"{url} goes to the proxy in {_names(proxied)} (add `{entry}`)")
    problems += [f.message for f in noproxy.lint(value) if f.severity is noproxy.Severity.ERROR]
    if not problems:
        why = "in-cluster names (.svc, .cluster.local) and loopback go direct in every runtime"
        why += " measured"
        return Check("env.no-proxy", title, Status.PASS, why)
    return Check(
        "env.no-proxy", title, Status.WARN, "; ".join(problems), data={"misrouted": misrouted}
    )


def _check_proxy_host(env: Mapping[str, str]) -> Check:
    """Is the proxy's own host covered by NO_PROXY? Harmless either way for proxying (no measured
    runtime applies NO_PROXY to the connection to the proxy), but it decides where requests
    addressed to the proxy itself go: through the proxy to itself, which refuses them."""
    title = "the proxy host vs NO_PROXY"
    endpoints: list[ProxyEndpoint] = []
    for value in proxy_values(env):
        try:
            endpoints.append(parse_proxy_url(value))
        except ValueError:
            continue
    if not endpoints:
        return Check("env.proxy-host", title, Status.SKIP, "no parsable proxy URL")
    notes: list[str] = []
    for endpoint in endpoints:
        url = f"http://{endpoint.authority}/healthz"
        verdicts = _verdicts(_placeholder_env(env), url)
        through = [v.runtime for v in verdicts if v.verdict is noproxy.Verdict.PROXY]
        if not through:
            notes.append(
                f"{endpoint.host} is in NO_PROXY: fine, requests addressed to the proxy itself go "
                "straight to it, and the connection to the proxy never consults NO_PROXY"
            )
            continue
        notes.append(
            f"{endpoint.host} is not in NO_PROXY: fine for proxying (NO_PROXY never applies to "
            f"the connection to the proxy), but {_names(through)} would send requests addressed "
            f"to the proxy itself ({url}) through it, to be refused; add `{endpoint.host}` if the "
            "app calls the proxy's own endpoints"
        )
    return Check("env.proxy-host", title, Status.PASS, "; ".join(notes))


def _check_routing(env: Mapping[str, str], urls: Sequence[Url]) -> Check:
    """Would each runtime send the URLs under test to the proxy, given the app's variables?"""
    title = "the URLs under test go through the proxy"
    if not urls:
        return Check("env.routing", title, Status.SKIP, "no --allowed/--denied URL given")
    # {(what happens, runtimes): URLs}, so that one misreading is reported once, not per URL.
    grouped: dict[tuple[str, tuple[str, ...]], list[str]] = {}
    for url in urls:
        verdicts = _verdicts(env, url.text)
        for verdict, effect in (
            (noproxy.Verdict.DIRECT, "go DIRECT, not via the proxy,"),
            (noproxy.Verdict.ERROR, "fail before any connection"),
        ):
            ids = tuple(v.runtime for v in verdicts if v.verdict is verdict)
            if ids:
                grouped.setdefault((effect, ids), []).append(url.text)
    if grouped:
        problems = [
            f"{', '.join(texts)} {effect} in {_names(ids)}"
            for (effect, ids), texts in grouped.items()
        ]
        why = "; ".join(problems) + " (the checks below use the proxy explicitly)"
        return Check("env.routing", title, Status.WARN, why)
    why = f"every runtime that reads the variables sends the {len(urls)} URL(s) to the proxy"
    return Check("env.routing", title, Status.PASS, why)


def _names(ids: Iterable[str]) -> str:
    ids = list(ids)
    readers = [rt.id for rt in noproxy.env_readers()]
    if ids and set(readers) <= set(ids):
        return f"every runtime that reads the variables ({len(readers)} measured)"
    return ", ".join(ids) if ids else "no measured runtime"


# -- responses and errors (pure) ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ResponseHead:
    """A parsed HTTP/1.x response head."""

    status: int
    phrase: str
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""  # a proxy refusal's text body (read only for those)

    def header(self, name: str) -> str | None:
        wanted = name.lower()
        return next((v for n, v in self.headers if n.lower() == wanted), None)

    @property
    def reason_code(self) -> str | None:
        return self.header(REASON_HEADER)

    def refusal_detail(self) -> str | None:
        """The `detail:` line of the proxy's text body, if any."""
        for line in self.body.decode("utf-8", "replace").splitlines():
            if line.startswith("detail: "):
                return line[len("detail: ") :]
        return None


def parse_response_head(data: bytes) -> ResponseHead:
    """Parse the bytes before the blank line; ValueError if it is not an HTTP/1.x response."""
    text = data.decode("latin-1")
    lines = text.split("\r\n")
    status_line = lines[0]
    parts = status_line.split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise ValueError(f"not an HTTP response: {status_line[:60]!r}")
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if sep:
            headers.append((name.strip(), value.strip()))
    phrase = parts[2] if len(parts) > 2 else ""
    return ResponseHead(int(parts[1]), phrase, tuple(headers))


def _reason_text(code: str) -> str:
    try:
        return Reason(code).text
    except ValueError:
        return "unknown reason code (a newer proxy?)"


def _refusal(head: ResponseHead) -> str:
    """`403 host-not-allowed (policy default): <the body's detail, else the reason's text>`."""
    code = head.reason_code or ""
    policy = head.header(POLICY_HEADER)
    text = f"{head.status} {code}" + (f" (policy {policy})" if policy else "")
    return f"{text}: {head.refusal_detail() or _reason_text(code)}"


def _is_policy_refusal(head: ResponseHead) -> bool:
    """A 403 decided by policy, as opposed to the proxy failing to reach the origin (5xx)."""
    return head.reason_code is not None and head.status == 403


def classify_allowed(head: ResponseHead, elapsed_ms: float, *, tunnel: bool) -> tuple[Status, str]:
    """An --allowed URL's answer: did the request get through the proxy?"""
    took = f"in {elapsed_ms:.0f} ms"
    if head.reason_code is not None:
        if head.status == 407:
            return Status.FAIL, "the proxy wants credentials (407): put user:password in its URL"
        if _is_policy_refusal(head):
            return Status.FAIL, f"refused by the proxy: {_refusal(head)}"
        return Status.FAIL, f"allowed, but the proxy could not get an answer: {_refusal(head)}"
    if head.status < 400:
        return Status.PASS, f"{head.status} {head.phrase} {took} through the proxy".replace(
            "  ", " "
        )
    # No refusal header: the origin answered, so the path through the proxy works; its status is
    # the origin's business, not the egress firewall's.
    where = "tunnel opened and TLS verified; " if tunnel else "the proxy forwarded it; "
    return Status.PASS, f"{where}the origin itself answered {head.status} {head.phrase} {took}"


def classify_denied(head: ResponseHead, *, tunnel: bool) -> tuple[Status, str]:
    """A --denied URL's answer: was it refused BY THE PROXY?"""
    code = head.reason_code
    if _is_policy_refusal(head):
        return Status.PASS, f"refused by the proxy: {_refusal(head)}"
    if code is not None and head.status == 407:
        return Status.FAIL, "the proxy wants credentials (407) before it decides: add user:password"
    if code is not None:
        return Status.FAIL, (
            f"not refused by policy: the proxy allowed it and then failed: {_refusal(head)}"
        )
    if head.status == 403:
        return Status.FAIL, (
            "403 without X-Egressgate-Reason: the ORIGIN refused it, not the proxy — the proxy "
            "let the request through"
        )
    if tunnel and head.status == 200:
        return Status.FAIL, "the proxy opened a tunnel to it (200): the proxy let it through"
    return Status.FAIL, (
        f"the proxy let it through: the origin answered {head.status} {head.phrase} "
        "(is the policy in report mode, or is this host on the allowlist?)"
    )


class ErrorKind(StrEnum):
    """How a connection attempt failed."""

    REFUSED = "refused"
    TIMEOUT = "timeout"
    UNREACHABLE = "unreachable"
    BLOCKED = "blocked-locally"
    RESET = "reset"
    DNS = "dns"
    TLS = "tls"
    OTHER = "other"


def classify_error(exc: BaseException, timeout_s: float) -> tuple[ErrorKind, str]:
    """What a socket/TLS/DNS exception means, in words."""
    if isinstance(exc, socket.gaierror):
        return ErrorKind.DNS, f"name lookup failed ({exc.strerror or exc})"
    if isinstance(exc, ssl.SSLError):
        return ErrorKind.TLS, f"TLS failed: {getattr(exc, 'reason', None) or exc}"
    if isinstance(exc, TimeoutError | socket.timeout):
        return ErrorKind.TIMEOUT, f"timed out after {timeout_s:g} s (packets are dropped)"
    if isinstance(exc, ConnectionRefusedError):
        return ErrorKind.REFUSED, "connection refused"
    if isinstance(exc, ConnectionResetError | BrokenPipeError | ConnectionAbortedError):
        return ErrorKind.RESET, "the connection was reset"
    if isinstance(exc, OSError) and exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
        what = "host" if exc.errno == errno.EHOSTUNREACH else "network"
        return ErrorKind.UNREACHABLE, f"{what} unreachable (no route, or an ICMP reject)"
    if isinstance(exc, OSError) and exc.errno in (errno.EPERM, errno.EACCES):
        return ErrorKind.BLOCKED, "blocked by a firewall rule in this network namespace (EPERM)"
    return ErrorKind.OTHER, f"{type(exc).__name__}: {exc}"


def _bypass_blocked_text(kind: ErrorKind, text: str) -> str:
    """Why a failed direct connection counts as blocked, worded by the way it failed."""
    if kind is ErrorKind.TIMEOUT:
        return f"{text}, as a NetworkPolicy does"
    if kind is ErrorKind.REFUSED:
        return (
            f"{text} (an RST: a reject rule, or nothing listens on that port; a --direct port "
            "that accepts connections when unfiltered proves more)"
        )
    return text


# -- socket I/O --------------------------------------------------------------------------------


class Deadline:
    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        left = self.end - time.monotonic()
        if left <= 0:
            raise TimeoutError("deadline")
        return left


def read_head(sock: socket.socket, deadline: Deadline) -> tuple[bytes, bytes]:
    """Bytes up to the blank line, and any bytes read past it."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        if len(buf) > MAX_HEAD_BYTES:
            raise ValueError("response head too large")
        sock.settimeout(deadline.left())
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionResetError("closed before a complete response head")
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    return head, rest


def _read_refusal_body(
    sock: socket.socket, head: ResponseHead, rest: bytes, deadline: Deadline
) -> ResponseHead:
    """Read the proxy's short text body (bounded) so its `detail:` line can be shown."""
    length_text = head.header("Content-Length") or ""
    if head.reason_code is None or not length_text.isdigit():
        return head
    length = min(int(length_text), MAX_REFUSAL_BODY)
    body = rest
    try:
        while len(body) < length:
            sock.settimeout(deadline.left())
            chunk = sock.recv(length - len(body))
            if not chunk:
                break
            body += chunk
    except OSError:
        pass  # the head is what matters; the body only adds the detail line
    return ResponseHead(head.status, head.phrase, head.headers, body[:length])


def request_bytes(method: str, target: str, host: str, extra: Sequence[tuple[str, str]]) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}", f"User-Agent: {USER_AGENT}"]
    lines += [f"{n}: {v}" for n, v in extra]
    return ("\r\n".join([*lines, "", ""])).encode("latin-1")


def exchange(sock: socket.socket, request: bytes, deadline: Deadline) -> ResponseHead:
    sock.settimeout(deadline.left())
    sock.sendall(request)
    raw, rest = read_head(sock, deadline)
    head = parse_response_head(raw)
    return _read_refusal_body(sock, head, rest, deadline)


def _connect(host: str, port: int, deadline: Deadline) -> socket.socket:
    return socket.create_connection((host, port), timeout=deadline.left())


@dataclass(frozen=True, slots=True)
class Probe:
    """What a probe saw: a response head (or the error), and timings in milliseconds."""

    head: ResponseHead | None
    error: BaseException | None = None
    stage: str = ""  # where an error happened: connect, request, tls, tls-request
    connect_ms: float = 0.0
    total_ms: float = 0.0
    tls: bool = False  # a TLS handshake through the tunnel completed


def probe_health(endpoint: ProxyEndpoint, timeout_s: float) -> Probe:
    """TCP connect to the proxy port and an origin-form GET /healthz."""
    deadline, started = Deadline(timeout_s), time.monotonic()
    try:
        sock = _connect(endpoint.host, endpoint.port, deadline)
    except OSError as exc:
        return Probe(None, exc, "connect", total_ms=_ms(started))
    connected = _ms(started)
    with sock:
        request = request_bytes("GET", "/healthz", endpoint.authority, [("Connection", "close")])
        try:
            head = exchange(sock, request, deadline)
        except (OSError, ValueError) as exc:
            return Probe(None, exc, "request", connected, _ms(started))
    return Probe(head, None, "", connected, _ms(started))


def request_via_proxy(
    endpoint: ProxyEndpoint, url: Url, timeout_s: float, cacert: str | None
) -> Probe:
    """http://: an absolute-form GET. https://: CONNECT, then TLS (verified), then a GET."""
    deadline, started = Deadline(timeout_s), time.monotonic()
    try:
        sock = _connect(endpoint.host, endpoint.port, deadline)
    except OSError as exc:
        return Probe(None, exc, "connect", total_ms=_ms(started))
    connected = _ms(started)
    auth = endpoint.authorization()
    extra = [("Proxy-Authorization", auth)] if auth else []
    with sock:
        if url.scheme == "http":
            headers = [("Accept", "*/*"), *extra, ("Connection", "close")]
            request = request_bytes("GET", url.absolute, url.host_header, headers)
            try:
                head = exchange(sock, request, deadline)
            except (OSError, ValueError) as exc:
                return Probe(None, exc, "request", connected, _ms(started))
            return Probe(head, None, "", connected, _ms(started))
        return _through_tunnel(sock, url, extra, deadline, cacert, connected, started)


def _through_tunnel(
    sock: socket.socket,
    url: Url,
    extra: list[tuple[str, str]],
    deadline: Deadline,
    cacert: str | None,
    connected: float,
    started: float,
) -> Probe:
    try:
        head = exchange(
            sock, request_bytes("CONNECT", url.authority, url.authority, extra), deadline
        )
    except (OSError, ValueError) as exc:
        return Probe(None, exc, "request", connected, _ms(started))
    if head.status != 200:
        return Probe(head, None, "", connected, _ms(started))
    context = ssl.create_default_context(cafile=cacert)
    try:
        sock.settimeout(deadline.left())
        tls = context.wrap_socket(sock, server_hostname=url.host)
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        return Probe(head, exc, "tls", connected, _ms(started))
    with tls:
        request = request_bytes(
            "GET", url.path, url.host_header, [("Accept", "*/*"), ("Connection", "close")]
        )
        try:
            answer = exchange(tls, request, deadline)
        except (OSError, ValueError) as exc:
            return Probe(head, exc, "tls-request", connected, _ms(started), tls=True)
    return Probe(answer, None, "", connected, _ms(started), tls=True)


@dataclass(frozen=True, slots=True)
class DirectAttempt:
    """One direct TCP connection attempt to one address."""

    address: str
    connected: bool
    kind: ErrorKind | None
    text: str
    elapsed_ms: float


def connect_direct(host: str, port: int, timeout_s: float) -> list[DirectAttempt]:
    """Connect straight to every address `host` resolves to (bounded), ignoring any proxy.

    Raises socket.gaierror when the system resolver cannot resolve `host`."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    seen: list[tuple[int, tuple[Any, ...]]] = []
    for family, _, _, _, sockaddr in infos:
        if (family, sockaddr) not in seen:
            seen.append((family, sockaddr))
    return [_attempt(family, sockaddr, timeout_s) for family, sockaddr in seen[:4]]


def _attempt(family: int, sockaddr: tuple[Any, ...], timeout_s: float) -> DirectAttempt:
    address = format_hostport(str(sockaddr[0]), int(sockaddr[1]))
    started = time.monotonic()
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout_s)
        try:
            sock.connect(sockaddr)
        except OSError as exc:
            kind, text = classify_error(exc, timeout_s)
            return DirectAttempt(address, False, kind, text, _ms(started))
    return DirectAttempt(address, True, None, "connected", _ms(started))


def _ms(started: float) -> float:
    return (time.monotonic() - started) * 1000.0


# -- the checks that use the network -----------------------------------------------------------


def _describe_failure(probe: Probe, endpoint: ProxyEndpoint, timeout_s: float) -> str:
    assert probe.error is not None
    kind, text = classify_error(probe.error, timeout_s)
    if probe.stage == "connect":
        hint = {
            ErrorKind.REFUSED: "nothing listens there: wrong port, or the proxy is down",
            ErrorKind.TIMEOUT: "is egress to the proxy's port allowed by the NetworkPolicy, "
            "and is the address right?",
            ErrorKind.DNS: "the proxy's name does not resolve here",
        }.get(kind, "")
        return f"cannot connect to the proxy {endpoint.authority}: {text}" + (
            f" — {hint}" if hint else ""
        )
    return f"the proxy {endpoint.authority} accepted the connection but then: {text}"


def check_reachable(endpoint: ProxyEndpoint, timeout_s: float) -> Check:
    """(b) TCP connect + GET /healthz → 200."""
    title = "proxy reachable"
    probe = probe_health(endpoint, timeout_s)
    data = {"connect_ms": round(probe.connect_ms, 1), "total_ms": round(probe.total_ms, 1)}
    if probe.head is None:
        detail = _describe_failure(probe, endpoint, timeout_s)
        return Check("proxy.reachable", title, Status.FAIL, detail, endpoint.authority, data)
    data["http_status"] = probe.head.status
    if probe.head.status == 200:
        detail = (
            f"{endpoint.authority}: GET /healthz → 200 in {probe.total_ms:.0f} ms "
            f"(connect {probe.connect_ms:.0f} ms)"
        )
        return Check("proxy.reachable", title, Status.PASS, detail, endpoint.authority, data)
    detail = (
        f"{endpoint.authority} answered GET /healthz with {probe.head.status} "
        f"{probe.head.phrase}: is this egressgate's proxy port (not another proxy or the admin "
        "port)?"
    )
    return Check("proxy.reachable", title, Status.FAIL, detail, endpoint.authority, data)


def check_allowed(endpoint: ProxyEndpoint, url: Url, options: Options) -> Check:
    """(c) an allowed URL works through the proxy."""
    title = "allowed through the proxy"
    probe = request_via_proxy(endpoint, url, options.timeout_s, options.cacert)
    data = _probe_data(probe, endpoint)
    if probe.stage == "tls":
        return Check("allowed", title, Status.FAIL, _tls_failure(probe, options), url.text, data)
    if probe.stage == "tls-request":
        _, text = classify_error(probe.error or TimeoutError(), options.timeout_s)
        detail = (
            f"tunnel opened and TLS verified in {probe.total_ms:.0f} ms; then no answer: {text}"
        )
        return Check("allowed", title, Status.PASS, detail, url.text, data)
    if probe.head is None:
        detail = _describe_failure(probe, endpoint, options.timeout_s)
        return Check("allowed", title, Status.FAIL, detail, url.text, data)
    status, detail = classify_allowed(probe.head, probe.total_ms, tunnel=probe.tls)
    return Check("allowed", title, status, detail, url.text, data)


def access_denied(exc: BaseException | None) -> bool:
    """The TLS alert the proxy sends when its SNI check refuses a tunnel after "200"."""
    return getattr(exc, "reason", None) == "TLSV1_ALERT_ACCESS_DENIED"


def _tls_failure(probe: Probe, options: Options) -> str:
    exc = probe.error
    if access_denied(exc):
        return (
            "the proxy opened the tunnel, then refused the TLS server name (alert access_denied "
            "from its SNI check)"
        )
    if isinstance(exc, ssl.SSLCertVerificationError):
        where = f"--cacert {options.cacert}" if options.cacert else "the system CA store"
        return (
            f"the proxy opened the tunnel, but the certificate did not verify against {where}: "
            f"{exc.verify_message}"
        )
    _, text = classify_error(exc or TimeoutError(), options.timeout_s)
    return f"the proxy opened the tunnel, but the TLS handshake failed: {text}"


def check_denied(endpoint: ProxyEndpoint, url: Url, options: Options) -> Check:
    """(d) a denied URL is refused BY THE PROXY (403 + X-Egressgate-Reason)."""
    title = "denied by the proxy"
    probe = request_via_proxy(endpoint, url, options.timeout_s, options.cacert)
    data = _probe_data(probe, endpoint)
    if probe.stage == "tls":
        exc = probe.error
        if access_denied(exc):
            detail = "refused by the proxy's SNI check (TLS alert access_denied after the tunnel)"
            return Check("denied", title, Status.PASS, detail, url.text, data)
        detail = "the proxy opened a tunnel to it (200): the proxy let it through"
        return Check("denied", title, Status.FAIL, detail, url.text, data)
    if probe.head is None:
        detail = _describe_failure(probe, endpoint, options.timeout_s)
        return Check("denied", title, Status.FAIL, detail, url.text, data)
    status, detail = classify_denied(probe.head, tunnel=url.scheme == "https")
    return Check("denied", title, status, detail, url.text, data)


def _probe_data(probe: Probe, endpoint: ProxyEndpoint) -> dict[str, Any]:
    data: dict[str, Any] = {"proxy": endpoint.authority, "total_ms": round(probe.total_ms, 1)}
    if probe.head is not None:
        data["http_status"] = probe.head.status
        if probe.head.reason_code is not None:
            data["reason"] = probe.head.reason_code
            data["policy"] = probe.head.header(POLICY_HEADER)
    if probe.error is not None:
        data["error"] = classify_error(probe.error, 0)[0].value
    return data


def check_bypass(host: str, port: int, timeout_s: float) -> Check:
    """(e) a direct TCP connection, ignoring the proxy, must fail."""
    title = "direct connection blocked"
    target = format_hostport(host, port)
    try:
        attempts = connect_direct(host, port, timeout_s)
    except OSError as exc:  # socket.gaierror
        _, text = classify_error(exc, timeout_s)
        detail = f"cannot resolve {host} with the system resolver ({text}): give --direct IP:PORT"
        return Check("bypass", title, Status.SKIP, detail, target)
    data = {"attempts": [_attempt_dict(a) for a in attempts]}
    through = [a for a in attempts if a.connected]
    if through:
        first = through[0]
        detail = (
            f"direct TCP connection to {first.address}{_named(host, first.address)} succeeded in "
            # The same rounding as the report's attempts, so text and JSON agree.
            f"{round(first.elapsed_ms, 1):.0f} ms: egress is not restricted: the app can go around "
            "the proxy"
        )
        return Check("bypass", title, Status.FAIL, detail, target, data)
    parts = [
        f"{a.address}{_named(host, a.address)}: "
        + _bypass_blocked_text(a.kind or ErrorKind.OTHER, a.text)
        for a in attempts
    ]
    return Check("bypass", title, Status.PASS, "blocked: " + "; ".join(parts), target, data)


def _named(host: str, address: str) -> str:
    return "" if address.startswith((host, f"[{host}]")) else f" ({host})"


def _attempt_dict(attempt: DirectAttempt) -> dict[str, Any]:
    return {
        "address": attempt.address,
        "connected": attempt.connected,
        "error": attempt.kind.value if attempt.kind else None,
        "elapsed_ms": round(attempt.elapsed_ms, 1),
    }


# -- the whole run -----------------------------------------------------------------------------


def proxy_for(scheme: str, env: Mapping[str, str], override: str | None) -> str | None:
    """The proxy URL a request of `scheme` uses: --proxy, else the lowercase variable first (as
    curl and Python do), then the uppercase one."""
    if override is not None:
        return override
    name = "http_proxy" if scheme == "http" else "https_proxy"
    return _get(env, name) or _get(env, name.upper())


def direct_target(options: Options, urls: Sequence[Url]) -> tuple[str, int] | None:
    """--direct, else the first --allowed/--denied URL's host and effective port."""
    if options.direct is not None:
        return parse_hostport(options.direct)
    return (urls[0].host, urls[0].port) if urls else None


def run(options: Options, env: Mapping[str, str]) -> Report:
    """Every check, in checklist order (environment, proxy, allowed, denied, bypass)."""
    allowed = [parse_url(u) for u in options.allowed]
    denied = [parse_url(u) for u in options.denied]
    checks = check_environment(env, allowed + denied, proxy_override=options.proxy)
    reachable = _reachability(options, env, allowed + denied, checks)
    for url in allowed:
        checks.append(_via_proxy("allowed", url, options, env, reachable))
    for url in denied:
        checks.append(_via_proxy("denied", url, options, env, reachable))
    target = direct_target(options, allowed + denied)
    if target is None:
        why = "nothing to try: give --direct HOST:PORT or an --allowed/--denied URL"
        checks.append(Check("bypass", "direct connection blocked", Status.SKIP, why))
    else:
        checks.append(check_bypass(*target, options.timeout_s))
    return Report(tuple(checks))


def _reachability(
    options: Options, env: Mapping[str, str], urls: Sequence[Url], checks: list[Check]
) -> dict[str, bool]:
    """Probe each distinct proxy endpoint once; returns {proxy URL: reachable}."""
    values = [options.proxy] if options.proxy is not None else list(proxy_values(env))
    reachable: dict[str, bool] = {}
    for value in values:
        try:
            endpoint = parse_proxy_url(value)
        except ValueError as exc:
            why = f"{_redact(value)} is not a usable proxy URL: {exc}"
            checks.append(Check("proxy.reachable", "proxy reachable", Status.SKIP, why))
            reachable[value] = False
            continue
        check = check_reachable(endpoint, options.timeout_s)
        checks.append(check)
        reachable[value] = check.status is Status.PASS
    if not values:
        why = "no proxy URL: set HTTP_PROXY/HTTPS_PROXY (both cases) or give --proxy"
        checks.append(Check("proxy.reachable", "proxy reachable", Status.SKIP, why))
    return reachable


def _via_proxy(
    kind: str, url: Url, options: Options, env: Mapping[str, str], reachable: Mapping[str, bool]
) -> Check:
    title = "allowed through the proxy" if kind == "allowed" else "denied by the proxy"
    value = proxy_for(url.scheme, env, options.proxy)
    if value is None:
        var = "http_proxy/HTTP_PROXY" if url.scheme == "http" else "https_proxy/HTTPS_PROXY"
        why = f"no proxy for {url.scheme}:// URLs ({var} unset): nothing to send it through"
        return Check(kind, title, Status.SKIP, why, url.text)
    if not reachable.get(value, False):
        why = f"the proxy {_redact(value)} is not reachable or not usable (see above)"
        return Check(kind, title, Status.SKIP, why, url.text)
    endpoint = parse_proxy_url(value)
    if kind == "allowed":
        return check_allowed(endpoint, url, options)
    return check_denied(endpoint, url, options)


# -- output ------------------------------------------------------------------------------------

MARKS = {  # also verify --attack's pod checks (attack_report.py)
    True: {Status.PASS: "✓", Status.FAIL: "✗", Status.WARN: "!", Status.SKIP: "\u2013"},
    False: {Status.PASS: "+", Status.FAIL: "x", Status.WARN: "!", Status.SKIP: "-"},
}
_GROUPS = (
    ("env", "Environment (the app's proxy variables)"),
    ("proxy", "Proxy"),
    ("allowed", "Allowed URLs (must work through the proxy)"),
    ("denied", "Denied URLs (must be refused by the proxy)"),
    ("bypass", "Bypass (a direct connection must fail)"),
)


def render_text(report: Report, *, unicode: bool = True) -> str:
    """The readable checklist: one line per check, grouped, then a verdict line."""
    marks = MARKS[unicode]
    lines: list[str] = []
    for prefix, heading in _GROUPS:
        group = [c for c in report.checks if c.name.split(".", 1)[0] == prefix]
        if not group:
            continue
        lines.append(heading)
        for check in group:
            label = _label(check, prefix)
            lines.append(f"  {marks[check.status]} {label}: {check.detail}")
    lines.append(_summary(report))
    return "\n".join(lines) + "\n"


def _label(check: Check, group: str) -> str:
    if group in ("allowed", "denied") and check.target:
        return check.target
    if group == "bypass" and check.target:
        return f"direct to {check.target}"
    return check.title


def _summary(report: Report) -> str:
    counts = ", ".join(
        f"{report.count(s)} {word}"
        for s, word in (
            (Status.PASS, "passed"),
            (Status.FAIL, "failed"),
            (Status.WARN, "warnings"),
            (Status.SKIP, "skipped"),
        )
        if report.count(s)
    )
    verdict = "FAILED" if report.failed else "OK"
    return f"{verdict}: {len(report.checks)} checks: {counts}"


def render_json(report: Report) -> str:
    """The machine-readable result."""
    doc = {
        "ok": not report.failed,
        "exit_status": report.exit_status,
        "counts": {str(s): report.count(s) for s in Status},
        "checks": [c.to_dict() for c in report.checks],
    }
    return json.dumps(doc, indent=2)
