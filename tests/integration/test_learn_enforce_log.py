"""`egressgate learn` on a real enforce-mode access log (issue 18): what was refused is listed
apart with its reason, look-alike names and internal IP literals are flagged as suspicious, and
neither is proposed. The proxy runs on loopback; every name resolves through the test DNS
server, and the refused destinations are refused by name, so nothing is ever connected to.
"""

from __future__ import annotations

import yaml

from tests.integration.helpers_core import ports_of, start_proxy
from tests.integration.helpers_ops import proxied_get, run_cli
from tests.support.dns import DnsServer
from tests.support.origin import OriginFactory
from tests.support.proxy import ProxyFactory


def test_learn_lists_denied_and_suspicious_destinations_apart_and_proposes_neither(
    proxy_factory: ProxyFactory, origin_factory: OriginFactory, dns_server: DnsServer
) -> None:
    origin = origin_factory("web")
    for name in ("allowed.test", "other.test", "allowed.test.evil.test"):
        dns_server.records[name] = [origin.host]
    proxy = start_proxy(proxy_factory, allow=["allowed.test"], ports=ports_of(origin))
    address = proxy.proxy_address
    assert proxied_get(address, origin.url("/", "allowed.test")).status == 200
    for name in ("other.test", "allowed.test.evil.test", "127.0.0.9"):
        assert proxied_get(address, origin.url("/", name)).status == 403
    proxy.wait_for_records(4)
    assert len(origin.request_records()) == 1  # the refused ones never reached it

    done = run_cli(["learn", str(proxy.access_log_path)])
    assert done.exit_code == 0, done
    text = done.stdout
    assert yaml.safe_load(text)["allow"] == ["allowed.test"]
    denied = text.index("# DENIED, not proposed")
    suspicious = text.index("# SUSPICIOUS, never proposed")
    assert text.index("- allowed.test") < denied < suspicious
    assert "#   other.test (http " in text[denied:suspicious]
    assert "host-not-allowed 1" in text[denied:suspicious]
    flagged = text[suspicious:]
    assert "allowed.test.evil.test (http " in flagged
    assert "contains the name allowed.test without being under it" in flagged
    assert "127.0.0.9 (http " in flagged
    assert "an internal address (loopback)" in flagged
    assert "ip-literal-not-allowed 1" in flagged
