"""Process events (start, listening, reload, drain, errors) as JSON lines on stderr.

Not the access log: these are the proxy's own operational messages, one JSON object per line,
so that log collectors can parse them and tests can wait for `"event": "listening"`.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any


def emit(event: str, *, level: str = "info", **fields: Any) -> None:
    """Write one event line to stderr (never raises)."""
    record = {
        "ts": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "level": level,
        "event": event,
        **fields,
    }
    try:
        sys.stderr.write(json.dumps(record, default=str) + "\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
