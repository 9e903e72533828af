"""Lifecycle of one proxy process: listeners, admin endpoint, signals, reload, drain.

Start: bind every listener (the proxy, the optional TLS proxy, admin), announce them with a
`listening` event on stderr, then watch the config file.

SIGTERM / SIGINT (fits a Kubernetes terminationGracePeriod):
  1. readiness fails at once (/readyz → 503), so the Service stops routing new clients here;
  2. after `limits.shutdown_delay_s` (default 0; set it to the endpoint-propagation delay of
     your cluster) the listeners close: no new connections;
  3. idle keep-alive connections close; requests in flight and open tunnels run on until they
     end or `limits.drain_timeout_s` passes, then the rest are closed; exit 0.
SIGHUP: reload. SIGUSR1: reopen the access log (logrotate).
"""

from __future__ import annotations

import asyncio
import os
import signal
import ssl
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry

from egressgate.config.model import Config, ListenAddress
from egressgate.errors import ConfigError, ConfigIssue, StartupError
from egressgate.net import tasks
from egressgate.net.listen import bind, bound_address, fd_ceiling
from egressgate.net.outbox import Outbox
from egressgate.net.reactor import Reactor
from egressgate.net.resolver import Resolver
from egressgate.observe.accesslog import AccessLog
from egressgate.observe.admin import AdminProtocol
from egressgate.observe.events import emit
from egressgate.observe.metrics import Metrics, MetricsCollector
from egressgate.proxy.acceptor import Acceptor
from egressgate.proxy.context import ProxyContext
from egressgate.proxy.dns_guard import DnsGuard
from egressgate.proxy.failsafe import internal_error
from egressgate.proxy.revoke import revoke
from egressgate.proxy.socks import SocksListener
from egressgate.proxy.tls_listener import TlsAcceptor
from egressgate.proxy.transparent import TransparentListener
from egressgate.proxy.upstream_pool import UpstreamPool
from egressgate.runtime.memory import freeze_long_lived
from egressgate.runtime.reload import Reloader
from egressgate.runtime.state import Generation, State

DRAIN_POLL_S = 0.05
SWEEP_INTERVAL_S = 0.5


class ProxyServer:
    def __init__(
        self,
        generation: Generation,
        config_path: str | None,
        reuse_port: bool = False,
        announce: bool = True,
        worker: int | None = None,
        listen_override: ListenAddress | None = None,
    ) -> None:
        # A worker binds the port its supervisor reserved, and leaves admin to the supervisor.
        self.listen_override = listen_override
        self.announce = announce
        self.worker = worker
        self.state = State(generation)
        self.config_path = config_path
        self.reuse_port = reuse_port
        self.metrics = Metrics()
        self._acceptor: Acceptor | None = None
        self._socks: SocksListener | None = None
        self._tls_acceptor: TlsAcceptor | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        self._admin: asyncio.Server | None = None
        self._stopped: asyncio.Event | None = None
        self._reloader: Reloader | None = None
        self._transparent: TransparentListener | None = None
        self._dns: DnsGuard | None = None
        self.ctx: ProxyContext | None = None
        self.addresses: dict[str, str | None] = {}
        self._note_generation(generation)

    def _note_generation(self, gen: Generation) -> None:
        self.metrics.config_generation = gen.number
        self.metrics.config_hash = gen.sha256
        self.metrics.config_source = gen.config.source

    def _unhandled(self, exc: BaseException, name: str) -> None:
        internal_error(self.metrics, exc, f"task {name}")

    async def start(self) -> None:
        config = self.state.current.config
        self._stopped = asyncio.Event()
        try:
            access_log = self._open_access_log(config)
        except OSError as exc:
            raise StartupError(
                f"access_log {config.access_log}: cannot open for writing: {exc.strerror or exc}"
            ) from exc
        resolver = Resolver(
            config.nameservers,
            config.hosts_file,
            config.limits.dns_timeout_s,
            on_lookup=self.metrics.observe_dns,
        )
        ctx = ProxyContext(
            self.state,
            resolver,
            access_log,
            self.metrics,
            UpstreamPool(config.limits.upstream_idle_s),
            Reactor(asyncio.get_running_loop()),
            Outbox(asyncio.get_running_loop()),
        )
        self.ctx = ctx
        # A background task's exception that no exchange answers for is still counted and
        # reported with its traceback (proxy/failsafe.py), never "never retrieved".
        tasks.unhandled = self._unhandled
        sock = bind(self.listen_override or config.listen, self.reuse_port)
        self._acceptor = Acceptor(ctx, sock)
        self.addresses["proxy"] = bound_address(sock)
        self.addresses["tls_proxy"] = None
        if config.tls_listen is not None:
            await self._start_tls_listener(config, ctx)
        self.addresses["transparent"] = None
        if config.transparent_listen is not None and not self.worker:  # worker 0 or alone
            transparent = bind(config.transparent_listen, self.reuse_port)
            self._transparent = TransparentListener(ctx, transparent)
            self.addresses["transparent"] = bound_address(transparent)
        self.addresses["socks"] = None
        if config.socks_listen is not None:
            socks = bind(config.socks_listen, self.reuse_port)
            self._socks = SocksListener(ctx, socks)
            self.addresses["socks"] = bound_address(socks)
        self.addresses["dns"] = None
        if config.dns_listen is not None and not self.worker:  # one guard: worker 0 or alone
            self._dns = DnsGuard(ctx)
            self.addresses["dns"] = await self._dns.start(config.dns_listen)
        self.addresses["admin"] = None
        if config.admin_listen is not None and self.worker is None:
            await self._start_admin(config)
        self._warn_at_start(config)
        self.state.accepting = True
        self._sweep()
        self._install_signals()
        if self.config_path is not None:
            self._reloader = Reloader(
                self.state,
                self.config_path,
                self._reloaded,
                self._reload_failed,
                prepare=self._prepare_reload,
                on_watcher_error=self._watcher_error,
                report=emit,
            )
            self._reloader.start_watching()
        freeze_long_lived()  # start-up objects: out of the collector's way (runtime/memory.py)
        fields: dict[str, Any] = {
            **self.addresses,
            "config": config.source,
            "generation": self.state.current.number,
            "sha256": self.state.current.sha256,
            "pid": os.getpid(),
        }
        if self.worker is not None:
            fields["worker"] = self.worker
        emit("listening" if self.announce else "worker-listening", **fields)

    def _warn_at_start(self, config: Config) -> None:
        """Say what is weak or cannot hold, once, at start (events on stderr)."""
        weak = self.state.current.credentials.weak_users
        if weak:
            emit(
                "weak-passwords",
                level="warning",
                users=len(weak),
                note="clear-text or unsalted SHA-256 entries in the users file; store bcrypt "
                "or argon2 hashes (egressgate hash-password)",
            )
        ctx = self.ctx
        assert ctx is not None
        limits = config.limits
        if ctx.fd_ceiling < 2 * limits.max_connections:
            # Each tunnel holds two descriptors: the reserve refuses clients before
            # max_connections does (503 too-many-connections either way).
            emit(
                "fd-limit-low",
                level="warning",
                usable_fds=ctx.fd_ceiling,
                reserved_fds=limits.reserved_fds,
                max_connections=limits.max_connections,
                note="RLIMIT_NOFILE is below 2 x max_connections + reserved_fds: clients will "
                "be refused at the descriptor reserve first",
            )

    async def _start_tls_listener(self, config: Config, ctx: ProxyContext) -> None:
        tls = config.tls_listen
        assert tls is not None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(tls.cert_file, tls.key_file)
        if tls.client_ca_file is not None:
            context.load_verify_locations(tls.client_ca_file)
            context.verify_mode = (
                ssl.CERT_REQUIRED if tls.require_client_cert else ssl.CERT_OPTIONAL
            )
        sock = bind(tls.listen, self.reuse_port)
        # Accepted on raw sockets: each connection is counted, bounded and logged from accept,
        # not from the end of its handshake (proxy/tls_listener.py).
        self._tls_acceptor = TlsAcceptor(ctx, sock, context)
        self.addresses["tls_proxy"] = bound_address(sock)

    async def _start_admin(self, config: Config) -> None:
        assert config.admin_listen is not None
        registry = CollectorRegistry(auto_describe=True)
        registry.register(MetricsCollector(self.metrics.snapshot))
        sock = bind(config.admin_listen, self.reuse_port)

        def factory() -> AdminProtocol:
            return AdminProtocol(registry, lambda: self.state.ready, self._status)

        self._admin = await asyncio.get_running_loop().create_server(factory, sock=sock)
        self.addresses["admin"] = bound_address(sock)

    def _sweep(self) -> None:
        """Enforce every connection's deadlines twice a second: one timer for the whole
        process instead of one per request (a TimerHandle per request was visible in the
        plain-HTTP profile)."""
        ctx = self.ctx
        if ctx is None:
            return
        now = time.monotonic()
        for conn in list(ctx.live):
            check = getattr(conn, "check_deadline", None)
            if check is not None:
                check(now)
        for waiting in list(ctx.deadlines):
            waiting.check_deadline(now)
        ctx.pool.expire(now)
        self._sweeper = asyncio.get_running_loop().call_later(SWEEP_INTERVAL_S, self._sweep)

    def _status(self) -> dict[str, object]:
        gen = self.state.current
        return {
            "reason": self.state.not_ready_reason(),
            "config_watcher": self.state.watcher_problem() or "ok",
            "generation": gen.number,
            "sha256": gen.sha256,
            "draining": self.state.draining,
            "connections": self.metrics.active_connections,
            "tunnels": self.metrics.active_tunnels,
            "restart_needed": self.restart_needed,
        }

    @property
    def restart_needed(self) -> list[str]:
        """Settings of the config in force that wait for a restart (listeners, workers)."""
        return self._reloader.restart_needed if self._reloader is not None else []

    def _install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.request_stop, "SIGTERM")
        loop.add_signal_handler(signal.SIGINT, self.request_stop, "SIGINT")
        loop.add_signal_handler(signal.SIGHUP, self.reload, "SIGHUP")
        loop.add_signal_handler(signal.SIGUSR1, self._reopen_logs)

    # ---- reload
    def reload(self, trigger: str = "api") -> None:
        if self._reloader is None:
            emit(
                "reload-skipped",
                level="warning",
                trigger=trigger,
                why="running on the built-in default config: no file to reload",
            )
            return
        emit("reload-requested", trigger=trigger)
        # Compiled in a thread, applied on the loop: a large allowlist never pauses traffic.
        self._reloader.request_reload(trigger)

    # ---- access log
    def _open_access_log(self, config: Config) -> AccessLog:
        """A new AccessLog for `config`; raises OSError if its target cannot be opened."""
        loop = asyncio.get_running_loop()

        def on_error() -> None:  # called from the log's writer thread
            try:
                loop.call_soon_threadsafe(self._access_log_error)
            except RuntimeError:  # the loop is closed: the process is exiting
                pass

        return AccessLog(
            config.access_log,
            on_error,
            max_pending_bytes=config.limits.access_log_buffer_bytes,
            on_drop=self._access_log_dropped,
            on_backlog=self._access_log_backlog,
        )

    def _access_log_dropped(self, records: int) -> None:
        self.metrics.log_dropped += records

    def _access_log_backlog(self, dropping: bool, records: int) -> None:
        if dropping:
            emit(
                "access-log-dropping",
                level="warning",
                why="the access-log writer is limits.access_log_buffer_bytes behind "
                "(a stalled stdout reader or a slow disk); records are dropped and counted "
                "in egressgate_log_dropped_total, traffic is not held up",
            )
        else:
            emit("access-log-recovered", level="warning", dropped_records=records)

    def _prepare_reload(self, old: Generation, new: Generation) -> Callable[[], None]:
        """Open what the new generation needs before anything is replaced (issue 19, item 3:
        the old log used to be closed first, and records went to its reused descriptor)."""
        ctx = self.ctx
        assert ctx is not None
        target = new.config.access_log
        if target == old.config.access_log:
            return lambda: None
        try:
            new_log = self._open_access_log(new.config)
        except OSError as exc:
            raise ConfigError(
                [
                    ConfigIssue(
                        new.config.source,
                        None,
                        None,
                        f"access_log {target}: cannot open for writing: "
                        f"{exc.strerror or exc}; the old access log and policy stay in use",
                    )
                ]
            ) from exc

        def install() -> None:
            previous, ctx.access_log = ctx.access_log, new_log
            previous.close(timeout_s=None)  # its writer finishes, then closes its descriptor
            emit(
                "access-log-switched",
                level="warning",
                old=previous.target,
                new=new_log.target,
                generation=new.number,
            )

        return install

    def _watcher_error(self) -> None:
        self.metrics.reload_watcher_errors += 1

    def _reloaded(self, old: Generation, new: Generation, restart_needed: list[str]) -> None:
        self.metrics.reloads["success"] += 1
        self._note_generation(new)
        freeze_long_lived()  # the old generation can be collected, the new one is exempt
        ctx = self.ctx
        assert ctx is not None
        old_cfg, new_cfg = old.config, new.config
        if (old_cfg.nameservers, old_cfg.hosts_file, old_cfg.limits.dns_timeout_s) != (
            new_cfg.nameservers,
            new_cfg.hosts_file,
            new_cfg.limits.dns_timeout_s,
        ):
            previous = ctx.resolver
            ctx.resolver = Resolver(
                new_cfg.nameservers,
                new_cfg.hosts_file,
                new_cfg.limits.dns_timeout_s,
                on_lookup=self.metrics.observe_dns,
            )
            # Lookups in flight on the old resolver finish within its timeout.
            asyncio.get_running_loop().call_later(old_cfg.limits.dns_timeout_s + 1, previous.close)
        ctx.access_log.max_pending_bytes = new_cfg.limits.access_log_buffer_bytes
        _warn_emptied_allowlists(old, new)
        ctx.limits = new_cfg.limits
        ctx.fd_ceiling = fd_ceiling(new_cfg.limits.reserved_fds)
        ctx.pool.idle_s = new_cfg.limits.upstream_idle_s
        revoked = revoke(ctx, new)
        emit(
            "reloaded",
            generation=new.number,
            sha256=new.sha256,
            restart_needed=restart_needed or None,
            note=(
                "these settings keep their old values until a restart: " + ", ".join(restart_needed)
            )
            if restart_needed
            else None,
        )
        if revoked["tunnel"] or revoked["http"]:
            for kind, count in revoked.items():
                self.metrics.revoked[kind] = self.metrics.revoked.get(kind, 0) + count
            emit(
                "reload-revoked",
                level="warning",
                generation=new.number,
                tunnels=revoked["tunnel"],
                requests=revoked["http"],
                why="the new policy denies their destination (reload_revokes: true)",
            )

    def _reload_failed(self, error: ConfigError) -> None:
        self.metrics.reloads["failure"] += 1
        emit(
            "reload-failed",
            level="error",
            kept_generation=self.state.current.number,
            errors=[str(issue) for issue in error.issues],
        )

    def _reopen_logs(self) -> None:
        if self.ctx is not None:
            try:
                self.ctx.access_log.reopen()
            except OSError as exc:
                emit(
                    "access-log-reopen-failed",
                    level="error",
                    file=self.ctx.access_log.target,
                    reason=exc.strerror or str(exc),
                    note="still writing to the file open before",
                )

    def _access_log_error(self) -> None:
        self.metrics.access_log_errors += 1

    # ---- stop
    def request_stop(self, why: str = "api") -> None:
        if self.state.draining:
            return
        self.state.draining = True
        emit(
            "draining",
            signal=why,
            connections=self.metrics.active_connections,
            tunnels=self.metrics.active_tunnels,
        )
        from egressgate.net.tasks import spawn

        spawn(self._drain(), name="egressgate-drain")

    async def _drain(self) -> None:
        ctx = self.ctx
        assert ctx is not None
        assert self._stopped is not None
        limits = ctx.limits
        if limits.shutdown_delay_s > 0:
            await asyncio.sleep(limits.shutdown_delay_s)
        self.state.accepting = False
        if self._acceptor is not None:
            self._acceptor.close()
        if self._socks is not None:
            self._socks.close()
        if self._tls_acceptor is not None:
            self._tls_acceptor.close()
        if self._transparent is not None:
            self._transparent.close()
        if self._dns is not None:
            self._dns.close()
        if self._reloader is not None:
            self._reloader.stop()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limits.drain_timeout_s
        while loop.time() < deadline:
            for conn in list(ctx.live):
                conn.shutdown_idle()
            for tunnel in list(ctx.tunnels):
                tunnel.shutdown_idle()  # an intercepted tunnel between requests closes now
            if not ctx.live and not ctx.tunnels:
                break
            await asyncio.sleep(DRAIN_POLL_S)
        left = len(ctx.live) + len(ctx.tunnels)
        for item in list(ctx.live) + list(ctx.tunnels):
            item.force_close()
        if self._sweeper is not None:
            self._sweeper.cancel()
        ctx.pool.close_all()
        if self._admin is not None:
            self._admin.close()
        if not ctx.access_log.close(timeout_s=limits.access_log_flush_timeout_s):
            emit(
                "access-log-unflushed",
                level="warning",
                pending_bytes=ctx.access_log.pending_bytes,
                why="the access-log writer did not finish within "
                "limits.access_log_flush_timeout_s (a stalled reader?); exiting without it",
            )
        ctx.resolver.close()
        ctx.reactor.close()
        emit("stopped", forced_closed=left)
        self._stopped.set()

    async def wait_stopped(self) -> None:
        assert self._stopped is not None
        await self._stopped.wait()


def _warn_emptied_allowlists(old: Generation, new: Generation) -> None:
    """Loudly, when a reload leaves a policy that allowed something with nothing allowed
    (an editor's truncated save refused 10,182 requests in seconds, reported at level info)."""
    before = {p.name: len(p.allow) for p in old.config.policies}
    emptied = [p.name for p in new.config.policies if not p.allow and before.get(p.name)]
    if emptied:
        emit(
            "allowlist-emptied",
            level="warning",
            generation=new.number,
            policies=emptied,
            previous_entries={name: before[name] for name in emptied},
            note="these policies now refuse every destination",
        )
