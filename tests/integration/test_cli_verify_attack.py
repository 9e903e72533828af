"""`python -m egressgate verify --attack` against a REAL proxy on loopback.

Only the probes that go THROUGH the proxy run here; the others are --skip'ped: on loopback
nothing filters, and the direct metadata probe would leave loopback. The allowed/denied names
resolve only in the proxy (the test DNS server), so the probes that need the allowed host's
address skip themselves, saying why. The network-level probes are tested in
tests/e2e/test_attack_netns.py. verify runs as a subprocess (outside the loopback guard) and
every address it is given is loopback.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from tests.support.dns import DnsServer
from tests.support.origin import Origin, OriginFactory
from tests.support.proxy import REPO_ROOT, ProxyFactory, ProxyProcess
from tests.support.tlsca import HarnessCA

NO_PROXY = "localhost,127.0.0.1,::1,.svc,.cluster.local"
ONLY_THROUGH_THE_PROXY = ["--no-api"]
for _prefix in (
    "direct",
    "udp",
    "dns.udp",
    "dns.tcp",
    "dns.dot",
    "dns.doh-direct",
    "metadata.direct",
):
    ONLY_THROUGH_THE_PROXY += ["--skip", _prefix]


def attack(args: Sequence[str], env: Mapping[str, str], *fmt: str) -> tuple[int, str]:
    argv = [sys.executable, "-m", "egressgate", "verify", "--attack", "--timeout", "2"]
    result = subprocess.run(
        [*argv, *ONLY_THROUGH_THE_PROXY, *args, *fmt],
        cwd=REPO_ROOT,
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.stderr == "", result.stderr
    return result.returncode, result.stdout


def probes(output: str) -> dict[str, dict[str, Any]]:
    return {p["probe"]: p for p in json.loads(output)["probes"]}


def _origins(origin_factory: OriginFactory, test_ca: HarnessCA) -> tuple[Origin, Origin]:
    plain = origin_factory("plain")
    secure = origin_factory("secure", tls=test_ca, cert_names=["allowed.test", "denied.test"])
    return plain, secure


def _proxy(
    proxy_factory: ProxyFactory, dns_server: DnsServer, plain: Origin, secure: Origin, **extra: Any
) -> ProxyProcess:
    for name in ("allowed.test", "denied.test"):
        dns_server.records[name] = ["127.0.0.1"]
    config: dict[str, Any] = {
        "allow": ["allowed.test"],
        "allow_private": ["127.0.0.0/8"],
        "http_ports": [plain.port],
        "connect_ports": [secure.port],
    }
    config.update(extra)
    return proxy_factory(**config)


def _args(plain: Origin, secure: Origin, proxy: ProxyProcess) -> list[str]:
    args = [
        "--allowed",
        plain.url("/", "allowed.test"),
        "--allowed",
        secure.url("/", "allowed.test"),
    ]
    args += ["--denied", plain.url("/", "denied.test"), "--doh-name", "denied.test"]
    admin = proxy.admin_address
    if admin is not None:
        args += ["--admin-port", str(admin[1])]
    return args


PROXY_PROBES = {
    "proxy.sni-mismatch": "tls-access-denied",
    "proxy.host-mismatch": "host-not-allowed",
    "proxy.http-denied": "host-not-allowed",
    "proxy.keepalive-denied": "host-not-allowed",
    "proxy.self": "ip-literal-not-allowed",
    "proxy.admin": "ip-literal-not-allowed",
    "dns.doh-via-proxy": "host-not-allowed",
    "metadata.proxy-v4": "ip-literal-not-allowed",
    "metadata.proxy-v4-mapped": "ip-literal-not-allowed",
    "metadata.proxy-nat64": "ip-literal-not-allowed",
}


def test_the_proxy_stops_every_probe_sent_through_it(
    proxy_factory: ProxyFactory,
    origin_factory: OriginFactory,
    dns_server: DnsServer,
    test_ca: HarnessCA,
) -> None:
    plain, secure = _origins(origin_factory, test_ca)
    proxy = _proxy(proxy_factory, dns_server, plain, secure)
    env = proxy.client_env(no_proxy=NO_PROXY)
    _code, out = attack(_args(plain, secure, proxy), env, "--json")
    seen = probes(out)
    for probe_id, evidence in PROXY_PROBES.items():
        probe = seen[probe_id]
        assert (probe["status"], probe["layer"]) == ("stopped", "proxy"), probe
        assert evidence in (probe.get("reason"), probe.get("outcome")), probe
    assert seen["proxy.keepalive-denied"]["explanation"].endswith(
        "(first answer 200) → 403, X-Egressgate-Reason: host-not-allowed "
        "(denied.test is not on the allowlist of policy 'default')."
    )
    # The allowed name does not resolve outside the proxy: the probes needing its address say so.
    ip_literal = seen["proxy.connect-ip-literal"]
    assert ip_literal["status"] == "skipped"
    assert "cannot resolve allowed.test" in ip_literal["explanation"]
    assert seen["direct.tcp-https"]["explanation"] == "not run: --skip"
    # Nothing got through, so only the pod inspection (this machine, not a pod) can fail.
    assert json.loads(out)["counts"]["through"] == 0
    assert not any(p["status"] in ("through", "unclear") for p in seen.values())


def test_a_permissive_proxy_is_caught_by_the_probes_that_target_it(
    proxy_factory: ProxyFactory,
    origin_factory: OriginFactory,
    dns_server: DnsServer,
    test_ca: HarnessCA,
) -> None:
    """denied.test on the allowlist and the SNI check off: the proxy lets both through."""
    plain, secure = _origins(origin_factory, test_ca)
    proxy = _proxy(
        proxy_factory,
        dns_server,
        plain,
        secure,
        allow=["allowed.test", "denied.test"],
        sni_check=False,
    )
    env = proxy.client_env(no_proxy=NO_PROXY)
    code, out = attack(_args(plain, secure, proxy), env, "--json")
    assert code == 1
    seen = probes(out)
    through = {k for k, p in seen.items() if p["status"] == "through"}
    assert through == {
        "proxy.sni-mismatch",
        "proxy.host-mismatch",
        "proxy.http-denied",
        "proxy.keepalive-denied",
    }, json.dumps(seen, indent=1)
    http_denied = seen["proxy.http-denied"]
    assert http_denied["layer"] == "nothing"
    assert http_denied["http_status"] == 200
    assert http_denied["fix"].startswith("the proxy let it through")
    assert seen["proxy.sni-mismatch"]["outcome"] == "tls-handshake-completed"

    code, text = attack(_args(plain, secure, proxy), env)
    assert code == 1
    assert "✗ THROUGH  proxy.http-denied" in text
    assert "      fix: the proxy let it through" in text
    assert text.rstrip().splitlines()[-1].startswith("FAILED: 24 probes: ")


@pytest.mark.parametrize("fmt", ["--sarif"])
def test_sarif_output_is_one_run_with_a_result_per_probe(
    proxy_factory: ProxyFactory,
    origin_factory: OriginFactory,
    dns_server: DnsServer,
    test_ca: HarnessCA,
    fmt: str,
) -> None:
    plain, secure = _origins(origin_factory, test_ca)
    proxy = _proxy(proxy_factory, dns_server, plain, secure)
    code, out = attack(_args(plain, secure, proxy), proxy.client_env(no_proxy=NO_PROXY), fmt)
    log = json.loads(out)
    from tests.unit.tools.test_attack import validate_sarif

    validate_sarif(log)
    (run,) = log["runs"]
    assert run["invocations"][0]["exitCode"] == code
    results = {r["ruleId"]: r for r in run["results"]}
    assert results["proxy.http-denied"]["kind"] == "pass"
    assert results["direct.tcp-https"]["kind"] == "notApplicable"


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["--sarif"], "--sarif needs --attack"),
        (["--attack", "--allowed", "http://a.test/"], "--attack needs an --allowed URL and a"),
        (
            [
                *("--attack", "--allowed", "http://a.test/", "--denied", "http://d.test/"),
                *("--ipv6-address", "127.0.0.1"),
            ],
            "--ipv6-address must be an IPv6 address",
        ),
        (["--attack", "--outside-resolver", "dns.example"], "is not an IP address"),
        (
            [
                *("--attack", "--allowed", "http://a.test/", "--denied", "http://d.test/"),
                *("--skip", "quic"),
            ],
            "--skip quic: no probe id starts with it (ids: direct.tcp-https, ",
        ),
        (["--attack", "--parallel", "0"], "1 to 32"),
    ],
)
def test_usage_errors(args: list[str], error: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "egressgate", "verify", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert error in result.stderr
