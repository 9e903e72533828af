"""The admission's I/O, awaited: the driver for front ends that may simply await.

`open_upstream(ctx, admission)` follows the admission's steps (proxy/gate.py): it resolves
(the resolver's cache first), connects with net/connect.py's strategy, and returns the
connected socket at Open, or None at Refuse (then `admission.next()` is the Refuse step to
render). The TLS listener's CONNECT uses it; SOCKS5 and transparent listeners can too. The
plain listener's CONNECT and plain-HTTP paths drive the same steps from callbacks instead, so
that a cached name never costs a coroutine.
"""

from __future__ import annotations

import socket

from egressgate.errors import ProxyFailure
from egressgate.net.connect import connect, connect_first
from egressgate.proxy.context import ProxyContext, resolve_into
from egressgate.proxy.gate import Admission, Connect, NeedAddresses, Open


async def open_upstream(ctx: ProxyContext, admission: Admission) -> socket.socket | None:
    """The connected upstream socket once the admission opens; None if it refuses."""
    while True:
        step = admission.next()
        if isinstance(step, NeedAddresses):
            await _resolve(ctx, admission, step)
        elif isinstance(step, Connect):
            sock = await connect_step(ctx, admission, step)
            if sock is not None:
                return sock
        elif isinstance(step, Open):
            raise AssertionError("Open is reached through connected() only")
        else:
            return None


async def _resolve(ctx: ProxyContext, admission: Admission, step: NeedAddresses) -> None:
    found = ctx.resolver.cached(step.name)
    if found is not None:
        admission.addresses(found)
        return
    await resolve_into(ctx.resolver, admission, step.name)


async def connect_step(
    ctx: ProxyContext, admission: Admission, step: Connect
) -> socket.socket | None:
    """Connect as `step` says; the socket, or None after connect_failed() (a Refuse next)."""
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
