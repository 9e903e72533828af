"""`egressgate verify --attack` end to end, in network namespaces this module creates: the
complete recipes pass, and each broken variant is caught by the probe that should catch it.

    app ns (explicit)        proxy ns (routes, like a node)     inet ns ("the internet")
    198.18.11.2 ── veth ── 198.18.11.1 │ 198.18.12.1 ── veth ── 198.18.12.10 allowed :80 :443
    2001:db8:11::2       2001:db8:11::1 │ 2001:db8:12::1        2001:db8:12::10 (v6) :443
    verify --attack      egressgate run (explicit)             198.18.12.10 :8443, UDP :443
    nft: NetworkPolicy   listen 198.18.11.1:3128               198.18.12.11 denied :80 :443
                                                               198.18.12.53 cluster DNS
    pod ns (transparent)                                       198.18.12.54 outside resolver
    198.18.13.2 ─────────────── veth ──────────────── 198.18.13.1  (53 UDP/TCP, DoT 853)
    egressgate sidecar as `nobody` + redirect.nft              198.18.12.80 dns.e2e.test (DoH)
                                                               169.254.169.254 metadata :80

Two recipes share the one internet namespace and its one server process:

* explicit: the app namespace gets the NetworkPolicy's egress rule as an nftables `inet` table
  (both families: only the proxy's IP:port and DNS to the cluster DNS leave) and the variables
  `egressgate env` prints; the proxy runs in the proxy namespace;
* transparent: the pod namespace runs the sidecar as `nobody` behind the very script
  `k8s render --mode transparent` ships (egressgate/tools/redirect.py), DNS guard included.

Each broken variant replaces the nftables table (nothing is rebuilt): the egress rule removed,
UDP 443 left open, DNS to outside allowed, IPv6 left open (an `ip` table: IPv4 only), and the
transparent redirect covering 443 only with plain HTTP let out. Addresses are 198.18.0.0/15
(RFC 2544), 2001:db8::/32 (documentation) and the metadata address, all owned by the internet
namespace: no namespace has a default route and there is no NAT, so nothing leaves.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from egressgate.tools.redirect import TABLE as REDIRECT_TABLE
from egressgate.tools.redirect import nft_script
from tests.e2e.netns import (
    Lab,
    Namespace,
    Service,
    egress_ruleset,
    egressgate_as,
    existing_namespaces,
    shared_workdir,
    start_internet,
)
from tests.e2e.netns import unavailable as netns_unavailable
from tests.support.proxy import ProxyProcess, clean_env
from tests.support.tlsca import HarnessCA

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

ALLOWED, DENIED, DOH = "allowed.e2e.test", "denied.e2e.test", "dns.e2e.test"
APP_IP, PROXY_APP_SIDE = "198.18.11.2", "198.18.11.1"
APP_IP6, PROXY_APP_SIDE6 = "2001:db8:11::2", "2001:db8:11::1"
PROXY_NET_SIDE, PROXY_NET_SIDE6 = "198.18.12.1", "2001:db8:12::1"
ALLOWED_IP, ALLOWED_IP6, DENIED_IP = "198.18.12.10", "2001:db8:12::10", "198.18.12.11"
DNS_IP, OUTSIDE_DNS_IP, DOH_IP = "198.18.12.53", "198.18.12.54", "198.18.12.80"
METADATA = "169.254.169.254"
POD_IP, INET_POD_SIDE = "198.18.13.2", "198.18.13.1"
PROXY_PORT, OTHER_PORT = 3128, 8443
NOBODY, TRANSPARENT_PORT, GUARD_PORT = 65534, 3130, 5353
TABLE = "egressgate_policy"  # the nftables table standing in for the NetworkPolicy

ATTACK_ARGS = [
    "verify",
    "--attack",
    "--json",
    "--timeout",
    "1",
    "--parallel",
    "24",  # every probe at once: one timeout per run, not one per probe
    "--no-api",
    "--allowed",
    f"http://{ALLOWED}/",
    "--allowed",
    f"https://{ALLOWED}/",
    "--denied",
    f"http://{DENIED}/",
    "--outside-resolver",
    OUTSIDE_DNS_IP,
    "--doh-name",
    DOH,
    "--other-port",
    str(OTHER_PORT),
]


def _policy_ruleset(family: str = "inet", *extra: str) -> str:
    """The NetworkPolicy's egress rule as nftables, plus `extra` accept rules (the mistakes).
    `family` "ip" filters IPv4 only: the classic iptables-without-ip6tables setup."""
    ruleset = egress_ruleset(TABLE, (PROXY_APP_SIDE, PROXY_PORT), DNS_IP)
    if family != "inet":
        ruleset = ruleset.replace("table inet", f"table {family}")
    if extra:
        rules = "".join(f"    {rule}\n" for rule in extra)
        ruleset = ruleset.replace("  }\n}", rules + "  }\n}")
    return ruleset


@dataclass
class World:
    lab: Lab
    app: Namespace
    pod: Namespace
    internet: Service
    variables: dict[str, str]

    def attack(self, ns: Namespace, env: dict[str, str]) -> tuple[int, dict[str, Any]]:
        argv = [sys.executable, "-m", "egressgate", *ATTACK_ARGS]
        result = ns.run(argv, env=clean_env(env), timeout=40)
        assert result.stdout.strip(), f"no output; stderr:\n{result.stderr}"
        return result.returncode, json.loads(result.stdout)

    def explicit(self) -> tuple[int, dict[str, Any]]:
        return self.attack(self.app, self.variables)

    def transparent(self) -> tuple[int, dict[str, Any]]:
        return self.attack(self.pod, {})

    def set_policy(self, ruleset: str) -> None:
        self.app.run(["nft", "delete", "table", "inet", TABLE])  # whichever family is there
        self.app.run(["nft", "delete", "table", "ip", TABLE])
        self.app.nft(ruleset)

    def set_redirect(self, script: str) -> None:
        self.pod.nft(script)  # the script replaces its own table atomically


def _skip_unless_available() -> None:
    reason = netns_unavailable()
    if reason is not None:
        pytest.skip(reason)
    if shutil.which("setpriv") is None:
        pytest.skip("needs `setpriv` (the sidecar runs as nobody)")


def _wire(lab: Lab) -> tuple[Namespace, Namespace, Namespace, Namespace]:
    app, proxy, inet, pod = (lab.namespace(n) for n in ("app", "proxy", "inet", "pod"))
    lab.link(app, "eth0", f"{APP_IP}/24", proxy, "app0", f"{PROXY_APP_SIDE}/24")
    lab.link(proxy, "inet0", f"{PROXY_NET_SIDE}/24", inet, "eth0", f"{ALLOWED_IP}/24")
    lab.link(pod, "eth0", f"{POD_IP}/24", inet, "pod0", f"{INET_POD_SIDE}/24")
    for extra in (DENIED_IP, DNS_IP, OUTSIDE_DNS_IP, DOH_IP):
        inet.ip("addr", "add", f"{extra}/24", "dev", "eth0")
    inet.ip("addr", "add", f"{METADATA}/32", "dev", "eth0")
    # IPv6 on the explicit side only (nodad: usable at once, no duplicate detection wait).
    for ns, address, dev in (
        (app, APP_IP6, "eth0"),
        (proxy, PROXY_APP_SIDE6, "app0"),
        (proxy, PROXY_NET_SIDE6, "inet0"),
        (inet, ALLOWED_IP6, "eth0"),
    ):
        ns.ip("-6", "addr", "add", f"{address}/64", "dev", dev, "nodad")
    # Routes between the test subnets only; no default route anywhere, no NAT.
    app.route("198.18.12.0/24", via=PROXY_APP_SIDE)
    app.route(f"{METADATA}/32", via=PROXY_APP_SIDE)
    app.ip("-6", "route", "add", "2001:db8:12::/64", "via", PROXY_APP_SIDE6)
    proxy.route(f"{METADATA}/32", via=ALLOWED_IP)
    inet.route("198.18.11.0/24", via=PROXY_NET_SIDE)
    inet.ip("-6", "route", "add", "2001:db8:11::/64", "via", PROXY_NET_SIDE6)
    pod.route("198.18.12.0/24", via=INET_POD_SIDE)
    pod.route(f"{METADATA}/32", via=INET_POD_SIDE)
    proxy.sysctl("net.ipv4.ip_forward", "1")  # per namespace: the host's setting is untouched
    proxy.sysctl("net.ipv6.conf.all.forwarding", "1")
    resolv = f"nameserver {DNS_IP}\noptions timeout:1 attempts:1\n"
    app.write_etc("resolv.conf", resolv)
    pod.write_etc("resolv.conf", resolv)
    return app, proxy, inet, pod


def _start_internet(lab: Lab, inet: Namespace, ca: HarnessCA, workdir: Path) -> Service:
    def tls(name: str, listen: str, cert_name: str) -> dict[str, str]:
        cert = ca.server_cert(cert_name)
        return {
            "name": name,
            "listen": listen,
            "cert": str(cert.chain_path),
            "key": str(cert.key_path),
        }

    spec = {
        "dns": {
            "listen": [DNS_IP, OUTSIDE_DNS_IP],
            "records": {
                ALLOWED: [ALLOWED_IP, ALLOWED_IP6],
                DENIED: [DENIED_IP],
                DOH: [DOH_IP],
            },
        },
        "origins": [
            {"name": "allowed", "listen": f"{ALLOWED_IP}:80"},
            tls("allowed-tls", f"{ALLOWED_IP}:443", ALLOWED),
            tls("allowed-tls6", f"[{ALLOWED_IP6}]:443", ALLOWED),
            {"name": "allowed-other", "listen": f"{ALLOWED_IP}:{OTHER_PORT}"},
            {"name": "denied", "listen": f"{DENIED_IP}:80"},
            tls("denied-tls", f"{DENIED_IP}:443", DENIED),
            tls("dot", f"{OUTSIDE_DNS_IP}:853", DOH),
            tls("doh", f"{DOH_IP}:443", DOH),
            {"name": "metadata", "listen": f"{METADATA}:80"},
        ],
        "udp": [f"{ALLOWED_IP}:443"],
    }
    return start_internet(lab, inet, spec, workdir)


def _start_explicit_proxy(lab: Lab, proxy_ns: Namespace, workdir: Path) -> ProxyProcess:
    config = {
        "listen": f"{PROXY_APP_SIDE}:{PROXY_PORT}",
        "admin_listen": None,
        "allow": [ALLOWED],
        "http_ports": [80],
        "connect_ports": [443],
        "allow_private": ["198.18.12.0/24", "2001:db8:12::/64"],  # the internet namespace
        "nameservers": [DNS_IP],
        "access_log": str(workdir / "access.log"),
    }
    command = [*proxy_ns.exec_prefix(), sys.executable, "-m", "egressgate"]
    proxy = ProxyProcess(config, workdir, command=command)
    lab.on_close(proxy.close)
    return proxy.start()


def _start_sidecar(lab: Lab, pod: Namespace) -> ProxyProcess:
    workdir = shared_workdir(lab, "egt-attack-")
    config = {
        "listen": "127.0.0.1:3128",
        "admin_listen": None,
        "transparent_listen": f"127.0.0.1:{TRANSPARENT_PORT}",
        "dns_listen": f"127.0.0.1:{GUARD_PORT}",
        "allow": [ALLOWED],
        "http_ports": [80],
        "connect_ports": [443],
        "allow_private": ["198.18.12.0/24"],
        "nameservers": [DNS_IP],
        "access_log": "-",
    }
    # Another UID, as in the pod (see netns.egressgate_as).
    proxy = ProxyProcess(config, workdir, command=egressgate_as(pod, NOBODY))
    lab.on_close(proxy.close)
    (workdir / "config.yaml").chmod(0o644)
    return proxy.start()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, test_ca: HarnessCA) -> Iterator[World]:
    _skip_unless_available()
    workdir = tmp_path_factory.mktemp("attack")
    lab = Lab()
    try:
        app, proxy_ns, inet, pod = _wire(lab)
        internet = _start_internet(lab, inet, test_ca, workdir)
        _start_explicit_proxy(lab, proxy_ns, workdir / "proxy")
        _start_sidecar(lab, pod)
        app.nft(_policy_ruleset())
        pod.nft(nft_script(NOBODY, TRANSPARENT_PORT, GUARD_PORT))
        env_json = app.run(
            [
                *(sys.executable, "-m", "egressgate", "env"),
                *("--proxy", f"http://{PROXY_APP_SIDE}:{PROXY_PORT}", "--format", "json"),
            ],
            env=clean_env(),
        )
        assert env_json.returncode == 0, env_json.stderr
        variables = json.loads(env_json.stdout)["variables"]
        yield World(lab, app, pod, internet, variables)
    finally:
        lab.close()
        leftovers = existing_namespaces(lab.prefix)
        assert leftovers == [], f"namespaces left behind: {leftovers}"


@pytest.fixture(autouse=True)
def complete_recipes(world: World) -> None:
    """Every test starts from the complete recipes (a variant test breaks one of them)."""
    world.set_policy(_policy_ruleset())
    world.set_redirect(nft_script(NOBODY, TRANSPARENT_PORT, GUARD_PORT))


def _by_probe(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {p["probe"]: p for p in report["probes"]}


def _not_stopped(report: dict[str, Any]) -> dict[str, str]:
    return {
        p["probe"]: p["status"]
        for p in report["probes"]
        if p["status"] not in ("stopped", "skipped")
    }


# -- the complete recipes pass -----------------------------------------------------------------

EXPLICIT_LAYERS = {
    "direct.tcp-https": "network",
    "direct.tcp-other-port": "network",
    "direct.http": "network",
    "direct.ipv6": "network",
    "udp.quic": "network",
    "dns.udp-outside": "network",
    "dns.tcp-outside": "network",
    "dns.dot-outside": "network",
    "dns.doh-direct": "network",
    "dns.doh-via-proxy": "proxy",
    "proxy.connect-ip-literal": "proxy",
    "proxy.http-ip-literal": "proxy",
    "proxy.sni-mismatch": "proxy",
    "proxy.host-mismatch": "proxy",
    "proxy.http-denied": "proxy",
    "proxy.keepalive-denied": "proxy",
    "proxy.self": "proxy",
    "proxy.admin": "proxy",
    "metadata.proxy-v4": "proxy",
    "metadata.proxy-v4-mapped": "proxy",
    "metadata.proxy-nat64": "proxy",
    "metadata.direct-v4": "network",
    "metadata.direct-v4-mapped": "network",
    "metadata.direct-nat64": "network",
}


def test_the_complete_explicit_recipe_stops_every_probe_at_the_intended_layer(
    world: World,
) -> None:
    code, report = world.explicit()
    probes = _by_probe(report)
    layers = {k: p["layer"] for k, p in probes.items()}
    assert layers == EXPLICIT_LAYERS, json.dumps(report, indent=1)
    assert code == 0, json.dumps(report, indent=1)
    assert {p["status"] for p in probes.values()} == {"stopped"}
    assert probes["proxy.sni-mismatch"]["outcome"] == "tls-access-denied"
    assert probes["proxy.connect-ip-literal"]["reason"] == "ip-literal-not-allowed"
    assert probes["direct.ipv6"]["target"] == f"[{ALLOWED_IP6}]:443"
    pod = {c["name"]: c["status"] for c in report["pod"]}
    assert pod["pod.host-network"] == "pass"
    assert pod["pod.mesh"] == "pass"
    assert pod["pod.network-policy"] == "skip"
    # Nothing the probes tried reached the internet's origins directly.
    peers = {e["peer"] for e in world.internet.snapshot() if e.get("event") == "request"}
    assert APP_IP not in peers


def test_the_complete_transparent_recipe_stops_every_probe_at_the_intended_layer(
    world: World,
) -> None:
    code, report = world.transparent()
    probes = _by_probe(report)
    assert code == 0, json.dumps(report, indent=1)
    stopped = {k: p["layer"] for k, p in probes.items() if p["status"] == "stopped"}
    assert stopped == {
        "direct.tcp-https": "proxy",  # redirected; the sidecar refused the denied SNI
        "direct.tcp-other-port": "network",
        "direct.http": "proxy",  # redirected; 403 for the denied Host
        "udp.quic": "network",
        "dns.udp-outside": "dns-guard",  # UDP 53 redirected to the guard: NXDOMAIN
        "dns.tcp-outside": "dns-guard",
        "dns.dot-outside": "network",
        "dns.doh-direct": "dns-guard",  # the guard does not resolve the DoH name
        "metadata.direct-v4": "proxy",
        "metadata.direct-v4-mapped": "proxy",
        "metadata.direct-nat64": "network",
    }, json.dumps(report, indent=1)
    skipped = {k for k, p in probes.items() if p["status"] == "skipped"}
    assert "direct.ipv6" in skipped  # the pod has no IPv6
    assert all(
        k.startswith(("proxy.", "dns.doh-via", "metadata.proxy", "direct.ipv6")) for k in skipped
    )
    assert "no HTTP(S)_PROXY variable" in probes["proxy.http-denied"]["explanation"]
    assert probes["direct.tcp-https"]["outcome"] == "tls-access-denied"
    assert probes["direct.http"]["reason"] == "host-not-allowed"


# -- each broken variant is caught by the probe that should catch it ---------------------------


def test_egress_rule_removed_is_caught_by_the_direct_connection(world: World) -> None:
    world.app.run(["nft", "delete", "table", "inet", TABLE])
    code, report = world.explicit()
    assert code == 1
    probes = _by_probe(report)
    direct = probes["direct.tcp-https"]
    assert (direct["status"], direct["layer"], direct["outcome"]) == (
        "through",
        "nothing",
        "tls-handshake-completed",
    )
    assert direct["explanation"].startswith("NOTHING stopped it: a TLS server completed")
    assert direct["fix"].startswith("the pod's egress is not restricted to the proxy")
    through = {k for k, p in probes.items() if p["status"] == "through"}
    assert through >= {"direct.tcp-other-port", "direct.http", "udp.quic", "dns.udp-outside"}
    assert through >= {"direct.ipv6", "metadata.direct-v4", "dns.doh-direct"}
    # The proxy's own refusals do not depend on the network rule.
    assert all(probes[k]["status"] == "stopped" for k in probes if k.startswith("proxy."))


def test_udp_443_left_open_is_caught_by_the_quic_probe(world: World) -> None:
    world.set_policy(_policy_ruleset("inet", "udp dport 443 accept"))
    code, report = world.explicit()
    assert code == 1
    assert _not_stopped(report) == {"udp.quic": "through"}
    quic = _by_probe(report)["udp.quic"]
    assert quic["outcome"] == "udp-reply"
    assert "a 21-byte reply came back" in quic["explanation"]
    udp = [e for e in world.internet.snapshot() if e.get("event") == "udp"]
    assert udp[-1]["bytes"] == 1200


def test_dns_to_outside_allowed_is_caught_by_the_dns_probes(world: World) -> None:
    world.set_policy(_policy_ruleset("inet", "udp dport 53 accept", "tcp dport 53 accept"))
    code, report = world.explicit()
    assert code == 1
    assert _not_stopped(report) == {"dns.udp-outside": "through", "dns.tcp-outside": "through"}
    probes = _by_probe(report)
    for probe_id in ("dns.udp-outside", "dns.tcp-outside"):
        assert probes[probe_id]["rcode"] == "NOERROR"
        assert "the resolver answered (NOERROR, 1 record(s))" in probes[probe_id]["explanation"]
    queried = [e for e in world.internet.snapshot() if e.get("event") == "dns"]
    assert any(e["name"] == DENIED and e["peer"] == APP_IP for e in queried)


def test_ipv6_left_open_is_caught_by_the_ipv6_probe(world: World) -> None:
    world.set_policy(_policy_ruleset("ip"))  # iptables without ip6tables
    code, report = world.explicit()
    assert code == 1
    assert _not_stopped(report) == {"direct.ipv6": "through"}
    ipv6 = _by_probe(report)["direct.ipv6"]
    assert ipv6["target"] == f"[{ALLOWED_IP6}]:443"
    assert ipv6["fix"].startswith("IPv6 is not filtered")


def test_a_redirect_covering_443_only_is_caught_by_the_plain_http_probes(world: World) -> None:
    """The redirect covers 443 only, and port 80 was let out when plain HTTP broke."""
    script = nft_script(NOBODY, TRANSPARENT_PORT, GUARD_PORT, tcp_ports=(443,))
    script = script.replace(
        '    udp dport 443 counter drop comment "QUIC: clients fall back to TCP 443"',
        "    tcp dport 80 accept\n"
        '    udp dport 443 counter drop comment "QUIC: clients fall back to TCP 443"',
    )
    world.set_redirect(script)
    code, report = world.transparent()
    assert code == 1
    assert _not_stopped(report) == {
        "direct.http": "through",
        "metadata.direct-v4": "through",
        "metadata.direct-v4-mapped": "through",
    }
    http = _by_probe(report)["direct.http"]
    assert http["http_status"] == 200
    assert "answered 200 without X-Egressgate-Reason" in http["explanation"]
    assert http["fix"].startswith("plain HTTP leaves the pod unfiltered")


def test_the_rules_are_replaced_not_rebuilt(world: World) -> None:
    ruleset = world.pod.run(["nft", "list", "table", "inet", REDIRECT_TABLE]).stdout
    assert f"redirect to :{TRANSPARENT_PORT}" in ruleset
    assert "tcp dport 80 accept" not in ruleset  # the fixture restored the complete recipe
