"""Small things an operator notices first (issue 18), on the real process.

- the admin port answers sanely: an unknown path is `404 Not Found`, a method other than GET or
  HEAD is `405 Method Not Allowed` with `Allow: GET, HEAD` (it said `405 Not Allowed`, no Allow);
- /metrics has the standard `process_*` families and `egressgate_build_info{version=...}`;
- process events have millisecond timestamps, like the access log (they had whole seconds);
- with `workers > 1`, every event a worker writes names its worker (they did not).
"""

from __future__ import annotations

import re
import signal
import socket
from pathlib import Path
from typing import Any

from egressgate import __version__
from tests.integration.helpers_ops import admin_get, scrape
from tests.support.clients import parse_responses
from tests.support.dns import DnsServer
from tests.support.proxy import ProxyFactory, ProxyProcess, base_proxy_config

MILLIS_TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def admin_request(proxy: ProxyProcess, method: str, path: str) -> Any:
    address = proxy.admin_address
    assert address is not None
    with socket.create_connection(address, timeout=5.0) as sock:
        sock.sendall(
            f"{method} {path} HTTP/1.1\r\nHost: admin\r\nContent-Length: 0\r\n\r\n".encode()
        )
        data = b""
        for _ in range(100):  # bounded: the admin port closes after one response
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    responses, _ = parse_responses(data)
    assert len(responses) == 1, data
    return responses[0]


def test_admin_unknown_path_is_404_and_other_methods_are_405_with_allow(
    proxy_factory: ProxyFactory,
) -> None:
    proxy = proxy_factory()
    assert proxy.admin_address is not None
    missing = admin_get(proxy.admin_address, "/nope")
    assert missing.status == 404
    assert b"/healthz" in missing.body
    for method in ("POST", "PUT", "DELETE"):
        refused = admin_request(proxy, method, "/metrics")
        assert refused.status == 405, method
        assert refused.raw.split(b"\r\n", 1)[0] == b"HTTP/1.1 405 Method Not Allowed"
        assert refused.header("allow") == "GET, HEAD"


def test_metrics_have_process_families_and_build_info(proxy_factory: ProxyFactory) -> None:
    metrics = scrape(proxy_factory())
    for name in ("process_resident_memory_bytes", "process_cpu_seconds_total", "process_open_fds"):
        assert metrics.has(name), name
    assert metrics.value("egressgate_build_info", version=__version__) == 1


def test_process_events_have_millisecond_timestamps(proxy_factory: ProxyFactory) -> None:
    proxy = proxy_factory()
    events = proxy.json_events()
    assert events
    assert all(MILLIS_TS.match(e["ts"]) for e in events), [e["ts"] for e in events]


def test_every_event_of_a_worker_names_the_worker(dns_server: DnsServer, tmp_path: Path) -> None:
    workdir = tmp_path / "proxy"
    config = {**base_proxy_config(dns_server.address, workdir), "workers": 2}
    with ProxyProcess(config, workdir, start_timeout=30.0) as proxy:  # __enter__ starts it
        proxy.signal(signal.SIGTERM)
        assert proxy.wait_exit(20.0) == 0
    stopped = [e for e in proxy.json_events() if e["event"] == "stopped"]
    supervisor = [e for e in stopped if "workers_killed" in e]
    workers = [e for e in stopped if "workers_killed" not in e]
    assert len(supervisor) == 1
    assert "worker" not in supervisor[0]
    assert sorted(e.get("worker") for e in workers) == [0, 1], workers
    draining = [e for e in proxy.json_events() if e["event"] == "draining" and "signal" in e]
    assert sorted(e.get("worker") for e in draining) == [0, 1], draining
