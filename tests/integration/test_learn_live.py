"""`egressgate learn` on the access log of a real proxy in report mode (issue 12, item 7).

A report-mode proxy with an empty allowlist lets everything through that it would refuse by
name, and logs why it would have. Learning from that log must not cry "domain fronting" at a
tunnel whose TLS server name IS its CONNECT host, and a refusal of an internal address (which
report mode keeps: it is SSRF protection, not allowlisting) must name that address in the
record's `address` field, so that `learn` can print it.

DNS: pypi.test → the TLS origin on 127.0.0.2 (allowed by allow_private 127.0.0.2/32);
internal.test → 127.0.0.9, an internal address outside allow_private: refused before any
connection, so nothing is ever sent to it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.integration.helpers_core import connect_refusal, start_proxy, wait_record
from tests.support.clients import https_request_via_connect
from tests.support.dns import DnsServer
from tests.support.origin import OriginFactory
from tests.support.proxy import ProxyFactory
from tests.support.tlsca import HarnessCA

ROOT = Path(__file__).resolve().parents[2]
REFUSED_ADDRESS = "127.0.0.9"


def run_learn(log: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "egressgate", "learn", str(log), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_learn_after_report_mode_has_no_false_sni_warning_and_names_refused_addresses(
    origin_factory: OriginFactory,
    dns_server: DnsServer,
    test_ca: HarnessCA,
    proxy_factory: ProxyFactory,
) -> None:
    origin = origin_factory("pypi", host="127.0.0.2", tls=test_ca, cert_names=["pypi.test"])
    dns_server.records["pypi.test"] = [origin.host]
    dns_server.records["internal.test"] = [REFUSED_ADDRESS]
    proxy = start_proxy(
        proxy_factory,
        allow=[],
        ports=[origin.port],
        allow_private=["127.0.0.2/32"],
        mode="report",
    )
    context = test_ca.client_context()
    for _ in range(2):
        response = https_request_via_connect(
            proxy.proxy_address, "pypi.test", origin.port, context=context
        )
        assert response.status == 200
    refusal = connect_refusal(proxy, f"internal.test:{origin.port}")
    assert (refusal.status, refusal.header("x-egressgate-reason")) == (403, "private-address")

    tunnels = proxy.wait_for_records(
        3, 10.0, predicate=lambda r: r.get("host") in ("pypi.test", "internal.test")
    )
    for record in (r for r in tunnels if r["host"] == "pypi.test"):
        # The SNI names the CONNECT host: the name decision (host-not-allowed) is the whole story.
        assert (record["decision"], record["reason"], record["sni"]) == (
            "report",
            "host-not-allowed",
            "pypi.test",
        )
    private = wait_record(proxy, host="internal.test")
    assert (private["decision"], private["reason"]) == ("deny", "private-address")
    assert private["address"] == REFUSED_ADDRESS
    assert REFUSED_ADDRESS in private["detail"]

    done = run_learn(proxy.access_log_path)
    assert done.returncode == 0, done.stderr
    assert "TLS server name" not in done.stderr, done.stderr
    assert "domain fronting" not in done.stderr, done.stderr
    assert "  - pypi.test" in done.stdout, done.stdout
    assert (
        f"# still refused: internal.test resolved to internal address(es) {REFUSED_ADDRESS} "
        in done.stdout
    ), done.stdout
    assert "?" not in done.stdout.split("still refused", 1)[1].split("\n", 1)[0]

    as_json = json.loads(run_learn(proxy.access_log_path, "--format", "json").stdout)
    (refused,) = as_json["policies"]["default"]["private_address_refusals"]
    assert (refused["host"], refused["addresses"]) == ("internal.test", [REFUSED_ADDRESS])


def test_learn_cli_on_lines_an_older_proxy_wrote(tmp_path: Path) -> None:
    """The two lines of the report (issue 12) as 0.1.0 logged them: a tunnel to pypi.org with
    SNI pypi.org refused as sni-not-allowed, and a private-address refusal with `address` null."""
    base = {"client": "10.0.0.7", "user": None, "policy": "default", "method": "CONNECT",
            "port": 443, "rule": None, "bytes_up": 0, "bytes_down": 0, "duration_ms": 1.0,
            "kind": "tunnel"}  # fmt: skip
    lines = [
        {**base, "ts": "2026-12-04T10:00:00.000Z", "host": "pypi.org", "address": "151.101.0.223",
         "decision": "report", "reason": "sni-not-allowed", "status": 200, "sni": "pypi.org",
         "detail": "TLS server name pypi.org is not allowed (CONNECT was for pypi.org)"},
        {**base, "ts": "2026-12-04T10:00:01.000Z", "host": "pypi.org", "address": "151.101.0.223",
         "decision": "report", "reason": "sni-not-allowed", "status": 200, "sni": "pypi.org",
         "detail": "TLS server name pypi.org is not allowed (CONNECT was for pypi.org)"},
        {**base, "ts": "2026-12-04T10:00:02.000Z", "host": "intranet.example", "address": None,
         "decision": "deny", "reason": "private-address", "status": 403, "sni": None,
         "detail": "resolves to 10.1.2.3 (private), which is not in allow_private"},
    ]  # fmt: skip
    log = tmp_path / "access.log"
    log.write_text("".join(json.dumps(line) + "\n" for line in lines))
    done = run_learn(log)
    assert done.returncode == 0, done.stderr
    assert "presented TLS server name" not in done.stderr, done.stderr
    assert "  - pypi.org" in done.stdout, done.stdout
    assert "intranet.example resolved to internal address(es) 10.1.2.3 " in done.stdout
