"""Run the real proxy with one injected fault: `python -m tests.support.faulty FAULT run ...`.

Test-only: nothing in egressgate knows about it. It replaces one function of the proxy with one
that raises RuntimeError (a stand-in for any bug) when the destination's name starts with
`boom`, then runs the ordinary CLI. Faults:

- `resolve`:   the resolver's lookup (in a spawned task: NeedAddresses on a cache miss)
- `pool`:      the upstream pool lookup (in the client's data_received callback)
- `connect`:   the raw tunnel's socket creation (in a deferred outbox action)
- `hello`:     the ClientHello reader (after the tunnel's "200": in a reactor handler)
- `socks`:     the SOCKS5 request parser (in the handshake's reactor handler)
"""

from __future__ import annotations

import sys
from typing import Any

from egressgate.cli.main import main
from egressgate.net import resolver
from egressgate.proxy import gate, raw_tunnel, upstream_pool
from egressgate.socks import protocol


def _fail(what: str) -> RuntimeError:
    return RuntimeError(f"injected fault in {what}")


def _inject(fault: str) -> None:
    if fault == "resolve":
        original_resolve = resolver.Resolver.resolve

        async def resolve(self: resolver.Resolver, name: str) -> Any:
            if name.startswith("boom"):
                raise _fail("resolve")
            return await original_resolve(self, name)

        resolver.Resolver.resolve = resolve  # type: ignore[method-assign]
    elif fault == "pool":
        original_get = upstream_pool.UpstreamPool.get
        faulty_port = int(sys.argv[2])

        def get(self: Any, addresses: Any, port: int) -> Any:
            if port == faulty_port:
                raise _fail("pool")
            return original_get(self, addresses, port)

        upstream_pool.UpstreamPool.get = get  # type: ignore[method-assign]
    elif fault == "connect":

        def stream(v6: bool) -> Any:
            raise _fail("connect")

        raw_tunnel.nonblocking_stream = stream  # type: ignore[attr-defined]
    elif fault == "hello":

        def read_sni(data: bytes) -> Any:
            raise _fail("hello")

        gate.read_sni = read_sni  # type: ignore[attr-defined]
    elif fault == "socks":
        parser = protocol.SocksParser
        original_request, original_feed = parser.quick_request, parser.feed

        def quick_request(self: Any, data: bytes) -> Any:
            if b"boom" in data:
                raise _fail("socks")
            return original_request(self, data)

        def feed(self: Any, data: bytes) -> Any:
            if b"boom" in data:
                raise _fail("socks")
            return original_feed(self, data)

        parser.quick_request = quick_request  # type: ignore[method-assign]
        parser.feed = feed  # type: ignore[method-assign]
    else:
        raise SystemExit(f"unknown fault {fault!r}")


if __name__ == "__main__":
    fault = sys.argv[1]
    args = sys.argv[2:]
    if fault == "pool":
        args = sys.argv[3:]  # FAULT PORT run ...
    _inject(fault)
    sys.argv = [sys.argv[0], *args]
    sys.exit(main())
