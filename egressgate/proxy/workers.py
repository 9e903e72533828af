"""`workers: N`: N proxy processes sharing the listen port (SO_REUSEPORT), one event loop each,
under a small supervisor that owns the admin endpoint.

- The supervisor reserves the listen address first (bound, not listening, SO_REUSEPORT), so a
  port 0 resolves to one real port that every worker then binds; the kernel spreads new
  connections across the workers' listening sockets.
- Workers are forked before any event loop or thread exists (a restarted one from the running
  supervisor); each first closes every inherited descriptor but 0-2. Each runs the ordinary
  server with its admin listener off, and every METRICS_INTERVAL_S writes its metrics snapshot
  (and its readiness) to a private state directory.
- The supervisor serves /healthz, /readyz (every worker alive, ready, not draining) and /metrics
  (the workers' snapshots summed, plus `egressgate_workers`).
- SIGHUP is forwarded to every worker (each reloads the same file and reports it);
  SIGTERM/SIGINT: readiness fails at once, the workers drain, the supervisor exits after them.
  A worker that dies unexpectedly is restarted (at most once per RESTART_BACKOFF_S).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import resource
import shutil
import signal
import socket
import tempfile
import time
from typing import Any

import uvloop
from prometheus_client import CollectorRegistry

from egressgate.config.model import ListenAddress
from egressgate.net.listen import bind, bound_address
from egressgate.observe.admin import AdminProtocol
from egressgate.observe.events import emit, set_process_fields
from egressgate.observe.metrics import MetricsCollector, merge
from egressgate.runtime.state import Generation

METRICS_INTERVAL_S = 1.0
STALE_AFTER_S = 5.0
RESTART_BACKOFF_S = 1.0
START_TIMEOUT_S = 20.0
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
_FD_SCAN_LIMIT = 1 << 20  # closerange's upper bound when RLIMIT_NOFILE is unlimited


def supervise(generation: Generation, config_path: str | None, count: int) -> int:
    """Run `count` workers and the supervisor; returns the exit status."""
    config = generation.config
    # Every socket is bound before the first fork: a port in use is one clear error and
    # leaves no worker behind.
    reserved = bind(config.listen, reuse_port=True, listen=False)
    try:
        admin = bind(config.admin_listen) if config.admin_listen is not None else None
    except BaseException:
        reserved.close()
        raise
    listen = ListenAddress.parse(bound_address(reserved))
    state_dir = tempfile.mkdtemp(prefix="egressgate-workers-")
    supervisor = _Supervisor(generation, config_path, count, listen, state_dir, admin)
    try:
        for index in range(count):
            supervisor.spawn(index)
        if supervisor.is_worker:
            return 0  # unreachable: a worker exits inside spawn()
        return int(uvloop.run(supervisor.run()))
    finally:
        if not supervisor.is_worker:
            supervisor.kill_all()
            reserved.close()
            if admin is not None:
                admin.close()
            shutil.rmtree(state_dir, ignore_errors=True)


class _Supervisor:
    def __init__(
        self,
        generation: Generation,
        config_path: str | None,
        count: int,
        listen: ListenAddress,
        state_dir: str,
        admin: socket.socket | None,
    ) -> None:
        self.generation = generation
        self.admin = admin
        self.config_path = config_path
        self.count = count
        self.listen = listen
        self.state_dir = state_dir
        self.pids: dict[int, int] = {}  # index → pid
        self.last_start: dict[int, float] = {}
        self.is_worker = False
        self.draining = False

    # ---- workers
    def spawn(self, index: int) -> None:
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:
            self.is_worker = True
            if self.admin is not None:
                self.admin.detach()  # forgotten here; _close_inherited_fds closes the number
            _close_inherited_fds()
            _die_with_parent(parent)
            os._exit(
                _worker_main(self.generation, self.config_path, self.listen, self.state_dir, index)
            )
        self.pids[index] = pid
        self.last_start[index] = time.monotonic()

    def kill_all(self) -> None:
        """Last resort on the way out: no worker may outlive its supervisor."""
        for pid in self.pids.values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for pid in self.pids.values():
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        self.pids.clear()

    def _reap(self) -> None:
        for index, pid in list(self.pids.items()):
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done, status = pid, 0
            if done == 0:
                continue
            del self.pids[index]
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._snapshot_path(index))
            if not self.draining:
                emit(
                    "worker-exited",
                    level="error",
                    worker=index,
                    pid=pid,
                    status=os.waitstatus_to_exitcode(status) if status else 0,
                    action="restarting",
                )
                delay = max(
                    0.0, RESTART_BACKOFF_S - (time.monotonic() - self.last_start.get(index, 0.0))
                )
                asyncio.get_running_loop().call_later(delay, self._restart, index)

    def _poll_children(self) -> None:
        # uvloop reserves SIGCHLD for its own subprocess support: poll instead.
        self._reap()
        asyncio.get_running_loop().call_later(0.2, self._poll_children)

    def _restart(self, index: int) -> None:
        if not self.draining and index not in self.pids:
            self.spawn(index)

    def _snapshot_path(self, index: int) -> str:
        return os.path.join(self.state_dir, f"worker-{index}.json")

    def snapshots(self) -> list[dict[str, Any]]:
        now = time.time()
        found = []
        for index in range(self.count):
            try:
                with open(self._snapshot_path(index), encoding="utf-8") as handle:
                    snap = json.load(handle)
            except (OSError, ValueError):
                continue
            if now - snap.get("written", 0) <= STALE_AFTER_S:
                found.append(snap)
        return found

    def merged(self) -> dict[str, Any]:
        snaps = self.snapshots()
        total = merge(s["metrics"] for s in snaps)
        total["workers"] = len(snaps)
        return total

    def ready(self) -> bool:
        snaps = self.snapshots()
        return not self.draining and len(snaps) == self.count and all(s.get("ready") for s in snaps)

    def status(self) -> dict[str, object]:
        snaps = self.snapshots()
        return {
            "workers": len(snaps),
            "expected_workers": self.count,
            "generations": sorted({s["metrics"]["config_generation"] for s in snaps}),
            "restart_needed": sorted({name for s in snaps for name in s.get("restart_needed", ())}),
            "draining": self.draining,
        }

    # ---- supervisor loop
    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        stopped = asyncio.Event()
        self._poll_children()
        loop.add_signal_handler(signal.SIGHUP, self._forward, signal.SIGHUP)
        loop.add_signal_handler(signal.SIGUSR1, self._forward, signal.SIGUSR1)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop, stopped)
        admin = await self._start_admin()
        await self._wait_started()
        fields: dict[str, Any] = {
            "proxy": str(self.listen),
            "admin": admin,
            "tls_proxy": None,
            "dns": str(dns) if (dns := self.generation.config.dns_listen) else None,  # worker 0
            "config": self.generation.config.source,
            "generation": self.generation.number,
            "sha256": self.generation.sha256,
            "pid": os.getpid(),
            "workers": self.count,
        }
        emit("listening", **fields)
        await stopped.wait()
        deadline = time.monotonic() + self.generation.config.limits.drain_timeout_s + 5
        while self.pids and time.monotonic() < deadline:
            self._reap()
            await asyncio.sleep(0.05)
        killed = len(self.pids)
        self.kill_all()
        emit("stopped", workers_killed=killed)
        return 0

    async def _start_admin(self) -> str | None:
        sock = self.admin
        if sock is None:
            return None
        registry = CollectorRegistry(auto_describe=True)
        registry.register(MetricsCollector(self.merged))

        def factory() -> AdminProtocol:
            return AdminProtocol(registry, self.ready, self.status)

        await asyncio.get_running_loop().create_server(factory, sock=sock)
        return bound_address(sock)

    async def _wait_started(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        # Polls files written by the worker processes: there is no in-process event to await.
        while time.monotonic() < deadline and len(self.snapshots()) < self.count:  # noqa: ASYNC110
            await asyncio.sleep(0.05)

    def _forward(self, signum: int) -> None:
        for pid in self.pids.values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    def _stop(self, stopped: asyncio.Event) -> None:
        if self.draining:
            return
        self.draining = True
        emit("draining", workers=len(self.pids))
        self._forward(signal.SIGTERM)
        stopped.set()


def _close_inherited_fds() -> None:
    """In a new worker: close every descriptor but stdin, stdout and stderr.

    A worker binds its own listener and opens its own log, resolver and event loop; anything
    else it inherited is the supervisor's. A restarted worker is forked from the running
    supervisor and used to inherit its admin listener (uvloop's own copy), its event loop's
    epoll and accepted admin connections. The supervisor's Python objects that wrap those
    numbers are never closed in the worker (it leaves through os._exit), so a number reused
    by the worker cannot be closed under it.
    """
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    top = soft if soft != resource.RLIM_INFINITY else _FD_SCAN_LIMIT
    os.closerange(3, top)  # close_range(2) on Linux: one syscall


def _die_with_parent(parent: int) -> None:
    """Ask Linux to SIGTERM this worker when the supervisor dies (so it drains and exits
    instead of serving on as an orphan), then close the race where it already has."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass  # not Linux: the supervisor's kill_all() remains
    if os.getppid() != parent:
        os._exit(0)


def _worker_main(
    generation: Generation,
    config_path: str | None,
    listen: ListenAddress,
    state_dir: str,
    index: int,
) -> int:
    """Body of one forked worker: the ordinary server on the shared port, admin off."""
    from egressgate.proxy.server import ProxyServer

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD, signal.SIGUSR1):
        signal.signal(sig, signal.SIG_DFL)
    set_process_fields(worker=index)  # every event of this worker says which one it is

    async def main() -> int:
        server = ProxyServer(
            generation,
            config_path,
            reuse_port=True,
            announce=False,
            worker=index,
            listen_override=listen,
        )
        await server.start()
        path = os.path.join(state_dir, f"worker-{index}.json")
        writer = asyncio.get_running_loop().call_soon(_write_snapshot, server, path)
        await server.wait_stopped()
        writer.cancel()
        return 0

    try:
        return int(uvloop.run(main()))
    except BaseException:  # a worker must never fall back into the parent's code
        return 1


def _write_snapshot(server: Any, path: str) -> None:
    data = {
        "written": time.time(),
        "ready": server.state.ready,
        "metrics": server.metrics.snapshot(),
        "restart_needed": server.restart_needed,
        "pid": os.getpid(),
    }
    tmp = path + ".tmp"
    with contextlib.suppress(OSError):
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump(data, handle)
        os.replace(tmp, path)
    if not server.state.draining or server.state.accepting:
        asyncio.get_running_loop().call_later(METRICS_INTERVAL_S, _write_snapshot, server, path)
