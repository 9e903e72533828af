"""`egressgate verify --attack`: from the operator's targets to the probes to run, and the run.

* `build_targets(options, env, pod_v6)` parses what the operator named and resolves the first
  --allowed host ONCE with the pod's own resolver (at most MAX_ADDRESSES addresses a family);
  no probe picks an address of its own: every target comes from here or from the well-known
  metadata addresses.
* `plan(options, targets)` gives every catalogue probe, in catalogue order, either its target
  and the call that runs it or the reason it cannot run here (a missing option, no proxy in
  transparent mode, a pod without IPv6, --skip). Each builder states what it needs
  (`@_needs("allowed", "proxy")`); the checks and their reasons live in one table.
* `run_planned(planned, parallel)` runs the runnable ones concurrently — at most `parallel` at
  a time, so the run takes about one timeout per wave, not one per probe — and judges them.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from egressgate.config.model import DEFAULT_ADMIN_LISTEN, ListenAddress
from egressgate.tools import verify
from egressgate.tools.attack import (
    BY_ID,
    Finding,
    Observation,
    Outcome,
    ProbeSpec,
    judge,
    skipped,
)
from egressgate.tools.attack_probes import (
    DNS_PORT,
    DOT_PORT,
    METADATA_NAT64,
    METADATA_V4,
    METADATA_V4_MAPPED,
    QUIC_PORT,
    NotRunnable,
    probe_connect,
    probe_dns_tcp,
    probe_dns_udp,
    probe_doh_direct,
    probe_http,
    probe_keepalive,
    probe_proxy_connect,
    probe_proxy_get,
    probe_tls,
    probe_udp_quic,
)
from egressgate.tools.verify import ProxyEndpoint, Url, format_hostport

DEFAULT_OTHER_PORT = 8443
DEFAULT_ADMIN_PORT = ListenAddress.parse(DEFAULT_ADMIN_LISTEN).port
DEFAULT_PARALLEL = 8
MAX_PARALLEL = 32
MAX_ADDRESSES = 2  # of one name and family: enough to show a second path, never a sweep


@dataclass(frozen=True, slots=True)
class AttackOptions:
    """The command line of `egressgate verify --attack`."""

    allowed: tuple[str, ...] = ()
    denied: tuple[str, ...] = ()
    outside_resolver: str | None = None  # an IP address outside the cluster (e.g. 9.9.9.9)
    doh_name: str | None = None  # a public DoH resolver's name (e.g. dns.google)
    ipv6_address: str | None = None  # an allowed host's IPv6 address, when it has no AAAA
    other_port: int = DEFAULT_OTHER_PORT
    admin_port: int | None = DEFAULT_ADMIN_PORT
    proxy: str | None = None  # overrides the environment's proxy
    timeout_s: float = verify.DEFAULT_TIMEOUT_S
    parallel: int = DEFAULT_PARALLEL
    skip: tuple[str, ...] = ()  # probe-id prefixes not to run


# -- targets -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Targets:
    """What the operator named, parsed and resolved once (with the pod's resolver)."""

    allowed: Url | None
    allowed_http: Url | None  # the first http:// --allowed URL (keep-alive probe)
    denied_host: str | None
    denied_http: str | None  # http://DENIED[:port]/ for the plain-HTTP probes
    v4: tuple[str, ...]  # IPv4 addresses of the allowed host
    v6: tuple[str, ...]  # IPv6 addresses of the allowed host (or --ipv6-address)
    resolve_error: str | None  # why v4 is empty
    https_port: int
    http_port: int
    endpoint: ProxyEndpoint | None
    no_proxy_why: str | None
    pod_v6: tuple[str, ...]  # the pod's global IPv6 addresses

    @property
    def proxy(self) -> ProxyEndpoint:
        assert self.endpoint is not None  # checked by @_needs("proxy")
        return self.endpoint

    @property
    def denied_authority(self) -> str:
        assert self.denied_http is not None  # checked by @_needs("denied")
        return self.denied_http.split("/")[2]


def _resolve(host: str, family: int) -> tuple[tuple[str, ...], str | None]:
    try:
        infos = socket.getaddrinfo(host, None, family, socket.SOCK_STREAM)
    except socket.gaierror as exc:
        return (), f"the pod's resolver cannot resolve {host} ({exc.strerror or exc})"
    seen = list(dict.fromkeys(str(info[4][0]) for info in infos))
    return tuple(seen[:MAX_ADDRESSES]), None


def build_targets(options: AttackOptions, env: Mapping[str, str], pod_v6: Sequence[str]) -> Targets:
    allowed_urls = [verify.parse_url(u) for u in options.allowed]
    denied_urls = [verify.parse_url(u) for u in options.denied]
    allowed = allowed_urls[0] if allowed_urls else None
    allowed_http = next((u for u in allowed_urls if u.scheme == "http"), None)
    https = next((u for u in allowed_urls if u.scheme == "https"), None)
    denied = denied_urls[0] if denied_urls else None
    denied_http = next((u for u in denied_urls if u.scheme == "http"), None)
    if denied_http is None and denied is not None:
        denied_http = Url(denied.text, "http", denied.host, 80, "/")
    v4: tuple[str, ...] = ()
    v6: tuple[str, ...] = ()
    error = None
    if allowed is not None:
        v4, error = _resolve(allowed.host, socket.AF_INET)
        if options.ipv6_address is not None:
            v6 = (options.ipv6_address,)
        elif pod_v6:
            v6, _ = _resolve(allowed.host, socket.AF_INET6)
    endpoint, why = _endpoint(options, env)
    return Targets(
        allowed=allowed,
        allowed_http=allowed_http,
        denied_host=denied.host if denied is not None else None,
        denied_http=denied_http.absolute if denied_http is not None else None,
        v4=v4,
        v6=v6,
        resolve_error=error,
        https_port=https.port if https is not None else 443,
        http_port=allowed_http.port if allowed_http is not None else 80,
        endpoint=endpoint,
        no_proxy_why=why,
        pod_v6=tuple(pod_v6),
    )


def _endpoint(
    options: AttackOptions, env: Mapping[str, str]
) -> tuple[ProxyEndpoint | None, str | None]:
    value = verify.proxy_for("https", env, options.proxy)
    value = value or verify.proxy_for("http", env, options.proxy)
    if value is None:
        return None, (
            "no proxy: no HTTP(S)_PROXY variable and no --proxy (transparent mode needs none; "
            "give --proxy to test the proxy's own refusals)"
        )
    try:
        return verify.parse_proxy_url(value), None
    except ValueError as exc:
        return None, f"the proxy URL is not usable: {exc}"


# -- the plan ----------------------------------------------------------------------------------

Thunk = Callable[[], Observation]
Aim = tuple[str, Thunk]  # (target, the call that runs the probe)
Builder = Callable[[AttackOptions, Targets], Aim | str]  # a str: why it cannot run


@dataclass(frozen=True, slots=True)
class Planned:
    """A probe ready to run, or the reason it will not."""

    spec: ProbeSpec
    target: str
    run: Thunk | None = None
    why_not: str | None = None


def _missing_allowed(o: AttackOptions, t: Targets) -> str | None:
    if t.allowed is None:
        return "no --allowed URL: nothing to aim at"
    return None if t.v4 else (t.resolve_error or "the allowed host has no IPv4 address")


def _missing_v6(o: AttackOptions, t: Targets) -> str | None:
    if t.allowed is None:
        return "no --allowed URL: nothing to aim at"
    if not t.pod_v6 and o.ipv6_address is None:
        return "the pod has no global IPv6 address"
    if not t.v6:
        return f"{t.allowed.host} has no IPv6 address (AAAA): give --ipv6-address"
    return None


# What a builder may need, and the reason it is skipped without it.
_NEEDS: Mapping[str, Callable[[AttackOptions, Targets], str | None]] = {
    "allowed": _missing_allowed,  # its IPv4 address
    "allowed-url": lambda o, t: None if t.allowed else "no --allowed URL: nothing to aim at",
    "allowed-v6": _missing_v6,
    "allowed-http": lambda o, t: (
        None if t.allowed_http else "needs an http:// --allowed URL (plain HTTP keep-alive)"
    ),
    "denied": lambda o, t: None if t.denied_host else "no --denied URL: no host to ask for",
    "proxy": lambda o, t: None if t.endpoint else t.no_proxy_why,
    "resolver": lambda o, t: None if o.outside_resolver else "no --outside-resolver given",
    "doh": lambda o, t: None if o.doh_name else "no --doh-name given",
    "admin": lambda o, t: None if o.admin_port else "--admin-port 0: no admin port to try",
}


def _needs(*what: str) -> Callable[[Builder], Builder]:
    def wrap(build: Builder) -> Builder:
        def checked(o: AttackOptions, t: Targets) -> Aim | str:
            for need in what:
                why = _NEEDS[need](o, t)
                if why:
                    return why
            return build(o, t)

        return checked

    return wrap


def _aim(target: str, run: Thunk) -> Aim:
    return target, run


# The direct probes: straight to the allowed host's address, ignoring the proxy.


@_needs("allowed", "denied")
def _direct_https(o: AttackOptions, t: Targets) -> Aim | str:
    address, port, sni = t.v4[0], t.https_port, t.denied_host or ""
    return _aim(format_hostport(address, port), lambda: probe_tls(address, port, sni, o.timeout_s))


@_needs("allowed")
def _direct_other(o: AttackOptions, t: Targets) -> Aim | str:
    address, port = t.v4[0], o.other_port
    return _aim(format_hostport(address, port), lambda: probe_connect(address, port, o.timeout_s))


@_needs("allowed", "denied")
def _direct_http(o: AttackOptions, t: Targets) -> Aim | str:
    address, port, host = t.v4[0], t.http_port, t.denied_host or ""
    return _aim(
        format_hostport(address, port), lambda: probe_http(address, port, host, o.timeout_s)
    )


@_needs("allowed-v6", "denied")
def _direct_v6(o: AttackOptions, t: Targets) -> Aim | str:
    address, port, sni = t.v6[0], t.https_port, t.denied_host or ""
    return _aim(format_hostport(address, port), lambda: probe_tls(address, port, sni, o.timeout_s))


@_needs("allowed")
def _udp_quic(o: AttackOptions, t: Targets) -> Aim | str:
    address = t.v4[0]
    target = f"udp:{format_hostport(address, QUIC_PORT)}"
    return _aim(target, lambda: probe_udp_quic(address, o.timeout_s))


# DNS around the cluster's resolver.


def _dns_outside(probe: Callable[[str, str, float], Observation]) -> Builder:
    @_needs("resolver", "denied")
    def build(o: AttackOptions, t: Targets) -> Aim | str:
        server, name = o.outside_resolver or "", t.denied_host or ""
        return _aim(format_hostport(server, DNS_PORT), lambda: probe(server, name, o.timeout_s))

    return build


@_needs("resolver")
def _dot(o: AttackOptions, t: Targets) -> Aim | str:
    server = o.outside_resolver or ""
    return _aim(
        format_hostport(server, DOT_PORT), lambda: probe_tls(server, DOT_PORT, "", o.timeout_s)
    )


@_needs("doh")
def _doh_direct(o: AttackOptions, t: Targets) -> Aim | str:
    name = o.doh_name or ""
    return _aim(f"{name}:443", lambda: probe_doh_direct(name, o.timeout_s))


# Through the proxy: requests it must refuse.


def _connect(authority: Callable[[AttackOptions, Targets], str], *needs: str) -> Builder:
    """CONNECT to `authority(o, t)`; the proxy must refuse it."""

    @_needs("proxy", *needs)
    def build(o: AttackOptions, t: Targets) -> Aim | str:
        endpoint, target = t.proxy, authority(o, t)
        return _aim(target, lambda: probe_proxy_connect(endpoint, target, None, o.timeout_s))

    return build


def _get(url_host: Callable[[Targets], tuple[str, str]], *needs: str) -> Builder:
    """GET the absolute URL with this Host through the proxy; the proxy must refuse it."""

    @_needs("proxy", *needs)
    def build(o: AttackOptions, t: Targets) -> Aim | str:
        endpoint, (url, host) = t.proxy, url_host(t)
        return _aim(url, lambda: probe_proxy_get(endpoint, url, host, o.timeout_s))

    return build


@_needs("proxy", "allowed-url", "denied")
def _sni_mismatch(o: AttackOptions, t: Targets) -> Aim | str:
    assert t.allowed is not None
    endpoint, sni = t.proxy, t.denied_host
    target = format_hostport(t.allowed.host, t.https_port)
    return _aim(
        target,
        lambda: probe_proxy_connect(endpoint, target, sni, o.timeout_s, tests_sni=True),
    )


@_needs("proxy", "doh")
def _doh_proxy(o: AttackOptions, t: Targets) -> Aim | str:
    endpoint, name = t.proxy, o.doh_name or ""
    target = f"{name}:443"
    return _aim(target, lambda: probe_proxy_connect(endpoint, target, name, o.timeout_s))


@_needs("proxy", "allowed-http", "denied")
def _keepalive(o: AttackOptions, t: Targets) -> Aim | str:
    endpoint, allowed = t.proxy, t.allowed_http
    url, host = t.denied_http or "", t.denied_authority
    assert allowed is not None
    return _aim(url, lambda: probe_keepalive(endpoint, allowed, url, host, o.timeout_s))


def _ip_literal_url(t: Targets) -> tuple[str, str]:
    host = t.v4[0] if t.http_port == 80 else format_hostport(t.v4[0], t.http_port)
    return f"http://{host}/", host


def _host_mismatch(t: Targets) -> tuple[str, str]:
    allowed = t.allowed_http.host_header if t.allowed_http is not None else ""
    return t.denied_http or "", allowed or (t.allowed.host if t.allowed else "")


def _metadata(address: str) -> Callable[[Targets], tuple[str, str]]:
    host = f"[{address}]" if ":" in address else address
    return lambda t: (f"http://{host}/", host)


def _metadata_direct(address: str) -> Builder:
    host = f"[{address}]" if ":" in address else address

    def build(o: AttackOptions, t: Targets) -> Aim | str:
        return _aim(
            format_hostport(address, 80), lambda: probe_http(address, 80, host, o.timeout_s)
        )

    return build


_BUILDERS: Mapping[str, Builder] = {
    "direct.tcp-https": _direct_https,
    "direct.tcp-other-port": _direct_other,
    "direct.http": _direct_http,
    "direct.ipv6": _direct_v6,
    "udp.quic": _udp_quic,
    "dns.udp-outside": _dns_outside(probe_dns_udp),
    "dns.tcp-outside": _dns_outside(probe_dns_tcp),
    "dns.dot-outside": _dot,
    "dns.doh-direct": _doh_direct,
    "dns.doh-via-proxy": _doh_proxy,
    "proxy.connect-ip-literal": _connect(
        lambda o, t: format_hostport(t.v4[0], t.https_port), "allowed"
    ),
    "proxy.http-ip-literal": _get(_ip_literal_url, "allowed"),
    "proxy.sni-mismatch": _sni_mismatch,
    "proxy.host-mismatch": _get(_host_mismatch, "allowed-url", "denied"),
    "proxy.http-denied": _get(lambda t: (t.denied_http or "", t.denied_authority), "denied"),
    "proxy.keepalive-denied": _keepalive,
    "proxy.self": _connect(lambda o, t: t.proxy.authority),
    "proxy.admin": _connect(lambda o, t: format_hostport(t.proxy.host, o.admin_port or 0), "admin"),
    "metadata.proxy-v4": _get(_metadata(METADATA_V4)),
    "metadata.proxy-v4-mapped": _get(_metadata(METADATA_V4_MAPPED)),
    "metadata.proxy-nat64": _get(_metadata(METADATA_NAT64)),
    "metadata.direct-v4": _metadata_direct(METADATA_V4),
    "metadata.direct-v4-mapped": _metadata_direct(METADATA_V4_MAPPED),
    "metadata.direct-nat64": _metadata_direct(METADATA_NAT64),
}


def plan(options: AttackOptions, targets: Targets) -> list[Planned]:
    """Every catalogue probe, in catalogue order, each runnable or skipped with its reason."""
    planned: list[Planned] = []
    for probe_id, spec in BY_ID.items():
        if any(probe_id.startswith(prefix) for prefix in options.skip):
            planned.append(Planned(spec, "", why_not="--skip"))
            continue
        aim = _BUILDERS[probe_id](options, targets)
        if isinstance(aim, str):
            planned.append(Planned(spec, "", why_not=aim))
        else:
            planned.append(Planned(spec, aim[0], run=aim[1]))
    return planned


# -- the run -----------------------------------------------------------------------------------


def run_planned(planned: Sequence[Planned], parallel: int) -> list[Finding]:
    """Run the runnable probes concurrently (at most `parallel` at once); findings in order."""
    runnable = [p for p in planned if p.run is not None]
    workers = max(1, min(parallel, MAX_PARALLEL, len(runnable) or 1))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="attack") as pool:
        futures = {id(p): pool.submit(_run_one, p) for p in runnable}
        return [
            futures[id(p)].result()
            if p.run is not None
            else skipped(p.spec, p.why_not or "not applicable", p.target)
            for p in planned
        ]


def _run_one(planned: Planned) -> Finding:
    assert planned.run is not None
    try:
        observation = planned.run()
    except NotRunnable as exc:
        return skipped(planned.spec, str(exc), planned.target)
    except Exception as exc:  # one probe's failure must not lose the other findings
        observation = Observation(Outcome.ERROR, f"the probe failed: {type(exc).__name__}: {exc}.")
    return judge(planned.spec, planned.target, observation)
