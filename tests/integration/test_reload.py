"""Hot reload under load (issue 4): SIGHUP, file edits and the Kubernetes ConfigMap symlink swap.

While a client thread sends requests in a loop and five CONNECT tunnels are open, the allowlist
changes. Required: no request of the loop fails, every tunnel still relays byte-exact (tunnels
keep the policy they started with, even when their host was removed), new requests get the new
policy, the proxy says `reloaded` with the new generation, and the metrics count it. An invalid
new config changes nothing but a `reload-failed` event (file:line) and a failure counter.
"""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.helpers_ops import (
    EchoTunnel,
    file_sha256,
    loopback_policy,
    payload,
    proxied_get,
    readyz,
    scrape,
    wait_until,
)
from tests.support.clients import requests_session
from tests.support.dns import DnsServer
from tests.support.origin import Origin, OriginFactory, RawOrigin, RawOriginFactory
from tests.support.proxy import ProxyProcess, base_proxy_config

TUNNELS = 5
LOOP_MIN_BEFORE = 15  # successful loop requests before the reload is triggered
LOOP_MIN_AFTER = 15  # ... and after the reload is in force
RELOAD_WAIT_S = 8.0  # the file watcher polls once a second


# ---------------------------------------------------------------------------------------------
# A client thread issuing requests in a loop
# ---------------------------------------------------------------------------------------------


@dataclass
class TrafficLoop:
    """Requests `url` through the proxy in a loop (bounded by count and time) from a thread.

    A fresh requests Session every 10 requests: both kept-alive and new connections cross the
    reload. Every outcome is kept as (monotonic time, status or exception text)."""

    proxy_url: str
    url: str
    max_requests: int = 20_000
    max_seconds: float = 40.0
    results: list[tuple[float, int | str]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _thread: threading.Thread | None = None

    def start(self) -> TrafficLoop:
        self._thread = threading.Thread(target=self._run, name="traffic-loop", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        deadline = time.monotonic() + self.max_seconds
        count = 0
        while not self._stop.is_set() and count < self.max_requests:
            if time.monotonic() > deadline:
                break
            with requests_session(self.proxy_url) as session:
                for _ in range(10):
                    count += 1
                    outcome: int | str
                    try:
                        response = session.get(self.url, timeout=5)
                        outcome = response.status_code
                        if response.status_code == 200 and response.text != "hello from web":
                            outcome = f"200 with body {response.text[:100]!r}"
                    except Exception as exc:
                        outcome = f"{type(exc).__name__}: {exc}"
                    with self._lock:
                        self.results.append((time.monotonic(), outcome))
                    if self._stop.is_set():
                        break

    def successes_after(self, moment: float) -> int:
        with self._lock:
            return sum(1 for t, outcome in self.results if t > moment and outcome == 200)

    def wait_successes_after(self, moment: float, count: int, timeout: float = 15.0) -> None:
        wait_until(
            lambda: self.successes_after(moment) >= count,
            timeout,
            f"{count} successful loop requests",
        )

    def stop(self) -> list[tuple[float, int | str]]:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(15.0)
            assert not self._thread.is_alive(), "the traffic loop did not stop"
        with self._lock:
            return list(self.results)


# ---------------------------------------------------------------------------------------------
# The world: origins, DNS, two configs, and a proxy started from a Kubernetes-style layout
# ---------------------------------------------------------------------------------------------


@dataclass
class World:
    proxy: ProxyProcess
    web: Origin
    echo: RawOrigin
    v1: dict[str, Any]
    v2: dict[str, Any]
    config_file: Path  # the path the proxy was started with (a symlink, Kubernetes-style)
    workdir: Path
    swaps: int = 0

    # -- ways to change the config ------------------------------------------------------------

    def text(self, config: dict[str, Any]) -> str:
        return yaml.safe_dump(config, sort_keys=False)

    def _data_file(self) -> Path:
        return self.config_file.resolve()

    def edit_in_place(self, text: str) -> None:
        """Rewrite the file the symlinks point at, same inode (like an editor)."""
        target = self._data_file()
        inode = target.stat().st_ino
        with target.open("r+", encoding="utf-8") as handle:
            handle.seek(0)
            handle.write(text)
            handle.truncate()
        assert target.stat().st_ino == inode

    def rename_over(self, text: str) -> None:
        """Write a temporary file and rename it over the data file (new inode)."""
        target = self._data_file()
        tmp = target.with_name(target.name + ".new")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, target)

    def symlink_swap(self, text: str) -> None:
        """What the kubelet does for a ConfigMap volume: a new timestamped directory, then
        `..data` atomically re-pointed at it (rename of a new symlink over the old one)."""
        self.swaps += 1
        new_dir = self.workdir / f"..2026_01_01_00_00_{self.swaps:02d}.000000001"
        new_dir.mkdir()
        (new_dir / self.config_file.name).write_text(text, encoding="utf-8")
        tmp_link = self.workdir / "..data_tmp"
        tmp_link.symlink_to(new_dir.name)
        os.replace(tmp_link, self.workdir / "..data")

    def sighup(self, text: str) -> None:
        self.rename_over(text)
        self.proxy.signal(signal.SIGHUP)


def _kubernetes_layout(workdir: Path, name: str, text: str) -> Path:
    """workdir/name -> ..data/name, ..data -> ..2026_01_01_00_00_00.000000001/ (the file)."""
    first = workdir / "..2026_01_01_00_00_00.000000001"
    first.mkdir()
    (first / name).write_text(text, encoding="utf-8")
    (workdir / "..data").symlink_to(first.name)
    link = workdir / name
    link.symlink_to(Path("..data") / name)
    return link


@pytest.fixture
def world(
    dns_server: DnsServer,
    origin_factory: OriginFactory,
    raw_origin_factory: RawOriginFactory,
    tmp_path: Path,
) -> Iterator[World]:
    web = origin_factory("web")
    echo = raw_origin_factory("echo", mode="echo")
    for name in ("stable.test", "old.test", "new-host.test", "echo.test"):
        dns_server.records[name] = ["127.0.0.1"]
    ports = {"http_ports": [web.port], "connect_ports": [echo.port]}
    workdir = tmp_path / "proxy"
    workdir.mkdir()
    base = base_proxy_config(dns_server.address, workdir)
    v1 = {**base, **loopback_policy(["stable.test", "old.test", "echo.test"], **ports)}
    # echo.test is removed by v2 while tunnels to it are open: with `reload_revokes: false` they
    # run on under the policy they started with (the revoking default is
    # tests/integration/test_reload_revokes.py).
    v2 = {
        **base,
        **loopback_policy(["stable.test", "new-host.test"], **ports),
        "reload_revokes": False,
    }
    # ProxyProcess writes workdir/config.yaml; replace it by the ConfigMap layout before start.
    proxy = ProxyProcess(v1, workdir)
    try:
        text = proxy.config_path.read_text(encoding="utf-8")
        proxy.config_path.unlink()
        link = _kubernetes_layout(workdir, proxy.config_path.name, text)
        assert link == proxy.config_path
        assert link.is_symlink()
        proxy.start()
        yield World(proxy, web, echo, v1, v2, link, workdir)
    finally:
        proxy.close()


# ---------------------------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------------------------

TRIGGERS: dict[str, Callable[[World, str], None]] = {
    "sighup": World.sighup,
    "edit-in-place": World.edit_in_place,
    "rename-over": World.rename_over,
    "k8s-symlink-swap": World.symlink_swap,
}


@pytest.mark.parametrize("trigger", list(TRIGGERS))
def test_reload_under_traffic_keeps_requests_and_tunnels_and_applies_the_new_policy(
    world: World, trigger: str
) -> None:
    proxy = world.proxy
    address = proxy.proxy_address
    old_sha = file_sha256(world.config_file)

    tunnels = [EchoTunnel(address, world.echo.authority("echo.test")) for _ in range(TUNNELS)]
    try:
        for index, tunnel in enumerate(tunnels):
            assert tunnel.status == 200
            first = payload(1000, seed=index)
            assert tunnel.roundtrip(first) == first

        loop = TrafficLoop(proxy.proxy_url, world.web.url("/", "stable.test")).start()
        try:
            loop.wait_successes_after(0.0, LOOP_MIN_BEFORE)
            mark = len(proxy.json_events())
            new_text = world.text(world.v2)
            TRIGGERS[trigger](world, new_text)
            event = proxy.wait_for_event("reloaded", RELOAD_WAIT_S, after=mark)
            reloaded_at = time.monotonic()
            loop.wait_successes_after(reloaded_at, LOOP_MIN_AFTER)
            # The tunnels relay during the traffic, after the reload.
            for index, tunnel in enumerate(tunnels):
                data = payload(64 * 1024, seed=100 + index)
                assert tunnel.roundtrip(data) == data, f"tunnel {index} corrupted"
        finally:
            results = loop.stop()
    finally:
        for tunnel in tunnels:
            tunnel.close()

    failures = [(t, outcome) for t, outcome in results if outcome != 200]
    assert failures == [], f"{len(failures)} of {len(results)} loop requests failed: {failures[:5]}"

    # The proxy said so, with the new generation and the new file's hash.
    new_sha = file_sha256(world.config_file)
    assert new_sha != old_sha
    assert event["sha256"] == new_sha
    if trigger == "sighup":
        requested = proxy.events("reload-requested")
        assert "SIGHUP" in {e.get("trigger") for e in requested}, requested
    status, body = readyz(proxy)
    assert status == 200
    assert body["sha256"] == new_sha
    generation = body["generation"]
    reloaded = proxy.events("reloaded")
    # With SIGHUP, the file watcher may have seen the rename first: then the same content is
    # loaded twice. Every successful reload makes one generation and one counted success.
    assert generation == 1 + len(reloaded)
    assert event["generation"] >= 2
    assert reloaded[-1]["generation"] == generation
    snapshot = scrape(proxy)
    assert snapshot.value("egressgate_reloads_total", result="success") == len(reloaded)
    assert snapshot.value("egressgate_reloads_total", result="failure") == 0
    assert snapshot.value("egressgate_config_generation") == generation

    # New requests get the new policy: added host allowed, removed hosts refused.
    assert proxied_get(address, world.web.url("/", "new-host.test")).status == 200
    removed = proxied_get(address, world.web.url("/", "old.test"))
    assert (removed.status, removed.header("x-egressgate-reason")) == (403, "host-not-allowed")
    with EchoTunnel(address, world.echo.authority("echo.test")) as late:
        assert late.status == 403

    # Every tunnel carried exactly what its client sent.
    closed = world.echo.wait_for_closed(TUNNELS)
    sizes = sorted(c.bytes_received for c in closed)
    assert sizes == [1000 + 64 * 1024] * TUNNELS


INVALID_CONFIGS = {
    # (text appended to a valid config, the message expected for the line we appended)
    "syntax-error": ("allow: [stable.test]]\n", "YAML syntax"),
    "unknown-key": ("allwo:\n- new-host.test\n", "unknown key 'allwo'"),
}


@pytest.mark.parametrize("case", list(INVALID_CONFIGS))
def test_invalid_new_config_is_reported_with_file_and_line_and_the_old_policy_stays(
    world: World, case: str
) -> None:
    proxy = world.proxy
    address = proxy.proxy_address
    old_sha = file_sha256(world.config_file)
    valid = yaml.safe_dump({k: v for k, v in world.v2.items() if k != "allow"}, sort_keys=False)
    suffix, message = INVALID_CONFIGS[case]
    bad_line = valid.count("\n") + 1
    bad_text = valid + suffix

    with EchoTunnel(address, world.echo.authority("echo.test")) as tunnel:
        assert tunnel.status == 200
        mark = len(proxy.json_events())
        world.rename_over(bad_text)  # picked up by the file watcher
        event = proxy.wait_for_event("reload-failed", RELOAD_WAIT_S, after=mark)
        data_path = str(world.config_file)
        line_re = re.compile(rf"^{re.escape(data_path)}:(\d+):\d+: (.*)$")
        located = [m for m in (line_re.match(e) for e in event["errors"]) if m]
        assert located, f"no error names {data_path}:LINE:COL: {event}"
        assert any(int(m.group(1)) == bad_line and message in m.group(2) for m in located), event
        assert event["kept_generation"] == 1

        snapshot = scrape(proxy)
        assert snapshot.value("egressgate_reloads_total", result="failure") == 1
        assert snapshot.value("egressgate_reloads_total", result="success") == 0
        assert snapshot.value("egressgate_config_generation") == 1
        (info,) = snapshot.matching("egressgate_config_info")
        assert info.labels["sha256"] == old_sha
        status, body = readyz(proxy)
        assert (status, body["generation"], body["sha256"]) == (200, 1, old_sha)

        # The old policy is still in force, for new requests and the open tunnel.
        assert proxied_get(address, world.web.url("/", "old.test")).status == 200
        assert proxied_get(address, world.web.url("/", "new-host.test")).status == 403
        data = payload(4096, seed=7)
        assert tunnel.roundtrip(data) == data

        # The watcher reports a bad file once, not on every poll...
        time.sleep(1.5)
        assert len(proxy.events("reload-failed")) == 1
        # ...and an explicit SIGHUP reads it again, and fails again.
        mark = len(proxy.json_events())
        proxy.signal(signal.SIGHUP)
        proxy.wait_for_event("reload-failed", RELOAD_WAIT_S, after=mark)
        assert scrape(proxy).value("egressgate_reloads_total", result="failure") == 2

        # Fixing the file recovers: generation 2.
        mark = len(proxy.json_events())
        world.rename_over(world.text(world.v2))
        fixed = proxy.wait_for_event("reloaded", RELOAD_WAIT_S, after=mark)
        assert fixed["generation"] == 2
        assert proxied_get(address, world.web.url("/", "new-host.test")).status == 200

    assert not proxy.events("reloaded")[:-1], "only the fixed config was loaded"


def test_reload_of_listen_settings_says_a_restart_is_needed_and_keeps_the_old_listener(
    world: World,
) -> None:
    proxy = world.proxy
    mark = len(proxy.json_events())
    moved = {**world.v1, "listen": "127.0.0.1:1", "admin_listen": "127.0.0.1:2"}
    world.symlink_swap(world.text(moved))
    event = proxy.wait_for_event("reloaded", RELOAD_WAIT_S, after=mark)
    assert event["generation"] == 2
    assert event["restart_needed"] == ["listen", "admin_listen"]
    assert "restart" in event["note"]
    # Still serving where it started; the rest of the new config (same policy) is in force.
    assert proxied_get(proxy.proxy_address, world.web.url("/", "old.test")).status == 200
    status, body = readyz(proxy)
    assert (status, body["generation"]) == (200, 2)


def test_sigusr1_reopens_the_access_log_after_logrotate_moved_it(world: World) -> None:
    proxy = world.proxy
    log = proxy.access_log_path
    rotated = log.with_name(log.name + ".1")
    url = world.web.url("/?n={}", "stable.test")
    assert proxied_get(proxy.proxy_address, url.format(1)).status == 200
    proxy.wait_for_records(1)
    os.rename(log, rotated)  # logrotate without copytruncate
    # Until told, the proxy keeps appending to the file it has open (now the rotated one).
    assert proxied_get(proxy.proxy_address, url.format(2)).status == 200
    wait_until(lambda: rotated.read_text().count("\n") == 2, 5, "record 2 in the rotated file")
    assert not log.exists()

    proxy.signal(signal.SIGUSR1)
    wait_until(log.exists, 5, "the access log to be reopened (created again)")
    assert proxied_get(proxy.proxy_address, url.format(3)).status == 200
    (third,) = proxy.wait_for_records(1)
    assert third["host"] == "stable.test"
    old = [json.loads(line) for line in rotated.read_text().splitlines()]
    assert len(old) == 2
    assert proxy.returncode is None
    assert scrape(proxy).value("egressgate_access_log_errors_total") == 0
