"""Shared helpers of the chaos suite: what every case asserts (the client-visible result, the
access-log record and the metric) and the leak check (open descriptors of the proxy process).

Every case drives the real proxy (tests/support/proxy.py) with real clients, real origins and a
real DNS server on loopback; faults are made by real sockets (a silent origin, a reset, a full
accept queue, a closed port), never by mocks.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from tests.integration.helpers_ops import Scrape, scrape, wait_until
from tests.support.proxy import ProxyProcess

REQUESTS = "egressgate_requests_total"
UPSTREAM_ERRORS = "egressgate_upstream_errors_total"


POOLED_PIPE_FDS = 2 * 16
"""The tunnel relay keeps up to 16 spliced pipes (2 descriptors each) for reuse
(egressgate/net/relay.py MAX_POOLED_PIPES): not a leak."""


def fd_count(pid: int) -> int:
    """How many descriptors process `pid` holds open, pipes left out (see `pipe_count`)."""
    return sum(1 for target in fd_targets(pid) if ":pipe:" not in target)


def pipe_count(pid: int) -> int:
    return sum(1 for target in fd_targets(pid) if ":pipe:" in target)


def fd_targets(pid: int) -> list[str]:
    """What each descriptor of `pid` points at (for failure messages)."""
    targets = []
    for fd in sorted(os.listdir(f"/proc/{pid}/fd"), key=int):
        try:
            targets.append(f"{fd}:{os.readlink(f'/proc/{pid}/fd/{fd}')}")
        except OSError:
            continue
    return targets


def wait_fds_back(pid: int, baseline: int, timeout: float = 5.0, slack: int = 0) -> int:
    """Wait (bounded) until `pid` holds at most `baseline + slack` descriptors; the count."""
    counts: list[int] = []

    def settled() -> bool:
        counts.append(fd_count(pid))
        return counts[-1] <= baseline + slack

    # its own pipes (stdio, loop wake-ups, log writer: 6 today, 10 allowed) and the relay pool
    assert pipe_count(pid) <= 10 + POOLED_PIPE_FDS, fd_targets(pid)
    try:
        wait_until(settled, timeout, f"fds of {pid} back to {baseline}", interval=0.05)
    except AssertionError:
        raise AssertionError(
            f"descriptors leaked: {baseline} before, {counts[-1]} after: {fd_targets(pid)}"
        ) from None
    return counts[-1]


def wait_metric(
    proxy: ProxyProcess, name: str, at_least: float, timeout: float = 5.0, **labels: str
) -> Scrape:
    """Scrape until `name{labels}` sums to at least `at_least` (bumped as work finishes)."""
    last: list[Scrape] = []

    def check() -> bool:
        last[:] = [scrape(proxy)]
        return last[0].value(name, **labels) >= at_least

    try:
        wait_until(check, timeout, f"{name}{labels} >= {at_least}", interval=0.05)
    except AssertionError:
        got = last[0].matching(name) if last else "no scrape"
        raise AssertionError(f"{name}{labels} never reached {at_least}: {got}") from None
    return last[0]


def no_tracebacks(proxy: ProxyProcess) -> None:
    """The proxy wrote no traceback and no 'never retrieved' to stderr."""
    bad = [
        line
        for line in proxy.stderr_lines
        if "Traceback" in line or "never retrieved" in line or "Unhandled" in line
    ]
    assert not bad, "\n".join(bad[:20])


class ScriptedOrigin:
    """A loopback TCP server whose every connection is handled by `script(sock)` in a thread
    (for faults the recording origins do not make: reset mid-body, an endless body or head).
    Records how many connections it saw and how many of them the peer has closed."""

    def __init__(self, script: Callable[[socket.socket], None], host: str = "127.0.0.1") -> None:
        self.script = script
        self.listener = socket.create_server((host, 0))
        self.host = host
        self.port: int = self.listener.getsockname()[1]
        self.accepted = 0
        self.finished = 0
        self._lock = threading.Lock()
        self._socks: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True, name="scripted-origin")
        self._thread.start()

    def _accept(self) -> None:
        self.listener.settimeout(0.1)
        for _ in range(100_000):  # bounded: 0.1 s per turn
            if self._stop.is_set():
                return
            try:
                sock, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self.accepted += 1
                self._socks.append(sock)
            threading.Thread(target=self._run, args=(sock,), daemon=True).start()

    def _run(self, sock: socket.socket) -> None:
        try:
            self.script(sock)
        except OSError:
            pass
        finally:
            with self._lock:
                self.finished += 1
            sock.close()

    def close(self) -> None:
        self._stop.set()
        self.listener.close()
        with self._lock:
            for sock in self._socks:
                sock.close()
        self._thread.join(2.0)


@contextmanager
def scripted_origin(script: Callable[[socket.socket], None]) -> Iterator[ScriptedOrigin]:
    server = ScriptedOrigin(script)
    try:
        yield server
    finally:
        server.close()


def read_head(sock: socket.socket, limit: int = 65536) -> bytes:
    """Read a request head (bounded in size; the socket's timeout bounds the time)."""
    data = b""
    while b"\r\n\r\n" not in data and len(data) < limit:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def peer_closed(sock: socket.socket, timeout: float) -> bool:
    """Read and discard until the peer closes (True) or `timeout` passes (False)."""
    deadline = time.monotonic() + timeout
    for _ in range(1 << 20):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        sock.settimeout(remaining)
        try:
            if not sock.recv(65536):
                return True
        except TimeoutError:
            return False
        except OSError:
            return True
    return False


def record_of(proxy: ProxyProcess, timeout: float = 10.0, **fields: Any) -> dict[str, Any]:
    """The last access-log record whose fields equal `fields` (waits, bounded)."""
    records = proxy.wait_for_records(
        1, timeout, predicate=lambda r: all(r.get(k) == v for k, v in fields.items())
    )
    return records[-1]
