"""`workers: N` (issue 4): N proxy processes on one port under a supervisor that owns the admin
endpoint (egressgate/proxy/workers.py).

Checked on the real processes: two workers really share the port (both hold tunnels: their
socket descriptors are counted in /proc), /metrics sums them, SIGHUP to the supervisor reloads
every worker, SIGTERM drains them all and exits 0, a killed worker is restarted, and a
supervisor that cannot start leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.helpers_ops import (
    EchoTunnel,
    loopback_policy,
    payload,
    proxied_get,
    readyz,
    wait_for_metric,
    wait_until,
)
from tests.support.dns import DnsServer
from tests.support.origin import Origin, OriginFactory, RawOrigin, RawOriginFactory
from tests.support.proxy import REPO_ROOT, ProxyProcess, base_proxy_config, clean_env

WORKERS = 2
START_TIMEOUT = 30.0

StartWorkers = Callable[..., ProxyProcess]


@pytest.fixture
def origins(
    dns_server: DnsServer, origin_factory: OriginFactory, raw_origin_factory: RawOriginFactory
) -> tuple[Origin, RawOrigin]:
    for name in ("old-host.test", "new-host.test", "echo.test"):
        dns_server.records[name] = ["127.0.0.1"]
    return origin_factory("web"), raw_origin_factory("echo", mode="echo")


@pytest.fixture
def start_workers(
    dns_server: DnsServer, origins: tuple[Origin, RawOrigin], tmp_path: Path
) -> Iterator[StartWorkers]:
    """Start a supervised proxy: `workers: 2` in the file, or (`flag=True`) `--workers 2`."""
    web, echo = origins
    started: list[ProxyProcess] = []

    def start(*, flag: bool = False, allow: tuple[str, ...] = ("old-host.test",)) -> ProxyProcess:
        workdir = tmp_path / f"proxy-{len(started) + 1}"
        config: dict[str, Any] = {
            **base_proxy_config(dns_server.address, workdir),
            **loopback_policy(
                [*allow, "echo.test"], http_ports=[web.port], connect_ports=[echo.port]
            ),
            "limits": {"drain_timeout_s": 10.0},
        }
        if not flag:
            config["workers"] = WORKERS
        proxy = ProxyProcess(config, workdir, start_timeout=START_TIMEOUT)
        if flag:
            proxy.argv += ["--workers", str(WORKERS)]
        started.append(proxy)
        return proxy.start()

    try:
        yield start
    finally:
        for proxy in reversed(started):
            proxy.close()  # kills the process group: supervisor and workers


def worker_pids(proxy: ProxyProcess, after: int = 0) -> dict[int, int]:
    """worker index → pid, from the latest `worker-listening` events."""
    pids: dict[int, int] = {}
    for event in proxy.json_events()[after:]:
        if event.get("event") == "worker-listening":
            pids[int(event["worker"])] = int(event["pid"])
    return pids


def parent_of(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def socket_count(pid: int) -> int:
    """How many sockets process `pid` holds open."""
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            count += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
    return count


@pytest.mark.parametrize("flag", [False, True], ids=["workers-in-config", "workers-flag"])
def test_two_workers_share_the_port_and_admin_sums_their_metrics(
    start_workers: StartWorkers, origins: tuple[Origin, RawOrigin], flag: bool
) -> None:
    web, echo = origins
    proxy = start_workers(flag=flag)
    assert proxy.listening is not None
    assert proxy.listening["workers"] == WORKERS
    pids = worker_pids(proxy)
    assert sorted(pids) == list(range(WORKERS))
    assert len(set(pids.values())) == WORKERS
    for pid in pids.values():
        assert alive(pid)
        assert parent_of(pid) == proxy.pid

    status, body = readyz(proxy)
    assert (status, body["workers"], body["expected_workers"]) == (200, WORKERS, WORKERS)

    for _ in range(20):
        assert proxied_get(proxy.proxy_address, web.url("/", "old-host.test")).status == 200

    # Tunnels on fresh connections are spread by the kernel over both workers' listening
    # sockets: while they are open, each worker process holds more sockets than before.
    before = {index: socket_count(pid) for index, pid in pids.items()}
    tunnels = [EchoTunnel(proxy.proxy_address, echo.authority("echo.test")) for _ in range(20)]
    try:
        for index, tunnel in enumerate(tunnels):
            data = payload(1000, seed=index)
            assert tunnel.roundtrip(data) == data
        during = {index: socket_count(pid) for index, pid in pids.items()}
        assert all(during[i] > before[i] for i in pids), (before, during)
        assert sum(during.values()) - sum(before.values()) == 2 * len(tunnels)
        snapshot = wait_for_metric(proxy, "egressgate_active_tunnels", len(tunnels), timeout=5)
        assert snapshot.value("egressgate_workers") == WORKERS
    finally:
        for tunnel in tunnels:
            tunnel.close()
    snapshot = wait_for_metric(proxy, "egressgate_active_tunnels", 0, timeout=5)
    snapshot = wait_for_metric(proxy, "egressgate_requests_total", 40, timeout=5)
    assert snapshot.value("egressgate_requests_total", kind="http", decision="allow") == 20
    assert snapshot.value("egressgate_requests_total", kind="tunnel", decision="allow") == 20
    assert snapshot.value("egressgate_bytes_total", kind="tunnel", direction="up") == 20 * 1000
    records = proxy.wait_for_records(40)
    assert len(records) == 40


def _rewrite_unnoticed(path: Path, text: str) -> None:
    """Rewrite `path` in place with `text` of the same length and restore its mtime, so the
    file watchers' fingerprint (inode, size, mtime) is unchanged: only SIGHUP reloads it."""
    before = path.stat()
    assert len(text.encode()) == before.st_size, "same size needed"
    with path.open("r+", encoding="utf-8") as handle:
        handle.write(text)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))


def test_sighup_to_the_supervisor_reloads_every_worker(
    start_workers: StartWorkers, origins: tuple[Origin, RawOrigin]
) -> None:
    web, _ = origins
    proxy = start_workers()
    old_text = proxy.config_path.read_text(encoding="utf-8")
    new_text = old_text.replace("old-host.test", "new-host.test")
    _rewrite_unnoticed(proxy.config_path, new_text)
    mark = len(proxy.json_events())
    proxy.signal(signal.SIGHUP)
    wait_until(
        lambda: (
            len([e for e in proxy.json_events()[mark:] if e.get("event") == "reloaded"]) >= WORKERS
        ),
        10,
        "every worker's reloaded event",
    )
    reloaded = [e for e in proxy.json_events()[mark:] if e.get("event") == "reloaded"]
    assert [e["generation"] for e in reloaded] == [2] * WORKERS

    wait_until(lambda: readyz(proxy)[1]["generations"] == [2], 5, "both workers at generation 2")
    for _ in range(20):  # fresh connections: both workers answer with the new policy
        assert proxied_get(proxy.proxy_address, web.url("/", "new-host.test")).status == 200
        assert proxied_get(proxy.proxy_address, web.url("/", "old-host.test")).status == 403
    snapshot = wait_for_metric(proxy, "egressgate_reloads_total", WORKERS, result="success")
    assert snapshot.value("egressgate_config_generation") == 2


def test_sigterm_drains_every_worker_and_the_supervisor_exits_0(
    start_workers: StartWorkers, origins: tuple[Origin, RawOrigin]
) -> None:
    _, echo = origins
    proxy = start_workers()
    pids = worker_pids(proxy)
    with EchoTunnel(proxy.proxy_address, echo.authority("echo.test")) as tunnel:
        assert tunnel.status == 200
        proxy.signal(signal.SIGTERM)
        wait_until(lambda: readyz(proxy)[0] == 503, 1.0, "/readyz 503")
        data = payload(50_000, seed=8)
        assert tunnel.roundtrip(data) == data  # still relaying while draining
        assert proxy.returncode is None
    assert proxy.wait_exit(10.0) == 0
    wait_until(lambda: not any(alive(pid) for pid in pids.values()), 5, "the workers to exit")
    assert proxy.events("stopped")[-1].get("workers_killed") == 0


def test_a_killed_worker_is_restarted_and_the_port_keeps_serving(
    start_workers: StartWorkers, origins: tuple[Origin, RawOrigin]
) -> None:
    web, _ = origins
    proxy = start_workers()
    pids = worker_pids(proxy)
    mark = len(proxy.json_events())
    os.kill(pids[0], signal.SIGKILL)
    exited = proxy.wait_for_event("worker-exited", 5, after=mark)
    assert (exited["worker"], exited["pid"]) == (0, pids[0])
    restarted = proxy.wait_for_event("worker-listening", 10, after=mark)
    assert restarted["worker"] == 0
    assert restarted["pid"] != pids[0]
    assert parent_of(int(restarted["pid"])) == proxy.pid
    wait_until(lambda: readyz(proxy)[0] == 200, 10, "/readyz 200 with both workers")
    for _ in range(20):
        assert proxied_get(proxy.proxy_address, web.url("/", "old-host.test")).status == 200


def test_a_supervisor_that_cannot_start_leaves_no_worker_behind(
    dns_server: DnsServer, origins: tuple[Origin, RawOrigin], tmp_path: Path
) -> None:
    """The admin port is taken: the supervisor cannot start. Its workers (already forked)
    must not go on serving the proxy port without a supervisor."""
    web, _ = origins
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        config = {
            **base_proxy_config(dns_server.address, tmp_path),
            **loopback_policy(["old-host.test"], http_ports=[web.port]),
            "admin_listen": f"127.0.0.1:{taken.getsockname()[1]}",
            "workers": WORKERS,
        }
        path = tmp_path / "config.yaml"
        path.write_text(yaml.safe_dump(config), encoding="utf-8")
        with (tmp_path / "stderr").open("wb") as stderr:
            supervisor = subprocess.Popen(
                [sys.executable, "-m", "egressgate", "run", "--config", str(path)],
                cwd=REPO_ROOT,
                env=clean_env(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                start_new_session=True,
            )
        group = supervisor.pid  # its own session: the workers are in this process group
        try:
            code = supervisor.wait(START_TIMEOUT)
            assert code != 0
            time.sleep(1.0)  # give orphaned workers (if any) time to show up as listening
            log = (tmp_path / "stderr").read_text(encoding="utf-8", errors="replace")
            served = [line for line in log.splitlines() if '"worker-listening"' in line]
            survivors = _group_members(group)
            assert survivors == [], (
                f"the supervisor exited with {code}, but {len(survivors)} worker(s) of it are "
                f"still running (orphaned, {len(served)} announced serving the proxy port):\n"
                + log[-3000:]
            )
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGKILL)  # the group outlives the supervisor if orphaned
            if supervisor.poll() is None:
                supervisor.kill()
                supervisor.wait(10)


def _group_members(pgid: int) -> list[int]:
    """Live processes (not zombies) in process group `pgid`."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry))
    return members


def socket_inodes(pid: int) -> set[str]:
    """The socket inodes process `pid` holds ("socket:[123]")."""
    found = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
            if link.startswith("socket:"):
                found.add(link)
    return found


def test_a_restarted_worker_holds_none_of_the_supervisors_descriptors(
    start_workers: StartWorkers,
) -> None:
    """Issue 19: a worker restarted from the running supervisor inherited its descriptors,
    the admin listener among them."""
    proxy = start_workers()
    pids = worker_pids(proxy)
    mark = len(proxy.json_events())
    os.kill(pids[0], signal.SIGKILL)
    restarted = proxy.wait_for_event("worker-listening", 10, after=mark)
    new_pid = int(restarted["pid"])
    supervisor = socket_inodes(proxy.pid)
    for pid in (new_pid, pids[1]):
        shared = socket_inodes(pid) & supervisor
        assert not shared, f"worker {pid} holds the supervisor's sockets {sorted(shared)}"
    wait_until(lambda: readyz(proxy)[0] == 200, 10, "/readyz 200 with both workers")
