"""The admission's I/O, awaited: the driver for front ends that may simply await.

`open_upstream(ctx, admission)` follows the admission's steps (proxy/gate.py): it resolves
(the resolver's cache first) and connects with the awaited steps every front end shares
(proxy/context.py `resolve_into`, `connect_step`: net/connect.py's strategy), and returns the
connected socket at Open, or None at Refuse (then `admission.next()` is the Refuse step to
render). The TLS listener's CONNECT uses it; SOCKS5 and transparent listeners can too. The
plain listener's CONNECT and plain-HTTP paths drive the same steps from callbacks instead, so
that a cached name never costs a coroutine.
"""

from __future__ import annotations

import socket

from egressgate.proxy.context import ProxyContext, connect_step, resolve_into
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
