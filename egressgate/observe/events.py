"""Process events (start, listening, reload, drain, errors) as JSON lines on stderr.

Not the access log: these are the proxy's own operational messages, one JSON object per line,
so that log collectors can parse them and tests can wait for `"event": "listening"`. The
timestamp has milliseconds, like the access log's, so the two interleave in order. A worker
process (`workers > 1`) sets `worker` once at start with `set_process_fields`, and every event
it writes carries it.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

# Fields every event of this process carries (a worker's index); set once, at process start.
_PROCESS_FIELDS: dict[str, Any] = {}


def set_process_fields(**fields: Any) -> None:
    """Add `fields` to every later event of this process (e.g. `worker=2`)."""
    _PROCESS_FIELDS.update(fields)


def timestamp(now_s: float) -> str:
    """RFC 3339 UTC with milliseconds: `2026-11-22T21:35:53.972Z` (the access log's format)."""
    whole_s = int(now_s)
    millis = min(int((now_s - whole_s) * 1000), 999)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole_s)) + f".{millis:03d}Z"


def emit(event: str, *, level: str = "info", **fields: Any) -> None:
    """Write one event line to stderr (never raises)."""
    record = {
        "ts": timestamp(time.time()),
        "level": level,
        "event": event,
        **_PROCESS_FIELDS,
        **fields,
    }
    try:
        sys.stderr.write(json.dumps(record, default=str) + "\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
