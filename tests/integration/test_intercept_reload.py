"""TLS interception's secrets and CA across reloads, on the real proxy (issue 16).

Secrets are read when a config generation is loaded: a SIGHUP re-reads them even when the
config file itself did not change, and the next intercepted request carries the new value to
the origin; a secret that cannot be read (or a CA key that others can read) fails the reload
with file:line, and the running generation stays in force, old secret included. No secret value
ever appears in the proxy's output, its access log or its metrics. The CA is made by
`tools/ca.py` with a name constraint, as `egressgate ca init --name-constraint` makes it.
"""

from __future__ import annotations

import os
import ssl
from pathlib import Path

from egressgate.tools import ca
from tests.integration.helpers_ops import (
    loopback_policy,
    proxied_get,
    proxy_text_output,
    readyz,
    scrape,
)
from tests.support.clients import tls_via_connect
from tests.support.dns import DnsServer
from tests.support.origin import Origin, OriginFactory
from tests.support.proxy import ProxyFactory, ProxyProcess
from tests.support.tlsca import HarnessCA

SECRETS = {
    "first": "ghp_reloadFirstSecret00000001",
    "second": "ghp_reloadSecondSecret0000002",
    "third": "ghp_reloadThirdSecret00000003",
    "env": "envReloadSecretValue000000004",
}
API = "api.intercepted.test"
RELOAD_WAIT_S = 10.0


def _intercepted_get(proxy: ProxyProcess, api: Origin, ca_cert: str, path: str) -> int:
    """GET `path` on API through a CONNECT tunnel, trusting only the interception CA."""
    context = ssl.create_default_context(cafile=ca_cert)
    with tls_via_connect(proxy.proxy_address, API, api.port, context=context) as tls:
        request = f"GET {path} HTTP/1.1\r\nHost: {API}:{api.port}\r\nConnection: close\r\n\r\n"
        tls.sendall(request.encode())
        data = b""
        while chunk := tls.recv(65536):
            data += chunk
    return int(data.split(b" ", 2)[1])


def _authorization_seen(api: Origin, path: str) -> list[str]:
    return api.request_records(path)[-1].header_values("Authorization")


def test_secrets_are_reread_on_reload_and_a_failed_read_keeps_the_running_policy(
    proxy_factory: ProxyFactory,
    origin: Origin,
    origin_factory: OriginFactory,
    test_ca: HarnessCA,
    dns_server: DnsServer,
    tmp_path: Path,
) -> None:
    cert, key = ca.make_ca(["intercepted.test"])
    files = ca.write_ca(str(tmp_path / "ca"), cert, key, None)
    api = origin_factory("api", tls=test_ca, cert_names=(API,))
    token = tmp_path / "token"
    token.write_text(SECRETS["first"] + "\n")
    dns_server.set("web.test", ["127.0.0.1"])
    dns_server.set(API, ["127.0.0.1"])
    config = {
        **loopback_policy(
            ["web.test", ".intercepted.test"], http_ports=[origin.port], connect_ports=[api.port]
        ),
        "tls_intercept": {
            "ca_cert_file": files.cert,
            "ca_key_file": files.key,
            "upstream_ca_file": str(test_ca.ca_pem_path),
        },
        "intercept": [
            {
                "host": API,
                "rules": [{"methods": ["GET"], "paths": ["/bytes/*"]}],
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

    def seen_after_get(path: str) -> list[str]:
        assert _intercepted_get(proxy, api, files.cert, path) == 200
        return _authorization_seen(api, path)

    assert seen_after_get("/bytes/1") == [f"Bearer {SECRETS['first']}"]

    # The secret file alone changed: the config text is the same, a SIGHUP still reloads, and
    # the next request carries the new secret.
    token.write_text(SECRETS["second"] + "\n")
    mark = proxy.reload()
    assert proxy.wait_for_event("reloaded", RELOAD_WAIT_S, after=mark)["generation"] == 2
    assert seen_after_get("/bytes/2") == [f"Bearer {SECRETS['second']}"]

    # The secret file is gone: the reload fails at the set_headers line, generation 2 (and its
    # secret) stays in force.
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
    assert seen_after_get("/bytes/3") == [f"Bearer {SECRETS['second']}"]

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
    assert seen_after_get("/bytes/4") == [f"Bearer {SECRETS['third']}"]
    assert proxied_get(address, url).status == 200

    metrics = scrape(proxy)
    assert metrics.value("egressgate_reloads_total", result="failure") == 2
    everything = proxy_text_output(proxy) + metrics.text
    for name, secret in SECRETS.items():
        assert secret not in everything, f"the {name} secret leaked into the output"
