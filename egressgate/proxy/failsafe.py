"""The invariant's last line: an unexpected exception in a connection's work is answered.

Every accepted connection ends with exactly one access-log record per request or tunnel, and
every request whose head was read gets a response. Expected failures are ProxyFailure values
and follow the admission story (proxy/gate.py). Anything else — a bug — is caught where the
work enters our code (protocol callbacks, reactor handlers, deferred actions, spawned tasks:
net/tasks.py reports a task's exception here instead of asyncio's "Task exception was never
retrieved") and becomes, through `internal_error`:

- `502 upstream-error` to the client, or a TLS internal_error alert for a tunnel past its 200
  (the exchange's own `internal_error` writes it and ends its record);
- the access-log record, with `detail` naming the exception;
- the counter `egressgate_internal_errors_total`;
- one `internal-error` event on stderr with the traceback.

The catching costs nothing on the way through (a `try` in Python 3.11 is free until it raises).
"""

from __future__ import annotations

import traceback

from egressgate.errors import Reason, UpstreamError
from egressgate.observe.events import emit
from egressgate.observe.metrics import Metrics


def internal_error(metrics: Metrics, exc: BaseException, where: str) -> UpstreamError:
    """Count and report `exc` (one stderr event with the traceback); the failure to answer
    the client with."""
    metrics.internal_errors += 1
    emit(
        "internal-error",
        level="error",
        where=where,
        error=f"{type(exc).__name__}: {exc}",
        traceback="".join(traceback.format_exception(exc)),
    )
    return UpstreamError(
        Reason.UPSTREAM_ERROR,
        f"internal error in {where}: {type(exc).__name__}: {exc} (see the proxy's stderr)",
    )
