"""AccessRecord → one JSON line, buffered, to stdout or a file.

Lines are built with a fixed template (string fields that can carry arbitrary bytes go through
json.dumps, the rest are known-safe tokens), collected in memory and written in batches: at most
FLUSH_INTERVAL_S late, or when the buffer passes FLUSH_BYTES. A full disk or closed stdout never
stops the proxy: the error is counted and the batch dropped. The log file is reopened on
`reopen()` (SIGUSR1), for logrotate.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import Callable

from egressgate.observe.record import AccessRecord

FLUSH_INTERVAL_S = 0.2
FLUSH_BYTES = 64 * 1024
PIPE_BUF = 4096


# Rendered JSON strings of values that recur on most lines (policy, rule, method, host,
# address): a dict hit instead of four string scans. Bounded; cleared when full.
_RENDERED: dict[str, str] = {}
_MAX_RENDERED = 4096
_MAX_CACHED_LEN = 256


def _str(value: str | None) -> str:
    if value is None:
        return "null"
    rendered = _RENDERED.get(value)
    if rendered is not None:
        return rendered
    # Fast path for the usual plain-ASCII values; json.dumps for anything that needs escaping.
    if value.isascii() and value.isprintable() and '"' not in value and "\\" not in value:
        rendered = f'"{value}"'
    else:
        rendered = json.dumps(value, ensure_ascii=False)
    if len(value) <= _MAX_CACHED_LEN:
        if len(_RENDERED) >= _MAX_RENDERED:
            _RENDERED.clear()
        _RENDERED[value] = rendered
    return rendered


class _Clock:
    """RFC 3339 UTC timestamps with milliseconds; the date part is formatted once per second."""

    __slots__ = ("_prefix", "_second")

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def format(self, t: float) -> str:
        second = int(t)
        if second != self._second:
            self._second = second
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._prefix}.{int((t - second) * 1000):03d}Z"


def format_record(r: AccessRecord, clock: _Clock) -> str:
    """The JSON line for one record (field order: record.FIELDS)."""
    return (
        f'{{"ts":"{clock.format(r.start)}","client":"{r.client}","user":{_str(r.user)},'
        f'"policy":{_str(r.policy)},"method":{_str(r.method)},"host":{_str(r.host)},'
        f'"port":{"null" if r.port is None else r.port},"address":{_str(r.address)},'
        f'"decision":"{r.decision}","reason":"{r.reason}","rule":{_str(r.rule)},'
        f'"status":{r.status},"bytes_up":{r.bytes_up},"bytes_down":{r.bytes_down},'
        f'"duration_ms":{r.duration_ms:.3f},"kind":"{r.kind}","sni":{_str(r.sni)},'
        f'"detail":{_str(r.detail)}}}\n'
    )


class AccessLog:
    """Buffered JSON-lines writer. Call `write` per record; `close` flushes."""

    def __init__(self, target: str, on_error: Callable[[], None] | None = None) -> None:
        self._target = target
        self._fd = self._open()
        self._buffer: list[str] = []
        self._size = 0
        self._clock = _Clock()
        self._timer: asyncio.TimerHandle | None = None
        self._on_error = on_error

    def _open(self) -> int:
        if self._target == "-":
            return sys.stdout.fileno()
        return os.open(self._target, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)

    def write(self, record: AccessRecord) -> None:
        line = format_record(record, self._clock)
        self._buffer.append(line)
        self._size += len(line)
        if self._size >= FLUSH_BYTES:
            self.flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(FLUSH_INTERVAL_S, self.flush)

    def timestamp(self, t: float) -> str:
        """`t` (time.time()) as the `ts` field renders it."""
        return self._clock.format(t)

    def write_line(self, line: str) -> None:
        """Append one line rendered by the caller (with `format_record`'s field order).

        For the DNS guard's cached answers, whose records differ only in time, client and
        duration: it renders the constant rest once per answer (proxy/dns_guard.py)."""
        self._buffer.append(line)
        self._size += len(line)
        if self._size >= FLUSH_BYTES:
            self.flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(FLUSH_INTERVAL_S, self.flush)

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._buffer:
            return
        data = "".join(self._buffer).encode("utf-8", "replace")
        self._buffer.clear()
        self._size = 0
        try:
            for piece in self._pieces(data):
                view = memoryview(piece)
                while view:
                    written = os.write(self._fd, view)
                    view = view[written:]
        except OSError:
            if self._on_error is not None:
                self._on_error()

    def _pieces(self, data: bytes) -> list[bytes]:
        """Writes to a pipe (stdout) are atomic only up to PIPE_BUF: split at line ends so
        that several worker processes sharing stdout never interleave within a line."""
        if self._target != "-" or len(data) <= PIPE_BUF:
            return [data]
        pieces, start = [], 0
        while start < len(data):
            end = data.rfind(b"\n", start, start + PIPE_BUF) + 1
            if end <= start:  # one line longer than PIPE_BUF: cannot be atomic anyway
                end = data.find(b"\n", start) + 1 or len(data)
            pieces.append(data[start:end])
            start = end
        return pieces

    def reopen(self) -> None:
        """Reopen the file (after logrotate moved it)."""
        self.flush()
        if self._target != "-":
            old, self._fd = self._fd, self._open()
            os.close(old)

    def close(self) -> None:
        self.flush()
        if self._target != "-":
            os.close(self._fd)
