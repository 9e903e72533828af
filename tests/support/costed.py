"""Run the real proxy while counting what it does: `python -m tests.support.costed OUT run ...`.

Test-only: nothing in egressgate knows about it. A profile hook (sys.setprofile, the main thread:
the event loop's) counts, from start to each snapshot:

- `python_calls`: Python function calls, and `calls_in` per module file name (`ipaddress.py`,
  `enum.py`, ...);
- `socket_calls`: calls of each socket method (`send`, `recv`, `getsockname`, ...): one syscall
  each on the raw paths;
- `loop_callbacks`: the event-loop callbacks of the raw paths (a listener's accept, a readiness
  batch of the private epoll, an end-of-iteration outbox flush);
- `socks_nodelay`: TCP_NODELAY on the SOCKS5 listening socket (accepted sockets inherit it).

SIGUSR2 writes a snapshot to OUT (JSON, atomically, `seq` counting the snapshots). Counts, not
timings: a test compares what one kind of tunnel costs against another in the same process.
"""

from __future__ import annotations

import _socket
import json
import os
import signal
import socket
import sys
from collections import Counter
from types import FrameType
from typing import Any

from egressgate.cli.main import main

# (file name, function name) of the loop callbacks on the raw paths (only the loop calls them;
# a read deferred with call_soon after a flood of bytes is not among them: none here).
LOOP_CALLBACKS = {
    ("reactor.py", "_dispatch"),
    ("outbox.py", "flush"),
    ("acceptor.py", "_accept"),
    ("socks.py", "_accept"),
}

calls_in: Counter[str] = Counter()
socket_calls: Counter[str] = Counter()
callbacks: Counter[str] = Counter()
_names: dict[object, str] = {}  # code object → its file's base name
listeners: list[socket.socket] = []  # the SOCKS5 listening socket, seen at its first accept
snapshots = 0


def _hook(frame: FrameType, event: str, arg: Any) -> None:
    if event == "call":
        code = frame.f_code
        name = _names.get(code)
        if name is None:
            name = _names[code] = os.path.basename(code.co_filename)
        calls_in[name] += 1
        if (name, code.co_name) in LOOP_CALLBACKS:
            callbacks[f"{name}:{code.co_name}"] += 1
            if name == "socks.py" and code.co_name == "_accept" and not listeners:
                listeners.append(frame.f_locals["self"].listener)
    elif event == "c_call" and isinstance(getattr(arg, "__self__", None), _socket.socket):
        socket_calls[arg.__name__] += 1


def _nodelay() -> int | None:
    if not listeners:
        return None
    return int(listeners[0].getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))


def _snapshot(out: str) -> None:
    global snapshots
    sys.setprofile(None)  # the snapshot itself is not counted
    try:
        snapshots += 1
        data = {
            "seq": snapshots,
            "python_calls": sum(calls_in.values()),
            "calls_in": dict(calls_in),
            "socket_calls": dict(socket_calls),
            "loop_callbacks": sum(callbacks.values()),
            "callbacks": dict(callbacks),
            "socks_nodelay": _nodelay(),
        }
        tmp = out + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f)
        os.replace(tmp, out)
    finally:
        sys.setprofile(_hook)


if __name__ == "__main__":
    out_path = sys.argv[1]
    signal.signal(signal.SIGUSR2, lambda signum, frame: _snapshot(out_path))
    sys.argv = [sys.argv[0], *sys.argv[2:]]
    sys.setprofile(_hook)
    sys.exit(main())
