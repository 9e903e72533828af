"""The whole egress recipe on one machine, in network namespaces this test creates — living
documentation of what "deployed correctly" means, checked with real clients and `egressgate
verify`:

    app ns                     proxy ns (forwards, like a node)        internet ns
    198.18.1.2 ──── veth ──── 198.18.1.1 │ 198.18.2.1 ──── veth ──── 198.18.2.10  allowed origin
    clients, verify            egressgate run                          198.18.2.11  denied origin
    nft: the NetworkPolicy     listen 198.18.1.1:3128                  198.18.2.53  DNS (UDP+TCP 53)

* The app namespace gets the egress rule the rendered NetworkPolicy expresses, as nftables:
  output policy drop; allow loopback, established flows, the proxy's IP:port, and DNS (UDP and
  TCP 53) to the DNS server. Its resolver is the internet namespace's DNS server.
* The proxy runs for real (`python -m egressgate run`) inside the proxy namespace, allowing only
  allowed.e2e.test, resolving through the same DNS server.
* The app's environment is exactly what `egressgate env --proxy http://198.18.1.1:3128` prints.

Addresses come from 198.18.0.0/15, the RFC 2544 benchmarking range: reserved for test networks,
never routed on the internet, and unlike RFC 1918 space it cannot collide with the host's or a CI
runner's real networks (Docker, Kubernetes, VPNs). egressgate classifies it as reserved, so the
proxy's `allow_private` lists only the internet namespace's /24 — the app's and the proxy's own
subnets stay refused. No namespace has a default route and there is no NAT: nothing can leave.

The test process never sends a packet into the namespaces (its loopback guard forbids it): every
client runs as a subprocess under `ip netns exec`. Skipped, with the reason, when not root or
when ip/nft/curl or namespaces are unavailable (probed once).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.netns import (
    Lab,
    Namespace,
    Service,
    egress_ruleset,
    existing_namespaces,
    start_internet,
)
from tests.e2e.netns import unavailable as netns_unavailable
from tests.support.proxy import ProxyProcess, clean_env
from tests.support.tlsca import HarnessCA

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]

APP_IP, PROXY_APP_SIDE = "198.18.1.2", "198.18.1.1"
PROXY_NET_SIDE, ALLOWED_IP, DENIED_IP, DNS_IP = (
    "198.18.2.1",
    "198.18.2.10",
    "198.18.2.11",
    "198.18.2.53",
)
PROXY_PORT, HTTP_PORT, TLS_PORT = 3128, 8080, 8443
ALLOWED, DENIED = "allowed.e2e.test", "denied.e2e.test"
PROXY_URL = f"http://{PROXY_APP_SIDE}:{PROXY_PORT}"
TABLE = "egressgate_e2e"  # the nftables table standing in for the NetworkPolicy
RULESET = egress_ruleset(TABLE, (PROXY_APP_SIDE, PROXY_PORT), DNS_IP)

ALLOWED_HTTP = f"http://{ALLOWED}:{HTTP_PORT}/"
ALLOWED_HTTPS = f"https://{ALLOWED}:{TLS_PORT}/"
DENIED_HTTP = f"http://{DENIED}:{HTTP_PORT}/"
DENIED_HTTPS = f"https://{DENIED}:{TLS_PORT}/"
URL_ARGS = ["--allowed", ALLOWED_HTTP, "--allowed", ALLOWED_HTTPS]
URL_ARGS += ["--denied", DENIED_HTTP, "--denied", DENIED_HTTPS]


@dataclass
class Recipe:
    """The running recipe: namespaces, proxy, internet services, and the app's environment."""

    lab: Lab
    app: Namespace
    proxy: ProxyProcess
    internet: Service
    variables: dict[str, str]  # from `egressgate env --format json`
    cacert: Path

    def env(self, variables: Mapping[str, str] | None = None) -> dict[str, str]:
        """A client environment: no proxy variable of the test process's, plus `variables`
        (default: the recipe's)."""
        return clean_env(dict(self.variables if variables is None else variables))

    def egressgate(self, *args: str, env: Mapping[str, str]) -> Any:
        return self.app.run([sys.executable, "-m", "egressgate", *args], env=env, timeout=40)

    def verify(
        self, *args: str, env: Mapping[str, str] | None = None
    ) -> tuple[int, dict[str, Any]]:
        """`egressgate verify --json` in the app namespace: (exit status, parsed report)."""
        argv = ["verify", "--json", "--timeout", "1", "--cacert", str(self.cacert), *args]
        result = self.egressgate(*argv, env=self.env() if env is None else env)
        assert result.stdout.strip(), f"verify printed nothing; stderr:\n{result.stderr}"
        return result.returncode, json.loads(result.stdout)

    def internet_requests(self, origin: str) -> list[dict[str, Any]]:
        return [
            e
            for e in self.internet.snapshot()
            if e.get("event") == "request" and e["origin"] == origin
        ]


def _skip_unless_available() -> None:
    reason = netns_unavailable()
    if reason is not None:
        pytest.skip(reason)


def _wire(lab: Lab) -> tuple[Namespace, Namespace, Namespace]:
    app, proxy, internet = lab.namespace("app"), lab.namespace("proxy"), lab.namespace("inet")
    lab.link(app, "eth0", f"{APP_IP}/24", proxy, "app0", f"{PROXY_APP_SIDE}/24")
    lab.link(proxy, "inet0", f"{PROXY_NET_SIDE}/24", internet, "eth0", f"{ALLOWED_IP}/24")
    for extra in (DENIED_IP, DNS_IP):
        internet.ip("addr", "add", f"{extra}/24", "dev", "eth0")
    # Routes between the two test subnets only; no default route anywhere, no NAT.
    app.route("198.18.2.0/24", via=PROXY_APP_SIDE)
    internet.route("198.18.1.0/24", via=PROXY_NET_SIDE)
    proxy.sysctl("net.ipv4.ip_forward", "1")  # per namespace: the host's setting is untouched
    app.write_etc("resolv.conf", f"nameserver {DNS_IP}\noptions timeout:1 attempts:2\n")
    return app, proxy, internet


def _start_internet(lab: Lab, internet: Namespace, ca: HarnessCA, workdir: Path) -> Service:
    allowed_cert, denied_cert = ca.server_cert(ALLOWED), ca.server_cert(DENIED)
    spec = {
        "dns": {"listen": DNS_IP, "records": {ALLOWED: [ALLOWED_IP], DENIED: [DENIED_IP]}},
        "origins": [
            {"name": "allowed", "listen": f"{ALLOWED_IP}:{HTTP_PORT}"},
            {
                "name": "allowed-tls",
                "listen": f"{ALLOWED_IP}:{TLS_PORT}",
                "cert": str(allowed_cert.chain_path),
                "key": str(allowed_cert.key_path),
            },
            {"name": "denied", "listen": f"{DENIED_IP}:{HTTP_PORT}"},
            {
                "name": "denied-tls",
                "listen": f"{DENIED_IP}:{TLS_PORT}",
                "cert": str(denied_cert.chain_path),
                "key": str(denied_cert.key_path),
            },
        ],
    }
    return start_internet(lab, internet, spec, workdir)


def _start_proxy(lab: Lab, proxy_ns: Namespace, workdir: Path) -> ProxyProcess:
    config = {
        "listen": f"{PROXY_APP_SIDE}:{PROXY_PORT}",
        "admin_listen": None,
        "allow": [ALLOWED],
        "http_ports": [HTTP_PORT],
        "connect_ports": [TLS_PORT],
        "allow_private": ["198.18.2.0/24"],  # the internet namespace only
        "nameservers": [DNS_IP],
        "access_log": str(workdir / "access.log"),
    }
    command = [*proxy_ns.exec_prefix(), sys.executable, "-m", "egressgate"]
    proxy = ProxyProcess(config, workdir, command=command)
    lab.on_close(proxy.close)
    return proxy.start()


@pytest.fixture(scope="module")
def recipe(tmp_path_factory: pytest.TempPathFactory, test_ca: HarnessCA) -> Iterator[Recipe]:
    _skip_unless_available()
    workdir = tmp_path_factory.mktemp("recipe")
    lab = Lab()
    try:
        app, proxy_ns, internet_ns = _wire(lab)
        internet = _start_internet(lab, internet_ns, test_ca, workdir)
        proxy = _start_proxy(lab, proxy_ns, workdir / "proxy")
        app.nft(RULESET)
        env_json = app.run(
            [sys.executable, "-m", "egressgate", "env", "--proxy", PROXY_URL, "--format", "json"],
            env=clean_env(),
        )
        assert env_json.returncode == 0, env_json.stderr
        variables = json.loads(env_json.stdout)["variables"]
        yield Recipe(lab, app, proxy, internet, variables, test_ca.ca_pem_path)
    finally:
        lab.close()
        leftovers = existing_namespaces(lab.prefix)
        assert leftovers == [], f"namespaces left behind: {leftovers}"


@pytest.fixture(autouse=True)
def egress_rule(recipe: Recipe) -> None:
    """Every test starts with the NetworkPolicy rule in place (one test removes it)."""
    recipe.app.nft(RULESET)


def _check(report: Mapping[str, Any], name: str, target: str | None = None) -> dict[str, Any]:
    found = [
        c
        for c in report["checks"]
        if c["name"] == name and (target is None or c.get("target") == target)
    ]
    assert len(found) == 1, f"expected one {name} {target or ''} check in {report}"
    return found[0]


def _statuses(report: Mapping[str, Any]) -> dict[str, str]:
    return {f"{c['name']} {c.get('target', '')}".strip(): c["status"] for c in report["checks"]}


# -- the topology -------------------------------------------------------------------------------


def test_the_namespaces_have_no_way_out(recipe: Recipe) -> None:
    for ns in recipe.lab.namespaces:
        assert ns.ip("route", "show", "default").strip() == "", f"{ns} has a default route"
        assert ns.ip("-6", "route", "show", "default").strip() == ""
        for line in ns.ip("-4", "route", "show").splitlines():
            assert line.startswith("198.18."), f"{ns}: unexpected route {line!r}"
    ruleset = recipe.app.run(["nft", "list", "table", "inet", TABLE]).stdout
    assert "policy drop" in ruleset
    assert f"ip daddr {PROXY_APP_SIDE} tcp dport {PROXY_PORT} accept" in ruleset


# -- real clients -------------------------------------------------------------------------------

PYTHON_CLIENTS = r"""
import json, ssl, sys, urllib.error, urllib.request
import requests
cafile, urls = sys.argv[1], sys.argv[2:]
context = ssl.create_default_context(cafile=cafile)
out = {}
for url in urls:
    try:
        with urllib.request.urlopen(url, timeout=5, context=context) as r:
            reason = r.headers.get("X-Egressgate-Reason")
            out["urllib " + url] = [r.status, reason, r.read().decode()]
    except urllib.error.HTTPError as e:
        out["urllib " + url] = [e.code, e.headers.get("X-Egressgate-Reason"), ""]
    except OSError as e:
        out["urllib " + url] = ["error", str(e), ""]
    try:
        r = requests.get(url, timeout=5, verify=cafile)
        out["requests " + url] = [r.status_code, r.headers.get("X-Egressgate-Reason"), r.text]
    except requests.RequestException as e:
        out["requests " + url] = ["error", str(e), ""]
print(json.dumps(out))
"""


def _curl(recipe: Recipe, url: str, *extra: str) -> tuple[int, str]:
    """curl in the app namespace with the recipe's variables: (exit code, headers dumped)."""
    argv = ["curl", "-sS", "--max-time", "5", "--cacert", str(recipe.cacert), "-D", "-"]
    result = recipe.app.run([*argv, "-o", "/dev/null", *extra, url], env=recipe.env())
    return result.returncode, result.stdout + result.stderr


def test_real_clients_go_through_the_proxy_and_cannot_go_around_it(recipe: Recipe) -> None:
    code, out = _curl(recipe, ALLOWED_HTTP)
    assert (code, out.splitlines()[0]) == (0, "HTTP/1.1 200 OK"), out
    code, out = _curl(recipe, ALLOWED_HTTPS)
    assert code == 0, out
    assert "200 Connection established" in out or "HTTP/1.1 200" in out.splitlines()[0], out
    code, out = _curl(recipe, DENIED_HTTP)
    assert "HTTP/1.1 403" in out, out
    assert "X-Egressgate-Reason: host-not-allowed" in out, out
    code, out = _curl(recipe, DENIED_HTTPS)
    assert code != 0, out  # the CONNECT was refused
    assert "403" in out, out
    # The same request ignoring the variables: the NetworkPolicy rule drops it.
    code, out = _curl(
        recipe, f"http://{ALLOWED_IP}:{HTTP_PORT}/", "--noproxy", "*", "--max-time", "2"
    )
    assert code in (7, 28), f"a direct connection must fail, curl exit {code}: {out}"

    urls = [ALLOWED_HTTP, ALLOWED_HTTPS, DENIED_HTTP, DENIED_HTTPS]
    script = [sys.executable, "-c", PYTHON_CLIENTS, str(recipe.cacert), *urls]
    result = recipe.app.run(script, env=recipe.env())
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    for client in ("urllib", "requests"):
        assert seen[f"{client} {ALLOWED_HTTP}"] == [200, None, "hello from allowed\n"]
        assert seen[f"{client} {ALLOWED_HTTPS}"] == [200, None, "hello from allowed-tls\n"]
        assert seen[f"{client} {DENIED_HTTP}"][:2] == [403, "host-not-allowed"]
        status, error, _ = seen[f"{client} {DENIED_HTTPS}"]
        assert status == "error"
        assert "403" in error
    # Nothing ever reached the denied origins; the allowed ones saw only the proxy.
    assert recipe.internet_requests("denied") == []
    assert recipe.internet_requests("denied-tls") == []
    assert {e["peer"] for e in recipe.internet_requests("allowed")} == {PROXY_NET_SIDE}
    refused = recipe.proxy.wait_for_records(
        1, predicate=lambda r: r.get("host") == DENIED and r.get("status") == 403
    )
    assert refused


# -- egressgate verify --------------------------------------------------------------------------


def test_verify_passes_when_the_recipe_is_complete(recipe: Recipe) -> None:
    code, report = recipe.verify(*URL_ARGS, "--direct", f"{DENIED_IP}:{HTTP_PORT}")
    statuses = _statuses(report)
    assert code == 0, json.dumps(report, indent=2)
    assert set(statuses.values()) == {"pass"}, statuses
    assert _check(report, "proxy.reachable")["http_status"] == 200
    assert _check(report, "allowed", ALLOWED_HTTPS)["http_status"] == 200
    denied = _check(report, "denied", DENIED_HTTP)
    assert (denied["http_status"], denied["reason"]) == (403, "host-not-allowed")
    assert "refused by the proxy: 403 host-not-allowed" in denied["detail"]
    bypass = _check(report, "bypass")
    assert bypass["attempts"][0]["error"] == "timeout"
    assert "timed out after 1 s" in bypass["detail"]

    # The readable checklist, and the default --direct: the first URL's host, resolved through
    # the app's resolver (the DNS server in the internet namespace).
    result = recipe.egressgate(
        "verify", "--timeout", "1", "--cacert", str(recipe.cacert), *URL_ARGS, env=recipe.env()
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"✓ direct to {ALLOWED}:{HTTP_PORT}: blocked: {ALLOWED_IP}:{HTTP_PORT} ({ALLOWED})" in (
        result.stdout
    )
    assert result.stdout.rstrip().splitlines()[-1].startswith("OK: ")
    assert recipe.internet_requests("denied") == []


def test_verify_fails_when_the_egress_rule_is_removed(recipe: Recipe) -> None:
    recipe.app.nft_delete_table(TABLE)  # restored by the egress_rule fixture of the next test
    code, report = recipe.verify(*URL_ARGS, "--direct", f"{DENIED_IP}:{HTTP_PORT}")
    assert code == 1
    failed = {c["name"] for c in report["checks"] if c["status"] == "fail"}
    assert failed == {"bypass"}, _statuses(report)
    bypass = _check(report, "bypass")
    assert bypass["detail"] == (
        f"direct TCP connection to {DENIED_IP}:{HTTP_PORT} succeeded in "
        f"{bypass['attempts'][0]['elapsed_ms']:.0f} ms: egress is not restricted: the app can go "
        "around the proxy"
    )
    result = recipe.egressgate(
        "verify", "--timeout", "1", "--allowed", ALLOWED_HTTP, env=recipe.env()
    )
    assert result.returncode == 1
    assert "✗ direct to allowed.e2e.test:8080: direct TCP connection to 198.18.2.10:8080 " in (
        result.stdout
    )
    assert result.stdout.rstrip().splitlines()[-1].startswith("FAILED: ")


def _lowercase_only(v: dict[str, str]) -> dict[str, str]:
    return {k: x for k, x in v.items() if k.islower()}


def _without_no_proxy(v: dict[str, str]) -> dict[str, str]:
    return {k: x for k, x in v.items() if k.lower() != "no_proxy"}


def _wrong_port(v: dict[str, str]) -> dict[str, str]:
    wrong = PROXY_URL.replace(f":{PROXY_PORT}", f":{PROXY_PORT + 1}")
    return {k: (x if k.lower() == "no_proxy" else wrong) for k, x in v.items()}


@pytest.mark.parametrize(
    ("mangle", "failing", "expected"),
    [
        pytest.param(
            _lowercase_only,
            {"env.HTTP_PROXY", "env.HTTPS_PROXY", "env.NO_PROXY"},
            {
                "env.HTTP_PROXY": "only http_proxy is set (HTTP_PROXY is not): not seen by "
                "global-agent, which read only HTTP_PROXY",
                "env.NO_PROXY": "only no_proxy is set (NO_PROXY is not)",
            },
            id="lowercase-only",
        ),
        pytest.param(
            _without_no_proxy,
            {"env.NO_PROXY"},
            {
                "env.NO_PROXY": "neither NO_PROXY nor no_proxy is set: in-cluster and localhost "
                "requests go to the proxy, which refuses them",
                "env.no-proxy": "http://my-service.my-namespace.svc/ goes to the proxy in every "
                "runtime that reads the variables",
            },
            id="no-NO_PROXY",
        ),
        pytest.param(
            _wrong_port,
            {"proxy.reachable"},
            {
                "proxy.reachable": "cannot connect to the proxy "
                f"{PROXY_APP_SIDE}:{PROXY_PORT + 1}: timed out after 1 s (packets are dropped) "
                "— is egress to the proxy's port allowed by the NetworkPolicy, and is the "
                "address right?",
                "allowed": "is not reachable or not usable (see above)",
            },
            id="wrong-proxy-port",
        ),
    ],
)
def test_verify_fails_when_the_variables_are_wrong(
    recipe: Recipe, mangle: Any, failing: set[str], expected: dict[str, str]
) -> None:
    env = recipe.env(mangle(dict(recipe.variables)))
    code, report = recipe.verify(*URL_ARGS, "--direct", f"{DENIED_IP}:{HTTP_PORT}", env=env)
    assert code == 1
    failed = {c["name"] for c in report["checks"] if c["status"] == "fail"}
    assert failed == failing, _statuses(report)
    for name, text in expected.items():
        details = [c["detail"] for c in report["checks"] if c["name"] == name]
        assert any(text in d for d in details), f"{name}: {text!r} not in {details}"
    assert _check(report, "bypass")["status"] == "pass"  # the rule itself is still in place
