"""Revocation on reload (issue 12 item 8): a reload that denies a destination also ends what is
still open to it, when `reload_revokes` is true (the default).

After a new generation is in force, every open CONNECT or SOCKS5 tunnel (`ctx.tunnels`) and every
plain-HTTP request still being relayed on a client connection (`ctx.live`) is decided again
against the new generation: the name-level decision for its client and destination, then the
address it is connected to. A denied one is closed through its existing force-close path, and
its access record (written once, as always, when it ends) gets a `detail` saying
"revoked by reload generation N" and why. Everything the new policy still allows is untouched.

What is not revoked, and why:
- an idle kept-alive client connection carries no destination (the proxy is a forward proxy:
  each request names its own) and its next request is decided against the new generation;
- idle pooled upstream connections are keyed by vetted address, and one is handed out only to
  a request that passed the new generation's decision and vetting;
- report mode never revokes (it never refuses).
"""

from __future__ import annotations

import ipaddress
from dataclasses import replace
from typing import Protocol

from egressgate.errors import ProxyFailure
from egressgate.observe.record import AccessRecord
from egressgate.policy.decision import ClientIdentity, Target
from egressgate.proxy import gate
from egressgate.proxy.context import ProxyContext
from egressgate.proxy.gate import Admission, NeedAddresses, Refuse
from egressgate.runtime.state import Generation


class _Revocable(Protocol):
    record: AccessRecord

    def force_close(self) -> None: ...


def revoke(ctx: ProxyContext, gen: Generation) -> dict[str, int]:
    """Close what `gen` denies; how many of each kind ("tunnel", "http") were closed."""
    closed = {"tunnel": 0, "http": 0}
    if not gen.config.reload_revokes:
        return closed
    for tunnel in list(ctx.tunnels):
        identity = getattr(tunnel, "identity", None)
        destination = getattr(tunnel, "destination", None)
        if destination is None:  # a SOCKS5 session: its Admission holds the target
            destination = getattr(getattr(tunnel, "admission", None), "target", None)
        record = getattr(tunnel, "record", None)
        if not isinstance(identity, ClientIdentity) or not isinstance(destination, Target):
            continue  # a tunnel without its decision inputs (an upgrade relay): left alone
        if record is None or getattr(tunnel, "done", False):
            continue
        # The admission's facts (a tunnel's record is concluded only when it ends).
        admission = getattr(tunnel, "admission", None)
        user = getattr(admission, "user", None) or record.user
        address = getattr(admission, "address", None) or record.address
        if user is not None:
            identity = replace(identity, user=user)
        refusal = denied(gen, identity, destination, address)
        if refusal is not None:
            _close(tunnel, gen, refusal)
            closed["tunnel"] += 1
    for conn in list(ctx.live):
        exchange = getattr(conn, "exchange", None)
        identity = getattr(conn, "identity", None)
        if exchange is None or not isinstance(identity, ClientIdentity):
            continue
        record = getattr(exchange, "record", None)
        if not isinstance(record, AccessRecord) or getattr(exchange, "done", True):
            continue
        destination = _http_destination(record)
        if destination is None or record.address is None:
            continue  # not yet connected: it was decided by the generation it started under
        if record.user is not None:
            identity = replace(identity, user=record.user)
        refusal = denied(gen, identity, destination, record.address)
        if refusal is not None:
            _close(conn, gen, refusal, record)
            closed["http"] += 1
    return closed


def denied(
    gen: Generation, identity: ClientIdentity, destination: Target, address: str | None
) -> ProxyFailure | None:
    """Why `gen` refuses this client → destination (at `address`, when known), or None: the
    admission story (proxy/gate.py) told again under `gen`, with `address` as the only address
    the name has (no I/O)."""
    admission = Admission(gen, identity, destination)  # the identity carries the user
    step = admission.next()
    if isinstance(step, NeedAddresses):
        if address is None:
            return None  # not connected yet: nothing to vet
        try:
            admission.addresses((ipaddress.ip_address(address),))
        except ValueError:
            return None  # not an address (never written so): nothing to vet
        step = admission.next()
    return step.failure if isinstance(step, Refuse) else None


def _http_destination(record: AccessRecord) -> Target | None:
    if record.host is None or record.port is None:
        return None
    try:
        return Target(gate.normalize_target_host(record.host), record.port, connect=False)
    except ProxyFailure:
        return None


def _close(
    item: _Revocable | object,
    gen: Generation,
    refusal: ProxyFailure,
    record: AccessRecord | None = None,
) -> None:
    record = record if record is not None else getattr(item, "record", None)
    if record is not None:
        why = refusal.reason.value + (f": {refusal.detail}" if refusal.detail else "")
        record.detail = f"revoked by reload generation {gen.number} ({why})"
    force_close = getattr(item, "force_close", None)
    if force_close is not None:
        force_close()
