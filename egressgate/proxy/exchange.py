"""The named interface between a client connection and the exchanges it runs.

Data flows one way: proxy/connection.py creates an exchange per request and feeds it events
(`Exchange`); the exchange answers through the small `ClientSide` it is given, never through
the connection's internals. Front ends (forward.py, tunnel.py) import this module, never
connection.py, and never each other.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Protocol

from egressgate.net.outbox import Output
from egressgate.observe.record import AccessRecord
from egressgate.policy.decision import ClientIdentity

if TYPE_CHECKING:
    from egressgate.proxy.context import ProxyContext


class ClientSide(Protocol):
    """What an exchange may use of the client connection that runs it."""

    ctx: ProxyContext
    identity: ClientIdentity | None
    client_text: str
    output: Output  # every byte for the client, in order (net/outbox.py)
    transport: asyncio.Transport | None  # for flow control and the hand-over to a relay

    def new_record(self, method: str, kind: str) -> AccessRecord:
        """A fresh access record for a request of this client."""
        ...

    def refuse(self, response: bytes, record: AccessRecord) -> None:
        """Write `response` (a refusal), log `record` (concluded), close the connection."""
        ...

    def finish(self, record: AccessRecord) -> None:
        """Log and count `record` (concluded): the exchange is over, the connection lives on."""
        ...

    def exchange_done(self, keep_alive: bool) -> None:
        """The current exchange has sent its whole response."""
        ...

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...

    def detach_for_tunnel(self) -> None:
        """The socket now belongs to a relay: flush what is queued, stop tracking it."""
        ...

    def force_close(self) -> None:
        """Reset the connection (aborts the exchange through `client_lost`)."""
        ...


class Exchange(Protocol):
    """What the client connection calls on its current exchange. Explicit subclasses inherit
    the defaults below (an exchange that has no request body ignores body events)."""

    def start(self) -> None:
        """The request head is complete: run the admission and begin."""
        ...

    def request_body(self, data: bytes) -> None:
        """A piece of request body (or, for a CONNECT in the TLS listener, early tunnel bytes)."""
        ...

    def request_end(self) -> None:
        """The request body is complete."""
        return None

    def tunnel_start(self, rest: bytes) -> None:
        """The parser is done: `rest` and later bytes belong to a tunnel or a new protocol."""
        ...

    def client_eof(self) -> None:
        """The client half-closed while the request was still open."""
        return None

    def client_lost(self) -> None:
        """The client connection is gone: end the exchange and log it."""
        ...

    def client_write_paused(self) -> None:
        """The client's write buffer is full: stop reading what feeds it."""
        return None

    def client_write_resumed(self) -> None:
        return None

    def check_deadline(self, now: float) -> None:
        """The sweeper's tick (about twice a second): enforce the exchange's own timeouts."""
        return None

    def internal_error(self, exc: BaseException) -> None:
        """An unexpected exception in this exchange's work (see proxy/failsafe.py)."""
        ...
