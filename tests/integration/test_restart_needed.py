"""`restart_needed` is judged against what the process runs on, not the previous generation
(issue 18), in the `reloaded` event and in /readyz.

Before the fix: change `listen` → `["listen"]`; then edit only a comment → `null` although the
socket was still on the old address; then set `listen` back → `["listen"]` although nothing
needed a restart. The proxy is real; its listeners stay where they started throughout.
"""

from __future__ import annotations

import signal
from typing import Any

from tests.integration.helpers_ops import proxied_get, readyz
from tests.support.dns import DnsServer
from tests.support.origin import OriginFactory
from tests.support.proxy import ProxyFactory, ProxyProcess

RELOAD_WAIT_S = 10.0


def reload_text(proxy: ProxyProcess, text: str) -> dict[str, Any]:
    """Write `text` as the config file, SIGHUP, and return the `reloaded` event."""
    tmp = proxy.config_path.with_name("next.yaml")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(proxy.config_path)  # atomic: the file watcher never sees half a file
    mark = len(proxy.json_events())
    proxy.signal(signal.SIGHUP)
    return proxy.wait_for_event("reloaded", RELOAD_WAIT_S, after=mark)


def test_restart_needed_compares_with_the_running_listeners(
    proxy_factory: ProxyFactory, origin_factory: OriginFactory, dns_server: DnsServer
) -> None:
    origin = origin_factory("web")
    dns_server.records["web.test"] = [origin.host]
    proxy = proxy_factory(allow=["web.test"], http_ports=[origin.port],
                          allow_private=["127.0.0.0/8"])  # fmt: skip
    started = proxy.config_path.read_text(encoding="utf-8")
    assert "listen: 127.0.0.1:0\n" in started
    moved = started.replace("listen: 127.0.0.1:0\n", "listen: 127.0.0.1:1\n", 1)

    event = reload_text(proxy, moved)
    assert event["restart_needed"] == ["listen"]
    assert readyz(proxy)[1]["restart_needed"] == ["listen"]

    # A comment-only edit: the socket is still where it started, so `listen` still waits.
    event = reload_text(proxy, moved + "# a comment\n")
    assert event["restart_needed"] == ["listen"]
    status, body = readyz(proxy)
    assert (status, body["restart_needed"]) == (200, ["listen"])

    # Back to what the process runs on: nothing waits for a restart any more.
    event = reload_text(proxy, started)
    assert event["restart_needed"] is None
    assert readyz(proxy)[1]["restart_needed"] == []
    assert proxied_get(proxy.proxy_address, origin.url("/", "web.test")).status == 200
