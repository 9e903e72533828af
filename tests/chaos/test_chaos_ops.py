"""Chaos: operations under fault. A reload storm under load, a worker SIGKILLed, the connection
cap reached, the process out of file descriptors. Each asserts what clients see, the log line
(access record or process event) and the metric, and the recovery.

The fd-exhaustion internals (reserve, EMFILE on accept and on upstream sockets, no spinning) are
covered in depth by tests/integration/test_fd_exhaustion.py; here it is one case of the list.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.chaos.support import REQUESTS, fd_count, no_tracebacks, wait_fds_back, wait_metric
from tests.integration.helpers_core import assert_raw_refusal, http_request, send_raw
from tests.integration.helpers_ops import (
    EchoTunnel,
    admin_get,
    loopback_policy,
    payload,
    proxied_get,
    readyz,
    scrape,
    wait_until,
)
from tests.support.clients import read_response
from tests.support.dns import DnsServer
from tests.support.origin import Origin, RawOrigin, RawOriginFactory
from tests.support.proxy import ProxyFactory, ProxyProcess, base_proxy_config

STORM_RELOADS = 20
LOAD_SECONDS_MAX = 60.0  # the load loop's hard bound, whatever happens


@pytest.fixture
def targets(
    dns_server: DnsServer, origin: Origin, raw_origin_factory: RawOriginFactory
) -> tuple[Origin, RawOrigin]:
    for name in ("web.test", "echo.test", "extra.test"):
        dns_server.records[name] = ["127.0.0.1"]
    return origin, raw_origin_factory("echo", mode="echo")


def policy(web: Origin, echo: RawOrigin, *extra: str) -> dict[str, Any]:
    return loopback_policy(
        ["web.test", "echo.test", *extra],
        http_ports=[web.port],
        connect_ports=[echo.port],
    )


@dataclass
class Load:
    """A bounded load loop: keep-alive HTTP requests on a few connections and echo round trips
    through a few CONNECT tunnels, until stopped (or LOAD_SECONDS_MAX)."""

    proxy: ProxyProcess
    web: Origin
    echo: RawOrigin
    ok: int = 0
    failures: list[str] = field(default_factory=list)
    round_trips: int = 0
    stop: threading.Event = field(default_factory=threading.Event)

    def http_worker(self) -> None:
        url = self.web.url("/", "web.test")
        request = http_request(url)  # keep-alive
        sock: socket.socket | None = None
        deadline = time.monotonic() + LOAD_SECONDS_MAX
        for _ in range(100_000):
            if self.stop.is_set() or time.monotonic() > deadline:
                break
            try:
                if sock is None:
                    sock = socket.create_connection(self.proxy.proxy_address, timeout=5)
                sock.sendall(request)
                response = read_response(sock)
                if response.status != 200:
                    self.failures.append(f"status {response.status}")
                else:
                    self.ok += 1
                if (response.header("connection") or "").lower() == "close":
                    sock.close()
                    sock = None
            except (OSError, AssertionError) as exc:
                self.failures.append(f"http: {exc!r}")
                if sock is not None:
                    sock.close()
                sock = None
        if sock is not None:
            sock.close()

    def tunnel_worker(self, seed: int) -> None:
        deadline = time.monotonic() + LOAD_SECONDS_MAX
        try:
            with EchoTunnel(self.proxy.proxy_address, self.echo.authority("echo.test")) as tunnel:
                for index in range(100_000):
                    if self.stop.is_set() or time.monotonic() > deadline:
                        break
                    data = payload(4096, seed=seed * 100_000 + index)
                    if tunnel.roundtrip(data) != data:
                        self.failures.append("tunnel: bytes altered")
                        return
                    self.round_trips += 1
        except (OSError, AssertionError) as exc:
            self.failures.append(f"tunnel {seed}: {exc!r}")

    @contextlib.contextmanager
    def running(self, http: int = 3, tunnels: int = 3) -> Iterator[Load]:
        threads = [threading.Thread(target=self.http_worker, daemon=True) for _ in range(http)]
        threads += [
            threading.Thread(target=self.tunnel_worker, args=(n,), daemon=True)
            for n in range(tunnels)
        ]
        for thread in threads:
            thread.start()
        try:
            yield self
        finally:
            self.stop.set()
            for thread in threads:
                thread.join(15)


def test_reload_storm_under_load_fails_no_request_and_drops_no_tunnel(
    proxy_factory: ProxyFactory, targets: tuple[Origin, RawOrigin]
) -> None:
    web, echo = targets
    proxy = proxy_factory(policy(web, echo))
    valid, invalid = 0, 0
    with Load(proxy, web, echo).running() as load:
        wait_until(lambda: load.ok > 10 and load.round_trips > 10, 10, "load to run")
        for number in range(STORM_RELOADS):
            if number % 3 == 0:  # 7 of 20: invalid, the old generation stays
                invalid += 1
                proxy.config_path.write_text("allow: [\n  - broken\nlimits: {", encoding="utf-8")
                mark = proxy.reload(wait_for="reload-failed")
            else:
                valid += 1
                extra = ["extra.test"] if number % 2 else []
                proxy.write_config({**proxy.config, **policy(web, echo, *extra)})
                mark = proxy.reload(wait_for="reloaded")
            del mark
            time.sleep(0.05)
        before = (load.ok, load.round_trips)
        wait_until(
            lambda: load.ok > before[0] + 5 and load.round_trips > before[1] + 5,
            10,
            "load to go on after the storm",
        )
    assert load.failures == [], load.failures[:10]
    assert load.ok > 0
    assert load.round_trips > 0
    # The access log: every request allowed, no tunnel ended early; the metrics agree.
    records = proxy.access_records()
    assert all(r["status"] == 200 and r["reason"] == "allowed" for r in records), [
        r for r in records if r["status"] != 200
    ][:5]
    tunnels = proxy.wait_for_records(3, predicate=lambda r: r["method"] == "CONNECT")
    assert all(r["bytes_up"] == r["bytes_down"] > 0 for r in tunnels), tunnels
    snapshot = wait_metric(proxy, "egressgate_reloads_total", invalid, result="failure")
    assert snapshot.value("egressgate_reloads_total", result="success") >= valid
    assert snapshot.value(REQUESTS, decision="deny") == 0
    assert snapshot.value("egressgate_upstream_errors_total") == 0
    failed = proxy.events("reload-failed")
    assert len(failed) >= invalid
    assert all("config.yaml:" in e["errors"][0] for e in failed)
    assert readyz(proxy)[0] == 200
    no_tracebacks(proxy)


def test_a_sigkilled_worker_is_restarted_and_the_port_keeps_answering(
    dns_server: DnsServer, targets: tuple[Origin, RawOrigin], tmp_path: Any
) -> None:
    web, echo = targets
    config = {**base_proxy_config(dns_server.address, tmp_path), **policy(web, echo)}
    config["workers"] = 2
    with ProxyProcess(config, tmp_path, start_timeout=30).start() as proxy:
        pids = {int(e["worker"]): int(e["pid"]) for e in proxy.events("worker-listening")}
        assert len(pids) == 2
        mark = len(proxy.json_events())
        with Load(proxy, web, echo).running(http=2, tunnels=0) as load:
            wait_until(lambda: load.ok > 5, 10, "load to run")
            os.kill(pids[0], signal.SIGKILL)
            exited = proxy.wait_for_event("worker-exited", 5, after=mark)
            restarted = proxy.wait_for_event("worker-listening", 15, after=mark)
            wait_until(lambda: readyz(proxy)[0] == 200, 10, "/readyz 200 with both workers")
            seen = load.ok
            wait_until(lambda: load.ok > seen + 5, 10, "load after the restart")
        # Requests on a connection the killed worker held may fail (the client sees a reset
        # and reconnects); requests on the port never stop being answered.
        assert load.ok > 10
        assert all("ConnectionRefused" not in f for f in load.failures), load.failures
        assert (exited["worker"], exited["pid"]) == (0, pids[0])
        assert restarted["worker"] == 0
        assert restarted["pid"] != pids[0]
        for _ in range(10):  # fresh connections: both workers serve
            assert proxied_get(proxy.proxy_address, web.url("/", "web.test")).status == 200
        snapshot = wait_metric(proxy, "egressgate_workers", 2)
        assert snapshot.value("egressgate_workers") == 2
        assert proxy.returncode is None


def test_max_connections_reached_is_a_503_with_reason_admin_answers_and_it_recovers(
    proxy_factory: ProxyFactory, targets: tuple[Origin, RawOrigin]
) -> None:
    web, echo = targets
    proxy = proxy_factory({**policy(web, echo), "limits": {"max_connections": 3}})
    held = [EchoTunnel(proxy.proxy_address, echo.authority("echo.test")) for _ in range(3)]
    try:
        for tunnel in held:
            assert tunnel.roundtrip(b"ping") == b"ping"
        for _ in range(3):
            result = send_raw(proxy, http_request(web.url("/", "web.test"), close=True))
            assert_raw_refusal(result, 503, "too-many-connections", policy=None)
        assert admin_get(proxy.admin_address, "/healthz").status == 200  # type: ignore[arg-type]
        snapshot = wait_metric(proxy, "egressgate_connections_rejected_total", 3)
        # Every accepted connection ends with one record, a refused one too (issue 12).
        refused = proxy.wait_for_records(3, predicate=lambda r: r["kind"] == "connection")
        assert {(r["reason"], r["status"], r["method"]) for r in refused} == {
            ("too-many-connections", 503, "-")
        }
        assert all("max_connections (3) reached" in r["detail"] for r in refused)
        assert snapshot.value("egressgate_active_tunnels") == 3
        assert all(t.roundtrip(b"pong") == b"pong" for t in held), "held tunnels disturbed"
    finally:
        for tunnel in held:
            tunnel.close()
    wait_metric(proxy, "egressgate_active_tunnels", 0)
    assert proxied_get(proxy.proxy_address, web.url("/", "web.test")).status == 200
    no_tracebacks(proxy)


FD_LIMIT = 96


@pytest.mark.skipif(shutil.which("prlimit") is None, reason="needs prlimit(1)")
def test_out_of_file_descriptors_is_a_clean_503_and_it_recovers(
    proxy_factory: ProxyFactory, targets: tuple[Origin, RawOrigin]
) -> None:
    web, echo = targets
    proxy = proxy_factory(
        policy(web, echo),
        limits={"accept_backoff_max_s": 0.5},
        command=["prlimit", f"--nofile={FD_LIMIT}:{FD_LIMIT}", sys.executable, "-m", "egressgate"],
    )
    baseline = fd_count(proxy.pid)
    opened: list[socket.socket] = []
    refused: list[bytes] = []
    try:
        for _ in range(FD_LIMIT):  # each tunnel takes two descriptors: the limit is reached
            sock = socket.create_connection(proxy.proxy_address, timeout=3)
            sock.sendall(http_request(f"echo.test:{echo.port}", method="CONNECT"))
            try:
                head = sock.recv(4096)
            except TimeoutError:
                head = b"<no answer within 3 s>"
            if head.startswith(b"HTTP/1.1 200"):
                opened.append(sock)
                continue
            sock.close()
            refused.append(head)
            if len(refused) >= 3:
                break
        assert opened, "no tunnel opened at all"
        assert refused, "the proxy never refused"
        for answer in refused:
            assert answer.startswith(b"HTTP/1.1 503"), refused
            assert b"too-many-connections" in answer, refused
        assert admin_get(proxy.admin_address, "/healthz").status == 200  # type: ignore[arg-type]
        assert scrape(proxy).value("egressgate_connections_rejected_total") >= 1
        for sock in opened[:5]:  # open tunnels still relay
            sock.sendall(b"ping")
            assert sock.recv(4) == b"ping"
        assert proxy.returncode is None, "the proxy died"
    finally:
        for sock in opened:
            sock.close()
    wait_fds_back(proxy.pid, baseline, timeout=10)
    assert proxied_get(proxy.proxy_address, web.url("/", "web.test")).status == 200
    events = {e.get("event") for e in proxy.json_events()}
    assert "fd-reserve-reached" in events, events
    no_tracebacks(proxy)
