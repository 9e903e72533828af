"""`egressgate verify --attack`: the bypass-probe catalogue and its verdicts (pure).

A probe tries ONE way around the egress gate from inside the workload (a direct connection, UDP
443, DNS to an outside resolver, a CONNECT the proxy must refuse, ...). What it saw is an
`Observation` (a value: the outcome, the HTTP status and X-Egressgate-Reason, the DNS rcode, the
facts in words). `judge(spec, observation)` turns it into a `Finding`: WHICH LAYER stopped it
(the proxy with its reason code, the network rules, the DNS guard), that NOTHING did, or that it
was stopped but the outcome cannot tell by what ("stopped, layer unknown"). Nothing here opens a
socket: the probes live in egressgate/tools/attack_probes.py, the output in attack_report.py.

How an outcome maps to a layer (the only inferences this module makes):

  outcome                                   layer
  ---------------------------------------   --------------------------------------------------
  HTTP answer with X-Egressgate-Reason, 4xx  proxy (its reason code); 407 is "layer unknown":
                                             the proxy asked for credentials before deciding
  ... with a reason, < 400 (report-only)     nothing: report mode let it through
  ... with a reason, 5xx                     unknown: the proxy ADMITTED it, then failed upstream
  HTTP answer without the header             nothing: something other than egressgate answered
  CONNECT 200, TLS handshake completed       nothing
  TLS alert access_denied                    proxy (its SNI check)
  TCP connect timed out / ICMP unreachable   network rules (dropped / rejected on the path)
  EPERM / EACCES on connect or send          network rules (a local firewall rule)
  TCP connect refused (RST)                  unknown: a reject rule, or nothing listens there
  TCP connected, nothing more to try         nothing
  connected, then reset / no answer          unknown
  UDP reply                                  nothing
  UDP: no reply                              network rules (a drop looks like this; so does a
                                             target that never answers: the text says so)
  UDP: ICMP port unreachable                 unknown: a reject rule, or nothing listens there
  DNS answer NOERROR                         nothing: that resolver answers
  DNS answer NXDOMAIN / REFUSED              DNS guard (or the resolver does not know the name)
  the pod's resolver refuses a name          DNS guard
  an earlier step failed (e.g. the CONNECT   unknown: what the probe tests was not exercised
  to the allowed host was refused)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from egressgate.errors import Reason


class Layer(StrEnum):
    """What stopped a probe."""

    PROXY = "proxy"
    NETWORK = "network"
    DNS_GUARD = "dns-guard"
    UNKNOWN = "unknown"  # stopped, but the outcome cannot tell by what
    NONE = "nothing"  # the probe got through


class Status(StrEnum):
    """The verdict on one probe. Only STOPPED and SKIPPED keep the exit status 0."""

    STOPPED = "stopped"  # stopped by one of the intended layers
    THROUGH = "through"  # nothing stopped it: a bypass
    UNCLEAR = "unclear"  # stopped by an unintended layer, or layer unknown: not proven
    SKIPPED = "skipped"  # not applicable or not runnable here (the detail says why)


class Outcome(StrEnum):
    """What a probe observed, at its last step."""

    TIMEOUT = "timeout"  # TCP connect or UDP send with no answer within the timeout
    REFUSED = "refused"  # TCP RST on connect
    UNREACHABLE = "unreachable"  # ICMP host/network unreachable, or no route
    BLOCKED_LOCAL = "blocked-locally"  # EPERM/EACCES: a firewall rule in this namespace
    CONNECTED = "connected"  # TCP connected and the probe had nothing more to send
    SILENT = "silent"  # connected, sent its bytes, no answer within the timeout
    RESET = "reset"  # connected, then closed or reset without an answer
    HTTP = "http"  # an HTTP response head (status, maybe X-Egressgate-Reason)
    TUNNEL = "tunnel"  # CONNECT answered 200 and nothing more was tried
    TLS_DENIED = "tls-access-denied"  # TLS alert access_denied (egressgate's SNI refusal)
    TLS_FAILED = "tls-failed"  # another TLS error
    TLS_OK = "tls-handshake-completed"
    UDP_REPLY = "udp-reply"
    UDP_PORT_UNREACHABLE = "udp-port-unreachable"
    DNS_ANSWER = "dns-answer"  # a DNS reply (rcode and answer count)
    NAME_REFUSED = "name-refused"  # the pod's own resolver: NXDOMAIN / no address for the name
    NAME_FAILED = "name-failed"  # the pod's own resolver failed otherwise (timeout, SERVFAIL)
    NOT_EXERCISED = "not-exercised"  # an earlier step failed: the tested step never happened
    ERROR = "error"  # a local error that says nothing about the path


@dataclass(frozen=True, slots=True)
class Observation:
    """What one probe saw (no judgement): built by attack_probes, judged by `judge`."""

    outcome: Outcome
    facts: str  # what happened, in words ("CONNECT 198.18.2.10:443 → 403 ...")
    http_status: int | None = None
    reason: str | None = None  # X-Egressgate-Reason
    rcode: str | None = None  # DNS rcode text (NOERROR, NXDOMAIN, REFUSED, SERVFAIL, ...)
    answers: int = 0  # DNS answer records
    elapsed_ms: float = 0.0


@dataclass(frozen=True, slots=True)
class ProbeSpec:
    """One entry of the catalogue: what the probe tries and which layers should stop it."""

    id: str  # stable: the SARIF rule id, the JSON `probe`, the --skip prefix
    title: str
    tries: str  # what it sends, exactly (for the docs and the report)
    intended: frozenset[Layer]
    fix: str  # how to close it when it gets through

    @property
    def intended_text(self) -> str:
        return " or ".join(_LAYER_WORDS[layer] for layer in sorted(self.intended))


@dataclass(frozen=True, slots=True)
class Finding:
    """The verdict on one probe."""

    probe: ProbeSpec
    target: str  # what it was aimed at (HOST:PORT, URL, resolver), "" when skipped early
    status: Status
    layer: Layer | None  # None when skipped
    explanation: str  # why this verdict: the layer's evidence, then the facts
    observation: Observation | None = None

    @property
    def fix(self) -> str | None:
        return self.probe.fix if self.status in (Status.THROUGH, Status.UNCLEAR) else None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "probe": self.probe.id,
            "title": self.probe.title,
            "status": str(self.status),
            "layer": str(self.layer) if self.layer is not None else None,
            "intended": sorted(str(layer) for layer in self.probe.intended),
            "target": self.target,
            "explanation": self.explanation,
        }
        obs = self.observation
        if obs is not None:
            out["outcome"] = str(obs.outcome)
            out["elapsed_ms"] = round(obs.elapsed_ms, 1)
            extras = {"http_status": obs.http_status, "reason": obs.reason, "rcode": obs.rcode}
            out.update({key: value for key, value in extras.items() if value is not None})
        if self.fix is not None:
            out["fix"] = self.fix
        return out


_LAYER_WORDS = {
    Layer.PROXY: "the proxy",
    Layer.NETWORK: "the network rules",
    Layer.DNS_GUARD: "the DNS guard",
    Layer.UNKNOWN: "an unknown layer",
    Layer.NONE: "nothing",
}

_P, _N, _D = Layer.PROXY, Layer.NETWORK, Layer.DNS_GUARD

# Fix hints shared by several probes.
_FIX_EGRESS_RULE = (
    "the pod's egress is not restricted to the proxy: apply the NetworkPolicy `egressgate k8s "
    "render` prints (egress only to the proxy and the cluster DNS), check that its podSelector "
    "matches this pod and that the cluster's network plugin enforces NetworkPolicies; in "
    "transparent mode check that the init container applied redirect.nft"
)
_FIX_PROXY_POLICY = (
    "the proxy let it through: check that this host is not on the allowlist, that the policy is "
    "not in report mode (`mode: report`), and that the client reached egressgate, not another proxy"
)

CATALOGUE: tuple[ProbeSpec, ...] = (
    ProbeSpec(
        "direct.tcp-https",
        "direct TCP to an allowed host's address, HTTPS port",
        "a TCP connection straight to the first --allowed host's IPv4 address on its HTTPS port "
        "(443 unless an https:// URL says otherwise), ignoring the proxy; if it opens, one TLS "
        "ClientHello naming the --denied host, and nothing after the handshake",
        frozenset({_N, _P}),
        _FIX_EGRESS_RULE,
    ),
    ProbeSpec(
        "direct.tcp-other-port",
        "direct TCP to an allowed host's address, non-standard port",
        "a TCP connection (handshake only) to the first --allowed host's IPv4 address on "
        "--other-port (default 8443): ports outside the redirect or the policy's port list",
        frozenset({_N}),
        "a port outside the redirected ones is let out: the NetworkPolicy (explicit mode) or "
        "redirect.nft's final drop (transparent mode) must drop every other destination port",
    ),
    ProbeSpec(
        "direct.http",
        "direct plain HTTP to an allowed host's address",
        "a TCP connection to the first --allowed host's IPv4 address on its HTTP port (80 unless "
        "an http:// URL says otherwise) and one GET / whose Host is the --denied host",
        frozenset({_N, _P}),
        "plain HTTP leaves the pod unfiltered: in transparent mode redirect port 80 too "
        "(`k8s render --mode transparent --redirect-port 80 --redirect-port 443`) and keep "
        "redirect.nft's final drop; in explicit mode apply the NetworkPolicy",
    ),
    ProbeSpec(
        "direct.ipv6",
        "direct IPv6 to an allowed host",
        "when the pod has a global IPv6 address: a TCP connection to the first --allowed host's "
        "IPv6 address (AAAA, or --ipv6-address) on its HTTPS port; if it opens, one ClientHello "
        "naming the --denied host",
        frozenset({_N, _P}),
        "IPv6 is not filtered: the rules cover IPv4 only (an `ip` table or iptables without "
        "ip6tables); use an `inet` table / a NetworkPolicy that covers both families, or turn "
        "IPv6 off in the pod",
    ),
    ProbeSpec(
        "udp.quic",
        "UDP 443 (QUIC)",
        "one 1200-byte QUIC Initial-shaped datagram (long header, a reserved version that makes a "
        "QUIC server answer with Version Negotiation, zero padding) to the first --allowed "
        "host's IPv4 address, UDP port 443, then a wait for any reply",
        frozenset({_N}),
        "UDP 443 leaves the pod: HTTP/3 goes around a TCP-only redirect. Drop UDP 443 "
        "(redirect.nft does; a NetworkPolicy that allows only the proxy's TCP port does)",
    ),
    ProbeSpec(
        "dns.udp-outside",
        "DNS over UDP 53 to an outside resolver",
        "one DNS A query (for the --denied host, else the --allowed one) to --outside-resolver "
        "on UDP 53",
        frozenset({_N, _D}),
        "DNS to an outside resolver is an exfiltration channel (DNS tunnelling): allow DNS only "
        "to the cluster DNS (the rendered NetworkPolicy's DNS rule) or redirect it to the DNS "
        "guard (dns_listen)",
    ),
    ProbeSpec(
        "dns.tcp-outside",
        "DNS over TCP 53 to an outside resolver",
        "the same query over TCP 53 (length-prefixed), one query, then close",
        frozenset({_N, _D}),
        "TCP 53 to an outside resolver is open: rules often cover UDP 53 only; allow TCP 53 only "
        "to the cluster DNS, or redirect it to the DNS guard",
    ),
    ProbeSpec(
        "dns.dot-outside",
        "DNS over TLS (853) to an outside resolver",
        "a TCP connection to --outside-resolver port 853 and a TLS handshake (no query)",
        frozenset({_N}),
        "DoT (TCP 853) to an outside resolver is open: only the proxy and the cluster DNS may be "
        "reachable; drop every other port",
    ),
    ProbeSpec(
        "dns.doh-direct",
        "DNS over HTTPS to a public resolver, directly",
        "the pod's resolver asked for --doh-name; if it answers, a TCP connection to that address "
        "on 443 and a TLS handshake naming --doh-name (no query)",
        frozenset({_N, _D, _P}),
        "a public DoH resolver is reachable directly: the egress rule lets TCP 443 out; apply "
        "the NetworkPolicy (explicit mode) or the redirect (transparent mode)",
    ),
    ProbeSpec(
        "dns.doh-via-proxy",
        "DNS over HTTPS to a public resolver, through the proxy",
        "CONNECT --doh-name:443 through the proxy",
        frozenset({_P}),
        "the proxy opens tunnels to a public DoH resolver: an exfiltration channel for any "
        "data; remove it from the allowlist (a DoH resolver answers any name)",
    ),
    ProbeSpec(
        "proxy.connect-ip-literal",
        "IP-literal CONNECT",
        "CONNECT to the first --allowed host's IPv4 address (not its name) on its HTTPS port",
        frozenset({_P}),
        "the proxy opens tunnels to bare IP addresses: the hostname allowlist can be skipped; "
        "remove IP ranges from the allowlist (egressgate refuses IP literals unless allowed)",
    ),
    ProbeSpec(
        "proxy.http-ip-literal",
        "IP-literal plain HTTP",
        "GET http://ADDRESS:PORT/ through the proxy, ADDRESS being the first --allowed host's "
        "IPv4 address, PORT its HTTP port",
        frozenset({_P}),
        "the proxy forwards plain HTTP to bare IP addresses: remove IP ranges from the allowlist",
    ),
    ProbeSpec(
        "proxy.sni-mismatch",
        "CONNECT whose TLS server name differs from the CONNECT host",
        "CONNECT to the first --allowed host on its HTTPS port, then a ClientHello naming the "
        "--denied host (domain fronting); the handshake only",
        frozenset({_P}),
        "the proxy does not check the TLS server name against the CONNECT host: turn the SNI "
        "check on (`sni_check`, on by default)",
    ),
    ProbeSpec(
        "proxy.host-mismatch",
        "Host header differing from the absolute URI",
        "GET http://DENIED/ through the proxy with `Host: ALLOWED` (a proxy that decides on the "
        "Host header instead of the URI lets it through)",
        frozenset({_P}),
        "the proxy decided on the Host header, not the request URI: use egressgate (it judges "
        "the URI and rewrites Host from it) or fix the proxy in front of it",
    ),
    ProbeSpec(
        "proxy.http-denied",
        "plain HTTP to a denied host through the proxy",
        "GET http://DENIED/ through the proxy",
        frozenset({_P}),
        _FIX_PROXY_POLICY,
    ),
    ProbeSpec(
        "proxy.keepalive-denied",
        "a denied host on a keep-alive connection first used for an allowed one",
        "one connection to the proxy: GET the first http:// --allowed URL (read its answer in "
        "full), then GET http://DENIED/ on the same connection",
        frozenset({_P}),
        "the proxy judged only the first request of a keep-alive connection: every request must "
        "be decided on its own",
    ),
    ProbeSpec(
        "proxy.self",
        "CONNECT to the proxy's own address",
        "CONNECT PROXY-HOST:PROXY-PORT through the proxy (a loop, or a way to the proxy's "
        "internal side)",
        frozenset({_P}),
        "the proxy tunnels to its own address: keep its network out of the allowlist "
        "(allow_private) so that internal addresses stay refused",
    ),
    ProbeSpec(
        "proxy.admin",
        "CONNECT to the proxy's admin port",
        "CONNECT PROXY-HOST:ADMIN-PORT through the proxy (--admin-port, default 9090)",
        frozenset({_P}),
        "the proxy tunnels to its own admin port: keep its network out of allow_private, and "
        "bind admin_listen where only the kubelet and Prometheus reach it",
    ),
    ProbeSpec(
        "metadata.proxy-v4",
        "cloud metadata through the proxy (IPv4)",
        "GET http://169.254.169.254/ through the proxy",
        frozenset({_P}),
        "the proxy forwards to the metadata service: remove 169.254.0.0/16 from allow_private",
    ),
    ProbeSpec(
        "metadata.proxy-v4-mapped",
        "cloud metadata through the proxy (IPv4-mapped IPv6)",
        "GET http://[::ffff:169.254.169.254]/ through the proxy",
        frozenset({_P}),
        "the proxy does not see through IPv4-mapped IPv6 spellings: upgrade egressgate / report "
        "a bug (it classifies ::ffff:0:0/96 by the embedded IPv4 address)",
    ),
    ProbeSpec(
        "metadata.proxy-nat64",
        "cloud metadata through the proxy (NAT64)",
        "GET http://[64:ff9b::a9fe:a9fe]/ through the proxy",
        frozenset({_P}),
        "the proxy does not refuse NAT64 spellings of internal addresses: upgrade egressgate / "
        "report a bug (64:ff9b::/96 embeds an IPv4 address)",
    ),
    ProbeSpec(
        "metadata.direct-v4",
        "cloud metadata directly (IPv4)",
        "a TCP connection to 169.254.169.254:80 and one GET / (Host: 169.254.169.254)",
        frozenset({_N, _P}),
        "the metadata service is reachable from the pod: block 169.254.169.254 (the rendered "
        "NetworkPolicy allows only the proxy and DNS; on EKS also set the instance metadata hop "
        "limit to 1, on GKE use Workload Identity)",
    ),
    ProbeSpec(
        "metadata.direct-v4-mapped",
        "cloud metadata directly (IPv4-mapped IPv6 socket)",
        "the same request from an IPv6 socket to [::ffff:169.254.169.254]:80 (the kernel sends "
        "IPv4: rules written for one family only may miss it)",
        frozenset({_N, _P}),
        "the metadata service is reachable through an IPv6 socket: filter both families",
    ),
    ProbeSpec(
        "metadata.direct-nat64",
        "cloud metadata directly (NAT64)",
        "the same request to [64:ff9b::a9fe:a9fe]:80 (a NAT64 gateway would translate it to "
        "169.254.169.254)",
        frozenset({_N, _P}),
        "the NAT64 spelling of the metadata address is reachable: filter IPv6 egress too",
    ),
)

BY_ID: Mapping[str, ProbeSpec] = {spec.id: spec for spec in CATALOGUE}


def spec(probe_id: str) -> ProbeSpec:
    return BY_ID[probe_id]


# -- the verdict (pure) ------------------------------------------------------------------------


def layer_of(obs: Observation) -> tuple[Layer, str]:
    """Which layer the observation shows stopped the probe, and the evidence in words."""
    outcome = obs.outcome
    if outcome is Outcome.HTTP:
        return _http_layer(obs)
    simple = _SIMPLE.get(outcome)
    if simple is not None:
        return simple
    if outcome is Outcome.DNS_ANSWER:
        return _dns_layer(obs)
    return Layer.UNKNOWN, "a local error: the probe did not get far enough to tell"


_SIMPLE: Mapping[Outcome, tuple[Layer, str]] = {
    Outcome.TUNNEL: (Layer.NONE, "the proxy opened the tunnel (200)"),
    Outcome.TLS_DENIED: (
        Layer.PROXY,
        "TLS alert access_denied: egressgate's SNI check refused the server name",
    ),
    Outcome.TLS_OK: (Layer.NONE, "a TLS server completed the handshake"),
    Outcome.TLS_FAILED: (
        Layer.UNKNOWN,
        "the TLS handshake failed without egressgate's access_denied alert: something closed it",
    ),
    Outcome.TIMEOUT: (Layer.NETWORK, "no answer: packets dropped on the way, as network rules do"),
    Outcome.UNREACHABLE: (
        Layer.NETWORK,
        "ICMP unreachable or no route: rejected or unroutable on the way",
    ),
    Outcome.BLOCKED_LOCAL: (Layer.NETWORK, "EPERM: a firewall rule in the pod's namespace"),
    Outcome.REFUSED: (
        Layer.UNKNOWN,
        "connection refused (TCP reset): a reject rule, or the destination itself when nothing "
        "listens there — cannot tell which",
    ),
    Outcome.CONNECTED: (Layer.NONE, "the TCP connection opened"),
    Outcome.SILENT: (
        Layer.UNKNOWN,
        "the connection opened, then no answer: something accepted it and said nothing",
    ),
    Outcome.RESET: (
        Layer.UNKNOWN,
        "the connection opened, then was closed without an answer",
    ),
    Outcome.UDP_REPLY: (Layer.NONE, "a reply came back"),
    Outcome.UDP_PORT_UNREACHABLE: (
        Layer.UNKNOWN,
        "ICMP port unreachable: a reject rule, or the host itself when nothing listens — "
        "cannot tell which",
    ),
    Outcome.NAME_REFUSED: (
        Layer.DNS_GUARD,
        "the pod's resolver refused the name (NXDOMAIN / no address): a DNS guard's answer",
    ),
    Outcome.NAME_FAILED: (Layer.UNKNOWN, "the pod's resolver failed (not a refusal)"),
    Outcome.NOT_EXERCISED: (
        Layer.UNKNOWN,
        "an earlier step failed, so the step this probe tests never happened",
    ),
}


def _http_layer(obs: Observation) -> tuple[Layer, str]:
    status, reason = obs.http_status or 0, obs.reason
    if reason is None:
        return Layer.NONE, (
            f"answered {status} without X-Egressgate-Reason: something other than egressgate "
            "answered"
        )
    meaning = _reason_text(reason)
    if status < 400:  # report mode: the proxy would have refused it, and let it through
        return Layer.NONE, f"the proxy let it through ({status}, {reason}: {meaning})"
    if status == 407:
        return Layer.UNKNOWN, (
            "the proxy asked for credentials (407) before deciding: the policy was not exercised"
        )
    if 400 <= status < 500:
        return Layer.PROXY, f"{status} {reason} ({meaning})"
    return Layer.UNKNOWN, (
        f"the proxy ADMITTED it and then failed ({status} {reason}: {meaning}): whatever stopped "
        "it was past the proxy, not its policy"
    )


def _dns_layer(obs: Observation) -> tuple[Layer, str]:
    rcode = obs.rcode or "?"
    if rcode == "NOERROR":
        return Layer.NONE, f"the resolver answered (NOERROR, {obs.answers} record(s))"
    if rcode in ("NXDOMAIN", "REFUSED"):
        return Layer.DNS_GUARD, (
            f"{rcode}: a DNS guard intercepted the query (or that resolver does not know the name)"
        )
    return Layer.UNKNOWN, f"answered {rcode}: neither an answer nor a refusal"


def _reason_text(code: str) -> str:
    try:
        return Reason(code).text
    except ValueError:
        return "a reason code this verify does not know (a newer proxy?)"


def judge(probe: ProbeSpec, target: str, obs: Observation) -> Finding:
    """The verdict: STOPPED by an intended layer, THROUGH, or UNCLEAR (explained)."""
    layer, evidence = layer_of(obs)
    if layer is Layer.NONE:
        status = Status.THROUGH
        explanation = f"NOTHING stopped it: {evidence}. {obs.facts}"
    elif layer in probe.intended:
        status = Status.STOPPED
        explanation = f"stopped by {_LAYER_WORDS[layer]}: {evidence}. {obs.facts}"
    elif layer is Layer.UNKNOWN:
        status = Status.UNCLEAR
        explanation = f"stopped, layer unknown: {evidence}. {obs.facts}"
    else:
        status = Status.UNCLEAR
        explanation = (
            f"stopped by {_LAYER_WORDS[layer]}, but {probe.intended_text} should have: "
            f"{evidence}. {obs.facts}"
        )
    return Finding(probe, target, status, layer, explanation, obs)


def skipped(probe: ProbeSpec, why: str, target: str = "") -> Finding:
    return Finding(probe, target, Status.SKIPPED, None, f"not run: {why}")
