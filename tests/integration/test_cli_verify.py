"""`python -m egressgate verify` against a REAL proxy on loopback (tests/conftest.py harness).

Every check runs for real: the proxy's /healthz, allowed URLs through it (plain and CONNECT +
verified TLS against the test CA), denied URLs refused by it, and a direct connection. On
loopback nothing restricts egress, so the bypass check can only FAIL here — these tests pin its
message; tests/e2e/test_recipe_netns.py shows it passing behind a NetworkPolicy-like firewall.

verify runs as a subprocess (outside the loopback guard), so every address it is given is
loopback: names are only ever resolved by the proxy (through the test DNS server), and every
run passes --direct 127.0.0.1:PORT so that verify itself never asks the system resolver.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pytest

from tests.support.dns import DnsServer
from tests.support.origin import Origin, OriginFactory
from tests.support.proxy import REPO_ROOT, ProxyFactory, ProxyProcess, clean_env
from tests.support.tlsca import HarnessCA

NO_PROXY = "localhost,127.0.0.1,::1,.svc,.cluster.local"


@dataclass
class Setup:
    proxy: ProxyProcess
    plain: Origin
    secure: Origin
    cacert: str

    @property
    def env(self) -> dict[str, str]:
        return self.proxy.client_env(no_proxy=NO_PROXY)

    def url(self, name: str, path: str = "/", *, tls: bool = False) -> str:
        return (self.secure if tls else self.plain).url(path, name)


@pytest.fixture
def setup(
    proxy_factory: ProxyFactory,
    origin_factory: OriginFactory,
    dns_server: DnsServer,
    test_ca: HarnessCA,
) -> Setup:
    plain = origin_factory("plain")
    secure = origin_factory("secure", tls=test_ca, cert_names=["allowed.test"])
    for name in ("allowed.test", "denied.test"):
        dns_server.records[name] = ["127.0.0.1"]
    proxy = proxy_factory(
        allow=["allowed.test", "nx.allowed.test"],
        allow_private=["127.0.0.0/8"],
        http_ports=[plain.port],
        connect_ports=[secure.port],
    )
    return Setup(proxy, plain, secure, str(test_ca.ca_pem_path))


def run_verify(
    args: Sequence[str], env: Mapping[str, str], *, as_json: bool = True
) -> tuple[int, Any]:
    """Run the CLI; (exit status, parsed JSON report or the text output)."""
    argv = [sys.executable, "-m", "egressgate", "verify", "--timeout", "2", *args]
    if as_json:
        argv.append("--json")
    result = subprocess.run(
        argv,
        cwd=REPO_ROOT,
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if result.returncode == 2:
        return 2, result.stderr
    assert result.stderr == "", result.stderr
    return result.returncode, json.loads(result.stdout) if as_json else result.stdout


def check(report: Mapping[str, Any], name: str, target: str | None = None) -> dict[str, Any]:
    found = [
        c
        for c in report["checks"]
        if c["name"] == name and (target is None or c.get("target") == target)
    ]
    assert len(found) == 1, f"expected one {name} {target} check: {report['checks']}"
    return found[0]


def failed(report: Mapping[str, Any]) -> set[str]:
    return {c["name"] for c in report["checks"] if c["status"] == "fail"}


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_every_check_passes_through_a_real_proxy_but_loopback_cannot_block_a_bypass(
    setup: Setup,
) -> None:
    allowed_http, allowed_https = setup.url("allowed.test"), setup.url("allowed.test", tls=True)
    denied_http, denied_https = setup.url("denied.test"), setup.url("denied.test", tls=True)
    direct = setup.plain.address
    args = ["--allowed", allowed_http, "--allowed", allowed_https, "--cacert", setup.cacert]
    args += ["--denied", denied_http, "--denied", denied_https, "--direct", direct]
    code, report = run_verify(args, setup.env)

    assert code == 1
    assert failed(report) == {"bypass"}
    assert report["counts"] == {"pass": 12, "fail": 1, "warn": 0, "skip": 0}
    reachable = check(report, "proxy.reachable")
    assert reachable["target"] == "{}:{}".format(*setup.proxy.proxy_address)
    assert reachable["http_status"] == 200
    assert check(report, "allowed", allowed_http)["detail"].startswith("200 OK in ")
    assert check(report, "allowed", allowed_https)["http_status"] == 200
    for url in (denied_http, denied_https):
        denied = check(report, "denied", url)
        assert (denied["status"], denied["reason"], denied["policy"]) == (
            "pass",
            "host-not-allowed",
            "default",
        )
        assert denied["detail"] == (
            "refused by the proxy: 403 host-not-allowed (policy default): denied.test is not on "
            "the allowlist of policy 'default'"
        )
    bypass = check(report, "bypass")
    elapsed = bypass["attempts"][0]["elapsed_ms"]
    assert bypass["detail"] == (
        f"direct TCP connection to {direct} succeeded in {elapsed:.0f} ms: egress is not "
        "restricted: the app can go around the proxy"
    )
    # The requests really went through the proxy: the allowed ones reached the origins from it,
    # the denied ones are in its access log as refusals (the /healthz probe is not logged).
    assert {r.sni for r in setup.secure.request_records()} == {"allowed.test"}
    records = setup.proxy.wait_for_records(4)
    assert sorted((r.get("host"), r.get("status")) for r in records) == [
        ("allowed.test", 200),
        ("allowed.test", 200),
        ("denied.test", 403),
        ("denied.test", 403),
    ]


def test_the_text_checklist(setup: Setup) -> None:
    args = ["--allowed", setup.url("allowed.test"), "--direct", setup.plain.address]
    code, text = run_verify(args, setup.env, as_json=False)
    assert code == 1
    lines = text.splitlines()
    assert lines[0] == "Environment (the app's proxy variables)"
    assert (
        f"  ✓ HTTP_PROXY / http_proxy: set in both cases, identical: {setup.proxy.proxy_url}"
        in (lines)
    )
    assert any(line.startswith("  ✓ proxy reachable: ") for line in lines)
    assert any(line.startswith(f"  ✓ {setup.url('allowed.test')}: 200 OK in ") for line in lines)
    assert any(
        line.startswith(f"  ✗ direct to {setup.plain.address}: direct TCP connection to ")
        and line.endswith("egress is not restricted: the app can go around the proxy")
        for line in lines
    )
    assert lines[-1] == "FAILED: 10 checks: 9 passed, 1 failed"


@pytest.mark.parametrize(
    ("kind", "name", "path", "detail"),
    [
        pytest.param(
            "--denied",
            "allowed.test",
            "/",
            "the proxy let it through: the origin answered 200 OK (is the policy in report mode, "
            "or is this host on the allowlist?)",
            id="denied-but-allowed",
        ),
        pytest.param(
            "--denied",
            "allowed.test",
            "/status/403",
            "403 without X-Egressgate-Reason: the ORIGIN refused it, not the proxy — the proxy "
            "let the request through",
            id="origin-403-is-not-a-proxy-refusal",
        ),
        pytest.param(
            "--allowed",
            "denied.test",
            "/",
            "refused by the proxy: 403 host-not-allowed (policy default): denied.test is not on "
            "the allowlist of policy 'default'",
            id="allowed-but-refused",
        ),
        pytest.param(
            "--allowed",
            "nx.allowed.test",
            "/",
            "allowed, but the proxy could not get an answer: 502 dns-nxdomain",
            id="allowed-but-unresolvable",
        ),
    ],
)
def test_wrong_answers_fail_with_a_precise_reason(
    setup: Setup, kind: str, name: str, path: str, detail: str
) -> None:
    url = setup.url(name, path)
    code, report = run_verify([kind, url, "--direct", f"127.0.0.1:{closed_port()}"], setup.env)
    assert code == 1
    result = check(report, kind.lstrip("-"), url)
    assert result["status"] == "fail"
    assert result["detail"].startswith(detail), result["detail"]
    assert failed(report) == {kind.lstrip("-")}


def test_an_origin_error_status_still_proves_the_route(setup: Setup) -> None:
    url = setup.url("allowed.test", "/status/404")
    code, report = run_verify(
        ["--allowed", url, "--direct", f"127.0.0.1:{closed_port()}"], setup.env
    )
    assert code == 0
    assert check(report, "allowed", url)["detail"].startswith(
        "the proxy forwarded it; the origin itself answered 404 Not Found in "
    )


def test_tls_that_does_not_verify_fails_after_the_tunnel_opened(setup: Setup) -> None:
    url = setup.url("allowed.test", tls=True)
    direct = f"127.0.0.1:{closed_port()}"
    code, report = run_verify(["--allowed", url, "--direct", direct], setup.env)  # no --cacert
    assert code == 1
    assert check(report, "allowed", url)["detail"].startswith(
        "the proxy opened the tunnel, but the certificate did not verify against the system CA "
        "store: "
    )


def test_a_refused_direct_connection_counts_as_blocked_and_says_refused(setup: Setup) -> None:
    port = closed_port()
    code, report = run_verify(["--direct", f"127.0.0.1:{port}"], setup.env)
    assert code == 0
    bypass = check(report, "bypass")
    assert bypass["status"] == "pass"
    assert bypass["detail"] == (
        f"blocked: 127.0.0.1:{port}: connection refused (an RST: a reject rule, or nothing "
        "listens on that port; a --direct port that accepts connections when unfiltered proves "
        "more)"
    )
    assert bypass["attempts"][0]["error"] == "refused"
    assert check(report, "env.routing")["status"] == "skip"


@pytest.mark.parametrize("target", ["closed", "origin"])
def test_a_proxy_url_that_is_not_the_proxy_fails_reachability(setup: Setup, target: str) -> None:
    port = closed_port() if target == "closed" else setup.plain.port
    wrong = f"http://127.0.0.1:{port}"
    names = ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY")
    env = clean_env(dict.fromkeys(names, wrong))
    env.update(no_proxy=NO_PROXY, NO_PROXY=NO_PROXY)
    url = setup.url("allowed.test")
    code, report = run_verify(["--allowed", url, "--direct", f"127.0.0.1:{closed_port()}"], env)
    assert code == 1
    assert failed(report) == {"proxy.reachable"}
    detail = check(report, "proxy.reachable")["detail"]
    if target == "closed":
        assert detail == (
            f"cannot connect to the proxy 127.0.0.1:{port}: connection refused — nothing listens "
            "there: wrong port, or the proxy is down"
        )
    else:
        assert detail.startswith(f"127.0.0.1:{port} answered GET /healthz with 404 Not Found")
    assert check(report, "allowed", url) == {
        "name": "allowed",
        "status": "skip",
        "title": "allowed through the proxy",
        "detail": f"the proxy {wrong} is not reachable or not usable (see above)",
        "target": url,
    }


def test_proxy_option_without_variables_skips_the_environment(setup: Setup) -> None:
    url = setup.url("allowed.test")
    args = ["--proxy", setup.proxy.proxy_url, "--allowed", url]
    code, report = run_verify([*args, "--direct", f"127.0.0.1:{closed_port()}"], clean_env())
    assert code == 0
    assert check(report, "env")["status"] == "skip"
    assert check(report, "allowed", url)["status"] == "pass"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--direct", "nohost"], "expected HOST:PORT"),
        (["--allowed", "ftp://a.test/"], "give an http:// or https:// URL"),
        (["--proxy", "https://p:1"], "an https:// proxy URL means TLS to the proxy"),
        (["--timeout", "0"], "the timeout must be more than 0"),
        (["--cacert", "/nonexistent/ca.pem"], "--cacert /nonexistent/ca.pem: no such file"),
    ],
)
def test_usage_errors_exit_2(args: list[str], message: str) -> None:
    code, stderr = run_verify(args, clean_env())
    assert code == 2
    assert message in stderr
