"""The admin listener: GET /healthz, /readyz, /metrics. Never logged in the access log.

/healthz  200 while the process runs its event loop (liveness).
/readyz   200 when listeners accept and a policy is loaded, 503 while draining (readiness).
/metrics  Prometheus text exposition of the standard prometheus_client registry we fill.
Any other path: 404 naming the three. A method other than GET or HEAD: 405 with `Allow`.

A deliberately small HTTP/1.x responder: one request per connection, head size and read time
bounded, so a misbehaving scraper cannot hurt the proxy.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import cast

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

MAX_ADMIN_HEAD = 8192
# The standard reason phrases (RFC 9110 §15); the admin port used to say "405 Not Allowed".
_PHRASES = {
    200: b"OK",
    400: b"Bad Request",
    404: b"Not Found",
    405: b"Method Not Allowed",
    431: b"Request Header Fields Too Large",
    503: b"Service Unavailable",
}
ADMIN_READ_TIMEOUT_S = 5.0


class AdminProtocol(asyncio.Protocol):
    def __init__(
        self,
        registry: CollectorRegistry,
        ready: Callable[[], bool],
        status: Callable[[], dict[str, object]],
    ) -> None:
        self._registry = registry
        self._ready = ready
        self._status = status
        self._buffer = b""
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses; same interface.
        self._transport = cast(asyncio.Transport, transport)
        self._timer = asyncio.get_running_loop().call_later(
            ADMIN_READ_TIMEOUT_S, self._transport.abort
        )

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if b"\r\n\r\n" not in self._buffer and b"\n\n" not in self._buffer:
            if len(self._buffer) > MAX_ADMIN_HEAD:
                self._respond(431, b"text/plain", b"request too large\n")
            return
        line = self._buffer.split(b"\n", 1)[0].strip().split()
        if len(line) < 2:
            self._respond(400, b"text/plain", b"bad request\n")
            return
        method, path = line[0], line[1].split(b"?", 1)[0]
        if method not in (b"GET", b"HEAD"):
            # RFC 9110 §15.5.6: a 405 "MUST generate an Allow header field".
            body = b"method not allowed: the admin endpoints answer GET and HEAD\n"
            self._respond(405, b"text/plain", body, extra=b"Allow: GET, HEAD\r\n")
            return
        self._route(path, method == b"HEAD")

    def _route(self, path: bytes, head_only: bool) -> None:
        if path == b"/healthz":
            self._respond(200, b"text/plain", b"ok\n", head_only)
        elif path == b"/readyz":
            ready = self._ready()
            body = json.dumps({"ready": ready, **self._status()}).encode() + b"\n"
            self._respond(200 if ready else 503, b"application/json", body, head_only)
        elif path == b"/metrics":
            self._respond(
                200, CONTENT_TYPE_LATEST.encode(), generate_latest(self._registry), head_only
            )
        else:
            self._respond(404, b"text/plain", b"not found: try /healthz, /readyz, /metrics\n")

    def _respond(
        self,
        status: int,
        content_type: bytes,
        body: bytes,
        head_only: bool = False,
        extra: bytes = b"",
    ) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        phrase = _PHRASES.get(status, b"Error")
        head = (
            b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n%b"
            b"Cache-Control: no-store\r\nConnection: close\r\n\r\n"
            % (status, phrase, content_type, len(body), extra)
        )
        transport.write(head if head_only else head + body)
        transport.close()
