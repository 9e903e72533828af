"""AccessRecord: the one canonical fact per request or tunnel, and the access-log field names.

Built once when a request or tunnel ends; the access log line and the metrics both come from it.
Field names are constants here and nowhere else (docs/operations.md lists them).
"""

from __future__ import annotations

from dataclasses import dataclass

# Access-log JSON field names, in the order they are written.
FIELDS = (
    "ts",
    "client",
    "user",
    "policy",
    "method",
    "host",
    "port",
    "address",
    "decision",
    "reason",
    "rule",
    "status",
    "bytes_up",
    "bytes_down",
    "duration_ms",
    "kind",
    "sni",
    "detail",
    "original_dst",
    "path",
)


@dataclass(slots=True)
class AccessRecord:
    """One request (kind "http") or tunnel (kind "tunnel"); mutable while it is being built."""

    start: float  # time.time() at the start
    client: str
    method: str
    kind: str
    host: str | None = None
    port: int | None = None
    user: str | None = None
    policy: str | None = None
    address: str | None = None
    decision: str = "deny"  # allow | deny | report | error
    reason: str = "allowed"
    rule: str | None = None
    status: int = 0
    bytes_up: int = 0  # client → upstream (body or tunnel bytes)
    bytes_down: int = 0  # upstream → client
    duration_ms: float = 0.0
    sni: str | None = None
    detail: str | None = None
    # Transparent listener: where the kernel's redirect said the client was going (evidence
    # only: the proxy connects to the address it vetted for the SNI/Host, never to this).
    original_dst: str | None = None
    # TLS interception (kind "intercept"): the normalized request path the rules judged (the
    # query is never logged: it may carry tokens).
    path: str | None = None
