"""The gate every request and tunnel passes: decide → resolve → vet → connect.

Policy is consulted twice, both times from here: on the name before DNS, and on every resolved
address after it. We then connect only to an address that passed, and never resolve again
(DNS rebinding cannot swap the address between check and use). `net/` never sees policy.

The synchronous pieces (`decide`, `known_addresses`, `vet`) let the plain-HTTP path finish
without a coroutine when the answer is cached and an upstream connection is pooled.
"""

from __future__ import annotations

import socket

from egressgate.errors import Reason, Refused, UpstreamError
from egressgate.names.hostname import Host, InvalidHost, IPAddress, normalize_host
from egressgate.net.connect import connect
from egressgate.observe.record import AccessRecord
from egressgate.policy.clients import NeedsAuthentication
from egressgate.policy.decision import ClientIdentity, Decision, Target, Verdict
from egressgate.proxy.context import ProxyContext
from egressgate.runtime.state import Generation

_HOST_CACHE: dict[str, Host] = {}
_HOST_CACHE_MAX = 4096


def normalize_target_host(raw: str) -> Host:
    """The destination in canonical form; an invalid host is a policy refusal, not an error.

    Memoized (bounded): normalization is pure, and clients ask for the same hosts over and over.
    """
    host = _HOST_CACHE.get(raw)
    if host is not None:
        return host
    try:
        host = normalize_host(raw)
    except InvalidHost as exc:
        raise Refused(Reason.HOST_NOT_ALLOWED, str(exc)) from None
    if len(_HOST_CACHE) >= _HOST_CACHE_MAX:
        _HOST_CACHE.clear()
    _HOST_CACHE[raw] = host
    return host


def decide(
    gen: Generation, client: ClientIdentity, target: Target, record: AccessRecord
) -> Decision:
    """Name-level decision; records it; raises Refused unless allowed (or reported)."""
    try:
        policy = gen.policies.policy_for(client)
    except NeedsAuthentication:
        raise Refused(Reason.AUTH_REQUIRED, "this proxy needs a user name and password") from None
    decision = policy.decide(target)
    _record(record, decision)
    if decision.verdict is Verdict.DENY:
        raise Refused(decision.reason, decision.detail)
    return decision


def _record(record: AccessRecord, decision: Decision) -> None:
    record.policy = decision.policy
    record.rule = decision.rule
    record.decision = decision.verdict.value
    record.reason = decision.reason.value
    if decision.verdict is Verdict.REPORT:
        record.detail = decision.detail


def known_addresses(ctx: ProxyContext, target: Target) -> tuple[IPAddress, ...] | None:
    """Addresses available without waiting: an IP literal, the hosts file, or the DNS cache."""
    if target.host.address is not None:
        return (target.host.address,)
    assert target.host.name is not None
    return ctx.resolver.cached(target.host.name)


async def addresses(ctx: ProxyContext, target: Target) -> tuple[IPAddress, ...]:
    """All addresses of the target (raises ResolveError); DNS latency goes to the metrics."""
    found = known_addresses(ctx, target)
    if found is not None:
        return found
    assert target.host.name is not None
    resolution = await ctx.resolver.resolve(target.host.name)
    return resolution.addresses


def vet(
    gen: Generation, decision: Decision, found: tuple[IPAddress, ...], record: AccessRecord
) -> tuple[IPAddress, ...]:
    """Address-level check; raises Refused(PRIVATE_ADDRESS) naming the offending address
    (in the refusal's detail and in the record's `address`: the address that was refused)."""
    result = gen.policies.vet(decision, found)
    if result.refusal is not None:
        _record(record, result.refusal)
        record.address = str(result.refused_address)
        raise Refused(result.refusal.reason, result.refusal.detail)
    return result.addresses


async def connect_any(
    ctx: ProxyContext, found: tuple[IPAddress, ...], port: int, record: AccessRecord
) -> tuple[socket.socket, IPAddress]:
    """Connect to the first vetted address that answers (in resolver order: IPv4 first)."""
    last: UpstreamError | None = None
    for address in found:
        try:
            sock = await connect(address, port, ctx.limits.connect_timeout_s)
        except UpstreamError as exc:
            ctx.metrics.count_upstream_error(exc.reason.value)
            last = exc
            continue
        record.address = str(address)
        return sock, address
    assert last is not None
    record.address = str(found[0]) if found else None
    raise last


async def admit(
    ctx: ProxyContext, gen: Generation, client: ClientIdentity, target: Target, record: AccessRecord
) -> tuple[socket.socket, IPAddress]:
    """The whole gate for one destination: a connected socket, or an exception to refuse with."""
    decision = decide(gen, client, target, record)
    found = await addresses(ctx, target)
    vetted = vet(gen, decision, found, record)
    return await connect_any(ctx, vetted, target.port, record)
