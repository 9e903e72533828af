"""Helpers for the operations and per-client policy integration tests (issues 4 and 6).

Everything here drives the REAL proxy over real loopback sockets and is bounded in time:

- `loopback_policy(...)`: the policy keys a loopback origin needs (allow_private, ports).
- `admin_get(...)` / `readyz(...)` / `scrape(...)`: the admin endpoints; `scrape` parses
  /metrics with `prometheus_client.parser` into a `Scrape` (`value(name, **labels)`).
- `EchoTunnel`: a CONNECT tunnel (optionally from a chosen 127.0.0.x source address, with
  extra headers) to a `RawOrigin` in echo mode, with byte-exact round trips.
- `proxied_get(...)`: one plain-HTTP request through the proxy on a fresh socket (optionally
  from a chosen source address), raw bytes in and out.
- `wait_until(...)`, `closed_port()`, `file_sha256(...)`, `run_cli(...)`.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from prometheus_client.parser import text_string_to_metric_families

from tests.support._aio import format_hostport
from tests.support.clients import ClientError, ParsedResponse, ResponseHead, parse_response_head
from tests.support.clients import parse_responses as _parse_responses
from tests.support.proxy import REPO_ROOT, ProxyProcess, clean_env

Address = tuple[str, int]
T = TypeVar("T")


def loopback_policy(
    allow: Sequence[str],
    *,
    http_ports: Sequence[int] = (),
    connect_ports: Sequence[int] = (),
    **extra: Any,
) -> dict[str, Any]:
    """Policy keys for destinations that live on loopback (test origins on 127.0.0.1)."""
    policy: dict[str, Any] = {
        "allow": list(allow),
        "allow_private": ["127.0.0.0/8"],
        "http_ports": [str(p) for p in http_ports] or ["80"],
        "connect_ports": [str(p) for p in connect_ports] or ["443"],
    }
    policy.update(extra)
    return policy


def wait_until(
    predicate: Callable[[], T | None],
    timeout: float,
    what: str,
    *,
    interval: float = 0.02,
) -> T:
    """Poll `predicate` until it returns something truthy (returned); AssertionError after
    `timeout` seconds. Used only where there is nothing to await (a file, another process)."""
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / interval) + 2):
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            break
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def closed_port(host: str = "127.0.0.1") -> int:
    """A TCP port on `host` on which nothing listens (bound once by the kernel, then freed)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _connect(address: Address, timeout: float, source: str | None) -> socket.socket:
    source_address = (source, 0) if source is not None else None
    return socket.create_connection(address, timeout=timeout, source_address=source_address)


def _read_until_close(sock: socket.socket, timeout: float) -> bytes:
    data = bytearray()
    deadline = time.monotonic() + timeout
    while len(data) < 8 * 1024 * 1024:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ClientError(f"no end of response within {timeout}s: {bytes(data[:500])!r}")
        sock.settimeout(remaining)
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return bytes(data)


# ---------------------------------------------------------------------------------------------
# Admin endpoints and metrics
# ---------------------------------------------------------------------------------------------


def admin_get(address: Address, path: str, *, timeout: float = 5.0) -> ParsedResponse:
    """GET `path` on an admin-style listener (one request per connection, closed after)."""
    with _connect(address, timeout, None) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n".encode())
        data = _read_until_close(sock, timeout)
    responses, _ = _parse_responses(data)
    if len(responses) != 1:
        raise ClientError(f"expected one response from {address}{path}, got {data[:500]!r}")
    return responses[0]


def readyz(proxy: ProxyProcess) -> tuple[int, dict[str, Any]]:
    """(status, JSON body) of the proxy's /readyz."""
    address = proxy.admin_address
    assert address is not None, "this proxy has no admin listener"
    response = admin_get(address, "/readyz")
    return response.status, json.loads(response.body)


@dataclass(frozen=True)
class Sample:
    name: str
    labels: dict[str, str]
    value: float


class Scrape:
    """One parsed /metrics exposition."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.samples: list[Sample] = [
            Sample(s.name, dict(s.labels), float(s.value))
            for family in text_string_to_metric_families(text)
            for s in family.samples
        ]

    def matching(self, name: str, **labels: str) -> list[Sample]:
        """Samples named `name` whose labels include `labels`."""
        return [
            s
            for s in self.samples
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
        ]

    def value(self, name: str, **labels: str) -> float:
        """Sum of the matching samples (0.0 when there is none)."""
        return sum(s.value for s in self.matching(name, **labels))

    def has(self, name: str) -> bool:
        return any(s.name == name for s in self.samples)


def scrape(proxy: ProxyProcess) -> Scrape:
    """GET /metrics on the proxy's admin listener and parse it."""
    address = proxy.admin_address
    assert address is not None, "this proxy has no admin listener"
    response = admin_get(address, "/metrics")
    assert response.status == 200, response.raw[:500]
    assert (response.header("content-type") or "").startswith("text/plain")
    return Scrape(response.body.decode("utf-8"))


def wait_for_metric(
    proxy: ProxyProcess,
    name: str,
    expected: float,
    *,
    timeout: float = 5.0,
    **labels: str,
) -> Scrape:
    """Scrape until `name{labels}` sums to `expected` (metrics are bumped when a request or
    tunnel is finished, which may be just after the client saw its end)."""
    last: list[Scrape] = []

    def check() -> Scrape | None:
        current = scrape(proxy)
        last[:] = [current]
        return current if current.value(name, **labels) == expected else None

    try:
        return wait_until(check, timeout, f"{name}{labels} == {expected}", interval=0.05)
    except AssertionError:
        got = last[0].matching(name) if last else "no scrape"
        raise AssertionError(f"{name}{labels} never became {expected}; samples: {got}") from None


# ---------------------------------------------------------------------------------------------
# Requests and tunnels through the proxy, from a chosen source address
# ---------------------------------------------------------------------------------------------


def proxied_get(
    proxy: Address,
    url: str,
    *,
    source: str | None = None,
    headers: Sequence[tuple[str, str]] = (),
    timeout: float = 10.0,
) -> ParsedResponse:
    """`GET url` (absolute form) through `proxy` on a fresh connection (`Connection: close`),
    optionally from local address `source`; the whole response."""
    authority = url.split("://", 1)[1].split("/", 1)[0]
    lines = [f"GET {url} HTTP/1.1", f"Host: {authority}", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in headers]
    with _connect(proxy, timeout, source) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        data = _read_until_close(sock, timeout)
    responses, _ = _parse_responses(data)
    if not responses:
        raise ClientError(f"no response from the proxy for {url}: {data[:500]!r}")
    return responses[-1]


class EchoTunnel:
    """A CONNECT tunnel through the proxy, from an optional source address.

    `status` is the CONNECT answer; when it is 2xx, `roundtrip()` sends bytes and reads the
    same number back (the far end is a `RawOrigin` in echo mode)."""

    def __init__(
        self,
        proxy: Address,
        authority: str,
        *,
        source: str | None = None,
        headers: Sequence[tuple[str, str]] = (),
        timeout: float = 10.0,
        sock: socket.socket | None = None,
    ) -> None:
        self.sock = sock if sock is not None else _connect(proxy, timeout, source)
        self.timeout = timeout
        try:
            self.sock.settimeout(timeout)
            lines = [f"CONNECT {authority} HTTP/1.1", f"Host: {authority}"]
            lines += [f"{k}: {v}" for k, v in headers]
            self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
            buffer = bytearray()
            deadline = time.monotonic() + timeout
            while b"\r\n\r\n" not in buffer:
                if len(buffer) > 65536 or time.monotonic() > deadline:
                    raise ClientError(f"no CONNECT answer: {bytes(buffer)!r}")
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise ClientError(f"proxy closed during CONNECT: {bytes(buffer)!r}")
                buffer += chunk
            end = buffer.index(b"\r\n\r\n") + 4
            self.head: ResponseHead = parse_response_head(bytes(buffer[:end]))
            self.rest = bytes(buffer[end:])
        except BaseException:
            self.sock.close()
            raise

    @property
    def status(self) -> int:
        return self.head.status

    def roundtrip(self, payload: bytes) -> bytes:
        """Send `payload`, read back exactly as many bytes (bounded by the timeout)."""
        assert 200 <= self.status < 300, f"CONNECT was answered {self.status}"
        self.sock.sendall(payload)
        received = bytearray(self.rest)
        self.rest = b""
        deadline = time.monotonic() + self.timeout
        while len(received) < len(payload):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ClientError(f"echo: {len(received)} of {len(payload)} bytes came back")
            self.sock.settimeout(remaining)
            chunk = self.sock.recv(len(payload) - len(received))
            if not chunk:
                raise ClientError(f"tunnel closed after {len(received)} of {len(payload)} bytes")
            received += chunk
        return bytes(received)

    def wait_closed(self, timeout: float) -> str:
        """Wait (bounded) for the proxy to end the tunnel: "eof" or "reset"; raise if not."""
        self.sock.settimeout(timeout)
        try:
            for _ in range(1 << 20):  # bounded by the timeout per read
                if not self.sock.recv(65536):
                    return "eof"
        except ConnectionResetError:
            return "reset"
        except TimeoutError:
            raise AssertionError(f"tunnel still open after {timeout}s") from None
        raise AssertionError("tunnel kept sending data")

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> EchoTunnel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def payload(size: int, seed: int) -> bytes:
    """`size` deterministic, non-repeating-looking bytes for byte-exact checks."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"{seed}:{counter}".encode()).digest()
        counter += 1
    return bytes(out[:size])


# ---------------------------------------------------------------------------------------------
# The egressgate CLI
# ---------------------------------------------------------------------------------------------


@dataclass
class CliResult:
    argv: list[str]
    exit_code: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def stderr_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.strip()]


def run_cli(
    args: Sequence[str],
    *,
    timeout: float = 30.0,
    env: Mapping[str, str] | None = None,
) -> CliResult:
    """`python -m egressgate ARGS` (cwd: the repo root), bounded; exit code and output."""
    argv = [sys.executable, "-m", "egressgate", *args]
    started = time.monotonic()
    try:
        done = subprocess.run(
            argv,
            cwd=REPO_ROOT,
            env=clean_env(env),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"{argv} did not finish within {timeout}s") from exc
    return CliResult(
        argv,
        done.returncode,
        done.stdout.decode("utf-8", "replace"),
        done.stderr.decode("utf-8", "replace"),
        time.monotonic() - started,
    )


def proxy_text_output(proxy: ProxyProcess) -> str:
    """Everything the proxy wrote: stderr, stdout and the access-log file (if it has one)."""
    parts = [*proxy.stderr_lines, *proxy.stdout_lines]
    log = proxy.config.get("access_log")
    if log and log != "-" and os.path.exists(log):
        parts.append(Path(log).read_text(encoding="utf-8", errors="replace"))
    return "\n".join(parts)


def hostport(host: str, port: int) -> str:
    return format_hostport(host, port)
