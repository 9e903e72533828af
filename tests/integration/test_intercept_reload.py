"""TLS interception's secrets and CA across reloads, on the real proxy (issue 16).

Secrets are read when a config generation is loaded: a SIGHUP re-reads them even when the
config file itself did not change; a secret that cannot be read (or a CA key that others can
read) fails the reload with file:line, and the running generation stays in force and keeps
serving. No secret value ever appears in the proxy's output, its access log or its metrics.
"""

from __future__ import annotations

import os
from pathlib import Path

from egressgate.tools import ca
from tests.integration.helpers_ops import (
    loopback_policy,
    proxied_get,
    proxy_text_output,
    readyz,
    scrape,
)
from tests.support.dns import DnsServer
from tests.support.origin import Origin
from tests.support.proxy import ProxyFactory

SECRETS = {
    "first": "ghp_reloadFirstSecret00000001",
    "second": "ghp_reloadSecondSecret0000002",
    "third": "ghp_reloadThirdSecret00000003",
    "env": "envReloadSecretValue000000004",
}
RELOAD_WAIT_S = 10.0


def test_secrets_are_reread_on_reload_and_a_failed_read_keeps_the_running_policy(
    proxy_factory: ProxyFactory, origin: Origin, dns_server: DnsServer, tmp_path: Path
) -> None:
    cert, key = ca.make_ca(["intercepted.test"])
    files = ca.write_ca(str(tmp_path / "ca"), cert, key, None)
    token = tmp_path / "token"
    token.write_text(SECRETS["first"] + "\n")
    dns_server.set("web.test", ["127.0.0.1"])
    config = {
        **loopback_policy(["web.test", ".intercepted.test"], http_ports=[origin.port]),
        "tls_intercept": {"ca_cert_file": files.cert, "ca_key_file": files.key},
        "intercept": [
            {
                "host": "api.intercepted.test",
                "rules": [{"methods": ["GET"], "paths": ["/repos/our-org/*"]}],
                "set_headers": {
                    "Authorization": f"Bearer file:{token}",
                    "X-Env-Token": "env:EG_RELOAD_TOKEN",
                },
            }
        ],
    }
    proxy = proxy_factory(config, env={"EG_RELOAD_TOKEN": SECRETS["env"]})
    address = proxy.proxy_address
    url = origin.url("/", "web.test")
    assert proxied_get(address, url).status == 200

    # The secret file alone changed: the config text is the same, a SIGHUP still reloads.
    token.write_text(SECRETS["second"] + "\n")
    mark = proxy.reload()
    assert proxy.wait_for_event("reloaded", RELOAD_WAIT_S, after=mark)["generation"] == 2

    # The secret file is gone: the reload fails at the set_headers line, generation 2 stays.
    token.unlink()
    mark = proxy.reload()
    failed = proxy.wait_for_event("reload-failed", RELOAD_WAIT_S, after=mark)
    assert failed["kept_generation"] == 2
    assert any(
        str(proxy.config_path) in e and f"cannot read the secret file {token}" in e
        for e in failed["errors"]
    ), failed
    assert readyz(proxy)[1]["generation"] == 2
    assert proxied_get(address, url).status == 200

    # A CA key others can read fails the reload too (naming the file and its mode).
    token.write_text(SECRETS["third"] + "\n")
    os.chmod(files.key, 0o604)
    mark = proxy.reload()
    failed = proxy.wait_for_event("reload-failed", RELOAD_WAIT_S, after=mark)
    assert any(
        f"{files.key} is accessible by group or others (mode 0604)" in e for e in failed["errors"]
    )
    assert readyz(proxy)[1]["generation"] == 2

    # Fixed: the next reload reads the third secret.
    os.chmod(files.key, 0o600)
    mark = proxy.reload()
    assert proxy.wait_for_event("reloaded", RELOAD_WAIT_S, after=mark)["generation"] == 3
    assert proxied_get(address, url).status == 200

    metrics = scrape(proxy)
    assert metrics.value("egressgate_reloads_total", result="failure") == 2
    everything = proxy_text_output(proxy) + metrics.text
    for name, secret in SECRETS.items():
        assert secret not in everything, f"the {name} secret leaked into the output"
