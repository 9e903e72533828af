"""Apps that ignore proxy variables, governed anyway: end to end in network namespaces.

Part 1, the sidecar (transparent mode):

    pod ns                                                     internet ns
    198.18.6.2 ───────────────── veth ───────────────────── 198.18.6.1
    app clients (root, NO proxy variables)                     198.18.6.10  allowed origin :80 :443
    egressgate as `nobody`: transparent 3130, DNS guard 5353   198.18.6.11  denied origin  :80 :443
    nft: the script `k8s render --mode transparent` ships      198.18.6.53  DNS (UDP+TCP 53)
         (egressgate/tools/redirect.py), applied verbatim                   UDP 443 listener

Part 2, the central proxy (`dns_answer: proxy`), no redirect rule and no NET_ADMIN in the pod:

    pod ns 198.18.7.2 ── veth ── 198.18.7.1 central ns 198.18.8.1 ── veth ── 198.18.8.x internet
    resolv.conf → 198.18.7.1     egressgate: DNS guard :53, transparent :3130; a
                                 Service-like DNAT 80/443 → 3130

The pod in part 2 has no route to the internet at all: whatever works, works through the proxy.
Real clients only: curl --noproxy '*', Python urllib with an empty environment, Node's fetch.
Addresses are from 198.18.0.0/15 (never routed anywhere); no namespace has a default route.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from egressgate.tools.redirect import TABLE, nft_script
from tests.e2e.netns import (
    Lab,
    Namespace,
    Service,
    egressgate_as,
    existing_namespaces,
    shared_workdir,
    start_internet,
)
from tests.e2e.netns import unavailable as netns_unavailable
from tests.support.proxy import ProxyProcess, clean_env
from tests.support.tlsca import HarnessCA

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

ALLOWED, DENIED = "allowed.e2e.test", "denied.e2e.test"
NOBODY = 65534
TRANSPARENT_PORT, DNS_PORT = 3130, 5353

NODE_FETCH = r"""
const out = {};
(async () => {
  for (const url of process.argv.slice(1)) {
    try {
      const r = await fetch(url, {signal: AbortSignal.timeout(5000)});
      out[url] = [r.status, r.headers.get("x-egressgate-reason"), await r.text()];
    } catch (e) {
      out[url] = ["error", String(e.cause ? e.cause.code || e.cause : e), ""];
    }
  }
  console.log(JSON.stringify(out));
})();
"""

PY_URLLIB = r"""
import json, ssl, sys, urllib.error, urllib.request
context = ssl.create_default_context(cafile=sys.argv[1])
out = {}
for url in sys.argv[2:]:
    try:
        with urllib.request.urlopen(url, timeout=5, context=context) as r:
            out[url] = [r.status, r.headers.get("X-Egressgate-Reason"), r.read().decode()]
    except urllib.error.HTTPError as e:
        out[url] = [e.code, e.headers.get("X-Egressgate-Reason"), ""]
    except OSError as e:
        out[url] = ["error", str(e), ""]
print(json.dumps(out))
"""

DNS_PROBE = r"""
import json, secrets, socket, sys
out = {}
for name in sys.argv[1:]:
    if name == "TUNNEL":
        names = [f"{secrets.token_hex(12)}.{secrets.token_hex(8)}.t.exfil.e2e.test"
                 for _ in range(20)]
    else:
        names = [name]
    for n in names:
        try:
            out[name] = [a[4][0] for a in socket.getaddrinfo(n, 443, socket.AF_INET)]
        except socket.gaierror as e:
            out[name] = ["gaierror", e.errno]
print(json.dumps(out))
"""

UDP_SEND = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
try:
    s.sendto(b"quic-initial", (sys.argv[1], 443))
    print("sent")
except OSError as e:
    print("error", e.errno)
"""

UDP_LISTEN = r"""
import json, socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], 443))
print(json.dumps({"event": "ready"}), flush=True)
while True:
    data, peer = s.recvfrom(2048)
    print(json.dumps({"event": "udp", "peer": peer[0], "bytes": len(data)}), flush=True)
"""


def _skip_unless_available() -> None:
    reason = netns_unavailable()
    if reason is not None:
        pytest.skip(reason)
    for tool in ("node", "setpriv"):
        if shutil.which(tool) is None:
            pytest.skip(f"needs `{tool}`")


def _internet(
    lab: Lab,
    ns: Namespace,
    ca: HarnessCA,
    workdir: Path,
    allowed_ip: str,
    denied_ip: str,
    dns_ip: str,
) -> Service:
    allowed_cert, denied_cert = ca.server_cert(ALLOWED), ca.server_cert(DENIED)
    spec = {
        "dns": {"listen": dns_ip, "records": {ALLOWED: [allowed_ip], DENIED: [denied_ip]}},
        "origins": [
            {"name": "allowed", "listen": f"{allowed_ip}:80"},
            {
                "name": "allowed-tls",
                "listen": f"{allowed_ip}:443",
                "cert": str(allowed_cert.chain_path),
                "key": str(allowed_cert.key_path),
            },
            {"name": "denied", "listen": f"{denied_ip}:80"},
            {
                "name": "denied-tls",
                "listen": f"{denied_ip}:443",
                "cert": str(denied_cert.chain_path),
                "key": str(denied_cert.key_path),
            },
        ],
    }
    return start_internet(lab, ns, spec, workdir)


def _shared_workdir(lab: Lab) -> Path:
    return shared_workdir(lab, "egt-transparent-")


@dataclass
class World:
    lab: Lab
    pod: Namespace
    proxy: ProxyProcess
    internet: Service
    cacert: Path
    allowed_ip: str
    denied_ip: str

    def run(self, argv: list[str], env: dict[str, str] | None = None) -> Any:
        """A client in the pod: an environment with no proxy variable at all."""
        return self.pod.run(argv, env=clean_env(env or {}), timeout=60)

    def curl(self, url: str, *extra: str) -> tuple[int, str]:
        argv = ["curl", "--noproxy", "*", "-sS", "--max-time", "5", "--cacert", str(self.cacert)]
        result = self.run([*argv, "-D", "-", *extra, url])
        return result.returncode, result.stdout + result.stderr

    def urllib(self, *urls: str) -> dict[str, Any]:
        result = self.run([sys.executable, "-c", PY_URLLIB, str(self.cacert), *urls])
        assert result.returncode == 0, result.stderr
        return dict(json.loads(result.stdout))

    def node(self, *urls: str) -> dict[str, Any]:
        env = {"NODE_EXTRA_CA_CERTS": str(self.cacert)}
        result = self.run(["node", "-e", NODE_FETCH, *urls], env=env)
        assert result.returncode == 0, result.stderr
        return dict(json.loads(result.stdout))

    def resolve(self, *names: str) -> dict[str, Any]:
        result = self.run([sys.executable, "-c", DNS_PROBE, *names])
        assert result.returncode == 0, result.stderr
        return dict(json.loads(result.stdout))

    def requests_at(self, origin: str) -> list[dict[str, Any]]:
        events = self.internet.snapshot()
        return [e for e in events if e.get("event") == "request" and e["origin"] == origin]

    def dns_queries(self) -> list[str]:
        return [e["name"] for e in self.internet.snapshot() if e.get("event") == "dns"]

    def records(self, count: int = 1, **fields: Any) -> list[dict[str, Any]]:
        """The access records with these fields, once at least `count` are written (the log
        is written by a thread: bounded wait)."""

        def matches(record: dict[str, Any]) -> bool:
            return all(record.get(key) == value for key, value in fields.items())

        self.proxy.wait_for_records(count, 10.0, predicate=matches)
        return [r for r in self.proxy.access_records() if matches(r)]


# -- part 1: the sidecar -----------------------------------------------------------------------

POD_IP, INET_IP = "198.18.6.2", "198.18.6.1"
ALLOWED_IP, DENIED_IP, DNS_IP = "198.18.6.10", "198.18.6.11", "198.18.6.53"


@pytest.fixture(scope="module")
def sidecar(test_ca: HarnessCA) -> Iterator[World]:
    _skip_unless_available()
    lab = Lab()
    try:
        pod, inet = lab.namespace("pod"), lab.namespace("inet")
        lab.link(pod, "eth0", f"{POD_IP}/24", inet, "eth0", f"{INET_IP}/24")
        for extra in (ALLOWED_IP, DENIED_IP, DNS_IP):
            inet.ip("addr", "add", f"{extra}/24", "dev", "eth0")
        pod.write_etc("resolv.conf", f"nameserver {DNS_IP}\noptions timeout:1 attempts:1\n")
        workdir = _shared_workdir(lab)
        internet = _internet(lab, inet, test_ca, workdir, ALLOWED_IP, DENIED_IP, DNS_IP)
        log = workdir / "access.log"
        log.touch(mode=0o666)
        log.chmod(0o666)
        config = {
            "listen": "127.0.0.1:3128",
            "admin_listen": None,
            "transparent_listen": f"127.0.0.1:{TRANSPARENT_PORT}",
            # 127.0.0.1, as `k8s render --mode transparent` requires of a sidecar. (0.0.0.0
            # works too since the guard replies from each query's destination, IP_PKTINFO:
            # tests/e2e/test_netns_addresses.py.)
            "dns_listen": f"127.0.0.1:{DNS_PORT}",
            "allow": [ALLOWED],
            "http_ports": [80],
            "connect_ports": [443],
            "allow_private": ["198.18.6.0/24"],  # the internet namespace stands for the internet
            "nameservers": [DNS_IP],
            "access_log": str(log),
        }
        # Another UID, as in the pod (see netns.egressgate_as).
        proxy = ProxyProcess(config, workdir, command=egressgate_as(pod, NOBODY))
        lab.on_close(proxy.close)
        (workdir / "config.yaml").chmod(0o644)
        proxy.start()
        pod.nft(nft_script(NOBODY, TRANSPARENT_PORT, DNS_PORT))
        yield World(lab, pod, proxy, internet, test_ca.ca_pem_path, ALLOWED_IP, DENIED_IP)
    finally:
        lab.close()
        assert existing_namespaces(lab.prefix) == []


def test_the_proxy_runs_as_another_uid_and_the_rules_are_the_rendered_ones(
    sidecar: World,
) -> None:
    status = Path(f"/proc/{sidecar.proxy.pid}/status").read_text()
    uid_line = next(line for line in status.splitlines() if line.startswith("Uid:"))
    assert uid_line.split()[1] == str(NOBODY)
    ruleset = sidecar.run(["nft", "list", "table", "inet", TABLE]).stdout
    assert f"redirect to :{TRANSPARENT_PORT}" in ruleset
    assert f"meta skuid {NOBODY}" in ruleset


def test_allowed_names_work_for_curl_urllib_and_node_without_proxy_variables(
    sidecar: World,
) -> None:
    https, http = f"https://{ALLOWED}/", f"http://{ALLOWED}/"
    code, out = sidecar.curl(https)
    assert code == 0, out
    assert "hello from allowed-tls" in out or out.startswith("HTTP/1.1 200"), out
    code, out = sidecar.curl(http)
    assert code == 0, out
    assert out.startswith("HTTP/1.0 200") or out.startswith("HTTP/1.1 200"), out
    for results in (sidecar.urllib(https, http), sidecar.node(https, http)):
        assert results[https][0] == 200, results
        assert "hello from allowed-tls" in results[https][2], results
        assert results[http][0] == 200, results
        assert "hello from allowed" in results[http][2], results
    records = sidecar.records(4, kind="transparent", host=ALLOWED, decision="allow")
    assert {r["original_dst"] for r in records} >= {f"{ALLOWED_IP}:443", f"{ALLOWED_IP}:80"}
    assert {r["address"] for r in records} == {ALLOWED_IP}


def test_a_denied_name_does_not_even_resolve_and_never_reaches_the_resolver(
    sidecar: World,
) -> None:
    result = sidecar.resolve(DENIED)
    assert result[DENIED][0] == "gaierror", result
    assert DENIED not in sidecar.dns_queries()
    code, out = sidecar.curl(f"https://{DENIED}/")
    assert code != 0, out
    (node_result,) = sidecar.node(f"https://{DENIED}/").values()
    assert node_result[0] == "error", node_result
    assert sidecar.requests_at("denied-tls") == []


def test_a_denied_name_dialled_by_ip_is_refused_with_its_reason(sidecar: World) -> None:
    """The app knows the denied origin's IP (no DNS needed): HTTP gets the 403, HTTPS the
    access_denied alert, both logged with the name and the reason."""
    code, out = sidecar.curl(f"http://{DENIED}/", "--resolve", f"{DENIED}:80:{DENIED_IP}")
    assert "403" in out.splitlines()[0], out
    assert "X-Egressgate-Reason: host-not-allowed" in out
    code, out = sidecar.curl(f"https://{DENIED}/", "--resolve", f"{DENIED}:443:{DENIED_IP}")
    assert code != 0, out
    denied = sidecar.records(2, kind="transparent", host=DENIED)
    assert {r["reason"] for r in denied} == {"host-not-allowed"}
    assert {r["original_dst"] for r in denied} == {f"{DENIED_IP}:80", f"{DENIED_IP}:443"}
    assert sidecar.requests_at("denied") == []
    assert sidecar.requests_at("denied-tls") == []


def test_a_forged_sni_reaches_only_the_vetted_address_of_the_allowed_name(
    sidecar: World,
) -> None:
    before = len(sidecar.requests_at("allowed-tls"))
    code, out = sidecar.curl(f"https://{ALLOWED}/", "--resolve", f"{ALLOWED}:443:{DENIED_IP}")
    assert code == 0, out
    assert "hello from allowed-tls" in out or "200" in out.splitlines()[0], out
    assert len(sidecar.requests_at("allowed-tls")) == before + 1
    assert sidecar.requests_at("denied-tls") == []
    forged = sidecar.records(kind="transparent", original_dst=f"{DENIED_IP}:443", host=ALLOWED)
    assert [r["address"] for r in forged] == [ALLOWED_IP]


def test_an_ip_literal_https_connection_without_sni_is_refused(sidecar: World) -> None:
    code, out = sidecar.curl(f"https://{DENIED_IP}/", "-k")
    assert code != 0, out
    (record,) = sidecar.records(kind="transparent", reason="no-destination-name")
    assert record["original_dst"] == f"{DENIED_IP}:443"
    assert sidecar.requests_at("denied-tls") == []


def test_a_dns_tunnelling_attempt_never_leaves_the_pod(sidecar: World) -> None:
    result = sidecar.resolve("TUNNEL")
    assert result["TUNNEL"][0] == "gaierror", result
    assert not [name for name in sidecar.dns_queries() if "exfil" in name]
    refused = sidecar.proxy.wait_for_records(
        20, 10.0, predicate=lambda r: r.get("kind") == "dns" and "exfil" in (r.get("host") or "")
    )
    assert {r["decision"] for r in refused} == {"deny"}


def test_udp_443_quic_is_dropped_by_the_rendered_rules(sidecar: World) -> None:
    listener = sidecar.lab.spawn(
        sidecar.lab.namespaces[1],
        [sys.executable, "-c", UDP_LISTEN, ALLOWED_IP],
        clean_env({"PYTHONUNBUFFERED": "1"}),
    )
    listener.wait_for(lambda e: e.get("event") == "ready")
    for _ in range(3):
        sidecar.run([sys.executable, "-c", UDP_SEND, ALLOWED_IP])
    ruleset = sidecar.run(["nft", "list", "table", "inet", TABLE]).stdout
    quic = next(line for line in ruleset.splitlines() if "QUIC" in line)
    assert "packets 0 " not in quic, quic
    assert [e for e in listener.snapshot() if e.get("event") == "udp"] == []


# -- part 2: a central proxy, dns_answer: proxy ------------------------------------------------

POD2_IP, CENTRAL_POD_SIDE, CENTRAL_NET_SIDE = "198.18.7.2", "198.18.7.1", "198.18.8.1"
ALLOWED2_IP, DENIED2_IP, DNS2_IP = "198.18.8.10", "198.18.8.11", "198.18.8.53"

SERVICE_DNAT = f"""table inet egressgate_service
delete table inet egressgate_service
table inet egressgate_service {{
  chain prerouting {{
    type nat hook prerouting priority -100; policy accept;
    ip daddr {CENTRAL_POD_SIDE} tcp dport {{ 80, 443 }} redirect to :{TRANSPARENT_PORT}
  }}
}}
"""


@pytest.fixture(scope="module")
def central(test_ca: HarnessCA) -> Iterator[World]:
    _skip_unless_available()
    lab = Lab()
    try:
        pod, hub, inet = lab.namespace("pod2"), lab.namespace("central"), lab.namespace("inet2")
        lab.link(pod, "eth0", f"{POD2_IP}/24", hub, "pods0", f"{CENTRAL_POD_SIDE}/24")
        lab.link(hub, "inet0", f"{CENTRAL_NET_SIDE}/24", inet, "eth0", f"{ALLOWED2_IP}/24")
        for extra in (DENIED2_IP, DNS2_IP):
            inet.ip("addr", "add", f"{extra}/24", "dev", "eth0")
        # The pod has no route to the internet namespace at all; the hub does not forward.
        pod.write_etc(
            "resolv.conf", f"nameserver {CENTRAL_POD_SIDE}\noptions timeout:1 attempts:1\n"
        )
        workdir = _shared_workdir(lab)
        internet = _internet(lab, inet, test_ca, workdir, ALLOWED2_IP, DENIED2_IP, DNS2_IP)
        config = {
            "listen": f"{CENTRAL_POD_SIDE}:3128",
            "admin_listen": None,
            "transparent_listen": f"{CENTRAL_POD_SIDE}:{TRANSPARENT_PORT}",
            "dns_listen": f"{CENTRAL_POD_SIDE}:53",
            "dns_answer": "proxy",
            "dns_proxy_addresses": [CENTRAL_POD_SIDE],
            "allow": [ALLOWED],
            "http_ports": [80],
            "connect_ports": [443],
            "allow_private": ["198.18.8.0/24"],
            "nameservers": [DNS2_IP],
            "access_log": str(workdir / "access.log"),
        }
        command = [*hub.exec_prefix(), sys.executable, "-m", "egressgate"]
        proxy = ProxyProcess(config, workdir, command=command)
        lab.on_close(proxy.close)
        proxy.start()
        hub.nft(SERVICE_DNAT)  # what a Service's port 80/443 → targetPort 3130 does
        yield World(lab, pod, proxy, internet, test_ca.ca_pem_path, ALLOWED2_IP, DENIED2_IP)
    finally:
        lab.close()
        assert existing_namespaces(lab.prefix) == []


def test_dns_answer_proxy_governs_clients_without_any_redirect_rule(central: World) -> None:
    assert central.run(["nft", "list", "ruleset"]).stdout.strip() == ""
    assert set(central.resolve(ALLOWED)[ALLOWED]) == {CENTRAL_POD_SIDE}
    https, http = f"https://{ALLOWED}/", f"http://{ALLOWED}/"
    code, out = central.curl(https)
    assert code == 0, out
    code, out = central.curl(http)
    assert code == 0, out
    for results in (central.urllib(https, http), central.node(https, http)):
        assert results[https][0] == 200, results
        assert "hello from allowed-tls" in results[https][2], results
        assert results[http][0] == 200, results
    records = central.records(4, kind="transparent", host=ALLOWED, decision="allow")
    assert {r["address"] for r in records} == {ALLOWED2_IP}


def test_dns_answer_proxy_denied_names_do_not_resolve(central: World) -> None:
    assert central.resolve(DENIED)[DENIED][0] == "gaierror"
    code, out = central.curl(f"https://{DENIED}/")
    assert code != 0, out
    (node_result,) = central.node(f"https://{DENIED}/").values()
    assert node_result[0] == "error", node_result
    assert DENIED not in central.dns_queries()
    assert central.requests_at("denied-tls") == []


def test_the_pod_has_no_other_way_out(central: World) -> None:
    code, out = central.curl(f"http://{ALLOWED2_IP}/", "--connect-timeout", "2")
    assert code != 0, out
    assert os.path.exists(f"/proc/{central.proxy.pid}")
