"""ProxyContext: the long-lived collaborators every connection needs, in one place.

Owned by proxy/server.py; connections hold a reference and read `state.current` once per
request. Also the live-connection registry used for draining and the connection cap.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from egressgate.config.model import Limits
from egressgate.errors import ProxyFailure
from egressgate.names.hostname import IPAddress
from egressgate.net.connect import connect, connect_first
from egressgate.net.listen import fd_ceiling
from egressgate.net.outbox import Outbox
from egressgate.net.reactor import Reactor
from egressgate.net.resolver import Resolver
from egressgate.observe.accesslog import AccessLog
from egressgate.observe.metrics import Metrics
from egressgate.observe.record import AccessRecord
from egressgate.proxy.auth import AuthGate
from egressgate.runtime.state import State

if TYPE_CHECKING:
    from egressgate.proxy.upstream_pool import UpstreamPool


class Closable(Protocol):
    def shutdown_idle(self) -> None: ...

    def force_close(self) -> None: ...


class HasDeadline(Protocol):
    def check_deadline(self, now: float) -> None: ...


class SweptDeadline:
    """One pending deadline per object, checked by the server's sweeper (ctx.deadlines) instead
    of a timer per connection: `_arm` sets it with the action to run, `_disarm` clears it. Mixed
    into the raw-socket front ends (RawTunnel, SocksSession), whose own slots hold the fields."""

    if not TYPE_CHECKING:
        # Empty slots keep the subclasses free of a __dict__; hidden from mypy, which would
        # otherwise refuse assignments to fields this mixin declares but does not own.
        __slots__ = ()
    ctx: ProxyContext
    deadline: float  # monotonic; 0: none
    _on_deadline: Callable[[], object] | None

    def _arm(self, delay_s: float, action: Callable[[], object]) -> None:
        self.deadline = time.monotonic() + delay_s
        self._on_deadline = action
        self.ctx.deadlines.add(self)

    def _disarm(self) -> None:
        if self.deadline:
            self.deadline = 0.0
            self._on_deadline = None
            self.ctx.deadlines.discard(self)

    def check_deadline(self, now: float) -> None:
        action = self._on_deadline
        if self.deadline and now >= self.deadline and action is not None:
            self._disarm()
            action()


class AdmissionResults(Protocol):
    """What the awaited steps below hand their outcome to (proxy/gate.py Admission)."""

    def addresses(self, found: tuple[IPAddress, ...]) -> None: ...

    def resolve_failed(self, error: ProxyFailure) -> None: ...

    def connected(self, address: IPAddress, text: str | None = None) -> None: ...

    def connect_failed(self, error: ProxyFailure, address: IPAddress | None = None) -> None: ...


class ConnectOrder(Protocol):
    """A Connect step (proxy/gate.py): where to connect and how long each try may take."""

    @property
    def addresses(self) -> tuple[IPAddress, ...]: ...

    @property
    def port(self) -> int: ...

    @property
    def attempt_timeout_s(self) -> float: ...

    @property
    def total_timeout_s(self) -> float: ...


# ---- the admission's steps that await, shared by every front end that awaits them (they live
# here, below the front ends, the raw tunnel and admit.py alike: those may not import one another)
async def resolve_into(resolver: Resolver, admission: AdmissionResults, name: str) -> None:
    """Resolve `name` (a NeedAddresses step the cache could not answer) and hand the outcome
    to the admission: every address, or the failure. The front ends' drivers then ask the
    admission for its next step."""
    try:
        resolution = await resolver.resolve(name)
    except ProxyFailure as exc:
        admission.resolve_failed(exc)
    else:
        admission.addresses(resolution.addresses)


async def connect_step(
    ctx: ProxyContext, admission: AdmissionResults, step: ConnectOrder
) -> socket.socket | None:
    """Connect as `step` says (one address: one bounded try; several: net/connect.py's
    staggered strategy); the socket after connected(), or None after connect_failed() (a
    Refuse next)."""
    try:
        if len(step.addresses) == 1:
            address = step.addresses[0]
            sock = await connect(address, step.port, step.attempt_timeout_s)
        else:
            sock, address = await connect_first(
                step.addresses,
                step.port,
                step.attempt_timeout_s,
                step.total_timeout_s,
                ctx.metrics.count_upstream_failure,
            )
    except ProxyFailure as exc:
        if len(step.addresses) == 1:
            ctx.metrics.count_upstream_failure(exc)
        admission.connect_failed(exc)
        return None
    admission.connected(address)
    return sock


class ProxyContext:
    __slots__ = (
        "access_log",
        "auth",
        "deadlines",
        "fd_ceiling",
        "limits",
        "live",
        "metrics",
        "outbox",
        "pool",
        "reactor",
        "resolver",
        "state",
        "tunnels",
    )

    def __init__(
        self,
        state: State,
        resolver: Resolver,
        access_log: AccessLog,
        metrics: Metrics,
        pool: UpstreamPool[Any],
        reactor: Reactor,
        outbox: Outbox,
    ) -> None:
        self.state = state
        self.resolver = resolver
        self.access_log = access_log
        self.metrics = metrics
        self.pool = pool
        self.reactor = reactor  # raw sockets of the plain listener's tunnels (net/reactor.py)
        # What wakes other processes, done at the end of the loop iteration (net/outbox.py).
        self.outbox = outbox
        self.limits: Limits = state.current.config.limits
        # Proxy-auth verification off the loop and the per-client failure back-off.
        self.auth = AuthGate(metrics)
        # A new client socket numbered at or above this is refused: the descriptors above it
        # are the reserve (net/listen.py fd_ceiling; recomputed on reload).
        self.fd_ceiling = fd_ceiling(self.limits.reserved_fds)
        self.live: set[Closable] = set()
        self.tunnels: set[Closable] = set()
        # Raw-path tunnels waiting on a connect or a ClientHello: the server's sweeper checks
        # their deadlines (a set add/discard instead of a loop timer per phase per tunnel).
        self.deadlines: set[HasDeadline] = set()

    def leave_live(self, conn: Closable) -> None:
        """`conn` is no longer a live connection of its own (handed on, or closed); idempotent."""
        if conn in self.live:
            self.live.discard(conn)
            self.metrics.active_connections -= 1

    def finish(self, record: AccessRecord) -> None:
        """Log and count one finished request or tunnel (its duration is measured here)."""
        record.duration_ms = (time.time() - record.start) * 1000.0
        self.metrics.count_request(
            record.kind,
            record.decision,
            record.reason,
            record.policy or "-",
            record.bytes_up,
            record.bytes_down,
        )
        self.access_log.write(record)
