"""The events the sans-IO HTTP/1.x parsers produce: immutable slotted values (`@immutable`,
egressgate/values.py).

Body data is delivered as plain `bytes` objects and the end of a message as the END singleton,
to keep the per-chunk path free of wrapper allocations.
"""

from __future__ import annotations

from egressgate.values import immutable

# (lowercased name, name as sent, value as sent)
Header = tuple[bytes, bytes, bytes]


@immutable
class RequestHead:
    method: bytes
    target: bytes
    version: str  # "1.0" | "1.1"
    headers: list[Header]
    keep_alive: bool
    head_bytes: int  # size of the request line + header block, for logs and limits


@immutable
class ResponseHead:
    status: int
    reason: bytes
    version: str
    headers: list[Header]
    keep_alive: bool
    chunked: bool
    content_length: int | None


@immutable
class TunnelStart:
    """CONNECT or Upgrade: the HTTP part is over; `rest` are the bytes that followed the head."""

    rest: bytes


class _End:
    __slots__ = ()

    def __repr__(self) -> str:
        return "END"


END = _End()

Event = RequestHead | ResponseHead | TunnelStart | bytes | _End
